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
from jaxsemiseg import parallel, train, visualize

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
        f"{info_path} does not exist: {workdir!r} is not the workdir of a training run.")
  with open(info_path, encoding="utf-8") as f:
    info = json.load(f)
  # The checkpoint holds every weight: the pretrained backbone file is not needed here.
  run = train.build_run(config, num_classes=info["num_classes"],
                        mesh=parallel.make_mesh(config.num_devices), load_pretrained=False)
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   keep=config.keep_checkpoints) as checkpointer:
    state, restored_step = checkpointer.restore(run.state, step=step)
  run.state = state
  return run, restored_step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        step: int | None = None) -> dict:
  """Evaluates a saved checkpoint on the validation split of ``config.dataset``."""
  run, restored_step = restore_run(config, workdir, step=step)
  val = data_lib.load_source(config.dataset, config.dataset.val_split)
  results = train.run_evaluation(run, train.make_eval_step(run), val,
                                 progress=config.progress_bar)
  return {"step": restored_step, **results}


def predict_folder(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Writes a colour-coded mask PNG for every image in ``config.predict.input_dir``.

  Each mask has the image's size, pixel values are class ids (palette PNG), and the file
  keeps the image's stem. Returns the written paths.
  """
  input_dir, output_dir = config.predict.input_dir, config.predict.output_dir
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(
        f"config.predict.input_dir={input_dir!r} is not a directory of images.")
  names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir!r}.")
  output_dir = output_dir or os.path.join(workdir, "predictions")
  run, _ = restore_run(config, workdir)
  predict = make_batch_predictor(run)
  written = []
  for name in tqdm(names, desc="predict", disable=not config.progress_bar):
    image = np.asarray(Image.open(os.path.join(input_dir, name)).convert("RGB"))
    mask = predict(image[None].astype(np.float32) / 255.0)[0]
    path = os.path.join(output_dir, os.path.splitext(name)[0] + ".png")
    if jax.process_index() == 0:
      visualize.save_mask_png(path, mask)
    written.append(path)
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

  def predict(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
          f"images have shape {images.shape}; expected [B, H, W, 3] float32 in [0, 1].")
    height, width = images.shape[1:3]
    padded = np.pad(images.astype(np.float32),
                    ((0, 0), (0, -height % SIZE_MULTIPLE), (0, -width % SIZE_MULTIPLE), (0, 0)))
    return np.asarray(class_ids(run.state, padded))[:, :height, :width]

  return predict
