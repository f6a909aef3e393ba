import importlib
import os
import sys

import ml_collections
import pytest

_BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")


@pytest.fixture(scope="module")
def accuracy():
  # Imported by name, as bench/accuracy_pool.py and bench/_records.py do: a second copy of
  # the module would define its absl flags twice.
  sys.path.insert(0, _BENCH)
  return importlib.import_module("accuracy")


def _row(fraction, seed, miou, method="supervised"):
  return {"method": method, "dataset": "shapes", "dataset_version": "1.1.0",
          "labeled_fraction": str(fraction),
          "seed": str(seed), "steps": "100", "miou": str(miou), "pixel_accuracy": "0.9",
          "wall_seconds": "1", "jax": "x", "python": "3", "machine": "test machine",
          "command": "python bench/accuracy.py --config=configs/default.py"}


def test_summary_is_mean_and_population_std_in_percent(accuracy):
  rows = [_row(0.0625, 0, 0.40), _row(0.0625, 1, 0.50), _row(1.0, 0, 0.80)]
  summary = accuracy.summarise(rows)
  mean, std, n = summary[("supervised", "shapes 1.1.0", 100, 0.0625)]
  assert (round(mean, 6), round(std, 6), n) == (45.0, 5.0, 2)
  assert summary[("supervised", "shapes 1.1.0", 100, 1.0)] == (80.0, 0.0, 1)


def test_results_round_trip_and_report(accuracy, tmp_path):
  csv_path = tmp_path / "results.csv"
  for row in (_row(0.0625, 0, 0.4), _row(1.0, 0, 0.8)):
    accuracy.append_result(str(csv_path), row)
  rows = accuracy.read_results(str(csv_path))
  assert [accuracy.row_key(r) for r in rows] == [("supervised", "shapes 1.1.0", 0.0625, 0, 100),
                                               ("supervised", "shapes 1.1.0", 1.0, 0, 100)]
  markdown = tmp_path / "RESULTS.md"
  markdown.write_text("# Results\n\nintro kept\n")
  for _ in range(2):  # rewriting replaces the section instead of appending a second one
    accuracy.write_report(rows, markdown_path=str(markdown), plot_path=str(tmp_path / "p.png"))
  text = markdown.read_text()
  assert text.startswith("# Results\n\nintro kept\n")
  assert text.count("<!-- accuracy:begin -->") == 1
  assert "| supervised | shapes 1.1.0 | 100 | 40.0 ± 0.0 (n=1) | 80.0 ± 0.0 (n=1) | — |" in text
  assert "| 1/16 | full | gap recovered at 1/16 |" in text
  assert os.path.getsize(tmp_path / "p.png") > 1000


def test_dataset_version_is_the_bundled_builders(accuracy):
  from jaxsemiseg.data import shapes_builder  # pylint: disable=g-import-not-at-top
  shapes = ml_collections.ConfigDict({"name": "shapes"})
  voc = ml_collections.ConfigDict({"name": "voc"})
  assert accuracy.dataset_version(shapes) == str(shapes_builder.JaxsemisegShapes.VERSION)
  assert accuracy.dataset_version(voc) == ""


def test_a_label_gives_a_variant_rows_of_its_own(accuracy):
  config = accuracy.load_config(os.path.join(_BENCH, "..", "configs", "fixmatch.py"))
  key = accuracy.run_key(config, 0.0625, 1)
  assert key == ("fixmatch", "shapes 1.1.0", 0.0625, 1, config.num_steps)
  assert accuracy.run_key(config, 0.0625, 1, label="fixmatch+cutmix") == (
      "fixmatch+cutmix",) + key[1:]
  assert accuracy.row_key(_row(0.0625, 1, 0.3, method="fixmatch+cutmix")) == (
      "fixmatch+cutmix", "shapes 1.1.0", 0.0625, 1, 100)


def test_gap_recovered_is_the_share_of_the_labeled_only_gap(accuracy):
  rows = [_row(0.0625, 0, 0.30), _row(0.0625, 1, 0.34), _row(1.0, 0, 0.62),
          _row(1.0, 1, 0.66), _row(0.0625, 2, 0.50),
          _row(0.0625, 0, 0.41, method="fixmatch"), _row(0.0625, 1, 0.43, method="fixmatch")]
  # Seeds 0 and 1: (42 - 32) / (64 - 32); supervised seed 2 has no fixmatch twin.
  assert accuracy.gap_recovered(rows, "fixmatch", "shapes 1.1.0", 100, 0.0625) == (
      pytest.approx(100 * 10 / 32), 2)
  # Seed 0 only: the method is compared with the labeled-only run of its own split.
  assert accuracy.gap_recovered(rows[:1] + rows[2:3] + rows[5:6], "fixmatch", "shapes 1.1.0",
                                100, 0.0625) == (pytest.approx(100 * 11 / 32), 1)
  assert accuracy.gap_recovered(rows, "supervised", "shapes 1.1.0", 100, 0.0625) is None
  assert accuracy.gap_recovered(rows, "fixmatch", "shapes 1.1.0", 200, 0.0625) is None
