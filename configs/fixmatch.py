r"""FixMatch for segmentation (UniMatch's ``fixmatch.py``) on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled), with the FixMatch settings of UniMatch for Pascal VOC
(tau 0.95) but no CutMix box (``config.SHAPES_CUTMIX_P``: a box cuts shapes into
fragments whose class the image no longer shows); see ``jaxsemiseg/methods/fixmatch.py``.

  python -m jaxsemiseg.main --config=configs/fixmatch.py --workdir=/tmp/jaxsemiseg/fixmatch
"""

from jaxsemiseg.config import SHAPES_CUTMIX_P, base_config


def get_config(arg=None):
  del arg
  config = base_config("fixmatch")
  config.fixmatch.cutmix_p = SHAPES_CUTMIX_P
  return config
