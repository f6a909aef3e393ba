r"""Difficulty probe for the bundled dataset: train on generator settings without a rebuild.

Renders the train/validation images with ``bundled.generate_shapes(**knobs)`` in memory and
runs one ordinary training run on them, so generator knobs can be compared before they
become the dataset's defaults (which bumps the TFDS builder version). Prints one JSON line
with the validation mIoU and per-class IoU.

  python bench/shapes_difficulty.py --config=configs/default.py \
      --knobs='{"texture_strength": 0.0, "noise_std": 0.0}' --config.num_steps=1500
"""

from __future__ import annotations

import json
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from jaxsemiseg import data as data_lib
from jaxsemiseg import train
from jaxsemiseg.data import bundled

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config.", lock_config=True)
_KNOBS = flags.DEFINE_string("knobs", "{}", "JSON keyword arguments of generate_shapes.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "Training images to render.")
_NUM_VAL = flags.DEFINE_integer("num_val", 500, "Validation images to render.")


def main(argv):
  del argv
  config, knobs = _CONFIG.value, json.loads(_KNOBS.value)
  images, labels = bundled.generate_shapes(0, _NUM_TRAIN.value, **knobs)
  val_images, val_labels = bundled.generate_shapes(1, _NUM_VAL.value, **knobs)
  train_source = data_lib.source_from_arrays("train", images, labels,
                                             class_names=bundled.CLASS_NAMES)
  val_source = data_lib.source_from_arrays("validation", val_images, val_labels,
                                           class_names=bundled.CLASS_NAMES)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    datasets = data_lib.split_datasets(config, train_source, val_source)
    results = train.train_and_evaluate(config, workdir, datasets=datasets)
  print(json.dumps({
      "knobs": knobs, "steps": config.num_steps,
      "labeled_fraction": config.dataset.labeled_fraction,
      "miou": round(100 * float(results["miou"]), 2),
      "iou": dict(zip(bundled.CLASS_NAMES, [round(float(v), 3) for v in results["iou"]])),
      "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
