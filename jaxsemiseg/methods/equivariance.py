"""Geometric-equivariance consistency: ``f(T x)`` should equal ``T f(x)`` on unlabeled images.

The transformation-consistent scheme of TCSM (Li et al., "Transformation-consistent
self-ensembling model for semi-supervised medical image segmentation"): a segmenter
commutes with flips, quarter turns and mild affine maps, so its prediction on a
transformed image must be the transformed prediction. Per step, for the unlabeled batch
``x`` (``image_u``):

1. Each image draws its own transform ``T`` (``augment.geometric``): a left-right flip
   with probability 1/2 (``flip``), ``k ~ U{0..3}`` quarter turns (``rot90``) and a
   random affine map (``degrees``, ``scale``, ``translate``; the identity by default),
   composed into one warp. The student view is ``T x`` (fill 0), with UniMatch's strong
   colour draw on top (``strong_colour``).
2. The labeled images, ``x`` and the student view go through the model in one train-mode
   batch (dropout on: the Pi-model's two stochastic passes). The target is
   ``T softmax(f(x))``, the probabilities of ``x`` warped into the view's frame, with no
   gradient.
3. ``L = L_x + w(t) D(f(T x), T f(x))`` over the pixels of the view whose every bilinear
   source tap lies inside ``x`` and on a valid (unpadded) pixel; ``D`` is ``loss``: "mse"
   (``losses.probability_mse``), "kl" (``KL(target || student)``) or "jsd" (the true
   Jensen-Shannon divergence of the two); ``w(t) = consistency_weight
   sigmoid_rampup(t, rampup_steps)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses
from jaxsemiseg.augment import geometric
from jaxsemiseg.methods import common, self_training, supervised
from jaxsemiseg.state import TrainState

USES_UNLABELED = True

CONSISTENCY_LOSSES = ("mse", "kl", "jsd")

# A view pixel counts when the bilinear weights of its inside, valid source taps sum to
# at least this: every tap that matters is inside the original frame.
_FULL_COVERAGE = 1.0 - 1e-4


def default_config() -> ml_collections.ConfigDict:
  """The consistency loss and weight, the transform family and the colour perturbation."""
  return ml_collections.ConfigDict(dict(
      # One of CONSISTENCY_LOSSES. TCSM uses the MSE of probabilities.
      loss="mse",
      # No segmentation reference fixes this weight for a mean-over-pixels-and-classes MSE
      # (TCSM's MSE is summed over pixels); CCT's MSE weight, 30, has the same normaliser.
      # KL and JSD sum over classes, so they are about C times the MSE: lower it for them.
      consistency_weight=30.0,
      # As CCT, the first 10% of the default 4000 steps.
      rampup_steps=400,
      # TCSM's transforms: flips and quarter turns (all 8 symmetries of the square).
      flip=True,
      rot90=True,
      # Random affine on top (torchvision RandomAffine conventions); identity by default.
      degrees=0.0,
      scale=(1.0, 1.0),
      translate=0.0,
      # UniMatch's strong colour draw on the transformed view.
      strong_colour=True,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.equivariance`` value outside its range."""
  settings = config.equivariance
  self_training.check_one_of("config.equivariance.loss", settings.loss, CONSISTENCY_LOSSES)
  for name in ("consistency_weight", "rampup_steps", "degrees"):
    self_training.check_non_negative(f"config.equivariance.{name}", settings[name])
  if len(settings.scale) != 2 or not 0 < settings.scale[0] <= settings.scale[1]:
    raise ValueError(
        f"config.equivariance.scale={tuple(settings.scale)}; expected a zoom range (low, "
        "high) with 0 < low <= high.")
  self_training.check_unit_interval("config.equivariance.translate", settings.translate)


# The state is the supervised one: parameters, BatchNorm statistics and the optimizer.
init_state = supervised.init_state


def random_warp(key: jax.Array, image: jax.Array, *, flip: bool, rot90: bool,
                degrees: float = 0.0, scale: tuple[float, float] = (1.0, 1.0),
                translate: float = 0.0) -> geometric.Warp:
  """Draws one example's transform: flip, then quarter turns, then a random affine map.

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` the image the transform is for (only its shape is used once
      jitted).
    flip: left-right flip with probability 1/2.
    rot90: ``k ~ U{0, 1, 2, 3}`` counter-clockwise quarter turns.
    degrees: rotation range ``(-degrees, degrees)`` of the affine map.
    scale: zoom range of the affine map.
    translate: maximal shift of the affine map as a fraction of each side.

  Returns:
    The composed :class:`geometric.Warp` (output frame -> input frame).
  """
  flip_key, turn_key, affine_key = jax.random.split(key, 3)
  warps = []
  if flip:
    warps.append(geometric.random_flip_left_right(flip_key, image)[2])
  if rot90:
    warps.append(geometric.random_rot90(turn_key, image)[2])
  warps.append(geometric.random_affine(
      affine_key, image, degrees=degrees, scale=tuple(scale),
      translate=(translate, translate) if translate > 0 else None)[2])
  return functools.reduce(geometric.compose, warps)


