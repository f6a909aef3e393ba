"""The method-agnostic training loop: data -> step -> eval -> checkpoint -> logs.

``train_and_evaluate(config, workdir)`` is the whole run; ``main.py`` and the notebooks
call it. Every method plugs in through its ``init_state`` / ``make_train_step``; the loop
does the rest the same way for 1 device, N devices or N hosts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxsemiseg import checkpoint as checkpoint_lib
from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import evaluate as evaluate_lib
from jaxsemiseg import methods, models, optim, parallel
from jaxsemiseg.data import pipeline
from jaxsemiseg.methods import common
from jaxsemiseg.metric_writer import MetricWriter

RUN_INFO_FILE = "run_info.json"


@dataclasses.dataclass
class Run:
  """What evaluation and prediction need from a configured run."""

  config: ml_collections.ConfigDict
  mesh: Any
  model: Any
  method: Any
  tx: Any
  schedule: Any
  state: Any
  num_classes: int


def build_run(config: ml_collections.ConfigDict, *, num_classes: int, mesh,
              load_pretrained: bool = True) -> Run:
  """Creates the model, optimizer and an initial replicated train state.

  The state is initialised inside jit with replicated output shardings, so it is born on
  the mesh (no host copy of the parameters). With ``load_pretrained``, backbone weights
  from ``config.model.pretrained_path`` are loaded here, before any checkpoint is restored.
  """
  model = models.create_model(_model_config(config, num_classes))
  method = methods.get_method(config.method)
  tx, schedule = optim.make_optimizer(config.optimizer, num_steps=config.num_steps)
  size = config.dataset.crop_size
  sample_batch = {
      "image": jnp.zeros((1, size, size, 3), jnp.float32),
      "label": jnp.zeros((1, size, size), jnp.int32),
      "image_u": jnp.zeros((1, size, size, 3), jnp.float32),
  }
  init = functools.partial(method.init_state, model=model, tx=tx, config=config)
  # An "rbg" key: a model init draws ~50 random tensors, and XLA:CPU takes ~4x longer to
  # compile them with the default threefry generator (about 30 s vs 8 s for the UNet).
  # The price: rbg bits differ between CPU, GPU and TPU, so the initial weights of a seed
  # depend on the platform (the data order, augmentations and step keys do not).
  init_rng = jax.random.key(config.seed, impl="rbg")
  state = jax.jit(
      lambda rng: init(rng, sample_batch=sample_batch),
      out_shardings=parallel.replicated_sharding(mesh))(init_rng)
  if load_pretrained and config.model.pretrained_path:
    load = getattr(method, "with_pretrained_backbone", common.with_pretrained_backbone)
    state = parallel.replicate(
        load(jax.device_get(state), config.model.pretrained_path, tx=tx), mesh)
  return Run(config=config, mesh=mesh, model=model, method=method, tx=tx,
             schedule=schedule, state=state, num_classes=num_classes)


def _model_config(config: ml_collections.ConfigDict,
                  num_classes: int) -> ml_collections.ConfigDict:
  name = config.model.name
  return ml_collections.ConfigDict({
      "name": name, "dtype": config.model.dtype, "remat": config.model.remat,
      "num_classes": num_classes,
      **config.model[name].to_dict()})


def predict_fn_for(run: Run) -> Any:
  """``predict(state, images) -> probabilities``: the method's own, else one forward pass."""
  make_predict_fn = getattr(run.method, "make_predict_fn", None)
  if make_predict_fn is not None:
    return make_predict_fn(run.model, run.config)
  return evaluate_lib.make_predict_fn(run.model)


def make_eval_step(run: Run) -> Any:
  """The jitted evaluation step for ``run`` (confusion matrix and ECE bins)."""
  step = evaluate_lib.make_eval_step(
      predict_fn_for(run), num_classes=run.num_classes, mode=run.config.eval_mode,
      window=run.config.dataset.crop_size)
  replicated = parallel.replicated_sharding(run.mesh)
  return jax.jit(step, in_shardings=(replicated, parallel.batch_sharding(run.mesh)),
                 out_shardings=replicated)


