"""Pure segmentation losses: cross-entropy, Dice, OHEM, consistency, ramp-up.

The supervised losses take logits ``[..., C]`` and int labels ``[...]`` and skip pixels
labeled ``ignore_index`` (255); labels other than ``ignore_index`` must lie in
``[0, C)`` (the data sources check that on the host). The consistency losses compare two
(or N) predictions, count only the pixels of an optional bool ``mask`` (valid and, where
a method asks, confident), and take no gradient through their target. Every loss
computes in float32 and says in its docstring what it divides by. Losses that can be
split per pixel return ``(scalar, per_pixel_map)``, with 0 in the map wherever a pixel
does not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255


def _check_shapes(logits: jax.Array, labels: jax.Array) -> None:
  if logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"logits have shape {logits.shape} and labels {labels.shape}; expected logits "
        "[..., C] with labels [...] (same leading shape).")


def _pixel_cross_entropy(
    logits: jax.Array, labels: jax.Array, valid: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-pixel ``-sum_c target_c log softmax(logits)_c``; labels at invalid pixels unused."""
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  target = jax.nn.one_hot(safe_labels, num_classes, dtype=jnp.float32)
  target = (1.0 - label_smoothing) * target + label_smoothing / num_classes
  return -(target * log_probs).sum(axis=-1)


