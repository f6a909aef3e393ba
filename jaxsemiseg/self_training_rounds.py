"""Offline self-training rounds, ST and ST++ (LiheYoung/ST-PlusPlus ``main.py``).

Every round is an ordinary :func:`train.train_and_evaluate` run in ``<workdir>/round_<k>``
and retrains from scratch (its seed is ``config.seed + k``):

- round 0, the **teacher**, trains on the labeled images only (method ``supervised``);
- after round ``k``, its final model labels (part of) the unlabeled pool with test-time
  augmentation into ``<workdir>/pseudo_labels/round_<k>/<id>.png``;
- each later round, a **student**, trains with method ``pseudo_label`` on the labeled
  images and the pseudo-labeled ones.

ST: student ``k`` trains on the whole pool labeled by round ``k - 1``.
ST++: the teacher also keeps snapshots at 1/3 and 2/3 of its steps; each unlabeled image's
stability (the mean mIoU of the snapshots' predictions with the final model's) ranks the
pool, and its more stable half is "reliable". Student 1 trains on the reliable half
labeled by the teacher; it then labels the unreliable half, and student 2 trains on all.

The reference labels with its best checkpoint on the validation set; here each round's
final model labels, since the loop keeps no best checkpoint (and choosing one by validation
mIoU would tune on the validation labels).

A rerun with the same workdir skips completed rounds (those with ``final_metrics.json``),
reuses the ranking and every pseudo-label already written (files appear atomically), and
resumes the current round from its checkpoint; a SIGTERM stops a round as the loop does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import urllib.parse
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image
from tqdm import tqdm

from jaxsemiseg import checkpoint as checkpoint_lib
from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import evaluate as evaluate_lib
from jaxsemiseg import inference, parallel, train, visualize
from jaxsemiseg.data import pipeline
from jaxsemiseg.data.source import IGNORE_INDEX, SegmentationSource
from jaxsemiseg.methods import pseudo_label, supervised

METHOD = "pseudo_label"
PSEUDO_LABEL_DIR = "pseudo_labels"
STABILITY_FILE = "stability.json"
SETTINGS_FILE = "pseudo_label_settings.json"
SNAPSHOT_DIR = "snapshots"
FINAL_METRICS_FILE = "final_metrics.json"


def round_dir(workdir: str, index: int) -> str:
  """The workdir of round ``index`` (0 = the teacher)."""
  return os.path.join(workdir, f"round_{index}")


def final_round(config: ml_collections.ConfigDict,
                workdir: str) -> tuple[ml_collections.ConfigDict, str]:
  """The last round's config and workdir: its model is the result (eval and predict)."""
  index = len(pseudo_label.round_steps(config)) - 1
  return round_config(config, index), round_dir(workdir, index)


def round_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
  """The config of round ``index``: its steps and seed; the teacher is supervised.

  Every round sees ``batch_size + unlabeled_batch_size`` images per step (ST++ trains
  every stage at batch 16): the teacher all labeled, a student split as the two sizes say.
  The rounds run in one process that is already set up for several hosts (if asked), so
  their configs do not initialise ``jax.distributed`` again.
  """
  result = ml_collections.ConfigDict(config.to_dict())
  result.num_steps = pseudo_label.round_steps(config)[index]
  result.seed = config.seed + index
  result.distributed.enabled = False
  if index == 0:
    result.method = "supervised"
    result.supervised = supervised.default_config()
    result.batch_size = config.batch_size + config.unlabeled_batch_size
  return result


def snapshot_steps(num_steps: int) -> tuple[int, int]:
  """ST++'s teacher checkpoints besides the final one: ``E // 3`` and ``2 E // 3``."""
  return num_steps // 3, 2 * num_steps // 3


