r"""Deep Co-Training (two nets, JSD + view difference) on Pascal VOC 2012 at UniMatch's protocol.

The terms of Peng et al.'s segmentation reference (jizongFox/Deep-Co-Training-for-Semi-
Supervised-Image-Segmentation ``generalframework/trainer/cotraining.py``, METHODS.md 3), the
method's defaults: two nets, each with the cross-entropy on its own share of the labeled
images; the Jensen-Shannon co-training term with weight 10 and the view-difference term
with weight 0.5 (the defaults of ``CoTrainer``'s ``lambda_cot_max`` and ``lambda_adv_max``;
the repository's YAML configs lower them to 1 and 0.05 or 0.005), each ordered pair
using with probability 0.5 FGSM on labeled images, else VAT on unlabeled ones, both at
epsilon 0.05 on [0, 1] images. Both weights follow the sigmoid ramp over the first 80%
of the run: the reference ramps over 80 of its 100 epochs (``epoch_max_ramp``,
``max_epoch``), and its epoch is a pass over the labeled images, not over UniMatch's
unlabeled pool, so the fraction carries over and the count does not. The reference has
no VOC settings (its configs are for ACDC, the spleen and a reduced Cityscapes).

The rest is UniMatch's protocol (configs/pascal.yaml), as for ``voc_unimatch.py``:
DeepLabV3+ with a ResNet-101 backbone at output stride 16 (ASPP rates 6, 12, 18), crop 321,
SGD (momentum 0.9, weight decay 1e-4) at 1e-3 with the head at 10x, poly decay 0.9, batch 8
labeled (4 per net) + 8 unlabeled, 80 epochs of the unlabeled set. The argument is the
number of labeled images (default 92):

  python -m jaxsemiseg.main --config=configs/voc_deep_cotraining.py:92 \
      --workdir=/tmp/voc_dct92 --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.dataset.split_file=/data/UniMatch/splits/pascal/92/labeled.txt \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz

``pretrained_path`` (an ImageNet ResNet-101 converted once, see
``jaxsemiseg/models/weights.py``) gives both nets the same backbone; their heads start
from different random weights. Without ``split_file`` the labeled images are drawn at random from ``train_aug``; the
unlabeled pool is the rest of its 10582 images.

Differences from the reference that the config cannot remove:
- the supervised, co-training and view-difference terms are one loss and one update per
  net, not three; each step splits its labeled batch between the nets afresh, where the
  reference gives each net a fixed subset and a batch of its own; the VAT xi is 1e-3, not
  1e-6 (which float32 rounds away); see ``jaxsemiseg/methods/deep_cotraining.py``;
- the reference evaluates each net; here the loop reports their average, and
  ``cotraining.evaluate_members`` scores each net;
- the backbone is torchvision's ResNet-101 (UniMatch: ResNet-v1c), and evaluation pads
  each image to 512x512.
"""

from jaxsemiseg.config import unimatch_voc_config

# The reference's CoTrainer ramps its weights over 80 (epoch_max_ramp) of 100 (max_epoch)
# epochs.
RAMP_EPOCHS, REFERENCE_EPOCHS = 80, 100


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  config = unimatch_voc_config("deep_cotraining", arg, config_name="voc_deep_cotraining")
  config.deep_cotraining.update(dict(
      num_members=2, cot_weight=10.0, adv_weight=0.5, labeled_adversarial_p=0.5,
      fgsm_epsilon=0.05, vat_epsilon=0.05,
      rampup_steps=config.num_steps * RAMP_EPOCHS // REFERENCE_EPOCHS))
  return config
