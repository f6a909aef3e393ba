r"""Many accuracy runs at once on one accelerator: a pool of ``bench/accuracy.py`` processes.

A UNet-S run on the bundled dataset uses a sliver of a large GPU, so a lent GPU's few
minutes go furthest with several runs sharing it. This script makes the list of
(config, labeled fraction, seed) runs, seeds outermost (so an interrupted pool has every
method at seed 0 first), skips those already in any ``--done_csv``, and keeps
``--workers`` ``accuracy.py`` processes going, each on one run, with its own log. Each
appends its row to ``--results_csv`` when its run ends. At ``--budget_s`` the runs still
going get a SIGTERM: the training loop saves a checkpoint and exits, and the same command
resumes them later from ``--workdir_root``. On a lent GPU (results and workdirs under
``$OUT``, merged into ``bench/results.csv`` afterwards with ``--merge``):

  python bench/accuracy_pool.py --configs=configs/unimatch.py,configs/fixmatch.py \
      --fractions=0.0625,0.125 --seeds=0,1,2 --workers=8 --budget_s=500 --in_memory \
      --results_csv=$OUT/results.csv --workdir_root=$OUT/workdirs
  python bench/accuracy_pool.py --merge=<fetched>/results.csv   # then, on this machine
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time

import accuracy  # pylint: disable=g-bad-import-order

_ACCURACY = os.path.join(accuracy.BENCH_DIR, "accuracy.py")


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="configs/default.py",
                      help="Comma-separated method configs.")
  parser.add_argument("--fractions", default="0.0625,0.125")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--workers", type=int, default=8, help="Runs at the same time.")
  parser.add_argument("--budget_s", type=float, default=500.0,
                      help="Wall time after which running runs are stopped (checkpointed).")
  parser.add_argument("--results_csv", default=os.path.join(accuracy.BENCH_DIR, "results.csv"))
  parser.add_argument("--done_csv", action="append", default=None,
                      help="CSVs whose runs are skipped (default: bench/results.csv and "
                           "--results_csv).")
  parser.add_argument("--workdir_root", default=os.path.join(accuracy.BENCH_DIR, "workdirs"))
  parser.add_argument("--log_dir", default="", help="Per-run logs (default: workdir_root).")
  parser.add_argument("--in_memory", action="store_true",
                      help="Render the bundled dataset in memory in each run (same images; "
                           "for a machine without TensorFlow, such as the lent GPU).")
  parser.add_argument("--merge", default="",
                      help="Append this CSV's new rows to --results_csv, rewrite the report "
                           "and exit.")
  return parser.parse_args(argv)


def plan_runs(configs: list[str], fractions: list[float], seeds: list[int],
              done: set[tuple]) -> list[tuple[str, float, int]]:
  """The runs still to do, seeds outermost, then fractions, then configs.

  Args:
    configs: config file paths.
    fractions: labeled fractions.
    seeds: seeds.
    done: ``accuracy.run_key`` of every finished run.

  Returns:
    ``(config, fraction, seed)`` for each run whose key is not in ``done``.
  """
  runs = []
  for seed in seeds:
    for fraction in fractions:
      for path in configs:
        if accuracy.run_key(accuracy.load_config(path), fraction, seed) not in done:
          runs.append((path, fraction, seed))
  return runs


def run_command(config: str, fraction: float, seed: int, args) -> list[str]:
  """The ``accuracy.py`` call for one run (no report: the pool's processes share files)."""
  return [sys.executable, _ACCURACY, f"--config={config}", "--config.progress_bar=False",
          f"--fractions={fraction}", f"--seeds={seed}", f"--results_csv={args.results_csv}",
          f"--workdir_root={args.workdir_root}", "--noreport",
          *(["--config.dataset.in_memory=True"] if args.in_memory else [])]


def run_pool(commands: list[list[str]], *, workers: int, budget_s: float,
             log_dir: str) -> list[int | None]:
  """Runs ``commands`` with at most ``workers`` at once until ``budget_s`` has passed.

  At the deadline the running processes get SIGTERM and are waited for (the training loop
  checkpoints and exits); commands not started by then are not started.

  Args:
    commands: argument lists, started in order.
    workers: how many run at the same time.
    budget_s: seconds from the call after which nothing starts and running ones are stopped.
    log_dir: where ``run_<i>.log`` (stdout and stderr of command i) goes.

  Returns:
    Each command's exit status; None for those never started.
  """
  os.makedirs(log_dir, exist_ok=True)
  deadline = time.monotonic() + budget_s
  statuses: list[int | None] = [None] * len(commands)
  running: dict[int, subprocess.Popen] = {}
  queue = list(range(len(commands)))
  while queue or running:
    while queue and len(running) < workers and time.monotonic() < deadline:
      index = queue.pop(0)
      with open(os.path.join(log_dir, f"run_{index}.log"), "w", encoding="utf-8") as log:
        running[index] = subprocess.Popen(commands[index], stdout=log, stderr=subprocess.STDOUT)
      print(f"started run {index}: {' '.join(commands[index][1:5])}", flush=True)
    if time.monotonic() >= deadline:
      queue.clear()
      for process in running.values():
        process.send_signal(signal.SIGTERM)
      for index, process in running.items():
        statuses[index] = process.wait()
      running.clear()
      break
    for index, process in list(running.items()):
      if process.poll() is not None:
        statuses[index] = process.returncode
        del running[index]
        print(f"run {index} ended with status {process.returncode}", flush=True)
    time.sleep(1.0)
  return statuses


def merge(source_csv: str, results_csv: str) -> int:
  """Appends the rows of ``source_csv`` not yet in ``results_csv``; returns their number."""
  done = {accuracy.row_key(row) for row in accuracy.read_results(results_csv)}
  new = [row for row in accuracy.read_results(source_csv) if accuracy.row_key(row) not in done]
  for row in new:
    accuracy.append_result(results_csv, row)
  return len(new)


def main(argv=None):
  args = _parse(argv)
  if args.merge:
    print(f"{merge(args.merge, args.results_csv)} new rows from {args.merge}")
    accuracy.write_report(accuracy.read_results(args.results_csv))
    return
  done_csvs = args.done_csv or [os.path.join(accuracy.BENCH_DIR, "results.csv"),
                                args.results_csv]
  done = {accuracy.row_key(row) for path in done_csvs for row in accuracy.read_results(path)}
  runs = plan_runs(args.configs.split(","), [float(f) for f in args.fractions.split(",")],
                   [int(s) for s in args.seeds.split(",")], done)
  print(f"{len(runs)} runs to do with {args.workers} workers", flush=True)
  if not os.path.exists(args.results_csv):
    # One header, written before the workers append concurrently.
    os.makedirs(os.path.dirname(os.path.abspath(args.results_csv)), exist_ok=True)
    with open(args.results_csv, "w", newline="", encoding="utf-8") as f:
      csv.DictWriter(f, fieldnames=accuracy.FIELDS).writeheader()
  statuses = run_pool([run_command(*run, args) for run in runs], workers=args.workers,
                      budget_s=args.budget_s, log_dir=args.log_dir or args.workdir_root)
  for (config, fraction, seed), status in zip(runs, statuses):
    print(f"{config} fraction {fraction} seed {seed}: "
          f"{'not started' if status is None else f'exit status {status}'}")


if __name__ == "__main__":
  main()
