r"""Mean Teacher on Pascal VOC 2012 at UniMatch's protocol, TorchSemiSeg's MT hyper-parameters.

The Mean-Teacher terms are those of TorchSemiSeg's VOC Mean Teacher
(charlesCXK/TorchSemiSeg ``exp.voc/voc8.res50v3+.MeanTeacher``: ``unsup_weight`` 100 on the
MSE of the softmax probabilities, ``ema_decay`` 0.99, no ramp-up: the weight is 100 from the
first iteration); the EMA decay 0.99 is also U2PL's, UA-MT's and French et al.'s, and
the weight 100 CuriousAI's for CIFAR-10 (METHODS.md 4). The student sees UniMatch's strong
colour view of the unlabeled images (the method's default; TorchSemiSeg's student sees the
teacher's image: ``--config.mean_teacher.strong_colour=False``).

The rest is UniMatch's protocol (configs/pascal.yaml), as for ``voc_unimatch.py``:
DeepLabV3+ with a ResNet-101 backbone at output stride 16 (ASPP rates 6, 12, 18), crop 321,
SGD (momentum 0.9, weight decay 1e-4) at 1e-3 with the head at 10x, poly decay 0.9, batch 8
labeled + 8 unlabeled, 80 epochs of the unlabeled set. The argument is the number of
labeled images (default 92):

  python -m jaxsemiseg.main --config=configs/voc_mean_teacher.py:92 --workdir=/tmp/voc_mt92 \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz \
      --config.dataset.split_file=/data/UniMatch/splits/pascal/92/labeled.txt

Without ``split_file`` the labeled images are drawn at random from ``train_aug``; the
unlabeled pool is the rest of its 10582 images.

Differences from the reference that the config cannot remove: TorchSemiSeg's teacher runs
in train mode (BatchNorm batch statistics), here in eval mode with statistics averaged
like its weights (``teacher_batch_stats``); its consistency also covers the labeled
images, here the unlabeled ones only; its EMA decay is 0.99 from the first update, here
warmed up as ``min(1 - 1 / (step + 1), 0.99)``; it evaluates the student, here the teacher.
The backbone is torchvision's ResNet-101 (UniMatch: ResNet-v1c; TorchSemiSeg: ResNet-50-v1c),
and evaluation pads each image to 512x512.
"""

from jaxsemiseg.config import unimatch_voc_config


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  config = unimatch_voc_config("mean_teacher", arg, config_name="voc_mean_teacher")
  # TorchSemiSeg applies its weight from the first iteration: rampup_steps 0.
  config.mean_teacher.update(dict(ema_decay=0.99, consistency_weight=100.0, rampup_steps=0))
  return config
