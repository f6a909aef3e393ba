"""Tests for jaxsemiseg.models.unet."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.models import unet


def _torch_conv_transpose_2x2(x, weight, bias):
  """PyTorch's ConvTranspose2d(kernel 2, stride 2) written out: weight is [in, out, 2, 2]."""
  batch, height, width, _ = x.shape
  out = np.zeros((batch, 2 * height, 2 * width, weight.shape[1]), np.float64)
  for i in range(height):
    for j in range(width):
      for a in range(2):
        for b in range(2):
          out[:, 2 * i + a, 2 * j + b] = x[:, i, j] @ weight[:, :, a, b] + bias
  return out


def test_upsample2x2_matches_pytorch_definition():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
  weight = rng.standard_normal((5, 6, 2, 2)).astype(np.float32)
  bias = rng.standard_normal(6).astype(np.float32)
  params = {"kernel": weight.transpose(2, 3, 0, 1), "bias": bias}
  out = unet.Upsample2x2(6).apply({"params": params}, x)
  np.testing.assert_allclose(out, _torch_conv_transpose_2x2(x, weight, bias), atol=1e-5)


def test_upsample2x2_equals_flax_conv_transpose_with_flipped_kernel():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
  layer = unet.Upsample2x2(4)
  params = layer.init(jax.random.key(1), x)["params"]
  # Flax's ConvTranspose (transpose_kernel=False) correlates the stride-dilated input with
  # the kernel, which reverses the taps of each 2x2 output patch.
  reference = nn.ConvTranspose(4, kernel_size=(2, 2), strides=(2, 2))
  reference_params = {"kernel": params["kernel"][::-1, ::-1], "bias": params["bias"]}
  np.testing.assert_allclose(
      layer.apply({"params": params}, x),
      reference.apply({"params": reference_params}, x), atol=1e-5)


def _block_params(c_in, c):
  """[3x3 conv (bias) -> GroupNorm (affine)] x 2."""
  return 9 * c_in * c + c + 2 * c + 9 * c * c + c + 2 * c


def test_unet_s_has_the_torch_twins_parameter_count():
  w, classes = 16, 4
  expected = (
      _block_params(3, w) + _block_params(w, 2 * w) + _block_params(2 * w, 4 * w)  # down
      + _block_params(4 * w, 8 * w)  # mid
      + sum(4 * 2 * c * c + c for c in (w, 2 * w, 4 * w))  # ConvTranspose2d(2c, c, 2, 2)
      + sum(_block_params(2 * c, c) for c in (w, 2 * w, 4 * w))  # up_block
      + w * classes + classes)  # head
  assert expected == 483_492  # UNetS(16, 4) in bench/torch_unet_step.py
  images = jnp.zeros((1, 8, 8, 3))
  variables = jax.eval_shape(
      lambda: unet.UNet(classes, width=w).init(jax.random.key(0), images, train=False))
  assert set(variables) == {"params"}
  assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == expected


@pytest.fixture(scope="module")
def model_and_variables(random_variables):
  model = unet.UNet(3, width=4, depth=2, groups=2, dropout_rate=0.5)
  images = jax.random.uniform(jax.random.key(0), (2, 16, 12, 3))
  return model, random_variables(model, images, train=False), images


def test_unet_output_shapes_and_dtypes(model_and_variables):
  model, variables, images = model_and_variables
  outputs = model.apply(variables, images, train=False)
  assert outputs["logits"].shape == (2, 16, 12, 3)
  assert outputs["logits"].dtype == jnp.float32
  assert outputs["features"].shape == (2, 16, 12, 4)
  kernel = variables["params"]["up_1"]["kernel"]
  assert kernel.shape == (2, 2, 16, 8)


def test_unet_without_batch_norm_returns_empty_mutable_batch_stats(model_and_variables):
  model, variables, images = model_and_variables
  _, updates = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(0)},
                           mutable=["batch_stats"])
  assert not updates


def test_unet_dropout_only_when_train_or_mc_dropout(model_and_variables):
  model, variables, images = model_and_variables

  def logits(key, **flags):
    return model.apply(variables, images, rngs={"dropout": key}, **flags)["logits"]

  key_a, key_b = jax.random.key(2), jax.random.key(3)
  clean = model.apply(variables, images, train=False)["logits"]
  np.testing.assert_array_equal(logits(key_a, train=False), clean)
  for flags in ({"train": True}, {"train": False, "mc_dropout": True}):
    assert not np.allclose(logits(key_a, **flags), logits(key_b, **flags))
    np.testing.assert_array_equal(logits(key_a, **flags), logits(key_a, **flags))
    assert not np.allclose(logits(key_a, **flags), clean)


def test_unet_classify_reproduces_the_head(model_and_variables):
  model, variables, images = model_and_variables
  outputs = model.apply(variables, images, train=False)
  logits = model.apply(variables, outputs["features"], train=False, method=unet.UNet.classify)
  np.testing.assert_allclose(logits, outputs["logits"], atol=1e-6)
  with pytest.raises(ValueError, match="output_size"):
    model.apply(variables, outputs["features"], train=False, output_size=(8, 6),
                method=unet.UNet.classify)


def test_unet_perturbs_every_decoder_input_with_its_own_key(model_and_variables):
  model, variables, images = model_and_variables
  seen = []

  def clean_plus_zeroed(key, x):
    seen.append((tuple(x.shape), tuple(jax.random.key_data(key).ravel().tolist())))
    return jnp.concatenate([x, jnp.zeros_like(x)])

  outputs = model.apply(variables, images, train=False,
                        decoder_input_perturbation=clean_plus_zeroed,
                        rngs={"perturbation": jax.random.key(4)})
  # Two skips (16x12x4, 8x6x8) and the bottleneck (4x3x16).
  assert sorted(shape for shape, _ in seen) == [
      (2, 4, 3, 16), (2, 8, 6, 8), (2, 16, 12, 4)]
  assert len({key for _, key in seen}) == 3
  clean = model.apply(variables, images, train=False)
  assert outputs["logits"].shape == (4, 16, 12, 3)
  np.testing.assert_allclose(outputs["logits"][:2], clean["logits"], atol=1e-5)
  assert not np.allclose(outputs["logits"][2:], clean["logits"])


def test_unet_rejects_sizes_that_do_not_pool_evenly(model_and_variables):
  model, variables, _ = model_and_variables
  with pytest.raises(ValueError, match="divisible by 4; got 18x12"):
    model.apply(variables, jnp.zeros((1, 18, 12, 3)), train=False)


def test_unet_rejects_width_not_divisible_by_groups():
  with pytest.raises(ValueError, match="width=6, groups=4"):
    unet.UNet(2, width=6).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


def test_unet_bfloat16_compute_returns_float32_logits(random_variables):
  model = unet.UNet(2, width=4, depth=1, dtype=jnp.bfloat16)
  images = jnp.full((1, 4, 4, 3), 0.5)
  variables = random_variables(model, images, train=False)
  outputs = model.apply(variables, images, train=False)
  assert outputs["logits"].dtype == jnp.float32
  assert outputs["features"].dtype == jnp.bfloat16
  assert jax.tree.leaves(variables)[0].dtype == jnp.float32
