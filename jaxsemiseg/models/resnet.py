"""ResNet backbones in the torchvision layout, with dilation for dense prediction.

The layout, padding and BatchNorm settings copy ``torchvision.models.resnet`` so that its
ImageNet weights convert one to one (``weights.torchvision_resnet_to_flax``): a 7x7
stride-2 stem, a 3x3 stride-2 max-pool, and four stages of BasicBlocks (ResNet-18/34) or
Bottlenecks (ResNet-50/101) with 64, 128, 256 and 512 base channels. Submodule names follow
torchvision's (``conv1``, ``bn1``, ``layer2_0/downsample_conv`` ...).

``replace_stride_with_dilation`` swaps the stride of stages 2-4 for dilation, as in
torchvision, which is how DeepLab reaches output stride 16 or 8. The backbone expects
ImageNet-normalised images (the segmentation models normalise before calling it).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsemiseg.models import layers


class _ResidualBlock(nn.Module):
  """The fields, layers and shortcut that BasicBlock and Bottleneck share.

  Attributes:
    channels: the block's base width; its output has ``expansion * channels``.
    strides: stride of the block's strided conv and of the projection shortcut.
    dilation: dilation of the block's 3x3 conv(s).
    dtype: computation dtype.
  """

  channels: int
  strides: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  expansion = 1

  def layer_factories(
      self, train: bool) -> tuple[Callable[..., nn.Conv], Callable[..., nn.BatchNorm]]:
    """``(conv, norm)``: torchvision-style conv and BatchNorm factories in this dtype."""
    return (functools.partial(layers.torch_conv, dtype=self.dtype),
            functools.partial(layers.torch_batch_norm, train=train, dtype=self.dtype))

  def add_shortcut(self, x: jax.Array, y: jax.Array, conv: Callable[..., nn.Conv],
                   norm: Callable[..., nn.BatchNorm]) -> jax.Array:
    """``relu(y + shortcut(x))``: identity, or torchvision's 1x1-conv + BN projection."""
    channels = self.expansion * self.channels
    if self.strides != 1 or x.shape[-1] != channels:
      x = norm(name="downsample_bn")(
          conv(channels, 1, strides=self.strides, name="downsample_conv")(x))
    return nn.relu(y + x)


class BasicBlock(_ResidualBlock):
  """Two 3x3 convs with a residual connection (ResNet-18/34).

  ``strides`` is the first conv's. torchvision refuses dilation in BasicBlocks; here both
  3x3 convs take the block's dilation so that ResNet-18/34 can also serve a dilated
  DeepLab.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv, norm = self.layer_factories(train)
    y = conv(self.channels, 3, strides=self.strides, dilation=self.dilation, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.channels, 3, dilation=self.dilation, name="conv2")(y)
    return self.add_shortcut(x, norm(name="bn2")(y), conv, norm)


class Bottleneck(_ResidualBlock):
  """1x1 reduce, 3x3 (strided, dilated), 1x1 expand x4, residual (ResNet-50/101).

  ``channels`` is the width of the 3x3 conv, which also takes ``strides`` (torchvision
  "v1.5") and ``dilation``.
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv, norm = self.layer_factories(train)
    y = nn.relu(norm(name="bn1")(conv(self.channels, 1, name="conv1")(x)))
    y = conv(self.channels, 3, strides=self.strides, dilation=self.dilation, name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = norm(name="bn3")(conv(self.expansion * self.channels, 1, name="conv3")(y))
    return self.add_shortcut(x, y, conv, norm)


_LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}

_DILATION_FOR_OUTPUT_STRIDE = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


def dilation_for_output_stride(output_stride: int) -> tuple[bool, bool, bool]:
  """The ``replace_stride_with_dilation`` flags that give ``output_stride``.

  Args:
    output_stride: 8, 16 or 32.

  Returns:
    Three flags for stages 2, 3 and 4.

  Raises:
    ValueError: any other output stride.
  """
  if output_stride not in _DILATION_FOR_OUTPUT_STRIDE:
    raise ValueError(
        f"output_stride must be one of {sorted(_DILATION_FOR_OUTPUT_STRIDE)}; "
        f"got {output_stride!r}.")
  return _DILATION_FOR_OUTPUT_STRIDE[output_stride]


def resnet_channels(depth: int) -> tuple[int, int, int, int]:
  """The channel counts of the four stage outputs of ResNet-``depth``.

  Raises:
    ValueError: ``depth`` is not 18, 34, 50 or 101.
  """
  if depth not in _LAYOUTS:
    raise ValueError(f"ResNet depth must be one of {sorted(_LAYOUTS)}; got {depth!r}.")
  block, _ = _LAYOUTS[depth]
  return tuple(64 * 2**stage * block.expansion for stage in range(4))


class ResNet(nn.Module):
  """A torchvision-layout ResNet that returns its four stage outputs.

  Attributes:
    depth: 18, 34, 50 or 101.
    replace_stride_with_dilation: for stages 2, 3, 4, whether to replace the stage's
      stride 2 by dilation (see ``dilation_for_output_stride``).
    dtype: computation dtype (parameters stay float32).
    remat: rematerialise every residual block ("gradient checkpointing", ``nn.remat``):
      the backward pass keeps only the blocks' inputs and recomputes what is inside
      them, about one more forward pass of the backbone for a fraction of its
      activation memory. Parameter names and values are the same either way.
  """

  depth: int = 50
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, ...]:
    """Runs the backbone.

    Args:
      x: ImageNet-normalised images ``[B, H, W, 3]``.
      train: use batch statistics in BatchNorm (and update the running averages, which
        needs ``mutable=["batch_stats"]``).

    Returns:
      ``(c1, c2, c3, c4)``: the stage outputs. ``c1`` is at stride 4 (the low-level
      features of DeepLabV3+); the others at stride 8, 16, 32 unless dilated. Spatial
      sizes are ``ceil(H / stride)``.

    Raises:
      ValueError: unknown depth or a malformed ``replace_stride_with_dilation``.
    """
    resnet_channels(self.depth)
    if len(self.replace_stride_with_dilation) != 3:
      raise ValueError(
          "replace_stride_with_dilation must hold 3 flags (stages 2, 3, 4); "
          f"got {self.replace_stride_with_dilation!r}.")
    block_cls, stage_sizes = _LAYOUTS[self.depth]
    if self.remat:
      # ``train`` picks BatchNorm's mode in Python, so it must stay static under
      # jax.checkpoint, which only takes positional static arguments (self is 0).
      block_cls = nn.remat(block_cls, static_argnums=(2,))
    x = layers.torch_conv(64, 7, strides=2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(layers.torch_batch_norm(train=train, dtype=self.dtype, name="bn1")(x))
    x = layers.max_pool(x, window=3, stride=2, padding=1)
    dilation = 1
    stage_outputs = []
    for stage, num_blocks in enumerate(stage_sizes):
      strides = 1 if stage == 0 else 2
      first_dilation = dilation
      if stage > 0 and self.replace_stride_with_dilation[stage - 1]:
        dilation *= strides
        strides = 1
      for index in range(num_blocks):
        # As in torchvision, the first block keeps the previous dilation: its 3x3 conv
        # is the one whose stride was removed.
        x = block_cls(
            64 * 2**stage,
            strides=strides if index == 0 else 1,
            dilation=first_dilation if index == 0 else dilation,
            dtype=self.dtype,
            name=f"layer{stage + 1}_{index}")(x, train)
      stage_outputs.append(x)
    return tuple(stage_outputs)
