"""The shared self-training pieces, and the three methods' steps run through the loop's path.

The step checks are parametrised over Mean Teacher, FixMatch and UniMatch and use the
shapes, shardings and donation of ``train.train_and_evaluate`` on the tiny dataset, so the
end-to-end run finds its step already in the persistent compilation cache.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import methods, train
from jaxsemiseg.augment import mixing, photometric
from jaxsemiseg.methods import self_training
from jaxsemiseg.state import create_train_state

import tiny_data

METHODS = ("mean_teacher", "fixmatch", "unimatch", "cct", "equivariance", "ua_mt",
           "ensemble_self_training", "cps", "deep_cotraining")
NUM_STEPS = 20

# The terms each method reports besides loss and grad_norm.
TERMS = {
    "mean_teacher": ("loss_x", "loss_ce", "loss_consistency", "consistency_weight", "ema_decay"),
    "fixmatch": ("loss_x", "loss_ce", "loss_s", "confident_fraction"),
    "unimatch": ("loss_x", "loss_ce", "loss_s1", "loss_s2", "loss_fp", "confident_fraction"),
    "cct": ("loss_x", "loss_ce", "loss_consistency", "consistency_weight"),
    "equivariance": ("loss_x", "loss_ce", "loss_consistency", "consistency_weight"),
    "ua_mt": ("loss_x", "loss_ce", "loss_consistency", "consistency_weight",
              "entropy_threshold", "certain_fraction", "ema_decay"),
    "ensemble_self_training": ("loss_x", "loss_ce", "loss_u", "confident_fraction"),
    "cps": ("loss_x", "loss_ce", "loss_cps"),
    "deep_cotraining": ("loss_x", "loss_ce", "loss_cot", "loss_adv", "cot_weight",
                        "adv_weight"),
}

# Each method's total loss from the terms it reports.
TOTALS = {
    "mean_teacher": lambda m: m["loss_x"] + m["consistency_weight"] * m["loss_consistency"],
    "fixmatch": lambda m: (m["loss_x"] + m["loss_s"]) / 2,
    "unimatch": lambda m: (m["loss_x"] + 0.25 * m["loss_s1"] + 0.25 * m["loss_s2"]
                           + 0.5 * m["loss_fp"]) / 2,
    "cct": lambda m: m["loss_x"] + m["consistency_weight"] * m["loss_consistency"],
    "equivariance": lambda m: m["loss_x"] + m["consistency_weight"] * m["loss_consistency"],
    "ua_mt": lambda m: m["loss_x"] + m["consistency_weight"] * m["loss_consistency"],
    "ensemble_self_training": lambda m: (m["loss_x"] + m["loss_u"]) / 2,
    "cps": lambda m: m["loss_x"] + 1.0 * m["loss_cps"],  # cps_weight 1 (VOC + CutMix).
    "deep_cotraining": lambda m: (m["loss_x"] + m["cot_weight"] * m["loss_cot"]
                                  + m["adv_weight"] * m["loss_adv"]),
}

# The ramped weights a step reports: (metric, the config's base weight), each
# ``base * exp(-5 (1 - t / rampup_steps)^2)`` at the step's t = updates done before it.
RAMPED_WEIGHTS = {
    "mean_teacher": (("consistency_weight", "consistency_weight"),),
    "cct": (("consistency_weight", "consistency_weight"),),
    "equivariance": (("consistency_weight", "consistency_weight"),),
    "deep_cotraining": (("cot_weight", "cot_weight"), ("adv_weight", "adv_weight")),
}

# Settings a method needs beyond the shared tiny config (UA-MT's teacher needs dropout).
CONFIG_OVERRIDES = {
    "ua_mt": {"model.unet.dropout_rate": 0.5},
}


def test_pseudo_labels_are_argmax_and_max_probability():
  logits = jnp.log(jnp.array([[[[1.0, 3.0], [4.0, 1.0]]]]))
  pseudo = self_training.pseudo_labels_from_logits(logits, jnp.array([[[True, False]]]))
  np.testing.assert_array_equal(pseudo.labels, [[[1, 0]]])
  np.testing.assert_allclose(pseudo.confidence, [[[0.75, 0.8]]], rtol=1e-6)
  np.testing.assert_array_equal(pseudo.valid, [[[True, False]]])
  assert float(self_training.confident_fraction(pseudo, threshold=0.76)) == 0.0
  assert float(self_training.confident_fraction(pseudo, threshold=0.75)) == 1.0


def test_pseudo_labels_carry_no_gradient():
  def confidence_sum(logits):
    pseudo = self_training.pseudo_labels_from_logits(logits, jnp.ones((1, 1, 1), bool))
    return pseudo.confidence.sum()

  np.testing.assert_array_equal(jax.grad(confidence_sum)(jnp.ones((1, 1, 1, 3))), 0.0)


def test_check_unit_interval_names_the_field():
  self_training.check_unit_interval("config.x", 1.0)
  with pytest.raises(ValueError, match=r"config\.x=1\.5; expected a value in \[0, 1\]"):
    self_training.check_unit_interval("config.x", 1.5)


def test_check_non_negative_and_check_one_of_name_the_field():
  self_training.check_non_negative("config.w", 0.0)
  with pytest.raises(ValueError, match=r"config\.w=-0\.5; expected >= 0\."):
    self_training.check_non_negative("config.w", -0.5)
  self_training.check_one_of("config.kind", "a", ("a", "b"))
  with pytest.raises(ValueError, match=r"config\.kind='c'; expected one of \('a', 'b'\)\."):
    self_training.check_one_of("config.kind", "c", ("a", "b"))


class _BrightToClass(nn.Module):
  """Class 1, by a wide margin, where a pixel has a channel above 0.1; else class 0.

  Colour jitter keeps black black and a bright image bright, so this model's pseudo-labels
  of a strong view are known without knowing the jitter.
  """

  @nn.compact
  def __call__(self, images, *, train, mc_dropout=False, decoder_input_perturbation=None):
    del train, mc_dropout
    scale = self.param("scale", nn.initializers.constant(100.0), ())
    features = images.max(axis=-1, keepdims=True) - 0.1
    if decoder_input_perturbation is not None:
      features = decoder_input_perturbation(self.make_rng("perturbation"), features)
    return {"logits": scale * jnp.concatenate([-features, features], axis=-1),
            "features": features}


def test_strong_views_take_the_partners_pixels_and_pseudo_labels_inside_the_box():
  size, batch_size = 16, 3
  images = jnp.zeros((batch_size, size, size, 3))  # Black stays black under colour jitter.
  partner_images = jnp.full((batch_size, size, size, 3), 0.9)
  # Jitted: one compilation is faster than running the colour ops one by one.
  strong, boxes = jax.jit(functools.partial(
      self_training.strong_cutmix_views, num_views=2, cutmix_p=1.0))(
          jax.random.key(0), images, partner_images)
  assert strong.shape == (2, batch_size, size, size, 3)
  assert boxes.shape == (2, batch_size, size, size)
  assert boxes.reshape(2 * batch_size, -1).any(axis=1).all()
  assert not np.array_equal(boxes[0], boxes[1])
  np.testing.assert_array_equal(strong.max(axis=-1) > 0, boxes)
  # Each view and image has its own colour draw of the partner.
  partner_values = {float(strong[v, i][boxes[v, i]].mean()) for v in range(2)
                    for i in range(batch_size)}
  assert len(partner_values) == 2 * batch_size

  model = _BrightToClass()
  variables = model.init(jax.random.key(1), images, train=False)
  valid_u2 = jnp.ones((batch_size, size, size), bool).at[:, -2:].set(False)
  partner = self_training.predict_pseudo_labels(model, variables["params"], {}, partner_images,
                                                valid_u2)
  np.testing.assert_array_equal(partner.labels, 1)
  weak = self_training.PseudoLabels(labels=jnp.zeros((batch_size, size, size), jnp.int32),
                                    confidence=jnp.full((batch_size, size, size), 0.5),
                                    valid=jnp.ones((batch_size, size, size), bool))
  mixed = mixing.mix(boxes[0], weak, partner)
  np.testing.assert_array_equal(mixed.labels, boxes[0])
  np.testing.assert_allclose(mixed.confidence, np.where(boxes[0], partner.confidence, 0.5))
  np.testing.assert_array_equal(mixed.valid, ~(boxes[0] & ~valid_u2))


def test_strong_colour_batch_draws_each_image_with_its_own_key():
  images = jnp.asarray(np.random.default_rng(0).random((2, 4, 4, 3)), jnp.float32)
  coloured = jax.jit(self_training.strong_colour_batch)(jax.random.key(0), images)
  one = jax.jit(photometric.unimatch_strong_colour)
  for key, image, view in zip(jax.random.split(jax.random.key(0), 2), images, coloured):
    np.testing.assert_allclose(view, one(key, image), rtol=1e-5, atol=1e-6)
  assert not np.allclose(coloured - images, coloured[::-1] - images[::-1], atol=1e-3)


def test_partner_and_strong_views_label_image_u2_and_paste_it_into_image_u():
  size, batch_size = 8, 2
  batch = {"image_u": jnp.zeros((batch_size, size, size, 3)),  # Stays black.
           "image_u2": jnp.full((batch_size, size, size, 3), 0.9),
           "valid_u2": jnp.ones((batch_size, size, size), bool).at[:, -2:].set(False)}
  model = _BrightToClass()
  variables = model.init(jax.random.key(1), batch["image_u"], train=False)
  state = create_train_state(variables=dict(variables), tx=optax.sgd(0.1))
  partner, strong, boxes = jax.jit(functools.partial(
      self_training.partner_and_strong_views, model=model, num_views=1, cutmix_p=1.0))(
          jax.random.key(0), state=state, batch=batch)
  np.testing.assert_array_equal(partner.labels, 1)
  np.testing.assert_array_equal(partner.valid, batch["valid_u2"])
  assert strong.shape == (1, batch_size, size, size, 3)
  assert boxes.reshape(batch_size, -1).any(axis=1).all()
  np.testing.assert_array_equal(strong.max(axis=-1) > 0, boxes)


@pytest.mark.parametrize("method", ["fixmatch", "unimatch"])
def test_step_trains_the_box_on_the_partners_pseudo_labels(method):
  # Unlabeled batch A is black (class 0), its partner B bright (class 1). Every strong
  # view gets a box of B; if a box took A's pseudo-labels, or another view's box, the
  # strong loss would be ~100 per pixel of the box instead of ~0.
  size, batch_size = 16, 2
  valid = np.ones((batch_size, size, size), bool)
  valid[0, -4:] = False
  batch = {"image": jnp.zeros((batch_size, size, size, 3)),
           "label": jnp.zeros((batch_size, size, size), jnp.int32),
           "image_u": jnp.zeros((batch_size, size, size, 3)), "valid_u": jnp.asarray(valid),
           "image_u2": jnp.full((batch_size, size, size, 3), 0.9),
           "valid_u2": jnp.asarray(valid[::-1])}
  config = config_lib.base_config(method)
  config[method].update(dict(threshold=0.5, cutmix_p=1.0))
  model, tx = _BrightToClass(), optax.sgd(0.0)
  module = methods.get_method(method)
  state = module.init_state(jax.random.key(0), model, tx, batch, config)
  _, metrics = jax.jit(module.make_train_step(model, tx, config))(state, batch,
                                                                  jax.random.key(1))
  strong_terms = ["loss_s"] if method == "fixmatch" else ["loss_s1", "loss_s2"]
  for name in strong_terms:
    assert abs(float(metrics[name])) < 1e-6, (name, metrics[name])
  assert float(metrics["confident_fraction"]) == 1.0


def test_strong_views_reject_mismatched_batches():
  with pytest.raises(ValueError, match="partner_images"):
    self_training.strong_cutmix_views(jax.random.key(0), jnp.zeros((2, 8, 8, 3)),
                                      jnp.zeros((3, 8, 8, 3)), num_views=1, cutmix_p=0.5)


# --- The three methods' steps, compiled as the training loop compiles them. ---


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("tiny")))


def method_config(root: str, method: str):
  """tiny_config for ``method``: a depth-1 width-4 UNet, SGD (comparable across layouts).

  The fixed-batch steps and the end-to-end run share this config, hence one compiled step.
  """
  config = tiny_data.tiny_config(root, **{
      "model.unet.depth": 1, "optimizer.name": "sgd", "optimizer.learning_rate": 0.1,
      "num_steps": NUM_STEPS, "eval_every": NUM_STEPS, "checkpoint_every": NUM_STEPS,
      "log_every": NUM_STEPS})
  config.method = method
  config[method] = config_lib.base_config(method)[method]
  config.update_from_flattened_dict(CONFIG_OVERRIDES.get(method, {}))
  if "threshold" in config[method]:
    # At tau = 0.95 no pixel of an untrained model is confident and the unlabeled terms
    # are 0; at 0.5 about a quarter are, so every term is checked from the first step.
    config[method].threshold = 0.5
  return config


def fixed_batch(config) -> dict:
  """Four labeled images and two unlabeled batches of four; image 0 of each is padded."""
  datasets = data_lib.load_datasets(config)
  labeled = [datasets.labeled[i] for i in range(4)]
  unlabeled = [datasets.unlabeled[i]["image"] for i in range(8)]
  valid = np.ones((4, tiny_data.SIZE, tiny_data.SIZE), bool)
  valid[0, -3:] = False
  batch = {"image": np.stack([e["image"] for e in labeled]).astype(np.float32) / 255,
           "label": np.stack([e["label"] for e in labeled]).astype(np.int32)}
  for suffix, images in (("_u", unlabeled[:4]), ("_u2", unlabeled[4:])):
    images = np.stack(images).astype(np.float32) / 255
    images[~valid] = 0.0
    batch["image" + suffix], batch["valid" + suffix] = images, valid
  return batch


@pytest.fixture(scope="module", params=METHODS)
def method_runs(request, dataset_root):
  """The method's config, batch, and its run and compiled step on 1 and on 4 devices."""
  method = request.param
  config = method_config(dataset_root, method)
  batch = fixed_batch(config)
  if getattr(methods.get_method(method), "NUM_UNLABELED_VIEWS", 1) == 1:
    batch = {k: v for k, v in batch.items() if not k.endswith("_u2")}
  runs = tiny_data.runs_on_one_and_four_devices(config, batch)
  return method, config, runs


