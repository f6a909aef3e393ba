r"""Ensemble self-training (K = 4 vmapped members) on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 + 8 unlabeled, 1/8 labeled). Four members with different initialisations train
in one jitted step; each trains FixMatch's objective on the hard pseudo-labels of the
members' mean probability, kept where its confidence is at least 0.95, on its own strong
view (colour; no CutMix box on the shapes, ``config.SHAPES_CUTMIX_P``); see
``jaxsemiseg/methods/ensemble_self_training.py``.
Evaluation averages the members' probabilities. Other filters:
``--config.ensemble_self_training.filter=entropy`` (``max_entropy``) or
``=mutual_information`` (``max_mutual_information``).

  python -m jaxsemiseg.main --config=configs/ensemble_self_training.py \
      --workdir=/tmp/jaxsemiseg/ensemble_self_training
"""

from jaxsemiseg.config import SHAPES_CUTMIX_P, base_config


def get_config(arg=None):
  del arg
  config = base_config("ensemble_self_training")
  config.ensemble_self_training.cutmix_p = SHAPES_CUTMIX_P
  return config
