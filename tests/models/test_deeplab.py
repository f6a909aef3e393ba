"""Tests for jaxsemiseg.models.resnet and jaxsemiseg.models.deeplab (ResNet-18, tiny head)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.models import deeplab
from jaxsemiseg.models import layers
from jaxsemiseg.models import resnet


def _param_count(variables):
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("depth, torchvision_count, channels", [
    # torchvision's parameter counts (11,689,512 and 25,557,032) minus the 1000-way fc.
    (18, 11_689_512 - (512 * 1000 + 1000), (64, 128, 256, 512)),
    (50, 25_557_032 - (2048 * 1000 + 1000), (256, 512, 1024, 2048)),
])
def test_resnet_matches_torchvision_size(depth, torchvision_count, channels):
  model = resnet.ResNet(depth)
  outputs, variables = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert _param_count(variables) == torchvision_count
  assert tuple(out.shape[-1] for out in outputs) == channels
  assert resnet.resnet_channels(depth) == channels


@pytest.mark.parametrize("output_stride, sizes", [
    (32, (9, 5, 3, 2)), (16, (9, 5, 3, 3)), (8, (9, 5, 5, 5))])
def test_resnet_dilation_sets_the_output_stride(output_stride, sizes):
  # 33 -> stem 17 -> pool 9 (stride 4) -> 5 -> 3 -> 2: ceil(33 / stride) at every stage.
  model = resnet.ResNet(
      18, replace_stride_with_dilation=resnet.dilation_for_output_stride(output_stride))
  outputs, _ = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False))
  assert tuple(out.shape[1] for out in outputs) == sizes


def test_resnet_rejects_unknown_depth():
  with pytest.raises(ValueError, match="depth must be one of .* got 20"):
    resnet.ResNet(20).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


def _tiny(**kwargs):
  tiny = {"backbone": "resnet18", "aspp_channels": 16, "low_level_channels": 8,
          "decoder_channels": 16}
  return deeplab.DeepLabV3Plus(3, **(tiny | kwargs))


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("size", [33, 32])
def test_deeplab_logits_at_input_resolution(output_stride, size):
  model = _tiny(output_stride=output_stride)
  images = jnp.zeros((2, size, size - 2, 3))
  outputs, variables = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), images, train=False))
  assert outputs["logits"].shape == (2, size, size - 2, 3)
  assert outputs["logits"].dtype == jnp.float32
  assert outputs["features"].shape == (2, 9 if size == 33 else 8, 8, 16)
  assert set(variables) == {"params", "batch_stats"}


def test_deeplab_bfloat16_compute_returns_float32_logits():
  model = _tiny(dtype=jnp.bfloat16)
  outputs, variables = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
  assert outputs["logits"].dtype == jnp.float32
  assert outputs["features"].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_deeplab_default_aspp_dilations_follow_output_stride():
  assert _tiny(output_stride=16).bind({}).aspp.dilations == (6, 12, 18)
  assert _tiny(output_stride=8).bind({}).aspp.dilations == (12, 24, 36)
  assert _tiny(aspp_dilations=(1, 2, 3)).bind({}).aspp.dilations == (1, 2, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"backbone": "resnet20"}, "backbone must be one of"),
    ({"output_stride": 32}, "output_stride must be one of"),
    ({"aspp_dilations": (6, 12)}, "aspp_dilations must hold 3"),
    ({"dropout_rate": 1.0}, "dropout_rate must be in"),
])
def test_deeplab_rejects_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: _tiny(**kwargs).init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))


@pytest.fixture(scope="module")
def setup(random_variables):
  model = _tiny()
  images = jax.random.uniform(jax.random.key(0), (2, 33, 33, 3))
  variables = random_variables(model, images, train=False)

  @functools.partial(jax.jit, static_argnames=("train", "mc_dropout"))
  def apply(variables, key, *, train, mc_dropout=False):
    return model.apply(variables, images, train=train, mc_dropout=mc_dropout,
                       rngs={"dropout": key}, mutable=["batch_stats"])

  return model, variables, images, apply


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_deeplab_eval_mode_is_deterministic_and_keeps_batch_stats(setup):
  model, variables, images, apply = setup
  outputs, updates = apply(variables, jax.random.key(1), train=False)
  np.testing.assert_allclose(
      outputs["logits"], model.apply(variables, images, train=False)["logits"], atol=1e-5)
  _, updates_other_key = apply(variables, jax.random.key(2), train=False)
  np.testing.assert_array_equal(
      outputs["logits"], apply(variables, jax.random.key(2), train=False)[0]["logits"])
  _assert_trees_equal(updates["batch_stats"], variables["batch_stats"])
  _assert_trees_equal(updates_other_key["batch_stats"], variables["batch_stats"])


def test_deeplab_mc_dropout_varies_with_the_key_but_keeps_batch_norm_in_eval(setup):
  _, variables, _, apply = setup
  clean, _ = apply(variables, jax.random.key(1), train=False)
  first, updates = apply(variables, jax.random.key(1), train=False, mc_dropout=True)
  second, _ = apply(variables, jax.random.key(2), train=False, mc_dropout=True)
  assert not np.allclose(first["logits"], second["logits"])
  assert not np.allclose(first["logits"], clean["logits"])
  # Dropout sits after the features, so BatchNorm (eval mode) gives the same features.
  np.testing.assert_array_equal(first["features"], clean["features"])
  _assert_trees_equal(updates["batch_stats"], variables["batch_stats"])


def test_deeplab_train_mode_updates_every_batch_norm(setup):
  _, variables, _, apply = setup
  outputs, updates = apply(variables, jax.random.key(1), train=True)
  clean, _ = apply(variables, jax.random.key(1), train=False)
  changed = jax.tree.map(lambda new, old: not np.allclose(new, old),
                         updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(outputs["features"], clean["features"])


def test_deeplab_classify_reproduces_the_head(setup):
  model, variables, images, _ = setup
  outputs = model.apply(variables, images, train=False)
  logits = model.apply(variables, outputs["features"], train=False, output_size=(33, 33),
                       method=deeplab.DeepLabV3Plus.classify)
  np.testing.assert_allclose(logits, outputs["logits"], atol=1e-5)
  coarse = model.apply(variables, outputs["features"], train=False,
                       method=deeplab.DeepLabV3Plus.classify)
  assert coarse.shape == (2, 9, 9, 3)
  # The stride-4 logits sit on every 4th input pixel (33 = 4 * 8 + 1 aligns exactly).
  np.testing.assert_allclose(outputs["logits"][:, ::4, ::4], coarse, atol=1e-5)


def test_deeplab_perturbs_both_decoder_inputs(setup):
  model, variables, images, _ = setup
  seen = []

  def clean_plus_zeroed(key, x):
    seen.append(tuple(x.shape))
    return jnp.concatenate([x, jnp.zeros_like(x)])

  outputs = model.apply(variables, images, train=False,
                        decoder_input_perturbation=clean_plus_zeroed,
                        rngs={"perturbation": jax.random.key(3)})
  assert seen == [(2, 9, 9, 64), (2, 3, 3, 512)]
  clean = model.apply(variables, images, train=False)
  assert outputs["logits"].shape == (4, 33, 33, 3)
  np.testing.assert_allclose(outputs["logits"][:2], clean["logits"], atol=1e-5)
  # Both decoder inputs zeroed: nothing of either image is left, so both get the same map.
  perturbed = outputs["logits"][2:]
  assert not np.allclose(perturbed, clean["logits"])
  np.testing.assert_allclose(perturbed[0], perturbed[1], atol=1e-6)


def test_head_convs_keep_pytorch_default_init_and_backbone_convs_kaiming():
  # UniMatch's kaiming loop runs over its backbone only: the head's 1x1 conv from 512
  # channels draws U(+-1/sqrt(512)) (std 0.0255), a backbone conv N(0, 2 / fan_out).
  x = jnp.zeros((1, 3, 3, 512))
  head = deeplab.ConvBNReLU(256, 1).init(jax.random.key(0), x, train=False)
  kernel = np.asarray(head["params"]["conv"]["kernel"])
  assert np.abs(kernel).max() <= 1 / np.sqrt(512)
  np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(3 * 512), rtol=0.02)
  conv = layers.torch_conv(256, 3)
  kernel = np.asarray(conv.init(jax.random.key(1), x)["params"]["kernel"])
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 256)), rtol=0.02)
  bias = np.asarray(layers.torch_default_bias_init(256)(jax.random.key(2), (10000,)))
  assert np.abs(bias).max() <= 1 / 16
  np.testing.assert_allclose(bias.std(), 1 / (16 * np.sqrt(3)), rtol=0.03)
