r"""Deep Co-Training (two nets, JSD + view difference) on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled); each net trains on its own random half of every
labeled batch. Weights 10 (JSD) and 0.5 (view difference), ramped up over 1000 steps;
FGSM / VAT epsilon 0.05. The reference's three separate updates per iteration are fused
into one here; see ``jaxsemiseg/methods/deep_cotraining.py`` for this and the other
deviations. Evaluation averages the nets' probabilities.

  python -m jaxsemiseg.main --config=configs/deep_cotraining.py \
      --workdir=/tmp/jaxsemiseg/deep_cotraining
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  return base_config("deep_cotraining")
