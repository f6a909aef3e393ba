r"""Offline self-training (ST): teacher -> student rounds on the bundled "shapes" dataset.

The quick start's UNet-S and 1/8 labels. Round 0 (the teacher) trains on the labeled
images; after each round its final model labels the whole unlabeled pool with ST++'s
test-time augmentation (scales 0.5-2 and flips), pixels below the confidence threshold
ignored, and the next round (a student, from scratch) trains on 8 labeled + 8
pseudo-labeled images per step, the pseudo-labeled ones on their strong view. See
``jaxsemiseg/self_training_rounds.py`` and ``jaxsemiseg/methods/pseudo_label.py``.

  python -m jaxsemiseg.main --config=configs/pseudo_label.py --workdir=/tmp/jaxsemiseg/st

The rounds live in ``<workdir>/round_<k>``, the pseudo-labels in ``<workdir>/pseudo_labels``;
rerunning the command resumes where it stopped. ``--mode=eval`` evaluates the last round.
"""

from jaxsemiseg.config import base_config


def get_config(arg=None):
  del arg
  config = base_config("pseudo_label")
  config.pseudo_label.variant = "st"
  # A teacher and two students of 2000 steps at 16 images per step: each round sees as
  # many images as the 4000-step supervised quick start (batch 8), and the three together
  # cost about the step time of configs/fixmatch.py (plus two labeling passes). They do not
  # follow --config.num_steps: for another budget set --config.pseudo_label.round_steps.
  config.pseudo_label.round_steps = (2000, 2000, 2000)
  # The classic confidence-filtered pseudo-labels; ST itself keeps every pixel (0.0).
  # Not tuned on this dataset.
  config.pseudo_label.confidence_threshold = 0.9
  return config
