r"""Cross pseudo supervision (CPS) with CutMix on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled + 8 CutMix partners, 1/8 labeled) for each of the two nets, with
TorchSemiSeg's VOC CutMix settings (weight 1, 3 boxes of area 0.25-0.5); see
``jaxsemiseg/methods/cps.py``. Evaluation averages the two nets' probabilities
(``cotraining.evaluate_members`` scores each net too).

  python -m jaxsemiseg.main --config=configs/cps.py --workdir=/tmp/jaxsemiseg/cps
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  return base_config("cps")
