"""The supervised step with adversarial training (FGSM / PGD) switched on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg import data as data_lib
from jaxsemiseg import parallel, train
from jaxsemiseg.methods import common, supervised

import tiny_data


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def run_and_batch(dataset_root):
  """One built run (adversarial settings only change the step) and a fixed batch."""
  config = tiny_data.tiny_config(dataset_root, num_steps=100)
  run = train.build_run(config, num_classes=tiny_data.NUM_CLASSES, mesh=parallel.make_mesh(1))
  labeled = data_lib.load_datasets(config).labeled
  examples = [labeled[i] for i in range(4)]
  batch = {"image": jnp.asarray(np.stack([e["image"] for e in examples]), jnp.float32) / 255,
           "label": jnp.asarray(np.stack([e["label"] for e in examples]), jnp.int32)}
  return run, batch


def _config(run, **adversarial):
  config = run.config.copy_and_resolve_references()
  config.supervised.adversarial.update(adversarial)
  return config


def test_fgsm_example_is_the_signed_gradient_step(run_and_batch):
  run, batch = run_and_batch
  config = _config(run, attack="fgsm", epsilon=0.05)
  attack = supervised.make_attack(run.model, run.state.batch_stats, config)
  images_adv = attack(run.state.params, batch["image"], batch["label"], jax.random.key(0))

  def loss(images):
    outputs, _ = common.forward(run.model, run.state.params, run.state.batch_stats, images,
                                train=False)
    return common.supervised_loss(outputs["logits"], batch["label"], config.loss)[0]

  expected = jnp.clip(batch["image"] + 0.05 * jnp.sign(jax.grad(loss)(batch["image"])), 0, 1)
  np.testing.assert_allclose(images_adv, expected, atol=1e-6)
  assert float(loss(images_adv)) > float(loss(batch["image"]))


def test_alpha_one_is_the_plain_step(run_and_batch):
  run, batch = run_and_batch
  config = _config(run, attack="pgd", alpha=1.0, pgd_num_steps=2)
  plain_state, _ = jax.jit(run.method.make_train_step(run.model, run.tx, run.config))(
      run.state, batch, jax.random.key(1))
  state, metrics = jax.jit(run.method.make_train_step(run.model, run.tx, config))(
      run.state, batch, jax.random.key(1))
  assert float(metrics["loss_adversarial"]) > float(metrics["loss_ce"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               state.params, plain_state.params)


def test_adversarial_training_lowers_both_losses(run_and_batch):
  run, batch = run_and_batch
  config = _config(run, attack="fgsm", epsilon=0.03)
  step = jax.jit(run.method.make_train_step(run.model, run.tx, config))
  state, first = step(run.state, batch, jax.random.key(0))
  for i in range(1, 25):
    state, metrics = step(state, batch, jax.random.key(i))
  assert float(metrics["loss"]) < 0.5 * float(first["loss"])
  assert float(metrics["loss_adversarial"]) < 0.5 * float(first["loss_adversarial"])
  np.testing.assert_allclose(
      metrics["loss"], 0.5 * metrics["loss_ce"] + 0.5 * metrics["loss_adversarial"], rtol=1e-6)
