r"""``jax.vmap`` against sequential calls: ensemble train steps and MC Dropout inference.

Two measurements on the default device, each the compiled vmapped computation against the
same single-model computation compiled once and called once per member or pass:

  ensemble_step  K (``--members``) differently initialised models, one supervised train
                 step each (forward, backward, optimizer update; labeled CE): ``jax.vmap``
                 of the step over the stacked states in one jit (what
                 ``methods.ensemble_self_training`` runs), against the jitted single-model
                 step called K times in a row;
  mc_dropout     T (``--samples``) MC Dropout passes, ``uncertainty.mc_dropout`` (one vmap
                 over dropout keys), against the jitted stochastic forward called T times.

Issue #4's target: the vmapped version no slower (ratio = vmapped / sequential <= 1).
Default: UNet-S (width 16, dropout 0.5 so the passes differ) at 64x64, batch 8, the bundled
dataset's class count. Each time is the median of ``--repeats`` timed calls after one
warm-up call; the JSON line is printed and appended to ``--output``.

  python bench/vmap_speed.py
  python bench/vmap_speed.py --model=deeplabv3plus --size=321 --batch=8
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import optax
from absl import app, flags

from jaxsemiseg import config as config_lib
from jaxsemiseg import models, uncertainty
from jaxsemiseg.data import bundled
from jaxsemiseg.methods import supervised

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accuracy  # pylint: disable=g-import-not-at-top,wrong-import-position

_MEMBERS = flags.DEFINE_integer("members", 4, "Ensemble members K.")
_SAMPLES = flags.DEFINE_integer("samples", 8, "MC Dropout passes T.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per batch.")
_SIZE = flags.DEFINE_integer("size", 64, "Image side in pixels.")
_MODEL = flags.DEFINE_enum("model", "unet", list(config_lib.MODEL_NAMES), "Model.")
_WIDTH = flags.DEFINE_integer("width", 16, "UNet width (16 = UNet-S).")
_BACKBONE = flags.DEFINE_string("backbone", "resnet50", "DeepLabV3+ backbone.")
_DROPOUT = flags.DEFINE_float("dropout", 0.5, "Dropout rate on the classifier input.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(os.path.dirname(os.path.abspath(__file__)), "vmap_speed.jsonl"),
    "JSON-lines file the result is appended to.")


def _model():
  """The model of the flags, built as the training loop builds it."""
  settings = config_lib.base_config().model[_MODEL.value].to_dict()
  if _MODEL.value == "unet":
    settings["width"] = _WIDTH.value
  else:
    settings["backbone"] = _BACKBONE.value
  settings["dropout_rate"] = _DROPOUT.value
  return models.create_model(dict(name=_MODEL.value, dtype="float32",
                                  num_classes=bundled.NUM_CLASSES, **settings))


def _median_seconds(fn: Callable[[], Any]) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def ensemble_step_seconds(model, batch: dict) -> tuple[float, float]:
  """``(vmapped, sequential)`` seconds of one train step of every member."""
  config = config_lib.base_config()
  tx = optax.sgd(1e-3, momentum=0.9)
  keys = jax.random.split(jax.random.key(0), _MEMBERS.value)
  stacked = jax.jit(jax.vmap(lambda key: supervised.init_state(key, model, tx, batch,
                                                               config)))(keys)
  step = supervised.make_train_step(model, tx, config)
  vmapped = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))
  single = jax.jit(step)
  members = [jax.tree.map(lambda x, k=k: x[k], stacked) for k in range(_MEMBERS.value)]

  def sequential():
    return [single(member, batch, key) for member, key in zip(members, keys)]

  return (_median_seconds(lambda: vmapped(stacked, batch, keys)),
          _median_seconds(sequential))


def mc_dropout_seconds(model, images: jax.Array) -> tuple[float, float]:
  """``(vmapped, sequential)`` seconds of T MC Dropout passes over ``images``."""
  variables = jax.jit(lambda key: model.init(key, images, train=False))(jax.random.key(1))
  apply_fn = uncertainty.make_mc_dropout_apply_fn(model)
  vmapped = jax.jit(lambda key: uncertainty.mc_dropout(key, apply_fn, variables, images,
                                                       num_samples=_SAMPLES.value))
  single = jax.jit(lambda key: jax.nn.softmax(apply_fn(variables, images, key), axis=-1))
  keys = jax.random.split(jax.random.key(2), _SAMPLES.value)

  def sequential():
    return [single(key) for key in keys]

  return _median_seconds(lambda: vmapped(jax.random.key(2))), _median_seconds(sequential)


def main(argv):
  del argv
  model = _model()
  image_key, label_key = jax.random.split(jax.random.key(3))
  shape = (_BATCH.value, _SIZE.value, _SIZE.value)
  batch = {"image": jax.random.uniform(image_key, shape + (3,)),
           "label": jax.random.randint(label_key, shape, 0, bundled.NUM_CLASSES)}
  ensemble_vmap, ensemble_sequential = ensemble_step_seconds(model, batch)
  mc_vmap, mc_sequential = mc_dropout_seconds(model, batch["image"])
  model_name = (f"unet(width={_WIDTH.value})" if _MODEL.value == "unet"
                else f"deeplabv3plus({_BACKBONE.value})")
  result = {
      "model": model_name, "dropout": _DROPOUT.value, "batch": _BATCH.value,
      "size": _SIZE.value, "members": _MEMBERS.value, "samples": _SAMPLES.value,
      "repeats": _REPEATS.value,
      "ensemble_step_vmap_s": round(ensemble_vmap, 5),
      "ensemble_step_sequential_s": round(ensemble_sequential, 5),
      "ensemble_step_ratio": round(ensemble_vmap / ensemble_sequential, 4),
      "mc_dropout_vmap_s": round(mc_vmap, 5),
      "mc_dropout_sequential_s": round(mc_sequential, 5),
      "mc_dropout_ratio": round(mc_vmap / mc_sequential, 4),
      "machine": accuracy.machine_description(), "jax": jax.__version__,
      "python": sys.version.split()[0],
      "command": "python bench/vmap_speed.py " + " ".join(sys.argv[1:]),
  }
  print(json.dumps(result), flush=True)
  with open(_OUTPUT.value, "a", encoding="utf-8") as f:
    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  app.run(main)
