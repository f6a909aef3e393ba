"""Using a trained run: evaluate a checkpoint, or write predicted masks for a folder."""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxsemiseg import checkpoint as checkpoint_lib
from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import evaluate as evaluate_lib
from jaxsemiseg import methods, parallel, train, uncertainty, visualize
from jaxsemiseg.data import folder
from jaxsemiseg.methods import cotraining

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Inputs are padded to a multiple of this so every encoder level halves evenly.
SIZE_MULTIPLE = 32


def restore_run(config: ml_collections.ConfigDict, workdir: str, *,
                step: int | None = None) -> tuple[train.Run, int]:
  """Rebuilds the run of ``workdir`` and restores checkpoint ``step`` (default: newest)."""
  config_lib.validate_config(config)
  parallel.maybe_initialize_distributed(config)
  info_path = os.path.join(workdir, train.RUN_INFO_FILE)
  if not os.path.exists(info_path):
    raise FileNotFoundError(
        f"{info_path} does not exist: {workdir!r} is not the workdir of a training run; "
        "point --workdir at one, or train there first (--mode=train).")
  with open(info_path, encoding="utf-8") as f:
    info = json.load(f)
  # The checkpoint holds every weight: the pretrained backbone file is not needed here.
  run = train.build_run(config, num_classes=info["num_classes"],
                        mesh=parallel.make_mesh(config.num_devices), load_pretrained=False)
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   keep=config.keep_checkpoints) as checkpointer:
    state, restored_step = checkpointer.restore(run.state, step=step, delete_unreadable=False)
  run.state = state
  return run, restored_step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        step: int | None = None) -> dict:
  """Evaluates a saved checkpoint on the validation split of ``config.dataset``.

  Besides the metrics of ``train.run_evaluation`` (mIoU, per-class IoU, ECE, ...), writes
  the reliability diagram of the validation pixels to
  ``<workdir>/reliability_step<N>.png``, whose path is ``results["reliability_diagram"]``.
  For a method with members (its module's ``evaluate_members``: co-training, ensembles)
  the metrics are those of the members' average, and ``results["member_miou"]`` maps
  ``member_<i>`` to each member's own mIoU (CPS's reference reports its first net).
  """
  run, restored_step = restore_run(config, workdir, step=step)
  val = data_lib.load_source(config.dataset, config.dataset.val_split)
  if not _has_members(run.method):
    results = train.run_evaluation(run, train.make_eval_step(run), val,
                                   progress=config.progress_bar)
  else:
    per_member = run.method.evaluate_members(run, val)
    results = {**per_member.pop("average"),
               "member_miou": {name: scores["miou"] for name, scores in per_member.items()}}
  diagram = os.path.join(workdir, f"reliability_step{restored_step}.png")
  if jax.process_index() == 0:
    uncertainty.reliability_diagram(results["calibration"], diagram,
                                    title=f"{config.method}, step {restored_step}")
  return {"step": restored_step, **results, "reliability_diagram": diagram}