def _masked_mean(per_pixel: jax.Array, counted: jax.Array) -> jax.Array:
  """``sum(per_pixel) / #counted``, and 0 (not NaN) when nothing counts."""
  return per_pixel.sum() / jnp.maximum(counted.sum(), 1).astype(jnp.float32)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Pixel cross-entropy with an ignore label, optional per-pixel weights and smoothing.

  The per-pixel loss is ``-sum_c t_c log softmax(logits)_c`` with the target
  ``t = (1 - label_smoothing) * one_hot(label) + label_smoothing / C`` (PyTorch
  ``label_smoothing`` semantics), times ``weights`` when given.

  Normaliser: the number of **valid** (non-ignored) pixels, also when ``weights`` is
  given. A confidence mask passed as ``weights`` therefore reproduces UniMatch /
  FixMatch's ``sum(CE * mask) / #valid``. Gradients flow into ``weights``, so pass a
  stopped mask.

  Args:
    logits: ``[..., C]`` unnormalised scores.
    labels: ``[...]`` int labels in ``[0, C)`` or ``ignore_index``.
    ignore_index: label value of pixels left out of the loss.
    weights: optional ``[...]`` per-pixel weights (e.g. a 0/1 confidence mask).
    label_smoothing: ``epsilon`` in ``[0, 1]``.

  Returns:
    ``(loss, per_pixel)``: the scalar mean over valid pixels (0 when there are none)
    and the ``[...]`` weighted per-pixel loss, 0 at ignored pixels.

  Raises:
    ValueError: on mismatched shapes or ``label_smoothing`` outside ``[0, 1]``.
  """
  _check_shapes(logits, labels)
  if weights is not None and weights.shape != labels.shape:
    raise ValueError(
        f"weights have shape {weights.shape}; expected the labels' shape {labels.shape}.")
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"label_smoothing={label_smoothing}; expected a value in [0, 1].")
  valid = labels != ignore_index
  per_pixel = _pixel_cross_entropy(logits, labels, valid, label_smoothing)
  if weights is not None:
    per_pixel = per_pixel * weights
  per_pixel = jnp.where(valid, per_pixel, 0.0)
  return _masked_mean(per_pixel, valid), per_pixel


def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1.0,
) -> jax.Array:
  """Soft multi-class Dice loss, ``1 - mean_c Dice_c``.

  With ``p = softmax(logits)`` and ``t`` the one-hot labels, summed over every valid
  (non-ignored) pixel of the batch (a "batch Dice", not a per-image mean):
  ``Dice_c = (2 sum p_c t_c + smooth) / (sum p_c + sum t_c + smooth)``. Normaliser:
  the mean over all C classes; ``smooth`` keeps a class absent from both labels and
  prediction near Dice 1 instead of 0/0.

  Args:
    logits: ``[..., C]`` unnormalised scores.
    labels: ``[...]`` int labels in ``[0, C)`` or ``ignore_index``.
    num_classes: C; must equal ``logits.shape[-1]``.
    ignore_index: label value of pixels left out of the loss.
    smooth: additive smoothing of numerator and denominator.

  Returns:
    The scalar loss in ``[0, 1]``.

  Raises:
    ValueError: on mismatched shapes or ``num_classes``, or negative ``smooth``.
  """
  _check_shapes(logits, labels)
  if logits.shape[-1] != num_classes:
    raise ValueError(
        f"logits have {logits.shape[-1]} channels but num_classes={num_classes}; they "
        "must match.")
  if smooth < 0:
    raise ValueError(f"smooth={smooth}; expected a non-negative smoothing constant.")
  valid = (labels != ignore_index)[..., None].astype(jnp.float32)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * valid
  safe_labels = jnp.where(labels != ignore_index, labels, 0)
  target = jax.nn.one_hot(safe_labels, num_classes, dtype=jnp.float32) * valid
  summed_axes = tuple(range(probs.ndim - 1))
  intersection = (probs * target).sum(axis=summed_axes)
  denominator = probs.sum(axis=summed_axes) + target.sum(axis=summed_axes)
  dice = (2.0 * intersection + smooth) / (denominator + smooth)
  return 1.0 - dice.mean()


def ohem_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    threshold: float = 0.7,
    min_kept: int = 100000,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[jax.Array, jax.Array]:
  """Online hard example mining cross-entropy over the whole batch.

  Follows ``ProbOhemCrossEntropy2d`` of UniMatch (``util/ohem.py``), itself U2PL's
  (``u2pl/utils/loss_helper.py``): with ``q`` the softmax probability of each valid
  pixel's true class,

  - if fewer than ``min_kept`` pixels are valid, every valid pixel is kept;
  - otherwise the cut is ``max(threshold, k-th smallest q)`` with
    ``k = min(min_kept, #pixels)``, and the pixels with ``q <= cut`` are kept (``<=``
    as in the reference, so ties at the cut are all kept).

  Selection is over all pixels of all images together, not per image, and in a
  data-parallel step over the **global** batch: the reference runs it per GPU on its
  local batch (then averages the losses), so to keep as many hard pixels as it does on N
  GPUs, pass ``N * min_kept``. The probability used for the selection carries no
  gradient.

  Normaliser: the number of **kept** pixels (PyTorch's mean over non-ignored targets).

  Args:
    logits: ``[..., C]`` unnormalised scores.
    labels: ``[...]`` int labels in ``[0, C)`` or ``ignore_index``.
    threshold: keep every pixel whose true-class probability is at most this.
    min_kept: keep at least this many of the hardest pixels (UniMatch Cityscapes uses
      200000, U2PL 100000).
    ignore_index: label value of pixels left out of the loss.

  Returns:
    ``(loss, per_pixel)``: the scalar mean over kept pixels (0 when none are kept)
    and the ``[...]`` per-pixel cross-entropy, 0 where a pixel is not kept.

  Raises:
    ValueError: on mismatched shapes or a negative ``min_kept``.
  """
  _check_shapes(logits, labels)
  if min_kept < 0:
    raise ValueError(f"min_kept={min_kept}; expected a non-negative pixel count.")
  valid = labels != ignore_index
  per_pixel = _pixel_cross_entropy(logits, labels, valid)

  log_probs = jax.nn.log_softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  true_prob = jnp.exp(jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1))[..., 0]
  # Ignored pixels get probability 1 so that they sort last, as in the reference.
  true_prob = jnp.where(valid, true_prob, 1.0)
  cut = jnp.float32(threshold)
  if min_kept > 0:
    k = min(min_kept, true_prob.size)
    kth_smallest = jnp.sort(true_prob.reshape(-1))[k - 1]
    cut = jnp.maximum(cut, kth_smallest)
  kept = valid & (true_prob <= cut)
  kept = jnp.where(valid.sum() < min_kept, valid, kept)
  per_pixel = jnp.where(kept, per_pixel, 0.0)
  return _masked_mean(per_pixel, kept), per_pixel


def sigmoid_rampup(step: jax.Array | int, *, length: int) -> jax.Array:
  """Sigmoid-shaped ramp from ~0 to 1: ``exp(-5 (1 - clip(step / length, 0, 1))^2)``.

  The Laine & Aila / Mean Teacher consistency-weight ramp; 1 for every step when
  ``length`` is 0.

  Args:
    step: current step or epoch (int or traced scalar).
    length: number of steps (or epochs) the ramp lasts.

  Returns:
    A float32 scalar in ``(0, 1]``: ``exp(-5) ~= 0.0067`` at step 0, 1 at ``length``.

  Raises:
    ValueError: if ``length`` is negative.
  """
  if length < 0:
    raise ValueError(f"length={length}; expected a non-negative ramp length.")
  if length == 0:
    return jnp.float32(1.0)
  phase = 1.0 - jnp.clip(jnp.asarray(step, jnp.float32) / length, 0.0, 1.0)
  return jnp.exp(-5.0 * phase * phase)


def _check_mask(mask: jax.Array | None, pixel_shape: tuple[int, ...], name: str) -> jax.Array:
  """Bool mask of the counted pixels, all of them when ``mask`` is None."""
  if mask is None:
    return jnp.ones(pixel_shape, bool)
  if mask.shape != pixel_shape:
    raise ValueError(
        f"{name} has shape {mask.shape}; expected the pixel shape {pixel_shape} (the "
        "predictions' shape without the class axis).")
  return mask.astype(bool)


def _check_same_shape(values: jax.Array, targets: jax.Array, names: str) -> None:
  if values.shape != targets.shape:
    raise ValueError(
        f"{names} have shapes {values.shape} and {targets.shape}; expected two [..., C] "
        "maps of one shape.")


def _soft_target_inputs(
    logits: jax.Array, target_probs: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(counted, t, log softmax(z))`` in float32, with no gradient into the target ``t``."""
  counted = _check_mask(mask, logits.shape[:-1], "mask")
  target = jax.lax.stop_gradient(target_probs).astype(jnp.float32)
  return counted, target, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _entropy(probs: jax.Array) -> jax.Array:
  """``-sum_c p_c log p_c`` over the last axis, with ``0 log 0 = 0``.

  The log is taken of ``max(p, tiny)`` so that a probability that underflowed to 0 adds
  nothing and still has a finite gradient (``xlogy`` would give NaN there).
  """
  safe_log = jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))
  return -(probs * safe_log).sum(axis=-1)


