"""A small GroupNorm UNet, the Flax twin of "UNet-S" in ``bench/torch_unet_step.py``.

Layout for width ``w`` and depth ``d`` (the benchmark uses ``d = 3``):
  encoder level i < d: [3x3 conv (w * 2^i) -> GroupNorm -> ReLU] x 2, then 2x2 max-pool;
  bottleneck: the same block with w * 2^d channels;
  decoder level i = d-1 .. 0: 2x2 stride-2 transposed conv to w * 2^i, concat the level-i
    skip (upsampled map first, as in the torch model), then the block with w * 2^i;
  head: (dropout) -> 1x1 conv to the class count.
Parameter for parameter the same as the torch model; unlike it, this one standardises its
[0, 1] inputs with the ImageNet statistics, like every model in this package.

It has no BatchNorm, so ``variables`` holds only ``"params"``; passing
``mutable=["batch_stats"]`` anyway is harmless and returns an empty dict.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsemiseg.models import group_norm, layers


class Upsample2x2(nn.Module):
  """A 2x2 stride-2 transposed convolution as one matmul and a depth-to-space reshape.

  ``out[2i + a, 2j + b, o] = sum_c x[i, j, c] * kernel[a, b, c, o] + bias[o]``: the windows
  of a 2x2 stride-2 transposed conv never overlap, so each input pixel writes its own 2x2
  output patch. This is exact, and much faster to train on CPU than ``nn.ConvTranspose``,
  whose kernel gradient XLA lowers to a slow dilated convolution there (~100x slower at
  [8, 32, 32, 64] -> 32 channels on two cores; the forward passes cost about the same).

  The kernel is PyTorch's ``ConvTranspose2d`` weight ``[in, out, 2, 2]`` transposed to
  ``[2, 2, in, out]``, without a spatial flip. ``nn.ConvTranspose(kernel_size=(2, 2),
  strides=(2, 2))`` with its default ``transpose_kernel=False`` computes the same with the
  kernel flipped in both spatial axes (see tests/models/test_unet.py).

  Attributes:
    features: output channels.
    dtype: computation dtype.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Each output pixel sees exactly one input pixel, so the fan-in is the input channel
    # count alone (the 2x2 taps are output positions, not summed inputs).
    kernel = self.param(
        "kernel",
        nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                         in_axis=2, out_axis=3, batch_axis=(0, 1)),
        (2, 2, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    batch, height, width, _ = x.shape
    y = jnp.einsum("nhwc,abco->nhawbo", x, kernel)
    return y.reshape(batch, 2 * height, 2 * width, self.features) + bias


class ConvGroupNormBlock(nn.Module):
  """[3x3 conv -> GroupNorm -> ReLU] x 2, the torch benchmark's ``block``.

  The parameters are those of ``nn.Conv(features, (3, 3), name="conv{i}")`` and
  ``nn.GroupNorm(name="norm{i}")``; the bias add, GroupNorm and ReLU run as one
  ``group_norm.group_norm_relu``.

  Attributes:
    features: output channels of both convs.
    groups: GroupNorm groups.
    dtype: computation dtype.
  """

  features: int
  groups: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for index in range(2):
      # The parameters of nn.Conv(features, (3, 3)) and nn.GroupNorm, under their names.
      kernel, conv_bias = layers.ParamScope(
          {"kernel": (nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)),
           "bias": (nn.initializers.zeros, (self.features,))}, name=f"conv{index}")()
      scale, bias = layers.ParamScope(
          {"scale": (nn.initializers.ones, (self.features,)),
           "bias": (nn.initializers.zeros, (self.features,))}, name=f"norm{index}")()
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      x = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      # PyTorch's GroupNorm epsilon (Flax defaults to 1e-6).
      x = group_norm.group_norm_relu(x, conv_bias, scale, bias, self.groups, 1e-5)
    return x


