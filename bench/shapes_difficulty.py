r"""Difficulty probe for the bundled dataset: train on generator settings without a rebuild.

Renders the train/validation images with ``bundled.generate_shapes(**knobs)`` in memory and
runs ordinary training runs on them, so generator knobs, models and budgets can be compared
before they become the dataset's defaults (which bumps the TFDS builder version). Each run
appends one JSON line: its setting, the final validation mIoU and per-class IoU, and the
learning curve (validation mIoU at every ``eval_every`` steps).

One run from flags:

  python bench/shapes_difficulty.py --config=configs/default.py \
      --knobs='{"texture_strength": 0.0, "noise_std": 0.0}' --config.num_steps=1500

A sweep: ``--settings`` names a JSON-lines file, one run per line,
``{"name": ..., "knobs": {...}, "config": {"num_steps": 5000, "model.unet.width": 32}}``
(dotted config keys override ``--config``). ``--shard=i --num_shards=n`` runs lines
``i, i + n, ...``, so n processes can share one accelerator; lines already finished in
``--output`` (by name) are skipped, so a stopped sweep resumes. SIGTERM ends the sweep after
writing the interrupted run's curve so far, marked ``"preempted": true``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from jaxsemiseg import data as data_lib
from jaxsemiseg import train
from jaxsemiseg.data import bundled

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config.", lock_config=True)
_KNOBS = flags.DEFINE_string("knobs", "{}", "JSON keyword arguments of generate_shapes.")
_SETTINGS = flags.DEFINE_string("settings", None, "JSON-lines file of runs (see docstring).")
_SHARD = flags.DEFINE_integer("shard", 0, "Run the settings lines i with i % num_shards == shard.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Processes sharing the settings file.")
_OUTPUT = flags.DEFINE_string("output", None, "Append each run's JSON line here too.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 2000, "Training images to render.")
_NUM_VAL = flags.DEFINE_integer("num_val", 500, "Validation images to render.")


def _override(config, dotted: dict):
  """A copy of ``config`` with ``{"a.b": value}`` overrides applied (types checked)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for key, value in dotted.items():
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      if leaf not in node:
        raise KeyError(f"setting overrides unknown config key {key!r}.")
      node[leaf] = value
  return config


def _learning_curve(workdir: str) -> list[list[float]]:
  """``[[step, val mIoU %], ...]`` from the run's metrics.jsonl."""
  curve = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if "val/miou" in record:
        curve.append([record["step"], round(100 * record["val/miou"], 2)])
  return curve


@functools.lru_cache(maxsize=2)
def _render(knobs_json: str):
  """Train and validation arrays for one knob setting; kept for the settings that reuse it."""
  knobs = json.loads(knobs_json)
  return (bundled.generate_shapes(0, _NUM_TRAIN.value, **knobs),
          bundled.generate_shapes(1, _NUM_VAL.value, **knobs))


def run_setting(config, setting: dict) -> dict:
  """Trains one setting on rendered images and returns its result line."""
  knobs = setting.get("knobs", {})
  config = _override(config, setting.get("config", {}))
  (images, labels), (val_images, val_labels) = _render(json.dumps(knobs, sort_keys=True))
  train_source = data_lib.source_from_arrays("train", images, labels,
                                             class_names=bundled.CLASS_NAMES)
  val_source = data_lib.source_from_arrays("validation", val_images, val_labels,
                                           class_names=bundled.CLASS_NAMES)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    datasets = data_lib.split_datasets(config, train_source, val_source)
    results = train.train_and_evaluate(config, workdir, datasets=datasets)
    curve = _learning_curve(workdir)
  line = {"name": setting.get("name", ""), "knobs": knobs, "config": setting.get("config", {}),
          "steps": results["step"], "labeled_fraction": config.dataset.labeled_fraction,
          "curve": curve, "seconds": round(time.perf_counter() - start)}
  if results.get("preempted"):
    # Stopped by SIGTERM (e.g. the sweep's time limit): keep the curve so far.
    return {**line, "preempted": True}
  return {**line, "miou": round(100 * float(results["miou"]), 2),
          "iou": dict(zip(bundled.CLASS_NAMES, [round(float(v), 3) for v in results["iou"]]))}


def main(argv):
  del argv
  if _SETTINGS.value:
    with open(_SETTINGS.value, encoding="utf-8") as f:
      settings = [json.loads(line) for line in f if line.strip()]
    settings = settings[_SHARD.value::_NUM_SHARDS.value]
  else:
    settings = [{"knobs": json.loads(_KNOBS.value)}]
  done = set()
  if _OUTPUT.value and os.path.exists(_OUTPUT.value):
    with open(_OUTPUT.value, encoding="utf-8") as f:
      finished = [json.loads(line) for line in f if line.strip()]
    done = {line["name"] for line in finished if not line.get("preempted")}
  for setting in settings:
    if setting.get("name") and setting["name"] in done:
      continue
    result = run_setting(_CONFIG.value, setting)
    print(json.dumps(result), flush=True)
    if _OUTPUT.value:
      with open(_OUTPUT.value, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    if result.get("preempted"):
      break


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
