r"""Speed of one method's jitted train step: compile time, steps/s, images/s, GFLOP/s.

Builds the run exactly as training does (``train.build_run``: the config's model, optimizer
and method, jitted with ``parallel.compile_step`` on a one-device mesh), feeds it a fixed
random batch, and prints one JSON line in the form of
``shared/bench/torch_unet_step.py``, so the two can be run alternately and compared:

  python bench/speed.py --method supervised --model unet --size 64 --batch 8 --width 16 \
      --classes 4 --steps 30 --json
  python /work/shared/bench/torch_unet_step.py --size 64 --batch 8 --width 16 --classes 4

Reported: ``compile_s`` (lowering + XLA compilation of the step), ``steps_per_s`` and
``images_per_s`` (labeled images; after 3 warm-up steps, over ``--steps`` steps, the median
of ``--repeats`` timings), ``gflops_per_step`` (XLA's cost analysis of the compiled step) and
``gflop_per_s``, and ``matmul_peak_gflop_per_s`` (a 2048^2 float32 product on the same
device) with the step's fraction of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsemiseg import config as config_lib
from jaxsemiseg import parallel

import _step_builder  # pylint: disable=g-bad-import-order


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", default="supervised")
  parser.add_argument("--model", default="unet", choices=config_lib.MODEL_NAMES)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--width", type=int, default=16, help="UNet width.")
  parser.add_argument("--dropout", type=float, default=0.0,
                      help="UNet dropout rate (UA-MT's teacher needs one > 0).")
  parser.add_argument("--backbone", default="resnet50", help="DeepLabV3+ backbone.")
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", action="store_true", help="Print only the JSON line.")
  return parser.parse_args(argv)


def matmul_peak_gflop_per_s(size: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of a ``size``^2 float32 matrix product on the default device."""
  a = jnp.asarray(np.random.default_rng(0).random((size, size), np.float32))
  product = jax.jit(lambda x: x @ x)
  product(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    product(a).block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def measure(args) -> dict:
  """Compiles and times the step; returns the result line as a dict."""
  config = _step_builder.make_config(
      method=args.method, model=args.model, size=args.size, batch=args.batch,
      width=args.width, dropout=args.dropout, backbone=args.backbone)
  mesh = parallel.make_mesh(1)
  run, step = _step_builder.build(config, num_classes=args.classes, mesh=mesh)
  batch = jax.device_put(
      _step_builder.random_batch(0, config, num_classes=args.classes,
                                 num_views=_step_builder.num_unlabeled_views(run.method)),
      parallel.batch_sharding(mesh))
  rng = jax.random.key(0)
  start = time.perf_counter()
  compiled = step.lower(run.state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  flops = _step_builder.step_flops(compiled)

  state = run.state
  for _ in range(3):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  timings = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    timings.append(time.perf_counter() - start)
  seconds = statistics.median(timings)
  peak = matmul_peak_gflop_per_s()
  gflop_per_s = flops * args.steps / seconds / 1e9
  return {
      "framework": "jax", "method": args.method, "model": args.model,
      "steps_per_s": args.steps / seconds, "images_per_s": args.steps * args.batch / seconds,
      "compile_s": round(compile_s, 2), "gflops_per_step": round(flops / 1e9, 3),
      "gflop_per_s": round(gflop_per_s, 1), "matmul_peak_gflop_per_s": round(peak, 1),
      "fraction_of_peak": round(gflop_per_s / peak, 3), "size": args.size,
      "batch": args.batch, "width": args.width, "classes": args.classes,
      "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "python": sys.version.split()[0]}


def main(argv=None):
  args = _parse(argv)
  result = measure(args)
  if not args.json:
    print(f"{args.method} step: {result['steps_per_s']:.2f} steps/s, "
          f"{result['images_per_s']:.1f} images/s, compiled in {result['compile_s']} s",
          file=sys.stderr)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
