import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg import parallel


def test_fake_devices_are_visible():
  assert jax.device_count() == 4


def test_mesh_and_batch_sharding():
  mesh = parallel.make_mesh(4)
  batch = parallel.to_global_batch(
      {"image": np.arange(8 * 2, dtype=np.float32).reshape(8, 2), "id": np.array(["a"] * 8)},
      mesh)
  assert set(batch) == {"image"}
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(batch["image"].addressable_shards) == 4
  np.testing.assert_array_equal(batch["image"], np.arange(16).reshape(8, 2))


def test_batch_size_must_divide_over_devices():
  parallel.check_batch_size(8, parallel.make_mesh(4))
  with pytest.raises(ValueError, match=r"config\.batch_size=6 is not divisible by the 4"):
    parallel.check_batch_size(6, parallel.make_mesh(4))
  with pytest.raises(ValueError, match="num_devices=8"):
    parallel.make_mesh(8)


def test_compiled_step_matches_unsharded_and_donates():
  def step(state, batch, rng):
    del rng
    grad = jnp.mean(batch["x"], axis=0)
    return {"w": state["w"] - grad}, {"norm": jnp.sum(grad ** 2)}

  batch = {"x": np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)}
  expected_state, expected_metrics = step({"w": jnp.ones(3)}, batch, None)
  mesh = parallel.make_mesh(4)
  compiled = parallel.compile_step(step, mesh)
  state = parallel.replicate({"w": jnp.ones(3)}, mesh)
  new_state, metrics = compiled(state, parallel.to_global_batch(batch, mesh), jax.random.key(0))
  np.testing.assert_allclose(new_state["w"], expected_state["w"], rtol=1e-6)
  np.testing.assert_allclose(metrics["norm"], expected_metrics["norm"], rtol=1e-6)
  assert state["w"].is_deleted()


def test_cpu_steps_compile_at_the_library_level_unless_xla_flags_set_one():
  level = {"xla_backend_optimization_level": parallel.CPU_BACKEND_OPTIMIZATION_LEVEL}
  assert parallel.step_compiler_options("cpu", "") == level
  assert parallel.step_compiler_options(
      "cpu", "--xla_force_host_platform_device_count=4") == level
  assert parallel.step_compiler_options("cpu", "--xla_backend_optimization_level=0") == {}
  assert parallel.step_compiler_options("gpu", "") == {}
  assert parallel.step_compiler_options("tpu", "") == {}
  # XLA:CPU accepts the option, and the step's arithmetic is the same.
  step = jax.jit(lambda x: jnp.tanh(x) @ x.T, compiler_options=level)
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  np.testing.assert_allclose(step(x), np.tanh(x) @ x.T, rtol=1e-5)
