import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "accuracy.py")


@pytest.fixture(scope="module")
def accuracy():
  spec = importlib.util.spec_from_file_location("bench_accuracy", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _row(fraction, seed, miou, method="supervised"):
  return {"method": method, "dataset": "shapes", "labeled_fraction": str(fraction),
          "seed": str(seed), "steps": "100", "miou": str(miou), "pixel_accuracy": "0.9",
          "wall_seconds": "1", "jax": "x", "python": "3", "machine": "test machine",
          "command": "python bench/accuracy.py --config=configs/default.py"}


def test_summary_is_mean_and_population_std_in_percent(accuracy):
  rows = [_row(0.0625, 0, 0.40), _row(0.0625, 1, 0.50), _row(1.0, 0, 0.80)]
  summary = accuracy.summarise(rows)
  mean, std, n = summary[("supervised", "shapes", 100, 0.0625)]
  assert (round(mean, 6), round(std, 6), n) == (45.0, 5.0, 2)
  assert summary[("supervised", "shapes", 100, 1.0)] == (80.0, 0.0, 1)


def test_results_round_trip_and_report(accuracy, tmp_path):
  csv_path = tmp_path / "results.csv"
  for row in (_row(0.0625, 0, 0.4), _row(1.0, 0, 0.8)):
    accuracy.append_result(str(csv_path), row)
  rows = accuracy.read_results(str(csv_path))
  assert [accuracy._key(r) for r in rows] == [("supervised", "shapes", 0.0625, 0, 100),
                                               ("supervised", "shapes", 1.0, 0, 100)]
  markdown = tmp_path / "RESULTS.md"
  markdown.write_text("# Results\n\nintro kept\n")
  for _ in range(2):  # rewriting replaces the section instead of appending a second one
    accuracy.write_report(rows, markdown_path=str(markdown), plot_path=str(tmp_path / "p.png"))
  text = markdown.read_text()
  assert text.startswith("# Results\n\nintro kept\n")
  assert text.count("<!-- accuracy:begin -->") == 1
  assert "| supervised | shapes | 100 | 40.0 ± 0.0 (n=1) | 80.0 ± 0.0 (n=1) |" in text
  assert "| 1/16 | full |" in text
  assert os.path.getsize(tmp_path / "p.png") > 1000
