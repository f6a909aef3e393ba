"""Tests for jaxsemiseg.uncertainty against hand computations and NumPy references."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jaxsemiseg import losses, metrics, uncertainty
from jaxsemiseg.models import UNet

NUM_CLASSES = 3


class TinyBatchNormNet(nn.Module):
  """1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> dropout -> 1x1 classifier.

  Follows the package's model contract. The two BatchNorms have different momenta, so
  the statistics read-back must work per layer.
  """

  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, images, *, train, mc_dropout=False):
    x = nn.Conv(4, (1, 1), name="conv0")(images)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     name="bn0")(x)
    x = nn.relu(x)
    x = nn.Conv(4, (1, 1), name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.7, epsilon=1e-5,
                     name="bn1")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not (train or mc_dropout))
    return {"logits": nn.Conv(NUM_CLASSES, (1, 1), name="classifier")(x), "features": x}


def _random_like(key, tree, *, low, high):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.uniform(k, leaf.shape, minval=low, maxval=high)
                            for k, leaf in zip(keys, leaves)])


def _tiny_batchnorm_variables(dropout_rate=0.0):
  """Variables with random BN scales/offsets and running statistics far from the data's."""
  model = TinyBatchNormNet(dropout_rate=dropout_rate)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)), train=False)
  params = dict(variables["params"])
  for index, name in enumerate(("bn0", "bn1")):
    params[name] = _random_like(jax.random.key(100 + index), params[name], low=0.5, high=1.5)
  batch_stats = _random_like(jax.random.key(7), variables["batch_stats"], low=2.0, high=3.0)
  return model, {"params": params, "batch_stats": batch_stats}


