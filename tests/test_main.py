"""The command line: a mistyped --config override is a usage error, not a traceback."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("override, message", [
    ("--config.optimiser.learning_rate=0.1", 'Did you mean "optimizer"'),
    ("--config.fixmatch.threshold=0.9", "needs --config=configs/fixmatch.py"),
    ("--config.num_steps=abc", "--config.num_steps=abc: invalid literal"),
])
def test_bad_override_is_a_one_line_usage_error(tmp_path, override, message):
  process = subprocess.run(
      [sys.executable, "-m", "jaxsemiseg.main", "--config=configs/default.py",
       f"--workdir={tmp_path}", override],
      capture_output=True, text=True, timeout=120,
      cwd=__file__.rsplit("/tests/", 1)[0])
  assert process.returncode == 1
  assert "FATAL Flags parsing error" in process.stderr and message in process.stderr
  assert "Traceback" not in process.stderr
