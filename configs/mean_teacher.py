r"""Mean Teacher on the bundled "shapes" dataset.

The supervised quick start's budget (``configs/default.py``: UNet-S, 4000 steps, batch 8
labeled + 8 unlabeled, 1/8 labeled); EMA decay 0.99, consistency weight 100 ramped up
over 500 steps (see ``jaxsemiseg/methods/mean_teacher.py``). Evaluation uses the teacher.

  python -m jaxsemiseg.main --config=configs/mean_teacher.py \
      --workdir=/tmp/jaxsemiseg/mean_teacher
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  return base_config("mean_teacher")
