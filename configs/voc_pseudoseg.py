r"""PseudoSeg on Pascal VOC 2012 at the paper's settings (googleinterns/wss, METHODS.md 7).

DeepLabV3+ at output stride 16 (ASPP rates 6, 12, 18), crop 513, SGD (momentum 0.9) at
0.007 for every layer with poly decay 0.9, batch 64 labeled + 64 unlabeled (the
reference's 4 + 4 on each of 16 GPUs), 30k iterations, T 0.5, unlabeled weight 1, a
100 px Cutout. The argument is the number of labeled images (default 183, the paper's
"1/8" of the 1464 finely annotated ones, 65.5 mIoU; also 92, 366, 732):

  python -m jaxsemiseg.main --config=configs/voc_pseudoseg.py:183 --workdir=/tmp/voc_ps \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz

Without ``split_file`` the labeled images are drawn at random from ``train_aug``; the
unlabeled pool is the rest of its 10582 images.

Differences from the reference that the config cannot remove: the backbone is
torchvision's ResNet-101 (the paper: Xception-65), so the weight decay is DeepLab's 1e-4
for ResNets (``train_wss.py``: "use 0.00004 for ... Xception, 0.0001 for ResNet"), the
Grad-CAM reads ResNet stage 4 and the hypercolumn stages 3 and 4 (the reference's ResNet
strides 15 and 16). The scale is drawn from U(0.5, 2.0) instead of DeepLab's steps of
0.25, and evaluation pads each image to 513x513 in batches.
"""

from jaxsemiseg.config import voc_config, voc_num_labeled


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "183")."""
  num_labeled = voc_num_labeled(arg, default=183, config_name="voc_pseudoseg",
                                examples=(92, 183, 366, 732))
  config = voc_config("pseudoseg", num_labeled=num_labeled)
  config.dataset.update(dict(crop_size=513, eval_pad_to=513))
  config.optimizer.update(dict(learning_rate=0.007, head_lr_multiplier=1.0))
  config.batch_size = 64
  config.unlabeled_batch_size = 64
  config.num_steps = 30_000
  config.eval_every = 2_000
  config.checkpoint_every = 2_000
  return config
