"""FixMatch for segmentation, as UniMatch's ``fixmatch.py`` (METHODS.md 1a and 4).

Per step, with ``image_u`` (batch A) and ``image_u2`` (batch B, the CutMix partner):

1. B's weak view is predicted in eval mode, without gradient, by the current network:
   hard pseudo-labels and confidences for the pixels pasted from B.
2. The labeled images and A's weak view go through the network in train mode in one
   batch; A's weak predictions (no gradient) are its pseudo-labels and confidences.
3. A's strong view: strong colour of A with a CutMix box of B's strong colour view; its
   targets are A's pseudo-labels with B's inside the box.
4. ``L = (L_x + L_s) / 2`` with ``L_s = sum CE(z_s, y_hat) [q >= tau] [valid] / #valid``.

Step 2 differs from a separate eval-mode pass on A: as in the reference, A's pseudo-labels
come from the train-mode forward (BatchNorm batch statistics, dropout on) that also
computes the labeled loss. The BatchNorm running statistics are updated by both
train-mode passes in turn, as two PyTorch forwards would. A model without BatchNorm (the
UNet) gets the same outputs from two passes, and only the labeled one is differentiated
(``common.forward_labeled_and_unlabeled``; ~18% off the UNet-S step).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from jaxsemiseg.augment import mixing
from jaxsemiseg.methods import common, self_training, supervised
from jaxsemiseg.state import TrainState

USES_UNLABELED = True
NUM_UNLABELED_VIEWS = 2


def default_config() -> ml_collections.ConfigDict:
  """``threshold``: tau on the weak view's confidence; ``cutmix_p``: chance of a box."""
  return ml_collections.ConfigDict(dict(
      # UniMatch's conf_thresh for Pascal VOC and COCO (Cityscapes: 0 with OHEM).
      threshold=0.95,
      # UniMatch's obtain_cutmix_box(p=0.5).
      cutmix_p=0.5,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.fixmatch`` value outside ``[0, 1]``."""
  self_training.check_unit_interval("config.fixmatch.threshold", config.fixmatch.threshold)
  self_training.check_unit_interval("config.fixmatch.cutmix_p", config.fixmatch.cutmix_p)


# The state is the supervised one: parameters, BatchNorm statistics and the optimizer.
init_state = supervised.init_state


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u``, ``valid_u``, ``image_u2`` and
  ``valid_u2``. Metrics: ``loss``, ``loss_x`` (with the labeled terms such as
  ``loss_ce``), ``loss_s``, ``confident_fraction`` (of A's valid weak pixels) and
  ``grad_norm``.
  """
  settings = config.fixmatch

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    view_rng, weak_rng, strong_rng = jax.random.split(rng, 3)
    partner, strong, boxes = self_training.partner_and_strong_views(
        view_rng, model, state, batch, num_views=1, cutmix_p=settings.cutmix_p)

    def loss_fn(params: Any):
      loss_x, terms, weak_logits, batch_stats = common.forward_labeled_and_unlabeled(
          weak_rng, model, params, state.batch_stats, batch["image"], batch["label"],
          batch["image_u"], loss_config=config.loss,
          num_target_rows=batch["image_u"].shape[0])
      weak = self_training.pseudo_labels_from_logits(weak_logits, batch["valid_u"])
      strong_outputs, batch_stats = common.forward(
          model, params, batch_stats, strong[0], train=True, rng=strong_rng)
      loss_s = self_training.confident_cross_entropy(
          strong_outputs["logits"], mixing.mix(boxes[0], weak, partner),
          threshold=settings.threshold)
      metrics = {**terms, "loss_x": loss_x, "loss_s": loss_s,
                 "confident_fraction": self_training.confident_fraction(
                     weak, threshold=settings.threshold)}
      return (loss_x + loss_s) / 2, (batch_stats, metrics)

    return self_training.apply_gradients(state, tx, loss_fn)

  return step
