r"""Accuracy benchmark: mIoU vs labeled fraction on the bundled dataset, several seeds.

Each (method, labeled fraction, seed) is one ordinary training run in its own workdir
under ``--workdir_root``; a finished run is appended to ``bench/results.csv`` at once, and
a run already in the CSV is skipped, so an interrupted benchmark resumes where it stopped
(an unfinished run resumes from its last checkpoint). After every run ``bench/RESULTS.md``
and ``bench/miou_vs_fraction.png`` are rewritten from the whole CSV.

  python bench/accuracy.py --config=configs/default.py
  python bench/accuracy.py --config=configs/default.py --fractions=0.0625,1.0 --seeds=0
  # A variant of a method (its own rows, table line and workdirs):
  python bench/accuracy.py --config=configs/fixmatch.py --config.fixmatch.cutmix_p=0.5 \
      --label=fixmatch+cutmix --fractions=0.0625 --seeds=0
"""

from __future__ import annotations

import csv
import importlib.util
import os
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxsemiseg import self_training_rounds
from jaxsemiseg.data import bundled

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("method", "dataset", "dataset_version", "labeled_fraction", "seed", "steps", "miou",
          "pixel_accuracy", "wall_seconds", "jax", "python", "machine", "command")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Method config.", lock_config=True)
_FRACTIONS = flags.DEFINE_list("fractions", ["0.0625", "0.125", "0.25", "1.0"],
                               "Labeled fractions of the training set.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (split and initialisation).")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", os.path.join(BENCH_DIR, "workdirs"),
                                    "Where each run's workdir goes.")
_RESULTS_CSV = flags.DEFINE_string("results_csv", os.path.join(BENCH_DIR, "results.csv"),
                                   "Per-run results (appended).")
_LABEL = flags.DEFINE_string(
    "label", "", "Name of the runs' rows in results.csv, the table and the workdirs "
    "(default: config.method). Give one with any --config override of a method's settings, "
    "so that the variant's rows are not taken for the method's.")
_REPORT = flags.DEFINE_bool("report", True, "Rewrite RESULTS.md and the plot after each run "
                            "(off in bench/accuracy_pool.py's concurrent runs).")


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  device = jax.devices()[0]
  accelerator = "" if device.platform == "cpu" else f", {jax.device_count()}x {device.device_kind}"
  return f"{os.cpu_count()}-core {cpu}{accelerator}"


def dataset_version(dataset_config) -> str:
  """The bundled dataset's TFDS version (its generator settings); "" for other datasets."""
  if dataset_config.name != "shapes":
    return ""
  return bundled.VERSION


