"""Occlusion and mixing: CutMix box samplers, ClassMix, Cutout, Random Erasing, Mixup.

Conventions shared by every function here:

* A mixing mask is a bool ``[H, W]`` array (``[B, H, W]`` for a batch) where
  ``True`` means "take this pixel from the **source**" and ``False`` "keep the
  **target**". :func:`mix` applies one mask to any pytree of per-pixel targets
  (images, labels, pseudo-labels, confidences, ignore masks), so a method mixes
  everything that belongs to an image with one call.
* Mixup-style weights ``lam`` weight the **target**, as in the papers
  (``x = lam * x_i + (1 - lam) * x_j``); :func:`blend` applies them.
* Sizes and box counts are static Python ints; areas, ratios, probabilities,
  ``alpha`` and Cutout's side may be traced scalars, so a policy can pick them per
  image inside one compiled call. Static values are checked on the host.
* All boxes come from three private helpers (:func:`_rectangle_mask`,
  :func:`_place_uniformly`, :func:`_centred_box_mask`), so the samplers differ only
  in how they draw a box's size, which is where the reference methods differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255

Pytree = Any
Number = float | jax.Array

# Label values are < 256 (255 = ignore), so a 256-entry table covers every class.
_LABEL_TABLE_SIZE = 256


def _is_static_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating))


def _check_probability(name: str, value: Number) -> None:
  if _is_static_number(value) and not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value}; expected a probability in [0, 1].")


def _check_interval(name: str, interval: Sequence[Number], *, low: float,
                    high: float) -> None:
  """Checks a static ``(lo, hi)`` pair lies in ``[low, high]`` with ``lo <= hi``."""
  if len(interval) != 2:
    raise ValueError(f"{name}={interval!r}; expected a (low, high) pair.")
  lo, hi = interval
  if _is_static_number(lo) and _is_static_number(hi) and not low <= lo <= hi <= high:
    raise ValueError(
        f"{name}={tuple(interval)}; expected {low} <= low <= high <= {high}.")


def _check_positive(name: str, value: Number) -> None:
  if _is_static_number(value) and not value > 0:
    raise ValueError(f"{name}={value}; expected a positive number.")


def _image_size(size: int | Sequence[int]) -> tuple[int, int]:
  """Normalises ``size`` (``S`` or ``(H, W)``) to a pair of positive Python ints."""
  pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
    raise ValueError(
        f"size={size!r}; expected a positive int or a (height, width) pair of "
        "positive ints (static, not traced).")
  return int(pair[0]), int(pair[1])


def _check_image(image: jax.Array, mask: jax.Array | None) -> None:
  if image.ndim != 3:
    raise ValueError(
        f"image has shape {image.shape}; expected one example [H, W, C] (vmap over "
        "a batch).")
  if mask is not None and mask.shape != image.shape[:2]:
    raise ValueError(
        f"mask has shape {mask.shape}; expected the image's [H, W] = {image.shape[:2]}.")


def _rectangle_mask(size: tuple[int, int], top: Number, left: Number, height: Number,
                    width: Number) -> jax.Array:
  """Bool ``[H, W]``, True on rows ``[top, top + height)`` and columns likewise.

  Parts of the rectangle outside the image simply do not exist, which is the
  reference methods' clipping.
  """
  rows = jnp.arange(size[0])[:, None]
  cols = jnp.arange(size[1])[None, :]
  return ((rows >= top) & (rows < top + height) & (cols >= left) &
          (cols < left + width))


def _place_uniformly(key: jax.Array, size: tuple[int, int], height: jax.Array,
                     width: jax.Array) -> jax.Array:
  """A ``height x width`` box mask at a uniform position among those that fit."""
  top_key, left_key = jax.random.split(key)
  top = jax.random.randint(top_key, (), 0, size[0] - height + 1)
  left = jax.random.randint(left_key, (), 0, size[1] - width + 1)
  return _rectangle_mask(size, top, left, height, width)


def _centred_box_mask(key: jax.Array, size: tuple[int, int], half_height: Number,
                      half_width: Number) -> jax.Array:
  """Box ``[c - half, c + half)`` around a uniform centre, clipped at the border.

  This is the box of Yun et al.'s ``rand_bbox`` and of DeVries & Taylor's /
  AutoAugment's / PseudoSeg's Cutout.
  """
  centre = jax.random.randint(key, (2,), 0, jnp.array(size))
  return _rectangle_mask(size, centre[0] - half_height, centre[1] - half_width,
                         2 * half_height, 2 * half_width)


# Tries of the references' rejection loops, drawn at once. At the default largest area
# (0.4 of the image) a try fits with probability ~0.06, so all of them fail with
# probability ~1e-14; the last try is then used, cut at the border.
_BOX_TRIES = 512


def unimatch_cutmix_box(
    key: jax.Array,
    *,
    size: int | Sequence[int],
    p: Number = 0.5,
    area_range: Sequence[Number] = (0.02, 0.4),
    ratio_range: Sequence[Number] = (0.3, 1 / 0.3),
    redraw_area: bool = False,
) -> jax.Array:
  """UniMatch / FixMatch-seg CutMix box (``obtain_cutmix_box``), also ST++'s Cutout box.

  With probability ``p`` a box, else an empty mask. The box has area
  ``a ~ U(area_range) * H * W`` and aspect ``r = h / w ~ U(ratio_range)``, so
  ``w = floor(sqrt(a / r))``, ``h = floor(sqrt(a * r))``, at a top-left corner drawn
  uniformly over the whole image, as the references do: they redraw until the box fits.
  UniMatch draws the area once and redraws aspect and position; ST++'s ``cutout`` (and
  Zhong et al.'s Random Erasing) redraws the area too (``redraw_area``), which favours
  small boxes: at the default ranges the mean box covers ~14% of the image, against
  ~21% with the area drawn once. Within a fixed area, the redraws favour aspects near 1
  for large boxes. Reference defaults (LiheYoung/UniMatch, the Random Erasing defaults
  of Zhong et al.): ``p = 0.5``, area ``(0.02, 0.4)``, aspect ``(0.3, 1/0.3)``.

  Args:
    key: PRNG key.
    size: ``S`` or ``(H, W)`` of the mask (static).
    p: probability of drawing a box at all.
    area_range: ``(low, high)`` box area as a fraction of ``H * W``.
    ratio_range: ``(low, high)`` of the aspect ratio ``h / w``.
    redraw_area: draw a new area with each try (ST++), else once (UniMatch).

  Returns:
    Bool ``[H, W]`` mask, True inside the box (take from the source).

  Raises:
    ValueError: on a bad ``size``, ``p`` outside ``[0, 1]``, an area range outside
      ``[0, 1]`` or a non-positive aspect range.
  """
  size = _image_size(size)
  _check_probability("p", p)
  _check_interval("area_range", area_range, low=0.0, high=1.0)
  _check_interval("ratio_range", ratio_range, low=0.0, high=float("inf"))
  _check_positive("ratio_range[0]", ratio_range[0])
  gate_key, area_key, ratio_key, top_key, left_key = jax.random.split(key, 5)
  area = jax.random.uniform(
      area_key, (_BOX_TRIES if redraw_area else 1,), minval=area_range[0],
      maxval=area_range[1]) * (size[0] * size[1])
  ratio = jax.random.uniform(ratio_key, (_BOX_TRIES,), minval=ratio_range[0],
                             maxval=ratio_range[1])
  heights = jnp.floor(jnp.sqrt(area * ratio)).astype(jnp.int32)
  widths = jnp.floor(jnp.sqrt(area / ratio)).astype(jnp.int32)
  tops = jax.random.randint(top_key, (_BOX_TRIES,), 0, size[0])
  lefts = jax.random.randint(left_key, (_BOX_TRIES,), 0, size[1])
  fits = (tops + heights <= size[0]) & (lefts + widths <= size[1])
  chosen = jnp.where(fits.any(), jnp.argmax(fits), _BOX_TRIES - 1)
  box = _rectangle_mask(size, tops[chosen], lefts[chosen], heights[chosen], widths[chosen])
  return box & (jax.random.uniform(gate_key) < p)


def french_box_mask(
    key: jax.Array,
    *,
    size: int | Sequence[int],
    num_boxes: int = 3,
    area_range: Sequence[Number] = (0.25, 0.5),
    random_aspect: bool = True,
    invert: bool = True,
) -> jax.Array:
  """French et al. / CPS ``BoxMaskGenerator``: ``num_boxes`` boxes XOR-toggled.

  Per box: area proportion ``q ~ U(area_range)``; with a random aspect
  ``y = q ** u``, ``x = q ** (1 - u)`` with ``u ~ U(0, 1)`` (the reference's
  ``exp(u ln q)`` and ``q / y``), else ``x = y = sqrt(q)``; both are scaled by
  ``sqrt(1 / num_boxes)`` and the box is ``round(y * H) x round(x * W)`` at a
  uniform position inside the image. ``invert=True`` starts from zeros and
  toggles each box (so overlaps cancel); ``invert=False`` starts from ones.
  Reference defaults: CPS (charlesCXK/TorchSemiSeg) area ``(0.25, 0.5)``, 3 boxes;
  French et al. CutMix area ``(0.5, 0.5)``, 1 box; French et al. Cutout area
  ``(0, 1)``, 1 box, ``invert=False`` and the image multiplied by the mask.

  The reference places a box at ``round((S - size) * U(0, 1))``, which gives the
  two extreme positions half the weight of the others; here every fitting
  position is equally likely.

  Args:
    key: PRNG key.
    size: ``S`` or ``(H, W)`` of the mask (static).
    num_boxes: number of boxes (static, >= 1).
    area_range: ``(low, high)`` of the per-mask area proportion ``q``.
    random_aspect: draw the aspect ratio as above; else square-proportioned boxes.
    invert: start from an all-False mask (True: boxes are True).

  Returns:
    Bool ``[H, W]`` mask; True = take from the source (``x0 (1 - M) + x1 M``).

  Raises:
    ValueError: on a bad ``size``, ``num_boxes < 1`` or an area range outside
      ``[0, 1]``.
  """
  size = _image_size(size)
  if not isinstance(num_boxes, (int, np.integer)) or num_boxes < 1:
    raise ValueError(f"num_boxes={num_boxes!r}; expected a static int >= 1.")
  _check_interval("area_range", area_range, low=0.0, high=1.0)
  area_key, aspect_key, place_key = jax.random.split(key, 3)
  areas = jax.random.uniform(
      area_key, (num_boxes,), minval=area_range[0], maxval=area_range[1])
  if random_aspect:
    exponent = jax.random.uniform(aspect_key, (num_boxes,))
    height_props, width_props = areas**exponent, areas**(1.0 - exponent)
  else:
    height_props = width_props = jnp.sqrt(areas)
  scale = np.sqrt(1.0 / num_boxes)
  heights = jnp.round(height_props * scale * size[0]).astype(jnp.int32)
  widths = jnp.round(width_props * scale * size[1]).astype(jnp.int32)
  boxes = jax.vmap(lambda k, h, w: _place_uniformly(k, size, h, w))(
      jax.random.split(place_key, num_boxes), heights, widths)
  toggled = jnp.sum(boxes, axis=0) % 2 == 1
  return toggled if invert else ~toggled


def u2pl_box_mask(key: jax.Array, *, size: int | Sequence[int],
                  ratio: float = 2.0) -> jax.Array:
  """U2PL CutMix box (``generate_cutout_mask``): about ``1 / ratio`` of the image.

  ``w ~ randint(int(W / ratio + 1), W)`` (upper bound exclusive),
  ``h = round(H W / ratio / w)``, uniform position. U2PL returns the complement
  (1 outside the box, the weight of the image it keeps) and mixes image ``i``
  with image ``(i + 1) mod B``; here the box is True (take from the source), so
  the same mix is ``cutmix_batch(..., permutation=jnp.roll(jnp.arange(B), -1))``.
  U2PL applies CutMix to the whole batch with probability 0.5; that choice
  belongs to the method.

  Args:
    key: PRNG key.
    size: ``S`` or ``(H, W)`` of the mask (static).
    ratio: image area / box area (static Python number, reference 2).

  Returns:
    Bool ``[H, W]`` mask, True inside the box.

  Raises:
    ValueError: on a bad ``size`` or a ``ratio`` that leaves no width to draw.
  """
  size = _image_size(size)
  _check_positive("ratio", ratio)
  min_width = int(size[1] / ratio + 1)
  if not min_width < size[1]:
    raise ValueError(
        f"ratio={ratio} with width {size[1]} leaves no box width to draw from "
        f"[{min_width}, {size[1]}); expected ratio > 1 and a wider image.")
  width_key, place_key = jax.random.split(key)
  width = jax.random.randint(width_key, (), min_width, size[1])
  height = jnp.round(size[0] * size[1] / ratio / width).astype(jnp.int32)
  return _place_uniformly(place_key, size, height, width)


def classmix_mask(key: jax.Array, labels: jax.Array, *,
                  ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """ClassMix mask (Olsson et al.; U2PL ``generate_class_mask``): half the classes.

  Picks ``floor(n / 2)`` of the ``n`` classes present in ``labels`` (other than
  ``ignore_index``) uniformly at random, as U2PL does (the ClassMix paper rounds
  up: ``ceil(n / 2)``); the mask is their union. With one class present the mask
  is empty.

  Args:
    key: PRNG key.
    labels: int ``[H, W]`` labels or pseudo-labels of the **source** image, the
      one whose class pixels are pasted; values below 256.
    ignore_index: label that is never selected.

  Returns:
    Bool ``[H, W]`` mask, True on the selected classes' pixels (take from the
    source).

  Raises:
    ValueError: if ``labels`` is not an integer ``[H, W]`` array.
  """
  if labels.ndim != 2 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f"labels have shape {labels.shape} and dtype {labels.dtype}; expected int "
        "[H, W] (vmap over a batch).")
  present = jnp.zeros(_LABEL_TABLE_SIZE, bool).at[labels.ravel()].set(True)
  present = present.at[ignore_index].set(False)
  scores = jnp.where(present, jax.random.uniform(key, (_LABEL_TABLE_SIZE,)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores))
  chosen = rank < present.sum() // 2
  return chosen[labels]


def cutmix_box(key: jax.Array, *, size: int | Sequence[int],
               alpha: Number = 1.0) -> tuple[jax.Array, jax.Array]:
  """CutMix box of Yun et al. (``rand_bbox``), with the clipped-box lambda.

  ``lam ~ Beta(alpha, alpha)``, ``cut = sqrt(1 - lam)``; the box is
  ``[c - int(S cut) // 2, c + int(S cut) // 2)`` per axis around a uniform centre
  ``c``, clipped at the border; then ``lam = 1 - box_area / (H W)`` is recomputed
  for the clipped box. Reference defaults: ``alpha = 1``; cutmix_prob 0.5 (CIFAR)
  / 1.0 (ImageNet) is the caller's choice.

  Args:
    key: PRNG key.
    size: ``S`` or ``(H, W)`` of the mask (static).
    alpha: Beta concentration (> 0).

  Returns:
    ``(mask, lam)``: bool ``[H, W]`` mask, True inside the box (take from the
    source), and the scalar weight of the **target**'s label,
    ``loss = lam * CE(y_target) + (1 - lam) * CE(y_source)``.

  Raises:
    ValueError: on a bad ``size`` or a non-positive ``alpha``.
  """
  size = _image_size(size)
  _check_positive("alpha", alpha)
  lam_key, centre_key = jax.random.split(key)
  cut_ratio = jnp.sqrt(1.0 - jax.random.beta(lam_key, alpha, alpha))
  cut = jnp.floor(jnp.array(size) * cut_ratio).astype(jnp.int32)
  mask = _centred_box_mask(centre_key, size, cut[0] // 2, cut[1] // 2)
  return mask, 1.0 - mask.mean()


def _erase(key: jax.Array, image: jax.Array, mask: jax.Array | None, box: jax.Array,
           fill: Number | str, ignore_in_box: bool) -> tuple[jax.Array, jax.Array | None]:
  """Fills ``image`` inside ``box`` and, if asked, sets ``mask`` there to ignore."""
  if isinstance(fill, str):
    if fill != "noise":
      raise ValueError(
          f"fill={fill!r}; expected 'noise', a number or a per-channel array.")
    values = jax.random.uniform(key, image.shape, image.dtype)
  else:
    values = jnp.broadcast_to(jnp.asarray(fill, image.dtype), image.shape)
  image = jnp.where(box[..., None], values, image)
  if mask is not None and ignore_in_box:
    mask = jnp.where(box, jnp.asarray(IGNORE_INDEX, mask.dtype), mask)
  return image, mask


def cutout(
    key: jax.Array,
    image: jax.Array,
    mask: jax.Array | None = None,
    *,
    size: int | jax.Array,
    fill: Number | str = 0.5,
    ignore_in_box: bool = True,
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """Cutout (DeVries & Taylor): one square around a uniform centre, clipped.

  The square is ``[c - size // 2, c + size // 2)`` per axis around a centre
  uniform over the image, so it may lie partly outside (odd sizes lose one pixel,
  as in the reference). Reference settings: DeVries & Taylor side 16 on CIFAR-10;
  PseudoSeg (``cutout_with_mask``) side 100 filled with the mean pixel, labels set
  to ignore; AutoAugment side ``2 * int(100 l / 10)`` filled with 128/255.

  Args:
    key: PRNG key.
    image: float ``[H, W, C]`` in [0, 1].
    mask: optional int ``[H, W]`` labels.
    size: side of the square in pixels; may be traced (a policy level).
    fill: value(s) written into the square: a number, a per-channel ``[C]``
      array (e.g. the mean pixel), or ``'noise'`` for per-pixel ``U(0, 1)``.
    ignore_in_box: set ``mask`` to 255 inside the square (the ST++ / PseudoSeg
      convention); False keeps the labels.

  Returns:
    ``(image, mask, box)``: the erased image, the mask (None when None was given)
    and the bool ``[H, W]`` square, e.g. to leave it out of a loss.

  Raises:
    ValueError: on a bad image/mask shape, a negative static ``size`` or an
      unknown ``fill``.
  """
  _check_image(image, mask)
  if _is_static_number(size) and size < 0:
    raise ValueError(f"size={size}; expected a side length >= 0 pixels.")
  box_key, fill_key = jax.random.split(key)
  half = jnp.asarray(size, jnp.int32) // 2
  box = _centred_box_mask(box_key, image.shape[:2], half, half)
  return (*_erase(fill_key, image, mask, box, fill, ignore_in_box), box)


def random_erasing(
    key: jax.Array,
    image: jax.Array,
    mask: jax.Array | None = None,
    *,
    p: Number = 0.5,
    area_range: Sequence[Number] = (0.02, 0.4),
    ratio_range: Sequence[Number] = (0.3, 1 / 0.3),
    fill: Number | str = "noise",
    ignore_in_box: bool = True,
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """Random Erasing (Zhong et al.), as ST++'s ``cutout`` for segmentation.

  With probability ``p`` erase a box drawn by :func:`unimatch_cutmix_box` with
  ``redraw_area`` (area ``U(area_range) * H W``, aspect ``h / w ~ U(ratio_range)``,
  both redrawn with the position until the box fits, as ST++'s ``cutout``) with
  per-pixel uniform noise, and set the labels inside it to 255.
  Reference defaults (Zhong et al.; LiheYoung/ST-PlusPlus): ``p = 0.5``,
  ``s_l = 0.02``, ``s_h = 0.4``, ``r_1 = 0.3``, noise fill, labels ignored.

  Args:
    key: PRNG key.
    image: float ``[H, W, C]`` in [0, 1].
    mask: optional int ``[H, W]`` labels.
    p: probability of erasing.
    area_range: ``(low, high)`` box area as a fraction of ``H * W``.
    ratio_range: ``(low, high)`` of the aspect ratio ``h / w``.
    fill: ``'noise'`` (per-pixel ``U(0, 1)``), a number or a per-channel array.
    ignore_in_box: set ``mask`` to 255 inside the box; False keeps the labels.

  Returns:
    ``(image, mask, box)`` as :func:`cutout`; ``box`` is all False when nothing
    was erased.

  Raises:
    ValueError: on bad shapes, ``p`` or ranges, or an unknown ``fill``.
  """
  _check_image(image, mask)
  box_key, fill_key = jax.random.split(key)
  box = unimatch_cutmix_box(box_key, size=image.shape[:2], p=p, area_range=area_range,
                            ratio_range=ratio_range, redraw_area=True)
  return (*_erase(fill_key, image, mask, box, fill, ignore_in_box), box)


def _check_same_structure(target: Pytree, source: Pytree) -> None:
  if jax.tree.structure(target) != jax.tree.structure(source):
    raise ValueError(
        f"target has structure {jax.tree.structure(target)} and source "
        f"{jax.tree.structure(source)}; expected the same pytree.")


def _weights_for(weights: jax.Array, leaf: jax.Array, path: Any,
                 source_leaf: jax.Array) -> jax.Array:
  """Checks a leaf against the leading ``weights`` shape; reshapes to broadcast."""
  if leaf.shape != source_leaf.shape or leaf.shape[:weights.ndim] != weights.shape:
    raise ValueError(
        f"leaf {jax.tree_util.keystr(path) or '<root>'} has target shape {leaf.shape} "
        f"and source shape {source_leaf.shape}; expected equal shapes starting with "
        f"the mixing weights' shape {weights.shape}.")
  return weights.reshape(weights.shape + (1,) * (leaf.ndim - weights.ndim))


def mix(masks: jax.Array, target: Pytree, source: Pytree) -> Pytree:
  """Pastes ``source`` into ``target`` where ``masks`` is True, for every leaf.

  The one call every mixing method uses for images and all their per-pixel
  targets (labels, pseudo-labels, confidences, ignore masks, logits) alike, so
  they stay consistent: ``out = where(M, source, target)``, i.e.
  ``target (1 - M) + source M`` for a binary ``M``. Integer leaves stay integer.

  Args:
    masks: binary ``[H, W]`` or ``[B, H, W]`` (bool or 0/1) mask; True = source.
    target: pytree whose leaves have shape ``masks.shape + (...)``.
    source: pytree of the same structure and leaf shapes.

  Returns:
    The mixed pytree, with ``target``'s structure and leaf dtypes.

  Raises:
    ValueError: if the pytrees differ or a leaf's shape does not start with
      ``masks.shape``.
  """
  masks = jnp.asarray(masks).astype(bool)
  _check_same_structure(target, source)
  return jax.tree_util.tree_map_with_path(
      lambda path, t, s: jnp.where(_weights_for(masks, t, path, s), s, t), target,
      source)


def blend(lam: jax.Array, target: Pytree, source: Pytree) -> Pytree:
  """Mixup interpolation ``lam * target + (1 - lam) * source`` of every leaf.

  Args:
    lam: scalar or ``[B]`` weights of the target (per example).
    target: pytree of floating leaves, each ``[B, ...]`` when ``lam`` is ``[B]``.
    source: pytree of the same structure and shapes.

  Returns:
    The blended pytree in the leaves' dtypes.

  Raises:
    ValueError: on differing pytrees or shapes, or an integer leaf (one-hot hard
      labels first, or weight two losses with ``lam``).
  """
  lam = jnp.asarray(lam)
  _check_same_structure(target, source)

  def blend_leaf(path, t, s):
    if not jnp.issubdtype(t.dtype, jnp.inexact):
      raise ValueError(
          f"leaf {jax.tree_util.keystr(path) or '<root>'} has dtype {t.dtype}; Mixup "
          "interpolates, so expected floating targets (one-hot integer labels "
          "first, or weight two losses with lam).")
    weight = _weights_for(lam, t, path, s).astype(t.dtype)
    return weight * t + (1 - weight) * s

  return jax.tree_util.tree_map_with_path(blend_leaf, target, source)


def _mixing_source(key: jax.Array, batch: Pytree, second: Pytree | None,
                   permutation: jax.Array | None) -> Pytree:
  """The source batch: ``second`` if given, else ``batch`` reordered."""
  if second is not None and permutation is not None:
    raise ValueError(
        "second and permutation were both given; expected at most one (second "
        "batch, or a permutation of this batch, or neither for a random one).")
  if second is not None:
    _check_same_structure(batch, second)
    return second
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  if permutation is None:
    permutation = jax.random.permutation(key, batch_size)
  permutation = jnp.asarray(permutation)
  if permutation.shape != (batch_size,):
    raise ValueError(
        f"permutation has shape {permutation.shape}; expected ({batch_size},).")
  return jax.tree.map(lambda x: x[permutation], batch)


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"images have shape {images.shape}; expected [B, H, W, C].")


def cutmix_batch(
    key: jax.Array,
    images: jax.Array,
    targets: Pytree = None,
    *,
    sampler: Callable[[jax.Array], jax.Array],
    second: tuple[jax.Array, Pytree] | None = None,
    permutation: jax.Array | None = None,
) -> tuple[jax.Array, Pytree, jax.Array]:
  """CutMix a batch: one mask per example from ``sampler``, applied by :func:`mix`.

  Example i takes the mask's pixels from source i: ``second[i]`` when a second
  batch is given (UniMatch: a second unlabeled batch), ``batch[permutation[i]]``
  when a permutation is given (U2PL: ``jnp.roll(jnp.arange(B), -1)``), else a
  random permutation of the batch.

  Args:
    key: PRNG key.
    images: float ``[B, H, W, C]``.
    targets: pytree of per-pixel targets ``[B, H, W, ...]`` mixed with the same
      masks (labels, pseudo-labels, confidences, ignore masks), or None.
    sampler: ``key -> bool [H, W]`` mask, e.g.
      ``functools.partial(unimatch_cutmix_box, size=(H, W))``.
    second: optional ``(images, targets)`` source batch of the same shapes.
    permutation: optional int ``[B]`` source indices into this batch.

  Returns:
    ``(images, targets, masks)``: the mixed images and targets and the bool
    ``[B, H, W]`` masks (True = from the source).

  Raises:
    ValueError: on bad shapes, both ``second`` and ``permutation``, or a sampler
      that does not return an ``[H, W]`` mask.
  """
  _check_images(images)
  source_key, mask_key = jax.random.split(key)
  source = _mixing_source(source_key, (images, targets), second, permutation)
  masks = jax.vmap(sampler)(jax.random.split(mask_key, images.shape[0]))
  if not isinstance(masks, jax.Array) or masks.shape != images.shape[:3]:
    raise ValueError(
        f"sampler returned {jax.tree.map(jnp.shape, masks)} per batch; expected one "
        f"[H, W] mask per example, {images.shape[:3]} for the batch.")
  mixed_images, mixed_targets = mix(masks, (images, targets), source)
  return mixed_images, mixed_targets, masks


def mixup(
    key: jax.Array,
    images: jax.Array,
    targets: Pytree = None,
    *,
    alpha: Number,
    per_example: bool = True,
    second: tuple[jax.Array, Pytree] | None = None,
    permutation: jax.Array | None = None,
) -> tuple[jax.Array, Pytree, jax.Array]:
  """Mixup (Zhang et al.): ``x = lam x_i + (1 - lam) x_j``, targets likewise.

  ``lam ~ Beta(alpha, alpha)``, one per example (``per_example=True``, the
  segmentation ICT variant of Britefury/cutmix-semisup-seg, alpha 0.1, which
  mixes the teacher's probabilities and confidences with the same lam) or one
  for the batch (Zhang et al.: alpha 1 for CIFAR, 0.2 for ImageNet). The source
  is chosen as in :func:`cutmix_batch`.

  Args:
    key: PRNG key.
    images: float ``[B, H, W, C]``.
    targets: pytree of floating targets ``[B, ...]`` (soft labels, probabilities,
      confidences) blended with the same lam, or None.
    alpha: Beta concentration (> 0).
    per_example: one lam per example rather than one per batch.
    second: optional ``(images, targets)`` source batch of the same shapes.
    permutation: optional int ``[B]`` source indices into this batch.

  Returns:
    ``(images, targets, lam)`` with ``lam`` of shape ``[B]`` (the target's weight).

  Raises:
    ValueError: on bad shapes, integer targets, both ``second`` and
      ``permutation``, or a non-positive ``alpha``.
  """
  _check_images(images)
  _check_positive("alpha", alpha)
  source_key, lam_key = jax.random.split(key)
  source = _mixing_source(source_key, (images, targets), second, permutation)
  batch_size = images.shape[0]
  lam = jax.random.beta(lam_key, alpha, alpha, (batch_size,) if per_example else ())
  lam = jnp.broadcast_to(lam, (batch_size,))
  mixed_images, mixed_targets = blend(lam, (images, targets), source)
  return mixed_images, mixed_targets, lam
