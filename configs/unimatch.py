r"""UniMatch on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled), with UniMatch's settings for Pascal VOC (tau 0.95,
channel dropout 0.5 on the decoder inputs) but no CutMix box (``config.SHAPES_CUTMIX_P``:
a box cuts shapes into fragments whose class the image no longer shows); see
``jaxsemiseg/methods/unimatch.py``. ``configs/voc_unimatch.py`` is the paper's setup.

  python -m jaxsemiseg.main --config=configs/unimatch.py --workdir=/tmp/jaxsemiseg/unimatch
"""

from jaxsemiseg.config import SHAPES_CUTMIX_P, base_config


def get_config(arg=None):
  del arg
  config = base_config("unimatch")
  config.unimatch.cutmix_p = SHAPES_CUTMIX_P
  return config
