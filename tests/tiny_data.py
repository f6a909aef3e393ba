"""A tiny image/mask folder dataset, a matching config and model, and step runners for tests."""

from __future__ import annotations

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from jaxsemiseg import config as config_lib
from jaxsemiseg import models, parallel, train

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
  config.dataset.update(dict(name="folder", root=root, num_classes=NUM_CLASSES,
                             val_split="val", crop_size=SIZE, labeled_fraction=0.5))
  config.model.unet.width = 4
  config.optimizer.learning_rate = 1e-2
  config.update(dict(batch_size=4, unlabeled_batch_size=4, num_steps=3, log_every=1,
                     eval_every=3, checkpoint_every=3, eval_batch_size=4, progress_bar=False))
  config.update_from_flattened_dict(overrides)
  return config


def tiny_unet() -> nn.Module:
  """A depth-1 width-4 UNet for NUM_CLASSES classes, without dropout."""
  return models.create_model(ml_collections.ConfigDict(dict(
      name="unet", dtype="float32", num_classes=NUM_CLASSES, width=4, depth=1, groups=4,
      dropout_rate=0.0)))


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


def copy_state(tree):
  """A copy of ``tree``'s arrays: compiled steps donate their state, a fixture's must live on."""
  return jax.tree.map(jnp.copy, tree)


def train_on_fixed_batch(step, state, batch, num_steps: int) -> tuple:
  """Runs ``step`` ``num_steps`` times on ``batch``, from a copy of ``state``.

  Step i draws from ``fold_in(key(0), i)``, as the loop folds in the step number.

  Returns:
    The last state and the list of each step's metrics, fetched to the host.
  """
  state = copy_state(state)
  history = []
  for i in range(num_steps):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(0), i))
    history.append(jax.device_get(metrics))
  return state, history
