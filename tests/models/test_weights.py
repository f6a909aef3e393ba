"""Tests for jaxsemiseg.models.weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxsemiseg.models import deeplab
from jaxsemiseg.models import resnet
from jaxsemiseg.models import unet
from jaxsemiseg.models import weights


def _flat(variables):
  return traverse_util.flatten_dict(variables, sep="/")


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def unet_variables(random_variables):
  model = unet.UNet(2, width=4, depth=1)
  images = jnp.zeros((1, 4, 4, 3))
  return random_variables(model, images, train=False, seed=1), random_variables(
      model, images, train=False, seed=2)


def test_round_trip_of_the_whole_model(tmp_path, unet_variables):
  source, target = unet_variables
  path = tmp_path / "unet.npz"
  weights.save_variables_npz(source, path)
  with np.load(path) as file:
    assert "params/down_0/conv0/kernel" in file.files
  _assert_same(weights.load_pretrained_backbone(target, path, prefix=""), source)


def test_load_replaces_only_the_prefix(tmp_path, unet_variables):
  source, target = unet_variables
  path = tmp_path / "unet.npz"
  weights.save_variables_npz(source, path)
  loaded = weights.load_pretrained_backbone(target, path, prefix="down_0")
  for key, value in _flat(loaded).items():
    expected = _flat(source if key.startswith("params/down_0/") else target)[key]
    np.testing.assert_array_equal(value, expected)
  # The input is not modified.
  assert not np.array_equal(_flat(target)["params/down_0/conv0/kernel"],
                            _flat(loaded)["params/down_0/conv0/kernel"])


def test_backbone_moves_to_a_model_with_another_head(tmp_path, random_variables):
  images = jnp.zeros((1, 16, 16, 3))
  small = {"backbone": "resnet18", "aspp_channels": 8, "low_level_channels": 8,
           "decoder_channels": 8}
  pretrained = random_variables(deeplab.DeepLabV3Plus(5, **small), images, train=False, seed=1)
  target = random_variables(deeplab.DeepLabV3Plus(2, **small), images, train=False, seed=2)
  path = tmp_path / "pretrained.npz"
  weights.save_variables_npz(pretrained, path)
  loaded = weights.load_pretrained_backbone(target, path)
  for collection in ("params", "batch_stats"):
    _assert_same(loaded[collection]["backbone"], pretrained[collection]["backbone"])
    _assert_same(loaded[collection]["aspp"], target[collection]["aspp"])
  assert loaded["params"]["classifier"]["kernel"].shape == (1, 1, 8, 2)


def test_stacked_members_each_get_the_file(tmp_path, unet_variables):
  source, target = unet_variables
  path = tmp_path / "unet.npz"
  weights.save_variables_npz(source, path)
  members = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf + 1.0]), target)
  loaded = weights.load_pretrained_backbone(members, path, prefix="down_0", stacked=True)
  for key, value in _flat(loaded).items():
    assert value.shape == _flat(members)[key].shape
    if key.startswith("params/down_0/"):
      for member in range(2):
        np.testing.assert_array_equal(value[member], _flat(source)[key])
    else:
      np.testing.assert_array_equal(value, _flat(members)[key])


def test_stacked_shape_mismatch_names_the_member_shape(tmp_path, unet_variables,
                                                       random_variables):
  wider = random_variables(unet.UNet(2, width=8, depth=1), jnp.zeros((1, 4, 4, 3)),
                           train=False, seed=3)
  path = tmp_path / "wider.npz"
  weights.save_variables_npz(wider, path)
  members = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), unet_variables[0])
  with pytest.raises(ValueError, match=r"the file has \(8,\), the model per member \(4,\)"):
    weights.load_pretrained_backbone(members, path, prefix="down_0", stacked=True)


def test_missing_file_says_how_to_make_one(tmp_path, unet_variables):
  with pytest.raises(FileNotFoundError, match="torchvision_resnet_to_flax"):
    weights.load_pretrained_backbone(unet_variables[0], tmp_path / "absent.npz")


def _save(path, arrays):
  with open(path, "wb") as file:
    np.savez(file, **arrays)


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.update({"params/backbone/down_0/conv0/kernel": np.zeros((3, 3, 3, 5))}),
     r"Shape mismatch for 'params/backbone/down_0/conv0/kernel': the file has "
     r"\(3, 3, 3, 5\), the model \(3, 3, 3, 4\)"),
    (lambda a: a.update({"params/backbone/extra/kernel": np.zeros(2)}),
     r"key\(s\) the model does not have, e.g. 'params/backbone/extra/kernel'"),
    (lambda a: a.pop("params/backbone/down_0/norm1/scale"),
     r"lacks 1 of the model's variables .* 'params/backbone/down_0/norm1/scale'"),
], ids=["shape", "unknown", "missing"])
def test_mismatches_name_the_key(tmp_path, random_variables, edit, match):
  model = unet.UNet(2, width=4, depth=1)
  variables = random_variables(model, jnp.zeros((1, 4, 4, 3)), train=False)
  # Under a "backbone" key, to exercise the default prefix.
  nested = {"params": {"backbone": variables["params"]}}
  arrays = {key: np.asarray(value) for key, value in _flat(nested).items()}
  edit(arrays)
  path = tmp_path / "edited.npz"
  _save(path, arrays)
  with pytest.raises(ValueError, match=match):
    weights.load_pretrained_backbone(nested, path)


def test_file_without_the_prefix_is_rejected(tmp_path, unet_variables):
  path = tmp_path / "unet.npz"
  weights.save_variables_npz(unet_variables[0], path)
  with pytest.raises(ValueError, match="no key under prefix 'backbone'"):
    weights.load_pretrained_backbone(unet_variables[0], path)


def _torchvision_resnet18_state_dict(rng):
  """torchvision's resnet18().state_dict() names and shapes, with random values."""
  shapes = {"conv1.weight": (64, 3, 7, 7)}

  def batch_norm(name, channels):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{leaf}"] = (channels,)
    shapes[f"{name}.num_batches_tracked"] = ()

  batch_norm("bn1", 64)
  in_channels = 64
  for stage, channels in enumerate((64, 128, 256, 512), start=1):
    for block in range(2):
      prefix = f"layer{stage}.{block}."
      block_in = in_channels if block == 0 else channels
      shapes[prefix + "conv1.weight"] = (channels, block_in, 3, 3)
      batch_norm(prefix + "bn1", channels)
      shapes[prefix + "conv2.weight"] = (channels, channels, 3, 3)
      batch_norm(prefix + "bn2", channels)
      if block == 0 and stage > 1:
        shapes[prefix + "downsample.0.weight"] = (channels, block_in, 1, 1)
        batch_norm(prefix + "downsample.1", channels)
    in_channels = channels
  shapes["fc.weight"] = (1000, 512)
  shapes["fc.bias"] = (1000,)
  return {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in shapes.items()}