class UNet(nn.Module):
  """GroupNorm UNet for semantic segmentation.

  ``apply(variables, images, train=..., mc_dropout=False, decoder_input_perturbation=None,
  rngs={"dropout": key, "perturbation": key})`` returns ``{"logits": [B, H, W, C] float32,
  "features": [B, H, W, width]}``; ``features`` is the last decoder block's output, the
  input of the classifier. ``H`` and ``W`` must be multiples of ``2**depth``.

  ``method=UNet.classify`` runs only the classifier on given (e.g. perturbed) features.

  Attributes:
    num_classes: output classes C.
    width: channels of the first level; level i has ``width * 2**i``.
    depth: number of pooling levels.
    groups: GroupNorm groups; every level's channel count must be divisible by it.
    dropout_rate: dropout on the classifier input, active when ``train or mc_dropout``.
    dtype: computation dtype (parameters stay float32, logits are returned as float32).
    remat: rematerialise the encoder blocks and the bottleneck (``nn.remat``): the
      backward pass recomputes their convs instead of keeping their activations.
      Parameter names and values are the same either way.
  """

  num_classes: int
  width: int = 16
  depth: int = 3
  groups: int = 4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    _check_config(self)
    encoder_block = nn.remat(ConvGroupNormBlock) if self.remat else ConvGroupNormBlock
    self.down = [encoder_block(self.width * 2**level, self.groups, self.dtype)
                 for level in range(self.depth)]
    self.bottleneck = encoder_block(self.width * 2**self.depth, self.groups, self.dtype)
    self.up = [Upsample2x2(self.width * 2**level, self.dtype) for level in range(self.depth)]
    self.up_block = [ConvGroupNormBlock(self.width * 2**level, self.groups, self.dtype)
                     for level in range(self.depth)]
    self.dropout = nn.Dropout(self.dropout_rate)
    # In float32 whatever the compute dtype: its bias gradient is a sum over every pixel,
    # which XLA:CPU accumulates in the compute dtype (bfloat16 stalls), and the logits
    # feed the losses in float32 anyway.
    self.classifier = nn.Conv(self.num_classes, (1, 1), dtype=jnp.float32)

  def __call__(self, images: jax.Array, *, train: bool, mc_dropout: bool = False,
               decoder_input_perturbation: layers.Perturbation | None = None
               ) -> dict[str, jax.Array]:
    """Segments a batch.

    Args:
      images: float ``[B, H, W, 3]`` in [0, 1]; ``H, W`` multiples of ``2**depth``.
      train: training mode (dropout on). The model has no BatchNorm, so this only
        switches dropout.
      mc_dropout: dropout on while in eval mode (MC Dropout).
      decoder_input_perturbation: ``fn(key, x) -> x`` applied to every tensor the decoder
        reads from the encoder (each skip and the bottleneck output), each call with a
        fresh key from the ``"perturbation"`` rng stream. This is UniMatch's feature
        perturbation site (its medical UNet drops channels of all encoder outputs). ``fn``
        may change the batch size, the same way at every site: e.g. return
        ``concat([x, dropout2d(key, x)])`` to decode clean and perturbed copies in one
        pass; the outputs then have that batch size.

    Returns:
      ``{"logits": float32 [B, H, W, C], "features": [B, H, W, width],
      "backbone_features": (every encoder level's block output, the bottleneck)}``, the
      encoder outputs taken before ``decoder_input_perturbation``.

    Raises:
      ValueError: images of the wrong shape or dtype, or sizes not divisible by
        ``2**depth``.
    """
    layers.check_images(images, model="UNet")
    multiple = 2**self.depth
    if images.shape[1] % multiple or images.shape[2] % multiple:
      raise ValueError(
          f"UNet(depth={self.depth}) needs image height and width divisible by "
          f"{multiple}; got {images.shape[1]}x{images.shape[2]}. Pad or crop the images.")
    x = layers.normalize_imagenet(images, self.dtype)
    skips = []
    for block in self.down:
      x = block(x)
      skips.append(x)
      x = layers.max_pool(x, window=2, stride=2)
    x = self.bottleneck(x)
    backbone_features = (*skips, x)
    if decoder_input_perturbation is not None:
      skips = [decoder_input_perturbation(self.make_rng("perturbation"), s) for s in skips]
      x = decoder_input_perturbation(self.make_rng("perturbation"), x)
    for level in reversed(range(self.depth)):
      x = self.up_block[level](jnp.concatenate([self.up[level](x), skips[level]], axis=-1))
    return {"logits": self.classify(x, train=train, mc_dropout=mc_dropout), "features": x,
            "backbone_features": backbone_features}

  def classify(self, features: jax.Array, *, train: bool, mc_dropout: bool = False,
               output_size: Sequence[int] | None = None) -> jax.Array:
    """The classifier alone: dropout (when active) and the 1x1 conv.

    Args:
      features: ``[B, H, W, width]``, e.g. perturbed copies of ``outputs["features"]``.
      train: dropout on.
      mc_dropout: dropout on in eval mode.
      output_size: accepted for the same call as DeepLabV3Plus; must be ``None`` or the
        features' own ``(H, W)``, since UNet features are at full resolution.

    Returns:
      float32 logits ``[B, H, W, C]``.

    Raises:
      ValueError: ``output_size`` differs from the features' size.
    """
    if output_size is not None and tuple(output_size) != tuple(features.shape[1:3]):
      raise ValueError(
          f"UNet.classify: output_size {tuple(output_size)} must equal the features' size "
          f"{tuple(features.shape[1:3])} (UNet features are at input resolution) or be None.")
    x = self.dropout(features, deterministic=not (train or mc_dropout))
    return self.classifier(x).astype(jnp.float32)


def _check_config(model: UNet) -> None:
  """Raises ValueError for hyper-parameters the UNet cannot be built with."""
  if model.num_classes < 1:
    raise ValueError(f"UNet: num_classes must be >= 1; got {model.num_classes}.")
  if model.depth < 1:
    raise ValueError(f"UNet: depth must be >= 1; got {model.depth}.")
  if model.groups < 1 or model.width < 1 or model.width % model.groups:
    raise ValueError(
        f"UNet: width must be a positive multiple of groups={model.groups} (GroupNorm "
        f"splits every level's channels into groups); got width={model.width}, "
        f"groups={model.groups}.")
  if not 0.0 <= model.dropout_rate < 1.0:
    raise ValueError(f"UNet: dropout_rate must be in [0, 1); got {model.dropout_rate}.")