def probability_mse(
    probs: jax.Array, target_probs: jax.Array, *, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Squared error between two probability maps (Mean Teacher, CCT, UA-MT consistency).

  Per pixel ``sum_c (p_c - t_c)^2``. Normaliser: ``C`` times the number of pixels in
  ``mask``, i.e. the mean over masked pixels and classes (PyTorch ``mse_loss`` when every
  pixel counts; UA-MT's ``sum mask ||p - t||^2 / (C sum mask)``). No gradient flows into
  ``target_probs``.

  Args:
    probs: ``[..., C]`` probabilities that get the gradient.
    target_probs: ``[..., C]`` target probabilities.
    mask: optional bool ``[...]`` pixels that count (e.g. valid and confident); every
      pixel when None.

  Returns:
    ``(loss, per_pixel)``: the scalar (0 when the mask is empty) and the ``[...]``
    per-pixel sum over classes, 0 where a pixel does not count.

  Raises:
    ValueError: on mismatched shapes.
  """
  _check_same_shape(probs, target_probs, "probs and target_probs")
  counted = _check_mask(mask, probs.shape[:-1], "mask")
  squared = jnp.square(probs.astype(jnp.float32)
                       - jax.lax.stop_gradient(target_probs).astype(jnp.float32)).sum(-1)
  per_pixel = jnp.where(counted, squared, 0.0)
  return _masked_mean(per_pixel, counted) / probs.shape[-1], per_pixel


def kl_divergence(
    target_probs: jax.Array, logits: jax.Array, *, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """``KL(t || softmax(z))`` per pixel, the VAT / Deep Co-Training view-difference term.

  Per pixel ``sum_c t_c (log t_c - log softmax(z)_c)`` with ``0 log 0 = 0``. Normaliser:
  the number of pixels in ``mask`` (a per-pixel KL averaged over pixels, as VAT for
  segmentation and Deep Co-Training's ``KL_2D``). No gradient flows into
  ``target_probs``.

  Args:
    target_probs: ``[..., C]`` target distribution ``t``.
    logits: ``[..., C]`` unnormalised scores of the prediction that gets the gradient.
    mask: optional bool ``[...]`` pixels that count; every pixel when None.

  Returns:
    ``(loss, per_pixel)``: the scalar (0 when the mask is empty) and the ``[...]``
    per-pixel KL, 0 where a pixel does not count.

  Raises:
    ValueError: on mismatched shapes.
  """
  _check_same_shape(target_probs, logits, "target_probs and logits")
  counted, target, log_probs = _soft_target_inputs(logits, target_probs, mask)
  kl = -_entropy(target) - (target * log_probs).sum(axis=-1)
  per_pixel = jnp.where(counted, kl, 0.0)
  return _masked_mean(per_pixel, counted), per_pixel


def jensen_shannon(
    probs: jax.Array, *, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """True Jensen-Shannon divergence of N predictions: ``H(mean_i p_i) - mean_i H(p_i)``.

  Deep Co-Training's ``L_cot`` (METHODS.md 3; the mutual information of section 13). Not
  the ``softmax(mean logits)`` approximation of the unofficial classification code.
  Gradients flow into every prediction. Normaliser: the number of pixels in ``mask``.

  Args:
    probs: ``[N, ..., C]`` probabilities of N >= 2 predictions of the same pixels.
    mask: optional bool ``[...]`` pixels that count; every pixel when None.

  Returns:
    ``(loss, per_pixel)``: the scalar in ``[0, log N]`` (0 when the mask is empty) and
    the ``[...]`` per-pixel divergence, 0 where a pixel does not count.

  Raises:
    ValueError: if ``probs`` has fewer than 3 axes or fewer than 2 predictions.
  """
  if probs.ndim < 3 or probs.shape[0] < 2:
    raise ValueError(
        f"probs have shape {probs.shape}; expected [N, ..., C] with N >= 2 predictions.")
  counted = _check_mask(mask, probs.shape[1:-1], "mask")
  probs = probs.astype(jnp.float32)
  divergence = _entropy(probs.mean(axis=0)) - _entropy(probs).mean(axis=0)
  per_pixel = jnp.where(counted, divergence, 0.0)
  return _masked_mean(per_pixel, counted), per_pixel


def soft_cross_entropy(
    logits: jax.Array, target_probs: jax.Array, *, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy to soft targets, ``-sum_c t_c log softmax(z)_c`` (PseudoSeg).

  Normaliser: the number of pixels in ``mask``. No gradient flows into ``target_probs``.

  Args:
    logits: ``[..., C]`` unnormalised scores of the prediction that gets the gradient.
    target_probs: ``[..., C]`` soft targets (rows sum to 1).
    mask: optional bool ``[...]`` pixels that count; every pixel when None.

  Returns:
    ``(loss, per_pixel)``: the scalar (0 when the mask is empty) and the ``[...]``
    per-pixel cross-entropy, 0 where a pixel does not count.

  Raises:
    ValueError: on mismatched shapes.
  """
  _check_same_shape(logits, target_probs, "logits and target_probs")
  counted, target, log_probs = _soft_target_inputs(logits, target_probs, mask)
  per_pixel = jnp.where(counted, -(target * log_probs).sum(axis=-1), 0.0)
  return _masked_mean(per_pixel, counted), per_pixel


def pseudo_label_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    confidence: jax.Array | None = None,
    threshold: float = 0.0,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """CE to hard pseudo-labels on confident pixels: ``sum CE [q >= tau] [valid] / #valid``.

  UniMatch / FixMatch-seg's unlabeled loss (METHODS.md 1a) and, with no confidence, CPS's
  cross pseudo supervision. A pixel is valid when its label is not ``IGNORE_INDEX`` and
  ``valid`` (if given) is True. Normaliser: the number of **valid** pixels, confident or
  not, so the loss shrinks while few pixels pass the threshold.

  Args:
    logits: ``[..., C]`` predictions on the view being trained.
    labels: ``[...]`` int pseudo-labels in ``[0, C)`` or ``IGNORE_INDEX``.
    confidence: optional float ``[...]`` pseudo-label confidence ``q`` (no gradient is
      taken through it); every valid pixel counts when None.
    threshold: ``tau``; pixels with ``q >= tau`` count.
    valid: optional bool ``[...]`` mask of real (not padded) pixels.

  Returns:
    ``(loss, per_pixel)``: the scalar (0 when no pixel is valid) and the ``[...]``
    per-pixel CE, 0 where a pixel does not count.

  Raises:
    ValueError: on mismatched shapes, or a non-zero ``threshold`` without
      ``confidence``.
  """
  _check_shapes(logits, labels)
  if confidence is None and threshold != 0.0:
    raise ValueError(
        f"threshold={threshold} but no confidence was given; pass the pseudo-labels' "
        "confidence or leave threshold at 0.")
  if valid is not None:
    labels = jnp.where(_check_mask(valid, labels.shape, "valid"), labels, IGNORE_INDEX)
  weights = None
  if confidence is not None:
    if confidence.shape != labels.shape:
      raise ValueError(
          f"confidence has shape {confidence.shape}; expected the labels' shape "
          f"{labels.shape}.")
    weights = (jax.lax.stop_gradient(confidence) >= threshold).astype(jnp.float32)
  return cross_entropy(logits, labels, weights=weights)
