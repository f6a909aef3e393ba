"""bench/gpu.py --quick runs its settings in subprocesses and writes one line per setting."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import gpu  # pylint: disable=wrong-import-position


def test_quick_run_measures_each_setting_in_its_own_process(tmp_path):
  output = tmp_path / "gpu.jsonl"
  output.write_text('{"earlier": "line"}\n')
  gpu.main(["--quick", "--settings", "supervised-r50-bf16", "--steps", "2",
            "--output", str(output)])
  earlier, line = [json.loads(line) for line in output.read_text().splitlines()]
  assert earlier == {"earlier": "line"}
  assert "error" not in line, line
  assert (line["setting"], line["model"], line["dtype"], line["remat"]) == (
      "supervised-r50-bf16", "unet", "bfloat16", False)
  assert (line["batch"], line["unlabeled_batch"]) == (2, 0)
  assert line["images_per_s"] == pytest.approx(2 * line["steps_per_s"], rel=1e-2)
  assert line["compile_s"] > 0 and line["tflop_per_s"] > 0
  # CPU: not in the peak table, and its allocator keeps no statistics.
  assert line["mfu"] is None and line["peak_bytes_in_use"] is None
  assert line["peak_bytes"] > 0 and line["loss"] > 0


def test_settings_past_the_budget_are_skipped(capsys):
  gpu.main(["--settings", "unimatch-r101-bf16", "--budget-s", "0"])
  line = json.loads(capsys.readouterr().out)
  assert line["setting"] == "unimatch-r101-bf16" and "skipped" in line


def test_unknown_setting_is_refused():
  with pytest.raises(SystemExit):
    gpu.main(["--settings", "unimatch-r152-bf16"])
