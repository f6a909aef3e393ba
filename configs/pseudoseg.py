r"""PseudoSeg on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled) with PseudoSeg's settings (T 0.5, unlabeled weight 1,
attention dim 128, colour jitter p 1 and a Cutout square of 100/513 of the crop side,
12 px at 64); see ``jaxsemiseg/methods/pseudoseg.py``. The classifier and Grad-CAM read the
UNet's bottleneck, the hypercolumn its last encoder level and the bottleneck.
``configs/voc_pseudoseg.py`` is the paper's setup.

  python -m jaxsemiseg.main --config=configs/pseudoseg.py --workdir=/tmp/jaxsemiseg/pseudoseg
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  return base_config("pseudoseg")
