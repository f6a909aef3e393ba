r"""Uncertainty-aware Mean Teacher (UA-MT) on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled) with UA-MT's settings (yulequan/UA-MT): EMA decay
0.99, consistency weight 0.1, T = 8 noisy MC Dropout passes of the teacher, entropy
threshold ramped from 0.75 ln C to ln C, both ramps over the whole run; see
``jaxsemiseg/methods/ua_mt.py``. Evaluation uses the student.

The teacher's uncertainty needs dropout: the UNet gets dropout 0.5 on its classifier input,
UA-MT's rate (its VNet drops whole channels with ``Dropout3d(0.5)`` on the bottleneck and
before the output convolution; the UNet has one, element-wise, dropout site). The reference's
labeled loss is ``(CE + Dice) / 2`` on its two-class volumes; here it is the library's CE,
as in the other rows of the benchmark.

  python -m jaxsemiseg.main --config=configs/ua_mt.py --workdir=/tmp/jaxsemiseg/ua_mt
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("ua_mt")
  config.model.unet.dropout_rate = 0.5
  return config
