"""Runs colabs/augmentations.ipynb on the "tiny" shapes dataset in a fresh kernel."""

import base64
import io
import pathlib
import re

import nbformat
import numpy as np
import pytest
from PIL import Image

from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg.data import bundled

from test_colab import _assignments, _execute, _parameters_cell

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "colabs" / "augmentations.ipynb"
DEFAULT_PARAMETERS = {"NUM_IMAGES": 4, "SEED": 0, "DATASET_CONFIG": "", "DATA_DIR": ""}
NUM_IMAGES = 2
# Shapes images are 64x64, enlarged 2x to reach show_augment.MIN_TILE_SIZE = 96.
TILE = 128


def test_parameters_cell_holds_the_documented_defaults():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert _assignments(_parameters_cell(notebook).source) == DEFAULT_PARAMETERS


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """The notebook executed on 2 tiny-dataset images, and its TFDS data_dir."""
  data_dir = str(tmp_path_factory.mktemp("augmentations") / "tfds")
  parameters = {"NUM_IMAGES": NUM_IMAGES, "SEED": 0, "DATASET_CONFIG": "tiny",
                "DATA_DIR": data_dir}
  return _execute(NOTEBOOK, parameters), data_dir


def _outputs(notebook, output_type):
  return [output for cell in notebook.cells if cell.cell_type == "code"
          for output in cell.outputs if output.output_type == output_type]


def _shown_images(notebook):
  return [np.asarray(Image.open(io.BytesIO(base64.b64decode(output.data["image/png"])))
                     .convert("RGB"))
          for output in _outputs(notebook, "display_data") if "image/png" in output.data]


def _cell_origin(row, column):
  """compose_grid's layout: 32 px of titles, 4 px padding, cells of two tiles."""
  return 32 + 4 + row * (2 * TILE + 4), 4 + column * (TILE + 4)


def test_notebook_shows_the_grid_of_the_first_validation_images(executed):
  notebook, data_dir = executed
  grid = _shown_images(notebook)[0]
  # Rows of cells, then one legend line of the 6 classes; 13 columns (with FGSM).
  assert grid.shape == (32 + NUM_IMAGES * (2 * TILE + 4) + 4 + 20, 13 * (TILE + 4) + 4, 3)
  config = config_lib.base_config()
  config.dataset.builder_config = "tiny"
  config.dataset.data_dir = data_dir
  val = data_lib.load_source(config.dataset, config.dataset.val_split)
  assert tuple(val.class_names) == bundled.CLASS_NAMES
  for row in range(NUM_IMAGES):
    top, left = _cell_origin(row, 0)
    np.testing.assert_array_equal(grid[top:top + TILE:2, left:left + TILE:2],
                                  val[row]["image"])


def test_notebook_maps_a_warped_prediction_back_to_the_original_frame(executed):
  notebook, _ = executed
  text = "".join(output.text for output in _outputs(notebook, "stream")
                 if output.name == "stdout")
  match = re.search(r"(\d+)% of the pixels are visible after the warp; "
                    r"([\d.]+)% of them get their label back", text)
  assert match, text
  assert int(match.group(1)) > 50
  assert float(match.group(2)) > 95
  # Three columns of one image, and the 6-class legend on two lines of 3.
  assert _shown_images(notebook)[1].shape == (32 + 2 * TILE + 4 + 4 + 2 * 20,
                                              3 * (TILE + 4) + 4, 3)
