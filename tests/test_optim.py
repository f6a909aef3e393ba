import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import optim


def _optimizer_config(**kwargs):
  config = config_lib.base_config().optimizer
  config.update(kwargs)
  return config


def test_poly_schedule_matches_formula():
  config = _optimizer_config(schedule="poly", learning_rate=0.01, poly_power=0.9)
  schedule = optim.learning_rate_schedule(config, num_steps=100)
  for t in (0, 10, 50, 99):
    np.testing.assert_allclose(schedule(t), 0.01 * (1 - t / 100) ** 0.9, rtol=1e-5)


def test_warmup_then_cosine():
  config = _optimizer_config(schedule="cosine", learning_rate=1.0, warmup_steps=10)
  schedule = optim.learning_rate_schedule(config, num_steps=110)
  np.testing.assert_allclose(schedule(5), 0.5, rtol=1e-6)
  np.testing.assert_allclose(schedule(10), 1.0, rtol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.5, rtol=1e-5)


def test_head_lr_multiplier_scales_only_non_backbone_params():
  config = _optimizer_config(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=0.1,
                             head_lr_multiplier=10.0, schedule="cosine")
  tx, _ = optim.make_optimizer(config, num_steps=1000)
  params = {"backbone": {"w": jnp.ones(2)}, "decoder": {"w": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["w"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates["decoder"]["w"], -1.0, rtol=1e-6)


def test_sgd_weight_decay_is_coupled_l2():
  config = _optimizer_config(name="sgd", momentum=0.0, weight_decay=0.5, learning_rate=0.1)
  tx, _ = optim.make_optimizer(config, num_steps=10)
  params = {"w": jnp.full(2, 2.0)}
  updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * 2.0, rtol=1e-6)


def test_grad_clipping():
  config = _optimizer_config(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0,
                             grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(config, num_steps=10)
  params = {"w": jnp.zeros(2)}
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)


@pytest.mark.parametrize("field,value", [("name", "lamb"), ("schedule", "step")])
def test_unknown_names_raise(field, value):
  with pytest.raises(ValueError, match=f"config.optimizer.{field}={value!r}"):
    optim.make_optimizer(_optimizer_config(**{field: value}), num_steps=10)