def read_results(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def append_result(path: str, row: dict) -> None:
  new = not os.path.exists(path)
  with open(path, "a", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    if new:
      writer.writeheader()
    writer.writerow(row)


def row_key(row: dict) -> tuple:
  """What identifies a run in ``results.csv``: method, dataset, fraction, seed, steps."""
  return (row["method"], _dataset_label(row["dataset"], row["dataset_version"]),
          float(row["labeled_fraction"]), int(row["seed"]), int(row["steps"]))


def run_key(config, fraction: float, seed: int, *, label: str = "") -> tuple:
  """``row_key`` of the run of ``config`` at ``fraction`` and ``seed``, named ``label``.

  ``label`` is the rows' ``method`` field; "" means ``config.method``.
  """
  return (label or config.method,
          _dataset_label(config.dataset.name, dataset_version(config.dataset)),
          fraction, seed, config.num_steps)


def load_config(path: str):
  """``get_config(arg)`` of a config file given as ``path`` or ``path:arg``."""
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _dataset_label(name: str, version: str) -> str:
  return f"{name} {version}".strip()


def summarise(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
  """(method, dataset, steps, fraction) -> (mean mIoU, std mIoU, number of seeds), in %."""
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    key = (row["method"], _dataset_label(row["dataset"], row["dataset_version"]),
           int(row["steps"]), float(row["labeled_fraction"]))
    groups.setdefault(key, []).append(100 * float(row["miou"]))
  return {key: (float(np.mean(v)), float(np.std(v)), len(v)) for key, v in groups.items()}


def gap_recovered(rows: list[dict], method: str, dataset: str, steps: int,
                  fraction: float) -> tuple[float, int] | None:
  """How much of the labeled-only gap at ``fraction`` ``method`` closes, in %.

  ``100 (m - s) / (s_full - s)`` with ``m`` the method's mean mIoU at ``fraction`` and
  ``s``, ``s_full`` the supervised means at ``fraction`` and with all labels, on the same
  dataset and budget (issue #4's target: >= 50% at 1/16), all three over the same seeds:
  those the method shares with both supervised rows (a split's labeled images depend on
  its seed, so a method's seed is compared with the labeled-only run of that split).

  Returns:
    ``(percent, number of seeds)``; None for the supervised rows and where no seed has
    all three runs.
  """
  def by_seed(name: str, labeled_fraction: float) -> dict[int, float]:
    return {int(row["seed"]): 100 * float(row["miou"]) for row in rows
            if row["method"] == name and int(row["steps"]) == steps
            and _dataset_label(row["dataset"], row["dataset_version"]) == dataset
            and float(row["labeled_fraction"]) == labeled_fraction}

  own, low, full = (by_seed(method, fraction), by_seed("supervised", fraction),
                    by_seed("supervised", 1.0))
  seeds = sorted(set(own) & set(low) & set(full))
  if method == "supervised" or not seeds:
    return None
  m, s, s_full = (float(np.mean([runs[seed] for seed in seeds])) for runs in (own, low, full))
  if s_full == s:
    return None
  return 100 * (m - s) / (s_full - s), len(seeds)


def write_report(rows: list[dict], *, markdown_path: str = os.path.join(BENCH_DIR, "RESULTS.md"),
                 plot_path: str = os.path.join(BENCH_DIR, "miou_vs_fraction.png")) -> None:
  """Rewrites RESULTS.md's accuracy table and the mIoU-vs-fraction plot from all rows."""
  summary = summarise(rows)
  fractions = sorted({key[3] for key in summary})
  settings = sorted({key[:3] for key in summary})
  header = ("| method | dataset | steps | " + " | ".join(map(_fraction_label, fractions))
            + f" | gap recovered at {_fraction_label(fractions[0])} |")
  lines = [header, "|" + "---|" * (4 + len(fractions))]
  for method, dataset, steps in settings:
    cells = []
    for fraction in fractions:
      if (method, dataset, steps, fraction) in summary:
        mean, std, n = summary[(method, dataset, steps, fraction)]
        cells.append(f"{mean:.1f} ± {std:.1f} (n={n})")
      else:
        cells.append("—")
    recovered = gap_recovered(rows, method, dataset, steps, fractions[0])
    cells.append("—" if recovered is None else
                 f"{recovered[0]:.0f}% (n={recovered[1]})")
    lines.append(f"| {method} | {dataset} | {steps} | " + " | ".join(cells) + " |")
  machines = sorted({f"{row['machine']}, Python {row['python']}, jax {row['jax']}"
                     for row in rows})
  commands = sorted({row["command"] for row in rows})
  text = "\n".join([
      "## Accuracy benchmark",
      "",
      "Validation mIoU (%) on the bundled `shapes` dataset (its TFDS version: 1.0.0 has 4000 "
      "training images, 1.1.0 the first 2000 of them), mean ± population standard deviation "
      "(`numpy.std`, ddof 0) over seeds; each cell's seeds are runs listed in `results.csv`. "
      "The gap recovered compares a method with the labeled-only and all-labels runs of the "
      "same seeds (n of them). Generated by `bench/accuracy.py`.",
      "",
      *lines,
      "",
      "![mIoU vs labeled fraction](miou_vs_fraction.png)",
      "",
      "Machine(s): " + "; ".join(machines),
      "",
      "Command(s):",
      "",
      *[f"    {command}" for command in commands],
      "",
  ])
  _replace_section(markdown_path, "accuracy", text)
  _plot(summary, settings, fractions, plot_path)


def _fraction_label(fraction: float) -> str:
  return "full" if fraction == 1.0 else f"1/{round(1 / fraction)}"


def _replace_section(path: str, name: str, text: str) -> None:
  """Replaces the text between this benchmark's markers, keeping the rest of the file."""
  begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
  block = f"{begin}\n{text}{end}"
  old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
  if begin in old and end in old:
    new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
  else:
    new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
  with open(path, "w", encoding="utf-8") as f:
    f.write(new)


def _plot(summary, settings, fractions, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, dataset, steps in settings:
    points = [(f, *summary[(method, dataset, steps, f)][:2]) for f in fractions
              if (method, dataset, steps, f) in summary]
    xs, means, stds = zip(*points)
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                label=f"{method} ({dataset}, {steps} steps)")
  ax.set_xscale("log", base=2)
  ax.set_xticks(fractions, [_fraction_label(f) for f in fractions])
  ax.set_xlabel("labeled fraction of the training set")
  ax.set_ylabel("validation mIoU (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  base = _CONFIG.value
  command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
  done = {row_key(row) for row in read_results(_RESULTS_CSV.value)}
  version = dataset_version(base.dataset)
  label = _LABEL.value or base.method
  # Seeds outermost: an interrupted benchmark already has every fraction for the first seeds.
  for seed in map(int, _SEEDS.value):
    for fraction in map(float, _FRACTIONS.value):
      key = run_key(base, fraction, seed, label=label)
      if key in done:
        print(f"skip {key}: already in {_RESULTS_CSV.value}")
        continue
      config = base.copy_and_resolve_references()
      config.seed = seed
      config.dataset.split_seed = seed
      config.dataset.labeled_fraction = fraction
      config.dataset.num_labeled = -1
      workdir = os.path.join(_WORKDIR_ROOT.value, label,
                             _dataset_label(base.dataset.name, version).replace(" ", "-"),
                             f"steps{base.num_steps}", f"frac{fraction:g}", f"seed{seed}")
      start = time.perf_counter()
      results = self_training_rounds.train_any_method(config, workdir)
      if results.get("preempted"):
        sys.exit(f"Preempted during {key}; rerun the same command to resume.")
      append_result(_RESULTS_CSV.value, {
          "method": label, "dataset": base.dataset.name, "dataset_version": version,
          "labeled_fraction": fraction,
          "seed": seed, "steps": base.num_steps, "miou": f"{results['miou']:.5f}",
          "pixel_accuracy": f"{results['pixel_accuracy']:.5f}",
          "wall_seconds": f"{time.perf_counter() - start:.0f}", "jax": jax.__version__,
          "python": platform.python_version(), "machine": machine_description(),
          "command": command})
      print(f"{key}: mIoU {100 * results['miou']:.2f}")
      if _REPORT.value:
        write_report(read_results(_RESULTS_CSV.value))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
