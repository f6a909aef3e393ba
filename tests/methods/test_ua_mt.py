"""UA-MT: the entropy threshold and its ramp, the mask, the teacher passes, a real step.

The step's terms, learning, 1 vs 4 devices and a run of the loop are checked with the
other self-training methods in ``test_self_training.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import losses, models
from jaxsemiseg.methods import common, ua_mt

NUM_CLASSES = 3
NUM_SAMPLES = 3


def test_entropy_threshold_ramps_from_three_quarters_to_full_log_c():
  thresholds = [float(ua_mt.entropy_threshold(step, num_classes=NUM_CLASSES, rampup_steps=100))
                for step in (0, 50, 100, 500)]
  log_c = math.log(NUM_CLASSES)
  expected = [(0.75 + 0.25 * math.exp(-5.0)) * log_c,
              (0.75 + 0.25 * math.exp(-5.0 * 0.5**2)) * log_c, log_c, log_c]
  np.testing.assert_allclose(thresholds, expected, rtol=1e-6)
  no_ramp = ua_mt.entropy_threshold(0, num_classes=2, rampup_steps=0)
  np.testing.assert_allclose(no_ramp, math.log(2), rtol=1e-6)


def test_certain_mask_follows_the_entropy_threshold():
  # T = 2 teacher samples of four pixels, C = 2. Mean predictions and their entropies:
  # agreeing one-hot (0), agreeing 0.9/0.1 (0.325), opposite one-hots (0.5/0.5: ln 2 =
  # 0.693), and an agreeing one-hot pixel that is padding.
  first = [[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [1.0, 0.0]]
  second = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]]
  samples = jnp.array([first, second]).reshape(2, 1, 2, 2, 2)
  valid = jnp.array([[[True, True], [True, False]]])
  h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
  masks = {threshold: ua_mt.certain_mask(samples, valid, threshold=threshold)
           for threshold in (0.1, h_09 + 1e-3, 0.75 * math.log(2), 0.7)}
  np.testing.assert_array_equal(masks[0.1], [[[True, False], [False, False]]])
  np.testing.assert_array_equal(masks[h_09 + 1e-3], [[[True, True], [False, False]]])
  np.testing.assert_array_equal(masks[0.75 * math.log(2)], [[[True, True], [False, False]]])
  np.testing.assert_array_equal(masks[0.7], [[[True, True], [True, False]]])


def _model(dropout_rate=0.5):
  return models.create_model(dict(name="unet", num_classes=NUM_CLASSES, width=4, depth=1,
                                  dropout_rate=dropout_rate))


def _batch():
  rng = np.random.default_rng(0)
  valid = np.ones((2, 8, 8), bool)
  valid[1, -2:] = False
  return {"image": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (2, 8, 8)), jnp.int32),
          "image_u": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
          "valid_u": jnp.asarray(valid)}


def test_teacher_passes_differ_by_dropout_and_noise_and_not_without_them():
  images = _batch()["image_u"]
  stochastic, deterministic = _model(0.5), _model(0.0)
  params = stochastic.init(jax.random.key(0), images, train=False)["params"]
  teacher = {"params": params, "batch_stats": {}}
  samples = ua_mt.teacher_samples(jax.random.key(1), stochastic, teacher, images,
                                  num_samples=NUM_SAMPLES, noise_std=0.1, noise_clip=0.2)
  assert samples.shape == (NUM_SAMPLES, 2, 8, 8, NUM_CLASSES)
  np.testing.assert_allclose(samples.sum(-1), 1.0, rtol=1e-5)
  assert not np.allclose(samples[0], samples[1], atol=1e-4)
  noise_only = ua_mt.teacher_samples(jax.random.key(1), deterministic, teacher, images,
                                     num_samples=2, noise_std=0.1, noise_clip=0.2)
  assert not np.allclose(noise_only[0], noise_only[1], atol=1e-4)
  neither = ua_mt.teacher_samples(jax.random.key(1), deterministic, teacher, images,
                                  num_samples=2, noise_std=0.0, noise_clip=0.2)
  clean = jax.nn.softmax(deterministic.apply({"params": params}, images, train=False)["logits"])
  np.testing.assert_allclose(neither, jnp.stack([clean, clean]), rtol=1e-5, atol=1e-6)


def _config(**settings):
  config = config_lib.base_config("ua_mt")
  config.model.unet.dropout_rate = 0.5
  config.num_steps = 10
  config.ua_mt.update(dict(num_samples=NUM_SAMPLES, **settings))
  return config


def test_step_trains_the_certain_pixels_towards_the_first_teacher_pass():
  config = _config()
  model, tx, batch = _model(), optax.sgd(0.1), _batch()
  state = ua_mt.init_state(jax.random.key(0), model, tx, batch, config)
  step = jax.jit(ua_mt.make_train_step(model, tx, config))
  rng = jax.random.key(5)
  new_state, metrics = step(state, batch, rng)

  # The step's own pieces, rebuilt from the same keys.
  teacher_rng, dropout_rng = jax.random.split(rng)
  samples = ua_mt.teacher_samples(teacher_rng, model, state.extras["teacher"], batch["image_u"],
                                  num_samples=NUM_SAMPLES + 1, noise_std=0.1, noise_clip=0.2)
  threshold = (0.75 + 0.25 * math.exp(-5.0)) * math.log(NUM_CLASSES)
  mask = ua_mt.certain_mask(samples[1:], batch["valid_u"], threshold=threshold)
  assert 0 < int(mask.sum()) < int(batch["valid_u"].sum())
  outputs, _ = common.forward(model, state.params, {},
                              jnp.concatenate([batch["image"], batch["image_u"]]),
                              train=True, rng=dropout_rng)
  student = jax.nn.softmax(outputs["logits"][2:])
  expected, _ = losses.probability_mse(student, samples[0], mask=mask)
  assert float(expected) > 0
  np.testing.assert_allclose(metrics["loss_consistency"], expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["entropy_threshold"], threshold, rtol=1e-6)
  np.testing.assert_allclose(metrics["certain_fraction"],
                             mask.sum() / batch["valid_u"].sum(), rtol=1e-6)
  # Ramps over the whole run (num_steps = 10) by default: 0.1 * exp(-5) at step 0.
  np.testing.assert_allclose(metrics["consistency_weight"], 0.1 * math.exp(-5.0), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], metrics["loss_x"] + metrics["consistency_weight"]
                             * metrics["loss_consistency"], rtol=1e-6)
  _, second = step(new_state, batch, jax.random.key(6))
  np.testing.assert_allclose(second["consistency_weight"], 0.1 * math.exp(-5.0 * 0.9**2),
                             rtol=1e-5)
  # The teacher is Mean Teacher's EMA: the first update averages with weight 1/2.
  jax.tree.map(lambda t, s0, s1: np.testing.assert_allclose(t, (s0 + s1) / 2, rtol=1e-5,
                                                             atol=1e-7),
               new_state.extras["teacher"]["params"], state.params, new_state.params)


@pytest.mark.parametrize("field, value, message", [
    ("ema_decay", 1.5, r"ua_mt\.ema_decay=1\.5; expected a value in \[0, 1\]"),
    ("consistency_weight", -1.0, r"ua_mt\.consistency_weight=-1\.0; expected >= 0"),
    ("rampup_steps", -2, r"ua_mt\.rampup_steps=-2; expected a step count"),
    ("threshold_rampup_steps", -2, r"ua_mt\.threshold_rampup_steps=-2"),
    ("num_samples", 0, r"ua_mt\.num_samples=0; expected at least 1"),
    ("noise_std", -0.1, r"ua_mt\.noise_std=-0\.1"),
    ("teacher_batch_stats", "train", r"ua_mt\.teacher_batch_stats='train'; expected one of"),
])
def test_config_values_out_of_range_are_rejected(field, value, message):
  config = _config()
  config.ua_mt[field] = value
  with pytest.raises(ValueError, match=rf"config\.{message}"):
    config_lib.validate_config(config)


def test_a_model_without_dropout_is_rejected():
  config = _config()
  config_lib.validate_config(config)
  config.model.unet.dropout_rate = 0.0
  with pytest.raises(ValueError, match=r"config\.model\.unet\.dropout_rate=0\.0; UA-MT"):
    config_lib.validate_config(config)
