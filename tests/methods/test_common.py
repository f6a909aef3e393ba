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
  # A separate pass normalises the (brighter) unlabeled images with their own statistics.
  alone, _ = model.apply(variables, unlabeled, train=True, mutable=["batch_stats"])
  assert not np.allclose(unlabeled_logits, alone["logits"], atol=1e-3)
