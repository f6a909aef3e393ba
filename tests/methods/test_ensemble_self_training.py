"""Ensemble self-training: stacked members, the filters, the members' step, the mean prediction.

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
from jaxsemiseg import models, uncertainty
from jaxsemiseg.methods import cotraining, self_training
from jaxsemiseg.methods import ensemble_self_training as ensemble

NUM_CLASSES = 3
NUM_MEMBERS = 3


def _model():
  return models.create_model(dict(name="unet", num_classes=NUM_CLASSES, width=4, depth=1))


def _batch():
  rng = np.random.default_rng(0)
  valid = np.ones((2, 8, 8), bool)
  valid[1, -2:] = False
  batch = {"image": rng.uniform(size=(2, 8, 8, 3)),
           "label": rng.integers(0, NUM_CLASSES, (2, 8, 8)),
           "image_u": rng.uniform(size=(2, 8, 8, 3)), "valid_u": valid,
           "image_u2": rng.uniform(size=(2, 8, 8, 3)), "valid_u2": valid[::-1]}
  return {key: jnp.asarray(value, jnp.float32 if key.startswith("image") else None)
          for key, value in batch.items()}


def _config(**settings):
  config = config_lib.base_config("ensemble_self_training")
  config.ensemble_self_training.update(dict(num_members=NUM_MEMBERS, threshold=0.4,
                                            **settings))
  return config


def _member(tree, index):
  return jax.tree.map(lambda x: x[index], tree)


def test_members_start_from_different_inits_with_their_own_optimizer_states():
  model, tx = _model(), optax.sgd(0.1, momentum=0.9)
  state = ensemble.init_state(jax.random.key(0), model, tx, _batch(), _config())
  assert int(state.step) == 0
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.shape[0] == NUM_MEMBERS
  kernel = state.params["classifier"]["kernel"]
  for i in range(NUM_MEMBERS):
    for j in range(i):
      assert not np.allclose(kernel[i], kernel[j])


def test_filters_by_hand():
  # K = 2 members, C = 2 classes, three pixels:
  #   agreeing at 0.97      -> confidence 0.97, entropy 0.135, mutual information 0;
  #   0.9/0.1 vs 0.1/0.9    -> confidence 0.5,  entropy ln 2,  MI ln 2 - H(0.9) = 0.368;
  #   agreeing at 0.6       -> confidence 0.6,  entropy 0.673, MI 0.
  first = [[0.97, 0.03], [0.9, 0.1], [0.6, 0.4]]
  second = [[0.97, 0.03], [0.1, 0.9], [0.6, 0.4]]
  samples = jnp.array([first, second])
  kept = {measure: ensemble.kept_pixels(samples, measure=measure, threshold=threshold)
          for measure, threshold in (("confidence", 0.95), ("entropy", 0.2),
                                     ("mutual_information", 0.05))}
  np.testing.assert_array_equal(kept["confidence"], [True, False, False])
  np.testing.assert_array_equal(kept["entropy"], [True, False, False])
  np.testing.assert_array_equal(kept["mutual_information"], [True, False, True])
  h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
  np.testing.assert_allclose(uncertainty.mutual_information(samples)[1], math.log(2) - h_09,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="measure='variance'; expected one of"):
    ensemble.kept_pixels(samples, measure="variance", threshold=0.1)


def test_identical_members_have_zero_mutual_information_and_the_filter_keeps_every_pixel():
  model, tx, batch = _model(), optax.sgd(0.1), _batch()
  state = ensemble.init_state(jax.random.key(0), model, tx, batch, _config())
  first = _member(state.params, 0)
  identical = jax.tree.map(lambda x: jnp.stack([x] * NUM_MEMBERS), first)
  samples = cotraining.member_probabilities(model, identical, {}, batch["image_u"])
  np.testing.assert_allclose(uncertainty.mutual_information(samples), 0.0, atol=1e-6)
  pseudo = ensemble.ensemble_pseudo_labels(model, identical, {}, batch["image_u"],
                                           batch["valid_u"], measure="mutual_information",
                                           threshold=0.05)
  np.testing.assert_array_equal(pseudo.confidence, 1.0)
  np.testing.assert_array_equal(pseudo.valid, batch["valid_u"])
  single = jax.nn.softmax(model.apply({"params": first}, batch["image_u"],
                                      train=False)["logits"])
  np.testing.assert_array_equal(pseudo.labels, jnp.argmax(single, axis=-1))
  # Differently initialised members disagree, and a strict filter drops those pixels.
  different = ensemble.ensemble_pseudo_labels(model, state.params, {}, batch["image_u"],
                                              batch["valid_u"], measure="mutual_information",
                                              threshold=1e-4)
  assert 0.0 <= float(different.confidence.mean()) < 1.0


def test_prediction_is_the_mean_of_the_members_probabilities():
  model, tx, batch = _model(), optax.sgd(0.1), _batch()
  config = _config()
  state = ensemble.init_state(jax.random.key(0), model, tx, batch, config)
  probs = ensemble.make_predict_fn(model, config)(state, batch["image"])
  members = [jax.nn.softmax(model.apply({"params": _member(state.params, k)}, batch["image"],
                                        train=False)["logits"]) for k in range(NUM_MEMBERS)]
  np.testing.assert_allclose(probs, np.mean(members, axis=0), rtol=1e-5, atol=1e-7)


def test_unlabeled_loss_is_numpy_ce_on_the_mean_predictions_confident_argmax():
  # No CutMix: member k's strong colour view of image_u against the argmax of the members'
  # mean probability where its max is >= 0.4, divided by all valid pixels; loss_u is the
  # mean over members.
  config = _config(cutmix_p=0.0)
  model, tx, batch = _model(), optax.sgd(0.1), _batch()
  state = ensemble.init_state(jax.random.key(0), model, tx, batch, config)
  rng = jax.random.key(2)
  _, metrics = jax.jit(ensemble.make_train_step(model, tx, config))(state, batch, rng)

  def probs(params, images):
    return np.asarray(jax.nn.softmax(model.apply({"params": params}, images,
                                                  train=False)["logits"]), np.float64)

  members = [_member(state.params, k) for k in range(NUM_MEMBERS)]
  mean = np.mean([probs(params, batch["image_u"]) for params in members], axis=0)
  labels, kept = mean.argmax(-1), (mean.max(-1) >= 0.4) & np.asarray(batch["valid_u"], bool)
  assert 0 < kept.sum() < np.asarray(batch["valid_u"]).sum()
  losses_u = []
  for k, key in enumerate(jax.random.split(rng, NUM_MEMBERS)):
    strong, _ = self_training.strong_cutmix_views(
        jax.random.split(key, 3)[0], batch["image_u"], batch["image_u2"], num_views=1,
        cutmix_p=0.0)
    log_probs = np.log(probs(members[k], strong[0]))
    ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    losses_u.append(ce[kept].sum() / np.asarray(batch["valid_u"]).sum())
  np.testing.assert_allclose(metrics["loss_u"], np.mean(losses_u), rtol=1e-5)


@pytest.mark.parametrize("member_map", ["vmap", "loop"])
def test_step_equals_one_step_of_each_member_on_its_own(member_map):
  config = _config(bootstrap=True, cutmix_p=1.0)
  config.member_map = member_map
  model, tx, batch = _model(), optax.sgd(0.1, momentum=0.9), _batch()
  state = ensemble.init_state(jax.random.key(0), model, tx, batch, config)
  # A step first, so the momentum buffers are not zero and their update is compared too.
  step = jax.jit(ensemble.make_train_step(model, tx, config))
  state, _ = step(state, batch, jax.random.key(1))
  rng = jax.random.key(2)
  new_state, metrics = step(state, batch, rng)

  settings = config.ensemble_self_training
  both = ensemble.ensemble_pseudo_labels(
      model, state.params, {}, jnp.concatenate([batch["image_u"], batch["image_u2"]]),
      jnp.concatenate([batch["valid_u"], batch["valid_u2"]]), measure=settings.filter,
      threshold=ensemble.filter_threshold(settings))
  pseudo, partner = _member(both, slice(0, 2)), _member(both, slice(2, 4))
  member_step = jax.jit(ensemble.make_member_step(model, tx, config))
  keys = jax.random.split(rng, NUM_MEMBERS)
  losses_u = []
  for k in range(NUM_MEMBERS):
    member = state.replace(params=_member(state.params, k),
                           opt_state=_member(state.opt_state, k))
    member, member_metrics = member_step(member, batch, pseudo, partner, keys[k])
    losses_u.append(member_metrics["loss_u"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 (member.params, member.opt_state),
                 (_member(new_state.params, k), _member(new_state.opt_state, k)))
  np.testing.assert_allclose(metrics["loss_u"], np.mean(losses_u), rtol=1e-5)
  assert float(metrics["loss_u"]) > 0
  assert int(new_state.step) == 2
  np.testing.assert_allclose(metrics["confident_fraction"],
                             (pseudo.confidence * pseudo.valid).sum() / pseudo.valid.sum(),
                             rtol=1e-6)

  # With bootstrap, the labeled loss is on a resample of the labeled batch: without it, the
  # same member and key give another labeled loss (a resample of two images is one of them
  # twice for half of the keys, so four keys are tried).
  plain_step = jax.jit(ensemble.make_member_step(model, tx, _config(cutmix_p=1.0)))
  member = state.replace(params=_member(state.params, 0), opt_state=_member(state.opt_state, 0))
  differs = []
  for key in jax.random.split(jax.random.key(7), 4):
    _, resampled = member_step(member, batch, pseudo, partner, key)
    _, plain = plain_step(member, batch, pseudo, partner, key)
    differs.append(not np.isclose(resampled["loss_x"], plain["loss_x"]))
  assert any(differs)


@pytest.mark.parametrize("field, value, message", [
    ("num_members", 0, r"num_members=0; expected at least 1"),
    ("filter", "variance", r"filter='variance'; expected one of"),
    ("threshold", 1.5, r"threshold=1\.5; expected a value in \[0, 1\]"),
    ("cutmix_p", -0.1, r"cutmix_p=-0\.1; expected a value in \[0, 1\]"),
    ("max_entropy", -0.1, r"max_entropy=-0\.1; expected a value in nats >= 0"),
    ("max_mutual_information", -1.0, r"max_mutual_information=-1\.0; expected"),
])
def test_config_values_out_of_range_are_rejected(field, value, message):
  config = _config()
  config.ensemble_self_training[field] = value
  with pytest.raises(ValueError, match=rf"config\.ensemble_self_training\.{message}"):
    config_lib.validate_config(config)
