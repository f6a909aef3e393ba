"""CCT's seven perturbations of the encoder feature (yassouali/CCT ``models/decoders.py``).

Each auxiliary decoder of Cross-Consistency Training (Ouali et al., CVPR 2020; METHODS.md
6) reads its own perturbed copy of the shared feature ``z`` ``[B, h, w, F]``:

- :func:`vat`: virtual adversarial perturbation of ``z`` against that decoder;
- :func:`channel_dropout`: ``Dropout2d`` (UniMatch's function, the same op);
- :func:`guided_cutout`: a box cut out of each predicted object's bounding box;
- :func:`context_masking` / :func:`object_masking`: ``z`` kept only on the predicted
  objects / only on the predicted background;
- :func:`feature_drop`: the most activated positions zeroed;
- :func:`feature_noise`: multiplicative uniform noise.

The guided ones read ``predicted``, the argmax of the **detached** main prediction at its
own resolution ``[B, H, W]`` (class 0 is background), and bring their masks to the
feature resolution by PyTorch's nearest-neighbour rule (source index
``floor(i * H / h)``), as the reference's ``F.interpolate(mode="nearest")``. All functions
are pure, jit-able and keep ``z``'s dtype; gradients flow into ``z`` through every one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxsemiseg.methods.unimatch import channel_dropout

__all__ = ["channel_dropout", "context_masking", "feature_drop", "feature_noise",
           "guided_cutout", "object_masking", "vat"]


def _check_pair(features: jax.Array, predicted: jax.Array) -> None:
  if features.ndim != 4 or predicted.ndim != 3 or features.shape[0] != predicted.shape[0]:
    raise ValueError(
        f"features have shape {features.shape} and predicted {predicted.shape}; expected "
        "features [B, h, w, F] and predicted labels [B, H, W] of the same batch.")


def resize_nearest(mask: jax.Array, size: Sequence[int]) -> jax.Array:
  """``F.interpolate(mask, size, mode="nearest")`` for ``[B, H, W]`` masks.

  Output pixel ``(i, j)`` takes input pixel ``(floor(i * H / h), floor(j * W / w))``.

  Args:
    mask: ``[B, H, W]`` array of any dtype.
    size: the output ``(h, w)``.

  Returns:
    ``[B, h, w]`` array of ``mask``'s dtype.
  """
  (height, width), (out_height, out_width) = mask.shape[1:3], tuple(size)
  rows = (jnp.arange(out_height) * height) // out_height
  cols = (jnp.arange(out_width) * width) // out_width
  return mask[:, rows][:, :, cols]


def _keep_where(features: jax.Array, keep: jax.Array) -> jax.Array:
  """``features * keep`` with a ``[B, H, W]`` mask brought to the feature resolution."""
  keep = resize_nearest(keep, features.shape[1:3])
  return jnp.where(keep[..., None], features, jnp.zeros((), features.dtype))


def _l2_normalize(d: jax.Array) -> jax.Array:
  """CCT's ``_l2_normalize``: each example divided by its L2 norm (+ 1e-8)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=tuple(range(1, d.ndim)), keepdims=True))
  return d / (norm + 1e-8)


