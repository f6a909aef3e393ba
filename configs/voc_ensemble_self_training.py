r"""Ensemble self-training on Pascal VOC 2012 at UniMatch's protocol.

A deep ensemble as its own teacher (``jaxsemiseg/methods/ensemble_self_training.py``):
K = 5 members with different initialisations (Lakshminarayanan et al.'s M = 5, METHODS.md
4; the method's default, 4, is sized for a CPU step), each trained on FixMatch's objective
``(L_x + L_u) / 2`` with the hard pseudo-labels of the members' mean probability, kept
where its confidence is at least 0.95 (UniMatch's tau), on its own strong view with a
CutMix box pasted with probability 0.5 (UniMatch's). No bootstrap: Lakshminarayanan et al.
found bagging hurts deep ensembles. Evaluation averages the members' probabilities
(``cotraining.evaluate_members`` scores each member).

The rest is UniMatch's protocol (configs/pascal.yaml), as for ``voc_fixmatch.py``:
DeepLabV3+ with a ResNet-101 backbone at output stride 16 (ASPP rates 6, 12, 18), crop 321,
SGD (momentum 0.9, weight decay 1e-4) at 1e-3 with the head at 10x, poly decay 0.9, batch 8
labeled + 8 unlabeled (+ 8 CutMix partners), 80 epochs of the unlabeled set. The argument
is the number of labeled images (default 92):

  python -m jaxsemiseg.main --config=configs/voc_ensemble_self_training.py:92 \
      --workdir=/tmp/voc_ens92 --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.dataset.split_file=/data/UniMatch/splits/pascal/92/labeled.txt \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz

``pretrained_path`` (an ImageNet ResNet-101 converted once, see
``jaxsemiseg/models/weights.py``) gives every member the same backbone; their heads start
from different random weights. Without ``split_file`` the labeled images are drawn at random from ``train_aug``; the
unlabeled pool is the rest of its 10582 images.

Differences from the reference that the config cannot remove:
- the members differ in their heads' initialisation only: they see the same batches in the same
  order, where Lakshminarayanan et al.'s also differ in data order, and none trains
  adversarially (the paper's optional FGSM);
- the backbone is torchvision's ResNet-101 (UniMatch: ResNet-v1c), and evaluation pads
  each image to 512x512.
"""

from jaxsemiseg.config import unimatch_voc_config

# Lakshminarayanan et al.'s ensemble size.
NUM_MEMBERS = 5


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  config = unimatch_voc_config("ensemble_self_training", arg, config_name="voc_ensemble_self_training")
  # cutmix_p and bootstrap stay the method's defaults (UniMatch's 0.5; no bagging).
  config.ensemble_self_training.update(dict(num_members=NUM_MEMBERS, filter="confidence",
                                            threshold=0.95))
  return config
