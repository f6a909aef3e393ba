"""What the self-training methods share: pseudo-labels, their loss, strong views, EMA.

FixMatch and UniMatch (LiheYoung/UniMatch ``fixmatch.py``, ``unimatch.py``; METHODS.md 1a
and 4) train a strong view of an unlabeled image on the hard pseudo-labels of its weak
view, counting only confident pixels but dividing by every valid pixel. Their strong
views paste a box of a second unlabeled image (``image_u2``), whose own weak prediction
supplies the pseudo-labels inside the box. Mean Teacher keeps an exponential moving
average of the student's parameters. One implementation of each piece lives here, and
so do the field checks the methods' ``check_config`` share (``check_unit_interval``,
``check_non_negative``, ``check_one_of``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxsemiseg import losses
from jaxsemiseg.augment import mixing, photometric
from jaxsemiseg.methods import common
from jaxsemiseg.state import TrainState


class PseudoLabels(NamedTuple):
  """Hard pseudo-labels of a batch; a pytree, so ``mixing.mix`` cuts all three at once.

  Attributes:
    labels: int32 ``[B, H, W]``, the argmax class.
    confidence: float32 ``[B, H, W]``, the max class probability ``q``.
    valid: bool ``[B, H, W]``, False on pixels that never count (crop padding).
  """

  labels: jax.Array
  confidence: jax.Array
  valid: jax.Array


def pseudo_labels_from_logits(logits: jax.Array, valid: jax.Array) -> PseudoLabels:
  """Argmax and max probability of ``logits`` ``[B, H, W, C]``, with no gradient.

  Args:
    logits: the weak view's logits.
    valid: bool ``[B, H, W]`` mask of real (not padded) pixels.

  Returns:
    The pseudo-labels.
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
  return PseudoLabels(labels=jnp.argmax(probs, axis=-1).astype(jnp.int32),
                      confidence=jnp.max(probs, axis=-1), valid=valid.astype(bool))


def predict_pseudo_labels(model, params: Any, batch_stats: Any, images: jax.Array,
                          valid: jax.Array) -> PseudoLabels:
  """Pseudo-labels from the model in eval mode, as UniMatch labels the mixing partner.

  Eval mode means BatchNorm running statistics and no dropout; the parameters are the
  current student's (no EMA) and no gradient flows back.

  Args:
    model: the segmentation model.
    params: its parameters.
    batch_stats: its BatchNorm statistics (empty for models without BatchNorm).
    images: float32 ``[B, H, W, 3]`` weak views.
    valid: bool ``[B, H, W]`` mask of real pixels.

  Returns:
    The pseudo-labels.
  """
  outputs, _ = common.forward(model, params, batch_stats, images, train=False)
  return pseudo_labels_from_logits(outputs["logits"], valid)


def confident_mask(pseudo: PseudoLabels, *, threshold: float) -> jax.Array:
  """Bool ``[B, H, W]``: valid pixels whose confidence is at least ``threshold``."""
  return pseudo.valid & (pseudo.confidence >= threshold)


def confident_fraction(pseudo: PseudoLabels, *, threshold: float) -> jax.Array:
  """``#confident valid pixels / #valid pixels`` (UniMatch's logged "Mask" ratio)."""
  counted = confident_mask(pseudo, threshold=threshold).sum()
  return counted / jnp.maximum(pseudo.valid.sum(), 1).astype(jnp.float32)


def confident_cross_entropy(logits: jax.Array, pseudo: PseudoLabels, *,
                            threshold: float) -> jax.Array:
  """UniMatch's unlabeled loss: ``sum CE(z, y_hat) [q >= tau] [valid] / #valid``.

  ``losses.pseudo_label_cross_entropy`` on a ``PseudoLabels``; its normaliser is the number
  of **valid** pixels, confident or not (METHODS.md 1a). 0 when no pixel is valid.

  Args:
    logits: ``[B, H, W, C]`` predictions on the view being trained.
    pseudo: its pseudo-labels (already CutMix-ed where the view is).
    threshold: the confidence threshold ``tau``.

  Returns:
    The scalar loss.
  """
  loss, _ = losses.pseudo_label_cross_entropy(
      logits, pseudo.labels, confidence=pseudo.confidence, threshold=threshold,
      valid=pseudo.valid)
  return loss


def strong_colour_batch(key: jax.Array, images: jax.Array) -> jax.Array:
  """``photometric.unimatch_strong_colour`` of every image, each with its own key.

  Args:
    key: PRNG key, split into one key per image.
    images: float32 ``[B, H, W, 3]``.

  Returns:
    The ``[B, H, W, 3]`` strong colour views.
  """
  return jax.vmap(photometric.unimatch_strong_colour)(
      jax.random.split(key, images.shape[0]), images)


