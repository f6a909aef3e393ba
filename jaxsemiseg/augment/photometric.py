"""Photometric augmentations: colour jitter, grayscale, blur and the PIL/AutoAugment ops.

Every op works on one float image ``[H, W, C]`` in ``[0, 1]`` (``C = 3`` for the ops that
mix channels), never sees the segmentation mask and returns an image in ``[0, 1]``.
Semantics follow torchvision's tensor ops and PIL (``ImageEnhance``, ``ImageOps``), which
UniMatch, ST++ and the AutoAugment reference code call. Magnitudes may be traced scalars,
so a policy can pick them per image inside one compiled call; a magnitude given as a Python
or NumPy number is checked on the host. Batch with ``jax.vmap`` over images (and keys).

Ops that the references run on ``uint8`` (posterize, equalize) first round the image to
the 256 levels ``round(255 * x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ITU-R 601-2 luma, the weights of PIL's ``convert("L")`` (torchvision uses 0.2989 for red).
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# PIL ``ImageFilter.SMOOTH``, the degenerate image of ``ImageEnhance.Sharpness``.
_SMOOTH_KERNEL = np.array([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], np.float32) / 13.
_NUM_LEVELS = 256
# Index of each adjustment in ``order`` (torchvision ``ColorJitter.get_params`` numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

Scalar = float | jax.Array


def _check_image(image: jax.Array, *, rgb: bool = False) -> None:
  if image.ndim != 3:
    raise ValueError(f"image has shape {image.shape}; expected one image [H, W, C] "
                     "(batch with jax.vmap).")
  if rgb and image.shape[-1] != 3:
    raise ValueError(f"image has {image.shape[-1]} channels (shape {image.shape}); "
                     "expected an RGB image [H, W, 3].")
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f"image has dtype {image.dtype}; expected a float image in [0, 1] "
                     "(divide uint8 images by 255).")


def _check_range(name: str, value: Any, low: float, high: float = math.inf) -> None:
  """Checks a magnitude given as a host number; traced values pass through."""
  if isinstance(value, jax.core.Tracer):
    return
  if np.ndim(value) != 0:
    raise ValueError(f"{name} has shape {np.shape(value)}; expected a scalar.")
  if not low <= float(value) <= high:
    raise ValueError(f"{name}={value!r}; expected a value in [{low}, {high}].")


def _blend(degenerate: jax.Array, image: jax.Array, factor: Scalar) -> jax.Array:
  """PIL ``Image.blend(degenerate, image, factor)`` / torchvision ``_blend``, clipped."""
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _to_levels(image: jax.Array) -> jax.Array:
  return jnp.round(jnp.clip(image, 0.0, 1.0) * (_NUM_LEVELS - 1)).astype(jnp.int32)


def _from_levels(levels: jax.Array, dtype: Any) -> jax.Array:
  return (levels / (_NUM_LEVELS - 1)).astype(dtype)


def _depthwise_conv(image: jax.Array, kernel: jax.Array) -> jax.Array:
  """'VALID' correlation of every channel of ``[H, W, C]`` with one ``[kh, kw]`` kernel."""
  channels = image.shape[-1]
  rhs = jnp.broadcast_to(kernel[:, :, None, None], kernel.shape + (1, channels))
  out = lax.conv_general_dilated(
      image[None], rhs.astype(image.dtype), window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
      precision=lax.Precision.HIGHEST)  # TPU's default bf16 passes would cost ~1/255.
  return out[0]


def rgb_to_grayscale(image: jax.Array, *, num_channels: int = 1) -> jax.Array:
  """Luma ``0.299 R + 0.587 G + 0.114 B`` (PIL ``convert("L")``, torchvision ``Grayscale``).

  Args:
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    num_channels: 1 for ``[H, W, 1]``, or 3 to repeat the luma into an RGB image.

  Returns:
    The ``[H, W, num_channels]`` grayscale image.

  Raises:
    ValueError: if the image is not ``[H, W, 3]`` float or ``num_channels`` not 1 or 3.
  """
  _check_image(image, rgb=True)
  if num_channels not in (1, 3):
    raise ValueError(f"num_channels={num_channels!r}; expected 1 or 3.")
  gray = jnp.tensordot(image, jnp.asarray(_LUMA_WEIGHTS, image.dtype), axes=1)[..., None]
  return jnp.broadcast_to(gray, image.shape[:-1] + (num_channels,))


def adjust_brightness(image: jax.Array, *, factor: Scalar) -> jax.Array:
  """Brightness: ``clip(factor * x)`` (torchvision, PIL ``ImageEnhance.Brightness``).

  Multiplicative, unlike dm-pix's additive ``adjust_brightness``. Factor 1 is the identity,
  0 a black image; ColorJitter draws it from ``U(max(0, 1 - b), 1 + b)``.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    factor: non-negative scale.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or a negative static factor.
  """
  _check_image(image)
  _check_range("factor", factor, 0.0)
  return _blend(jnp.zeros_like(image), image, factor)


def adjust_contrast(image: jax.Array, *, factor: Scalar) -> jax.Array:
  """Contrast: blend with the mean of the grayscale image (torchvision, PIL ``Contrast``).

  ``clip(m + factor * (x - m))`` with ``m`` the mean luma over the image (PIL rounds ``m``
  to an 8-bit level; this keeps it exact). Unlike dm-pix/TF, which use per-channel means.

  Args:
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    factor: non-negative; 1 is the identity, 0 a uniform gray image.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or a negative static factor.
  """
  _check_range("factor", factor, 0.0)
  mean = jnp.mean(rgb_to_grayscale(image))
  return _blend(jnp.full_like(image, mean), image, factor)


def adjust_saturation(image: jax.Array, *, factor: Scalar) -> jax.Array:
  """Saturation: blend with the grayscale image (torchvision, PIL ``ImageEnhance.Color``).

  ``clip(g + factor * (x - g))`` per pixel with ``g`` the luma; the AutoAugment "Color" op.
  Unlike dm-pix's HSV-based ``adjust_saturation``.

  Args:
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    factor: non-negative; 1 is the identity, 0 the grayscale image.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or a negative static factor.
  """
  _check_range("factor", factor, 0.0)
  return _blend(rgb_to_grayscale(image, num_channels=3), image, factor)


def adjust_hue(image: jax.Array, *, delta: Scalar) -> jax.Array:
  """Hue shift in HSV: ``h <- (h + delta) mod 1`` (torchvision ``adjust_hue``, dm-pix).

  Args:
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    delta: hue shift in turns, in ``[-0.5, 0.5]``; 0 is the identity.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or a static delta outside ``[-0.5, 0.5]``.
  """
  _check_image(image, rgb=True)
  _check_range("delta", delta, -0.5, 0.5)
  return jnp.clip(pix.adjust_hue(image, delta), 0.0, 1.0)


def adjust_gamma(image: jax.Array, *, gamma: Scalar, gain: Scalar = 1.0) -> jax.Array:
  """Gamma correction ``clip(gain * x ** gamma)`` (torchvision ``adjust_gamma``, dm-pix).

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    gamma: non-negative exponent; 1 (with gain 1) is the identity.
    gain: non-negative multiplier.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or a negative static gamma or gain.
  """
  _check_image(image)
  _check_range("gamma", gamma, 0.0)
  _check_range("gain", gain, 0.0)
  return jnp.clip(pix.adjust_gamma(image, gamma, gain=gain), 0.0, 1.0)


def invert(image: jax.Array) -> jax.Array:
  """``1 - x`` (PIL ``ImageOps.invert``, AutoAugment "Invert").

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.

  Returns:
    The inverted image.

  Raises:
    ValueError: on a bad image.
  """
  _check_image(image)
  return 1.0 - image


def solarize(image: jax.Array, *, threshold: Scalar) -> jax.Array:
  """Inverts the pixels ``>= threshold`` (PIL ``ImageOps.solarize``, torchvision, dm-pix).

  An 8-bit threshold ``T`` is ``T / 255``; AutoAugment's level 10 is ``T = 256``, so any
  threshold above 1 leaves the image unchanged, while threshold 1 still inverts pure
  white pixels, as in PIL and torchvision.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    threshold: non-negative; PIL's default is 128/255.

  Returns:
    The solarized image.

  Raises:
    ValueError: on a bad image or a negative static threshold.
  """
  _check_image(image)
  _check_range("threshold", threshold, 0.0)
  return jnp.where(image >= threshold, 1.0 - image, image)


def solarize_add(image: jax.Array, *, addition: Scalar,
                 threshold: Scalar = 128 / 255) -> jax.Array:
  """Adds ``addition`` to the pixels ``< threshold``, clipped (AutoAugment "SolarizeAdd").

  As in the TF AutoAugment code, where the argument is ``int(110 * level / 10)`` on the
  8-bit scale (``/ 255`` here) and the threshold is 128.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    addition: value added to dark pixels, in ``[-1, 1]``; 0 is the identity.
    threshold: pixels at or above it are kept; default 128/255.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or static arguments out of range.
  """
  _check_image(image)
  _check_range("addition", addition, -1.0, 1.0)
  _check_range("threshold", threshold, 0.0)
  return jnp.where(image < threshold, jnp.clip(image + addition, 0.0, 1.0), image)


def posterize(image: jax.Array, *, bits: int | jax.Array) -> jax.Array:
  """Keeps the ``bits`` high bits of each 8-bit value (PIL ``ImageOps.posterize``).

  The image is rounded to 8-bit levels first. AutoAugment's argument is
  ``int(4 * level / 10)`` bits in the TF code; 8 is the identity on 8-bit images, 0 black.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    bits: integer in ``[0, 8]`` (a traced value is clipped to that range).

  Returns:
    The posterized image, on the 256 levels.

  Raises:
    ValueError: on a bad image or a static ``bits`` that is not an integer in ``[0, 8]``.
  """
  _check_image(image)
  _check_range("bits", bits, 0, 8)
  if not isinstance(bits, jax.core.Tracer) and float(bits) != int(bits):
    raise ValueError(f"bits={bits!r}; expected an integer number of bits in [0, 8].")
  shift = jnp.clip(8 - jnp.asarray(bits, jnp.int32), 0, 8)
  levels = jnp.left_shift(jnp.right_shift(_to_levels(image), shift), shift)
  return _from_levels(levels, image.dtype)


def equalize(image: jax.Array) -> jax.Array:
  """Per-channel histogram equalization, PIL ``ImageOps.equalize`` on 8-bit values.

  For each channel with histogram ``h``: ``step = (N - h[last used level]) // 255`` and
  ``lut[i] = (step // 2 + sum_{j < i} h[j]) // step`` clipped to 255; a channel with
  ``step == 0`` (e.g. one level) is left unchanged. This is Pillow's formula (13.0) and the
  TF AutoAugment code's.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.

  Returns:
    The equalized image, on the 256 levels.

  Raises:
    ValueError: on a bad image.
  """
  _check_image(image)
  channels = image.shape[-1]
  levels = _to_levels(image).reshape(-1, channels)
  bins = levels + _NUM_LEVELS * jnp.arange(channels)
  hist = jnp.bincount(bins.ravel(), length=_NUM_LEVELS * channels).reshape(channels, -1)
  last_used = jnp.max(levels, axis=0)
  last_count = jnp.take_along_axis(hist, last_used[:, None], axis=1)[:, 0]
  step = (levels.shape[0] - last_count) // (_NUM_LEVELS - 1)
  cumulative_before = jnp.cumsum(hist, axis=1) - hist
  lut = (step[:, None] // 2 + cumulative_before) // jnp.maximum(step, 1)[:, None]
  lut = jnp.clip(lut, 0, _NUM_LEVELS - 1)
  mapped = jnp.take_along_axis(lut.T, levels, axis=0)
  out = jnp.where(step > 0, mapped, levels)
  return _from_levels(out, image.dtype).reshape(image.shape)


def autocontrast(image: jax.Array) -> jax.Array:
  """Per-channel min/max stretch to ``[0, 1]`` (PIL ``ImageOps.autocontrast``, TF code).

  ``(x - lo) / (hi - lo)`` with ``lo, hi`` the channel's min and max; a constant channel
  is left unchanged. PIL truncates the result to 8 bits; this keeps it exact.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.

  Returns:
    The stretched image.

  Raises:
    ValueError: on a bad image.
  """
  _check_image(image)
  low = jnp.min(image, axis=(0, 1))
  high = jnp.max(image, axis=(0, 1))
  spread = high - low
  stretched = (image - low) / jnp.where(spread > 0, spread, 1.0)
  return jnp.clip(jnp.where(spread > 0, stretched, image), 0.0, 1.0)


def adjust_sharpness(image: jax.Array, *, factor: Scalar) -> jax.Array:
  """Sharpness, PIL ``ImageEnhance.Sharpness`` (torchvision ``adjust_sharpness``).

  Blends with the image smoothed by ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``; border
  pixels keep their value (PIL does not filter them). AutoAugment's factor is
  ``0.1 + 1.8 * level / 10``.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    factor: non-negative; 1 is the identity, 0 the smoothed image, > 1 sharpens.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or a negative static factor.
  """
  _check_image(image)
  _check_range("factor", factor, 0.0)
  smooth = _depthwise_conv(image, jnp.asarray(_SMOOTH_KERNEL))
  degenerate = image.at[1:-1, 1:-1].set(smooth)
  return _blend(degenerate, image, factor)


def blur_kernel_size(sigma: float) -> int:
  """The blur kernel size used for a static ``sigma``: ``2 * ceil(3 * sigma) + 1``.

  Three standard deviations hold 99.7% of the mass and match the support of PIL's
  ``GaussianBlur(radius=sigma)`` (three box passes of radius about ``sigma``), which
  UniMatch and ST++ call.

  Args:
    sigma: the largest standard deviation the kernel must serve, in pixels.

  Returns:
    An odd kernel size.

  Raises:
    ValueError: if sigma is negative or not a number.
  """
  _check_range("sigma", sigma, 0.0)
  return 2 * math.ceil(3 * float(sigma)) + 1


def gaussian_blur(image: jax.Array, *, sigma: Scalar,
                  kernel_size: int | None = None) -> jax.Array:
  """Separable Gaussian blur with edge-replicating padding (PIL ``GaussianBlur``).

  The kernel ``exp(-x^2 / (2 sigma^2))`` is normalised over ``kernel_size`` taps. PIL
  extends the border pixels (torchvision reflects; dm-pix pads zeros, which darkens the
  border). Sigma 0 is the identity.

  Args:
    image: ``[H, W, C]`` image in ``[0, 1]``.
    sigma: non-negative standard deviation in pixels (may be traced).
    kernel_size: odd static size; default ``blur_kernel_size(sigma)``, which needs a
      static sigma.

  Returns:
    The blurred image.

  Raises:
    ValueError: on a bad image, a negative static sigma, an even or non-positive
      kernel_size, or a traced sigma without kernel_size.
  """
  _check_image(image)
  _check_range("sigma", sigma, 0.0)
  if kernel_size is None:
    if isinstance(sigma, jax.core.Tracer):
      raise ValueError("gaussian_blur got a traced sigma and no kernel_size; pass a static "
                       "kernel_size, e.g. blur_kernel_size(largest sigma).")
    kernel_size = blur_kernel_size(sigma)
  if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f"kernel_size={kernel_size!r}; expected a positive odd integer.")
  radius = kernel_size // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  # A tiny floor turns sigma 0 into the identity kernel instead of 0/0.
  safe_sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-6)
  taps = jnp.exp(-offsets**2 / (2.0 * safe_sigma**2))
  taps = taps / jnp.sum(taps)
  padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
  blurred = _depthwise_conv(_depthwise_conv(padded, taps[:, None]), taps[None, :])
  return jnp.clip(blurred, 0.0, 1.0)


def random_grayscale(key: jax.Array, image: jax.Array, *, p: Scalar = 0.2) -> jax.Array:
  """With probability ``p`` the 3-channel grayscale image (torchvision ``RandomGrayscale``).

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    p: probability of converting; UniMatch/ST++ and French et al. use 0.2.

  Returns:
    The ``[H, W, 3]`` image.

  Raises:
    ValueError: on a bad image or a static p outside ``[0, 1]``.
  """
  _check_range("p", p, 0.0, 1.0)
  gray = rgb_to_grayscale(image, num_channels=3)
  return jnp.where(jax.random.bernoulli(key, p), gray, image)


def random_gaussian_blur(key: jax.Array, image: jax.Array, *,
                         sigma_range: tuple[float, float] = (0.1, 2.0),
                         p: Scalar = 0.5) -> jax.Array:
  """With probability ``p``, blur with ``sigma ~ U(sigma_range)`` (UniMatch/ST++ ``blur``).

  The kernel size is ``blur_kernel_size(sigma_range[1])`` (13 taps for the default), so
  it covers the largest sigma; smaller sigmas just have near-zero outer taps.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` image in ``[0, 1]``.
    sigma_range: static ``(low, high)`` with ``0 <= low <= high``; reference (0.1, 2.0).
    p: probability of blurring; reference 0.5.

  Returns:
    The image.

  Raises:
    ValueError: on a bad image, sigma_range or p.
  """
  if len(sigma_range) != 2 or not 0 <= sigma_range[0] <= sigma_range[1]:
    raise ValueError(f"sigma_range={sigma_range!r}; expected (low, high) with "
                     "0 <= low <= high.")
  _check_range("p", p, 0.0, 1.0)
  apply_key, sigma_key = jax.random.split(key)
  sigma = jax.random.uniform(sigma_key, minval=sigma_range[0], maxval=sigma_range[1])
  blurred = gaussian_blur(image, sigma=sigma, kernel_size=blur_kernel_size(sigma_range[1]))
  return jnp.where(jax.random.bernoulli(apply_key, p), blurred, image)


def color_jitter_params(key: jax.Array, *, brightness: Scalar = 0.5,
                        contrast: Scalar = 0.5, saturation: Scalar = 0.5,
                        hue: Scalar = 0.25) -> tuple[jax.Array, jax.Array]:
  """Draws ColorJitter's order and factors (torchvision ``ColorJitter.get_params``).

  Brightness, contrast and saturation factors are ``U(max(0, 1 - v), 1 + v)``, the hue
  shift ``U(-hue, hue)``, and the order a uniform permutation of the four adjustments.

  Args:
    key: ``jax.random`` key.
    brightness: non-negative jitter strength; UniMatch/ST++ 0.5, French et al. 0.4.
    contrast: non-negative jitter strength; 0.5 / 0.4.
    saturation: non-negative jitter strength; 0.5 / 0.4.
    hue: jitter strength in ``[0, 0.5]``; 0.25 / 0.1.

  Returns:
    ``(order, factors)``: the int32 ``[4]`` permutation of ``BRIGHTNESS, CONTRAST,
    SATURATION, HUE`` and the float32 ``[4]`` factors indexed the same way.

  Raises:
    ValueError: on static strengths out of range.
  """
  for name, value in (("brightness", brightness), ("contrast", contrast),
                      ("saturation", saturation)):
    _check_range(name, value, 0.0)
  _check_range("hue", hue, 0.0, 0.5)
  order_key, *factor_keys = jax.random.split(key, 5)
  factors = [jax.random.uniform(k, minval=jnp.maximum(0.0, 1.0 - v), maxval=1.0 + v)
             for k, v in zip(factor_keys[:3], (brightness, contrast, saturation))]
  factors.append(jax.random.uniform(factor_keys[3], minval=-hue, maxval=hue))
  order = jax.random.permutation(order_key, 4).astype(jnp.int32)
  return order, jnp.stack(factors).astype(jnp.float32)


_ADJUSTMENTS: tuple[Callable[[jax.Array, jax.Array], jax.Array], ...] = (
    lambda image, factors: adjust_brightness(image, factor=factors[BRIGHTNESS]),
    lambda image, factors: adjust_contrast(image, factor=factors[CONTRAST]),
    lambda image, factors: adjust_saturation(image, factor=factors[SATURATION]),
    lambda image, factors: adjust_hue(image, delta=factors[HUE]),
)


def apply_color_jitter(image: jax.Array, *, order: jax.Array | Sequence[int],
                       factors: jax.Array | Sequence[float]) -> jax.Array:
  """Applies brightness, contrast, saturation and hue in the given order.

  Each step is clipped to ``[0, 1]``, as torchvision's ``ColorJitter.forward``. The
  order is traced (``lax.switch`` per position), so one compiled call serves every order.

  Args:
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    order: ``[4]`` permutation of ``BRIGHTNESS, CONTRAST, SATURATION, HUE``.
    factors: ``[4]`` brightness, contrast, saturation factors and hue shift.

  Returns:
    The adjusted image.

  Raises:
    ValueError: on a bad image or order/factors not of shape ``[4]``.
  """
  _check_image(image, rgb=True)
  order = jnp.asarray(order, jnp.int32)
  factors = jnp.asarray(factors, jnp.float32)
  if order.shape != (4,) or factors.shape != (4,):
    raise ValueError(f"order has shape {order.shape} and factors {factors.shape}; "
                     "expected [4] each (brightness, contrast, saturation, hue).")
  for position in range(4):
    image = lax.switch(order[position], _ADJUSTMENTS, image, factors)
  return image


def color_jitter(key: jax.Array, image: jax.Array, *, brightness: Scalar = 0.5,
                 contrast: Scalar = 0.5, saturation: Scalar = 0.5, hue: Scalar = 0.25,
                 p: Scalar = 0.8) -> jax.Array:
  """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` (torchvision).

  With probability ``p``: draw ``color_jitter_params`` and ``apply_color_jitter``. The
  defaults are the UniMatch / ST++ strong view (0.5, 0.5, 0.5, 0.25, p = 0.8).

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    brightness: non-negative jitter strength.
    contrast: non-negative jitter strength.
    saturation: non-negative jitter strength.
    hue: jitter strength in ``[0, 0.5]``.
    p: probability of jittering.

  Returns:
    The image.

  Raises:
    ValueError: on a bad image or static arguments out of range.
  """
  _check_range("p", p, 0.0, 1.0)
  apply_key, params_key = jax.random.split(key)
  order, factors = color_jitter_params(params_key, brightness=brightness,
                                       contrast=contrast, saturation=saturation, hue=hue)
  jittered = apply_color_jitter(image, order=order, factors=factors)
  return jnp.where(jax.random.bernoulli(apply_key, p), jittered, image)


def strong_colour(key: jax.Array, image: jax.Array, *, brightness: Scalar,
                  contrast: Scalar, saturation: Scalar, hue: Scalar, jitter_p: Scalar,
                  grayscale_p: Scalar, blur_p: Scalar,
                  blur_sigma: tuple[float, float] = (0.1, 2.0)) -> jax.Array:
  """Colour part of a strong view: jitter, then grayscale, then blur, each random.

  ``color_jitter(brightness, contrast, saturation, hue, p=jitter_p)`` ->
  ``random_grayscale(p=grayscale_p)`` -> ``random_gaussian_blur(blur_sigma, p=blur_p)``,
  the order of UniMatch / ST++ (METHODS.md 1f). See ``unimatch_strong_colour`` and
  ``french_strong_colour`` for the published settings.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.
    brightness: ColorJitter strength.
    contrast: ColorJitter strength.
    saturation: ColorJitter strength.
    hue: ColorJitter hue strength in ``[0, 0.5]``.
    jitter_p: probability of the jitter.
    grayscale_p: probability of grayscale.
    blur_p: probability of the blur (0 for none).
    blur_sigma: static ``(low, high)`` range of the blur sigma.

  Returns:
    The image.

  Raises:
    ValueError: on a bad image or static arguments out of range.
  """
  jitter_key, gray_key, blur_key = jax.random.split(key, 3)
  image = color_jitter(jitter_key, image, brightness=brightness, contrast=contrast,
                       saturation=saturation, hue=hue, p=jitter_p)
  image = random_grayscale(gray_key, image, p=grayscale_p)
  return random_gaussian_blur(blur_key, image, sigma_range=blur_sigma, p=blur_p)


def unimatch_strong_colour(key: jax.Array, image: jax.Array) -> jax.Array:
  """UniMatch / ST++ strong colour view (METHODS.md 1f).

  ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8, grayscale p 0.2, blur p 0.5 with
  ``sigma ~ U(0.1, 2.0)``; the CutMix box (UniMatch) or Cutout (ST++) comes after, from
  ``augment.mixing``.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.

  Returns:
    The image.

  Raises:
    ValueError: on a bad image.
  """
  return strong_colour(key, image, brightness=0.5, contrast=0.5, saturation=0.5,
                       hue=0.25, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5,
                       blur_sigma=(0.1, 2.0))


def french_strong_colour(key: jax.Array, image: jax.Array) -> jax.Array:
  """French et al. (cutmix-semisup-seg) colour augmentation (METHODS.md 1f).

  ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 and grayscale p 0.2; no blur.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` RGB image in ``[0, 1]``.

  Returns:
    The image.

  Raises:
    ValueError: on a bad image.
  """
  return strong_colour(key, image, brightness=0.4, contrast=0.4, saturation=0.4,
                       hue=0.1, jitter_p=0.8, grayscale_p=0.2, blur_p=0.0)
