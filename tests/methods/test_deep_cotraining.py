"""Deep Co-Training's labeled shares and view-difference term, on a tiny UNet.

Deep Co-Training's step (its terms, learning, 1 vs 4 devices, a run of the loop) is
checked with the other methods in ``test_self_training.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import losses
from jaxsemiseg.augment import adversarial
from jaxsemiseg.methods import common, cotraining, deep_cotraining

import tiny_data

SIZE, BATCH, NUM_CLASSES = 16, 2, tiny_data.NUM_CLASSES


@pytest.fixture(scope="module")
def setup():
  """A depth-1 width-4 UNet, two stacked nets, a batch and the nets' clean probabilities."""
  model = tiny_data.tiny_unet()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, NUM_CLASSES, (BATCH, SIZE, SIZE))
  labels[0, -3:] = 255
  batch = {"image": jnp.asarray(rng.random((BATCH, SIZE, SIZE, 3)), jnp.float32),
           "label": jnp.asarray(labels, jnp.int32),
           "image_u": jnp.asarray(rng.random((BATCH, SIZE, SIZE, 3)), jnp.float32),
           "valid_u": jnp.ones((BATCH, SIZE, SIZE), bool).at[1, :, -2:].set(False)}
  state = cotraining.init_members(jax.random.key(0), model, optax.sgd(0.1), batch["image"],
                                  num_members=2)
  outputs, _ = cotraining.forward_members(
      model, state.params, state.batch_stats,
      jnp.concatenate([batch["image"], batch["image_u"]]), train=True)
  clean_probs = jax.nn.softmax(outputs["logits"], axis=-1)
  config = config_lib.base_config("deep_cotraining")
  return model, config, state, batch, clean_probs


def _net(state, index):
  return cotraining.member(state.params, index), cotraining.member(state.batch_stats, index)


def _logits(model, variables, images):
  outputs, _ = common.forward(model, *variables, images, train=False)
  return outputs["logits"]


def test_labeled_subsets_split_the_batch_into_disjoint_shares():
  shares = deep_cotraining.labeled_subsets(jax.random.key(0), 7, 3)
  assert shares.shape == (3, 7)
  np.testing.assert_array_equal(shares.sum(axis=0), 1)  # Every image has one owner.
  assert sorted(shares.sum(axis=1).tolist()) == [2, 2, 3]
  draws = {tuple(np.asarray(deep_cotraining.labeled_subsets(jax.random.key(k), 8, 2)[0]))
           for k in range(5)}
  assert len(draws) > 1


@pytest.mark.parametrize("attacker, judge", [(0, 1), (1, 0)])
def test_fgsm_examples_come_from_the_attacker_and_fool_the_judge(setup, attacker, judge):
  model, config, state, batch, clean_probs = setup
  term = deep_cotraining.view_difference(
      model, config, state.params, state.batch_stats, batch, clean_probs, jax.random.key(1),
      attacker=attacker, judge=judge, use_labeled=True)

  def expected(attacking_net):
    loss_fn = lambda variables, x, y: losses.cross_entropy(_logits(model, variables, x), y)[0]
    attack = adversarial.fgsm(loss_fn, epsilon=config.deep_cotraining.fgsm_epsilon)
    images_adv = attack(_net(state, attacking_net), batch["image"], batch["label"])
    return losses.kl_divergence(clean_probs[attacker, :BATCH],
                                _logits(model, _net(state, judge), images_adv),
                                mask=batch["label"] != 255)[0]

  np.testing.assert_allclose(term, expected(attacker), rtol=1e-5)
  assert float(term) > 1e-4
  assert abs(float(term - expected(judge))) > 1e-3 * float(term)


