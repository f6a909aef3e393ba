r"""CCT on Pascal VOC 2012 at the paper's settings (yassouali/CCT configs/config.json, paper).

30 auxiliary heads (VAT 2, dropout 6, guided cutout 6, context masking 2, object masking 2,
feature drop 6, feature noise 6), MSE consistency with weight 30 ramped up over the first
10% of training; SGD (momentum 0.9, weight decay 1e-4) at 1e-2 for the heads and 1e-3 for
the backbone (CCT's backbone x0.1), poly decay 0.9, batch 10 labeled + 10 unlabeled, crop
320, 80 epochs of the unlabeled pool. The argument is the number of labeled images
(default 1464, the paper's 69.4 mIoU setting; the repository's splits also have 60, 100,
200, 300, 500, 800 and 1000):

  python -m jaxsemiseg.main --config=configs/voc_cct.py:1464 --workdir=/tmp/voc_cct \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet50_imagenet.npz \
      --config.dataset.split_file=/data/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt

The ``split_file`` makes the 1464 labeled images VOC's finely annotated ``train`` set, as
in the paper (the other sizes: CCT's ``dataloaders/voc_splits/<n>_train_supervised.txt``);
without it they are drawn at random from all of ``train_aug``. The unlabeled pool is the
rest of the 10582 ``train_aug`` images either way.

The batch of 10 divides over 1, 2, 5 or 10 devices; on 4 or 8 use
``--config.batch_size=8 --config.unlabeled_batch_size=8``.

Differences from the reference that the config cannot remove: CCT's encoder is a
ResNet-50 at output stride 8 with a PSP module (512 channels) and its decoders are a 1x1
conv plus three ICNR-initialised PixelShuffle x2 stages; here the encoder is DeepLabV3+
(ResNet-50, output stride 8, ASPP, the stride-4 decoder) and every decoder is its 1x1
classifier with bilinear upsampling. CCT rescales the long side to U(200, 800) px
(base 400); VOC images are about 500 px long, so the scale range here is (0.4, 1.6) of
each image's own long side. Evaluation pads each image to 512x512 instead of CCT's one reflect-padded image at a
time: the padding is not scored, but it changes the predictions on real pixels (the ASPP's
image-level pooling averages over it, and the borders see black instead of zero padding);
evaluate the final checkpoint as the reference does, one unpadded image at a time, with
``--mode=eval --config.dataset.eval_pad_to=0 --config.eval_batch_size=1`` (one compilation per
image size).
"""

from jaxsemiseg.config import voc_config, voc_epoch_schedule, voc_num_labeled

EPOCHS = 80


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "1464")."""
  num_labeled = voc_num_labeled(arg, default=1464, config_name="voc_cct",
                                examples=(60, 100, 200, 300, 500, 800, 1000, 1464))
  # UniMatch's optimizer; CCT's decoders, like UniMatch's classifier, have no dropout.
  config = voc_config("cct", num_labeled=num_labeled)
  config.dataset.update(dict(crop_size=320, scale_range=(0.4, 1.6)))
  config.model.deeplabv3plus.update(dict(backbone="resnet50", output_stride=8))
  config.batch_size = 10
  config.unlabeled_batch_size = 10
  steps_per_epoch = voc_epoch_schedule(config, epochs=EPOCHS)
  config.cct.rampup_steps = config.num_steps // 10
  # CCT validates every 10 epochs (val_per_epochs).
  config.eval_every = 10 * steps_per_epoch
  config.eval_batch_size = 10
  return config
