"""Tests for jaxsemiseg.models.group_norm and the UNet block built on it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.models import group_norm, unet


def _reference(x, conv_bias, scale, bias, groups):
  """The same layers written with Flax: bias add, nn.GroupNorm, ReLU."""
  norm = nn.GroupNorm(num_groups=groups, epsilon=1e-5)
  return jax.nn.relu(norm.apply({"params": {"scale": scale, "bias": bias}}, x + conv_bias))


def _inputs(shape, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  c = shape[-1]
  # An offset and a spread per channel, so the group statistics are far from 0 and 1, and
  # a bias that puts some outputs below zero, so the ReLU masks a part of them.
  x = (jax.random.normal(keys[0], shape) * jax.random.uniform(keys[1], (c,), minval=0.5,
                                                               maxval=3.0) + 2.0)
  return (x, jax.random.normal(keys[2], (c,)), jax.random.normal(keys[3], (c,)),
          0.5 * jax.random.normal(keys[4], (c,)))


@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 8), 4), ((3, 4, 4, 6), 1),
                                           ((1, 3, 7, 4), 4)])
def test_group_norm_relu_values_and_gradients_equal_flax(shape, groups):
  args = _inputs(shape)
  cotangent = jax.random.normal(jax.random.key(9), shape)
  fused = lambda *a: jnp.sum(group_norm.group_norm_relu(*a, groups, 1e-5) * cotangent)
  reference = lambda *a: jnp.sum(_reference(*a, groups) * cotangent)
  out = group_norm.group_norm_relu(*args, groups, 1e-5)
  np.testing.assert_allclose(out, _reference(*args, groups), rtol=1e-5, atol=1e-5)
  assert 0.1 < float(jnp.mean(out == 0)) < 0.9
  grads = jax.grad(fused, argnums=(0, 1, 2, 3))(*args)
  reference_grads = jax.grad(reference, argnums=(0, 1, 2, 3))(*args)
  for name, got, want in zip(["x", "conv_bias", "scale", "bias"], grads, reference_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_group_norm_relu_in_bfloat16_keeps_float32_statistics():
  x, conv_bias, scale, bias = _inputs((2, 4, 4, 8))
  out = group_norm.group_norm_relu(x.astype(jnp.bfloat16), conv_bias, scale, bias, 2, 1e-5)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32),
                             _reference(x.astype(jnp.bfloat16).astype(jnp.float32), conv_bias,
                                        scale, bias, 2), rtol=2e-2, atol=2e-2)
  grad_x = jax.grad(lambda x: jnp.sum(group_norm.group_norm_relu(
      x, conv_bias, scale, bias, 2, 1e-5).astype(jnp.float32)))(x.astype(jnp.bfloat16))
  assert grad_x.dtype == jnp.bfloat16


class _FlaxLayersBlock(nn.Module):
  """The UNet block as it was written before the fused op: separate Flax layers."""

  features: int
  groups: int

  @nn.compact
  def __call__(self, x):
    for index in range(2):
      x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{index}")(x)
      x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, name=f"norm{index}")(x)
      x = nn.relu(x)
    return x


def test_unet_block_has_the_flax_layers_parameters_and_outputs():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  block, reference = unet.ConvGroupNormBlock(8, groups=4), _FlaxLayersBlock(8, groups=4)
  params = block.init(jax.random.key(1), x)["params"]
  reference_params = reference.init(jax.random.key(1), x)["params"]
  # Same tree (tree.map raises otherwise), shapes and initial values: old checkpoints and
  # seeds are unchanged.
  jax.tree.map(np.testing.assert_array_equal, params, reference_params)
  # Non-trivial norms and conv biases, so every parameter matters.
  params = jax.tree.map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  np.testing.assert_allclose(block.apply({"params": params}, x),
                             reference.apply({"params": params}, x), rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(block.apply({"params": p}, x) ** 2))(params)
  reference_grads = jax.grad(lambda p: jnp.sum(reference.apply({"params": p}, x) ** 2))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads,
               reference_grads)
