"""Model variables as ``.npz`` files, and loading pretrained backbone weights.

The file format is one array per variable, keyed by its '/'-joined Flax path, e.g.
``params/backbone/conv1/kernel`` or ``batch_stats/backbone/layer1_0/bn1/mean``. It needs
nothing but numpy to read or write, so weights from any framework can be converted once.

Converting torchvision's ImageNet ResNet weights (one-off, on a machine with torch and
torchvision; neither is a dependency of this library)::

  import numpy as np
  import torchvision
  from jaxsemiseg.models import weights

  net = torchvision.models.resnet50(weights="IMAGENET1K_V2")  # or resnet18/34/101
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  arrays = weights.torchvision_resnet_to_flax(state)  # prefix="backbone"
  np.savez("resnet50_imagenet.npz", **arrays)

The mapping rule, applied by ``torchvision_resnet_to_flax``: ``layerS.B.`` becomes
``layerS_B/``, ``downsample.0`` / ``downsample.1`` become ``downsample_conv`` /
``downsample_bn``, other dots become '/'; a conv ``weight`` (OIHW) becomes ``kernel``
(HWIO); BatchNorm ``weight`` / ``bias`` become ``params/.../scale`` / ``bias`` and
``running_mean`` / ``running_var`` become ``batch_stats/.../mean`` / ``var``; ``fc.*`` and
``num_batches_tracked`` are dropped. Then load it into a model::

  variables = model.init(key, images, train=False)
  variables = weights.load_pretrained_backbone(variables, "resnet50_imagenet.npz")

The same pair of functions moves a backbone between models (e.g. a self-supervised
pretraining run into a segmentation model with a different head): save the whole
pretrained model with ``save_variables_npz`` and load with the backbone's prefix; the
file's other keys are ignored.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from flax import traverse_util
from flax.core import frozen_dict
import jax
import jax.numpy as jnp
import numpy as np

_BN_STATS = {"running_mean": "mean", "running_var": "var"}


def save_variables_npz(variables: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes every array of ``variables`` to ``path`` under its '/'-joined Flax path.

  Args:
    variables: a Flax variables dict, e.g. ``{"params": ..., "batch_stats": ...}``.
    path: the ``.npz`` file to write (overwritten if it exists); its folder must exist.
  """
  flat = traverse_util.flatten_dict(frozen_dict.unfreeze(variables), sep="/")
  arrays = {key: np.asarray(jax.device_get(value)) for key, value in flat.items()}
  # Writing through a file object stops numpy from appending ".npz" to other suffixes.
  with open(path, "wb") as file:
    np.savez(file, **arrays)


