"""stacked.stacked_map: vmap and the unrolled loop agree with each member run alone."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import models, stacked

SIZE, BATCH, NUM_CLASSES, NUM_MEMBERS = 8, 2, 3, 3


@pytest.fixture(scope="module")
def setup():
  """A tiny UNet with dropout, 3 stacked members, images, dropout keys, loss weights."""
  model = models.create_model(dict(name="unet", num_classes=NUM_CLASSES, width=4, depth=1,
                                   dropout_rate=0.5))
  images = jax.random.uniform(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  params = jax.vmap(lambda key: model.init(key, images, train=False)["params"])(
      jax.random.split(jax.random.key(1), NUM_MEMBERS))
  keys = jax.random.split(jax.random.key(2), NUM_MEMBERS)
  weights = jax.random.normal(jax.random.key(3), (NUM_MEMBERS, BATCH, SIZE, SIZE, NUM_CLASSES))
  return model, params, images, keys, weights


def _logits_fn(model):
  def logits(params, images, key):
    return model.apply({"params": params}, images, train=True, rngs={"dropout": key})["logits"]
  return logits


@pytest.mark.parametrize("member_map", ["vmap", "loop"])
def test_outputs_and_gradients_equal_each_member_run_alone(setup, member_map):
  model, params, images, keys, weights = setup
  logits = _logits_fn(model)

  def stacked_loss(params):
    outputs = stacked.stacked_map(logits, params, images, keys, in_axes=(0, None, 0),
                                  member_map=member_map)
    return jnp.sum(outputs * weights), outputs

  (_, outputs), grads = jax.jit(jax.value_and_grad(stacked_loss, has_aux=True))(params)
  single = jax.jit(jax.value_and_grad(
      lambda p, key, w: jnp.sum(logits(p, images, key) * w), has_aux=False))
  assert outputs.shape == (NUM_MEMBERS, BATCH, SIZE, SIZE, NUM_CLASSES)
  for index in range(NUM_MEMBERS):
    member_params = stacked.member(params, index)
    expected = jax.jit(logits)(member_params, images, keys[index])
    np.testing.assert_allclose(outputs[index], expected, rtol=1e-5, atol=1e-5)
    _, expected_grads = single(member_params, keys[index], weights[index])
    jax.tree.map(functools.partial(_assert_gradients_match, scale=max(
        float(np.abs(leaf).max()) for leaf in jax.tree.leaves(expected_grads))),
                 stacked.member(grads, index), expected_grads)
  # The members differ, so a mix-up of members or keys could not pass.
  assert not np.allclose(outputs[0], outputs[1])
  assert not np.allclose(grads["classifier"]["kernel"][0], grads["classifier"]["kernel"][1])


def _assert_gradients_match(got, want, *, scale: float) -> None:
  """``got`` equals ``want`` to float32 round-off of gradients whose largest entry is ``scale``.

  The bias of a convolution that feeds a GroupNorm of one channel per group has a zero
  gradient in exact arithmetic: both sides are then rounding noise of sums whose terms are
  of the gradient's scale (vmap and a single member sum in different orders), so they are
  checked to be that small instead of equal.
  """
  noise = 1e-6 * scale
  if np.abs(want).max() <= noise:
    assert np.abs(got).max() <= noise, (np.abs(got).max(), noise)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _compiled_text(setup, member_map: str) -> str:
  """StableHLO of the gradient of the members' eval-mode (no dropout, no PRNG) forward."""
  model, params, images, _, weights = setup

  def loss(params):
    outputs = stacked.stacked_map(
        lambda p: model.apply({"params": p}, images, train=False)["logits"], params,
        member_map=member_map)
    return jnp.sum(outputs * weights)

  return jax.jit(jax.grad(loss)).lower(params).as_text()


def test_loop_runs_plain_convolutions_outside_any_loop_and_vmap_groups_them(setup):
  # Why the loop is unrolled: XLA:CPU runs grouped convolutions, and backward-pass
  # convolutions inside a while-loop body, far slower than plain ones in the entry
  # computation.
  group_counts = lambda text: {int(count) for count in re.findall(
      r"(?:feature|batch)_group_count = (\d+)", text)}
  loop = _compiled_text(setup, "loop")
  assert group_counts(loop) == {1}
  assert "stablehlo.while" not in loop
  assert NUM_MEMBERS in group_counts(_compiled_text(setup, "vmap"))


def test_unstack_gives_each_member_and_its_gradient_is_one_concatenate():
  tree = {"x": jnp.arange(12.0).reshape(3, 4), "keys": jax.random.split(jax.random.key(0), 3),
          "empty": {}}
  members = stacked.unstack(tree, 3)
  assert len(members) == 3
  for index, one in enumerate(members):
    np.testing.assert_array_equal(one["x"], tree["x"][index])
    np.testing.assert_array_equal(jax.random.key_data(one["keys"]),
                                  jax.random.key_data(tree["keys"][index]))
    assert one["empty"] == {}
  # Indexing member k has a zero-padded copy of the whole stack as its gradient; with K
  # large inputs (CCT's 30 feature maps) those K copies cost more than the heads.
  loss = lambda x: sum(jnp.sum(jnp.sin(member) * k) for k, member in
                       enumerate(stacked.unstack(x, 3)))
  gradient = jax.jit(jax.grad(loss)).lower(tree["x"]).as_text()
  assert "stablehlo.pad" not in gradient and "stablehlo.concatenate" in gradient
  np.testing.assert_allclose(jax.grad(loss)(tree["x"]),
                             jnp.cos(tree["x"]) * jnp.arange(3.0)[:, None], rtol=1e-6)


def test_shared_and_empty_arguments_are_passed_through():
  values = jnp.arange(6.0).reshape(3, 2)
  shared = jnp.array([10.0, 20.0])
  for member_map in ("vmap", "loop"):
    total, nothing, empty = stacked.stacked_map(
        lambda x, y, key, stats: (x + y, key, stats), values, shared, None, {},
        in_axes=(0, None, 0, 0), member_map=member_map)
    np.testing.assert_array_equal(total, values + shared)
    assert nothing is None and empty == {}


def test_auto_loops_on_cpu_and_vmaps_on_accelerators(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert stacked.resolve_member_map("auto") == "loop"
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert stacked.resolve_member_map("auto") == "vmap"
  assert stacked.resolve_member_map("loop") == "loop"


def test_bad_arguments_raise_clear_errors():
  values = jnp.zeros((3, 2))
  with pytest.raises(ValueError, match=r"member_map='scan'; expected one of \('auto'"):
    stacked.stacked_map(jnp.sum, values, member_map="scan")
  with pytest.raises(ValueError, match=r"in_axes=\(1,\) for 1 arguments"):
    stacked.stacked_map(jnp.sum, values, in_axes=(1,))
  with pytest.raises(ValueError, match=r"in_axes=\(0,\) for 2 arguments"):
    stacked.stacked_map(jnp.add, values, values, in_axes=(0,))
  with pytest.raises(ValueError, match=r"leading sizes \[2, 3\]"):
    stacked.stacked_map(jnp.add, values, jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="nothing is mapped"):
    stacked.stacked_map(jnp.sum, values, in_axes=None)


def test_config_member_map_is_validated():
  config = config_lib.base_config()
  assert config.member_map == "auto"
  config.member_map = "unrolled"
  with pytest.raises(ValueError, match=r"config\.member_map='unrolled'; expected one of"):
    config_lib.validate_config(config)
