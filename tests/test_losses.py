"""Tests for jaxsemiseg.losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import losses

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)

# 2x2 image, 3 classes. Softmax probabilities of the true class: 1/2, 1/3, 1/4; the
# fourth pixel is ignored.
CE_LOGITS = jnp.log(jnp.array([[[[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]],
                                 [[1.0, 1.0, 2.0], [9.0, 1.0, 1.0]]]]))
CE_LABELS = jnp.array([[[1, 2], [0, 255]]])


def test_cross_entropy_hand_example():
  loss, per_pixel = losses.cross_entropy(CE_LOGITS, CE_LABELS)
  np.testing.assert_allclose(per_pixel, [[[LN2, LN3], [LN4, 0.0]]], rtol=1e-6)
  assert float(loss) == pytest.approx((LN2 + LN3 + LN4) / 3, rel=1e-6)


def test_cross_entropy_weights_keep_valid_pixel_normaliser():
  weights = jnp.array([[[1.0, 0.0], [0.5, 7.0]]])
  loss, per_pixel = losses.cross_entropy(CE_LOGITS, CE_LABELS, weights=weights)
  np.testing.assert_allclose(per_pixel, [[[LN2, 0.0], [0.5 * LN4, 0.0]]], rtol=1e-6)
  assert float(loss) == pytest.approx((LN2 + 0.5 * LN4) / 3, rel=1e-6)


def test_cross_entropy_label_smoothing():
  # Pixel 0, probabilities (1/4, 1/2, 1/4), label 1, epsilon 0.3: targets (.1, .8, .1)
  # give .8 ln 2 + .1 ln 4 + .1 ln 4 = 1.2 ln 2.
  _, per_pixel = losses.cross_entropy(CE_LOGITS, CE_LABELS, label_smoothing=0.3)
  assert float(per_pixel[0, 0, 0]) == pytest.approx(1.2 * LN2, rel=1e-6)
  assert float(per_pixel[0, 1, 1]) == 0.0


def test_cross_entropy_matches_optax_on_valid_pixels():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 6, 4)) * 3, jnp.float32)
  labels = rng.integers(0, 4, (2, 5, 6)).astype(np.int32)
  valid = rng.random(labels.shape) > 0.3
  labels = jnp.asarray(np.where(valid, labels, 255))
  reference = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(valid, labels, 0))
  loss, per_pixel = jax.jit(losses.cross_entropy)(logits, labels)
  assert float(loss) == pytest.approx(float(reference[valid].mean()), rel=1e-5)
  np.testing.assert_allclose(per_pixel, np.where(valid, reference, 0.0), rtol=1e-5,
                             atol=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_finite_gradient():
  labels = jnp.full((1, 2, 2), 255)
  loss, _ = losses.cross_entropy(CE_LOGITS, labels)
  grad = jax.grad(lambda z: losses.cross_entropy(z, labels)[0])(CE_LOGITS)
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_cross_entropy_rejects_bad_arguments():
  with pytest.raises(ValueError, match="logits have shape"):
    losses.cross_entropy(CE_LOGITS, CE_LABELS[0])
  with pytest.raises(ValueError, match="weights have shape"):
    losses.cross_entropy(CE_LOGITS, CE_LABELS, weights=jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="label_smoothing=1.5"):
    losses.cross_entropy(CE_LOGITS, CE_LABELS, label_smoothing=1.5)


def test_dice_loss_perfect_prediction_is_zero():
  labels = jnp.array([[0, 1, 2], [2, 255, 0]])
  logits = 50.0 * jax.nn.one_hot(jnp.where(labels == 255, 1, labels), 4)
  logits = logits.at[1, 1].set(jnp.array([50.0, 0.0, 0.0, 0.0]))  # ignored: wrong
  assert float(losses.dice_loss(logits, labels, num_classes=4)) == pytest.approx(
      0.0, abs=1e-6)


def test_dice_loss_equals_a_numpy_batch_dice_with_ignored_pixels_and_an_absent_class():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 4, 4)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 5, 4))  # class 3 never labeled
  labels[0, 0, :2] = 255
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  valid = labels != 255
  dice = []
  for c in range(4):
    p, t = probs[..., c][valid], (labels[valid] == c).astype(np.float32)
    dice.append((2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0))
  np.testing.assert_allclose(
      losses.dice_loss(jnp.asarray(logits), jnp.asarray(labels), num_classes=4),
      1 - np.mean(dice), rtol=1e-5)


def test_dice_loss_uniform_prediction_hand_value():
  # Two valid pixels with labels 0 and 1 and p = (.5, .5) everywhere. Per class:
  # intersection .5, sum p = 1, sum t = 1. smooth 1: (1 + 1) / (2 + 1) = 2/3;
  # smooth 0: 1 / 2.
  logits = jnp.zeros((1, 3, 2))
  labels = jnp.array([[0, 1, 255]])
  assert float(losses.dice_loss(logits, labels, num_classes=2)) == pytest.approx(1 / 3)
  assert float(losses.dice_loss(logits, labels, num_classes=2, smooth=0.0)) == (
      pytest.approx(0.5))


def test_dice_loss_rejects_wrong_num_classes():
  with pytest.raises(ValueError, match="num_classes=3"):
    losses.dice_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2), jnp.int32), num_classes=3)


# True-class probabilities of five valid pixels, then an ignored one whose probability
# is the lowest of all (it must never be kept).
OHEM_TRUE_PROBS = np.array([0.9, 0.1, 0.8, 0.95, 0.5, 0.01], np.float32)
OHEM_LABELS = jnp.array([[1, 1, 1, 1, 1, 255]])
OHEM_LOGITS = jnp.stack(
    [jnp.zeros(6), jnp.log(OHEM_TRUE_PROBS / (1 - OHEM_TRUE_PROBS))], axis=-1)[None]


@pytest.mark.parametrize("min_kept, kept", [
    (0, [1, 4]),           # threshold 0.7 alone: 0.1 and 0.5
    (2, [1, 4]),           # 2nd smallest is 0.5 < 0.7: the threshold wins
    (3, [1, 2, 4]),        # 3rd smallest is 0.8 > 0.7: cut at 0.8, kept (<=)
    (5, [0, 1, 2, 3, 4]),  # cut at the 5th smallest, 0.95: every valid pixel
    (6, [0, 1, 2, 3, 4]),  # more than the 5 valid pixels: keep all valid
])
def test_ohem_cross_entropy_keeps_expected_pixels(min_kept, kept):
  loss, per_pixel = jax.jit(
      lambda z, y: losses.ohem_cross_entropy(z, y, threshold=0.7, min_kept=min_kept))(
          OHEM_LOGITS, OHEM_LABELS)
  expected_map = np.zeros(6)
  expected_map[kept] = -np.log(OHEM_TRUE_PROBS[kept])
  np.testing.assert_allclose(per_pixel[0], expected_map, rtol=1e-5, atol=1e-6)
  assert float(loss) == pytest.approx(expected_map.sum() / len(kept), rel=1e-5)


def test_ohem_cross_entropy_all_ignored_is_zero():
  loss, _ = losses.ohem_cross_entropy(OHEM_LOGITS, jnp.full((1, 6), 255), min_kept=2)
  assert float(loss) == 0.0


def test_sigmoid_rampup_values():
  rampup = jax.jit(lambda step: losses.sigmoid_rampup(step, length=100))
  assert float(rampup(0)) == pytest.approx(math.exp(-5.0))
  assert float(rampup(50)) == pytest.approx(math.exp(-1.25))
  assert float(rampup(100)) == pytest.approx(1.0)
  assert float(rampup(250)) == pytest.approx(1.0)
  assert float(losses.sigmoid_rampup(7, length=0)) == 1.0
  with pytest.raises(ValueError, match="length=-1"):
    losses.sigmoid_rampup(0, length=-1)


def _softmax(logits):
  exps = np.exp(logits - logits.max(-1, keepdims=True))
  return exps / exps.sum(-1, keepdims=True)


def _numpy_entropy(probs):
  return -(probs * np.log(probs)).sum(-1)


def _random_probs(seed, shape):
  return _softmax(np.random.default_rng(seed).normal(size=shape) * 2).astype(np.float32)


# 1 image of 2x3 pixels, 4 classes; the mask drops two pixels.
CONSISTENCY_MASK = np.array([[[True, False, True], [True, True, False]]])


def test_probability_mse_by_hand():
  probs = jnp.array([[[0.5, 0.5], [1.0, 0.0]]])
  target = jnp.array([[[1.0, 0.0], [0.5, 0.5]]])
  # Each pixel: 0.25 + 0.25 = 0.5 summed over classes; mean over 2 classes and pixels.
  loss, per_pixel = losses.probability_mse(probs, target)
  np.testing.assert_allclose(per_pixel, [[0.5, 0.5]])
  assert float(loss) == pytest.approx(0.25)
  first_only, _ = losses.probability_mse(probs, target, mask=jnp.array([[True, False]]))
  assert float(first_only) == pytest.approx(0.25)
  nothing, _ = losses.probability_mse(probs, target, mask=jnp.zeros((1, 2), bool))
  assert float(nothing) == 0.0


def test_probability_mse_matches_numpy_with_mask_and_stops_target_gradient():
  probs, target = _random_probs(0, (1, 2, 3, 4)), _random_probs(1, (1, 2, 3, 4))
  loss, per_pixel = losses.probability_mse(probs, target, mask=CONSISTENCY_MASK)
  squared = ((probs - target) ** 2).sum(-1)
  expected = squared[CONSISTENCY_MASK].sum() / (4 * CONSISTENCY_MASK.sum())
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  np.testing.assert_allclose(per_pixel, np.where(CONSISTENCY_MASK, squared, 0), rtol=1e-5)
  target_grad = jax.grad(lambda t: losses.probability_mse(probs, t)[0])(target)
  np.testing.assert_array_equal(target_grad, np.zeros_like(target))


def test_kl_divergence_matches_numpy_with_mask():
  target = _random_probs(2, (1, 2, 3, 4))
  logits = np.random.default_rng(3).normal(size=(1, 2, 3, 4)).astype(np.float32)
  loss, per_pixel = jax.jit(
      lambda t, z: losses.kl_divergence(t, z, mask=jnp.asarray(CONSISTENCY_MASK)))(
          target, logits)
  kl = (target * (np.log(target) - np.log(_softmax(logits)))).sum(-1)
  assert float(loss) == pytest.approx(float(kl[CONSISTENCY_MASK].mean()), rel=1e-5)
  np.testing.assert_allclose(per_pixel, np.where(CONSISTENCY_MASK, kl, 0), rtol=1e-4,
                             atol=1e-6)


def test_kl_divergence_one_hot_target_is_cross_entropy_and_zero_at_itself():
  # With t one-hot, KL(t || p) = -log p_label (0 log 0 = 0, no NaN).
  target = jax.nn.one_hot(CE_LABELS[:, :, :1], 3)
  loss, _ = losses.kl_divergence(target, CE_LOGITS[:, :, :1])
  assert float(loss) == pytest.approx((LN2 + LN4) / 2, rel=1e-6)
  same, _ = losses.kl_divergence(jax.nn.softmax(CE_LOGITS), CE_LOGITS)
  assert float(same) == pytest.approx(0.0, abs=1e-6)
  uniform = jnp.full(CE_LOGITS.shape, 1 / 3)
  target_grad = jax.grad(lambda t: losses.kl_divergence(t, CE_LOGITS)[0])(uniform)
  np.testing.assert_array_equal(target_grad, np.zeros_like(target_grad))


def _numpy_jsd(probs):
  return _numpy_entropy(probs.mean(0)) - _numpy_entropy(probs).mean(0)


@pytest.mark.parametrize("num_predictions", [2, 3])
def test_jensen_shannon_matches_numpy_with_mask(num_predictions):
  probs = _random_probs(num_predictions, (num_predictions, 1, 2, 3, 4))
  loss, per_pixel = jax.jit(
      lambda p: losses.jensen_shannon(p, mask=jnp.asarray(CONSISTENCY_MASK)))(probs)
  jsd = _numpy_jsd(probs)
  assert np.all(jsd[CONSISTENCY_MASK] > 1e-3)
  assert float(loss) == pytest.approx(float(jsd[CONSISTENCY_MASK].mean()), rel=1e-5)
  np.testing.assert_allclose(per_pixel, np.where(CONSISTENCY_MASK, jsd, 0), rtol=1e-4,
                             atol=1e-6)


def test_jensen_shannon_two_one_hots_is_ln2():
  # Two certain, disagreeing predictions: H(mean) = ln 2, each H = 0.
  probs = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
  loss, _ = losses.jensen_shannon(probs)
  assert float(loss) == pytest.approx(LN2, rel=1e-6)
  grad = jax.grad(lambda p: losses.jensen_shannon(p)[0])(probs)
  assert np.all(np.isfinite(grad))


def test_jensen_shannon_zero_for_identical_and_symmetric():
  probs = _random_probs(4, (3, 1, 2, 3, 4))
  identical, per_pixel = losses.jensen_shannon(jnp.stack([probs[0]] * 3))
  assert float(identical) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_allclose(per_pixel, 0.0, atol=1e-6)
  forward, _ = losses.jensen_shannon(probs)
  for order in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):
    permuted, _ = losses.jensen_shannon(probs[np.array(order)])
    assert float(permuted) == pytest.approx(float(forward), rel=1e-6)


def test_soft_cross_entropy_matches_numpy_with_mask():
  target = _random_probs(5, (1, 2, 3, 4))
  logits = np.random.default_rng(6).normal(size=(1, 2, 3, 4)).astype(np.float32)
  loss, per_pixel = losses.soft_cross_entropy(logits, target, mask=CONSISTENCY_MASK)
  ce = -(target * np.log(_softmax(logits))).sum(-1)
  assert float(loss) == pytest.approx(float(ce[CONSISTENCY_MASK].mean()), rel=1e-5)
  np.testing.assert_allclose(per_pixel, np.where(CONSISTENCY_MASK, ce, 0), rtol=1e-5)
  target_grad = jax.grad(lambda t: losses.soft_cross_entropy(logits, t)[0])(target)
  np.testing.assert_array_equal(target_grad, np.zeros_like(target))


def test_pseudo_label_cross_entropy_counts_confident_divides_by_valid():
  # CE per pixel ln 2, ln 3, ln 4 (4th label ignored). Confidence keeps pixels 0 and 2;
  # valid drops pixel 2: the sum is ln 2 over 2 valid pixels (0 and 1).
  confidence = jnp.array([[[0.9, 0.5], [0.95, 1.0]]])
  valid = jnp.array([[[True, True], [False, True]]])
  loss, per_pixel = losses.pseudo_label_cross_entropy(
      CE_LOGITS, CE_LABELS, confidence=confidence, threshold=0.9, valid=valid)
  np.testing.assert_allclose(per_pixel, [[[LN2, 0.0], [0.0, 0.0]]], rtol=1e-6)
  assert float(loss) == pytest.approx(LN2 / 2, rel=1e-6)
  everything, _ = losses.pseudo_label_cross_entropy(CE_LOGITS, CE_LABELS)
  assert float(everything) == pytest.approx((LN2 + LN3 + LN4) / 3, rel=1e-6)


def test_consistency_losses_reject_bad_arguments():
  probs = jnp.full((1, 2, 3), 1 / 3)
  with pytest.raises(ValueError, match="probs and target_probs"):
    losses.probability_mse(probs, probs[:, :1])
  with pytest.raises(ValueError, match=r"mask has shape \(2,\)"):
    losses.kl_divergence(probs, probs, mask=jnp.ones(2, bool))
  with pytest.raises(ValueError, match="N >= 2"):
    losses.jensen_shannon(probs)
  with pytest.raises(ValueError, match="logits and target_probs"):
    losses.soft_cross_entropy(probs, probs[..., :2])
  with pytest.raises(ValueError, match="threshold=0.9 but no confidence"):
    losses.pseudo_label_cross_entropy(CE_LOGITS, CE_LABELS, threshold=0.9)
  with pytest.raises(ValueError, match="confidence has shape"):
    losses.pseudo_label_cross_entropy(CE_LOGITS, CE_LABELS, confidence=jnp.ones(2))
