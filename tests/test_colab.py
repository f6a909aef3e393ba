"""Runs colabs/quickstart.ipynb end to end at a tiny budget in a fresh kernel."""

import ast
import base64
import json
import os
import pathlib
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

from jaxsemiseg.data import bundled, splits

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "colabs" / "quickstart.ipynb"
DEFAULT_PARAMETERS = {
    "NUM_STEPS": 4000,
    "LABELED_FRACTION": 0.125,
    "WORKDIR": "/tmp/jaxsemiseg/quickstart",
    "DATASET_CONFIG": "",
    "DATA_DIR": "",
}
# The "tiny" shapes config: 32 training and 16 validation images of 64x64 pixels.
TINY_VALIDATION_PIXELS = 16 * 64 * 64


def _parameters_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
  assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  return cells[0]


def _assignments(source: str) -> dict:
  """``{name: value}`` of a cell made only of ``NAME = <literal>`` lines."""
  values = {}
  for statement in ast.parse(source).body:
    assert isinstance(statement, ast.Assign), ast.unparse(statement)
    values[statement.targets[0].id] = ast.literal_eval(statement.value)
  return values


def _kernel_env() -> dict:
  """The test process's environment, on one CPU device, sharing its compilation cache."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # conftest.py fakes 4 devices for the sharding tests; the notebook runs as a user's
  # single-CPU session would.
  env["XLA_FLAGS"] = " ".join(
      flag for flag in env.get("XLA_FLAGS", "").split()
      if not flag.startswith("--xla_force_host_platform_device_count"))
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), "jaxsemiseg-test-compilation-cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _execute(path: pathlib.Path, parameters: dict) -> nbformat.NotebookNode:
  """The notebook at ``path`` run in a fresh kernel with ``parameters`` as its parameters cell.

  Raises:
    nbclient.exceptions.CellExecutionError: with the cell and its traceback, if any cell
      fails.
  """
  notebook = nbformat.read(path, as_version=4)
  _parameters_cell(notebook).source = "\n".join(
      f"{name} = {value!r}" for name, value in parameters.items())
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(path.parent)}})
  client.execute(env=_kernel_env())
  return notebook


def test_parameters_cell_holds_the_documented_defaults():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert _assignments(_parameters_cell(notebook).source) == DEFAULT_PARAMETERS


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """The notebook executed with tiny parameters, and its workdir and TFDS data_dir."""
  root = tmp_path_factory.mktemp("quickstart")
  parameters = {
      "NUM_STEPS": 2,
      "LABELED_FRACTION": 0.25,
      "WORKDIR": str(root / "run"),
      "DATASET_CONFIG": "tiny",
      "DATA_DIR": str(root / "tfds"),
  }
  notebook = _execute(NOTEBOOK, parameters)
  return notebook, pathlib.Path(parameters["WORKDIR"]), pathlib.Path(parameters["DATA_DIR"])


def _outputs(notebook: nbformat.NotebookNode) -> list:
  return [output for cell in notebook.cells if cell.cell_type == "code"
          for output in cell.outputs]


def test_notebook_prints_the_final_miou_and_every_class_iou(executed):
  notebook, workdir, _ = executed
  text = "".join(output.get("text", "") for output in _outputs(notebook)
                 if output.output_type == "stream" and output.name == "stdout")
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert f"mIoU after 2 steps: {100 * final['miou']:.2f}" in text
  for name, iou in zip(bundled.CLASS_NAMES, final["iou"]):
    assert f"{name:<12}{100 * iou:7.2f}" in text


def test_notebook_trains_on_the_tiny_dataset_in_the_given_data_dir(executed):
  _, workdir, data_dir = executed
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert sum(map(sum, final["confusion"])) == TINY_VALIDATION_PIXELS
  assert (data_dir / "jaxsemiseg_shapes" / "tiny").is_dir()
  # A quarter of the 32 training images is labeled.
  assert len(splits.read_split_file(workdir / "labeled_ids.txt")) == 8
  assert (workdir / "checkpoints").is_dir()


def test_notebook_displays_the_prediction_grid_it_saved(executed):
  notebook, workdir, _ = executed
  grid = (workdir / "predictions.png").read_bytes()
  assert grid.startswith(b"\x89PNG")
  shown = [base64.b64decode(output.data["image/png"]) for output in _outputs(notebook)
           if output.output_type == "display_data" and "image/png" in output.data]
  assert shown == [grid]