def run_evaluation(run: Run, eval_step, val_source, *, state=None, progress: bool = False) -> dict:
  """Evaluates ``state`` (default ``run.state``) on the whole validation source."""
  parallel.check_batch_size(run.config.eval_batch_size, run.mesh, name="eval_batch_size")
  num_batches = -(-len(val_source) // run.config.eval_batch_size)
  with pipeline.eval_batches(
      val_source, batch_size=run.config.eval_batch_size,
      pad_to=run.config.dataset.eval_pad_to or None, process_index=jax.process_index(),
      process_count=jax.process_count()) as batches:
    return evaluate_lib.evaluate(eval_step, run.state if state is None else state, batches,
                                 run.mesh, num_batches=num_batches, progress=progress)


class _StopOnSignal:
  """Turns SIGTERM (preemption) into a stop the loop takes between steps.

  With several processes the signal can reach them at different steps, while saving a
  checkpoint is collective: they agree (any process asked) only at steps where ``check``
  is set, so that all of them stop at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def should_stop(self, *, check: bool) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if not check:
      return False
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _last_good(last_saved: int | None, checkpointer) -> str:
  if last_saved is None:
    return "No checkpoint was saved yet in this run."
  return (f"The last good checkpoint (step {last_saved}) is kept in "
          f"{checkpointer.directory}; rerun with the same --workdir to resume from it.")


def _summarise(window: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(window)
  return {name: float(np.mean([m[name] for m in fetched])) for name in fetched[0]}


def _eval_scalars(results: dict, class_names) -> dict[str, float]:
  scalars = {f"val/{k}": v for k, v in results.items()
             if not isinstance(v, dict) and np.ndim(v) == 0}
  scalars.update({f"val/iou/{name}": iou for name, iou in zip(class_names, results["iou"])})
  return scalars


def _write_run_info(workdir: str, datasets: data_lib.Datasets) -> None:
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, RUN_INFO_FILE), "w", encoding="utf-8") as f:
    json.dump({"num_classes": datasets.num_classes,
               "class_names": list(datasets.class_names)}, f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       datasets: data_lib.Datasets | None = None,
                       on_step: Callable[[int, Any], None] | None = None) -> dict:
  """Trains ``config.method`` for ``config.num_steps`` steps, evaluating and checkpointing.

  ``datasets`` replaces the sources named by ``config.dataset`` (e.g. in-memory arrays
  through :func:`jaxsemiseg.data.source_from_arrays`); the split, augmentation and batch
  settings of ``config.dataset`` still apply. ``on_step(step, state)``, if given, runs
  after every train step, before the step's checkpoint (ST++ keeps snapshots with it).

  Resumes from the newest readable checkpoint in ``workdir`` if there is one. A SIGTERM
  saves a checkpoint at the current step and returns ``{"step": s, "preempted": True}``;
  a non-finite loss raises FloatingPointError and leaves the last good checkpoint in place.

  Returns:
    The final validation metrics (``miou``, per-class ``iou``, ...) plus ``step``, or the
    preemption dict above.
  """
  config_lib.validate_config(config)
  parallel.maybe_initialize_distributed(config)
  if jax.process_count() > 1 and not config.dataset.eval_pad_to:
    raise ValueError(
        f"config.dataset.eval_pad_to=0 with {jax.process_count()} processes: every process "
        "must build evaluation batches of one shape; set it to the largest validation image "
        "side (e.g. 512 for Pascal VOC).")
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.unlabeled_batch_size, mesh, name="unlabeled_batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, name="eval_batch_size")

  if datasets is None:
    datasets = data_lib.load_datasets(config, workdir=workdir)
  if config.dataset.check_labels and getattr(methods.get_method(config.method),
                                             "USES_UNLABELED", False):
    data_lib.check_readable(datasets.unlabeled)
  _write_run_info(workdir, datasets)
  run = build_run(config, num_classes=datasets.num_classes, mesh=mesh)
  state = run.state
  uses_unlabeled = getattr(run.method, "USES_UNLABELED", False)

  with contextlib.ExitStack() as stack:
    checkpointer = stack.enter_context(checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints))
    start_step = 0
    if checkpointer.latest_step() is not None:
      state, start_step = checkpointer.restore(state)
      logging.warning("Resumed from checkpoint %d in %s.", start_step, workdir)
    writer = MetricWriter(workdir, resumed_step=start_step)
    stack.callback(writer.close)
    # A method may build its own batches from the sources (pseudo_label: two streams).
    make_batches = getattr(run.method, "train_batches", pipeline.train_batches)
    batches = stack.enter_context(make_batches(
        datasets.labeled, datasets.unlabeled if uses_unlabeled else None,
        batch_size=config.batch_size, unlabeled_batch_size=config.unlabeled_batch_size,
        crop_size=config.dataset.crop_size, scale_range=tuple(config.dataset.scale_range),
        flip=config.dataset.flip, seed=config.seed, start_step=start_step,
        num_unlabeled_views=getattr(run.method, "NUM_UNLABELED_VIEWS", 1),
        process_index=jax.process_index(), process_count=jax.process_count()))
    stop = stack.enter_context(_StopOnSignal())
    bar = stack.enter_context(tqdm(
        total=config.num_steps, initial=start_step, desc="train", dynamic_ncols=True,
        disable=not (config.progress_bar and jax.process_index() == 0)))
    train_step = parallel.compile_step(
        run.method.make_train_step(run.model, run.tx, config), mesh)
    eval_step = make_eval_step(run)
    base_rng = jax.random.key(config.seed + 1)
    results: dict = {}
    window: list[dict] = []
    window_start, timed_steps = time.perf_counter(), 0
    last_saved = start_step if start_step else None
    for step in range(start_step + 1, config.num_steps + 1):
      batch = parallel.to_global_batch(next(batches), mesh)
      state, step_metrics = train_step(state, batch, jax.random.fold_in(base_rng, step))
      if on_step is not None:
        on_step(step, state)
      window.append(step_metrics)
      timed_steps += 1
      bar.update(1)

      if step % config.log_every == 0 or step == config.num_steps:
        scalars = _summarise(window)
        if not np.isfinite(scalars["loss"]):
          raise FloatingPointError(
              f"The training loss became {scalars['loss']} between steps {step - len(window)} "
              f"and {step}. {_last_good(last_saved, checkpointer)} Lower "
              "config.optimizer.learning_rate or enable config.optimizer.grad_clip_norm.")
        scalars["images_per_sec"] = (
            timed_steps * config.batch_size / (time.perf_counter() - window_start))
        # Update `step` used the schedule at optax's count step - 1.
        scalars["learning_rate"] = float(run.schedule(step - 1))
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_sec']:.0f}")
        window, window_start, timed_steps = [], time.perf_counter(), 0

      # Before evaluating: a preempted run has seconds to save, not an evaluation's time.
      stopping = stop.should_stop(check=step % config.log_every == 0)
      evaluate_now = (step % config.eval_every == 0 or step == config.num_steps) and not stopping
      if evaluate_now:
        results = run_evaluation(run, eval_step, datasets.val, state=state)
        writer.write_scalars(step, _eval_scalars(results, datasets.class_names))
        bar.write(f"step {step}: val mIoU {100 * results['miou']:.2f}")

      save_now = step % config.checkpoint_every == 0 or step == config.num_steps or stopping
      if save_now:
        # All of the state: a NaN in BatchNorm statistics, the optimizer or a teacher would
        # poison the resumed run as surely as one in the parameters.
        if not bool(_all_finite(state)):
          raise FloatingPointError(
              f"The train state (parameters, statistics, optimizer or method state) is not "
              f"finite at step {step}; not saving. {_last_good(last_saved, checkpointer)}")
        checkpointer.save(step, state)
        last_saved = step
      if stopping:
        logging.warning("SIGTERM: saved checkpoint %d; rerun with the same --workdir to resume.",
                        step)
        return {"step": step, "preempted": True}
      if evaluate_now or save_now:
        # Keep evaluation and checkpointing out of the throughput measurement.
        window_start, timed_steps = time.perf_counter(), 0

    if not results:
      results = run_evaluation(run, eval_step, datasets.val, state=state)
  final = {"step": config.num_steps, **results}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w", encoding="utf-8") as f:
      json.dump(_jsonable(final), f, indent=2)
  return final


def _jsonable(tree: dict) -> dict:
  return {k: _jsonable(v) if isinstance(v, dict) else
          np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v
          for k, v in tree.items()}
