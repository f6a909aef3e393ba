"""Shared model pieces: input checks, normalisation, PyTorch-style conv and BN, resizing.

The resize is the one the decoders use to bring stride-s maps back to a finer grid.
A strided convolution with centred padding (PyTorch's ``padding=(k - 1) // 2``, which the
backbones here copy) puts output pixel ``j`` over input pixel ``s * j``, so the exact
bilinear inverse samples the coarse map at ``i / s`` for fine pixel ``i``. For
``H = s * (h - 1) + 1`` (the 321 and 513 crops of the DeepLab literature) that is the same
grid as PyTorch's ``align_corners=True``, which UniMatch uses; for other sizes the last
``s - 1`` rows and columns replicate the edge instead of stretching the whole map.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's ImageNet statistics, so converted torchvision backbones see the inputs
# they were trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# One random perturbation of an encoder output, ``(key, features) -> features``: the type
# of the models' ``decoder_input_perturbation`` argument.
Perturbation = Callable[[jax.Array, jax.Array], jax.Array]

# torchvision's ResNets initialise their convolutions with kaiming_normal_(mode="fan_out").
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default for Conv2d weights, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)),
# which the modules no init loop reaches keep (UniMatch's DeepLabV3+ head).
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable:
  """PyTorch's default Conv2d bias init, ``U(+-1/sqrt(fan_in))``, as a Flax initializer."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_conv(features: int, kernel_size: int, *, strides: int = 1, dilation: int = 1,
               kernel_init: Callable = KAIMING_FAN_OUT, dtype: Any = jnp.float32,
               name: str | None = None) -> nn.Conv:
  """A bias-free conv padded like PyTorch's ``padding=dilation * (kernel_size - 1) // 2``.

  Flax's "SAME" pads stride-2 convs asymmetrically, which would shift every feature map by
  half a pixel relative to torchvision and break converted weights.

  Args:
    features: output channels.
    kernel_size: square kernel size.
    strides: stride in both axes.
    dilation: kernel dilation in both axes.
    kernel_init: the weights' initializer; by default torchvision's ResNet one.
    dtype: computation dtype.
    name: the submodule name.

  Returns:
    The ``nn.Conv`` module.
  """
  pad = dilation * (kernel_size - 1) // 2
  return nn.Conv(features, (kernel_size, kernel_size), strides=strides,
                 padding=((pad, pad), (pad, pad)), kernel_dilation=dilation, use_bias=False,
                 kernel_init=kernel_init, dtype=dtype, name=name)


class ParamScope(nn.Module):
  """A submodule that only declares parameters: ``{name: (initializer, shape)}``.

  Lets a fused layer own the parameters of the Flax layers it replaces, under their scope
  names, so that the parameter tree and the initial values stay the same.

  Attributes:
    specs: ``{parameter name: (initializer, shape)}``, declared in this order.
  """

  specs: dict

  @nn.compact
  def __call__(self) -> tuple[jax.Array, ...]:
    """Returns the parameters in the order of ``specs``."""
    return tuple(self.param(name, init, shape) for name, (init, shape) in self.specs.items())