def test_step_reports_its_terms_and_learns_a_fixed_batch(method_runs):
  method, config, runs = method_runs
  run, step, batch = runs[1]
  state, history = tiny_data.train_on_fixed_batch(step, run.state, batch, NUM_STEPS)
  first, last = history[0], history[-1]
  settings = config[method]
  for t, metrics in enumerate(history):
    assert metrics.keys() == {"loss", "grad_norm", *TERMS[method]}
    np.testing.assert_allclose(metrics["loss"], TOTALS[method](metrics), rtol=1e-5)
    for metric, base in RAMPED_WEIGHTS.get(method, ()):
      ramp = np.exp(-5 * (1 - min(t / settings.rampup_steps, 1)) ** 2)
      np.testing.assert_allclose(metrics[metric], settings[base] * ramp, rtol=1e-5,
                                 err_msg=metric)
  assert int(state.step) == NUM_STEPS
  assert last["loss"] < 0.7 * first["loss"], [m["loss"] for m in history]
  assert last["loss_x"] < 0.5 * first["loss_x"]
  if "confident_fraction" in first:
    assert 0.0 < first["confident_fraction"] < last["confident_fraction"] <= 1.0
    unlabeled_terms = [name for name in TERMS[method] if name.startswith("loss_")
                       and name not in ("loss_x", "loss_ce")]
    assert all(first[name] > 0.01 for name in unlabeled_terms), first


