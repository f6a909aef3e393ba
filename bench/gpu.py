r"""Supervised and UniMatch steps of DeepLabV3+-R50/R101 on one accelerator.

One prepared script for a lent GPU (or TPU), no arguments needed; it stays within about
7.5 minutes (``--budget-s``) on one H200:

  python bench/gpu.py --output bench/gpu.jsonl
  python bench/gpu.py --quick --output /tmp/gpu.jsonl   # CPU smoke test: tiny UNet, crop 16

Every setting is one method's train step as ``train.py`` builds it (``bench/_step_builder``)
at crop 321, 8 labeled (+ 8 unlabeled) images, 21 classes, SGD, in float32 or bfloat16
compute (and UniMatch-R101 also with remat). It prints one JSON line per setting, flushed
as the setting ends, and appends it to ``--output``:
  ``compile_s``; ``steps_per_s`` and ``images_per_s`` (labeled + unlabeled images of a
  step; UniMatch's CutMix partner batch, the reference's second unlabeled loader, is not
  counted) over ``--steps`` steps after 2 warm-up steps; ``tflop_per_s`` (XLA's cost
  analysis of the compiled step times steps/s; with remat this counts the recomputation,
  so it is hardware, not model, FLOPs) and ``mfu``, its fraction of the device's peak for
  the compute dtype (``PEAK_TFLOP_PER_S``; null on a device not in the table);
  ``peak_bytes_in_use`` (the device allocator's peak, null where the backend keeps no
  statistics, e.g. CPU) and XLA's memory analysis of the step (``peak_bytes`` ...).

Each setting runs in a subprocess of its own, so the allocator's peak is that setting's
alone and an out-of-memory or a crash costs one line (with ``error``), not the run. The
most important settings run first; once less than ``--min-setting-s`` of the budget is left,
the rest are written as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _records  # pylint: disable=g-bad-import-order

# Dense (no sparsity) peak TFLOP/s per chip, keyed by ``jax.devices()[0].device_kind``.
# "float32" is what XLA runs a float32 matmul or convolution at by default: TensorFloat-32
# on NVIDIA tensor cores (Ampere and newer), one bfloat16 pass on TPU (JAX's "Matmul
# precision" docs). Sources: NVIDIA's H100 and H200 datasheets (BF16 1,979 and TF32 989
# TFLOP/s "with sparsity", halved; H100 PCIe 1,513 and 756), the A100 datasheet (BF16 312,
# TF32 156 dense), Google Cloud's TPU v4 (275 bf16) and v5e (197 bf16) system pages.
PEAK_TFLOP_PER_S = {
    "NVIDIA H200": {"bfloat16": 989.5, "float32": 494.5},
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.5, "float32": 494.5},
    "NVIDIA H100 PCIe": {"bfloat16": 756.5, "float32": 378.0},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100-PCIE-40GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100 80GB PCIe": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
}

# name -> (method, backbone, compute dtype, remat), most important first: UniMatch-R101 is
# the reference's 4-GPU setting; its bf16+remat line is the memory option of issue #6.
SETTINGS = {
    "unimatch-r101-bf16": ("unimatch", "resnet101", "bfloat16", False),
    "unimatch-r101-f32": ("unimatch", "resnet101", "float32", False),
    "unimatch-r101-bf16-remat": ("unimatch", "resnet101", "bfloat16", True),
    "supervised-r101-bf16": ("supervised", "resnet101", "bfloat16", False),
    "supervised-r101-f32": ("supervised", "resnet101", "float32", False),
    "unimatch-r50-bf16": ("unimatch", "resnet50", "bfloat16", False),
    "unimatch-r50-f32": ("unimatch", "resnet50", "float32", False),
    "supervised-r50-bf16": ("supervised", "resnet50", "bfloat16", False),
    "supervised-r50-f32": ("supervised", "resnet50", "float32", False),
    "unimatch-r101-f32-remat": ("unimatch", "resnet101", "float32", True),
}

NUM_CLASSES = 21
WARMUP_STEPS = 2


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default="", help="JSONL file the lines are appended to.")
  parser.add_argument("--quick", action="store_true",
                      help="CPU smoke test: a width-4 UNet at crop 16, batch 2.")
  parser.add_argument("--settings", default=",".join(SETTINGS),
                      help=f"Comma-separated, in order, from {list(SETTINGS)}.")
  parser.add_argument("--steps", type=int, default=10, help="Timed steps per setting.")
  parser.add_argument("--budget-s", type=float, default=450.0,
                      help="Wall-clock budget of the whole run.")
  parser.add_argument("--min-setting-s", type=float, default=45.0,
                      help="Do not start a setting with less of the budget left.")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.settings = args.settings.split(",")
  unknown = sorted(set(args.settings + ([args.one] if args.one else [])) - set(SETTINGS))
  if unknown:
    parser.error(f"settings {unknown} unknown; expected names from {list(SETTINGS)}.")
  return args


def measure(name: str, *, quick: bool, steps: int) -> dict:
  """Builds, compiles and times one setting in this process; returns its line."""
  # Imported here: the parent process must not initialise (and preallocate) the device.
  import jax  # pylint: disable=g-import-not-at-top
  from jaxsemiseg import parallel  # pylint: disable=g-import-not-at-top
  import _step_builder  # pylint: disable=g-import-not-at-top

  method, backbone, dtype, remat = SETTINGS[name]
  shape = (dict(model="unet", width=4, size=16, batch=2) if quick else
           dict(model="deeplabv3plus", backbone=backbone, size=321, batch=8))
  config = _step_builder.make_config(method=method, dtype=dtype, remat=remat,
                                     optimizer="sgd", **shape)
  mesh = parallel.make_mesh(1)
  run, step = _step_builder.build(config, num_classes=NUM_CLASSES, mesh=mesh)
  num_views = _step_builder.num_unlabeled_views(run.method)
  batch = jax.device_put(
      _step_builder.random_batch(0, config, num_classes=NUM_CLASSES, num_views=num_views),
      parallel.batch_sharding(mesh))
  rng = jax.random.key(0)
  start = time.perf_counter()
  compiled = step.lower(run.state, batch, rng).compile()
  compile_s = time.perf_counter() - start

  state = run.state
  for _ in range(WARMUP_STEPS):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready((state, metrics))
  steps_per_s = steps / (time.perf_counter() - start)

  device = jax.devices()[0]
  tflop_per_s = _step_builder.step_flops(compiled) * steps_per_s / 1e12
  peak = PEAK_TFLOP_PER_S.get(device.device_kind, {}).get(dtype)
  images_per_step = config.batch_size + (config.unlabeled_batch_size if num_views else 0)
  memory_stats = device.memory_stats() or {}
  return {
      "setting": name, "method": method, "model": config.model.name,
      "backbone": backbone if config.model.name == "deeplabv3plus" else None,
      "dtype": dtype, "remat": remat, "size": config.dataset.crop_size,
      "batch": config.batch_size,
      "unlabeled_batch": config.unlabeled_batch_size if num_views else 0,
      "compile_s": round(compile_s, 1), "steps_per_s": round(steps_per_s, 3),
      "images_per_s": round(steps_per_s * images_per_step, 1),
      "tflop_per_s": _significant(tflop_per_s), "peak_tflop_per_s": peak,
      "mfu": _significant(tflop_per_s / peak) if peak else None,
      "peak_bytes_in_use": memory_stats.get("peak_bytes_in_use"),
      **_step_builder.memory_analysis(compiled), "loss": float(metrics["loss"]),
      "device": device.device_kind, "jax": jax.__version__}


def _significant(value: float) -> float:
  """``value`` to 4 significant digits (a CPU smoke test's TFLOP/s are ~1e-3)."""
  return float(f"{value:.4g}")


def _run_in_subprocess(name: str, args, timeout_s: float) -> dict:
  """``measure(name)`` in a fresh Python; its line, or one with the error."""
  command = [sys.executable, os.path.abspath(__file__), "--one", name,
             "--steps", str(args.steps)] + (["--quick"] if args.quick else [])
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
  except subprocess.TimeoutExpired:
    return {"setting": name, "error": f"timed out after {timeout_s:.0f} s"}
  if done.returncode != 0:
    # The last lines hold the exception, e.g. RESOURCE_EXHAUSTED for out of memory.
    return {"setting": name, "error": done.stderr.strip().splitlines()[-3:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
  args = _parse(argv)
  if args.one:
    _records.print_and_append(measure(args.one, quick=args.quick, steps=args.steps), "")
    return
  deadline = time.monotonic() + args.budget_s
  for name in args.settings:
    left = deadline - time.monotonic()
    if left < args.min_setting_s:
      result = {"setting": name, "skipped": f"{left:.0f} s of the budget left"}
    else:
      result = _run_in_subprocess(name, args, left)
    _records.print_and_append(result, args.output)


if __name__ == "__main__":
  main()