def torch_batch_norm(*, train: bool, dtype: Any = jnp.float32,
                     name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults: eps 1e-5, momentum 0.1 (0.9 in Flax's convention).

  One difference remains: Flax updates the running variance with the biased batch
  variance, PyTorch with the unbiased one, a factor n / (n - 1) for n = B * H * W pixels.

  Args:
    train: normalise with batch statistics and update the running averages.
    dtype: computation dtype.
    name: the submodule name.

  Returns:
    The ``nn.BatchNorm`` module.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def max_pool(x: jax.Array, *, window: int, stride: int, padding: int = 0) -> jax.Array:
  """Max pooling as the elementwise maximum of ``window**2`` strided slices.

  Same values as ``nn.max_pool(x, (window,) * 2, strides=(stride,) * 2, padding=...)``
  (padding is -inf, as in PyTorch's ``MaxPool2d``), but its gradient is a chain of selects
  instead of XLA's ``select-and-scatter``, which XLA:CPU runs 20-60x slower: in the
  UNet-S train step the two poolings' backward cost ~35 ms of a ~130 ms step
  (bench/RESULTS.md). Gradients differ from select-and-scatter only at exact ties, which
  this splits evenly; after a ReLU the only likely ties are zeros, whose gradient the ReLU
  discards anyway.

  Args:
    x: ``[B, H, W, C]``.
    window: square window size.
    stride: step in both axes.
    padding: rows and columns of -inf added on every side.

  Returns:
    ``[B, (H + 2p - window) // stride + 1, (W + 2p - window) // stride + 1, C]``.

  Raises:
    ValueError: a window, stride or padding out of range.
  """
  if window < 1 or stride < 1 or not 0 <= padding < window:
    raise ValueError(f"max_pool: need window >= 1, stride >= 1 and 0 <= padding < window; "
                     f"got window={window}, stride={stride}, padding={padding}.")
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=-jnp.inf)
  height = (x.shape[1] - window) // stride + 1
  width = (x.shape[2] - window) // stride + 1
  pooled = None
  for i in range(window):
    for j in range(window):
      part = x[:, i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride]
      pooled = part if pooled is None else jnp.maximum(pooled, part)
  return pooled


def check_images(images: jax.Array, *, model: str) -> None:
  """Raises ValueError unless ``images`` is a float ``[B, H, W, 3]`` batch.

  Shapes and dtypes are static, so this runs on the host even under ``jax.jit``.

  Args:
    images: the model input.
    model: the model's name, for the message.

  Raises:
    ValueError: wrong rank, channel count or dtype.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"{model}: images must have shape [B, H, W, 3]; got shape {tuple(images.shape)}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"{model}: images must be floating point in [0, 1]; got dtype {images.dtype}. "
        "Convert uint8 images with `images.astype(jnp.float32) / 255`.")


def normalize_imagenet(images: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """Maps images in [0, 1] to ImageNet-standardised values.

  Args:
    images: float ``[..., 3]`` in [0, 1].
    dtype: the dtype of the result (the model's compute dtype).

  Returns:
    ``(images - mean) / std`` per channel, in ``dtype``.
  """
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def _stride_grid_weights(size_in: int, size_out: int, stride: int) -> np.ndarray:
  """The ``[size_out, size_in]`` linear-interpolation matrix sampling at ``i / stride``."""
  source = np.minimum(np.arange(size_out) / stride, size_in - 1)
  lower = np.floor(source).astype(np.int64)
  upper = np.minimum(lower + 1, size_in - 1)
  fraction = source - lower
  weights = np.zeros((size_out, size_in), np.float32)
  rows = np.arange(size_out)
  weights[rows, lower] += 1.0 - fraction
  weights[rows, upper] += fraction
  return weights


def upsample_bilinear(
    x: jax.Array, size: Sequence[int], *, stride: int) -> jax.Array:
  """Bilinear upsampling of a stride-``stride`` map onto a finer ``size`` grid.

  Fine pixel ``i`` samples the coarse map at ``min(i / stride, h - 1)`` (see the module
  docstring). It is two small matmuls, which run on the MXU/tensor cores.

  Args:
    x: ``[B, h, w, C]``.
    size: ``(H, W)`` of the result.
    stride: how many fine pixels one coarse pixel spans (e.g. 4 from stride-4 features to
      the input).

  Returns:
    ``[B, H, W, C]`` in the dtype of ``x``.

  Raises:
    ValueError: ``stride`` is not a positive integer.
  """
  if stride < 1:
    raise ValueError(f"upsample_bilinear: stride must be >= 1; got {stride}.")
  height, width = (int(s) for s in size)
  rows = jnp.asarray(_stride_grid_weights(x.shape[1], height, stride), x.dtype)
  cols = jnp.asarray(_stride_grid_weights(x.shape[2], width, stride), x.dtype)
  x = jnp.einsum("Hh,bhwc->bHwc", rows, x)
  return jnp.einsum("Ww,bhwc->bhWc", cols, x)
