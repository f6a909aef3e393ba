"""UniMatch's feature perturbation and config checks.

The step itself (the 1/2 [L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp] weighting read from its
metrics, learning, 1 vs 4 devices, a run of the loop) is checked with the other
self-training methods in ``test_self_training.py``.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg.methods import common, unimatch
from jaxsemiseg.models import UNet

import tiny_data


def test_channel_dropout_drops_whole_channels_and_rescales_the_rest():
  features = jnp.ones((4, 3, 3, 8))
  dropped = unimatch.channel_dropout(jax.random.key(0), features, rate=0.5)
  per_channel = np.asarray(dropped).transpose(0, 3, 1, 2).reshape(32, 9)
  assert np.all(per_channel == per_channel[:, :1])
  assert set(np.unique(per_channel)) == {0.0, 2.0}
  np.testing.assert_array_equal(
      unimatch.channel_dropout(jax.random.key(0), features, rate=0.0), features)


def test_channel_dropout_rate_is_the_drop_probability_per_example_and_channel():
  # At rate 0.25 the kept channels are scaled by 1 / 0.75 (at 0.5, 1/rate would pass too).
  features = jnp.ones((64, 1, 1, 32))
  dropped = np.asarray(unimatch.channel_dropout(jax.random.key(3), features, rate=0.25))
  assert set(np.unique(dropped)) == {0.0, np.float32(4 / 3)}
  assert abs((dropped == 0).mean() - 0.25) < 0.03
  # Each example draws its own channels.
  assert len({tuple(row) for row in (dropped[:, 0, 0] == 0)}) > 32


class _TinyBatchNormSegmenter(nn.Module):
  """Conv-BN-ReLU, UniMatch's perturbation site, Conv-BN-ReLU, classifier: a model whose
  decoder BatchNorm sees the perturbed rows, as DeepLabV3+'s does."""

  @nn.compact
  def __call__(self, images, *, train, mc_dropout=False, decoder_input_perturbation=None):
    del mc_dropout
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = nn.relu(norm()(nn.Conv(4, (3, 3))(images)))
    if decoder_input_perturbation is not None:
      x = decoder_input_perturbation(self.make_rng("perturbation"), x)
    x = nn.relu(norm()(nn.Conv(4, (3, 3))(x)))
    return {"logits": nn.Conv(3, (1, 1))(x), "features": x}


