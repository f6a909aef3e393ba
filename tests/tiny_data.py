"""A tiny image/mask folder dataset and a matching config for end-to-end tests."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
from PIL import Image

from jaxsemiseg import config as config_lib
from jaxsemiseg import parallel, train

SIZE = 16
NUM_CLASSES = 3


def write_split(root: str, split: str, count: int, seed: int) -> None:
  """Writes ``count`` images whose label is read off the colour: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
  os.makedirs(os.path.join(root, split, "masks"), exist_ok=True)
  for index in range(count):
    label = np.zeros((SIZE, SIZE), np.uint8)
    top, left = rng.integers(0, SIZE // 2, size=2)
    label[top:top + SIZE // 2, left:left + SIZE // 2] = 1 + index % 2
    colours = np.array([[20, 20, 20], [230, 40, 40], [40, 40, 230]], np.uint8)
    image = colours[label] + rng.integers(0, 20, (SIZE, SIZE, 3)).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(root, split, "images", f"{split}{index:03d}.png"))
    Image.fromarray(label).save(os.path.join(root, split, "masks", f"{split}{index:03d}.png"))


def write_dataset(root: str) -> str:
  write_split(root, "train", 16, seed=0)
  write_split(root, "val", 6, seed=1)
  return root


def tiny_config(root: str, **overrides):
  """A config that trains a width-4 UNet for 3 steps on the tiny dataset."""
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.root = root
  config.dataset.num_classes = NUM_CLASSES
  config.dataset.val_split = "val"
  config.dataset.crop_size = SIZE
  config.dataset.labeled_fraction = 0.5
  config.model.unet.width = 4
  config.batch_size = 4
  config.unlabeled_batch_size = 4
  config.num_steps = 3
  config.log_every = 1
  config.eval_every = 3
  config.checkpoint_every = 3
  config.eval_batch_size = 4
  config.progress_bar = False
  config.optimizer.learning_rate = 1e-2
  config.update_from_flattened_dict(overrides)
  return config


def load_config(name: str, arg=None):
  """``configs/<name>.py``'s ``get_config(arg)`` (the configs directory is not a package)."""
  path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def runs_on_one_and_four_devices(config, batch) -> dict:
  """``{devices: (run, compiled step, batch on the mesh)}`` for 1 and 4 devices."""
  runs = {}
  for devices in (1, 4):
    mesh = parallel.make_mesh(devices)
    run = train.build_run(config, num_classes=NUM_CLASSES, mesh=mesh)
    step = parallel.compile_step(run.method.make_train_step(run.model, run.tx, config), mesh)
    runs[devices] = (run, step, parallel.to_global_batch(batch, mesh))
  return runs
