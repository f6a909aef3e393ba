"""Tests for jaxsemiseg.tools.show_augment: the grid's layout and content, and the CLI."""

import os
import pathlib
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from jaxsemiseg.tools import show_augment

import tiny_data

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_IMAGES, SIZE, NUM_CLASSES = 2, 16, 3
# original, 10 augmentations, FGSM, perturbation.
NUM_COLUMNS = 13
EPSILON = 8 / 255


class PixelLinear(nn.Module):
  """Logits = x W + b at every pixel: FGSM has a closed form on it."""

  num_classes: int

  @nn.compact
  def __call__(self, images, *, train):
    del train
    return {"logits": nn.Dense(self.num_classes)(images), "features": images}


def _batch():
  rng = np.random.default_rng(0)
  images = rng.uniform(0.05, 0.95, (NUM_IMAGES, SIZE, SIZE, 3)).astype(np.float32)
  masks = rng.integers(0, NUM_CLASSES, (NUM_IMAGES, SIZE, SIZE)).astype(np.int32)
  masks[:, :3, :5] = 255
  return images, masks


def _cell_origin(row, column, tile):
  """Hand-written from compose_grid's documented layout."""
  padding = show_augment.PADDING
  return (show_augment.TITLE_HEIGHT + padding + row * (2 * tile + padding),
          padding + column * (tile + padding))


@pytest.fixture(scope="module")
def model_and_variables():
  model = PixelLinear(NUM_CLASSES)
  variables = model.init(jax.random.key(1), np.zeros((1, SIZE, SIZE, 3), np.float32),
                         train=False)
  return model, jax.device_get(variables)


@pytest.fixture(scope="module")
def columns(model_and_variables):
  images, masks = _batch()
  model, variables = model_and_variables
  return show_augment.augment_columns(jax.random.key(0), images, masks, model=model,
                                      variables=variables, epsilon=EPSILON)


def test_grid_has_one_row_per_image_and_a_cell_per_column_with_exact_original_tiles(
    columns):
  images, masks = _batch()
  grid = show_augment.compose_grid(columns, class_names=["a", "b", "c"], upscale=3)
  tile = 3 * SIZE
  assert grid.dtype == np.uint8
  # Title band, two rows of cells (image tile over overlay tile), one legend line.
  assert grid.shape == (32 + 2 * (2 * tile + 4) + 4 + 20, 13 * (tile + 4) + 4, 3)
  expected_tiles = np.repeat(np.repeat(np.round(images * 255), 3, axis=1), 3, axis=2)
  for row in range(NUM_IMAGES):
    top, left = _cell_origin(row, 0, tile)
    np.testing.assert_array_equal(grid[top:top + tile, left:left + tile], expected_tiles[row])
    # Overlay: half the image, half the class colour (class 1 = VOC dark red (128, 0, 0)).
    y, x = np.argwhere(masks[row] == 1)[0]
    overlay = grid[top + tile + 3 * y, left + 3 * x].astype(float)
    np.testing.assert_allclose(overlay, 0.5 * np.round(images[row, y, x] * 255) + [64, 0, 0],
                               atol=0.51)
    # The perturbation column has no mask: its lower tile stays white.
    top, left = _cell_origin(row, NUM_COLUMNS - 1, tile)
    assert (grid[top + tile:top + 2 * tile, left:left + tile] == 255).all()
  # Padding between tiles is white.
  top, left = _cell_origin(0, 1, tile)
  assert (grid[top:top + tile, left - 4:left] == 255).all()


