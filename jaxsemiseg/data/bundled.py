"""Procedural "shapes" images for an offline semi-supervised segmentation benchmark.

Every image shows 1 to ``max_objects`` shapes (disk, triangle, square, star, ring) on a
textured background, plus distractor strokes and crosses that are labelled background.
The class depends on the outline alone: every layer (objects, distractors and the
background) draws its colours from the same uniform RGB range and its texture from the
same set (flat, gradient, stripes, smooth noise). Shapes are scaled, rotated, stretched
and stacked, so later shapes occlude earlier ones: each pixel takes the label of the
top-most layer covering at least half of it (background for a distractor).

Rendering is vectorised with numpy over a chunk of images, one depth layer at a time.
Each chunk has its own random stream derived from ``(seed, chunk index)``, so the first
N images are the same whatever the total count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

CLASS_NAMES = ("background", "disk", "triangle", "square", "star", "ring")
NUM_CLASSES = len(CLASS_NAMES)

# The version of the benchmark's data (the TFDS builder's version; RELEASE_NOTES in
# shapes_builder.py): bump it whenever generate_shapes' defaults or BUILDS change.
VERSION = "1.1.0"
# The builds of the benchmark: split sizes and base seed. Split ``k`` of ``SPLITS`` is
# ``generate_shapes((seed, k), size)`` and image ``i`` has the id ``example_id(split, i)``,
# both in the TFDS builder (``shapes_builder``) and in :func:`render_split`.
SPLITS = ("train", "validation")
BUILDS = {
    "default": {"train": 2000, "validation": 500, "seed": 0},
    # The first images of "tiny" are the first images of "default" (same seed).
    "tiny": {"train": 32, "validation": 16, "seed": 0},
}

_CHUNK = 256
# Layer kinds. 1..5 are the object classes (their label), then the distractors.
_EMPTY, _STROKE, _CROSS = 0, NUM_CLASSES, NUM_CLASSES + 1
_FLAT, _GRADIENT, _STRIPES, _NOISE = range(4)
_NOISE_GRID = 6
# Outline sizes in units of the object radius, chosen so the five classes cover
# comparable areas (disk pi, square 2.9, ring 2.2, triangle 2.0, star 1.8).
_RING_INNER = 0.55
_SQUARE_HALF = 0.85
_TRIANGLE_CIRCUMRADIUS = 1.25
_STAR_OUTER, _STAR_INNER = 1.2, 0.5
_CROSS_HALF_WIDTH = 0.22

_Sdf = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def render_split(split: str, *, build: str = "default"
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """One split of a build of the benchmark, rendered in memory: the TFDS dataset's bytes.

  For machines without TensorFlow (``config.dataset.in_memory``): the images, labels and
  ids are those of the TFDS dataset built from the same code (a whole split takes ~15 s).

  Args:
    split: one of ``SPLITS``.
    build: one of ``BUILDS`` (the TFDS builder configs).

  Returns:
    ``(images, labels, ids)``: uint8 ``[N, H, W, 3]``, uint8 ``[N, H, W]`` and N ids.

  Raises:
    ValueError: for an unknown split or build.
  """
  if split not in SPLITS:
    raise ValueError(f"The shapes dataset has no split {split!r} in memory; expected one "
                     f"of {list(SPLITS)} (slices such as 'train[:100]' need the TFDS copy).")
  if build not in BUILDS:
    raise ValueError(f"The shapes dataset has no build {build!r}; expected one of "
                     f"{list(BUILDS)}.")
  size = BUILDS[build][split]
  images, labels = generate_shapes((BUILDS[build]["seed"], SPLITS.index(split)), size)
  return images, labels, [example_id(split, index) for index in range(size)]


def example_id(split: str, index: int) -> str:
  """The id of image ``index`` of ``split``: ``"train_00007"`` is the 8th training image."""
  return f"{split}_{index:05d}"


def generate_shapes(
    seed: int | Sequence[int],
    num_images: int,
    *,
    image_size: int = 64,
    max_objects: int = 4,
    min_radius: float = 0.08,
    max_radius: float = 0.22,
    aspect_jitter: float = 0.25,
    max_distractors: int = 3,
    min_contrast: float = 0.2,
    texture_strength: float = 0.5,
    noise_std: float = 0.04,
) -> tuple[np.ndarray, np.ndarray]:
  """Renders ``num_images`` labelled shapes images; same arguments -> same bytes.

  The keyword arguments are the difficulty knobs of the bundled benchmark; their
  defaults define it (``shapes_builder`` records them with the built dataset).

  Args:
    seed: entropy for ``np.random.SeedSequence`` (an int or a sequence of ints).
    num_images: how many images to render, >= 0.
    image_size: height and width in pixels.
    max_objects: each image has between 1 and this many class objects.
    min_radius: smallest object radius, as a fraction of ``image_size``.
    max_radius: largest object radius, as a fraction of ``image_size``.
    aspect_jitter: objects are stretched by ``exp(u)`` along one axis and shrunk
      along the other, ``u ~ U(-aspect_jitter, aspect_jitter)``.
    max_distractors: each image has between 0 and this many strokes or crosses,
      labelled background, at random depths among the objects.
    min_contrast: least RMS distance (RGB in [0, 1]) between a layer's base colour
      and the background's base colour; 0 allows invisible objects.
    texture_strength: how far a textured layer moves from its base colour towards
      its second colour (0: flat colours, 1: textures span both colours).
    noise_std: standard deviation of the Gaussian pixel noise, in [0, 1] units.

  Returns:
    ``(images, labels)``: uint8 ``[N, image_size, image_size, 3]`` and uint8
    ``[N, image_size, image_size]`` with values in ``[0, NUM_CLASSES)``.

  Raises:
    ValueError: if a count or knob is out of range.
  """
  knobs = dict(image_size=image_size, max_objects=max_objects, min_radius=min_radius,
               max_radius=max_radius, aspect_jitter=aspect_jitter,
               max_distractors=max_distractors, min_contrast=min_contrast,
               texture_strength=texture_strength, noise_std=noise_std)
  _check_knobs(num_images=num_images, **knobs)
  images, labels = [], []
  for chunk in range(-(-num_images // _CHUNK)):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk,)))
    chunk_images, chunk_labels = _render_chunk(rng, **knobs)
    images.append(chunk_images)
    labels.append(chunk_labels)
  if not images:
    return (np.zeros((0, image_size, image_size, 3), np.uint8),
            np.zeros((0, image_size, image_size), np.uint8))
  return (np.concatenate(images)[:num_images], np.concatenate(labels)[:num_images])


def _check_knobs(**knobs) -> None:
  """Raises ValueError naming the first knob outside its valid range."""
  rules = {
      "num_images": (lambda v: v >= 0, ">= 0"),
      "image_size": (lambda v: v >= 8, ">= 8"),
      "max_objects": (lambda v: v >= 1, ">= 1"),
      "min_radius": (lambda v: 0 < v, "> 0"),
      "max_radius": (lambda v: knobs["min_radius"] <= v <= 0.5, "in [min_radius, 0.5]"),
      "aspect_jitter": (lambda v: 0 <= v <= 1, "in [0, 1]"),
      "max_distractors": (lambda v: v >= 0, ">= 0"),
      "min_contrast": (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
      "texture_strength": (lambda v: 0 <= v <= 1, "in [0, 1]"),
      "noise_std": (lambda v: v >= 0, ">= 0"),
  }
  for name, (is_valid, expected) in rules.items():
    if not is_valid(knobs[name]):
      raise ValueError(f"generate_shapes: {name}={knobs[name]!r}; expected {expected}.")


def _render_chunk(rng: np.random.Generator, *, image_size: int, max_objects: int,
                  min_radius: float, max_radius: float, aspect_jitter: float,
                  max_distractors: int, min_contrast: float, texture_strength: float,
                  noise_std: float) -> tuple[np.ndarray, np.ndarray]:
  """Renders one chunk of ``_CHUNK`` images from ``rng``."""
  n, size = _CHUNK, image_size
  kinds = _sample_layer_kinds(rng, n, max_objects=max_objects,
                              max_distractors=max_distractors)
  num_layers = kinds.shape[1]
  radius = rng.uniform(min_radius, max_radius, (n, num_layers)) * size
  layers = {
      "center": rng.uniform(0.1 * size, 0.9 * size, (n, num_layers, 2)),
      "radius": radius,
      "angle": rng.uniform(0, 2 * np.pi, (n, num_layers)),
      "aspect": np.exp(rng.uniform(-aspect_jitter, aspect_jitter, (n, num_layers))),
      # Strokes are 1-2.5 px wide whatever the radius, so they stay thin lines.
      "stroke_half_width": rng.uniform(0.5, 1.25, (n, num_layers)) / radius,
  }
  layers = {key: value.astype(np.float32) for key, value in layers.items()}
  layers["kind"] = kinds
  background_colour = rng.uniform(0, 1, (n, 3))
  layer_colour = _contrasting_colours(rng, background_colour, num_layers,
                                      min_contrast=min_contrast)
  background_texture = _sample_texture(rng, n, size)
  layer_textures = [_sample_texture(rng, n, size) for _ in range(num_layers)]
  second_colours = rng.uniform(0, 1, (n, num_layers + 1, 3))

  y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  background_offset = (x - size / 2)[None], (y - size / 2)[None]
  image = _colour_field(background_colour, second_colours[:, 0], background_texture,
                        background_offset, scale=np.full(n, size / 2.0),
                        strength=texture_strength)
  label = np.zeros((n, size, size), np.uint8)
  for layer in range(num_layers):
    drawn = np.nonzero(kinds[:, layer] != _EMPTY)[0]
    if not drawn.size:
      continue
    params = {key: value[drawn, layer] for key, value in layers.items()}
    du, dv = _rotated_offsets(x, y, params["center"], params["angle"])
    coverage = _coverage(params, du, dv)
    texture = {key: value[drawn] for key, value in layer_textures[layer].items()}
    colour = _colour_field(layer_colour[drawn, layer], second_colours[drawn, layer + 1],
                           texture, (du, dv), scale=params["radius"],
                           strength=texture_strength)
    layer_label = np.where(params["kind"] < NUM_CLASSES, params["kind"], 0)
    image[drawn], label[drawn] = _composite(image[drawn], label[drawn], coverage, colour,
                                            layer_label)
  image += noise_std * rng.standard_normal(image.shape, dtype=np.float32)
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), label


def _composite(image: np.ndarray, label: np.ndarray, coverage: np.ndarray,
               colour: np.ndarray, layer_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Draws one layer over ``image`` and ``label`` (both ``[m, H, W, ...]``).

  The layer occludes what is below in proportion to its coverage; a pixel takes the
  layer's label when the layer covers at least half of it, so labels follow the
  visible (top-most) shape.

  Args:
    image: float ``[m, H, W, 3]`` image so far.
    label: uint8 ``[m, H, W]`` labels so far.
    coverage: ``[m, H, W]`` fraction of each pixel the layer covers.
    colour: ``[m, H, W, 3]`` the layer's colours.
    layer_label: ``[m]`` the layer's label (0 for distractors).

  Returns:
    The new ``(image, label)``.
  """
  image = image + coverage[..., None] * (colour - image)
  label = np.where(coverage >= 0.5, layer_label[:, None, None].astype(np.uint8), label)
  return image, label


