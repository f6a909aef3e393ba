"""Mean Teacher: the EMA by hand, the teacher a real step leaves, prediction by the teacher.

The step's terms, learning, 1 vs 4 devices and a run of the loop are checked with the
other self-training methods in ``test_self_training.py``.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg.methods import mean_teacher, self_training


def test_ema_decay_warms_up_then_stays_at_alpha():
  decays = [float(self_training.ema_decay(step, alpha=0.99)) for step in (1, 2, 9, 99, 1000)]
  np.testing.assert_allclose(decays, [1 / 2, 2 / 3, 9 / 10, 0.99, 0.99], rtol=1e-6)


def test_ema_update_is_the_weighted_average_of_every_leaf():
  teacher = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0)}}
  student = {"a": jnp.array([3.0, 2.0]), "b": {"c": jnp.array(0.0)}}
  first = self_training.ema_update(teacher, student,
                                   decay=self_training.ema_decay(1, alpha=0.99))
  np.testing.assert_allclose(first["a"], [2.0, 2.0])
  np.testing.assert_allclose(first["b"]["c"], 2.0)
  late = self_training.ema_update(teacher, student, decay=0.9)
  np.testing.assert_allclose(late["a"], [0.9 * 1 + 0.1 * 3, 2.0], rtol=1e-6)
  np.testing.assert_allclose(late["b"]["c"], 0.9 * 4, rtol=1e-6)


class _TinyBatchNormNet(nn.Module):
  """The smallest model of the contract with BatchNorm, so both statistics choices matter."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, images, *, train, mc_dropout=False):
    del mc_dropout
    x = nn.Conv(4, (3, 3))(images)
    features = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return {"logits": nn.Conv(self.num_classes, (1, 1))(features), "features": features}


def _batch():
  rng = np.random.default_rng(0)
  valid = np.ones((2, 8, 8), bool)
  valid[1, -2:] = False
  return {"image": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 3, (2, 8, 8)), jnp.int32),
          "image_u": jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32),
          "valid_u": jnp.asarray(valid)}


def _two_steps(teacher_batch_stats):
  config = config_lib.base_config("mean_teacher")
  config.mean_teacher.update(dict(rampup_steps=4, strong_colour=False,
                                  teacher_batch_stats=teacher_batch_stats))
  model, tx, batch = _TinyBatchNormNet(), optax.sgd(0.1), _batch()
  state = mean_teacher.init_state(jax.random.key(0), model, tx, batch, config)
  step = jax.jit(mean_teacher.make_train_step(model, tx, config))
  states, metrics = [state], []
  for i in range(2):
    state, step_metrics = step(state, batch, jax.random.key(i))
    states.append(state)
    metrics.append(step_metrics)
  return model, config, batch, states, metrics


def _assert_trees_close(actual, expected):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               actual, expected)


@pytest.mark.parametrize("teacher_batch_stats", ["ema", "copy"])
def test_teacher_is_the_warmed_up_average_of_the_students(teacher_batch_stats):
  _, _, _, states, metrics = _two_steps(teacher_batch_stats)
  initial, first, second = states
  _assert_trees_close(initial.extras["teacher"]["params"], initial.params)
  np.testing.assert_allclose([m["ema_decay"] for m in metrics], [1 / 2, 2 / 3], rtol=1e-6)

  def average(decay, teacher, student):
    return jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, teacher, student)

  teacher1 = average(1 / 2, initial.params, first.params)
  _assert_trees_close(first.extras["teacher"]["params"], teacher1)
  _assert_trees_close(second.extras["teacher"]["params"],
                      average(2 / 3, teacher1, second.params))
  assert not np.allclose(first.batch_stats["BatchNorm_0"]["mean"],
                         initial.batch_stats["BatchNorm_0"]["mean"])
  if teacher_batch_stats == "copy":
    expected = second.batch_stats
  else:
    expected = average(2 / 3, average(1 / 2, initial.batch_stats, first.batch_stats),
                       second.batch_stats)
  _assert_trees_close(second.extras["teacher"]["batch_stats"], expected)


def test_consistency_weight_ramps_up_and_weights_the_consistency_term():
  _, _, _, _, metrics = _two_steps("ema")
  # 100 * exp(-5 (1 - t / 4)^2) at t = 0 and 1 updates done.
  np.testing.assert_allclose([m["consistency_weight"] for m in metrics],
                             [100 * math.exp(-5), 100 * math.exp(-5 * 0.75**2)], rtol=1e-5)
  for m in metrics:
    assert m["loss_consistency"] > 0
    np.testing.assert_allclose(m["loss"], m["loss_x"] + m["consistency_weight"]
                               * m["loss_consistency"], rtol=1e-6)


def test_consistency_is_the_mse_of_student_and_teacher_probabilities_on_valid_pixels():
  model, _, batch, states, metrics = _two_steps("ema")
  initial = states[0]
  teacher = initial.extras["teacher"]
  teacher_probs = np.asarray(jax.nn.softmax(model.apply(
      {"params": teacher["params"], "batch_stats": teacher["batch_stats"]}, batch["image_u"],
      train=False)["logits"]))
  # The student sees the labeled and unlabeled images in one train-mode batch.
  student_logits = model.apply(
      {"params": initial.params, "batch_stats": initial.batch_stats},
      jnp.concatenate([batch["image"], batch["image_u"]]), train=True,
      mutable=["batch_stats"])[0]["logits"][2:]
  squared = (np.asarray(jax.nn.softmax(student_logits)) - teacher_probs) ** 2
  valid = np.asarray(batch["valid_u"])
  np.testing.assert_allclose(metrics[0]["loss_consistency"], squared[valid].mean(),
                             rtol=1e-5)


def test_predictions_come_from_the_teacher():
  model, config, batch, states, _ = _two_steps("ema")
  state = states[-1]
  probs = mean_teacher.make_predict_fn(model, config)(state, batch["image"])
  teacher = state.extras["teacher"]
  expected = jax.nn.softmax(model.apply(
      {"params": teacher["params"], "batch_stats": teacher["batch_stats"]}, batch["image"],
      train=False)["logits"])
  student = jax.nn.softmax(model.apply(state.variables, batch["image"], train=False)["logits"])
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(probs, student, atol=1e-4)


@pytest.mark.parametrize("field, value, message", [
    ("ema_decay", 1.5, r"ema_decay=1\.5; expected a value in \[0, 1\]"),
    ("consistency_weight", -1.0, r"consistency_weight=-1\.0; expected >= 0"),
    ("rampup_steps", -1, r"rampup_steps=-1"),
    ("teacher_batch_stats", "train", r"teacher_batch_stats='train'; expected one of"),
])
def test_config_values_out_of_range_are_rejected(field, value, message):
  config = config_lib.base_config("mean_teacher")
  config.mean_teacher[field] = value
  with pytest.raises(ValueError, match=rf"config\.mean_teacher\.{message}"):
    config_lib.validate_config(config)