def test_torchvision_conversion_covers_every_resnet_variable(tmp_path, random_variables):
  state = _torchvision_resnet18_state_dict(np.random.default_rng(0))
  converted = weights.torchvision_resnet_to_flax(state, prefix="")
  np.testing.assert_array_equal(
      converted["params/conv1/kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      converted["params/layer2_0/downsample_bn/scale"], state["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(
      converted["batch_stats/layer4_1/bn2/var"], state["layer4.1.bn2.running_var"])
  np.testing.assert_array_equal(
      converted["batch_stats/bn1/mean"], state["bn1.running_mean"])
  assert not any("fc" in key or "num_batches" in key for key in converted)
  path = tmp_path / "resnet18.npz"
  _save(path, converted)
  model = resnet.ResNet(18)
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)), train=False)
  # Strict: every ResNet-18 variable must come from the file with its shape.
  loaded = weights.load_pretrained_backbone(variables, path, prefix="")
  np.testing.assert_array_equal(
      loaded["params"]["layer3_0"]["conv1"]["kernel"],
      state["layer3.0.conv1.weight"].transpose(2, 3, 1, 0))


def test_torchvision_conversion_uses_the_backbone_prefix_by_default():
  converted = weights.torchvision_resnet_to_flax(
      {"layer1.0.bn1.bias": np.zeros(64, np.float32)})
  assert list(converted) == ["params/backbone/layer1_0/bn1/bias"]


def test_torchvision_conversion_rejects_foreign_keys():
  with pytest.raises(ValueError, match="'head.weight' is not a torchvision ResNet"):
    weights.torchvision_resnet_to_flax({"head.weight": np.zeros((2, 2, 1, 1))})