def _sample_layer_kinds(rng: np.random.Generator, n: int, *, max_objects: int,
                        max_distractors: int) -> np.ndarray:
  """Returns int ``[n, max_objects + max_distractors]`` kinds in random depth order."""
  slot = np.arange(max_objects + max_distractors)[None]
  num_objects = rng.integers(1, max_objects + 1, (n, 1))
  num_distractors = rng.integers(0, max_distractors + 1, (n, 1))
  object_kind = rng.integers(1, NUM_CLASSES, (n, slot.shape[1]))
  distractor_kind = rng.choice([_STROKE, _CROSS], (n, slot.shape[1]))
  is_object = slot < num_objects
  is_distractor = (slot >= max_objects) & (slot < max_objects + num_distractors)
  kinds = np.where(is_object, object_kind, np.where(is_distractor, distractor_kind, _EMPTY))
  depth_order = np.argsort(rng.random(kinds.shape), axis=1)
  return np.take_along_axis(kinds, depth_order, axis=1)


def _contrasting_colours(rng: np.random.Generator, background: np.ndarray,
                         num_layers: int, *, min_contrast: float) -> np.ndarray:
  """Uniform RGB colours ``[n, L, 3]``, the first of 8 draws far enough from background.

  Every class gets the same colour distribution; if no draw is far enough the
  farthest one is used.
  """
  candidates = rng.uniform(0, 1, (background.shape[0], num_layers, 8, 3))
  distance = np.sqrt(np.mean((candidates - background[:, None, None]) ** 2, axis=-1))
  far_enough = distance >= min_contrast
  pick = np.where(far_enough.any(-1), far_enough.argmax(-1), distance.argmax(-1))
  return np.take_along_axis(candidates, pick[..., None, None], axis=2)[:, :, 0]


