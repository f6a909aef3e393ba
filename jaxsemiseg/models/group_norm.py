"""GroupNorm fused with the bias of the convolution before it and the ReLU after it.

``relu(group_norm(x + conv_bias) * scale + bias)`` is the UNet's (and the torch benchmark's)
``Conv2d -> GroupNorm -> ReLU``. Written as separate Flax layers, XLA materialises the
biased conv output, the centred input and the normalised output, and differentiates the
group statistics through reductions over ``[N, H, W, G, C/G]``, whose innermost axis is
only ``C/G`` wide. Here every large reduction runs over ``H, W`` with the channels
innermost, the group means are taken on ``[N, C]`` sums, the backward pass is the
closed-form GroupNorm gradient (one reduction pass and one element-wise pass), and the
input that is kept for it is the conv output itself. On a 2-core CPU this takes the UNet-S
train step from ~21.6 to ~23.7 steps/s (bench/RESULTS.md, "CPU speed against PyTorch").

Statistics are float32 whatever the input dtype (as in ``nn.GroupNorm``), with the same
variance, ``max(E[x^2] - E[x]^2, 0)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _group_mean(channel_sums: jax.Array, *, groups: int, count: int) -> jax.Array:
  """``[N, C]`` per-channel sums -> ``[N, 1, 1, C]``: each channel's group mean."""
  n, c = channel_sums.shape
  group = channel_sums.reshape(n, groups, c // groups).sum(axis=2, keepdims=True) / count
  return jnp.broadcast_to(group, (n, groups, c // groups)).reshape(n, 1, 1, c)


def _forward(x, conv_bias, scale, bias, groups, epsilon):
  _, h, w, c = x.shape
  pixels = h * w
  count = pixels * (c // groups)
  xf = x.astype(jnp.float32)
  # The conv bias enters the [N, C] sums, not the [N, H, W, C] tensor, so x + conv_bias is
  # never written out: sum(x + b) = sum(x) + HW b, sum((x + b)^2) = sum(x^2) + 2 b sum(x)
  # + HW b^2.
  raw_sum = jnp.sum(xf, axis=(1, 2))
  raw_sum_sq = jnp.sum(jnp.square(xf), axis=(1, 2))
  channel_sum = raw_sum + pixels * conv_bias
  mean = _group_mean(channel_sum, groups=groups, count=count)
  mean_sq = _group_mean(raw_sum_sq + 2 * conv_bias * raw_sum + pixels * jnp.square(conv_bias),
                        groups=groups, count=count)
  inv_std = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + epsilon)
  out = jnp.maximum((xf - (mean - conv_bias)) * (inv_std * scale) + bias, 0.0)
  return out.astype(x.dtype), (x, conv_bias, scale, bias, channel_sum, mean, inv_std)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def group_norm_relu(x: jax.Array, conv_bias: jax.Array, scale: jax.Array, bias: jax.Array,
                    groups: int, epsilon: float) -> jax.Array:
  """``relu(GroupNorm(x + conv_bias) * scale + bias)`` with a closed-form gradient.

  Args:
    x: ``[N, H, W, C]`` convolution output without its bias.
    conv_bias: ``[C]`` the convolution's bias.
    scale: ``[C]`` GroupNorm scale (gamma).
    bias: ``[C]`` GroupNorm bias (beta).
    groups: number of groups; must divide ``C``.
    epsilon: added to the group variance.

  Returns:
    ``[N, H, W, C]`` in ``x.dtype``.
  """
  return _forward(x, conv_bias, scale, bias, groups, epsilon)[0]


def _backward(groups, epsilon, residuals, grad_out):
  del epsilon
  x, conv_bias, scale, bias, channel_sum, mean, inv_std = residuals
  _, h, w, c = x.shape
  pixels = h * w
  count = pixels * (c // groups)
  normalized = (x.astype(jnp.float32) - (mean - conv_bias)) * inv_std
  grad_pre_relu = jnp.where(normalized * scale + bias > 0, grad_out.astype(jnp.float32), 0.0)
  sum_grad = jnp.sum(grad_pre_relu, axis=(1, 2))
  sum_grad_normalized = jnp.sum(grad_pre_relu * normalized, axis=(1, 2))
  # d loss / d normalized is grad_pre_relu * scale; its group mean and its group mean
  # against `normalized` are the two terms of the GroupNorm gradient.
  mean_grad = _group_mean(sum_grad * scale, groups=groups, count=count)
  mean_grad_normalized = _group_mean(sum_grad_normalized * scale, groups=groups, count=count)
  grad_x = inv_std * (grad_pre_relu * scale - mean_grad - normalized * mean_grad_normalized)
  # The conv bias gradient is grad_x summed over N, H, W, from the [N, C] sums alone:
  # sum_hw normalized = (channel_sum - HW mean) * inv_std.
  inv_std_c, mean_grad_c, mean_grad_normalized_c = (
      v[:, 0, 0, :] for v in (inv_std, mean_grad, mean_grad_normalized))
  sum_normalized = (channel_sum - pixels * mean[:, 0, 0, :]) * inv_std_c
  grad_conv_bias = jnp.sum(
      inv_std_c * (sum_grad * scale - pixels * mean_grad_c
                   - sum_normalized * mean_grad_normalized_c), axis=0)
  return (grad_x.astype(x.dtype), grad_conv_bias.astype(conv_bias.dtype),
          jnp.sum(sum_grad_normalized, axis=0).astype(scale.dtype),
          jnp.sum(sum_grad, axis=0).astype(bias.dtype))


group_norm_relu.defvjp(
    lambda x, conv_bias, scale, bias, groups, epsilon: _forward(
        x, conv_bias, scale, bias, groups, epsilon),
    _backward)