def test_feature_perturbation_loss_with_batch_norm_equals_numpy():
  # With BatchNorm every row is perturbed (its statistics see them all, as UniMatch's);
  # L_fp is the CE of the unlabeled rows' perturbed predictions against the clean weak
  # predictions' argmax where their max is >= tau, divided by all valid pixels.
  config = config_lib.base_config("unimatch")
  config.unimatch.update(dict(cutmix_p=0.0, threshold=0.4))
  model, tx = _TinyBatchNormSegmenter(), optax.sgd(0.1)
  rng = np.random.default_rng(0)
  valid = np.ones((2, 8, 8), bool)
  valid[0, :, -2:] = False
  batch = {"image": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 3, (2, 8, 8)), jnp.int32),
           "image_u": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
           "valid_u": jnp.asarray(valid),
           "image_u2": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
           "valid_u2": jnp.ones((2, 8, 8), bool)}
  state = unimatch.init_state(jax.random.key(0), model, tx, batch, config)
  assert state.batch_stats
  key = jax.random.key(6)
  _, metrics = jax.jit(unimatch.make_train_step(model, tx, config))(state, batch, key)

  _, weak_key, perturbation_key, _ = jax.random.split(key, 4)
  outputs, _ = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      jnp.concatenate([batch["image"], batch["image_u"]]), train=True,
      rngs={"dropout": weak_key, "perturbation": perturbation_key},
      decoder_input_perturbation=functools.partial(unimatch.clean_and_dropped, rate=0.5),
      mutable=["batch_stats"])
  log_probs = np.asarray(jax.nn.log_softmax(outputs["logits"]), np.float64)
  assert log_probs.shape[0] == 8  # 4 clean rows, then all 4 rows perturbed.
  weak = np.exp(log_probs[2:4])
  labels, counted = weak.argmax(-1), (weak.max(-1) >= 0.4) & valid
  assert 0 < counted.sum() < valid.sum()
  ce = -np.take_along_axis(log_probs[6:8], labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(metrics["loss_fp"], ce[counted].sum() / valid.sum(), rtol=1e-5)
  labeled_ce = -np.take_along_axis(log_probs[:2], np.asarray(batch["label"])[..., None],
                                   -1)[..., 0]
  np.testing.assert_allclose(metrics["loss_x"], labeled_ce.mean(), rtol=1e-5)


def test_perturbed_forward_decodes_clean_and_perturbed_copies():
  model = UNet(num_classes=3, width=4, depth=1)
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  plain = model.apply(variables, images, train=True)["logits"]

  def perturbed_forward(rate):
    outputs, _ = common.forward(
        model, variables["params"], {}, images, train=True, rng=jax.random.key(2),
        perturbation_rng=jax.random.key(3),
        decoder_input_perturbation=functools.partial(unimatch.clean_and_dropped, rate=rate))
    return outputs["logits"]

  outputs = perturbed_forward(0.5)
  assert outputs.shape == (4, 8, 8, 3)
  np.testing.assert_allclose(outputs[:2], plain, rtol=1e-5, atol=1e-6)
  assert not np.allclose(outputs[2:], plain, atol=1e-3)
  np.testing.assert_allclose(perturbed_forward(0.0)[2:], plain, rtol=1e-5, atol=1e-6)


def test_perturbation_can_skip_the_rows_whose_perturbed_prediction_is_unused():
  features = jax.random.uniform(jax.random.key(0), (5, 4, 4, 8))
  key = jax.random.key(1)
  every_row = unimatch.clean_and_dropped(key, features, rate=0.5)
  last_three = unimatch.clean_and_dropped(key, features, rate=0.5, perturbed_from=2)
  assert every_row.shape == (10, 4, 4, 8) and last_three.shape == (8, 4, 4, 8)
  np.testing.assert_array_equal(last_three[:5], features)
  np.testing.assert_array_equal(
      last_three[5:], unimatch.channel_dropout(key, features[2:], rate=0.5))


def test_default_config_follows_unimatch_for_voc():
  config = config_lib.base_config("unimatch").unimatch
  assert (config.threshold, config.cutmix_p, config.feature_dropout_rate) == (0.95, 0.5, 0.5)
  assert unimatch.USES_UNLABELED and unimatch.NUM_UNLABELED_VIEWS == 2
  assert (unimatch.LABELED_WEIGHT, unimatch.STRONG_WEIGHT,
          unimatch.FEATURE_PERTURBATION_WEIGHT) == (1.0, 0.25, 0.5)


@pytest.mark.parametrize("field, value, expected", [
    ("threshold", -0.1, r"\[0, 1\]"),
    ("cutmix_p", 2.0, r"\[0, 1\]"),
    ("feature_dropout_rate", 1.0, r"\[0, 1\)"),
])
def test_config_values_out_of_range_are_rejected(field, value, expected):
  config = config_lib.base_config("unimatch")
  config.unimatch[field] = value
  with pytest.raises(ValueError, match=rf"config\.unimatch\.{field}={value}.*{expected}"):
    config_lib.validate_config(config)


def test_voc_config_has_the_papers_settings():
  config = tiny_data.load_config("voc_unimatch", "183")
  config_lib.validate_config(config)
  assert (config.method, config.dataset.name, config.dataset.num_labeled) == (
      "unimatch", "voc", 183)
  assert (config.model.name, config.model.deeplabv3plus.backbone,
          config.model.deeplabv3plus.output_stride) == ("deeplabv3plus", "resnet101", 16)
  assert (config.optimizer.name, config.optimizer.learning_rate,
          config.optimizer.head_lr_multiplier, config.optimizer.schedule) == (
              "sgd", 1e-3, 10.0, "poly")
  assert (config.batch_size, config.unlabeled_batch_size, config.dataset.crop_size) == (8, 8, 321)
  # 80 epochs of the 10582 - 183 unlabeled images, 8 per step.
  assert config.num_steps == 80 * ((10582 - 183) // 8)
  with pytest.raises(ValueError, match="labeled images"):
    tiny_data.load_config("voc_unimatch", "0")