def _sample_texture(rng: np.random.Generator, n: int, size: int) -> dict:
  """Texture parameters for one layer of ``n`` images."""
  return {
      "kind": rng.integers(0, 4, n),
      "direction": rng.uniform(0, 2 * np.pi, n),
      "period": rng.uniform(3.0, 0.25 * size, n),
      "phase": rng.uniform(0, 2 * np.pi, n),
      "grid": rng.uniform(0, 1, (n, _NOISE_GRID, _NOISE_GRID)),
  }


def _rotated_offsets(x: np.ndarray, y: np.ndarray, center: np.ndarray,
                     angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pixel offsets ``[m, H, W]`` from each centre, in each layer's rotated frame."""
  dx = x[None] - center[:, 0, None, None]
  dy = y[None] - center[:, 1, None, None]
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  return cos * dx + sin * dy, cos * dy - sin * dx


def _coverage(params: dict, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
  """Anti-aliased coverage in [0, 1], ``[m, H, W]``, of each layer's outline."""
  aspect = params["aspect"][:, None, None]
  radius = params["radius"][:, None, None]
  u, v = du / (radius * aspect), dv * aspect / radius
  # Local units times the smaller axis scale give a (conservative) pixel distance.
  to_pixels = radius * np.minimum(aspect, 1 / aspect)
  distance = np.empty_like(du)
  for kind, sdf in _SDFS.items():
    rows = np.nonzero(params["kind"] == kind)[0]
    if rows.size:
      thickness = params["stroke_half_width"][rows, None, None]
      distance[rows] = sdf(u[rows], v[rows], thickness) * to_pixels[rows]
  return np.clip(0.5 - distance, 0.0, 1.0)


def _disk_sdf(u, v, _):
  return np.hypot(u, v) - 1.0


def _ring_sdf(u, v, _):
  rho = np.hypot(u, v)
  return np.maximum(rho - 1.0, _RING_INNER - rho)


def _square_sdf(u, v, _):
  return np.maximum(np.abs(u), np.abs(v)) - _SQUARE_HALF


def _triangle_sdf(u, v, _):
  # Outward edge normals of an upward equilateral triangle; its inradius is R / 2.
  normals = np.deg2rad([-90.0, 30.0, 150.0])
  return np.max([u * np.cos(a) + v * np.sin(a) for a in normals], axis=0) - (
      _TRIANGLE_CIRCUMRADIUS / 2)


def _star_sdf(u, v, _):
  # Fold the plane into half a spike (angle 0 = tip, pi/5 = inner corner); the
  # distance is then to the one edge joining the tip to the inner corner.
  period = 2 * np.pi / 5
  folded = np.mod(np.arctan2(v, u), period)
  folded = np.minimum(folded, period - folded)
  rho = np.hypot(u, v)
  qx, qy = rho * np.cos(folded), rho * np.sin(folded)
  tip = np.array([_STAR_OUTER, 0.0])
  corner = _STAR_INNER * np.array([np.cos(period / 2), np.sin(period / 2)])
  edge = corner - tip
  normal = np.array([edge[1], -edge[0]]) / np.hypot(*edge)
  return normal[0] * (qx - tip[0]) + normal[1] * (qy - tip[1])


def _stroke_sdf(u, v, half_width):
  return np.maximum(np.abs(u) - 1.0, np.abs(v) - half_width)


def _cross_sdf(u, v, _):
  au, av = np.abs(u), np.abs(v)
  return np.minimum(np.maximum(au - 1.0, av - _CROSS_HALF_WIDTH),
                    np.maximum(au - _CROSS_HALF_WIDTH, av - 1.0))


_SDFS: dict[int, _Sdf] = {
    CLASS_NAMES.index("disk"): _disk_sdf,
    CLASS_NAMES.index("triangle"): _triangle_sdf,
    CLASS_NAMES.index("square"): _square_sdf,
    CLASS_NAMES.index("star"): _star_sdf,
    CLASS_NAMES.index("ring"): _ring_sdf,
    _STROKE: _stroke_sdf,
    _CROSS: _cross_sdf,
}


def _colour_field(base: np.ndarray, second: np.ndarray, texture: dict,
                  offset: tuple[np.ndarray, np.ndarray], *, scale: np.ndarray,
                  strength: float) -> np.ndarray:
  """Float32 ``[m, H, W, 3]`` colours: ``base`` moved towards ``second`` by a texture.

  Args:
    base: ``[m, 3]`` base colours.
    second: ``[m, 3]`` second colours.
    texture: per-layer texture parameters from ``_sample_texture`` (length m).
    offset: pixel offsets ``(du, dv)`` in the layer's frame, broadcastable to
      ``[m, H, W]``; gradients and stripes follow the layer's rotation.
    scale: ``[m]`` half-extent in pixels over which a gradient goes from 0 to 1.
    strength: the ``texture_strength`` knob.

  Returns:
    The colour of the layer at every pixel.
  """
  du, dv = offset
  size = du.shape[-1]
  m = base.shape[0]
  along = (du * np.cos(texture["direction"])[:, None, None]
           + dv * np.sin(texture["direction"])[:, None, None])
  amount = np.zeros((m, size, size), np.float32)
  for kind in (_GRADIENT, _STRIPES, _NOISE):
    rows = np.nonzero(texture["kind"] == kind)[0]
    if not rows.size:
      continue
    if kind == _GRADIENT:
      amount[rows] = np.clip(0.5 + along[rows] / (2 * scale[rows, None, None]), 0, 1)
    elif kind == _STRIPES:
      amount[rows] = 0.5 + 0.5 * np.sin(
          2 * np.pi * along[rows] / texture["period"][rows, None, None]
          + texture["phase"][rows, None, None])
    else:
      amount[rows] = _smooth_noise(texture["grid"][rows], size)
  weight = (strength * amount)[..., None]
  return (base[:, None, None] + weight * (second - base)[:, None, None]).astype(np.float32)


def _smooth_noise(grid: np.ndarray, size: int) -> np.ndarray:
  """Bilinearly upsamples ``[m, G, G]`` random values to ``[m, size, size]``."""
  position = (np.arange(size) + 0.5) / size * (grid.shape[-1] - 1)
  low = np.minimum(position.astype(int), grid.shape[-1] - 2)
  frac = (position - low).astype(np.float32)
  rows_low, rows_high = grid[:, low], grid[:, low + 1]
  top = rows_low[:, :, low] * (1 - frac) + rows_low[:, :, low + 1] * frac
  bottom = rows_high[:, :, low] * (1 - frac) + rows_high[:, :, low + 1] * frac
  return top * (1 - frac)[:, None] + bottom * frac[:, None]