def transform_images(warps: geometric.Warp, images: jax.Array) -> jax.Array:
  """``T x`` for a batch: each image warped by its own transform (bilinear, fill 0).

  Args:
    warps: a batched :class:`geometric.Warp` (leading axis B), e.g. ``jax.vmap`` of
      :func:`random_warp`.
    images: ``[B, H, W, C]``.

  Returns:
    ``[B, H', W', C]`` in the transforms' output frames.
  """
  return jax.vmap(lambda warp, image: geometric.warp(warp, image)[0])(warps, images)


def transform_targets(warps: geometric.Warp, probs: jax.Array,
                      valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``T f(x)``: probabilities carried into the transformed frame, and where they count.

  Probabilities are resampled bilinearly. A view pixel counts when all of its bilinear
  source taps with non-zero weight fall inside the original image on ``valid`` pixels,
  so fill and crop padding never reach the loss: the ``valid`` mask is warped as one
  more channel with fill 0 and must come out (nearly) 1.

  Args:
    warps: the batched transforms.
    probs: ``[B, H, W, C]`` probabilities in the original frame.
    valid: bool ``[B, H, W]`` real (not padded) pixels of the originals.

  Returns:
    ``(target_probs [B, H', W', C], counted bool [B, H', W'])``.
  """
  def one(warp: geometric.Warp, prob: jax.Array, mask: jax.Array):
    stacked = jnp.concatenate([prob, mask[..., None].astype(prob.dtype)], axis=-1)
    warped, _ = geometric.warp(warp, stacked, fill=0.0)
    return warped[..., :-1], warped[..., -1] >= _FULL_COVERAGE

  return jax.vmap(one)(warps, probs.astype(jnp.float32), valid)


def consistency(logits: jax.Array, target_probs: jax.Array, mask: jax.Array, *,
                kind: str) -> jax.Array:
  """The consistency ``D`` between the student's logits and (detached) target probabilities.

  Args:
    logits: ``[B, H, W, C]`` student logits on the view (these get the gradient).
    target_probs: ``[B, H, W, C]`` targets in the same frame.
    mask: bool ``[B, H, W]`` pixels that count.
    kind: "mse" (mean over counted pixels and classes), "kl" (``KL(target || student)``
      per pixel) or "jsd" (``H(mean) - mean H`` of the two), averaged over counted pixels.

  Returns:
    The scalar loss; 0 when no pixel counts.

  Raises:
    ValueError: on an unknown ``kind``.
  """
  target_probs = jax.lax.stop_gradient(target_probs)
  if kind == "mse":
    return losses.probability_mse(jax.nn.softmax(logits, axis=-1), target_probs, mask=mask)[0]
  if kind == "kl":
    return losses.kl_divergence(target_probs, logits, mask=mask)[0]
  if kind == "jsd":
    pair = jnp.stack([jax.nn.softmax(logits.astype(jnp.float32), axis=-1), target_probs])
    return losses.jensen_shannon(pair, mask=mask)[0]
  raise ValueError(f"kind={kind!r}; expected one of {CONSISTENCY_LOSSES}.")


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u`` and ``valid_u``. Metrics: ``loss``,
  ``loss_x`` (with the labeled terms such as ``loss_ce``), ``loss_consistency``,
  ``consistency_weight`` (the ramped weight of this step) and ``grad_norm``.
  """
  settings = config.equivariance
  draw = functools.partial(random_warp, flip=settings.flip, rot90=settings.rot90,
                           degrees=settings.degrees, scale=tuple(settings.scale),
                           translate=settings.translate)

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    warp_rng, colour_rng, dropout_rng = jax.random.split(rng, 3)
    images_u = batch["image_u"]
    warps = jax.vmap(draw)(jax.random.split(warp_rng, images_u.shape[0]), images_u)
    view = transform_images(warps, images_u)
    if settings.strong_colour:
      view = self_training.strong_colour_batch(colour_rng, view)
    weight = settings.consistency_weight * losses.sigmoid_rampup(
        state.step, length=settings.rampup_steps)

    def loss_fn(params: Any):
      loss_x, terms, unlabeled_logits, batch_stats = common.forward_labeled_and_unlabeled(
          dropout_rng, model, params, state.batch_stats, batch["image"], batch["label"],
          jnp.concatenate([images_u, view]), loss_config=config.loss,
          num_target_rows=images_u.shape[0])
      logits_u, logits_view = jnp.split(unlabeled_logits, 2)
      target, counted = transform_targets(
          warps, jax.nn.softmax(jax.lax.stop_gradient(logits_u), axis=-1), batch["valid_u"])
      loss_consistency = consistency(logits_view, target, counted, kind=settings.loss)
      metrics = {**terms, "loss_x": loss_x, "loss_consistency": loss_consistency,
                 "consistency_weight": weight}
      return loss_x + weight * loss_consistency, (batch_stats, metrics)

    return self_training.apply_gradients(state, tx, loss_fn)

  return step