def load_pretrained_backbone(variables: Mapping[str, Any], path: str | os.PathLike, *,
                             prefix: str = "backbone",
                             stacked: bool = False) -> dict[str, Any]:
  """Returns ``variables`` with the ``prefix`` submodule's arrays replaced from ``path``.

  Every variable of the model under ``<collection>/<prefix>/`` (in every collection:
  params and batch_stats) must be in the file with the same shape; keys outside the prefix
  are ignored, so a file saved from a whole model can seed the backbone of another. Arrays
  are cast to the dtype of the variable they replace.

  With ``stacked``, ``variables`` are N models stacked on a leading member axis
  (co-training and ensembles, ``cotraining.init_members``), and every member's backbone
  gets the file's arrays, as CPS's two nets both start from the same ImageNet weights;
  what lies outside the prefix (the heads) keeps each member's own initialisation.

  Args:
    variables: the model's variables (e.g. from ``model.init``).
    path: an ``.npz`` file as written by ``save_variables_npz`` or
      ``torchvision_resnet_to_flax``.
    prefix: the '/'-joined path of the submodule to load, below the collection name
      (``"backbone"`` for DeepLabV3Plus); ``""`` loads the whole model.
    stacked: whether every variable has a leading member axis that the file lacks.

  Returns:
    A new variables dict; ``variables`` is not modified.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: the file has no key under the prefix, a key under the prefix that the
      model lacks, a shape that differs from the model's, or lacks a model variable.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No pretrained weights at {os.fspath(path)!r}. Make the file once with "
        "jaxsemiseg.models.weights.torchvision_resnet_to_flax (see the recipe in the "
        "jaxsemiseg.models.weights docstring) or save_variables_npz, then pass its path.")
  flat = traverse_util.flatten_dict(frozen_dict.unfreeze(variables), sep="/")
  with np.load(path) as file:
    loaded = {key: file[key] for key in file.files if _under_prefix(key, prefix)}
  if not loaded:
    raise ValueError(
        f"{os.fspath(path)!r} has no key under prefix {prefix!r} (expected keys like "
        f"'params/{prefix}/...'); pass the prefix its keys use.")
  unknown = sorted(set(loaded) - set(flat))
  if unknown:
    raise ValueError(
        f"{os.fspath(path)!r} has {len(unknown)} key(s) the model does not have, e.g. "
        f"{unknown[0]!r} (shape {loaded[unknown[0]].shape}); check the backbone depth and "
        "the prefix.")
  for key, array in loaded.items():
    model_shape = tuple(flat[key].shape[1:] if stacked else flat[key].shape)
    if array.shape != model_shape:
      member = " per member" if stacked else ""
      raise ValueError(
          f"Shape mismatch for {key!r}: the file has {array.shape}, the model{member} "
          f"{model_shape}; check the backbone depth and the conversion.")
  missing = sorted(key for key in flat if _under_prefix(key, prefix) and key not in loaded)
  if missing:
    raise ValueError(
        f"{os.fspath(path)!r} lacks {len(missing)} of the model's variables under prefix "
        f"{prefix!r}, e.g. {missing[0]!r} (shape {tuple(flat[missing[0]].shape)}).")
  for key, array in loaded.items():
    flat[key] = jnp.broadcast_to(jnp.asarray(array, dtype=flat[key].dtype), flat[key].shape)
  return traverse_util.unflatten_dict(flat, sep="/")


def _under_prefix(key: str, prefix: str) -> bool:
  """Whether ``<collection>/<rest>`` has ``rest`` inside submodule ``prefix``."""
  _, _, rest = key.partition("/")
  return not prefix or rest.startswith(prefix.rstrip("/") + "/")


def torchvision_resnet_to_flax(state_dict: Mapping[str, np.ndarray], *,
                               prefix: str = "backbone") -> dict[str, np.ndarray]:
  """Renames and transposes a torchvision ResNet state dict for ``resnet.ResNet``.

  Args:
    state_dict: torchvision names to numpy arrays (``v.numpy()`` of the torch tensors).
    prefix: the submodule path the backbone has in the model (``"backbone"`` for
      DeepLabV3Plus, ``""`` for a bare ResNet).

  Returns:
    '/'-joined Flax paths to arrays, ready for ``np.savez``.

  Raises:
    ValueError: a key that is not part of a torchvision ResNet.
  """
  converted = {}
  for name, value in state_dict.items():
    if name.startswith("fc.") or name.endswith("num_batches_tracked"):
      continue
    module, _, leaf = name.rpartition(".")
    if not re.fullmatch(r"(conv1|bn1|layer[1-4]\.\d+\.(conv\d|bn\d|downsample\.[01]))", module):
      raise ValueError(
          f"torchvision_resnet_to_flax: {name!r} is not a torchvision ResNet parameter "
          "(expected conv1, bn1, layerS.B.* or fc.*).")
    path = re.sub(r"^layer(\d)\.(\d+)\.", r"layer\1_\2/", module)
    path = path.replace("downsample.0", "downsample_conv").replace("downsample.1",
                                                                   "downsample_bn")
    if prefix:
      path = f"{prefix.rstrip('/')}/{path}"
    value = np.asarray(value)
    if leaf in _BN_STATS:
      converted[f"batch_stats/{path}/{_BN_STATS[leaf]}"] = value
    elif leaf == "weight" and value.ndim == 4:
      converted[f"params/{path}/kernel"] = value.transpose(2, 3, 1, 0)
    elif leaf == "weight":
      converted[f"params/{path}/scale"] = value
    elif leaf == "bias":
      converted[f"params/{path}/bias"] = value
    else:
      raise ValueError(
          f"torchvision_resnet_to_flax: unexpected parameter {leaf!r} in {name!r}.")
  return converted
