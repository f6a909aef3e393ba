r"""Geometric-equivariance consistency on Pascal VOC 2012 at UniMatch's protocol.

The transformation-consistent scheme of TCSM (Li et al.; ``jaxsemiseg/methods/
equivariance.py``), the method's defaults: the MSE of the probabilities (TCSM's) between
``f(T x)`` and ``T f(x)`` for a random left-right flip and quarter turn ``T`` (TCSM's
transforms; no affine map), UniMatch's strong colour draw on the transformed view, weight
30 ramped up over the first 10% of the steps. TCSM's weight applies to an MSE summed over
pixels, so it does not carry over; 30 and the 10% ramp are CCT's (METHODS.md 6), whose MSE
has this one's normaliser (the mean over pixels and classes). TCSM's reference is medical
(skin lesions, fundus, liver CT) and has no VOC settings.

The rest is UniMatch's protocol (configs/pascal.yaml), as for ``voc_unimatch.py``:
DeepLabV3+ with a ResNet-101 backbone at output stride 16 (ASPP rates 6, 12, 18), crop 321
(square, so a quarter turn keeps the shape), SGD (momentum 0.9, weight decay 1e-4) at 1e-3
with the head at 10x, poly decay 0.9, batch 8 labeled + 8 unlabeled, 80 epochs of the
unlabeled set. The argument is the number of labeled images (default 92):

  python -m jaxsemiseg.main --config=configs/voc_equivariance.py:92 --workdir=/tmp/voc_eq92 \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz \
      --config.dataset.split_file=/data/UniMatch/splits/pascal/92/labeled.txt

Without ``split_file`` the labeled images are drawn at random from ``train_aug``; the
unlabeled pool is the rest of its 10582 images.

Differences from the reference that the config cannot remove: TCSM's target comes from a
mean teacher (its "self-ensembling"), here from the network itself without gradient, in
the same train-mode batch as the view; UniMatch's network has no dropout, so the two
passes differ by the transform and the colour draw only. The backbone is torchvision's
ResNet-101 (UniMatch: ResNet-v1c), and evaluation pads each image to 512x512.
"""

from jaxsemiseg.config import unimatch_voc_config


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  config = unimatch_voc_config("equivariance", arg, config_name="voc_equivariance")
  # CCT's weight and ramp (the first 10% of training); flips, quarter turns, MSE and the
  # colour draw stay the method's defaults.
  config.equivariance.update(dict(consistency_weight=30.0,
                                  rampup_steps=config.num_steps // 10))
  return config