def vat(key: jax.Array, features: jax.Array, logits_fn: Callable[[jax.Array], jax.Array], *,
        epsilon: float, num_iterations: int = 1) -> jax.Array:
  """``z + r_adv``: CCT's VAT decoder input (``get_r_adv``, METHODS.md 3 and 6).

  ``d ~ U(-0.5, 0.5)`` of ``z``'s shape, L2-normalised per example; ``num_iterations``
  power-iteration steps ``d <- normalize(grad_r KL(p || softmax(logits_fn(z + r))))`` at
  ``r = xi d`` with ``p = softmax(logits_fn(z))`` fixed; ``r_adv = epsilon d``.

  The reference takes that gradient by finite difference at ``xi = 1e-6``. In float32 the
  probe ``z + xi d`` moves each entry by ``~xi / sqrt(h w F)``, below the spacing of
  non-zero feature values, and the logits by less than their own rounding, so the
  difference is mostly rounding noise (the caveat in ``augment/adversarial.py``; on a
  UNet's 64x64x16 features the float32 finite-difference direction had cosine 0.01 with
  the exact one). The gradient at small ``xi`` is ``xi H d`` to first order,
  with ``H = J^T (diag(p) - p p^T) J`` the Hessian of the KL at ``r = 0`` (``J`` the
  Jacobian of the logits in ``z``); after normalisation ``xi`` drops out. So this computes
  ``H d`` exactly, with one JVP and one VJP of ``logits_fn``: the ``xi -> 0`` limit the
  reference approximates, free of rounding.

  Args:
    key: PRNG key of the random start.
    features: ``[B, h, w, F]`` encoder features ``z``.
    logits_fn: ``z -> [B, ..., C]`` logits of the auxiliary decoder this perturbation is
      for; it must treat examples independently (no BatchNorm batch statistics, no
      dropout) and its parameters should be stop-gradient'ed by the caller, as the
      reference zeroes their gradients after the power iteration.
    epsilon: L2 norm of ``r_adv`` per example (CCT: 2.0).
    num_iterations: power-iteration steps (CCT: 1).

  Returns:
    ``z + r_adv``; ``r_adv`` carries no gradient, ``z`` does.

  Raises:
    ValueError: on a negative ``epsilon`` or ``num_iterations < 1``.
  """
  if epsilon < 0:
    raise ValueError(f"epsilon={epsilon}; expected the perturbation norm, >= 0.")
  if num_iterations < 1:
    raise ValueError(f"num_iterations={num_iterations}; expected at least 1.")
  z = jax.lax.stop_gradient(features)
  logits, pullback = jax.vjp(lambda x: logits_fn(x).astype(jnp.float32), z)
  probs = jax.nn.softmax(logits, axis=-1)

  def hessian_product(d: jax.Array) -> jax.Array:
    _, tangent = jax.jvp(lambda x: logits_fn(x).astype(jnp.float32), (z,),
                         (d.astype(z.dtype),))
    fisher_tangent = probs * (tangent - jnp.sum(probs * tangent, axis=-1, keepdims=True))
    return pullback(fisher_tangent)[0].astype(jnp.float32)

  # The direction and its norm stay float32 with bfloat16 features: the norm sums
  # h * w * F squares (1.7M for DeepLab at crop 321), too many for a bfloat16 sum.
  d = jax.random.uniform(key, z.shape, jnp.float32, -0.5, 0.5)
  # Unrolled: XLA:CPU runs the convolutions of a loop body ~10x slower (jaxsemiseg/stacked.py).
  for _ in range(num_iterations):
    d = _l2_normalize(hessian_product(_l2_normalize(d)))
  return features + jax.lax.stop_gradient(epsilon * d).astype(features.dtype)


def guided_cutout(key: jax.Array, features: jax.Array, predicted: jax.Array, *,
                  num_classes: int, erase: float = 0.4) -> jax.Array:
  """Zeroes, for every predicted foreground class, a random box inside its bounding box.

  For a class present in an image, with bounding box rows ``[top, bottom]`` and columns
  ``[left, right]`` (at the prediction's resolution), the box has
  ``floor(erase (bottom - top))`` rows starting ``U{0 .. floor((1 - erase)(bottom - top))}``
  below ``top``, and likewise for columns, as CCT's ``guided_cutout``. The union of the
  boxes, brought to the feature resolution, is zeroed in every channel.

  The reference takes the boxes of connected components (``cv2.findContours``) whose
  contour has more than 50 points; here each class is one object (instances of a class
  share a box, small regions get one too), which needs no contour tracing on device.

  Args:
    key: PRNG key.
    features: ``[B, h, w, F]``.
    predicted: int ``[B, H, W]`` argmax of the detached main prediction.
    num_classes: C; classes ``1 .. C-1`` are objects.
    erase: the box's side as a fraction of the bounding box's (CCT: 0.4).

  Returns:
    The features with the boxes zeroed.

  Raises:
    ValueError: on mismatched shapes or ``erase`` outside ``[0, 1]``.
  """
  _check_pair(features, predicted)
  if not 0.0 <= erase <= 1.0:
    raise ValueError(f"erase={erase}; expected a fraction in [0, 1].")
  classes = jnp.arange(1, num_classes)

  def boxes(key: jax.Array, labels: jax.Array) -> jax.Array:
    member = labels[None] == classes[:, None, None]
    spans = []
    for axis_key, occupied in zip(jax.random.split(key), (member.any(2), member.any(1))):
      index = jnp.arange(occupied.shape[1])
      low = jnp.min(jnp.where(occupied, index, occupied.shape[1]), axis=1)
      extent = jnp.max(jnp.where(occupied, index, -1), axis=1) - low
      length = jnp.floor(erase * extent).astype(jnp.int32)
      slack = jnp.floor((1.0 - erase) * extent).astype(jnp.int32)
      start = low + jax.random.randint(axis_key, low.shape, 0, jnp.maximum(slack, 0) + 1)
      spans.append((index[None] >= start[:, None]) & (index[None] < (start + length)[:, None]))
    rows, cols = spans
    return (rows[:, :, None] & cols[:, None, :]).any(0)

  cut = jax.vmap(boxes)(jax.random.split(key, predicted.shape[0]), predicted)
  return _keep_where(features, ~cut)


