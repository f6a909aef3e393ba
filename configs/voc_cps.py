r"""CPS + CutMix on Pascal VOC 2012 at TorchSemiSeg's settings (exp.voc/*.CPS+CutMix).

Two DeepLabV3+ nets with ResNet-50 backbones (TorchSemiSeg's ``voc8.res50v3+``; the
paper's VOC table also has ResNet-101 rows: ``--config.model.deeplabv3plus.backbone=
resnet101``) at output stride 16 (ASPP rates 6, 12, 18,
no dropout before the classifier), crop 512, long-side rescale U(0.5, 2) (the reference
draws from {0.5, 0.75, 1, 1.5, 1.75, 2}), SGD (momentum 0.9, weight decay 1e-4) at 0.005
for backbone and head alike, poly decay 0.9, batch 16 labeled + 16 unlabeled (+ 16 CutMix
partners), CPS weight 1, 34 epochs of max(#labeled, #unlabeled) images, sliding-window
evaluation (window 512, stride 2/3). The argument is the number of labeled images of
``train_aug`` (default 1323, TorchSemiSeg's 1/8 split; its splits are 662, 1323, 2646 and
5291, 10582 / n rounded up):

  python -m jaxsemiseg.main --config=configs/voc_cps.py:1323 --workdir=/tmp/voc_cps \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet50_imagenet.npz

``pretrained_path`` (an ImageNet ResNet-101 converted once, see
``jaxsemiseg/models/weights.py``; a ResNet-50 here) gives both nets the same backbone, as TorchSemiSeg's
``pretrained_model``; their heads start from different random weights.

Differences from the reference that the config cannot remove:
- the reference backbone is ResNet-50-v1c (three-conv stem), here torchvision's;
- the labeled images are drawn at random (the "blender" protocol) unless
  ``dataset.split_file`` names TorchSemiSeg's subset list;
- the reference evaluates its first net only; here the loop reports the average of
  both, and ``cotraining.evaluate_members`` scores each net.
"""

from jaxsemiseg.config import VOC_TRAIN_AUG_SIZE, voc_config, voc_num_labeled

EPOCHS = 34


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "1323")."""
  num_labeled = voc_num_labeled(arg, default=-(-VOC_TRAIN_AUG_SIZE // 8),
                                config_name="voc_cps", examples=(662, 1323, 2646, 5291))
  config = voc_config("cps", num_labeled=num_labeled)
  config.model.deeplabv3plus.backbone = "resnet50"
  config.dataset.crop_size = 512
  config.optimizer.update(dict(learning_rate=0.005, head_lr_multiplier=1.0))
  config.batch_size = 16
  config.unlabeled_batch_size = 16
  # TorchSemiSeg: niters_per_epoch = max(#labeled, #unlabeled) // batch_size.
  steps_per_epoch = max(num_labeled, VOC_TRAIN_AUG_SIZE - num_labeled) // config.batch_size
  config.num_steps = EPOCHS * steps_per_epoch
  config.eval_every = steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  config.eval_mode = "sliding"
  config.cps.cps_weight = 1.0
  return config