def _numpy_teye_forward(params, train_images, images):
  """Logits of ``images`` and per-layer statistics, BN normalised by the training batch."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def conv(x, layer):
    return x @ p[layer]["kernel"][0, 0] + p[layer]["bias"]

  def batch_norm(h_train, h, layer):
    mean, var = h_train.mean(axis=(0, 1, 2)), h_train.var(axis=(0, 1, 2))

    def normalise(x):
      return (x - mean) / np.sqrt(var + 1e-5) * p[layer]["scale"] + p[layer]["bias"]

    return normalise(h_train), normalise(h), {"mean": mean, "var": var}

  h_train, h = conv(np.asarray(train_images, np.float64), "conv0"), conv(
      np.asarray(images, np.float64), "conv0")
  h_train, h, stats0 = batch_norm(h_train, h, "bn0")
  h_train, h = np.maximum(h_train, 0), np.maximum(h, 0)
  h_train, h, stats1 = batch_norm(conv(h_train, "conv1"), conv(h, "conv1"), "bn1")
  return conv(h, "classifier"), {"bn0": stats0, "bn1": stats1}


def _softmax(logits):
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


@functools.cache
def _unet_and_variables(dropout_rate):
  # depth 1 keeps the compiles short; the dropout sits before the classifier either way.
  model = UNet(num_classes=NUM_CLASSES, width=4, depth=1, dropout_rate=dropout_rate)
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(2), images, train=False)
  return model, variables, images


def test_mc_dropout_samples_differ_and_match_one_pass_per_split_key():
  model, variables, images = _unet_and_variables(dropout_rate=0.5)
  apply_fn = uncertainty.make_mc_dropout_apply_fn(model)
  key = jax.random.key(3)
  samples = jax.jit(lambda k, v, x: uncertainty.mc_dropout(k, apply_fn, v, x, num_samples=4))(
      key, variables, images)
  assert samples.shape == (4, 2, 16, 16, NUM_CLASSES)
  assert samples.dtype == jnp.float32
  assert float(jnp.abs(samples[0] - samples[1]).max()) > 1e-3
  for index, sample_key in enumerate(jax.random.split(key, 4)):
    logits = model.apply(variables, images, train=False, mc_dropout=True,
                         rngs={"dropout": sample_key})["logits"]
    np.testing.assert_allclose(samples[index], jax.nn.softmax(logits), atol=1e-5)


def test_mc_dropout_samples_are_identical_at_rate_zero():
  model, variables, images = _unet_and_variables(dropout_rate=0.0)
  samples = uncertainty.mc_dropout(jax.random.key(3), uncertainty.make_mc_dropout_apply_fn(model),
                                   variables, images, num_samples=3)
  deterministic = jax.nn.softmax(model.apply(variables, images, train=False)["logits"])
  for sample in samples:
    np.testing.assert_allclose(sample, deterministic, atol=1e-5)
  np.testing.assert_allclose(uncertainty.mutual_information(samples), 0.0, atol=1e-6)


def test_mc_dropout_keeps_batchnorm_on_running_statistics():
  model, variables = _tiny_batchnorm_variables(dropout_rate=0.0)
  images = jax.random.uniform(jax.random.key(4), (2, 3, 3, 3))
  samples = uncertainty.mc_dropout(jax.random.key(5), uncertainty.make_mc_dropout_apply_fn(model),
                                   variables, images, num_samples=2)
  inference = model.apply(variables, images, train=False)["logits"]
  np.testing.assert_allclose(samples[1], jax.nn.softmax(inference), atol=1e-5)


@pytest.mark.parametrize("num_samples", [0, -1, 2.0, True])
def test_mc_dropout_rejects_bad_num_samples(num_samples):
  model, variables, images = _unet_and_variables(dropout_rate=0.5)
  with pytest.raises(ValueError, match="num_samples"):
    uncertainty.mc_dropout(jax.random.key(0), uncertainty.make_mc_dropout_apply_fn(model),
                           variables, images, num_samples=num_samples)


def test_ensemble_predict_matches_each_member():
  model = TinyBatchNormNet()
  images = jax.random.uniform(jax.random.key(4), (2, 3, 3, 3))
  stacked = jax.vmap(lambda k: model.init(k, images, train=False))(
      jax.random.split(jax.random.key(6), 3))
  apply_fn = uncertainty.make_apply_fn(model)
  probs = jax.jit(lambda v, x: uncertainty.ensemble_predict(apply_fn, v, x))(stacked, images)
  assert probs.shape == (3, 2, 3, 3, NUM_CLASSES)
  member_probs = jax.jit(lambda v: jax.nn.softmax(apply_fn(v, images)))
  for member in range(3):
    expected = member_probs(jax.tree.map(lambda leaf, m=member: leaf[m], stacked))
    np.testing.assert_allclose(probs[member], expected, atol=1e-5)
  assert float(uncertainty.mutual_information(probs).max()) > 1e-4


def test_ensemble_of_identical_members_has_zero_mutual_information():
  model, variables = _tiny_batchnorm_variables()
  images = jax.random.uniform(jax.random.key(4), (2, 3, 3, 3))
  stacked = jax.tree.map(lambda leaf: jnp.stack([leaf] * 4), variables)
  probs = uncertainty.ensemble_predict(uncertainty.make_apply_fn(model), stacked, images)
  np.testing.assert_allclose(uncertainty.mutual_information(probs), 0.0, atol=1e-6)
  np.testing.assert_allclose(uncertainty.predictive_variance(probs), 0.0, atol=1e-12)
  np.testing.assert_allclose(uncertainty.predictive_entropy(probs),
                             uncertainty.expected_entropy(probs), atol=1e-6)


def test_ensemble_predict_rejects_unstacked_variables():
  model = TinyBatchNormNet()
  images = jnp.zeros((1, 2, 2, 3))
  ragged = {"params": {"a": jnp.zeros((2, 3)), "b": jnp.zeros((3, 3))}}
  with pytest.raises(ValueError, match="leading"):
    uncertainty.ensemble_predict(uncertainty.make_apply_fn(model), ragged, images)


def test_training_batch_statistics_equal_the_hand_computed_batch_moments():
  model, variables = _tiny_batchnorm_variables()
  train_images = jax.random.uniform(jax.random.key(8), (3, 5, 5, 3))
  statistics = uncertainty.training_batch_statistics(jax.random.key(0), model, variables,
                                                     train_images)
  _, expected = _numpy_teye_forward(variables["params"], train_images,
                                    np.zeros((1, 1, 1, 3)))
  for layer in ("bn0", "bn1"):
    for moment in ("mean", "var"):
      np.testing.assert_allclose(statistics[layer][moment], expected[layer][moment],
                                 rtol=1e-4, atol=1e-6)


def test_mc_batchnorm_normalises_each_pass_with_its_training_batch():
  model, variables = _tiny_batchnorm_variables(dropout_rate=0.5)
  # Training crops and test images of different sizes, as in whole-image prediction.
  train_batches = jax.random.uniform(jax.random.key(9), (2, 3, 5, 5, 3))
  images = jax.random.uniform(jax.random.key(10), (2, 4, 6, 3))
  probs = jax.jit(lambda k, v, x, t: uncertainty.mc_batchnorm(k, model, v, x, t))(
      jax.random.key(11), variables, images, train_batches)
  assert probs.shape == (2, 2, 4, 6, NUM_CLASSES)
  for index in range(2):
    logits, _ = _numpy_teye_forward(variables["params"], train_batches[index], images)
    np.testing.assert_allclose(probs[index], _softmax(logits), atol=1e-5)
  assert float(jnp.abs(probs[0] - probs[1]).max()) > 1e-3


def test_mc_batchnorm_does_not_depend_on_the_other_test_images():
  model, variables = _tiny_batchnorm_variables()
  train_batches = jax.random.uniform(jax.random.key(9), (2, 3, 5, 5, 3))
  images = jax.random.uniform(jax.random.key(10), (3, 4, 4, 3))
  predict = jax.jit(lambda x: uncertainty.mc_batchnorm(jax.random.key(0), model, variables,
                                                       x, train_batches))
  together, alone = predict(images), predict(images[:1])
  np.testing.assert_allclose(together[:, :1], alone, atol=1e-5)


def test_mc_batchnorm_rejects_models_without_batchnorm_and_bad_batches():
  model, variables, images = _unet_and_variables(dropout_rate=0.0)
  with pytest.raises(ValueError, match="batch_stats"):
    uncertainty.mc_batchnorm(jax.random.key(0), model, variables, images, images[None])
  tiny, tiny_variables = _tiny_batchnorm_variables()
  with pytest.raises(ValueError, match="train_batches"):
    uncertainty.mc_batchnorm(jax.random.key(0), tiny, tiny_variables, images, images)


def test_maps_on_two_disagreeing_one_hot_samples():
  samples = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [T=2, 1 pixel, C=2]
  np.testing.assert_allclose(uncertainty.predictive_entropy(samples), [math.log(2)],
                             rtol=1e-6)
  np.testing.assert_allclose(uncertainty.expected_entropy(samples), [0.0], atol=1e-7)
  np.testing.assert_allclose(uncertainty.mutual_information(samples), [math.log(2)],
                             rtol=1e-6)
  np.testing.assert_allclose(uncertainty.predictive_variance(samples), [0.25], rtol=1e-6)
  np.testing.assert_allclose(uncertainty.max_probability(samples), [0.5], rtol=1e-6)


def test_entropy_is_zero_for_one_hot_and_log_c_for_uniform():
  one_hot = jnp.array([[[0.0, 1.0, 0.0, 0.0, 0.0]]])
  uniform = jnp.full((1, 1, 5), 0.2)
  assert float(uncertainty.predictive_entropy(one_hot)[0]) == 0.0
  np.testing.assert_allclose(uncertainty.predictive_entropy(uniform), [math.log(5)],
                             rtol=1e-6)


def test_maps_on_random_samples_match_numpy_and_respect_bounds():
  rng = np.random.default_rng(0)
  num_classes = 6
  samples = rng.dirichlet(np.full(num_classes, 0.3), size=(4, 3, 7)).astype(np.float32)
  samples[0, 0, 0] = np.eye(num_classes)[2]  # exact zeros must not give NaN

  def entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)

  p64 = samples.astype(np.float64)
  expected_total = entropy(p64.mean(axis=0))
  expected_mi = expected_total - entropy(p64).mean(axis=0)
  total = jax.jit(uncertainty.predictive_entropy)(samples)
  mutual = jax.jit(uncertainty.mutual_information)(samples)
  np.testing.assert_allclose(total, expected_total, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mutual, expected_mi, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(uncertainty.predictive_variance(samples),
                             p64.var(axis=0).mean(axis=-1), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(uncertainty.max_probability(samples),
                             p64.mean(axis=0).max(axis=-1), rtol=1e-6)
  assert np.all(np.asarray(total) <= math.log(num_classes) + 1e-6)
  assert np.all(np.asarray(mutual) >= 0.0)
  assert np.all(np.asarray(mutual) <= np.asarray(total) + 1e-6)


def test_maps_reject_samples_without_a_sample_axis():
  with pytest.raises(ValueError, match=r"\[T, \.\.\., C\]"):
    uncertainty.mutual_information(jnp.ones((4,)))


def _numpy_ece(probs, labels, num_bins=15):
  """gpleiss/temperature_scaling _ECELoss on the non-ignored pixels, plus bin counts."""
  probs, labels = probs.reshape(-1, probs.shape[-1]), labels.reshape(-1)
  kept = labels != 255
  confidence = probs.max(axis=-1)[kept]
  accuracy = (probs.argmax(axis=-1) == labels)[kept]
  boundaries = np.linspace(0.0, 1.0, num_bins + 1, dtype=np.float32)
  ece, counts = 0.0, []
  for lower, upper in zip(boundaries[:-1], boundaries[1:]):
    in_bin = (confidence > lower) & (confidence <= upper)
    counts.append(in_bin.sum())
    if in_bin.any():
      ece += in_bin.mean() * abs(accuracy[in_bin].mean() - confidence[in_bin].mean())
  return ece, np.array(counts)


def _random_calibration_batch(seed):
  rng = np.random.default_rng(seed)
  logits = 2.5 * rng.normal(size=(2, 8, 9, 5))
  probs = _softmax(logits).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 8, 9)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.15] = 255
  return probs, labels


def test_ece_equals_numpy_reference_and_accumulates_over_halves():
  probs, labels = _random_calibration_batch(0)
  expected_ece, expected_counts = _numpy_ece(probs, labels)
  ece_bins = jax.jit(metrics.expected_calibration_error)
  whole = ece_bins(probs, labels)
  np.testing.assert_array_equal(whole["count"], expected_counts)
  assert metrics.ece_from_bins(whole) == pytest.approx(expected_ece, abs=1e-6)
  halves = jax.tree.map(jnp.add, ece_bins(probs[:1], labels[:1]),
                        ece_bins(probs[1:], labels[1:]))
  np.testing.assert_array_equal(halves["count"], whole["count"])
  assert metrics.ece_from_bins(halves) == pytest.approx(expected_ece, abs=1e-6)


def test_reliability_diagram_writes_a_png(tmp_path):
  probs, labels = _random_calibration_batch(1)
  bins = metrics.expected_calibration_error(probs, labels)
  path = tmp_path / "plots" / "reliability.png"
  uncertainty.reliability_diagram(bins, str(path), title="val")
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == (450, 550)


def test_reliability_curve_is_each_bins_mean_accuracy_confidence_and_share():
  probs, labels = _random_calibration_batch(1)
  curve = uncertainty.reliability_curve(metrics.expected_calibration_error(probs, labels))
  probs, labels = np.asarray(probs).reshape(-1, probs.shape[-1]), np.asarray(labels).ravel()
  keep = labels != 255
  confidence, correct = probs[keep].max(-1), probs[keep].argmax(-1) == labels[keep]
  # (l, u] bins of width 1/15.
  index = np.ceil(confidence * 15).astype(int) - 1
  for b in range(15):
    members = index == b
    assert curve["fraction"][b] == pytest.approx(members.mean())
    if members.any():
      assert curve["accuracy"][b] == pytest.approx(correct[members].mean(), rel=1e-5)
      assert curve["confidence"][b] == pytest.approx(confidence[members].mean(), rel=1e-5)
    else:
      assert curve["accuracy"][b] == curve["confidence"][b] == 0


def test_reliability_diagram_rejects_bad_bins(tmp_path):
  with pytest.raises(ValueError, match="count"):
    uncertainty.reliability_diagram({"accuracy_sum": np.zeros(15)}, str(tmp_path / "x.png"))
  empty = {"count": np.zeros(15), "accuracy_sum": np.zeros(15),
           "confidence_sum": np.zeros(15)}
  with pytest.raises(ValueError, match="no pixel"):
    uncertainty.reliability_diagram(empty, str(tmp_path / "x.png"))


def _tempered_logits(seed, true_temperature, *, size=20000, num_classes=5):
  """Logits ``T_true * z`` whose labels are drawn from ``softmax(z)``."""
  rng = np.random.default_rng(seed)
  z = 1.5 * rng.normal(size=(size, num_classes))
  cumulative = np.cumsum(_softmax(z), axis=-1)
  labels = (rng.random((size, 1)) > cumulative).sum(axis=-1)
  return (true_temperature * z).astype(np.float32), np.minimum(labels, num_classes - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
  logits, labels = _tempered_logits(0, true_temperature)
  # Ignored pixels with confidently wrong logits must not move the fit.
  logits = np.concatenate([logits, 40.0 * np.eye(5, dtype=np.float32)[np.arange(2000) % 5]])
  labels = np.concatenate([labels, np.full(2000, 255)]).astype(np.int32)
  temperature = float(uncertainty.fit_temperature(logits, labels))
  assert temperature == pytest.approx(true_temperature, rel=0.05)

  def nll(t):
    return float(losses.cross_entropy(uncertainty.apply_temperature(logits, t), labels)[0])

  assert nll(temperature) <= min(nll(0.9 * temperature), nll(1.1 * temperature))


def test_apply_temperature_divides_the_logits():
  np.testing.assert_allclose(uncertainty.apply_temperature(jnp.array([2.0, -4.0]), 2.0),
                             [1.0, -2.0])


def test_fit_temperature_rejects_bad_input():
  logits, labels = _tempered_logits(0, 1.0, size=10)
  with pytest.raises(ValueError, match="shape"):
    uncertainty.fit_temperature(logits, labels[:5])
  with pytest.raises(ValueError, match="labelled"):
    uncertainty.fit_temperature(logits, np.full(10, 255))
  with pytest.raises(ValueError, match="bracket"):
    uncertainty.fit_temperature(logits, labels, min_temperature=2.0, max_temperature=1.0)


def test_uncertainty_heatmap_colours_with_magma_and_clips():
  import matplotlib  # pylint: disable=g-import-not-at-top
  values = np.array([[0.0, 0.5, 1.0, 3.0]])
  heatmap = uncertainty.uncertainty_heatmap(values, vmax=1.0)
  assert heatmap.shape == (1, 4, 3)
  assert heatmap.dtype == np.uint8
  magma = matplotlib.colormaps["magma"]
  np.testing.assert_array_equal(heatmap[0, 0], magma(0.0, bytes=True)[:3])
  np.testing.assert_array_equal(heatmap[0, 2], magma(1.0, bytes=True)[:3])
  np.testing.assert_array_equal(heatmap[0, 3], heatmap[0, 2])
  brightness = heatmap[0, :3].astype(int).sum(axis=-1)
  assert brightness[0] < brightness[1] < brightness[2]


def test_uncertainty_heatmap_rejects_bad_input():
  with pytest.raises(ValueError, match="values"):
    uncertainty.uncertainty_heatmap(np.zeros((2, 2, 2)), vmax=1.0)
  with pytest.raises(ValueError, match="vmax"):
    uncertainty.uncertainty_heatmap(np.zeros((2, 2)), vmax=0.0)
  with pytest.raises(ValueError, match="colormap"):
    uncertainty.uncertainty_heatmap(np.zeros((2, 2)), vmax=1.0, colormap="no-such-map")
