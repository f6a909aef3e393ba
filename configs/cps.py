r"""Cross pseudo supervision (CPS) on the bundled "shapes" dataset, without CutMix.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled) for each of the two nets. No CutMix box
(``config.SHAPES_CUTMIX_P``: a box cuts shapes into fragments whose class the mixed image
no longer shows; CPS with TorchSemiSeg's CutMix boxes scored 18.9 mIoU at 1/16, seed 0,
against 30.4 labeled-only), so this is the paper's CPS on the plain labeled and unlabeled
images with TorchSemiSeg's weight for it, 1.5; see ``jaxsemiseg/methods/cps.py``.
``--config.cps.cutmix=True --config.cps.cps_weight=1.0`` is CPS with CutMix, as
``configs/voc_cps.py``. Evaluation averages the two nets' probabilities
(``cotraining.evaluate_members`` scores each net too).

  python -m jaxsemiseg.main --config=configs/cps.py --workdir=/tmp/jaxsemiseg/cps
"""

from jaxsemiseg.config import SHAPES_CUTMIX_P, base_config


def get_config(arg=None):
  del arg
  config = base_config("cps")
  config.cps.cutmix = SHAPES_CUTMIX_P > 0
  # TorchSemiSeg's cps_weight for CPS without CutMix (voc8.res50v3+.CPS).
  config.cps.cps_weight = 1.5
  return config
