"""Geometric augmentations that move the mask with the image, and their inverses.

Every op works on one example, ``image [H, W, C]`` float in [0, 1] and an optional int
``mask [H, W]``, and returns ``(image, mask, params)``: the image resampled bilinearly,
the mask with nearest neighbour (255 where the source falls outside the image), and a
:class:`Warp` describing the transform it drew. Random ops take a ``jax.random`` key
first; explicit-magnitude ops (``rotate``, ``shear_x`` ...) take none, and their
magnitudes may be traced scalars, so a policy can choose them per image inside one
compiled call. Batch with ``jax.vmap`` over split keys. All ops except
:func:`elastic_deformation` return a ``Warp`` of the same pytree structure for a given
image shape, so they can be branches of one ``lax.switch``.

Representation: a :class:`Warp` is a 3x3 affine matrix mapping homogeneous *output*
pixel coordinates ``p = (x, y, 1)`` (x = column, y = row, pixel centres on integers) to
input coordinates, plus, for elastic deformation only, a displacement field ``d``
``[H_out, W_out, 2]`` (x, y order): the output pixel at ``p`` samples the input at
``matrix @ p + d(p)``. So :func:`compose` is a matrix product (the second field is
carried through the first transform), :func:`warp` applies any composition with one
resampling, and :func:`invert` maps a per-pixel array from the augmented frame back
with the inverse matrix. With a displacement field there is no closed-form inverse;
:func:`invert` solves ``matrix @ p + d(p) = q`` by the fixed-point iteration
``p <- matrix^-1 (q - d(p))``, which converges when the field's Jacobian has norm
below 1 (true for the smooth fields of usual elastic settings) and is approximate
otherwise.

Sampling: neighbours outside the image count as ``fill`` (torch ``grid_sample`` /
scipy ``mode="constant"``). At integer source coordinates bilinear sampling returns the
pixel exactly, so magnitude 0, flips, rot90 and integer translations are exact.

Conventions: positive angles turn the content counter-clockwise on screen (PIL,
torchvision); positive translations move the content right / down (torchvision);
``shear_x(level)`` samples ``x_in = x + level * y`` measured from the image's top-left
corner, as PIL's ``Image.transform(AFFINE, (1, level, 0, 0, 1, 0))`` in the AutoAugment
reference code (tensorflow/tpu ``autoaugment.py``); :func:`random_affine` follows
torchvision ``RandomAffine`` and turns, scales and shears about the image centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dm_pix as pix
import flax.struct
import jax
import jax.numpy as jnp

IGNORE_INDEX = 255

Numeric = float | jax.Array
Range = tuple[Numeric, Numeric]
Result = tuple[jax.Array, jax.Array | None, "Warp"]


@flax.struct.dataclass
class Warp:
  """A drawn geometric transform (see the module docstring for the coordinates).

  Attributes:
    matrix: ``[3, 3]`` float32 affine matrix, output pixel coordinates -> input.
    displacement: ``[H_out, W_out, 2]`` float32 offsets (x, y) added to the source
      coordinates, or None when the transform is purely affine.
    input_shape: static ``(H, W)`` of the image the transform reads.
    output_shape: static ``(H_out, W_out)`` of the image it produces.
  """
  matrix: jax.Array
  displacement: jax.Array | None
  input_shape: tuple[int, int] = flax.struct.field(pytree_node=False)
  output_shape: tuple[int, int] = flax.struct.field(pytree_node=False)


def _check_image(image: jax.Array, mask: jax.Array | None) -> None:
  if image.ndim != 3:
    raise ValueError(f"image has shape {image.shape}; expected one example [H, W, C] "
                     "(use jax.vmap for a batch).")
  if mask is not None and mask.shape != image.shape[:2]:
    raise ValueError(f"mask has shape {mask.shape}; expected the image's [H, W] = "
                     f"{image.shape[:2]}.")


def _check_probability(name: str, value: Numeric) -> None:
  if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value}; expected a probability in [0, 1].")


def _check_range(name: str, value: Range, *, minimum: float) -> None:
  if len(value) != 2:
    raise ValueError(f"{name}={value}; expected a (low, high) pair.")
  low, high = value
  if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not (
      minimum <= low <= high):
    raise ValueError(f"{name}={value}; expected {minimum} <= low <= high.")


def _grid(shape: tuple[int, int]) -> jax.Array:
  ys, xs = jnp.meshgrid(jnp.arange(shape[0]), jnp.arange(shape[1]), indexing="ij")
  return jnp.stack([xs, ys], axis=-1).astype(jnp.float32)


def _mat2(a: Numeric, b: Numeric, c: Numeric, d: Numeric) -> jax.Array:
  rows = [[a, b], [c, d]]
  return jnp.stack([jnp.stack([jnp.asarray(v, jnp.float32) for v in row]) for row in rows])


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  # Elementwise, not jnp.matmul: accelerators may run float32 matmuls at reduced
  # precision, which would move pixels by a fraction at 300 px.
  return (a[:, :, None] * b[None, :, :]).sum(axis=1)


def _affine(linear: jax.Array, offset: jax.Array) -> jax.Array:
  top = jnp.concatenate([linear, offset[:, None]], axis=1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 1.0]])], axis=0)


def _about(linear: jax.Array, center: tuple[float, float], shift: Sequence[Numeric] = (0.0, 0.0)
           ) -> jax.Array:
  """Matrix sampling ``center + linear (p - center - shift)`` for output pixel ``p``."""
  anchor = jnp.asarray(center, jnp.float32) + jnp.stack(
      [jnp.asarray(s, jnp.float32) for s in shift])
  return _affine(linear, jnp.asarray(center, jnp.float32) - (linear * anchor).sum(axis=1))


def _center(image: jax.Array) -> tuple[float, float]:
  return ((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2)


def _transform(matrix: jax.Array, points: jax.Array) -> jax.Array:
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2],
                    matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]], axis=-1)


def _invert_matrix(matrix: jax.Array) -> jax.Array:
  # Closed form, so integer matrices (flips, rot90) invert exactly.
  (a, b), (c, d) = matrix[0, :2], matrix[1, :2]
  det = a * d - b * c
  linear = jnp.stack([jnp.stack([d, -b]), jnp.stack([-c, a])]) / det
  return _affine(linear, -(linear * matrix[:2, 2]).sum(axis=1))


def _sample(values: jax.Array, coords: jax.Array, fill: Numeric) -> jax.Array:
  """Samples ``values [H, W, ...]`` at ``coords [h, w, 2]``; outside taps read ``fill``.

  Floats are interpolated bilinearly, integers (labels) take the nearest pixel.
  """
  height, width = values.shape[:2]
  flat = values.reshape((height * width,) + values.shape[2:])
  floating = jnp.issubdtype(values.dtype, jnp.floating)
  corner = jnp.floor(coords if floating else coords + 0.5)
  if floating:
    frac = coords - corner
    offsets = jnp.array([[0, 0], [1, 0], [0, 1], [1, 1]], jnp.float32)[:, None, None]
    # Tap weights (1 - f) or f per axis; all four taps in one gather.
    weights = jnp.prod(jnp.where(offsets == 1, frac, 1 - frac), axis=-1)
    taps = (corner + offsets).astype(jnp.int32)
  else:
    taps = corner[None].astype(jnp.int32)
  xs, ys = taps[..., 0], taps[..., 1]
  inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
  gathered = flat[jnp.clip(ys, 0, height - 1) * width + jnp.clip(xs, 0, width - 1)]
  trailing = (1,) * (values.ndim - 2)
  gathered = jnp.where(inside.reshape(inside.shape + trailing), gathered,
                       jnp.asarray(fill, values.dtype))
  if not floating:
    return gathered[0]
  return (weights.reshape(weights.shape + trailing) * gathered).sum(axis=0)


def _sample_clamped(field: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear sample of a displacement field, extended by its edge values."""
  limits = jnp.array([field.shape[1] - 1, field.shape[0] - 1], jnp.float32)
  return _sample(field, jnp.clip(coords, 0.0, limits), 0.0)


