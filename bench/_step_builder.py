"""One method's jitted train step as training builds it, for the step benchmarks.

``bench/speed.py`` (CPU timing), ``bench/memory.py`` (XLA's memory analysis, compile only)
and ``bench/gpu.py`` (accelerator timing, MFU and peak memory) share these pieces: a config
from a few knobs, the run and its step (``train.build_run`` and ``parallel.compile_step``
on a one-device mesh, so what is measured is what ``train.py`` runs), a batch shaped like
the input pipeline's, real or abstract, and XLA's FLOP count of a compiled step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxsemiseg import config as config_lib
from jaxsemiseg import parallel, train


def make_config(*, method: str, model: str = "unet", size: int = 64, batch: int = 8,
                unlabeled_batch: int | None = None, width: int = 16, dropout: float = 0.0,
                backbone: str = "resnet50", dtype: str = "float32", remat: bool = False,
                optimizer: str = "adamw") -> ml_collections.ConfigDict:
  """A validated config for one benchmark setting.

  Args:
    method: a registered method name.
    model: "unet" or "deeplabv3plus".
    size: the square crop.
    batch: labeled images per step.
    unlabeled_batch: unlabeled images per view and step; ``None`` = ``batch``.
    width: UNet width.
    dropout: UNet dropout rate (UA-MT's teacher needs one > 0).
    backbone: DeepLabV3+ backbone.
    dtype: the model's compute dtype, "float32" or "bfloat16".
    remat: rematerialise the backbone's blocks.
    optimizer: "adamw" or "sgd".

  Returns:
    The config.

  Raises:
    ValueError: a value ``config.validate_config`` rejects.
  """
  config = config_lib.base_config(method)
  config.model.update(name=model, dtype=dtype, remat=remat)
  config.model.unet.update(width=width, dropout_rate=dropout)
  config.model.deeplabv3plus.backbone = backbone
  config.optimizer.name = optimizer
  config.dataset.crop_size = size
  config.batch_size = batch
  config.unlabeled_batch_size = batch if unlabeled_batch is None else unlabeled_batch
  config_lib.validate_config(config)
  return config


# Methods whose step reads a pseudo-labeled batch (``image_p``, ``label_p``: the batches of
# their own ``train_batches``) instead of unlabeled views.
PSEUDO_LABELED_METHODS = ("pseudo_label",)


def num_unlabeled_views(method: Any) -> int:
  """How many unlabeled batches (``image_u``, ``image_u2``, ...) ``method``'s step reads."""
  if not getattr(method, "USES_UNLABELED", False):
    return 0
  return getattr(method, "NUM_UNLABELED_VIEWS", 1)


def _batch_specs(config: ml_collections.ConfigDict, num_views: int) -> dict:
  """``{key: (shape, dtype)}`` of a batch from the input pipeline.

  Methods in ``PSEUDO_LABELED_METHODS`` get a pseudo-labeled batch (``image_p``,
  ``label_p``) of ``config.unlabeled_batch_size`` images in place of unlabeled views.
  """
  size = config.dataset.crop_size
  specs = {"image": ((config.batch_size, size, size, 3), np.float32),
           "label": ((config.batch_size, size, size), np.int32)}
  if config.method in PSEUDO_LABELED_METHODS:
    specs["image_p"] = ((config.unlabeled_batch_size, size, size, 3), np.float32)
    specs["label_p"] = ((config.unlabeled_batch_size, size, size), np.int32)
    return specs
  for view in range(1, num_views + 1):
    suffix = "" if view == 1 else str(view)
    specs[f"image_u{suffix}"] = ((config.unlabeled_batch_size, size, size, 3), np.float32)
    specs[f"valid_u{suffix}"] = ((config.unlabeled_batch_size, size, size), np.bool_)
  return specs


def random_batch(seed: int, config: ml_collections.ConfigDict, *, num_classes: int,
                 num_views: int) -> dict[str, np.ndarray]:
  """A host batch of random images in [0, 1], labels in ``[0, num_classes)``, all valid."""
  rng = np.random.default_rng(seed)
  batch = {}
  for key, (shape, dtype) in _batch_specs(config, num_views).items():
    if dtype == np.int32:
      batch[key] = rng.integers(0, num_classes, shape).astype(dtype)
    elif dtype == np.bool_:
      batch[key] = np.ones(shape, dtype)
    else:
      batch[key] = rng.random(shape, dtype)
  return batch


def abstract_batch(config: ml_collections.ConfigDict, *, num_views: int,
                   mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch's shapes, dtypes and shardings, to lower a step without any data."""
  sharding = parallel.batch_sharding(mesh)
  return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for key, (shape, dtype) in _batch_specs(config, num_views).items()}


def build(config: ml_collections.ConfigDict, *, num_classes: int, mesh,
          abstract: bool = False) -> tuple[train.Run, Any]:
  """The run and its jitted (not yet compiled) train step, as ``train.py`` builds them.

  Args:
    config: the run's config.
    num_classes: classes of the segmenter.
    mesh: the device mesh (``parallel.make_mesh``).
    abstract: give the run an abstract state (``jax.ShapeDtypeStruct`` leaves) instead of
      initialising one, so a large model's step can be lowered and compiled without
      allocating it.

  Returns:
    ``(run, step)``; ``step.lower(run.state, batch, rng).compile()`` compiles it.
  """
  if abstract:
    # build_run traced by eval_shape: the model, optimizer and method it creates are plain
    # Python objects; only its state comes back abstract.
    runs = []

    def init_state():
      runs.append(train.build_run(config, num_classes=num_classes, mesh=mesh,
                                  load_pretrained=False))
      return runs[0].state

    state = jax.eval_shape(init_state)
    run = dataclasses.replace(runs[0], state=state)
  else:
    run = train.build_run(config, num_classes=num_classes, mesh=mesh, load_pretrained=False)
  step = parallel.compile_step(run.method.make_train_step(run.model, run.tx, config), mesh)
  return run, step


def step_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled step by XLA's cost analysis (0 where it has none).

  Rematerialised computations are counted each time they run, so with ``remat`` this is
  the hardware's FLOP count, not the model's.
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def memory_analysis(compiled: Any) -> dict[str, float]:
  """XLA's buffer assignment of a compiled step, in bytes, and the peak in GB (1e9 bytes).

  ``peak_bytes = argument + output + temp - alias``: the inputs (state and batch), the
  outputs and the step's scratch space are live at once, except that a donated state is
  aliased with the new one and counted once. ``xla_peak_bytes`` is the peak XLA reports
  itself where the runtime has one (newer jaxlibs).
  """
  stats = compiled.memory_analysis()
  result = {f"{name}_bytes": int(getattr(stats, f"{name}_size_in_bytes"))
            for name in ("argument", "output", "temp", "alias")}
  result["peak_bytes"] = (result["argument_bytes"] + result["output_bytes"]
                          + result["temp_bytes"] - result["alias_bytes"])
  result["peak_gb"] = round(result["peak_bytes"] / 1e9, 2)
  xla_peak = int(getattr(stats, "peak_memory_in_bytes", 0))
  if xla_peak:
    result["xla_peak_bytes"] = xla_peak
  return result