def test_grad_norm_is_the_norm_of_the_first_update_over_the_rate(method_runs):
  # SGD's first update is lr * (g + weight_decay * p) (the momentum trace starts at 0), so
  # the reported norm of g is the update's norm over the rate, up to the tiny decay term.
  method, config, runs = method_runs
  run, step, batch = runs[1]

  def trainable(state):  # CCT's auxiliary heads train with the model, from extras.
    return jax.device_get((state.params, state.extras.get("aux_heads", {})))

  before = trainable(run.state)
  state, metrics = step(tiny_data.copy_state(run.state), batch, jax.random.key(3))
  change = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, trainable(state), before)
  norm = np.sqrt(sum(float(np.sum(leaf**2)) for leaf in jax.tree.leaves(change)))
  rate = config.optimizer.learning_rate
  np.testing.assert_allclose(float(metrics["grad_norm"]), norm / rate, rtol=2e-3)


def test_one_and_four_devices_agree(method_runs):
  _, _, runs = method_runs
  results = {}
  for devices, (run, step, batch) in runs.items():
    state, metrics = step(tiny_data.copy_state(run.state), batch, jax.random.key(3))
    state, metrics = step(state, batch, jax.random.key(4))
    results[devices] = jax.device_get((state.params, state.extras, metrics))
  (params1, extras1, metrics1), (params4, extras4, metrics4) = results[1], results[4]
  assert metrics1.keys() == metrics4.keys()
  for name in metrics1:
    np.testing.assert_allclose(metrics4[name], metrics1[name], rtol=1e-4, atol=1e-7,
                               err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               (params1, extras1), (params4, extras4))


def test_train_and_evaluate_runs_the_method(method_runs, tmp_path):
  method, config, _ = method_runs
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == NUM_STEPS
  assert 0.0 <= results["miou"] <= 1.0
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    logged = [json.loads(line) for line in f]
  train_row = next(row for row in logged if "train/loss" in row)
  assert np.isfinite(train_row["train/loss"])
  assert {f"train/{name}" for name in TERMS[method]} <= train_row.keys()