def _source_coordinates(params: Warp) -> jax.Array:
  coords = _transform(params.matrix, _grid(params.output_shape))
  if params.displacement is not None:
    coords = coords + params.displacement
  return coords


def warp(params: Warp, image: jax.Array, mask: jax.Array | None = None, *,
         fill: Numeric = 0.0) -> tuple[jax.Array, jax.Array | None]:
  """Applies a drawn transform: bilinear image with ``fill``, nearest mask with 255.

  Args:
    params: the transform, e.g. from an op here or from :func:`compose`.
    image: ``[H, W, C]`` float image with ``[H, W] == params.input_shape``.
    mask: optional int ``[H, W]`` labels.
    fill: image value where the source falls outside the image (scalar or per channel).

  Returns:
    ``(image [H_out, W_out, C], mask [H_out, W_out] or None)``.

  Raises:
    ValueError: if the shapes do not match each other or ``params.input_shape``.
  """
  _check_image(image, mask)
  if image.shape[:2] != tuple(params.input_shape):
    raise ValueError(f"image has [H, W] = {image.shape[:2]} but the warp reads "
                     f"{params.input_shape}; warp the image the transform was drawn for.")
  coords = _source_coordinates(params)
  out_image = _sample(image, coords, fill).astype(image.dtype)
  out_mask = None if mask is None else _sample(mask, coords, IGNORE_INDEX)
  return out_image, out_mask


