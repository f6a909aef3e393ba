"""ST / ST++ pieces: TTA, confidence filtering, stability ranking, the student step and input.

The rounds driver (teacher, pseudo-labels, students, resuming) is tested in
``tests/test_self_training_rounds.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg.methods import pseudo_label

import tiny_data

NUM_STEPS = 20


def _pointwise_probs(images):
  """A per-pixel model: P(class 1) = red channel. Equivariant to flips (and to scales on
  constant regions)."""
  red = images[..., 0]
  return jnp.stack([1.0 - red, red], axis=-1)


def test_tta_of_a_pointwise_model_on_a_constant_image_is_its_plain_prediction():
  images = jnp.full((2, 12, 16, 3), 0.3).at[1].set(0.8)
  probs = pseudo_label.tta_probabilities(_pointwise_probs, images,
                                         scales=(0.5, 0.75, 1.0, 1.5, 2.0), flip=True,
                                         size_multiple=32)
  np.testing.assert_allclose(probs, _pointwise_probs(images), atol=1e-6)


def test_tta_flips_the_mirror_views_prediction_back():
  # Left half red, right half black: a pointwise model is flip-equivariant, so its TTA
  # (scale 1 + flip) equals the plain prediction only if the mirror view is flipped back.
  images = jnp.zeros((1, 4, 6, 3)).at[:, :, :3, 0].set(1.0)
  probs = pseudo_label.tta_probabilities(_pointwise_probs, images, scales=(1.0,), flip=True)
  np.testing.assert_allclose(probs, _pointwise_probs(images), atol=1e-6)

  # A model that ignores the image and says class 1 on the left columns: its mirror view,
  # flipped back, says class 1 on the right, so the two views average to 1/2 everywhere.
  def left_is_class_one(views):
    left = (jnp.arange(views.shape[2]) < views.shape[2] // 2).astype(jnp.float32)
    p1 = jnp.broadcast_to(left, views.shape[:3])
    return jnp.stack([1.0 - p1, p1], axis=-1)

  probs = pseudo_label.tta_probabilities(left_is_class_one, images, scales=(1.0,), flip=True)
  np.testing.assert_allclose(probs, 0.5, atol=1e-6)


def test_tta_pads_each_resized_view_to_the_size_multiple_and_crops_the_padding():
  seen = []

  def recording_probs(views):
    seen.append(views.shape)
    return _pointwise_probs(views)

  images = jnp.full((1, 12, 20, 3), 0.6)
  probs = pseudo_label.tta_probabilities(recording_probs, images, scales=(0.5, 1.0, 2.0),
                                         flip=False, size_multiple=8)
  # 6x10 and 24x40 padded to multiples of 8; the input size as validation predicts it.
  assert seen == [(1, 8, 16, 3), (1, 12, 20, 3), (1, 24, 40, 3)]
  assert probs.shape == (1, 12, 20, 2)
  np.testing.assert_allclose(probs, _pointwise_probs(images), atol=1e-6)


def test_confident_labels_ignore_exactly_the_unconfident_and_padded_pixels():
  probs = jnp.array([[[[0.9, 0.1], [0.4, 0.6]],
                      [[0.55, 0.45], [0.2, 0.8]]]])
  valid = jnp.array([[[True, True], [True, False]]])
  labels = pseudo_label.confident_labels(probs, valid, threshold=0.6)
  assert labels.dtype == jnp.uint8
  # (0,0) 0.9 -> 0; (0,1) 0.6 >= 0.6 -> 1; (1,0) 0.55 < 0.6 -> 255; (1,1) padding -> 255.
  np.testing.assert_array_equal(labels, [[[0, 1], [255, 255]]])
  np.testing.assert_array_equal(pseudo_label.confident_labels(probs, valid, threshold=0.0),
                                [[[0, 1], [0, 255]]])


def _st_plus_plus_miou(prediction, reference, num_classes):
  """ST++'s ``meanIOU`` on one image: a histogram and a nanmean over classes."""
  hist = np.bincount(num_classes * reference.ravel() + prediction.ravel(),
                     minlength=num_classes ** 2).reshape(num_classes, num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
  return np.nanmean(iou)


def test_stability_is_the_mean_miou_with_the_final_checkpoint_as_in_st_plus_plus():
  rng = np.random.default_rng(0)
  num_classes, checkpoints, batch, size = 4, 3, 5, 6
  predictions = rng.integers(0, num_classes, (checkpoints, batch, size, size))
  predictions[:, 0] = 2                        # One class everywhere: stability 1.
  predictions[0, 1] = predictions[2, 1]        # Image 1 half stable.
  predictions[1, 1] = (predictions[2, 1] + 1) % num_classes
  predictions[:, 2, :, :3] = 0                 # Classes 2, 3 absent from images 2 and 3.
  predictions[:, 2, :, 3:] = rng.integers(0, 2, (checkpoints, size, 3))
  predictions[:, 3] = rng.integers(0, 2, (checkpoints, size, size))
  valid = jnp.ones((batch, size, size), bool)
  scores = pseudo_label.stability_scores(jnp.asarray(predictions), valid,
                                         num_classes=num_classes)
  expected = [np.mean([_st_plus_plus_miou(predictions[k, i], predictions[-1, i], num_classes)
                       for k in range(checkpoints - 1)]) for i in range(batch)]
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  assert float(scores[0]) == 1.0 and float(scores[1]) == 0.5


def test_stability_counts_only_valid_pixels():
  predictions = jnp.zeros((2, 1, 2, 2), jnp.int32).at[0, 0, 1, 1].set(1)
  valid = jnp.ones((1, 2, 2), bool)
  # Pixel (1,1) disagrees: class 0 IoU 3/4, class 1 IoU 0/1 -> 3/8; without it, 1.
  np.testing.assert_allclose(
      pseudo_label.stability_scores(predictions, valid, num_classes=2), [3 / 8])
  np.testing.assert_allclose(
      pseudo_label.stability_scores(predictions, valid.at[0, 1, 1].set(False),
                                    num_classes=2), [1.0])


def test_reliable_half_is_the_more_stable_half_with_ties_in_pool_order():
  ids = ["a", "b", "c", "d", "e"]
  reliable, unreliable = pseudo_label.split_reliable(ids, [0.2, 0.9, 0.5, 0.9, 0.1])
  assert reliable == ["b", "d"]
  assert unreliable == ["c", "a", "e"]


@pytest.mark.parametrize("field, value, match", [
    ("variant", "st+", r"config\.pseudo_label\.variant='st\+'"),
    ("confidence_threshold", 1.5, r"config\.pseudo_label\.confidence_threshold=1\.5"),
    ("tta_scales", (), r"config\.pseudo_label\.tta_scales=\(\)"),
    ("round_steps", (100,), r"at least 2 entries"),
    ("round_steps", (100, 0), r"round_steps=\(100, 0\); expected positive"),
])
def test_bad_settings_are_rejected_naming_the_field(field, value, match):
  config = config_lib.base_config("pseudo_label")
  config.pseudo_label[field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)


def test_st_plus_plus_needs_three_rounds_and_a_teacher_of_three_steps():
  config = config_lib.base_config("pseudo_label")
  config.pseudo_label.variant = "st++"
  assert pseudo_label.round_steps(config) == (config.num_steps,) * 3
  config.pseudo_label.round_steps = (10, 10)
  with pytest.raises(ValueError, match="expected 3 entries"):
    config_lib.validate_config(config)
  config.pseudo_label.round_steps = (2, 10, 10)
  with pytest.raises(ValueError, match="at least 3"):
    config_lib.validate_config(config)


def test_strong_view_erases_a_box_to_255_and_changes_only_colours_elsewhere():
  images = jnp.full((8, 16, 16, 3), 0.5)
  labels = jnp.ones((8, 16, 16), jnp.int32)
  strong, strong_labels = jax.jit(pseudo_label.strong_views)(jax.random.key(0), images, labels)
  erased = np.asarray(strong_labels) == 255
  assert set(np.unique(strong_labels)) <= {1, 255}
  # Random Erasing with p = 0.5: some of the 8 images get a box, some do not.
  assert 0 < erased.any(axis=(1, 2)).sum() < 8
  # Outside the box each image stays flat (colour ops act on every pixel alike, and a
  # Gaussian blur keeps a flat image flat); inside it is noise.
  for image, box in zip(np.asarray(strong), erased):
    assert np.ptp(image[~box], axis=0).max() < 1e-5
    if box.any():
      assert np.ptp(image[box]) > 0.5


# --- The student step, compiled as the loop compiles it, on 1 and 4 devices. ---


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """A depth-1 UNet student, its step on 1 and 4 devices, and a fixed batch."""
  root = tiny_data.write_dataset(str(tmp_path_factory.mktemp("tiny")))
  config = tiny_data.tiny_config(root, **{
      "model.unet.depth": 1, "optimizer.name": "sgd", "optimizer.learning_rate": 0.1,
      "num_steps": NUM_STEPS})
  config.method = "pseudo_label"
  config.pseudo_label = config_lib.base_config("pseudo_label").pseudo_label
  datasets = data_lib.load_datasets(config)
  labeled = [datasets.labeled[i] for i in range(4)]
  # Pseudo-labels: the true masks of other images, with a corner filtered out (255).
  pool = [datasets.labeled[i] for i in range(4, 8)]
  batch = {"image": np.stack([e["image"] for e in labeled]).astype(np.float32) / 255,
           "label": np.stack([e["label"] for e in labeled]).astype(np.int32),
           "image_p": np.stack([e["image"] for e in pool]).astype(np.float32) / 255,
           "label_p": np.stack([e["label"] for e in pool]).astype(np.int32)}
  batch["label_p"][:, :3, :3] = 255
  runs = tiny_data.runs_on_one_and_four_devices(config, batch)
  return config, runs


def test_student_step_learns_a_fixed_batch(student):
  _, runs = student
  run, step, batch = runs[1]
  _, history = tiny_data.train_on_fixed_batch(step, run.state, batch, NUM_STEPS)
  assert history[0].keys() == {"loss", "loss_ce", "grad_norm", "pseudo_label_fraction"}
  for metrics in history:
    np.testing.assert_allclose(metrics["loss"], metrics["loss_ce"], rtol=1e-6)
    # 9 of 256 pixels are filtered; Random Erasing removes more in some steps.
    assert metrics["pseudo_label_fraction"] <= 1 - 9 / 256 + 1e-6
  assert min(m["pseudo_label_fraction"] for m in history) < 1 - 9 / 256
  assert history[-1]["loss"] < 0.7 * history[0]["loss"], [m["loss"] for m in history]


def test_student_loss_is_one_cross_entropy_over_labeled_and_pseudo_labeled_pixels(student):
  config, runs = student
  run, _, batch = runs[1]
  config = config.copy_and_resolve_references()
  config.pseudo_label.strong_view = False
  step = jax.jit(run.method.make_train_step(run.model, optax.sgd(0.0), config))
  _, metrics = step(tiny_data.copy_state(run.state), batch, jax.random.key(0))
  logits = run.model.apply(run.state.variables, jnp.concatenate(
      [batch["image"], batch["image_p"]]), train=True)["logits"]
  labels = np.concatenate([batch["label"], batch["label_p"]])
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  valid = labels != 255
  picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(metrics["loss"], -picked[valid].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["pseudo_label_fraction"], 1 - 9 / 256, rtol=1e-6)


def test_one_and_four_devices_agree(student):
  _, runs = student
  results = {}
  for devices, (run, step, batch) in runs.items():
    state, metrics = step(tiny_data.copy_state(run.state), batch, jax.random.key(3))
    state, metrics = step(state, batch, jax.random.key(4))
    results[devices] = jax.device_get((state.params, metrics))
  (params1, metrics1), (params4, metrics4) = results[1], results[4]
  for name in metrics1:
    np.testing.assert_allclose(metrics4[name], metrics1[name], rtol=1e-4, atol=1e-7,
                               err_msg=name)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               params1, params4)


def test_batches_pair_the_labeled_stream_with_the_pseudo_labeled_pool(student):
  config, _ = student
  datasets = data_lib.load_datasets(config)
  pool = data_lib.source_from_arrays(
      "pool", np.full((3, 16, 16, 3), 7, np.uint8), np.full((3, 16, 16), 2, np.uint8),
      class_names=datasets.labeled.class_names)
  with pseudo_label.train_batches(datasets.labeled, pool, batch_size=4,
                                  unlabeled_batch_size=2, crop_size=16, seed=0,
                                  scale_range=(1.0, 1.0), flip=True) as batches:
    batch = next(batches)
  assert batch.keys() == {"image", "label", "image_p", "label_p"}
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image_p"].shape == (2, 16, 16, 3)
  np.testing.assert_allclose(batch["image_p"], 7 / 255)
  np.testing.assert_array_equal(batch["label_p"], 2)
  assert set(np.unique(batch["label"])) <= {0, 1, 2}

  with pytest.raises(ValueError, match="without pseudo-labels"):
    with pseudo_label.train_batches(datasets.labeled, datasets.unlabeled, batch_size=4,
                                    crop_size=16, seed=0):
      pass