def strong_cutmix_views(key: jax.Array, images: jax.Array, partner_images: jax.Array, *,
                        num_views: int, cutmix_p: float) -> tuple[jax.Array, jax.Array]:
  """UniMatch strong views of ``images``, each with a box of a partner's strong view.

  Every view of every image, and of its partner, gets its own strong colour draw
  (``photometric.unimatch_strong_colour``); then a ``mixing.unimatch_cutmix_box`` per view
  and image (with probability ``cutmix_p``) takes the partner's pixels. Apply a view's
  boxes with ``mixing.mix(boxes[v], pseudo, partner_pseudo)`` to get its pseudo-labels.
  All draws run in one ``vmap``, which keeps the compiled step small.

  Args:
    key: PRNG key.
    images: float32 ``[B, H, W, 3]`` weak views.
    partner_images: float32 ``[B, H, W, 3]`` weak views of the second unlabeled batch.
    num_views: V, the number of strong views (FixMatch 1, UniMatch 2).
    cutmix_p: probability that a view of an image gets a box.

  Returns:
    ``(strong_images, boxes)``: float32 ``[V, B, H, W, 3]`` and bool ``[V, B, H, W]``
    (True = from the partner).

  Raises:
    ValueError: if the two batches differ in shape or ``num_views`` < 1.
  """
  if images.shape != partner_images.shape:
    raise ValueError(
        f"images have shape {images.shape} and partner_images {partner_images.shape}; "
        "expected two unlabeled batches of one shape (config.unlabeled_batch_size each).")
  if num_views < 1:
    raise ValueError(f"num_views={num_views}; expected at least 1.")
  colour_key, box_key = jax.random.split(key)
  batch_size = images.shape[0]
  originals = jnp.concatenate([images] * num_views + [partner_images] * num_views)
  coloured = strong_colour_batch(colour_key, originals)
  strong, partner_strong = coloured.reshape((2, num_views) + images.shape)
  sampler = functools.partial(mixing.unimatch_cutmix_box, size=images.shape[1:3], p=cutmix_p)
  boxes = jax.vmap(sampler)(jax.random.split(box_key, num_views * batch_size))
  boxes = boxes.reshape((num_views,) + images.shape[:3])
  return mixing.mix(boxes, strong, partner_strong), boxes


def partner_and_strong_views(
    key: jax.Array, model, state: TrainState, batch: dict, *, num_views: int,
    cutmix_p: float) -> tuple[PseudoLabels, jax.Array, jax.Array]:
  """FixMatch's and UniMatch's CutMix inputs: the partner's pseudo-labels, strong views.

  The partner batch ``image_u2`` is labeled in eval mode by the current network
  (``predict_pseudo_labels``) and ``strong_cutmix_views`` pastes boxes of its strong views
  into ``num_views`` strong views of ``image_u``.

  Args:
    key: PRNG key of the strong views.
    model: the segmentation model.
    state: the train state whose ``params`` and ``batch_stats`` label the partner.
    batch: needs ``image_u``, ``image_u2`` and ``valid_u2``.
    num_views: V, the number of strong views (FixMatch 1, UniMatch 2).
    cutmix_p: probability that a view of an image gets a box.

  Returns:
    ``(partner, strong_images, boxes)``: the partner's ``PseudoLabels`` and
    ``strong_cutmix_views``' ``[V, B, H, W, 3]`` images and ``[V, B, H, W]`` boxes.

  Raises:
    ValueError: as ``strong_cutmix_views``.
  """
  partner = predict_pseudo_labels(model, state.params, state.batch_stats,
                                  batch["image_u2"], batch["valid_u2"])
  strong, boxes = strong_cutmix_views(key, batch["image_u"], batch["image_u2"],
                                      num_views=num_views, cutmix_p=cutmix_p)
  return partner, strong, boxes


def check_unit_interval(name: str, value: float) -> None:
  """Raises ValueError naming config field ``name`` unless ``0 <= value <= 1``."""
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value}; expected a value in [0, 1].")


def check_non_negative(name: str, value: float) -> None:
  """Raises ValueError naming config field ``name`` unless ``value >= 0``."""
  if value < 0:
    raise ValueError(f"{name}={value}; expected >= 0.")


def check_one_of(name: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError naming config field ``name`` unless ``value`` is in ``choices``."""
  if value not in choices:
    raise ValueError(f"{name}={value!r}; expected one of {choices}.")


def ema_decay(step: jax.Array | int, *, alpha: float) -> jax.Array:
  """Mean Teacher's warmed-up decay ``min(1 - 1 / (step + 1), alpha)``.

  ``step`` counts the student updates done so far, this one included (CuriousAI/mean-teacher
  increments ``global_step`` before the EMA update), so the first update averages with
  weight 1/2 and the decay reaches ``alpha`` after ``1 / (1 - alpha) - 1`` updates.
  """
  return jnp.minimum(1.0 - 1.0 / (jnp.asarray(step, jnp.float32) + 1.0), alpha)


def ema_update(average: Any, current: Any, *, decay: jax.Array | float) -> Any:
  """``decay * average + (1 - decay) * current`` for every leaf of two matching pytrees."""
  return jax.tree.map(lambda a, c: decay * a + (1.0 - decay) * c, average, current)


def apply_gradients(state: TrainState, tx: optax.GradientTransformation,
                    loss_fn: Callable[[Any], tuple[jax.Array, tuple[Any, dict]]]
                    ) -> tuple[TrainState, dict]:
  """One optimizer update of ``state.params`` on ``loss_fn``.

  Args:
    state: the train state.
    tx: the optimizer.
    loss_fn: ``params -> (loss, (new_batch_stats, metrics))``.

  Returns:
    ``(state, metrics)``: the state one step on (``step + 1``, new params, batch_stats and
    optimizer state, ``extras`` untouched) and ``metrics`` plus ``loss`` and ``grad_norm``.
  """
  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
