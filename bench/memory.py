r"""Device memory of one method's train step by XLA's memory analysis, compile only.

Lowers and compiles the jitted step exactly as training builds it (``train.build_run`` and
``parallel.compile_step``, state donated) from abstract inputs: the state comes from
``jax.eval_shape`` and the batch is ``jax.ShapeDtypeStruct``s, so nothing of the model's
size is allocated and a model that would not fit can still be measured. For each setting
(float32 / bfloat16 compute, with and without remat) it prints one JSON line and appends it
to ``--output``:

  python bench/memory.py   # UniMatch, DeepLabV3+-R101, crop 321, 8 + 8 images, SGD
  python bench/memory.py --method supervised --model unet --size 64 --batch 8 \
      --settings f32,bf16

Fields, in bytes: ``argument_bytes`` (state + batch), ``output_bytes`` (new state +
metrics), ``temp_bytes`` (the step's scratch: activations kept for the backward pass and
workspace), ``alias_bytes`` (outputs written into donated inputs: the state),
``peak_bytes = argument + output + temp - alias`` (also as ``peak_gb``, 1e9 bytes), and
``xla_peak_bytes`` where the runtime reports its own peak (XLA:CPU's leaves out the temp
allocation: it is about ``argument_bytes``); ``gflops_per_step`` (XLA's cost analysis,
recomputation included) and ``compile_s``. The analysis is the compiling backend's:
XLA:CPU's buffer assignment, fusion and bfloat16 handling (it converts bfloat16
convolutions to float32) differ from XLA:GPU's and TPU's, so CPU numbers estimate a GPU's,
which ``bench/gpu.py`` measures.
"""

from __future__ import annotations

import argparse
import time

import jax

from jaxsemiseg import config as config_lib
from jaxsemiseg import parallel

import _records  # pylint: disable=g-bad-import-order
import _step_builder  # pylint: disable=g-bad-import-order

# name -> (compute dtype, remat).
SETTINGS = {
    "f32": ("float32", False),
    "bf16": ("bfloat16", False),
    "f32+remat": ("float32", True),
    "bf16+remat": ("bfloat16", True),
}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", default="unimatch")
  parser.add_argument("--model", default="deeplabv3plus", choices=config_lib.MODEL_NAMES)
  parser.add_argument("--backbone", default="resnet101", help="DeepLabV3+ backbone.")
  parser.add_argument("--width", type=int, default=16, help="UNet width.")
  parser.add_argument("--size", type=int, default=321, help="Square crop.")
  parser.add_argument("--batch", type=int, default=8, help="Labeled images per device.")
  parser.add_argument("--unlabeled-batch", type=int, default=None,
                      help="Unlabeled images per view and device (default: --batch).")
  parser.add_argument("--classes", type=int, default=21)
  # UniMatch's optimizer; AdamW would add one more float32 copy of the parameters.
  parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
  parser.add_argument("--settings", default=",".join(SETTINGS),
                      help=f"Comma-separated, from {list(SETTINGS)}.")
  parser.add_argument("--output", default="bench/memory.jsonl",
                      help="JSONL file the lines are appended to; '' = print only.")
  args = parser.parse_args(argv)
  args.settings = args.settings.split(",")
  unknown = sorted(set(args.settings) - set(SETTINGS))
  if unknown:
    parser.error(f"--settings {unknown} unknown; expected names from {list(SETTINGS)}.")
  return args


def measure(args, setting: str) -> dict:
  """Compiles the step of one setting; returns its result line as a dict."""
  dtype, remat = SETTINGS[setting]
  config = _step_builder.make_config(
      method=args.method, model=args.model, size=args.size, batch=args.batch,
      unlabeled_batch=args.unlabeled_batch, width=args.width, backbone=args.backbone,
      dtype=dtype, remat=remat, optimizer=args.optimizer)
  mesh = parallel.make_mesh(1)
  run, step = _step_builder.build(config, num_classes=args.classes, mesh=mesh, abstract=True)
  batch = _step_builder.abstract_batch(
      config, num_views=_step_builder.num_unlabeled_views(run.method), mesh=mesh)
  start = time.perf_counter()
  compiled = step.lower(run.state, batch, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  return {
      "setting": setting, "method": args.method, "model": args.model,
      "backbone": args.backbone if args.model == "deeplabv3plus" else None,
      "width": args.width if args.model == "unet" else None,
      "size": args.size, "batch": config.batch_size,
      "unlabeled_batch": config.unlabeled_batch_size, "classes": args.classes,
      "optimizer": args.optimizer, "dtype": dtype, "remat": remat,
      **_step_builder.memory_analysis(compiled),
      "gflops_per_step": round(_step_builder.step_flops(compiled) / 1e9, 1),
      "compile_s": round(compile_s, 1),
      "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def main(argv=None):
  args = _parse(argv)
  for setting in args.settings:
    _records.print_and_append(measure(args, setting), args.output)


if __name__ == "__main__":
  main()
