"""FixMatch's unlabeled loss by hand, and its config checks.

The step itself (its terms, learning, 1 vs 4 devices, a run of the loop) is checked with
the other self-training methods in ``test_self_training.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg.methods import fixmatch, self_training

import tiny_data


def test_loss_counts_confident_valid_pixels_and_divides_by_all_valid_pixels():
  # Pixel (row, col): logits, pseudo-label, confidence, valid.
  #   (0, 0): p = (3/4, 1/4), label 0, q 0.99 -> CE log(4/3), counted.
  #   (0, 1): p = (1/2, 1/2), label 1, q 0.90 -> below tau, not counted.
  #   (1, 0): p = (1/4, 3/4), label 0, q 0.95 -> CE log 4, counted (q >= tau).
  #   (1, 1): a huge loss, but padding (invalid): neither counted nor in the normaliser.
  logits = jnp.array([[[[math.log(3), 0.0], [0.0, 0.0]],
                       [[0.0, math.log(3)], [50.0, -50.0]]]])
  pseudo = self_training.PseudoLabels(
      labels=jnp.array([[[0, 1], [0, 1]]]),
      confidence=jnp.array([[[0.99, 0.90], [0.95, 0.99]]]),
      valid=jnp.array([[[True, True], [True, False]]]))
  loss = self_training.confident_cross_entropy(logits, pseudo, threshold=0.95)
  np.testing.assert_allclose(loss, (math.log(4 / 3) + math.log(4)) / 3, rtol=1e-6)


def test_loss_is_zero_without_valid_pixels():
  pseudo = self_training.PseudoLabels(labels=jnp.zeros((1, 2, 2), jnp.int32),
                                      confidence=jnp.ones((1, 2, 2)),
                                      valid=jnp.zeros((1, 2, 2), bool))
  loss = self_training.confident_cross_entropy(jnp.zeros((1, 2, 2, 3)), pseudo, threshold=0.5)
  assert float(loss) == 0.0


def test_step_trains_the_strong_view_on_the_weak_views_confident_pseudo_labels():
  # No CutMix box, a model without BatchNorm or dropout: the strong view's CE against the
  # weak view's argmax, over pixels with max probability >= tau, divided by all valid ones.
  config = config_lib.base_config("fixmatch")
  config.fixmatch.update(dict(cutmix_p=0.0, threshold=0.4))
  model, tx = tiny_data.tiny_unet(), optax.sgd(0.1)
  rng = np.random.default_rng(0)
  valid = np.ones((2, 16, 16), bool)
  valid[1, :, -4:] = False
  batch = {"image": jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 3, (2, 16, 16)), jnp.int32),
           "image_u": jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32),
           "valid_u": jnp.asarray(valid),
           "image_u2": jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32),
           "valid_u2": jnp.ones((2, 16, 16), bool)}
  state = fixmatch.init_state(jax.random.key(0), model, tx, batch, config)
  key = jax.random.key(5)
  _, metrics = jax.jit(fixmatch.make_train_step(model, tx, config))(state, batch, key)

  view_key = jax.random.split(key, 3)[0]
  _, strong, _ = self_training.partner_and_strong_views(view_key, model, state, batch,
                                                        num_views=1, cutmix_p=0.0)
  apply = lambda images: np.asarray(jax.nn.log_softmax(
      model.apply({"params": state.params}, images, train=True)["logits"]))
  weak, strong_log_probs = np.exp(apply(batch["image_u"])), apply(strong[0])
  labels, confidence = weak.argmax(-1), weak.max(-1)
  ce = -np.take_along_axis(strong_log_probs, labels[..., None], -1)[..., 0]
  counted = (confidence >= 0.4) & valid
  assert 0 < counted.sum() < valid.sum()
  np.testing.assert_allclose(metrics["loss_s"], ce[counted].sum() / valid.sum(), rtol=1e-5)


def test_default_config_follows_unimatch_for_voc():
  config = config_lib.base_config("fixmatch")
  assert (config.fixmatch.threshold, config.fixmatch.cutmix_p) == (0.95, 0.5)
  assert fixmatch.USES_UNLABELED and fixmatch.NUM_UNLABELED_VIEWS == 2


@pytest.mark.parametrize("field", ["threshold", "cutmix_p"])
def test_config_values_outside_the_unit_interval_are_rejected(field):
  config = config_lib.base_config("fixmatch")
  config.fixmatch[field] = 1.5
  with pytest.raises(ValueError, match=rf"config\.fixmatch\.{field}=1\.5"):
    config_lib.validate_config(config)