def _apply(matrix: jax.Array, image: jax.Array, mask: jax.Array | None, fill: Numeric,
           output_shape: tuple[int, int] | None = None,
           displacement: jax.Array | None = None) -> Result:
  params = Warp(matrix=matrix, displacement=displacement, input_shape=image.shape[:2],
                output_shape=output_shape or image.shape[:2])
  return (*warp(params, image, mask, fill=fill), params)


def invert(params: Warp, values: jax.Array, *, fill: Numeric = 0.0,
           iterations: int = 10) -> jax.Array:
  """Maps a per-pixel array from the augmented frame back to the original frame.

  This is what geometric-equivariance consistency needs: predict on the warped image,
  then compare ``invert(params, logits)`` with the prediction on the original.

  Args:
    params: the transform that produced the augmented frame.
    values: ``[H_out, W_out, ...]`` array in the augmented frame (logits, probabilities,
      labels). Floats are sampled bilinearly, integers with nearest neighbour.
    fill: value where the original pixel was not visible after the transform (use 255
      for labels).
    iterations: fixed-point iterations inverting a displacement field (unused without one).

  Returns:
    ``[H, W, ...]`` array in the original frame, ``(H, W) = params.input_shape``.

  Raises:
    ValueError: if ``values`` does not have the transform's output ``[H_out, W_out]``.
  """
  if values.shape[:2] != tuple(params.output_shape):
    raise ValueError(f"values have [H, W] = {values.shape[:2]}; expected the augmented "
                     f"frame {params.output_shape}.")
  inverse = _invert_matrix(params.matrix)
  targets = _grid(params.input_shape)
  coords = _transform(inverse, targets)
  if params.displacement is not None:
    field = params.displacement
    coords = jax.lax.fori_loop(
        0, iterations,
        lambda _, p: _transform(inverse, targets - _sample_clamped(field, p)), coords)
  return _sample(values, coords, fill)


def compose(first: Warp, second: Warp) -> Warp:
  """The transform that applies ``first`` and then ``second``, resampling once.

  Args:
    first: transform applied to the original image.
    second: transform applied to the output of ``first``.

  Returns:
    The composed :class:`Warp`: matrix ``first.matrix @ second.matrix``; a displacement
    field when either has one (the first's field is resampled where the second reads it).

  Raises:
    ValueError: if ``second`` does not read the frame ``first`` produces.
  """
  if tuple(first.output_shape) != tuple(second.input_shape):
    raise ValueError(f"second.input_shape={second.input_shape} but first.output_shape="
                     f"{first.output_shape}; compose transforms whose frames chain.")
  displacement = None
  if second.displacement is not None:
    displacement = _transform(first.matrix.at[:2, 2].set(0.0), second.displacement)
  if first.displacement is not None:
    inner = _source_coordinates(second)
    carried = _sample_clamped(first.displacement, inner)
    displacement = carried if displacement is None else displacement + carried
  return Warp(matrix=_matmul(first.matrix, second.matrix), displacement=displacement,
              input_shape=first.input_shape, output_shape=second.output_shape)


