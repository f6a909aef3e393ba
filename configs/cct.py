r"""Cross-Consistency Training (CCT) on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, batch 8 labeled + 8
unlabeled, 1/8 labeled); 30 auxiliary heads with the reference's perturbations (VAT 2,
dropout 6, guided cutout 6, context masking 2, object masking 2, feature drop 6, feature
noise 6), consistency weight 30 ramped up over the first 10% of the steps (see
``jaxsemiseg/methods/cct.py``). Evaluation uses the main head.

  python -m jaxsemiseg.main --config=configs/cct.py --workdir=/tmp/jaxsemiseg/cct
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("cct")
  config.cct.rampup_steps = config.num_steps // 10
  return config
