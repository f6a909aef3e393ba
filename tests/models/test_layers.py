"""Tests for jaxsemiseg.models.layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.models import layers


def test_normalize_imagenet_standardises_each_channel():
  images = jnp.asarray([[[[0.485, 0.456, 0.406], [1.0, 0.0, 0.5]]]])
  out = np.asarray(layers.normalize_imagenet(images))
  np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(
      out[0, 0, 1], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
      rtol=1e-6)
  assert layers.normalize_imagenet(images, jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape, dtype, match", [
    ((2, 8, 8), jnp.float32, "shape"),
    ((2, 8, 8, 1), jnp.float32, "shape"),
    ((2, 8, 8, 3), jnp.uint8, "dtype uint8"),
])
def test_check_images_rejects_bad_batches(shape, dtype, match):
  with pytest.raises(ValueError, match=match):
    layers.check_images(jnp.zeros(shape, dtype), model="M")


def test_upsample_bilinear_samples_at_i_over_stride():
  x = jnp.asarray([0.0, 4.0]).reshape(1, 1, 2, 1)
  # W = stride * (w - 1) + 1: exact corner alignment.
  out = layers.upsample_bilinear(x, (1, 5), stride=4)
  np.testing.assert_allclose(out[0, 0, :, 0], [0, 1, 2, 3, 4], atol=1e-6)
  # W = stride * w: the last stride - 1 columns replicate the edge.
  out = layers.upsample_bilinear(x, (1, 8), stride=4)
  np.testing.assert_allclose(out[0, 0, :, 0], [0, 1, 2, 3, 4, 4, 4, 4], atol=1e-6)


def test_upsample_bilinear_is_separable_in_two_dims():
  x = jnp.asarray([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 2, 2, 1)
  out = layers.upsample_bilinear(x, (3, 3), stride=2)
  np.testing.assert_allclose(
      out[0, :, :, 0], [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]], atol=1e-6)


def test_upsample_bilinear_matches_align_corners_on_odd_crops():
  # PyTorch's align_corners=True maps output i to input i * (h - 1) / (H - 1); written
  # with jax.image.scale_and_translate (which uses half-pixel centres) for H = 4h - 3.
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
  height, width = 17, 9
  scale = jnp.asarray([(height - 1) / 4, (width - 1) / 2])
  expected = jax.image.scale_and_translate(
      x, (2, height, width, 4), (1, 2), scale, 0.5 - 0.5 * scale, "linear",
      antialias=False)
  out = layers.upsample_bilinear(x, (height, width), stride=4)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_torch_conv_centres_stride_two_outputs_on_even_inputs():
  # A kernel that copies its centre tap: with PyTorch padding, output j sits over input
  # 2j (Flax "SAME" would give input 2j + 1 for an even size).
  x = jnp.arange(36.0).reshape(1, 6, 6, 1)
  conv = layers.torch_conv(1, 3, strides=2)
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
  out = conv.apply({"params": {"kernel": kernel}}, x)
  np.testing.assert_array_equal(out, x[:, ::2, ::2])


def test_torch_batch_norm_uses_pytorch_momentum():
  x = jnp.arange(8.0).reshape(2, 2, 2, 1)  # mean 3.5
  norm = layers.torch_batch_norm(train=True)
  variables = norm.init(jax.random.key(0), x)
  _, updates = norm.apply(variables, x, mutable=["batch_stats"])
  # PyTorch momentum 0.1: new = 0.9 * old + 0.1 * batch statistic.
  np.testing.assert_allclose(updates["batch_stats"]["mean"], [0.35], rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], [0.9 + 0.1 * 5.25], rtol=1e-6)


@pytest.mark.parametrize("shape,window,stride,padding", [
    ((2, 8, 8, 3), 2, 2, 0), ((2, 9, 7, 3), 2, 2, 0), ((2, 17, 16, 3), 3, 2, 1)])
def test_max_pool_matches_flax_values_and_gradients(shape, window, stride, padding):
  x = jax.random.normal(jax.random.key(0), shape)
  pad = ((padding, padding), (padding, padding))

  def flax_pool(x):
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pad)

  def pool(x):
    return layers.max_pool(x, window=window, stride=stride, padding=padding)

  np.testing.assert_array_equal(pool(x), flax_pool(x))
  weights = jax.random.normal(jax.random.key(1), flax_pool(x).shape)
  grad, flax_grad = (jax.grad(lambda x, f=f: jnp.sum(weights * f(x)))(x)
                     for f in (pool, flax_pool))
  np.testing.assert_allclose(grad, flax_grad, rtol=1e-6, atol=1e-6)


def test_max_pool_rejects_padding_as_large_as_the_window():
  with pytest.raises(ValueError, match="padding=2"):
    layers.max_pool(jnp.zeros((1, 4, 4, 1)), window=2, stride=2, padding=2)
