"""UniMatch (Yang et al., CVPR 2023), as LiheYoung/UniMatch ``unimatch.py`` (METHODS.md 4).

FixMatch (see ``methods/fixmatch.py``) with two strong views and a feature-perturbation
stream, per step:

1. The partner batch B (``image_u2``) is predicted in eval mode, without gradient.
2. The labeled images and A's weak view (``image_u``) go through the network in train
   mode in one batch, with channel dropout (``Dropout2d``, rate 0.5) on the decoder's
   input features: the decoder reads ``[clean; perturbed]`` features in one concatenated
   batch, as the reference does, so BatchNorm in the decoder sees both. The clean
   predictions of A (no gradient) are the pseudo-labels; the perturbed ones are trained on
   them (``L_fp``).
3. Two strong views of A, each with its own colour draw and CutMix box of B's strong view,
   go through the network in one train-mode batch (``L_s1``, ``L_s2``).
4. ``L = 1/2 [L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp]``, every unlabeled term
   ``sum CE [q >= tau] [valid] / #valid``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg.augment import mixing
from jaxsemiseg.methods import common, self_training, supervised
from jaxsemiseg.state import TrainState

USES_UNLABELED = True
NUM_UNLABELED_VIEWS = 2

# Weights of L_x, L_s1, L_s2 and L_fp inside the 1/2 [...] of the reference.
LABELED_WEIGHT, STRONG_WEIGHT, FEATURE_PERTURBATION_WEIGHT = 1.0, 0.25, 0.5


def default_config() -> ml_collections.ConfigDict:
  """``threshold`` tau, ``cutmix_p`` (chance of a box) and the feature dropout rate."""
  return ml_collections.ConfigDict(dict(
      # UniMatch's conf_thresh for Pascal VOC and COCO (Cityscapes: 0 with OHEM).
      threshold=0.95,
      # UniMatch's obtain_cutmix_box(p=0.5), drawn independently for each strong view.
      cutmix_p=0.5,
      # nn.Dropout2d(0.5) on the decoder inputs.
      feature_dropout_rate=0.5,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.unimatch`` value outside its range."""
  settings = config.unimatch
  self_training.check_unit_interval("config.unimatch.threshold", settings.threshold)
  self_training.check_unit_interval("config.unimatch.cutmix_p", settings.cutmix_p)
  if not 0.0 <= settings.feature_dropout_rate < 1.0:
    raise ValueError(
        f"config.unimatch.feature_dropout_rate={settings.feature_dropout_rate}; expected a "
        "rate in [0, 1).")


# The state is the supervised one: parameters, BatchNorm statistics and the optimizer.
init_state = supervised.init_state


def channel_dropout(key: jax.Array, features: jax.Array, *, rate: float) -> jax.Array:
  """``Dropout2d``: zeroes whole channels of NHWC ``features``, scales the rest by 1/(1-rate).

  Args:
    key: PRNG key.
    features: ``[B, H, W, C]``.
    rate: probability of dropping a channel of an example, in ``[0, 1)``.

  Returns:
    The features, same shape and dtype.
  """
  keep = jax.random.bernoulli(key, 1.0 - rate, features.shape[:1] + (1, 1) + features.shape[3:])
  return jnp.where(keep, features / (1.0 - rate), 0).astype(features.dtype)


def clean_and_dropped(key: jax.Array, features: jax.Array, *, rate: float,
                      perturbed_from: int = 0) -> jax.Array:
  """``[features; channel_dropout(features[perturbed_from:])]``: the model's
  ``decoder_input_perturbation``.

  The decoder then runs on the clean and the perturbed features in one batch, as
  UniMatch's ``model(torch.cat((x, x_u_w)), need_fp=True)``. The reference perturbs every
  row and uses the unlabeled ones; ``perturbed_from`` skips rows whose perturbed
  prediction is never used (exact without BatchNorm, where rows do not interact).
  """
  return jnp.concatenate([features,
                          channel_dropout(key, features[perturbed_from:], rate=rate)])


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u``, ``valid_u``, ``image_u2`` and
  ``valid_u2``. Metrics: ``loss``, ``loss_x`` (with the labeled terms such as
  ``loss_ce``), ``loss_s1``, ``loss_s2``, ``loss_fp``, ``confident_fraction`` (of A's
  valid weak pixels) and ``grad_norm``.
  """
  settings = config.unimatch

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    view_rng, weak_rng, perturbation_rng, strong_rng = jax.random.split(rng, 4)
    partner, strong, boxes = self_training.partner_and_strong_views(
        view_rng, model, state, batch, num_views=2, cutmix_p=settings.cutmix_p)
    num_labeled = batch["image"].shape[0]
    num_weak = num_labeled + batch["image_u"].shape[0]
    unlabeled_loss = functools.partial(self_training.confident_cross_entropy,
                                       threshold=settings.threshold)

    # With BatchNorm the labeled rows' perturbed features enter the decoder's batch
    # statistics, as in the reference; without it, perturbing them would be wasted work
    # (a third off the UNet-S step).
    perturbed_from = 0 if state.batch_stats else num_labeled

    def loss_fn(params: Any):
      # The decoder reads [clean; channel-dropped] encoder features: one train-mode pass
      # gives the clean predictions first, then the feature-perturbed ones.
      outputs, batch_stats = common.forward(
          model, params, state.batch_stats,
          jnp.concatenate([batch["image"], batch["image_u"]]), train=True, rng=weak_rng,
          perturbation_rng=perturbation_rng,
          decoder_input_perturbation=functools.partial(
              clean_and_dropped, rate=settings.feature_dropout_rate,
              perturbed_from=perturbed_from))
      clean, perturbed = outputs["logits"][:num_weak], outputs["logits"][num_weak:]
      loss_x, terms = common.supervised_loss(clean[:num_labeled], batch["label"], config.loss)
      weak = self_training.pseudo_labels_from_logits(clean[num_labeled:], batch["valid_u"])
      strong_outputs, batch_stats = common.forward(
          model, params, batch_stats, strong.reshape((-1,) + strong.shape[2:]), train=True,
          rng=strong_rng)
      logits_s1, logits_s2 = jnp.split(strong_outputs["logits"], 2)
      loss_terms = {
          "loss_x": loss_x,
          "loss_s1": unlabeled_loss(logits_s1, mixing.mix(boxes[0], weak, partner)),
          "loss_s2": unlabeled_loss(logits_s2, mixing.mix(boxes[1], weak, partner)),
          "loss_fp": unlabeled_loss(perturbed[num_labeled - perturbed_from:], weak),
      }
      total = (LABELED_WEIGHT * loss_terms["loss_x"]
               + STRONG_WEIGHT * (loss_terms["loss_s1"] + loss_terms["loss_s2"])
               + FEATURE_PERTURBATION_WEIGHT * loss_terms["loss_fp"]) / 2
      metrics = {**terms, **loss_terms, "confident_fraction": self_training.confident_fraction(
          weak, threshold=settings.threshold)}
      return total, (batch_stats, metrics)

    return self_training.apply_gradients(state, tx, loss_fn)

  return step
