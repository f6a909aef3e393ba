"""bench/speed.py measures a method's compiled step and prints the torch script's fields."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import speed  # pylint: disable=wrong-import-position


def test_prints_one_json_line_with_the_torch_scripts_fields(capsys):
  speed.main(["--method", "supervised", "--size", "16", "--batch", "2", "--width", "4",
              "--classes", "3", "--steps", "2", "--repeats", "1", "--json"])
  result = json.loads(capsys.readouterr().out.strip())
  for key in ("steps_per_s", "images_per_s", "size", "batch", "width", "classes"):
    assert key in result
  assert result["framework"] == "jax" and result["batch"] == 2
  assert result["images_per_s"] == result["steps_per_s"] * 2
  assert result["compile_s"] > 0 and result["gflops_per_step"] > 0
  assert 0 < result["fraction_of_peak"] < 1
  # The step against the one fwd+bwd the supervised method needs.
  assert (result["n_fwd_bwd"], result["n_fwd"]) == (1, 0)
  assert result["step_s"] == pytest.approx(1 / result["steps_per_s"])
  assert result["pass_budget_s"] == pytest.approx(result["fwd_bwd_s"])
  assert result["fwd_s"] > 0
  assert math.isfinite(result["step_vs_passes"]) and result["step_vs_passes"] > 0
