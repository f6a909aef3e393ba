"""Using a trained run: evaluate a checkpoint, or write predicted masks for a folder."""

from __future__ import annotations

import json
import os

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
from jaxsemiseg import metrics, parallel, train, visualize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Inputs are padded to a multiple of this so every encoder level halves evenly.
SIZE_MULTIPLE = 32


def restore_run(config: ml_collections.ConfigDict, workdir: str, *,
                step: int | None = None) -> tuple[train.Run, int]:
  """Rebuilds the run of ``workdir`` and restores checkpoint ``step`` (default: newest)."""
  config_lib.validate_config(config)
  info_path = os.path.join(workdir, train.RUN_INFO_FILE)
  if not os.path.exists(info_path):
    raise FileNotFoundError(
        f"{info_path} does not exist: {workdir!r} is not the workdir of a training run.")
  with open(info_path, encoding="utf-8") as f:
    info = json.load(f)
  run = train.build_run(config, num_classes=info["num_classes"],
                        mesh=parallel.make_mesh(config.num_devices))
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
  predict = jax.jit(evaluate_lib.make_predict_fn(run.model))
  window = config.dataset.crop_size
  written = []
  for name in tqdm(names, desc="predict", disable=not config.progress_bar):
    image = np.asarray(Image.open(os.path.join(input_dir, name)).convert("RGB"))
    padded = _pad_to_multiple(image.astype(np.float32) / 255.0, SIZE_MULTIPLE)[None]
    if config.eval_mode == "sliding":
      probs = metrics.predict_sliding_window(
          lambda x: predict(run.state, x), jnp.asarray(padded), window=window,
          num_classes=run.num_classes)
    else:
      probs = predict(run.state, padded)
    mask = np.asarray(jnp.argmax(probs[0], axis=-1))[:image.shape[0], :image.shape[1]]
    path = os.path.join(output_dir, os.path.splitext(name)[0] + ".png")
    visualize.save_mask_png(path, mask)
    written.append(path)
  return written


def _pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
  height, width = image.shape[:2]
  pad_h, pad_w = -height % multiple, -width % multiple
  return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
