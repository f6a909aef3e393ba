"""``config.model.pretrained_path`` through ``train.build_run``, for every kind of state."""

import jax
import numpy as np
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import parallel, train
from jaxsemiseg.methods import cotraining
from jaxsemiseg.models import weights

import tiny_data

SMALL_DEEPLAB = {"model.name": "deeplabv3plus", "model.deeplabv3plus.backbone": "resnet18",
                 "model.deeplabv3plus.aspp_channels": 8,
                 "model.deeplabv3plus.low_level_channels": 8,
                 "model.deeplabv3plus.decoder_channels": 8}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("data")))


def _config(root, method, **overrides):
  config = tiny_data.tiny_config(root, **SMALL_DEEPLAB, **overrides)
  config.method = method
  config[method] = config_lib.base_config(method)[method]
  return config


@pytest.fixture(scope="module")
def pretrained(dataset_root, tmp_path_factory):
  """A DeepLabV3+ of another seed saved whole: ``(path, its host variables)``."""
  run = train.build_run(_config(dataset_root, "supervised", seed=7),
                        num_classes=tiny_data.NUM_CLASSES, mesh=parallel.make_mesh(1))
  variables = jax.device_get(run.state.variables)
  path = str(tmp_path_factory.mktemp("weights") / "pretrained.npz")
  weights.save_variables_npz(variables, path)
  return path, variables


def _build(config, path=""):
  config.model.pretrained_path = path
  return train.build_run(config, num_classes=tiny_data.NUM_CLASSES,
                         mesh=parallel.make_mesh(1))


def _assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _assert_same_shapes(a, b):
  assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, b)


@pytest.mark.parametrize("method", ["supervised", "mean_teacher"])
def test_one_model_gets_the_backbone_and_keeps_its_head(dataset_root, pretrained, method):
  path, source = pretrained
  config = _config(dataset_root, method)
  state = _build(config, path).state
  random_init = _build(_config(dataset_root, method)).state
  for collection in ("params", "batch_stats"):
    _assert_tree_equal(state.variables[collection]["backbone"], source[collection]["backbone"])
  _assert_tree_equal(state.params["classifier"], random_init.params["classifier"])
  _assert_same_shapes(state.opt_state, random_init.opt_state)
  if method == "mean_teacher":
    # Else the teacher's EMA would keep averaging in the random backbone.
    _assert_tree_equal(state.extras["teacher"]["params"], state.params)
    _assert_tree_equal(state.extras["teacher"]["batch_stats"], state.batch_stats)


@pytest.mark.parametrize("method", ["cps", "ensemble_self_training"])
def test_every_stacked_member_gets_the_backbone_and_keeps_its_head(dataset_root, pretrained,
                                                                   method):
  path, source = pretrained
  state = _build(_config(dataset_root, method), path).state
  random_init = _build(_config(dataset_root, method)).state
  num_members = cotraining.num_members_of(state.params)
  assert num_members == cotraining.num_members_of(random_init.params) > 1
  for member in range(num_members):
    variables = cotraining.member(state.variables, member)
    for collection in ("params", "batch_stats"):
      _assert_tree_equal(variables[collection]["backbone"], source[collection]["backbone"])
  _assert_tree_equal(state.params["classifier"], random_init.params["classifier"])
  heads = jax.device_get(state.params["classifier"]["kernel"])
  assert not np.array_equal(heads[0], heads[1])
  _assert_same_shapes(state.opt_state, random_init.opt_state)

