r"""Uncertainty-aware Mean Teacher (UA-MT) on Pascal VOC 2012 at UniMatch's protocol.

UA-MT's reference (yulequan/UA-MT ``code/train_LA_meanteacher_certainty_unlabel.py``) trains
a 3D VNet on the two-class LA heart volumes, so it has no VOC settings. Taken from it, as
the method's defaults: EMA decay 0.99; consistency weight 0.1 on the MSE of the softmax
probabilities, ramped up over the whole run (the reference: ``ramp(iter // 150, 40)``, full
at its last iteration, 6000); T = 8 noisy stochastic teacher passes with input noise
``clip(N(0, 0.1^2), -0.2, 0.2)``; the entropy threshold ``(0.75 + 0.25 ramp) ln C`` ramped
over the whole run, with C = 21 here where the reference's ``ln 2`` is its C = 2; dropout 0.5
(its VNet's ``Dropout3d(0.5)``) on the classifier input, which the teacher's stochastic
passes need and UniMatch's network lacks. Evaluation uses the student, as the reference.

Taken from UniMatch's protocol (configs/pascal.yaml), because the reference's (SGD at 0.01
divided by 10 every 2500 of 6000 iterations, batch 2 + 2 volumes, ``(CE + Dice) / 2`` on
two classes) are tied to its 3D data: DeepLabV3+ with a ResNet-101 backbone at output
stride 16 (ASPP rates 6, 12, 18), crop 321, SGD (momentum 0.9, weight decay 1e-4) at 1e-3
with the head at 10x, poly decay 0.9, batch 8 labeled + 8 unlabeled, the cross-entropy
labeled loss, 80 epochs of the unlabeled set. The argument is the number of labeled images
(default 92):

  python -m jaxsemiseg.main --config=configs/voc_ua_mt.py:92 --workdir=/tmp/voc_uamt92 \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz \
      --config.dataset.split_file=/data/UniMatch/splits/pascal/92/labeled.txt

Without ``split_file`` the labeled images are drawn at random from ``train_aug``; the
unlabeled pool is the rest of its 10582 images.

Differences from the reference that the config cannot remove: see
``jaxsemiseg/methods/ua_mt.py`` (MC Dropout passes with BatchNorm in inference mode where
the reference's teacher runs in train mode, smooth ramps, exact entropy). The dropout is
element-wise on the classifier input (the VNet drops whole channels at its bottleneck and
before its output convolution). The noise is the reference's on its standardised volumes,
applied to [0, 1] images, so it is about four times stronger relative to their contrast.
With 21 classes the threshold starts at 0.75 ln 21 = 2.3 nats, the entropy of a
prediction spread evenly over about ten classes, so the mask drops far fewer pixels than
the reference's 0.75 ln 2 does on two classes. The backbone is torchvision's ResNet-101
(UniMatch: ResNet-v1c), and evaluation pads each image to 512x512.
"""

from jaxsemiseg.config import unimatch_voc_config

# UA-MT's VNet: Dropout3d(0.5).
DROPOUT_RATE = 0.5


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  config = unimatch_voc_config("ua_mt", arg, config_name="voc_ua_mt")
  # The teacher's uncertainty comes from MC Dropout, which UniMatch's network (no dropout)
  # cannot give.
  config.model.deeplabv3plus.dropout_rate = DROPOUT_RATE
  # The ramps (-1) last the whole run, as the reference's do; ln C follows the dataset.
  config.ua_mt.update(dict(ema_decay=0.99, consistency_weight=0.1, num_samples=8,
                           rampup_steps=-1, threshold_rampup_steps=-1))
  return config
