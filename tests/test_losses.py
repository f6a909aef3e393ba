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
