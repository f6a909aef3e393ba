import importlib.util
import os
import sys

import pytest

_BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")
_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.fixture(scope="module")
def pool():
  sys.path.insert(0, _BENCH)
  spec = importlib.util.spec_from_file_location(
      "bench_accuracy_pool", os.path.join(_BENCH, "accuracy_pool.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_plan_puts_seeds_outermost_and_skips_finished_runs(pool):
  default, fixmatch = (os.path.join(_CONFIGS, name) for name in ("default.py", "fixmatch.py"))
  done = {pool.accuracy.run_key(pool.accuracy.load_config(fixmatch), 0.0625, 0)}
  runs = pool.plan_runs([default, fixmatch], [0.0625, 1.0], [0, 1], done)
  assert runs == [(default, 0.0625, 0), (default, 1.0, 0), (fixmatch, 1.0, 0),
                  (default, 0.0625, 1), (fixmatch, 0.0625, 1), (default, 1.0, 1),
                  (fixmatch, 1.0, 1)]


def test_pool_stops_running_commands_at_the_deadline(pool, tmp_path):
  quick = [sys.executable, "-c", "print('hello'); raise SystemExit(3)"]
  slow = [sys.executable, "-c", "import time; time.sleep(60)"]
  statuses = pool.run_pool([quick, slow, slow, quick], workers=2, budget_s=4.0,
                           log_dir=str(tmp_path))
  # Run 0 ends at once, runs 1 and 2 are stopped by SIGTERM, run 3 never gets a worker.
  assert statuses == [3, -15, -15, None]
  assert (tmp_path / "run_0.log").read_text() == "hello\n"


def test_merge_appends_only_new_rows(pool, tmp_path):
  def row(seed):
    return {"method": "supervised", "dataset": "shapes", "dataset_version": "1.1.0",
            "labeled_fraction": "0.0625", "seed": str(seed), "steps": "4000", "miou": "0.3",
            "pixel_accuracy": "0.9", "wall_seconds": "1", "jax": "x", "python": "3",
            "machine": "m", "command": "c"}
  target, source = str(tmp_path / "results.csv"), str(tmp_path / "gpu.csv")
  pool.accuracy.append_result(target, row(0))
  for seed in (0, 1):
    pool.accuracy.append_result(source, row(seed))
  assert pool.merge(source, target) == 1
  assert [r["seed"] for r in pool.accuracy.read_results(target)] == ["0", "1"]


def test_run_command_renders_the_dataset_in_memory_when_asked(pool):
  args = pool._parse(["--in_memory", "--results_csv=r.csv", "--workdir_root=w"])
  command = pool.run_command("configs/fixmatch.py", 0.0625, 2, args)
  assert command[1:] == [
      pool._ACCURACY, "--config=configs/fixmatch.py", "--config.progress_bar=False",
      "--fractions=0.0625", "--seeds=2", "--results_csv=r.csv", "--workdir_root=w",
      "--noreport", "--config.dataset.in_memory=True"]
  assert "--config.dataset.in_memory=True" not in pool.run_command(
      "configs/fixmatch.py", 0.0625, 2, pool._parse([]))