def test_default_upscale_makes_tiles_at_least_min_tile_size():
  images, masks = _batch()
  grid = show_augment.compose_grid([show_augment.Column("original", images, masks)])
  factor = -(-show_augment.MIN_TILE_SIZE // SIZE)
  assert grid.shape == (32 + 2 * (2 * factor * SIZE + 4) + 4, factor * SIZE + 8, 3)


def test_columns_are_the_named_views_and_masks_only_hold_input_labels_or_ignore(columns):
  images, masks = _batch()
  by_title = {column.title.replace("\n", " "): column for column in columns}
  assert len(columns) == NUM_COLUMNS
  assert list(by_title)[:2] == ["original", "flip"]
  np.testing.assert_array_equal(by_title["flip"].images, images[:, :, ::-1])
  np.testing.assert_array_equal(by_title["flip"].masks, masks[:, :, ::-1])
  # Photometric views never touch the mask.
  for title in ("colour jitter", "UniMatch strong colour"):
    np.testing.assert_array_equal(by_title[title].masks, masks)
    assert not np.allclose(by_title[title].images, images)
  # CutMix with the next image: every pixel comes from image i or image i + 1, with its label.
  cutmix = by_title["CutMix (next image)"]
  from_next = (cutmix.masks != masks) | (cutmix.images != images).any(-1)
  assert from_next.any()
  nxt = np.roll(np.arange(NUM_IMAGES), -1)
  np.testing.assert_array_equal(cutmix.images, np.where(from_next[..., None], images[nxt],
                                                        images))
  np.testing.assert_array_equal(cutmix.masks, np.where(from_next, masks[nxt], masks))
  # Cutout of half the side: the square is ignored and filled with 0.5.
  cutout = by_title["Cutout"]
  ignored = (cutout.masks == 255) & (masks != 255)
  assert ignored.any()
  np.testing.assert_allclose(cutout.images[ignored], 0.5)
  allowed = set(np.unique(masks)) | {255}
  for column in columns:
    if column.masks is not None:
      assert set(np.unique(column.masks)) <= allowed, column.title
      assert column.images.shape == images.shape, column.title
      assert 0.0 <= column.images.min() and column.images.max() <= 1.0, column.title


def test_fgsm_column_is_the_closed_form_on_a_linear_softmax_model(columns,
                                                                  model_and_variables):
  images, masks = _batch()
  _, variables = model_and_variables
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  bias = np.asarray(variables["params"]["Dense_0"]["bias"])
  logits = images @ kernel + bias
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  valid = masks != 255
  one_hot = np.eye(NUM_CLASSES)[np.where(valid, masks, 0)]
  # d CE / d x = W (p - y) / #valid at valid pixels, 0 at ignored ones.
  gradient = ((probabilities - one_hot) @ kernel.T) * valid[..., None]
  expected = np.clip(images + EPSILON * np.sign(gradient), 0.0, 1.0)
  fgsm, perturbation = columns[-2], columns[-1]
  np.testing.assert_allclose(fgsm.images, expected, atol=1e-6)
  np.testing.assert_array_equal(fgsm.masks, masks)
  np.testing.assert_allclose(perturbation.images,
                             np.clip(0.5 + (expected - images) / (2 * EPSILON), 0, 1),
                             atol=1e-4)
  assert perturbation.masks is None


def test_same_key_same_columns_other_key_other_columns(columns, model_and_variables):
  images, masks = _batch()
  model, variables = model_and_variables
  again = show_augment.augment_columns(jax.random.key(0), images, masks, model=model,
                                       variables=variables, epsilon=EPSILON)
  other = show_augment.augment_columns(jax.random.key(5), images, masks)
  for first, second in zip(columns, again):
    np.testing.assert_array_equal(first.images, second.images)
  assert len(other) == NUM_COLUMNS - 2
  assert not np.array_equal(columns[2].images, other[2].images)


def test_bad_inputs_raise_clear_errors(model_and_variables):
  images, masks = _batch()
  model, _ = model_and_variables
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="model and variables"):
    show_augment.augment_columns(key, images, masks, model=model)
  with pytest.raises(ValueError, match=r"expected floats in \[0, 1\]"):
    show_augment.augment_columns(key, images * 255, masks)
  with pytest.raises(ValueError, match=r"masks have shape \(2, 16\)"):
    show_augment.augment_columns(key, images, masks[:, 0])
  with pytest.raises(ValueError, match="epsilon=0"):
    show_augment.augment_columns(key, images, masks, epsilon=0)
  column = show_augment.Column("original", images, masks)
  with pytest.raises(ValueError, match="column 'small'"):
    show_augment.compose_grid([column, show_augment.Column("small", images[:, :8], None)])
  with pytest.raises(ValueError, match="upscale=0"):
    show_augment.compose_grid([column], upscale=0)


def test_save_png_names_the_missing_directory(tmp_path):
  missing = tmp_path / "missing" / "grid.png"
  with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'}.*does not exist"):
    show_augment.save_png(str(missing), np.zeros((4, 4, 3), np.uint8))


def _run_cli(*arguments):
  env = dict(os.environ)
  # Share the test process's compilation cache (conftest.py), so the CLI reuses its compiles.
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(),
                                                  "jaxsemiseg-test-compilation-cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return subprocess.run(
      [sys.executable, "-m", "jaxsemiseg.tools.show_augment",
       f"--config={REPO / 'configs' / 'default.py'}", *arguments],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_cli_writes_a_png_grid_of_the_validation_images(tmp_path):
  root = tiny_data.write_dataset(str(tmp_path / "data"))
  output = tmp_path / "grid.png"
  result = _run_cli(
      f"--output={output}", f"--num_images={NUM_IMAGES}", "--config.dataset.name=folder",
      f"--config.dataset.root={root}", f"--config.dataset.num_classes={NUM_CLASSES}",
      "--config.dataset.val_split=val", f"--config.dataset.crop_size={SIZE}",
      "--config.model.unet.width=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert str(output) in result.stdout
  with Image.open(output) as png:
    assert png.format == "PNG"
    grid = np.asarray(png.convert("RGB"))
  tile = 6 * SIZE  # 16 px images are enlarged 6x to reach MIN_TILE_SIZE = 96.
  assert grid.shape == (32 + NUM_IMAGES * (2 * tile + 4) + 4 + 20, NUM_COLUMNS * (tile + 4) + 4, 3)
  for row in range(NUM_IMAGES):
    with Image.open(pathlib.Path(root) / "val" / "images" / f"val{row:03d}.png") as source:
      image = np.asarray(source.convert("RGB"))
    top, left = _cell_origin(row, 0, tile)
    np.testing.assert_array_equal(grid[top:top + tile:6, left:left + tile:6], image)


def test_cli_rejects_a_missing_output_directory(tmp_path):
  result = _run_cli(f"--output={tmp_path / 'missing' / 'grid.png'}")
  assert result.returncode != 0
  assert f"directory {str(tmp_path / 'missing')!r} does not exist" in result.stderr