def context_masking(features: jax.Array, predicted: jax.Array) -> jax.Array:
  """Keeps ``z`` where the main prediction is an object (class > 0), zero elsewhere.

  CCT's ``ContextMaskingDecoder``: the context (background) is masked out.

  Args:
    features: ``[B, h, w, F]``.
    predicted: int ``[B, H, W]`` argmax of the detached main prediction.

  Returns:
    The masked features.
  """
  _check_pair(features, predicted)
  return _keep_where(features, predicted > 0)


def object_masking(features: jax.Array, predicted: jax.Array) -> jax.Array:
  """Keeps ``z`` where the main prediction is background (class 0), zero elsewhere.

  CCT's ``ObjectMaskingDecoder``: the objects are masked out.

  Args:
    features: ``[B, h, w, F]``.
    predicted: int ``[B, H, W]`` argmax of the detached main prediction.

  Returns:
    The masked features.
  """
  _check_pair(features, predicted)
  return _keep_where(features, predicted == 0)


def feature_drop(key: jax.Array, features: jax.Array, *,
                 threshold_range: Sequence[float] = (0.7, 0.9)) -> jax.Array:
  """Zeroes the positions whose channel-mean activation is at least ``gamma`` times its max.

  CCT's ``FeatureDropDecoder``: attention ``a = mean_F z``; per example the threshold is
  ``gamma * max a`` with one ``gamma ~ U(threshold_range)`` per call (the reference's
  single ``np.random.uniform``); positions with ``a >= threshold`` are zeroed in every
  channel, the rest are unchanged.

  Args:
    key: PRNG key.
    features: ``[B, h, w, F]``.
    threshold_range: ``(low, high)`` of ``gamma``; the paper's ``(0.7, 0.9)`` (one
      version of the reference code draws from ``(0.6, 0.9)``).

  Returns:
    The features with the most activated positions zeroed.

  Raises:
    ValueError: unless ``0 <= low <= high``.
  """
  low, high = threshold_range
  if not 0.0 <= low <= high:
    raise ValueError(f"threshold_range={tuple(threshold_range)}; expected 0 <= low <= high.")
  attention = jnp.mean(features.astype(jnp.float32), axis=-1)
  gamma = jax.random.uniform(key, (), jnp.float32, low, high)
  threshold = gamma * jnp.max(attention, axis=(1, 2), keepdims=True)
  keep = attention < threshold
  return jnp.where(keep[..., None], features, jnp.zeros((), features.dtype))


def feature_noise(key: jax.Array, features: jax.Array, *,
                  noise_range: float = 0.3) -> jax.Array:
  """``z + z * N`` with ``N ~ U(-noise_range, noise_range)`` of shape ``[h, w, F]``.

  CCT's ``FeatureNoiseDecoder``: one noise tensor per call, shared by every example.

  Args:
    key: PRNG key.
    features: ``[B, h, w, F]``.
    noise_range: half-width of the uniform noise (CCT: 0.3).

  Returns:
    The features scaled elementwise by ``1 + N``.

  Raises:
    ValueError: on a negative ``noise_range``.
  """
  if noise_range < 0:
    raise ValueError(f"noise_range={noise_range}; expected a half-width >= 0.")
  noise = jax.random.uniform(key, features.shape[1:], jnp.float32, -noise_range, noise_range)
  return features + features * noise.astype(features.dtype)
