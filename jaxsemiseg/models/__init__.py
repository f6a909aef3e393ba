"""Segmentation models: GroupNorm UNet and DeepLabV3+ on a torchvision-layout ResNet.

Every model is a Linen module with the same call::

  outputs, updates = model.apply(
      variables, images, train=True, mc_dropout=False,
      rngs={"dropout": key}, mutable=["batch_stats"])

``images`` are float32 ``[B, H, W, 3]`` in [0, 1] (the model standardises them with the
ImageNet statistics). ``outputs["logits"]`` is float32 ``[B, H, W, C]`` at input
resolution and ``outputs["features"]`` is the classifier's input.
``outputs["backbone_features"]`` is the tuple of the encoder's stage outputs, shallowest
first: the four ResNet stages (the last at the output stride), or the UNet's encoder levels
and its bottleneck (PseudoSeg reads its classification head, Grad-CAM and hypercolumn off
the last ones). Dropout is on when ``train or mc_dropout``; BatchNorm uses batch
statistics only when ``train``.

BatchNorm: whether a model has it is whether ``variables`` has a non-empty
``"batch_stats"`` collection. A train step can pass ``mutable=["batch_stats"]`` whenever
``train=True`` for every model: a model without BatchNorm (UNet) returns an empty dict.

Feature perturbations, two sites:
  - ``decoder_input_perturbation=fn`` (``fn(key, x) -> x``, keys from the
    ``"perturbation"`` rng stream) perturbs the encoder outputs the decoder reads,
    UniMatch's site; ``fn`` may return a larger batch (clean and perturbed copies).
  - ``model.apply(variables, features, train=..., output_size=(H, W),
    method=type(model).classify)`` runs only the classifier head on (perturbed) features,
    e.g. the K perturbed copies of CCT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxsemiseg.models.deeplab import DeepLabV3Plus
from jaxsemiseg.models.resnet import ResNet
from jaxsemiseg.models.unet import UNet
from jaxsemiseg.models.unet import Upsample2x2

MODELS = {"unet": UNet, "deeplabv3plus": DeepLabV3Plus}

__all__ = ["DeepLabV3Plus", "MODELS", "ResNet", "UNet", "Upsample2x2", "create_model"]


def create_model(config: Any) -> nn.Module:
  """Builds the model that ``config`` names.

  Args:
    config: an ``ml_collections.ConfigDict`` (or a dict) with ``name`` ("unet" or
      "deeplabv3plus") and that model's keyword arguments, e.g. ``num_classes``,
      ``width``, ``backbone``, ``output_stride``, ``dropout_rate``, ``remat``. ``dtype``
      may be a string such as "bfloat16"; lists become tuples.

  Returns:
    The (unbound) Linen module.

  Raises:
    ValueError: missing or unknown ``name``, a field the model does not take, or a
      missing required field.
  """
  fields = dict(config.items())
  name = fields.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"config.name must be one of {sorted(MODELS)}; got {name!r}.")
  model_cls = MODELS[name]
  arguments = [field for field in dataclasses.fields(model_cls)
               if field.name not in ("parent", "name")]
  accepted = {field.name for field in arguments}
  unknown = sorted(set(fields) - accepted)
  if unknown:
    raise ValueError(
        f"config field(s) {unknown} are not arguments of {model_cls.__name__}; "
        f"it takes {sorted(accepted)}.")
  required = sorted(field.name for field in arguments
                    if field.default is dataclasses.MISSING and field.name not in fields)
  if required:
    raise ValueError(f"config for {name!r} lacks required field(s) {required}.")
  if "dtype" in fields:
    fields["dtype"] = jnp.dtype(fields["dtype"])
  fields = {key: tuple(value) if isinstance(value, list) else value
            for key, value in fields.items()}
  return model_cls(**fields)