def _rotation(cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Output -> input linear map of a counter-clockwise (on screen, y down) turn."""
  return _mat2(cos, -sin, sin, cos)


def rotate(image: jax.Array, mask: jax.Array | None = None, *, degrees: Numeric,
           fill: Numeric = 0.0) -> Result:
  """Rotates about the image centre (AutoAugment "Rotate"; PIL ``Image.rotate``).

  Args:
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    degrees: angle, counter-clockwise on screen; may be traced. AutoAugment draws up
      to 30 with a random sign (the caller's job here).
    fill: image fill outside the source (AutoAugment uses 128/255).

  Returns:
    ``(image, mask, params)``.
  """
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  matrix = _about(_rotation(jnp.cos(theta), jnp.sin(theta)), _center(image))
  return _apply(matrix, image, mask, fill)


def rot90(image: jax.Array, mask: jax.Array | None = None, *, k: int | jax.Array,
          fill: Numeric = 0.0) -> Result:
  """Turns by ``k`` quarter turns counter-clockwise, like ``jnp.rot90(image, k)``.

  The canvas keeps its shape, so ``k`` may be traced. On square images this equals
  ``jnp.rot90`` exactly; on other canvases the turned image is cut to the canvas and
  the rest filled.

  Args:
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    k: number of quarter turns; any integer, taken modulo 4.
    fill: image fill where a non-square canvas is left uncovered.

  Returns:
    ``(image, mask, params)``.
  """
  turn = jnp.asarray(k, jnp.int32) % 4
  cos, sin = jnp.array([1.0, 0.0, -1.0, 0.0])[turn], jnp.array([0.0, 1.0, 0.0, -1.0])[turn]
  return _apply(_about(_rotation(cos, sin), _center(image)), image, mask, fill)


def random_rot90(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
                 fill: Numeric = 0.0) -> Result:
  """:func:`rot90` with ``k`` uniform in {0, 1, 2, 3} (rotation-equivariance views).

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    fill: image fill where a non-square canvas is left uncovered.

  Returns:
    ``(image, mask, params)``.
  """
  return rot90(image, mask, k=jax.random.randint(key, (), 0, 4), fill=fill)


def _shear(image: jax.Array, mask: jax.Array | None, linear: jax.Array,
           fill: Numeric) -> Result:
  # The reference's shear origin is the image's top-left corner, not the centre.
  return _apply(_about(linear, (-0.5, -0.5)), image, mask, fill)


def shear_x(image: jax.Array, mask: jax.Array | None = None, *, level: Numeric,
            fill: Numeric = 0.0) -> Result:
  """Horizontal shear: output ``(x, y)`` samples ``(x + level * y, y)`` (AutoAugment "ShearX").

  Coordinates are measured from the image's top-left corner as in PIL's
  ``Image.transform(size, AFFINE, (1, level, 0, 0, 1, 0))``.

  Args:
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    level: shear coefficient (tan of the shear angle), may be traced; AutoAugment uses
      up to 0.3 with a random sign (the caller's job here).
    fill: image fill outside the source (AutoAugment uses 128/255).

  Returns:
    ``(image, mask, params)``.
  """
  return _shear(image, mask, _mat2(1.0, level, 0.0, 1.0), fill)


def shear_y(image: jax.Array, mask: jax.Array | None = None, *, level: Numeric,
            fill: Numeric = 0.0) -> Result:
  """Vertical shear: output ``(x, y)`` samples ``(x, y + level * x)`` (AutoAugment "ShearY").

  Coordinates are measured from the image's top-left corner as in PIL's
  ``Image.transform(size, AFFINE, (1, 0, 0, level, 1, 0))``.

  Args:
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    level: shear coefficient, may be traced; AutoAugment uses up to 0.3 with a random
      sign (the caller's job here).
    fill: image fill outside the source (AutoAugment uses 128/255).

  Returns:
    ``(image, mask, params)``.
  """
  return _shear(image, mask, _mat2(1.0, 0.0, level, 1.0), fill)


def translate_x(image: jax.Array, mask: jax.Array | None = None, *, pixels: Numeric,
                fill: Numeric = 0.0) -> Result:
  """Moves the content right by ``pixels`` (AutoAugment "TranslateX").

  The reference moves the content left for a positive argument; its sign is random,
  so the distribution is the same.

  Args:
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    pixels: shift in pixels (negative: left), may be traced and fractional; the tpu
      reference uses up to 250 for AutoAugment and 100 for RandAugment.
    fill: image fill outside the source (AutoAugment uses 128/255).

  Returns:
    ``(image, mask, params)``.
  """
  return _apply(_about(jnp.eye(2), _center(image), (pixels, 0.0)), image, mask, fill)


def translate_y(image: jax.Array, mask: jax.Array | None = None, *, pixels: Numeric,
                fill: Numeric = 0.0) -> Result:
  """Moves the content down by ``pixels`` (AutoAugment "TranslateY").

  Args:
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    pixels: shift in pixels (negative: up), may be traced and fractional; the sign
      convention is as in :func:`translate_x`.
    fill: image fill outside the source (AutoAugment uses 128/255).

  Returns:
    ``(image, mask, params)``.
  """
  return _apply(_about(jnp.eye(2), _center(image), (0.0, pixels)), image, mask, fill)


def _random_flip(key: jax.Array, image: jax.Array, mask: jax.Array | None,
                 probability: Numeric, fill: Numeric, *, column: bool) -> Result:
  _check_probability("probability", probability)
  sign = jnp.where(jax.random.uniform(key) < probability, -1.0, 1.0)
  linear = _mat2(sign, 0.0, 0.0, 1.0) if column else _mat2(1.0, 0.0, 0.0, sign)
  return _apply(_about(linear, _center(image)), image, mask, fill)


def random_flip_left_right(key: jax.Array, image: jax.Array, mask: jax.Array | None = None,
                           *, probability: Numeric = 0.5, fill: Numeric = 0.0) -> Result:
  """Mirrors columns (``image[:, ::-1]``) with ``probability`` (torchvision RandomHorizontalFlip).

  p = 0.5 is torchvision's default and the UniMatch / ST++ weak view.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    probability: chance of flipping, in [0, 1]; may be traced.
    fill: accepted so every geometric op takes the same keywords; a flip never reads
      outside the image.

  Returns:
    ``(image, mask, params)``.

  Raises:
    ValueError: if a static ``probability`` is outside [0, 1].
  """
  return _random_flip(key, image, mask, probability, fill, column=True)


def random_flip_up_down(key: jax.Array, image: jax.Array, mask: jax.Array | None = None,
                        *, probability: Numeric = 0.5, fill: Numeric = 0.0) -> Result:
  """Mirrors rows (``image[::-1]``) with ``probability`` (torchvision RandomVerticalFlip).

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    probability: chance of flipping, in [0, 1] (torchvision default 0.5); may be traced.
    fill: accepted so every geometric op takes the same keywords; a flip never reads
      outside the image.

  Returns:
    ``(image, mask, params)``.

  Raises:
    ValueError: if a static ``probability`` is outside [0, 1].
  """
  return _random_flip(key, image, mask, probability, fill, column=False)


def _symmetric(name: str, value: Numeric | Range) -> Range:
  """torchvision's convention: a number ``v`` means the range ``(-v, v)``."""
  if isinstance(value, Sequence):
    _check_range(name, tuple(value), minimum=-math.inf)
    return tuple(value)
  if isinstance(value, (int, float)) and value < 0:
    raise ValueError(f"{name}={value}; expected a non-negative number or a (low, high) pair.")
  return (-value, value)


def _lerp(bounds: Range, fraction: jax.Array) -> jax.Array:
  low, high = (jnp.asarray(b, jnp.float32) for b in bounds)
  return low + (high - low) * fraction


def random_affine(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
                  degrees: Numeric | Range = 0.0, translate: Range | None = None,
                  scale: Range | None = None,
                  shear: Numeric | Sequence[Numeric] | None = None,
                  fill: Numeric = 0.0) -> Result:
  """Random rotation, translation, scale and shear about the centre (torchvision RandomAffine).

  The forward map is ``T(c + t) R(angle) S(s) ShearY(sy) ShearX(sx) T(-c)`` as in
  torchvision. Every argument defaults to "no change", so the default is the identity.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    degrees: angle range in degrees, counter-clockwise; ``v`` means ``(-v, v)``.
    translate: maximal fractions ``(a, b)``: shifts are drawn from ``U(-a W, a W)`` and
      ``U(-b H, b H)`` and rounded to whole pixels, as torchvision does.
    scale: range ``(low, high)`` of the zoom factor (> 1 enlarges the content).
    shear: degrees; ``v`` means x-shear in ``(-v, v)``, a pair is the x range, four
      values are the x range then the y range (torchvision's forms).
    fill: image fill outside the source.

  Returns:
    ``(image, mask, params)``.

  Raises:
    ValueError: on negative ``degrees``, misordered ranges, ``translate`` outside
      [0, 1], a non-positive ``scale`` or a ``shear`` of another length.
  """
  _check_image(image, mask)
  # One draw for all six parameters: far cheaper to compile than six threefry calls.
  draws = jax.random.uniform(key, (6,))
  angle = jnp.deg2rad(_lerp(_symmetric("degrees", degrees), draws[0]))
  shift = [0.0, 0.0]
  if translate is not None:
    if len(translate) != 2 or any(
        isinstance(t, (int, float)) and not 0 <= t <= 1 for t in translate):
      raise ValueError(f"translate={translate}; expected two fractions (a, b) in [0, 1].")
    for axis, (fraction, size) in enumerate(zip(translate, image.shape[1::-1])):
      shift[axis] = jnp.round(_lerp((-fraction * size, fraction * size), draws[1 + axis]))
  zoom = 1.0
  if scale is not None:
    _check_range("scale", tuple(scale), minimum=1e-6)
    zoom = _lerp(scale, draws[3])
  shear_x_range = shear_y_range = (0.0, 0.0)
  if shear is not None:
    shear = tuple(shear) if isinstance(shear, Sequence) else (shear,)
    if len(shear) not in (1, 2, 4):
      raise ValueError(f"shear={shear}; expected a number, 2 values (x) or 4 (x then y).")
    shear_x_range = _symmetric("shear", shear[0] if len(shear) == 1 else shear[:2])
    if len(shear) == 4:
      shear_y_range = _symmetric("shear", shear[2:])
  tan_x = jnp.tan(jnp.deg2rad(_lerp(shear_x_range, draws[4])))
  tan_y = jnp.tan(jnp.deg2rad(_lerp(shear_y_range, draws[5])))
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  forward = _matmul(_mat2(cos * zoom, sin * zoom, -sin * zoom, cos * zoom),
                    _matmul(_mat2(1.0, 0.0, -tan_y, 1.0), _mat2(1.0, -tan_x, 0.0, 1.0)))
  inverse = _invert_matrix(_affine(forward, jnp.zeros(2)))[:2, :2]
  return _apply(_about(inverse, _center(image), shift), image, mask, fill)


def random_resized_crop(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
                        size: int | tuple[int, int], scale: Range = (0.08, 1.0),
                        ratio: Range = (3 / 4, 4 / 3), fill: Numeric = 0.0) -> Result:
  """Crops a random box and resizes it to ``size`` (torchvision RandomResizedCrop).

  torchvision's sampler: up to 10 tries of area ``U(scale) * H * W`` and aspect
  ``exp(U(log ratio))``, sides rounded, the first box that fits wins, placed uniformly
  on whole pixels; if none fits, the centre crop with the aspect clamped into
  ``ratio``. The resize is bilinear with half-pixel centres (align_corners=False) and,
  unlike torchvision's default, no antialiasing.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    size: static output size, an int (square) or ``(height, width)``.
    scale: range of the box area as a fraction of the image; default (0.08, 1.0).
    ratio: range of the box aspect width / height; default (3/4, 4/3).
    fill: image fill outside the source (only reached by bilinear edge taps).

  Returns:
    ``(image [*size, C], mask [*size], params)``.

  Raises:
    ValueError: on a non-positive ``size`` or misordered / non-positive ranges.
  """
  _check_image(image, mask)
  out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f"size={size}; expected positive ints (height, width).")
  _check_range("scale", tuple(scale), minimum=0.0)
  _check_range("ratio", tuple(ratio), minimum=1e-6)
  height, width = image.shape[:2]
  draws = jax.random.uniform(key, (22,))
  area = height * width * _lerp(scale, draws[:10])
  aspect = jnp.exp(_lerp((jnp.log(ratio[0]), jnp.log(ratio[1])), draws[10:20]))
  tries_w, tries_h = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
  fits = (tries_w > 0) & (tries_w <= width) & (tries_h > 0) & (tries_h <= height)
  first = jnp.argmax(fits)
  low, high = jnp.asarray(ratio[0], jnp.float32), jnp.asarray(ratio[1], jnp.float32)
  in_ratio = width / height
  fallback_w = jnp.where(in_ratio > high, jnp.round(height * high), width)
  fallback_h = jnp.where(in_ratio < low, jnp.round(width / low), height)
  found = fits.any()
  box_w = jnp.where(found, tries_w[first], fallback_w)
  box_h = jnp.where(found, tries_h[first], fallback_h)
  # torch.randint(0, H - h + 1) when a try fits, else the centre.
  top = jnp.floor(jnp.where(found, draws[20] * (height - box_h + 1), (height - box_h) / 2))
  left = jnp.floor(jnp.where(found, draws[21] * (width - box_w + 1), (width - box_w) / 2))
  step_x, step_y = box_w / out_w, box_h / out_h
  matrix = _affine(_mat2(step_x, 0.0, 0.0, step_y),
                   jnp.stack([left + 0.5 * step_x - 0.5, top + 0.5 * step_y - 0.5]))
  return _apply(matrix, image, mask, fill, output_shape=(out_h, out_w))


def elastic_deformation(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
                        alpha: Numeric = 34.0, sigma: Numeric = 4.0,
                        kernel_size: int | None = None, fill: Numeric = 0.0) -> Result:
  """Elastic deformation (Simard et al. 2003): smoothed random displacements.

  The displacement of each pixel along x and y is ``alpha * G_sigma * U(-1, 1)``: uniform
  noise smoothed by a normalised Gaussian (zero padding, as the common
  ``scipy.ndimage.gaussian_filter(mode="constant")`` implementation), in pixels.
  Defaults are Simard's MNIST values alpha = 34, sigma = 4 (torchvision
  ElasticTransform uses alpha = 50, sigma = 5). The field is returned in ``params``;
  :func:`invert` undoes it approximately (fixed-point iteration).

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, C]`` float image.
    mask: optional int ``[H, W]`` labels.
    alpha: displacement strength in pixels; may be traced; 0 is the identity.
    sigma: Gaussian smoothing in pixels. A traced ``sigma`` needs ``kernel_size``.
    kernel_size: static odd kernel width; default ``2 * round(4 sigma) + 1`` (scipy's
      truncation at 4 sigma).
    fill: image fill outside the source.

  Returns:
    ``(image, mask, params)`` with ``params.displacement`` of shape ``[H, W, 2]``.

  Raises:
    ValueError: on a static ``sigma <= 0`` or ``alpha < 0``, or a traced ``sigma``
      without ``kernel_size``.
  """
  _check_image(image, mask)
  if isinstance(alpha, (int, float)) and alpha < 0:
    raise ValueError(f"alpha={alpha}; expected a displacement strength >= 0.")
  if isinstance(sigma, (int, float)) and sigma <= 0:
    raise ValueError(f"sigma={sigma}; expected a positive smoothing width in pixels.")
  if kernel_size is None:
    if not isinstance(sigma, (int, float)):
      raise ValueError(f"sigma={sigma} is not a Python number; pass a static kernel_size "
                       "(odd int) with it.")
    kernel_size = 2 * int(4 * sigma + 0.5) + 1
  noise = jax.random.uniform(key, image.shape[:2] + (2,), minval=-1.0, maxval=1.0)
  field = alpha * pix.gaussian_blur(noise, sigma, kernel_size)
  return _apply(jnp.eye(3), image, mask, fill, displacement=field)
