r"""A picture of the augmentation library: one row per image, one column per augmentation.

Every cell of the grid is two tiles: the augmented image on top and, below it, the same
image with its mask overlaid in the Pascal VOC colours (ignore, 255, shows as white), so
one sees both what the network is fed and which labels moved with it. The columns: the
original, then flip, random affine, random resized crop, elastic deformation, colour
jitter, the UniMatch strong colour view, Cutout, CutMix with the next image (UniMatch
box), an AutoAugment sample (ImageNet policy), a RandAugment sample (N = 2, M = 9), and,
when a model is given, an FGSM example (epsilon 8/255, CE on the mask) and its
perturbation amplified so that -epsilon..+epsilon spans black..white.

  python -m jaxsemiseg.tools.show_augment --config=configs/default.py \
      --output=augment_grid.png --num_images=4 --seed=0
  # FGSM against a trained run's newest checkpoint instead of a fresh model:
  python -m jaxsemiseg.tools.show_augment --config=configs/default.py \
      --output=augment_grid.png --workdir=/tmp/jaxsemiseg/default

Notebooks call :func:`augment_grid`, or :func:`augment_columns` and :func:`compose_grid`
to lay out views of their own.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

from absl import app, flags, logging
import jax
import jax.numpy as jnp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image

from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import inference, losses, parallel, train, visualize
from jaxsemiseg.augment import adversarial, geometric, mixing, photometric, policies
from jaxsemiseg.data import pipeline

# Layout in pixels: a title band, then one row of cells per image, then the legend.
PADDING = 4
TITLE_HEIGHT = 32
LEGEND_ROW_HEIGHT = 20
# Images smaller than this are enlarged by a whole factor (nearest neighbour) to fit titles.
MIN_TILE_SIZE = 96
# Weight of the class colour in the mask overlay.
OVERLAY_ALPHA = 0.5
# The epsilon of Madry et al.'s CIFAR PGD config (8 on the 0-255 scale).
FGSM_EPSILON = 8 / 255

_LEGEND_ENTRY_WIDTH = 110
_SWATCH_SIZE = 12
_FONT_SIZE = 7
_DPI = 100


class Column(NamedTuple):
  """One column of the grid.

  Attributes:
    title: the heading (may hold a line break).
    images: float ``[N, H, W, 3]`` in [0, 1], one view per row.
    masks: int ``[N, H, W]`` in ``[0, 255]`` overlaid on the lower tiles, or None to
      leave them blank.
  """

  title: str
  images: np.ndarray
  masks: np.ndarray | None


def _vmapped(view: Callable) -> Callable:
  """``view(key, image, mask)`` on one example -> the same on a batch, one key each."""

  @functools.wraps(view)
  def batch_view(key, images, masks):
    return jax.vmap(view)(jax.random.split(key, images.shape[0]), images, masks)

  return batch_view


@_vmapped
def _flip(key, image, mask):
  return geometric.random_flip_left_right(key, image, mask, probability=1.0)[:2]


@_vmapped
def _affine(key, image, mask):
  return geometric.random_affine(key, image, mask, degrees=30.0, translate=(0.1, 0.1),
                                 scale=(0.75, 1.25), shear=10.0)[:2]


@_vmapped
def _resized_crop(key, image, mask):
  # Scale from 0.25 (not torchvision's 0.08): a crop of 8% of a small image is a blur.
  return geometric.random_resized_crop(key, image, mask, size=image.shape[:2],
                                       scale=(0.25, 1.0))[:2]


@_vmapped
def _elastic(key, image, mask):
  return geometric.elastic_deformation(key, image, mask)[:2]


@_vmapped
def _colour_jitter(key, image, mask):
  return photometric.color_jitter(key, image, p=1.0), mask


@_vmapped
def _unimatch_strong(key, image, mask):
  return photometric.unimatch_strong_colour(key, image), mask


@_vmapped
def _cutout(key, image, mask):
  return mixing.cutout(key, image, mask, size=min(image.shape[:2]) // 2)[:2]


def _cutmix_with_next(key, images, masks):
  sampler = functools.partial(mixing.unimatch_cutmix_box, size=images.shape[1:3], p=1.0)
  return mixing.cutmix_batch(key, images, masks, sampler=sampler,
                             permutation=jnp.roll(jnp.arange(images.shape[0]), -1))[:2]


@_vmapped
def _autoaugment(key, image, mask):
  return policies.autoaugment(key, image, mask)


@_vmapped
def _randaugment(key, image, mask):
  return policies.randaugment(key, image, mask, num_ops=2, magnitude=9)


# (title, view(key, images, masks) -> (images, masks)) for every column after the original.
_VIEWS = (
    ("flip", _flip),
    ("random affine", _affine),
    ("random\nresized crop", _resized_crop),
    ("elastic", _elastic),
    ("colour jitter", _colour_jitter),
    ("UniMatch\nstrong colour", _unimatch_strong),
    ("Cutout", _cutout),
    ("CutMix\n(next image)", _cutmix_with_next),
    ("AutoAugment\n(ImageNet)", _autoaugment),
    ("RandAugment\nN=2, M=9", _randaugment),
)


@jax.jit
def _augmented_views(key, images, masks):
  keys = jax.random.split(key, len(_VIEWS))
  return [view(view_key, images, masks) for view_key, (_, view) in zip(keys, _VIEWS)]


def _fgsm(model: Any, variables: Any, images: np.ndarray, masks: np.ndarray, *,
          epsilon: float) -> np.ndarray:
  def loss_fn(variables, x, y):
    logits = model.apply(variables, x, train=False)["logits"]
    return losses.cross_entropy(logits, y)[0]

  attack = jax.jit(adversarial.fgsm(loss_fn, epsilon=epsilon))
  return np.asarray(attack(variables, jnp.asarray(images), jnp.asarray(masks)))


def _check_batch(images: np.ndarray, masks: np.ndarray) -> None:
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
    raise ValueError(f"images have shape {images.shape}; expected [N, H, W, 3] with N >= 1.")
  if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 1:
    raise ValueError(f"images have dtype {images.dtype} and range [{images.min()}, "
                     f"{images.max()}]; expected floats in [0, 1] (divide uint8 by 255).")
  if masks.shape != images.shape[:3] or not np.issubdtype(masks.dtype, np.integer):
    raise ValueError(f"masks have shape {masks.shape} and dtype {masks.dtype}; expected "
                     f"integer labels of the images' [N, H, W] = {list(images.shape[:3])}.")
  if masks.min() < 0 or masks.max() > 255:
    raise ValueError(f"masks hold values in [{masks.min()}, {masks.max()}]; expected class "
                     "ids in [0, 255] (255 = ignore).")


def augment_columns(key: jax.Array, images: np.ndarray, masks: np.ndarray, *,
                    model: Any = None, variables: Any = None,
                    epsilon: float = FGSM_EPSILON) -> list[Column]:
  """Every augmentation of the grid applied to a batch, one :class:`Column` each.

  The views use the library's reference settings: flip with probability 1; torchvision
  ``RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.75, 1.25), shear=10)``;
  ``RandomResizedCrop`` to the input size with area in (0.25, 1); elastic deformation
  with Simard's alpha 34, sigma 4; ColorJitter(0.5, 0.5, 0.5, 0.25) always applied; the
  UniMatch / ST++ strong colour view; Cutout of half the side (fill 0.5, mask set to
  ignore); CutMix of image i with image i + 1 (cyclically) in one UniMatch box, always
  drawn; AutoAugment with the ImageNet policy; RandAugment N = 2, M = 9. With a model,
  FGSM (Goodfellow et al.) on the pixel cross-entropy against the masks, with the model
  in evaluation mode.

  Args:
    key: ``jax.random`` key; the same key gives the same columns.
    images: float ``[N, H, W, 3]`` in [0, 1].
    masks: int ``[N, H, W]`` class ids, 255 = ignore.
    model: optional Flax module with the library's contract (``apply(variables, x,
      train=False)["logits"]``); adds the FGSM and perturbation columns.
    variables: the model's variables (``{"params": ..., "batch_stats": ...}``).
    epsilon: FGSM's L-infinity step (default 8/255).

  Returns:
    The columns: original, the ten views, then (with a model) FGSM and its perturbation
    shown as ``0.5 + (x_adv - x) / (2 epsilon)``, whose lower tiles are blank.

  Raises:
    ValueError: on malformed images or masks, only one of ``model`` and ``variables``,
      or a non-positive ``epsilon``.
  """
  images, masks = np.asarray(images), np.asarray(masks)
  _check_batch(images, masks)
  if (model is None) != (variables is None):
    raise ValueError("model and variables go together: give both (for the FGSM columns) "
                     "or neither.")
  if not epsilon > 0:
    raise ValueError(f"epsilon={epsilon}; expected a positive FGSM step, e.g. 8 / 255.")
  images, masks = images.astype(np.float32), masks.astype(np.int32)
  views = jax.device_get(_augmented_views(key, images, masks))
  columns = [Column("original", images, masks)]
  columns += [Column(title, view_images, view_masks)
              for (title, _), (view_images, view_masks) in zip(_VIEWS, views)]
  if model is not None:
    adversarial_images = _fgsm(model, variables, images, masks, epsilon=epsilon)
    amplification = 0.5 / epsilon
    perturbation = np.clip(0.5 + amplification * (adversarial_images - images), 0.0, 1.0)
    columns += [Column(f"FGSM\nε = {255 * epsilon:.3g}/255", adversarial_images, masks),
                Column(f"perturbation\n×{amplification:.3g}", perturbation, None)]
  return columns


def _to_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  colours = visualize.color_palette()[mask.astype(np.int64)]
  return np.round((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours).astype(np.uint8)


def _enlarge(tile: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def _check_columns(columns: Sequence[Column], upscale: int | None) -> None:
  if not columns:
    raise ValueError("columns is empty; expected at least one Column.")
  shape = np.shape(columns[0].images)
  for column in columns:
    if np.shape(column.images) != shape or len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f"column {column.title!r} has images of shape "
                       f"{np.shape(column.images)}; expected [N, H, W, 3] like the first "
                       f"column's {shape}.")
    if column.masks is not None and (np.shape(column.masks) != shape[:3] or
                                     np.min(column.masks) < 0 or np.max(column.masks) > 255):
      raise ValueError(f"column {column.title!r} has masks of shape "
                       f"{np.shape(column.masks)}; expected [N, H, W] = {list(shape[:3])} "
                       "with values in [0, 255].")
  if upscale is not None and (not isinstance(upscale, int) or upscale < 1):
    raise ValueError(f"upscale={upscale!r}; expected a positive int or None (automatic).")


def _draw_text(canvas: np.ndarray, texts: Sequence[tuple[float, float, str, str]]) -> np.ndarray:
  """Renders ``(x, y, text, horizontal alignment)`` (pixels, y down) onto ``canvas``.

  The text is drawn on a transparent figure of the canvas's size and alpha-composited, so
  pixels without text (the tiles) keep their exact values.
  """
  height, width = canvas.shape[:2]
  figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
  figure.patch.set_alpha(0.0)
  agg = FigureCanvasAgg(figure)
  for x, y, text, alignment in texts:
    figure.text(x / width, 1 - y / height, text, ha=alignment, va="center",
                fontsize=_FONT_SIZE, linespacing=1.1)
  agg.draw()
  layer = np.asarray(agg.buffer_rgba(), np.float32)
  alpha = layer[..., 3:] / 255
  return np.round((1 - alpha) * canvas + alpha * layer[..., :3]).astype(np.uint8)


def compose_grid(columns: Sequence[Column], *, class_names: Sequence[str] | None = None,
                 upscale: int | None = None) -> np.ndarray:
  """Lays columns out as an RGB picture with titles and a class legend.

  Layout (pixels): a white canvas; a title band of ``TITLE_HEIGHT``; cell ``(r, c)`` has
  its top-left corner at ``(TITLE_HEIGHT + PADDING + r * (2 t_h + PADDING), PADDING +
  c * (t_w + PADDING))`` and holds the image tile (``t_h x t_w``, the image enlarged by
  ``upscale``) above the overlay tile (the image blended with the mask colours,
  ``OVERLAY_ALPHA`` colour); then, with ``class_names``, legend lines of
  ``LEGEND_ROW_HEIGHT``. Image tiles are exact: ``round(255 * image)``, enlarged.

  Args:
    columns: the columns, all with images of one shape ``[N, H, W, 3]``.
    class_names: optional legend entries, class id = position.
    upscale: whole enlargement factor; default the smallest one making a tile at least
      ``MIN_TILE_SIZE`` pixels on its longer side (1 for large images).

  Returns:
    uint8 ``[height, width, 3]`` RGB picture.

  Raises:
    ValueError: on columns of different shapes, masks that do not match their images
      or hold values outside [0, 255], or a bad ``upscale``.
  """
  _check_columns(columns, upscale)
  num_rows, height, width = np.shape(columns[0].images)[:3]
  upscale = upscale or max(1, math.ceil(MIN_TILE_SIZE / max(height, width)))
  tile_height, tile_width = height * upscale, width * upscale
  grid_width = len(columns) * (tile_width + PADDING) + PADDING
  names = list(class_names or [])
  per_line = max(1, (grid_width - PADDING) // _LEGEND_ENTRY_WIDTH)
  legend_top = TITLE_HEIGHT + num_rows * (2 * tile_height + PADDING) + PADDING
  legend_lines = math.ceil(len(names) / per_line)
  canvas = np.full((legend_top + legend_lines * LEGEND_ROW_HEIGHT, grid_width, 3), 255,
                   np.uint8)
  texts = []
  for c, column in enumerate(columns):
    left = PADDING + c * (tile_width + PADDING)
    texts.append((left + tile_width / 2, TITLE_HEIGHT / 2, column.title, "center"))
    images = _to_uint8(np.asarray(column.images))
    for r in range(num_rows):
      top = TITLE_HEIGHT + PADDING + r * (2 * tile_height + PADDING)
      canvas[top:top + tile_height, left:left + tile_width] = _enlarge(images[r], upscale)
      if column.masks is not None:
        overlay = _overlay(images[r], np.asarray(column.masks[r]))
        canvas[top + tile_height:top + 2 * tile_height,
               left:left + tile_width] = _enlarge(overlay, upscale)
  palette = visualize.color_palette()
  for index, name in enumerate(names):
    line, slot = divmod(index, per_line)
    left = PADDING + slot * _LEGEND_ENTRY_WIDTH
    middle = legend_top + line * LEGEND_ROW_HEIGHT + LEGEND_ROW_HEIGHT // 2
    top = middle - _SWATCH_SIZE // 2
    canvas[top:top + _SWATCH_SIZE, left:left + _SWATCH_SIZE] = palette[index]
    texts.append((left + _SWATCH_SIZE + 4, middle, f"{index} {name}", "left"))
  return _draw_text(canvas, texts)


def augment_grid(images: np.ndarray, masks: np.ndarray, *, key: jax.Array,
                 class_names: Sequence[str] | None = None, model: Any = None,
                 variables: Any = None, epsilon: float = FGSM_EPSILON,
                 upscale: int | None = None) -> np.ndarray:
  """The augmentation grid of a batch: :func:`augment_columns`, laid out by :func:`compose_grid`.

  Args:
    images: float ``[N, H, W, 3]`` in [0, 1], one row each.
    masks: int ``[N, H, W]`` class ids, 255 = ignore.
    key: ``jax.random`` key; the same key gives the same grid.
    class_names: optional legend entries.
    model: optional Flax module; adds the FGSM columns (see :func:`augment_columns`).
    variables: the model's variables.
    epsilon: FGSM's step (default 8/255).
    upscale: whole enlargement factor of the tiles (default: automatic).

  Returns:
    uint8 ``[height, width, 3]`` RGB picture, ``N`` rows of cells.

  Raises:
    ValueError: as :func:`augment_columns` and :func:`compose_grid`.
  """
  columns = augment_columns(key, images, masks, model=model, variables=variables,
                            epsilon=epsilon)
  return compose_grid(columns, class_names=class_names, upscale=upscale)


def load_examples(config: ml_collections.ConfigDict, *, num_images: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """The first validation examples of ``config.dataset``, cut to ``crop_size`` squares.

  Each image keeps its scale and is cropped at a position drawn from ``seed`` (padded
  with 0, its mask with 255, when smaller), as the weak view of
  :func:`jaxsemiseg.data.pipeline.weak_augment` without rescaling or flipping.

  Args:
    config: the run config (reads ``config.dataset``).
    num_images: how many examples, from the first.
    seed: seed of the crop positions.

  Returns:
    ``(images, masks, class_names)``: float32 ``[N, S, S, 3]`` in [0, 1], int32
    ``[N, S, S]`` and the dataset's class names.

  Raises:
    ValueError: if ``num_images`` is not in ``[1, size of the validation split]`` or an
      example has no mask.
  """
  val = data_lib.load_source(config.dataset, config.dataset.val_split)
  if not 1 <= num_images <= len(val):
    raise ValueError(f"num_images={num_images}; expected 1 to {len(val)}, the size of "
                     f"{val.name!r}.")
  crop_size = config.dataset.crop_size
  images, masks = [], []
  for index in range(num_images):
    example = val[index]
    if example["label"] is None:
      raise ValueError(f"{val.name}: example {example['id']!r} has no mask; the grid needs "
                       "a labeled split (config.dataset.val_split).")
    image, mask = pipeline.weak_augment(
        np.random.default_rng([seed, index]), example["image"], example["label"],
        crop_size=crop_size, scale_range=(1.0, 1.0), flip=False)
    images.append(image)
    masks.append(mask)
  return (np.stack(images).astype(np.float32) / 255, np.stack(masks).astype(np.int32),
          tuple(val.class_names))


def load_model(config: ml_collections.ConfigDict, *, num_classes: int,
               workdir: str | None = None) -> tuple[Any, Any]:
  """The config's model with fresh variables, or those of ``workdir``'s newest checkpoint.

  Args:
    config: the run config (reads ``config.model``, ``config.seed``, ...).
    num_classes: classes of a fresh model (a checkpoint brings its own).
    workdir: a training run's workdir, or None for a fresh initialisation (with the
      pretrained backbone of ``config.model.pretrained_path`` when set).

  Returns:
    ``(model, variables)`` with the variables on the host.

  Raises:
    ValueError: on an invalid config; FileNotFoundError: if ``workdir`` holds no run.
  """
  config_lib.validate_config(config)
  if workdir:
    run, _ = inference.restore_run(config, workdir)
  else:
    run = train.build_run(config, num_classes=num_classes, mesh=parallel.make_mesh(1))
  return run.model, jax.device_get(run.state.variables)


def _check_output_dir(path: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"output={path!r}: directory {directory!r} does not exist; "
                            "create it first or write somewhere else.")


def save_png(path: str, grid: np.ndarray) -> None:
  """Writes an RGB uint8 picture as a PNG; FileNotFoundError if its directory is missing."""
  _check_output_dir(path)
  Image.fromarray(np.asarray(grid, np.uint8)).save(path, format="PNG")


def _define_flags() -> dict[str, Any]:
  # Defined only when run as a program: importing augment_grid (notebooks, tests) must not
  # claim absl's global --config, which jaxsemiseg.main also defines.
  defined = {
      "config": config_flags.DEFINE_config_file(
          "config", None, "Path to a config file (configs/*.py).", lock_config=True),
      "output": flags.DEFINE_string("output", None,
                                    "PNG file to write; its directory must exist."),
      "num_images": flags.DEFINE_integer("num_images", 4, "Validation images (grid rows).",
                                         lower_bound=1),
      "seed": flags.DEFINE_integer("seed", 0, "Seed of the crops and augmentations."),
      "workdir": flags.DEFINE_string(
          "workdir", None, "A training run's workdir: attack its newest checkpoint instead "
          "of a freshly initialised model."),
  }
  flags.mark_flags_as_required(["config", "output"])
  return defined


def _main(defined: dict[str, Any], argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config, output = defined["config"].value, defined["output"].value
  seed = defined["seed"].value
  _check_output_dir(output)
  images, masks, class_names = load_examples(config, num_images=defined["num_images"].value,
                                             seed=seed)
  model, variables = load_model(config, num_classes=len(class_names),
                                workdir=defined["workdir"].value)
  grid = augment_grid(images, masks, key=jax.random.key(seed), class_names=class_names,
                      model=model, variables=variables)
  save_png(output, grid)
  print(f"Wrote the augmentation grid ({len(images)} images) to {os.path.abspath(output)}")


if __name__ == "__main__":
  app.run(functools.partial(_main, _define_flags()))
