r"""One jit over stacked members against sequential calls: ensemble steps, MC Dropout.

Two measurements on the default device, each a compiled computation over all members or
passes against the same single-model computation compiled once and called once per member
or pass:

  ensemble_step  K (``--members``) differently initialised models, one supervised train
                 step each (forward, backward, optimizer update; labeled CE), over the
                 stacked states in one jit with ``stacked.stacked_map`` (what
                 ``methods.ensemble_self_training`` runs) in both its forms: ``"vmap"``
                 (``jax.vmap``, the GPU/TPU default) and ``"loop"`` (unrolled, the CPU
                 default), against the jitted single-model step called K times in a row;
                 the compile time of each form is reported too;
  mc_dropout     T (``--samples``) MC Dropout passes, ``uncertainty.mc_dropout`` (one vmap
                 over dropout keys), against the jitted stochastic forward called T times.

Issue #4's target: one jit over the members no slower than sequential calls (ratio =
stacked / sequential <= 1): ``ensemble_step_ratio`` for the vmap, ``ensemble_step_loop_ratio``
for the loop, ``mc_dropout_ratio``.
Default: UNet-S (width 16, dropout 0.5 so the passes differ) at 64x64, batch 8, the bundled
dataset's class count. Each time is the median of ``--repeats`` timed calls after one
warm-up call; the JSON line is printed and appended to ``--output``.

  python bench/vmap_speed.py
  python bench/vmap_speed.py --model=deeplabv3plus --size=321 --batch=8
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import jax
import optax
from absl import app, flags

from jaxsemiseg import config as config_lib
from jaxsemiseg import models, stacked, uncertainty
from jaxsemiseg.data import bundled
from jaxsemiseg.methods import supervised

import _records  # pylint: disable=g-bad-import-order

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


def ensemble_step_seconds(model, batch: dict) -> dict[str, float]:
  """Seconds of one train step of every member, by how the members run.

  Returns:
    ``"vmap"`` and ``"loop"`` (``stacked.stacked_map``'s forms) and ``"sequential"`` (one
    jitted single-member step per member), and the compile times ``"vmap_compile"`` and
    ``"loop_compile"``.
  """
  config = config_lib.base_config()
  tx = optax.sgd(1e-3, momentum=0.9)
  keys = jax.random.split(jax.random.key(0), _MEMBERS.value)
  states = jax.jit(jax.vmap(lambda key: supervised.init_state(key, model, tx, batch,
                                                              config)))(keys)
  step = supervised.make_train_step(model, tx, config)
  seconds = {}
  for member_map in ("vmap", "loop"):
    start = time.perf_counter()
    compiled = jax.jit(lambda s, b, k, member_map=member_map: stacked.stacked_map(
        step, s, b, k, in_axes=(0, None, 0), member_map=member_map)).lower(
            states, batch, keys).compile()
    seconds[f"{member_map}_compile"] = time.perf_counter() - start
    seconds[member_map] = _median_seconds(lambda c=compiled: c(states, batch, keys))
  single = jax.jit(step)
  members = [stacked.member(states, k) for k in range(_MEMBERS.value)]

  def sequential():
    return [single(member, batch, key) for member, key in zip(members, keys)]

  seconds["sequential"] = _median_seconds(sequential)
  return seconds


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
  ensemble = ensemble_step_seconds(model, batch)
  mc_vmap, mc_sequential = mc_dropout_seconds(model, batch["image"])
  model_name = (f"unet(width={_WIDTH.value})" if _MODEL.value == "unet"
                else f"deeplabv3plus({_BACKBONE.value})")
  _records.write_record({
      "model": model_name, "dropout": _DROPOUT.value, "batch": _BATCH.value,
      "size": _SIZE.value, "members": _MEMBERS.value, "samples": _SAMPLES.value,
      "repeats": _REPEATS.value,
      **{f"ensemble_step_{name}_s": round(value, 5) for name, value in ensemble.items()},
      "ensemble_step_ratio": round(ensemble["vmap"] / ensemble["sequential"], 4),
      "ensemble_step_loop_ratio": round(ensemble["loop"] / ensemble["sequential"], 4),
      "mc_dropout_vmap_s": round(mc_vmap, 5),
      "mc_dropout_sequential_s": round(mc_sequential, 5),
      "mc_dropout_ratio": round(mc_vmap / mc_sequential, 4),
  }, _OUTPUT.value, script="bench/vmap_speed.py")


if __name__ == "__main__":
  app.run(main)
