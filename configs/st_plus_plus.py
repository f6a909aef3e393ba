r"""ST++ (Yang et al., CVPR 2022) on the bundled "shapes" dataset.

The quick start's UNet-S and 1/8 labels. The teacher trains on the labeled images and
keeps snapshots at 1/3 and 2/3 of its steps; the unlabeled images are ranked by the
stability of their predictions across the snapshots and the final model, and the more
stable half is pseudo-labeled by the teacher (test-time augmentation: scales 0.5-2 and
flips; every pixel kept). Student 1 trains from scratch on 8 labeled + 8 pseudo-labeled
images per step (those on their strong view); it relabels the less stable half, and
student 2 trains on everything. See ``jaxsemiseg/self_training_rounds.py``.

  python -m jaxsemiseg.main --config=configs/st_plus_plus.py --workdir=/tmp/jaxsemiseg/stpp

Rerunning the command resumes where it stopped; ``--mode=eval`` evaluates student 2.
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("pseudo_label")
  config.pseudo_label.variant = "st++"
  # Teacher, student 1 and student 2 at 2000 steps of 16 images each: each round sees as
  # many images as the 4000-step supervised quick start (batch 8), and the three together
  # cost about the step time of configs/fixmatch.py (plus the ranking and labeling passes).
  config.pseudo_label.round_steps = (2000, 2000, 2000)
  return config
