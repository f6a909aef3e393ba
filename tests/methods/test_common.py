"""The joint labeled + unlabeled forward pass that the consistency methods share."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsemiseg import config as config_lib
from jaxsemiseg import losses
from jaxsemiseg.methods import common


class _NormThenClassify(nn.Module):
  """BatchNorm on the pixels, then a per-pixel linear classifier: batch statistics show."""

  @nn.compact
  def __call__(self, images, *, train, mc_dropout=False):
    del mc_dropout
    features = nn.BatchNorm(use_running_average=not train)(images)
    return {"logits": nn.Dense(3)(features), "features": features}


def test_labeled_and_unlabeled_images_share_one_batch_norm_pass():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((2, 4, 4, 3)), jnp.float32)
  unlabeled = jnp.asarray(rng.random((3, 4, 4, 3)) + 1.0, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (2, 4, 4)), jnp.int32).at[0, 0].set(255)
  model = _NormThenClassify()
  variables = model.init(jax.random.key(0), images, train=False)
  loss_config = config_lib.base_config().loss

  loss_x, terms, unlabeled_logits, batch_stats = common.forward_labeled_and_unlabeled(
      jax.random.key(1), model, variables["params"], variables["batch_stats"], images, labels,
      unlabeled, loss_config=loss_config)

  joint, updates = model.apply(variables, jnp.concatenate([images, unlabeled]), train=True,
                               mutable=["batch_stats"])
  np.testing.assert_allclose(unlabeled_logits, joint["logits"][2:], rtol=1e-6)
  expected_loss, _ = losses.cross_entropy(joint["logits"][:2], labels)
  np.testing.assert_allclose(loss_x, expected_loss, rtol=1e-6)
  np.testing.assert_allclose(terms["loss_ce"], expected_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), batch_stats,
               updates["batch_stats"])
  # Target rows still share the pass when BatchNorm couples them, as in the references.
  as_targets = common.forward_labeled_and_unlabeled(
      jax.random.key(1), model, variables["params"], variables["batch_stats"], images, labels,
      unlabeled, loss_config=loss_config, num_target_rows=3)
  np.testing.assert_allclose(as_targets[2], unlabeled_logits, rtol=1e-6)
  # A separate pass normalises the (brighter) unlabeled images with their own statistics.
  alone, _ = model.apply(variables, unlabeled, train=True, mutable=["batch_stats"])
  assert not np.allclose(unlabeled_logits, alone["logits"], atol=1e-3)


class _Convolve(nn.Module):
  """Two convolutions and no BatchNorm: the rows of a batch do not interact."""

  @nn.compact
  def __call__(self, images, *, train, mc_dropout=False):
    del train, mc_dropout
    features = nn.relu(nn.Conv(8, (3, 3))(images))
    return {"logits": nn.Conv(3, (3, 3))(features), "features": features}


def test_target_rows_of_a_model_without_batch_norm_skip_the_backward_pass():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((2, 8, 8, 3)), jnp.float32)
  unlabeled = jnp.asarray(rng.random((6, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (2, 8, 8)), jnp.int32)
  model = _Convolve()
  params = model.init(jax.random.key(0), images, train=False)["params"]
  loss_config = config_lib.base_config().loss

  def loss(params, num_target_rows):
    loss_x, _, unlabeled_logits, _ = common.forward_labeled_and_unlabeled(
        jax.random.key(1), model, params, {}, images, labels, unlabeled,
        loss_config=loss_config, num_target_rows=num_target_rows)
    # The first 4 unlabeled rows as targets (no gradient), the last 2 as predictions.
    targets, predictions = unlabeled_logits[:4], unlabeled_logits[4:]
    return (loss_x + jnp.mean(jax.lax.stop_gradient(targets[:2]) * predictions),
            unlabeled_logits)

  results = {}
  for targets in (0, 4):
    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    grads, logits = grad_fn(params, targets)
    cost = grad_fn.lower(params, targets).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    results[targets] = grads, logits, cost["flops"]
  (joint_grads, joint_logits, joint_flops), (grads, logits, flops) = results[0], results[4]
  np.testing.assert_allclose(logits, joint_logits, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads,
               joint_grads)
  # 4 of 8 rows are targets: their input and weight gradients are gone.
  assert flops < 0.8 * joint_flops
