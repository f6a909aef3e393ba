"""Tests for jaxsemiseg.metrics against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg import metrics

# 2x3 example with one ignored pixel. Counted (truth, prediction) pairs:
# (0,0) (0,1) (1,1) (1,1) (2,0); class 3 never occurs.
LABELS = np.array([[0, 0, 1], [1, 2, 255]], np.int32)
PREDICTIONS = np.array([[0, 1, 1], [1, 0, 2]], np.int32)
EXPECTED_CONFUSION = np.array([
    [1, 1, 0, 0],
    [0, 2, 0, 0],
    [1, 0, 0, 0],
    [0, 0, 0, 0],
])


def test_confusion_matrix_hand_example():
  confusion = metrics.confusion_matrix(
      jnp.asarray(PREDICTIONS), jnp.asarray(LABELS), num_classes=4)
  assert confusion.dtype == jnp.int32
  np.testing.assert_array_equal(confusion, EXPECTED_CONFUSION)


def test_confusion_matrix_ignores_ignored_and_padded_pixels():
  other_prediction_at_ignored = PREDICTIONS.copy()
  other_prediction_at_ignored[1, 2] = 3
  padded_labels = np.stack([LABELS, np.full_like(LABELS, 255)])
  padded_predictions = np.stack([other_prediction_at_ignored, np.zeros_like(LABELS)])
  confusion = metrics.confusion_matrix(
      jnp.asarray(padded_predictions), jnp.asarray(padded_labels), num_classes=4)
  np.testing.assert_array_equal(confusion, EXPECTED_CONFUSION)


def test_confusion_matrix_custom_ignore_index():
  labels = np.where(LABELS == 255, 3, LABELS)
  confusion = metrics.confusion_matrix(
      jnp.asarray(PREDICTIONS), jnp.asarray(labels), num_classes=4, ignore_index=3)
  np.testing.assert_array_equal(confusion, EXPECTED_CONFUSION)


def test_confusion_matrix_jit_matches_eager_and_accumulates():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (4, 6, 7)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.2] = 255
  predictions = rng.integers(0, 5, (4, 6, 7)).astype(np.int32)
  eager = metrics.confusion_matrix(predictions, labels, num_classes=5)
  jitted = jax.jit(lambda p, l: metrics.confusion_matrix(p, l, num_classes=5))
  np.testing.assert_array_equal(jitted(predictions, labels), eager)
  halves = (jitted(predictions[:2], labels[:2]) + jitted(predictions[2:], labels[2:]))
  np.testing.assert_array_equal(halves, eager)
  assert int(eager.sum()) == int((labels != 255).sum())


def test_confusion_matrix_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="predictions have shape"):
    metrics.confusion_matrix(jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 2), jnp.int32),
                             num_classes=2)
  with pytest.raises(ValueError, match="num_classes=0"):
    metrics.confusion_matrix(jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32),
                             num_classes=0)


def test_segmentation_metrics_hand_example():
  # I = [1, 2, 0, 0], T = [2, 2, 1, 0], P = [2, 3, 0, 0], U = [3, 3, 1, 0].
  scores = metrics.segmentation_metrics(EXPECTED_CONFUSION)
  np.testing.assert_allclose(scores["iou"], [1 / 3, 2 / 3, 0.0, 0.0], atol=1e-9)
  assert scores["miou"] == pytest.approx(0.25)
  assert scores["miou_present"] == pytest.approx(1 / 3)
  assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
  assert scores["mean_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 0 / 1) / 3)
  assert scores["dice"] == pytest.approx((2 / 4 + 4 / 5 + 0 + 0) / 4)
  # Background class 0: IoU 1/3; foreground (1, 2, 3 merged): I = 2, U = 5 - 1 = 4.
  assert scores["fb_iou"] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_segmentation_metrics_accepts_jax_array_and_background_choice():
  scores = metrics.segmentation_metrics(
      jnp.asarray(EXPECTED_CONFUSION), background_class=1)
  # Background class 1: IoU 2/3; foreground {0, 2, 3}: I = 1 + 0 + 1 = 2 (cells
  # (0,0), (2,0)), U = 5 - 2 = 3.
  assert scores["fb_iou"] == pytest.approx((2 / 3 + 2 / 3) / 2)


@pytest.mark.parametrize("confusion, message", [
    (np.zeros((2, 3)), "square"),
    (np.zeros((3, 3)), "no pixels"),
])
def test_segmentation_metrics_rejects_bad_confusion(confusion, message):
  with pytest.raises(ValueError, match=message):
    metrics.segmentation_metrics(confusion)


# Four bins (0, .25], (.25, .5], (.5, .75], (.75, 1]; the 0.75 and 0.5 confidences sit
# on bin edges and belong to the lower bin.
ECE_PROBS = np.array([
    [0.9, 0.1, 0.0, 0.0],     # label 0: conf .9, correct, bin 3
    [0.75, 0.25, 0.0, 0.0],   # label 1: conf .75, wrong, bin 2
    [0.5, 0.3, 0.2, 0.0],     # label 0: conf .5, correct, bin 1
    [0.1, 0.2, 0.3, 0.4],     # label 2: conf .4, wrong, bin 1
    [0.05, 0.95, 0.0, 0.0],   # ignored
], np.float32)
ECE_LABELS = np.array([0, 1, 0, 2, 255], np.int32)


def test_expected_calibration_error_hand_example():
  bins = metrics.expected_calibration_error(
      jnp.asarray(ECE_PROBS), jnp.asarray(ECE_LABELS), num_bins=4)
  np.testing.assert_array_equal(bins["count"], [0, 2, 1, 1])
  np.testing.assert_allclose(bins["confidence_sum"], [0.0, 0.9, 0.75, 0.9], atol=1e-6)
  np.testing.assert_allclose(bins["accuracy_sum"], [0.0, 1.0, 0.0, 1.0])
  # (|1 - .9| + |0 - .75| + |1 - .9|) / 4.
  assert metrics.ece_from_bins(bins) == pytest.approx(0.2375, abs=1e-6)


def test_expected_calibration_error_accumulates_under_jit():
  ece = jax.jit(lambda p, l: metrics.expected_calibration_error(p, l, num_bins=4))
  whole = ece(ECE_PROBS.reshape(1, 5, 4), ECE_LABELS.reshape(1, 5))
  parts = jax.tree.map(jnp.add, ece(ECE_PROBS[:2], ECE_LABELS[:2]),
                       ece(ECE_PROBS[2:], ECE_LABELS[2:]))
  for key in whole:
    np.testing.assert_allclose(parts[key], whole[key], atol=1e-6)
  assert metrics.ece_from_bins(parts) == pytest.approx(0.2375, abs=1e-6)


def test_ece_from_bins_rejects_empty_bins():
  bins = metrics.expected_calibration_error(
      jnp.asarray(ECE_PROBS), jnp.full(5, 255, jnp.int32), num_bins=4)
  with pytest.raises(ValueError, match="no pixel"):
    metrics.ece_from_bins(bins)


def _class_images(class_map: np.ndarray, num_classes: int) -> jnp.ndarray:
  """Images whose red channel encodes the class of each pixel."""
  red = (class_map + 0.5) / num_classes
  return jnp.asarray(np.repeat(red[..., None], 3, axis=-1), jnp.float32)


def _decode_colour(num_classes: int):
  def predict(images):
    return jax.nn.one_hot(jnp.floor(images[..., 0] * num_classes).astype(jnp.int32),
                          num_classes)
  return predict


@pytest.mark.parametrize("height, width, window, stride", [
    (11, 7, 5, None),   # default stride 3; neither side a multiple of it
    (9, 10, 4, 3),
    (3, 5, 6, None),    # smaller than the window on both sides: padded
])
def test_sliding_window_reproduces_whole_image_prediction(height, width, window, stride):
  rng = np.random.default_rng(1)
  class_map = rng.integers(0, 4, (2, height, width))
  images = _class_images(class_map, 4)
  probs = metrics.predict_sliding_window(
      _decode_colour(4), images, window=window, stride=stride, num_classes=4)
  np.testing.assert_array_equal(probs, _decode_colour(4)(images))


def test_sliding_window_averages_overlaps_by_count():
  # Width 4, window 2, stride 1: windows start at columns 0, 1, 2. Each window predicts
  # its own local column index (0 or 1), so column j averages the windows covering it:
  # [0], [1, 0], [1, 0], [1]. The height (1) is padded to the window.
  def local_column(windows):
    return jnp.broadcast_to(jnp.arange(2, dtype=jnp.float32)[None, None, :, None],
                            windows.shape[:3] + (1,))

  probs = jax.jit(lambda x: metrics.predict_sliding_window(
      local_column, x, window=2, stride=1, num_classes=1))(jnp.zeros((1, 1, 4, 3)))
  np.testing.assert_allclose(probs[0, 0, :, 0], [0.0, 0.5, 0.5, 1.0])


def test_sliding_window_covers_every_pixel():
  probs = metrics.predict_sliding_window(
      lambda x: jnp.ones(x.shape[:3] + (2,)), jnp.zeros((1, 13, 17, 3)), window=6,
      stride=5, num_classes=2)
  np.testing.assert_array_equal(probs, np.ones((1, 13, 17, 2)))


def test_sliding_window_rejects_bad_arguments():
  images = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="stride=5"):
    metrics.predict_sliding_window(_decode_colour(2), images, window=4, stride=5,
                                   num_classes=2)
  with pytest.raises(ValueError, match="predict_fn returned shape"):
    metrics.predict_sliding_window(_decode_colour(2), images, window=4, num_classes=3)
  with pytest.raises(ValueError, match=r"expected \[B, H, W, 3\]"):
    metrics.predict_sliding_window(_decode_colour(2), images[0], window=4, num_classes=2)
