"""Equivariance consistency: zero for models that commute with T, the out-of-frame mask.

The step's terms, learning, 1 vs 4 devices and a run of the loop are checked with the
other unlabeled-data methods in ``test_self_training.py``.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg.augment import geometric
from jaxsemiseg.methods import equivariance

SIZE = 8


class _Conv(nn.Module):
  """A convolution to 3 classes: per pixel (1x1, equivariant) or 3x3 (not equivariant)."""

  kernel: int

  @nn.compact
  def __call__(self, images):
    return nn.Conv(3, (self.kernel, self.kernel))(images)


def _images(batch_size: int = 8) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(0).uniform(size=(batch_size, SIZE, SIZE, 3)),
                     jnp.float32)


def _loss(kernel: int, warps, images, valid, kind: str) -> float:
  """``D(f(T x), T f(x))`` for a random ``_Conv`` model, in eval mode."""
  model = _Conv(kernel)
  params = model.init(jax.random.key(1), images)
  apply = functools.partial(model.apply, params)
  target, counted = equivariance.transform_targets(warps, jax.nn.softmax(apply(images)), valid)
  view = equivariance.transform_images(warps, images)
  return float(equivariance.consistency(apply(view), target, counted, kind=kind))


def _warps(key, images, **transforms):
  draw = functools.partial(equivariance.random_warp, **transforms)
  return jax.vmap(draw)(jax.random.split(key, images.shape[0]), images)


@pytest.mark.parametrize("kind", equivariance.CONSISTENCY_LOSSES)
def test_consistency_equals_numpy_and_trains_only_the_student(kind):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  target = rng.dirichlet(np.ones(4), size=(2, 3, 3)).astype(np.float32)
  mask = rng.random((2, 3, 3)) < 0.7
  student = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  entropy = lambda p: -(p * np.log(p)).sum(-1)
  per_pixel = {
      "mse": ((student - target) ** 2).mean(-1),
      # KL(target || student): the direction matters, the target is the fixed one.
      "kl": (target * (np.log(target) - np.log(student))).sum(-1),
      "jsd": entropy((student + target) / 2) - (entropy(student) + entropy(target)) / 2,
  }[kind]
  value, target_gradient = jax.value_and_grad(
      lambda t: equivariance.consistency(jnp.asarray(logits), t, jnp.asarray(mask),
                                         kind=kind))(jnp.asarray(target))
  np.testing.assert_allclose(value, per_pixel[mask].mean(), rtol=1e-5)
  np.testing.assert_array_equal(target_gradient, 0.0)


@pytest.mark.parametrize("kind", equivariance.CONSISTENCY_LOSSES)
def test_identity_transform_gives_zero_consistency_of_a_model_with_itself(kind):
  images = _images()
  warps = _warps(jax.random.key(0), images, flip=False, rot90=False)
  valid = jnp.ones((8, SIZE, SIZE), bool)
  np.testing.assert_array_equal(equivariance.transform_images(warps, images), images)
  assert _loss(3, warps, images, valid, kind) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", equivariance.CONSISTENCY_LOSSES)
def test_per_pixel_model_is_exactly_equivariant_under_flips_and_quarter_turns(kind):
  images = _images()
  warps = _warps(jax.random.key(0), images, flip=True, rot90=True)
  linear = warps.matrix[:, :2, :2]
  # Odd quarter turns are not their own inverse: mapping the target the wrong way would
  # show up as a non-zero loss.
  assert (np.abs(linear - np.swapaxes(linear, 1, 2)).max(axis=(1, 2)) > 0).any()
  valid = jnp.ones((8, SIZE, SIZE), bool)
  assert _loss(1, warps, images, valid, kind) == pytest.approx(0.0, abs=1e-6)
  # A 3x3 convolution does not commute with the same transforms.
  assert _loss(3, warps, images, valid, kind) > 1e-4


def test_out_of_frame_and_padded_pixels_do_not_count():
  images = _images(2)
  # Content moves right by 3 and by 2.5 pixels: the left columns are fill.
  warps = jax.vmap(lambda shift, image: geometric.translate_x(image, pixels=shift)[2])(
      jnp.array([3.0, 2.5]), images)
  valid = np.ones((2, SIZE, SIZE), bool)
  valid[:, -2:] = False  # Crop padding at the bottom.
  probs = jax.nn.softmax(images)  # Any per-pixel distribution.
  target, counted = equivariance.transform_targets(warps, probs, jnp.asarray(valid))
  expected = np.zeros((2, SIZE, SIZE), bool)
  # Shift 2.5: view column 2 reads columns -0.5 -> taps -1 (fill) and 0, so it is out too.
  expected[:, :-2, 3:] = True
  np.testing.assert_array_equal(counted, expected)
  np.testing.assert_allclose(target[0, :, 3:], probs[0, :, :-3], rtol=1e-6)
  np.testing.assert_allclose(target[1, :, 3:], (probs[1, :, :-3] + probs[1, :, 1:-2]) / 2,
                             rtol=1e-6)


def test_affine_transforms_lose_pixels_near_the_border_only():
  images = _images()
  warps = _warps(jax.random.key(2), images, flip=False, rot90=False, degrees=30.0,
                 scale=(0.8, 1.2), translate=0.1)
  _, counted = equivariance.transform_targets(
      warps, jax.nn.softmax(images), jnp.ones((8, SIZE, SIZE), bool))
  fraction = float(counted.mean())
  assert 0.2 < fraction < 1.0
  # The centre pixel's source stays inside under +-30 degrees, zoom 0.8-1.2, shift <= 1.
  assert counted[:, SIZE // 2, SIZE // 2].all()


def test_unknown_consistency_kind_is_rejected():
  with pytest.raises(ValueError, match="kind='l1'"):
    equivariance.consistency(jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3)) / 3,
                             jnp.ones((1, 2, 2), bool), kind="l1")


@pytest.mark.parametrize("field, value, message", [
    ("loss", "l2", r"config\.equivariance\.loss='l2'"),
    ("degrees", -1.0, r"config\.equivariance\.degrees=-1\.0"),
    ("scale", (1.2, 0.8), r"config\.equivariance\.scale=\(1\.2, 0\.8\)"),
    ("translate", 1.5, r"config\.equivariance\.translate=1\.5"),
])
def test_check_config_names_the_field(field, value, message):
  config = config_lib.base_config("equivariance")
  config.equivariance[field] = value
  with pytest.raises(ValueError, match=message):
    equivariance.check_config(config)