def train_any_method(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates a run of any method: the rounds for ``METHOD``, else one run.

  What ``main.py --mode=train`` and ``bench/accuracy.py`` call; returns what
  :func:`train_rounds` or ``train.train_and_evaluate`` returns.
  """
  if config.method == METHOD:
    return train_rounds(config, workdir)
  return train.train_and_evaluate(config, workdir)


def train_rounds(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) every round of ``config.pseudo_label`` in ``workdir``.

  Returns:
    The last round's final validation metrics (as ``train.train_and_evaluate``), or the
    preemption dict of the round a SIGTERM stopped.

  Raises:
    ValueError: on a bad config, an empty unlabeled pool, or a workdir started with other
      pseudo-label settings.
  """
  config_lib.validate_config(config)
  if config.method != METHOD:
    raise ValueError(f"config.method={config.method!r}; the rounds driver runs {METHOD!r}.")
  parallel.maybe_initialize_distributed(config)
  os.makedirs(workdir, exist_ok=True)
  _check_settings(config, workdir)
  finished = _final_metrics(final_round(config, workdir)[1])
  if finished is not None:
    return finished
  datasets = data_lib.load_datasets(config, workdir=workdir)
  if not len(datasets.unlabeled):
    raise ValueError(
        "The unlabeled pool is empty (every training image is labeled); pseudo_label needs "
        "unlabeled images: lower config.dataset.labeled_fraction or num_labeled.")
  num_rounds = len(pseudo_label.round_steps(config))
  _announce(f"round 0/{num_rounds - 1}: teacher on {len(datasets.labeled)} labeled images")
  results = _train_teacher(config, workdir, datasets)
  if results.get("preempted"):
    return results
  if config.pseudo_label.variant == "st++":
    reliable, unreliable = _stability_ranking(config, workdir, datasets.unlabeled)
    plans = [{0: reliable}, {0: reliable, 1: unreliable}]
  else:
    plans = [{index - 1: list(datasets.unlabeled.ids)} for index in range(1, num_rounds)]
  for index, labels_by_round in enumerate(plans, start=1):
    _announce(f"round {index}/{num_rounds - 1}: student on {len(datasets.labeled)} labeled "
              f"+ {sum(map(len, labels_by_round.values()))} pseudo-labeled images")
    results = _train_student(config, workdir, index, datasets, labels_by_round)
    if results.get("preempted"):
      return results
  return results


def _train_teacher(config: ml_collections.ConfigDict, workdir: str,
                   datasets: data_lib.Datasets) -> dict:
  directory = round_dir(workdir, 0)
  teacher_config = round_config(config, 0)
  finished = _final_metrics(directory)
  if finished is not None:
    return finished
  if config.pseudo_label.variant != "st++":
    return train.train_and_evaluate(teacher_config, directory, datasets=datasets)
  steps = snapshot_steps(teacher_config.num_steps)
  with checkpoint_lib.Checkpointer(os.path.join(directory, SNAPSHOT_DIR),
                                   keep=len(steps)) as snapshots:

    def keep_snapshot(step: int, state: Any) -> None:
      if step in steps and step not in snapshots.all_steps():
        snapshots.save(step, state)
        # On disk before any later checkpoint, so a resumed teacher never lacks it.
        snapshots.wait()

    return train.train_and_evaluate(teacher_config, directory, datasets=datasets,
                                    on_step=keep_snapshot)


def _train_student(config: ml_collections.ConfigDict, workdir: str, index: int,
                   datasets: data_lib.Datasets, labels_by_round: dict[int, list[str]]) -> dict:
  """Round ``index`` on the labeled images plus ``{labeling round: pool ids}``."""
  directory = round_dir(workdir, index)
  finished = _final_metrics(directory)
  if finished is not None:
    return finished
  paths = {}
  for labeler, ids in labels_by_round.items():
    _write_pseudo_labels(config, workdir, labeler, ids, datasets.unlabeled)
    paths.update({example_id: label_path(workdir, labeler, example_id) for example_id in ids})
  pool = pseudo_labeled_source(datasets.unlabeled, paths)
  return train.train_and_evaluate(round_config(config, index), directory,
                                  datasets=dataclasses.replace(datasets, unlabeled=pool))


def pseudo_labeled_source(pool: SegmentationSource,
                          label_paths: dict[str, str]) -> SegmentationSource:
  """The pool images named by ``label_paths`` (id -> mask PNG), with those masks as labels."""
  subset = pool.subset(list(label_paths))

  def load(index: int) -> dict:
    example = subset.load(index)
    with Image.open(label_paths[example["id"]]) as mask:
      return {**example, "label": np.asarray(mask, np.uint8)}

  return dataclasses.replace(subset, name=f"{pool.name} (pseudo-labeled)", load=load)


def _stability_ranking(config: ml_collections.ConfigDict, workdir: str,
                       pool: SegmentationSource) -> tuple[list[str], list[str]]:
  """ST++'s ``select_reliable``: ``(reliable, unreliable)`` ids, computed once per workdir."""
  path = os.path.join(workdir, PSEUDO_LABEL_DIR, STABILITY_FILE)
  if not os.path.exists(path):
    directory = round_dir(workdir, 0)
    run, _ = inference.restore_run(round_config(config, 0), directory)
    steps = snapshot_steps(run.config.num_steps)
    with checkpoint_lib.Checkpointer(os.path.join(directory, SNAPSHOT_DIR),
                                     keep=len(steps)) as snapshots:
      missing = sorted(set(steps) - set(snapshots.all_steps()))
      if missing:
        raise FileNotFoundError(
            f"ST++'s teacher snapshots {missing} are missing from {snapshots.directory}; "
            f"delete {directory} to train the teacher again.")
      states = [snapshots.restore(run.state, step=step)[0] for step in steps] + [run.state]
    states = tuple(state.replace(opt_state=None) for state in states)
    predict = _make_probs_fn(run)

    def plain_prediction(state: Any, images: jax.Array) -> jax.Array:
      # ST++ ranks with single-view predictions (no TTA).
      return jnp.argmax(pseudo_label.tta_probabilities(
          functools.partial(predict, state), images, scales=(1.0,), flip=False,
          size_multiple=inference.SIZE_MULTIPLE), axis=-1)

    def scores(states: tuple, batch: dict) -> jax.Array:
      stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
      # lax.map, not vmap: one compiled forward pass, without the grouped convolutions that
      # vmapped weights turn into (slow on XLA:CPU).
      predictions = jax.lax.map(lambda state: plain_prediction(state, batch["image"]), stacked)
      return pseudo_label.stability_scores(predictions, batch["label"] != IGNORE_INDEX,
                                           num_classes=run.num_classes)

    by_index = dict(_map_pool(scores, states, pool, run, desc="stability"))
    by_id = {example_id: float(by_index[i]) for i, example_id in enumerate(pool.ids)}
    reliable, unreliable = pseudo_label.split_reliable(list(by_id), list(by_id.values()))
    _write_json_atomically(path, {
        "reliable": reliable, "unreliable": unreliable,
        "stability": {example_id: by_id[example_id] for example_id in reliable + unreliable}})
    _barrier("stability")
  with open(path, encoding="utf-8") as f:
    ranking = json.load(f)
  return ranking["reliable"], ranking["unreliable"]


def _write_pseudo_labels(config: ml_collections.ConfigDict, workdir: str, labeler: int,
                         ids: Sequence[str], pool: SegmentationSource) -> None:
  """Labels the ``ids`` of ``pool`` that have no mask yet with round ``labeler``'s model."""
  _barrier("pseudo-labels-start")
  missing = [i for i in ids if not os.path.exists(label_path(workdir, labeler, i))]
  if not missing:
    return
  run, _ = inference.restore_run(round_config(config, labeler), round_dir(workdir, labeler))
  settings = config.pseudo_label
  predict = _make_probs_fn(run)

  def label(state: Any, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    valid = batch["label"] != IGNORE_INDEX
    probs = pseudo_label.tta_probabilities(
        functools.partial(predict, state), batch["image"], scales=tuple(settings.tta_scales),
        flip=settings.tta_flip, size_multiple=inference.SIZE_MULTIPLE)
    labels = pseudo_label.confident_labels(probs, valid,
                                           threshold=settings.confidence_threshold)
    return labels, valid.any(axis=2).sum(axis=1), valid.any(axis=1).sum(axis=1)

  for index, (labels, height, width) in _map_pool(
      label, run.state, pool.subset(missing), run, desc=f"pseudo-labels of round {labeler}"):
    if jax.process_index() == 0:
      _save_mask_atomically(label_path(workdir, labeler, missing[index]),
                            labels[:height, :width])
  _barrier("pseudo-labels-end")


def _make_probs_fn(run: train.Run) -> Callable:
  """``probs(state, images)`` as validation predicts (the method's predictor, eval mode)."""
  return evaluate_lib.make_probs_fn(train.predict_fn_for(run), num_classes=run.num_classes,
                                    mode=run.config.eval_mode,
                                    window=run.config.dataset.crop_size)


def _map_pool(fn: Callable, first_arg: Any, source: SegmentationSource, run: train.Run, *,
              desc: str) -> Iterator[tuple[int, Any]]:
  """Yields ``(index, per-example outputs)`` of jitted ``fn(first_arg, batch)`` over ``source``.

  Batches are the validation batches of ``config.eval_batch_size`` images padded as
  validation pads them; an all-0 label marks each image's real pixels (padding is 255).
  ``fn``'s outputs have a leading batch axis and come back to every process.
  """
  config = run.config
  parallel.check_batch_size(config.eval_batch_size, run.mesh, name="eval_batch_size")

  def load(index: int) -> dict:
    example = source.load(index)
    return {**example, "label": np.zeros(example["image"].shape[:2], np.uint8)}

  marked = dataclasses.replace(source, load=load)
  step = jax.jit(fn, in_shardings=(parallel.replicated_sharding(run.mesh),
                                   parallel.batch_sharding(run.mesh)),
                 out_shardings=parallel.replicated_sharding(run.mesh))
  batch_size = config.eval_batch_size
  with pipeline.eval_batches(marked, batch_size=batch_size,
                             pad_to=config.dataset.eval_pad_to or None,
                             process_index=jax.process_index(),
                             process_count=jax.process_count()) as batches:
    for number, batch in enumerate(tqdm(
        batches, total=-(-len(source) // batch_size), desc=desc, leave=False,
        disable=not (config.progress_bar and jax.process_index() == 0))):
      outputs = multihost_utils.process_allgather(
          step(first_arg, parallel.to_global_batch(batch, run.mesh)), tiled=True)
      first = number * batch_size
      for slot in range(min(batch_size, len(source) - first)):
        yield first + slot, jax.tree.map(lambda x, s=slot: x[s], outputs)


def label_path(workdir: str, labeler: int, example_id: str) -> str:
  """The PNG of ``example_id``'s pseudo-label made by round ``labeler``'s model."""
  return os.path.join(workdir, PSEUDO_LABEL_DIR, f"round_{labeler}",
                      urllib.parse.quote(example_id, safe="") + ".png")


def _save_mask_atomically(path: str, mask: np.ndarray) -> None:
  # A crash mid-write leaves a file in .partial, never a truncated mask at `path`.
  partial = os.path.join(os.path.dirname(path), ".partial", os.path.basename(path))
  visualize.save_mask_png(partial, mask)
  os.replace(partial, path)


def _write_json_atomically(path: str, value: dict) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".partial", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".partial", path)


def _final_metrics(directory: str) -> dict | None:
  """A completed round's final metrics (the loop writes them last), else None."""
  path = os.path.join(directory, FINAL_METRICS_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _check_settings(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the settings that shape the rounds' files; a rerun must keep them."""
  settings = config.pseudo_label
  current = {"variant": settings.variant,
             "round_steps": list(pseudo_label.round_steps(config)),
             "confidence_threshold": settings.confidence_threshold,
             "tta_scales": list(settings.tta_scales), "tta_flip": settings.tta_flip}
  path = os.path.join(workdir, SETTINGS_FILE)
  if not os.path.exists(path):
    _write_json_atomically(path, current)
    return
  with open(path, encoding="utf-8") as f:
    recorded = json.load(f)
  changed = [f"config.pseudo_label.{key}={value!r} (recorded: {recorded.get(key)!r})"
             for key, value in current.items() if recorded.get(key) != value]
  if changed:
    raise ValueError(
        f"{workdir!r} holds rounds and pseudo-labels made with other settings ({path}): "
        f"{'; '.join(changed)}. Use a fresh --workdir, or the recorded settings to resume "
        "(round_steps defaults to config.num_steps per round).")


def _announce(text: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(text)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
