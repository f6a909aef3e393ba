"""inference.make_batch_predictor: padding, cropping, the method's predictor, sliding mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import evaluate, inference, parallel, train, uncertainty

NUM_CLASSES = 3
CROP = 16


def _config(eval_mode: str = "whole"):
  config = config_lib.base_config()
  config.dataset.crop_size = CROP
  config.model.unet.width = 4
  config.eval_mode = eval_mode
  return config


@pytest.fixture(scope="module")
def unet_run():
  return train.build_run(_config(), num_classes=NUM_CLASSES, mesh=parallel.make_mesh(1))


class _ThresholdMethod:
  """A method whose predictor reads the class off the red channel: floor(3 * red)."""

  @staticmethod
  def make_predict_fn(model, config):
    del model, config

    def predict(state, images):
      del state
      classes = jnp.minimum((images[..., 0] * NUM_CLASSES).astype(jnp.int32), NUM_CLASSES - 1)
      return jax.nn.one_hot(classes, NUM_CLASSES)

    return predict


class _WindowWidthMethod:
  """A method predicting class 1 where its input is one crop wide, else class 0."""

  @staticmethod
  def make_predict_fn(model, config):
    del model

    def predict(state, images):
      del state
      is_window = images.shape[2] == config.dataset.crop_size
      return jax.nn.one_hot(jnp.full(images.shape[:3], int(is_window)), NUM_CLASSES)

    return predict


def _run_with(method, *, eval_mode: str = "whole") -> train.Run:
  return train.Run(config=_config(eval_mode), mesh=None, model=None, method=method, tx=None,
                   schedule=None, state=None, num_classes=NUM_CLASSES)


def test_uses_the_method_predictor_and_crops_the_padding():
  red = np.array([[0.0, 0.2, 0.4, 0.6, 0.8, 0.99, 0.34]], np.float32)
  images = np.zeros((2, 5, 7, 3), np.float32)
  images[..., 0] = red
  images[1, ..., 0] = 1.0 - red
  predictions = inference.make_batch_predictor(_run_with(_ThresholdMethod))(images)
  assert predictions.shape == (2, 5, 7) and predictions.dtype == np.int32
  np.testing.assert_array_equal(predictions[0], np.tile([0, 0, 1, 1, 2, 2, 1], (5, 1)))
  np.testing.assert_array_equal(predictions[1], np.tile([2, 2, 1, 1, 0, 0, 1], (5, 1)))


@pytest.mark.parametrize("eval_mode, expected_class", [("whole", 0), ("sliding", 1)])
def test_sliding_mode_predicts_window_by_window(eval_mode, expected_class):
  images = np.zeros((1, 40, 40, 3), np.float32)  # Padded to 64 x 64: never one crop wide.
  predict = inference.make_batch_predictor(_run_with(_WindowWidthMethod, eval_mode=eval_mode))
  np.testing.assert_array_equal(predict(images), np.full((1, 40, 40), expected_class))


def test_model_predictions_match_the_validation_predictor(unet_run):
  images = jax.random.uniform(jax.random.key(0), (2, 20, 40, 3))
  padded = jnp.pad(images, ((0, 0), (0, 12), (0, 24), (0, 0)))
  probs = jax.jit(evaluate.make_predict_fn(unet_run.model))(unet_run.state, padded)
  probs = np.asarray(probs)[:, :20, :40]
  predictions = inference.make_batch_predictor(unet_run)(np.asarray(images))
  top_two = np.sort(probs, axis=-1)[..., -2:]
  # Pixels whose two best classes tie to float precision may go either way.
  decided = top_two[..., 1] - top_two[..., 0] > 1e-6
  assert decided.mean() > 0.5
  np.testing.assert_array_equal(predictions[decided], probs.argmax(-1)[decided])


def test_rejects_images_without_three_channels():
  predict = inference.make_batch_predictor(_run_with(_ThresholdMethod))
  with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\[B, H, W, 3\]"):
    predict(np.zeros((2, 8, 8), np.float32))



@pytest.fixture(scope="module")
def dropout_run():
  config = _config()
  config.model.unet.dropout_rate = 0.5
  return train.build_run(config, num_classes=NUM_CLASSES, mesh=parallel.make_mesh(1))


@pytest.mark.parametrize("measure, reference", [
    ("entropy", "predictive_entropy"), ("mutual_information", "mutual_information")])
def test_uncertainty_predictor_is_mc_dropout(dropout_run, measure, reference):
  images = jax.random.uniform(jax.random.key(0), (1, 20, 24, 3))
  ids, heat = inference.make_uncertainty_predictor(
      dropout_run, measure=measure, num_samples=4, seed=3)(np.asarray(images))
  padded = jnp.pad(images, ((0, 0), (0, 12), (0, 8), (0, 0)))
  samples = uncertainty.mc_dropout(
      jax.random.key(3), uncertainty.make_mc_dropout_apply_fn(dropout_run.model),
      dropout_run.state.variables, padded, num_samples=4)[:, :, :20, :24]
  assert ids.shape == heat.shape == (1, 20, 24)
  # The predictor is one compiled program and the reference another; XLA may fuse the
  # entropy's sums in a different order, so agreement is to float32 rounding, not bits.
  np.testing.assert_allclose(heat, getattr(uncertainty, reference)(samples), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ids, samples.mean(0).argmax(-1))
  assert heat.max() > 0


def test_uncertainty_needs_dropout(tmp_path):
  config = _config()
  config.predict.uncertainty = "entropy"
  config.predict.input_dir = str(tmp_path)
  with pytest.raises(ValueError, match=r"dropout_rate is 0"):
    inference.predict_folder(config, str(tmp_path))
