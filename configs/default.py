r"""Supervised baseline (labeled images only) on the bundled "shapes" dataset.

The quick start: a small UNet, 1/8 of the 2000 training images labeled, trained on a CPU
in a few minutes, printing the validation mIoU.

  python -m jaxsemiseg.main --config=configs/default.py --workdir=/tmp/jaxsemiseg/default

Other labeled fractions: ``--config.dataset.labeled_fraction=0.0625`` (1/16) ... ``=1.0``.
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  return base_config()