def predict_folder(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Writes a colour-coded mask PNG for every image in ``config.predict.input_dir``.

  Each mask has the image's size, pixel values are class ids (palette PNG), and the file
  keeps the image's stem. With ``config.predict.uncertainty`` set, the masks come from the
  mean of ``config.predict.mc_samples`` MC Dropout passes (or of the members, for a method
  with members) and ``<stem>_<measure>.png`` holds the uncertainty heat-map (magma, 0 to
  log C). Returns the written paths.

  Raises:
    FileNotFoundError: no input directory or no images in it.
    ValueError: an uncertainty map is asked of a single model without dropout, or an input
      file is not an image.
  """
  measure = config.predict.uncertainty
  if (measure != "none" and not config.model[config.model.name].dropout_rate > 0
      and not _has_members(methods.get_method(config.method))):
    raise ValueError(
        f"config.predict.uncertainty={measure!r} needs MC Dropout, but "
        f"config.model.{config.model.name}.dropout_rate is 0: train with dropout (or use "
        "a method with members, e.g. ensemble_self_training).")
  input_dir, output_dir = config.predict.input_dir, config.predict.output_dir
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(
        f"config.predict.input_dir={input_dir!r} is not a directory of images.")
  names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir!r}.")
  for name in names:
    # Reads the header only: a file that is not an image fails here, before compiling.
    try:
      with Image.open(os.path.join(input_dir, name)):
        pass
    except (OSError, SyntaxError) as error:
      raise ValueError(
          f"{os.path.join(input_dir, name)!r} is not a readable image ({error}); remove it "
          f"from config.predict.input_dir.") from error
  output_dir = output_dir or os.path.join(workdir, "predictions")
  run, _ = restore_run(config, workdir)
  if measure == "none":
    predict = make_batch_predictor(run)
  else:
    predict = make_uncertainty_predictor(run, measure=measure,
                                         num_samples=config.predict.mc_samples, seed=config.seed)
  written = []
  for name in tqdm(names, desc="predict", disable=not config.progress_bar):
    image = folder.read_image(os.path.join(input_dir, name))
    outputs = predict(image[None].astype(np.float32) / 255.0)
    stem = os.path.join(output_dir, os.path.splitext(name)[0])
    paths = [stem + ".png"] + ([] if measure == "none" else [f"{stem}_{measure}.png"])
    if jax.process_index() == 0:
      if measure == "none":
        visualize.save_mask_png(paths[0], outputs[0])
      else:
        mask, heat = outputs
        visualize.save_mask_png(paths[0], mask[0])
        Image.fromarray(uncertainty.uncertainty_heatmap(
            heat[0], vmax=float(np.log(run.num_classes)))).save(paths[1])
    written.extend(paths)
  return written


def make_batch_predictor(run: train.Run) -> Callable[[np.ndarray], np.ndarray]:
  """A jitted ``predict(images) -> class ids`` with the model and state of ``run``.

  Predicts the way validation does: the method's own predictor where it has one
  (ensembles, co-training), and the sliding window when ``config.eval_mode`` is
  ``"sliding"``. Images of any size work: they are zero-padded at the bottom and right
  to a multiple of ``SIZE_MULTIPLE`` (so every encoder level halves evenly) and the
  padding is cut from the masks. One compilation per distinct padded batch shape.

  Args:
    run: a run with trained state, e.g. from :func:`restore_run`.

  Returns:
    ``predict(images)``: float32 ``[B, H, W, 3]`` images in [0, 1] to int32 numpy
    ``[B, H, W]`` class ids. It raises ValueError for images of another shape.
  """
  probs_fn = evaluate_lib.make_probs_fn(
      train.predict_fn_for(run), num_classes=run.num_classes, mode=run.config.eval_mode,
      window=run.config.dataset.crop_size)

  @jax.jit
  def class_ids(state, images):
    return jnp.argmax(probs_fn(state, images), axis=-1).astype(jnp.int32)

  return _on_padded_images(lambda images: class_ids(run.state, images))


def make_uncertainty_predictor(run: train.Run, *, measure: str, num_samples: int,
                               seed: int = 0) -> Callable[[np.ndarray], tuple]:
  """A jitted ``predict(images) -> (class ids, uncertainty map)`` from MC Dropout or members.

  For a method with members (co-training, ensembles: its module's ``evaluate_members``)
  the samples are the members' eval-mode predictions (``cotraining.member_probabilities``);
  otherwise ``num_samples`` passes with dropout on and BatchNorm in inference mode
  (:func:`uncertainty.mc_dropout`, whole images). The class is the argmax of the mean
  probability and the map is its predictive entropy or the mutual information (BALD)
  between the prediction and the member or dropout mask. Padding as
  :func:`make_batch_predictor`.

  Args:
    run: a run with trained state whose model has dropout, or whose method has members.
    measure: ``"entropy"`` or ``"mutual_information"``.
    num_samples: the number of MC Dropout passes T (not used for members).
    seed: seeds the dropout masks, so predictions are reproducible.

  Returns:
    ``predict(images)`` giving int32 ``[B, H, W]`` class ids and float32 ``[B, H, W]`` maps.
  """
  maps = {"entropy": uncertainty.predictive_entropy,
          "mutual_information": uncertainty.mutual_information}
  if measure not in maps:
    raise ValueError(f"measure={measure!r}; expected one of {sorted(maps)}.")
  apply_fn = uncertainty.make_mc_dropout_apply_fn(run.model)
  key = jax.random.key(seed)
  has_members = _has_members(run.method)

  @jax.jit
  def ids_and_map(state, images):
    if has_members:
      samples = cotraining.member_probabilities(run.model, state.params, state.batch_stats,
                                                images, member_map=run.config.member_map)
    else:
      samples = uncertainty.mc_dropout(key, apply_fn, state.variables, images,
                                       num_samples=num_samples)
    ids = jnp.argmax(samples.mean(axis=0), axis=-1).astype(jnp.int32)
    return ids, maps[measure](samples)

  return _on_padded_images(lambda images: ids_and_map(run.state, images))


def _has_members(method) -> bool:
  """Whether a method's model is several stacked members (co-training, ensembles)."""
  return getattr(method, "evaluate_members", None) is not None


def _on_padded_images(fn: Callable) -> Callable:
  """Wraps ``fn(padded images) -> arrays [B, H', W', ...]`` to take and return any size.

  Images are zero-padded at the bottom and right to a multiple of ``SIZE_MULTIPLE`` and
  the padding is cut from every output.
  """

  def predict(images: np.ndarray):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
          f"images have shape {images.shape}; expected [B, H, W, 3] float32 in [0, 1].")
    height, width = images.shape[1:3]
    padded = np.pad(images.astype(np.float32),
                    ((0, 0), (0, -height % SIZE_MULTIPLE), (0, -width % SIZE_MULTIPLE), (0, 0)))
    return jax.tree.map(lambda x: np.asarray(x)[:, :height, :width], fn(padded))

  return predict
