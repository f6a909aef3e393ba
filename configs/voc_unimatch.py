r"""UniMatch on Pascal VOC 2012 at the paper's settings (LiheYoung/UniMatch configs/pascal.yaml).

DeepLabV3+ with a ResNet-101 backbone at output stride 16 (ASPP rates 6, 12, 18), crop
321, SGD (momentum 0.9, weight decay 1e-4) at 1e-3 with the head at 10x, poly decay 0.9,
batch 8 labeled + 8 unlabeled (the reference's 2 + 2 on each of 4 GPUs), tau 0.95, 80
epochs of the unlabeled set. The argument is the number of labeled images (default 92):

  python -m jaxsemiseg.main --config=configs/voc_unimatch.py:92 --workdir=/tmp/voc92 \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz \
      --config.dataset.split_file=/data/UniMatch/splits/pascal/92/labeled.txt

Without ``split_file`` the labeled images are drawn at random from ``train_aug`` (the
"blender" protocol); UniMatch's classic numbers (1/16 = 92 labeled: 75.2 mIoU) use its
split files, whose labeled images come from the 1464 finely annotated ones. The unlabeled
pool is the rest of the 10582 ``train_aug`` images either way.

Differences from the reference that the config cannot remove: the backbone is torchvision's
ResNet-101 (UniMatch uses ResNet-v1c, a three-conv stem, with its own ImageNet weights;
convert torchvision's with ``jaxsemiseg.models.weights``), and evaluation pads each image to
512x512 instead of running one image at a time: the padding is not scored, but it changes the predictions on real pixels (the ASPP's
image-level pooling averages over it, and the borders see black instead of zero padding);
evaluate the final checkpoint as the reference does, one unpadded image at a time, with
``--mode=eval --config.dataset.eval_pad_to=0 --config.eval_batch_size=1`` (one compilation per
image size).
"""

from jaxsemiseg.config import unimatch_voc_config


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  config = unimatch_voc_config("unimatch", arg, config_name="voc_unimatch")
  config.unimatch.threshold = 0.95
  return config