def test_vat_examples_come_from_the_attacker(setup):
  model, config, state, batch, clean_probs = setup
  key = jax.random.key(2)
  term = deep_cotraining.view_difference(
      model, config, state.params, state.batch_stats, batch, clean_probs, key,
      attacker=0, judge=1, use_labeled=False)
  settings = config.deep_cotraining
  perturb = adversarial.vat(lambda variables, x: _logits(model, variables, x),
                            xi=settings.vat_xi, epsilon=settings.vat_epsilon)
  vat_key, _ = jax.random.split(key)

  def expected(attacking_net):
    images_adv = jnp.clip(
        batch["image_u"] + perturb(_net(state, attacking_net), batch["image_u"], vat_key,
                                   mask=batch["valid_u"]), 0, 1)
    return losses.kl_divergence(clean_probs[0, BATCH:],
                                _logits(model, _net(state, 1), images_adv),
                                mask=batch["valid_u"])[0]

  np.testing.assert_allclose(term, expected(0), rtol=1e-5)
  assert float(term) > 1e-4
  assert not np.isclose(float(term), float(expected(1)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("branchless", [False, True])
def test_traced_pair_and_coin_match_the_static_call(setup, branchless):
  model, config, state, batch, clean_probs = setup

  def term(params, attacker, judge, use_labeled, branchless=False):
    return deep_cotraining.view_difference(
        model, config, params, state.batch_stats, batch, clean_probs, jax.random.key(3),
        attacker=attacker, judge=judge, use_labeled=use_labeled, branchless=branchless)

  traced = jax.jit(jax.value_and_grad(
      lambda params, attacker, judge, use_labeled: term(params, attacker, judge, use_labeled,
                                                        branchless)))
  for use_labeled in (True, False):
    static, static_grads = jax.value_and_grad(term)(state.params, 1, 0, use_labeled)
    value, grads = traced(state.params, 1, 0, jnp.asarray(use_labeled))
    np.testing.assert_allclose(value, static, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 grads, static_grads)


def test_view_difference_trains_only_the_judge(setup):
  model, config, state, batch, clean_probs = setup

  def term(params):
    return deep_cotraining.view_difference(
        model, config, params, state.batch_stats, batch, clean_probs, jax.random.key(4),
        attacker=0, judge=1, use_labeled=True)

  grads = jax.jit(jax.grad(term))(state.params)
  assert float(optax.tree.norm(cotraining.member(grads, 0))) == 0.0
  assert float(optax.tree.norm(cotraining.member(grads, 1))) > 1e-5


def test_step_is_the_same_with_the_nets_and_pairs_vmapped_or_looped(setup):
  model, _, state, batch, _ = setup
  # A step key whose coins send one pair to FGSM and the other to VAT (see the step).
  rng = next(key for key in map(jax.random.key, range(20)) if len(set(np.asarray(
      jax.random.bernoulli(jax.random.split(key, 4)[2], 0.5, (2,))).tolist())) == 2)
  results = []
  for member_map in ("vmap", "loop"):
    config = config_lib.base_config("deep_cotraining")
    config.update_from_flattened_dict({"member_map": member_map,
                                       "deep_cotraining.rampup_steps": 0})
    step = jax.jit(deep_cotraining.make_train_step(model, optax.sgd(0.1), config))
    results.append(step(state, batch, rng))
  (vmapped, vmapped_metrics), (looped, looped_metrics) = results
  assert float(looped_metrics["loss_adv"]) > 1e-4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               (vmapped.params, vmapped_metrics), (looped.params, looped_metrics))


def test_check_config_names_bad_values():
  config = config_lib.base_config("deep_cotraining")
  deep_cotraining.check_config(config)
  assert (config.deep_cotraining.cot_weight, config.deep_cotraining.adv_weight) == (10.0, 0.5)
  for key, value, message in [
      ("deep_cotraining.num_members", 1, r"num_members=1; expected >= 2"),
      ("batch_size", 1, r"config\.batch_size=1 < config\.deep_cotraining\.num_members=2"),
      ("deep_cotraining.cot_weight", -1.0, r"cot_weight=-1\.0"),
      ("deep_cotraining.vat_xi", 0.0, r"vat_xi=0\.0; expected > 0"),
      ("deep_cotraining.labeled_adversarial_p", 1.5, r"labeled_adversarial_p=1\.5"),
  ]:
    bad = config_lib.base_config("deep_cotraining")
    bad.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=message):
      deep_cotraining.check_config(bad)


def test_step_terms_equal_numpy_shares_and_jensen_shannon(setup):
  # Each net's CE on its own share of the labeled batch (summed over nets), and the JSD
  # H(mean p) - mean H(p) of the nets' probabilities on the valid unlabeled pixels.
  model, config, state, batch, clean_probs = setup
  config = config_lib.base_config("deep_cotraining")
  config.deep_cotraining.rampup_steps = 0
  key = jax.random.key(7)
  _, metrics = jax.jit(deep_cotraining.make_train_step(model, optax.sgd(0.1), config))(
      tiny_data.copy_state(state), batch, key)
  subsets = np.asarray(deep_cotraining.labeled_subsets(jax.random.split(key, 4)[0], BATCH, 2))
  probs = np.asarray(clean_probs, np.float64)
  labels = np.asarray(batch["label"])
  loss_x = 0.0
  for net in range(2):
    owned = subsets[net][:, None, None] & (labels != 255)
    picked = np.take_along_axis(probs[net, :BATCH], np.where(owned, labels, 0)[..., None],
                                -1)[..., 0]
    loss_x += -np.log(picked[owned]).mean()
  entropy = lambda p: -(p * np.log(p)).sum(-1)
  unlabeled = probs[:, BATCH:]
  jsd = entropy(unlabeled.mean(0)) - entropy(unlabeled).mean(0)
  np.testing.assert_allclose(metrics["loss_x"], loss_x, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_cot"], jsd[np.asarray(batch["valid_u"])].mean(),
                             rtol=1e-4)
  np.testing.assert_allclose([metrics["cot_weight"], metrics["adv_weight"]], [10.0, 0.5])
