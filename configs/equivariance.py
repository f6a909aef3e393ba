r"""Geometric-equivariance consistency on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, batch 8 labeled + 8
unlabeled, 1/8 labeled); random flips and quarter turns with the strong colour draw on the
transformed view, MSE consistency with weight 30 ramped up over the first 10% of the steps
(see ``jaxsemiseg/methods/equivariance.py``). Another consistency:
``--config.equivariance.loss=jsd`` (or ``kl``) with a lower ``consistency_weight``.

  python -m jaxsemiseg.main --config=configs/equivariance.py \
      --workdir=/tmp/jaxsemiseg/equivariance
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("equivariance")
  config.equivariance.rampup_steps = config.num_steps // 10
  return config
