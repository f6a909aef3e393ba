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

Step against the passes it needs (issue #6): ``step_s`` (1 / ``steps_per_s``) and, for one
model of the run's architecture (one member of a stacked ensemble) on the same batch size
and device, ``fwd_s`` (a jitted train-mode forward of the labeled batch, no gradient) and
``fwd_bwd_s`` (a jitted ``jax.value_and_grad`` of its supervised loss over the parameters),
and for CCT ``head_fwd_s`` and ``head_fwd_bwd_s`` (the classifier head alone on the decoder
features). With the method's counts ``n_*`` (``bench/step_passes.py``),
``pass_budget_s = n_fwd_bwd fwd_bwd_s + n_fwd fwd_s (+ n_head_fwd_bwd head_fwd_bwd_s +
n_head_fwd head_fwd_s)`` and ``step_vs_passes = step_s / pass_budget_s``. The supervised
step's own ratio (its optimizer update and loss over one fwd+bwd) is the baseline; a
method well above it does work it does not need. The step and the passes are timed in
turn within each repeat, so on a shared machine they see the same load.

Every method, one after the other, appended to a JSON-lines file with provenance
(``_records.write_record``) and a tag:

  python bench/speed.py --all --size 64 --batch 8 --width 16 --classes 6 --steps 10 \
      --repeats 3 --output bench/step_passes.jsonl --tag passes-2026-11-29
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsemiseg import config as config_lib
from jaxsemiseg import methods, parallel, stacked
from jaxsemiseg.methods import cct, common

import _records  # pylint: disable=g-bad-import-order
import _step_builder  # pylint: disable=g-bad-import-order
import step_passes  # pylint: disable=g-bad-import-order

# Warm-up calls of each timed function before timing (the first call compiles it).
_WARMUP_CALLS = 3
# UA-MT's teacher needs dropout (configs/ua_mt.py: 0.5); --all gives it this rate when
# --dropout is 0.
_METHOD_DROPOUT = {"ua_mt": 0.5}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", default=None, help="A registered method (default "
                      "supervised); not with --all.")
  parser.add_argument("--all", action="store_true",
                      help="Time every registered method, one after the other.")
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
  parser.add_argument("--output", default="",
                      help="JSON-lines file to append each result to, with provenance.")
  parser.add_argument("--tag", default="", help="A label stored in each result line.")
  parser.add_argument("--json", action="store_true", help="Print only the JSON line.")
  args = parser.parse_args(argv)
  if args.all and args.method is not None:
    parser.error(f"--method={args.method} with --all; --all times every method, give one "
                 "or the other.")
  if args.steps < 1 or args.repeats < 1:
    parser.error(f"--steps={args.steps} and --repeats={args.repeats}; expected both >= 1.")
  args.method = args.method or "supervised"
  return args


def matmul_peak_gflop_per_s(size: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of a ``size``^2 float32 matrix product on the default device."""
  a = jnp.asarray(np.random.default_rng(0).random((size, size), np.float32))
  product = jax.jit(lambda x: x @ x)
  product(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    product(a).block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def seconds_per_call(calls: dict[str, Callable[[], Any]], *, steps: int,
                     repeats: int) -> dict[str, float]:
  """Median seconds of one call of each function, the functions timed in turn.

  Each function is called ``_WARMUP_CALLS`` times first. Then, ``repeats`` times, each
  function in turn makes ``steps`` calls, waiting for each result (the passes do not
  depend on each other as the steps do, and must not overlap), so on a shared machine
  all of them see the same load.

  Args:
    calls: ``{name: fn}``; ``fn()`` makes one call and returns its (asynchronous) result.
    steps: calls per timing.
    repeats: timings per function.

  Returns:
    ``{name: median over the repeats of the timing / steps}``.
  """
  for call in calls.values():
    for _ in range(_WARMUP_CALLS):
      jax.block_until_ready(call())
  timings = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      for _ in range(steps):
        jax.block_until_ready(call())
      timings[name].append((time.perf_counter() - start) / steps)
  return {name: statistics.median(times) for name, times in timings.items()}


def one_model_variables(model, state: Any, images: jax.Array) -> tuple[Any, Any]:
  """A copy of the run's parameters and BatchNorm statistics; member 0's where it stacks.

  A copy, since the train step donates ``state``. Co-training and ensembles stack their
  members' variables on a leading axis (``cotraining.init_members``): detected by comparing
  the shapes with those of one model's.

  Args:
    model: the run's model.
    state: the run's initial train state.
    images: a batch of images the model takes.

  Returns:
    ``(params, batch_stats)`` of one model, on the default device.
  """
  one_model = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, images, train=False))
  params, batch_stats = jax.device_get((state.params, state.batch_stats))
  if jax.tree.leaves(params)[0].shape != jax.tree.leaves(one_model["params"])[0].shape:
    params, batch_stats = stacked.member((params, batch_stats), 0)
  return jax.device_put((params, batch_stats))


def model_passes(key: jax.Array, model, config: ml_collections.ConfigDict, state: Any,
                 batch: dict, *, heads: bool) -> dict[str, Callable[[], Any]]:
  """Jitted passes of one model of the run over the labeled batch, to time.

  Args:
    key: PRNG key of the dropout and the head's initialisation.
    model: the run's model.
    config: the run's config (its ``loss``).
    state: the run's initial train state (its model, or its first member, is used).
    batch: the step's batch; ``image`` and ``label`` are used.
    heads: also the classifier head's passes over the decoder features.

  Returns:
    ``{"fwd", "fwd_bwd"}`` (and ``"head_fwd"``, ``"head_fwd_bwd"``), each a function of no
    arguments making one call: ``fwd`` a train-mode forward, ``fwd_bwd`` the value and
    parameter gradient of the supervised loss of ``config.loss``; the head's ``fwd_bwd``
    also differentiates the features, as CCT's consistency trains the encoder.
  """
  params, batch_stats = one_model_variables(model, state, batch["image"])
  images, labels = batch["image"], batch["label"]

  # Every array is an argument, as the step's are: closed-over arrays would be baked into
  # the compiled computation as constants.
  def forward(params: Any, batch_stats: Any, images: jax.Array, key: jax.Array) -> dict:
    return common.forward(model, params, batch_stats, images, train=True, rng=key)[0]

  def loss(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array,
           key: jax.Array) -> jax.Array:
    logits = forward(params, batch_stats, images, key)["logits"]
    return common.supervised_loss(logits, labels, config.loss)[0]

  # Compiled as the step is (parallel.compile_step's options), so the ratio compares
  # like with like.
  jit = functools.partial(jax.jit, compiler_options=parallel.step_compiler_options(
      jax.devices()[0].platform, os.environ.get("XLA_FLAGS", "")))
  fwd = jit(lambda *args: forward(*args)["logits"])
  fwd_bwd = jit(jax.value_and_grad(loss))
  passes = {"fwd": lambda: fwd(params, batch_stats, images, key),
            "fwd_bwd": lambda: fwd_bwd(params, batch_stats, images, labels, key)}
  if not heads:
    return passes
  features = jax.jit(lambda *args: forward(*args)["features"])(params, batch_stats, images,
                                                               key)
  head = cct.make_head_fn(model, images.shape[1:3])
  head_params = stacked.member(
      jax.jit(lambda k, z: cct.init_aux_heads(k, model, z, num_heads=1))(key, features), 0)

  def head_loss(params: Any, features: jax.Array, labels: jax.Array) -> jax.Array:
    return common.supervised_loss(head(params, features), labels, config.loss)[0]

  head_fwd = jit(head)
  head_fwd_bwd = jit(jax.value_and_grad(head_loss, argnums=(0, 1)))
  return {**passes, "head_fwd": lambda: head_fwd(head_params, features),
          "head_fwd_bwd": lambda: head_fwd_bwd(head_params, features, labels)}


def measure(args) -> dict:
  """Compiles and times the step and the passes it needs; returns the result line."""
  config = _step_builder.make_config(
      method=args.method, model=args.model, size=args.size, batch=args.batch,
      width=args.width, dropout=args.dropout, backbone=args.backbone)
  passes = step_passes.step_passes(config)
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

  def train_step():
    nonlocal state
    state, metrics = compiled(state, batch, rng)
    return state, metrics

  counts = {name: count for name, count in dataclasses.asdict(passes).items() if count}
  seconds = seconds_per_call(
      {"step": train_step,
       **model_passes(jax.random.fold_in(rng, 1), run.model, config, run.state, batch,
                      heads=bool(passes.head_fwd_bwd or passes.head_fwd))},
      steps=args.steps, repeats=args.repeats)
  pass_budget_s = sum(count * seconds[name] for name, count in counts.items())
  peak = matmul_peak_gflop_per_s()
  gflop_per_s = flops / seconds["step"] / 1e9
  return {
      "framework": "jax", "method": args.method, "model": args.model,
      "steps_per_s": 1 / seconds["step"], "images_per_s": args.batch * (1 / seconds["step"]),
      "compile_s": round(compile_s, 2), "gflops_per_step": round(flops / 1e9, 3),
      "gflop_per_s": round(gflop_per_s, 1), "matmul_peak_gflop_per_s": round(peak, 1),
      "fraction_of_peak": round(gflop_per_s / peak, 3), "size": args.size,
      "batch": args.batch, "width": args.width, "classes": args.classes,
      "dropout": args.dropout, "step_s": seconds["step"],
      **{f"{name}_s": value for name, value in seconds.items() if name != "step"},
      **{f"n_{name}": count for name, count in dataclasses.asdict(passes).items()},
      "pass_budget_s": pass_budget_s, "step_vs_passes": seconds["step"] / pass_budget_s,
      "tag": args.tag, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "python": sys.version.split()[0]}


def _runs(args) -> list[argparse.Namespace]:
  """The settings of each measurement: ``args`` itself, or with --all one per method."""
  if not args.all:
    return [args]
  return [argparse.Namespace(**{
      **vars(args), "method": name,
      "dropout": args.dropout or _METHOD_DROPOUT.get(name, 0.0)}) for name in methods.METHODS]


def main(argv=None):
  args = _parse(argv)
  for run_args in _runs(args):
    result = measure(run_args)
    if not args.json:
      print(f"{run_args.method} step: {result['steps_per_s']:.2f} steps/s, "
            f"{result['images_per_s']:.1f} images/s, {result['step_vs_passes']:.2f}x its "
            f"passes, compiled in {result['compile_s']} s", file=sys.stderr)
    if args.output:
      _records.write_record(result, args.output, script="bench/speed.py")
    else:
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
