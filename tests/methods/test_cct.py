"""CCT: each feature perturbation by hand, the auxiliary heads, the consistency term.

The step's terms, learning, 1 vs 4 devices and a run of the loop are checked with the
other unlabeled-data methods in ``test_self_training.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import losses, models
from jaxsemiseg.methods import cct, cct_perturbations, supervised

NO_HEADS = {name: 0 for name in cct.PERTURBATIONS}


def _features_with_attention(attention: np.ndarray, channels: int = 3) -> jnp.ndarray:
  """Features ``[B, H, W, F]`` whose channel mean is ``attention`` ``[B, H, W]``."""
  spread = np.linspace(-0.5, 0.5, channels)
  return jnp.asarray(attention[..., None] + spread, jnp.float32)


def test_feature_drop_zeroes_exactly_the_positions_at_or_above_the_threshold():
  attention = np.array([[[1.0, 0.79], [0.81, 0.2]], [[2.0, 1.7], [1.5, 1.61]]])
  features = _features_with_attention(attention)
  dropped = cct_perturbations.feature_drop(jax.random.key(0), features,
                                           threshold_range=(0.8, 0.8))
  # Thresholds 0.8 * 1.0 and 0.8 * 2.0: a >= 0.8 and a >= 1.6 are zeroed.
  keep = np.array([[[False, True], [False, True]], [[False, False], [True, False]]])
  np.testing.assert_array_equal(dropped, np.where(keep[..., None], features, 0.0))


def test_feature_drop_threshold_is_drawn_between_seventy_and_ninety_percent_of_the_max():
  attention = np.linspace(0.6, 1.0, 41).reshape(1, 1, 41)
  features = _features_with_attention(attention)
  zeroed_counts = set()
  for seed in range(8):
    dropped = np.asarray(cct_perturbations.feature_drop(jax.random.key(seed), features))
    zeroed = (dropped == 0).all(-1)[0, 0]
    np.testing.assert_array_equal(dropped[0, 0, ~zeroed], np.asarray(features)[0, 0, ~zeroed])
    assert zeroed[attention[0, 0] >= 0.9].all() and not zeroed[attention[0, 0] < 0.7].any()
    # The zeroed positions are exactly those above one threshold.
    assert (np.diff(zeroed.astype(int)) >= 0).all()
    zeroed_counts.add(int(zeroed.sum()))
  assert len(zeroed_counts) > 1


def test_feature_noise_is_multiplicative_within_range_and_shared_over_the_batch():
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.uniform(0.5, 2.0, (3, 4, 4, 5)), jnp.float32).at[:, 0, 0].set(0.0)
  noisy = np.asarray(cct_perturbations.feature_noise(jax.random.key(1), features))
  ratio = noisy[:, 1:] / np.asarray(features)[:, 1:] - 1.0
  assert np.abs(ratio).max() <= 0.3 + 1e-6 and ratio.std() > 0.1
  np.testing.assert_allclose(ratio[1:], np.broadcast_to(ratio[:1], ratio[1:].shape), atol=1e-6)
  np.testing.assert_array_equal(noisy[:, 0, 0], 0.0)


def test_resize_nearest_takes_floor_of_scaled_index():
  mask = jnp.arange(6)[None, :, None] * jnp.ones((1, 6, 3), jnp.int32)
  np.testing.assert_array_equal(cct_perturbations.resize_nearest(mask, (4, 3))[0, :, 0],
                                [0, 1, 3, 4])


def test_context_and_object_masks_follow_the_prediction_at_feature_resolution():
  predicted = np.zeros((2, 8, 8), np.int32)
  predicted[0, 2:6, 0:4] = 1
  predicted[1, 5:, 4:] = 2
  features = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (2, 4, 4, 2)), jnp.float32)
  objects = predicted[:, ::2, ::2] > 0
  context = cct_perturbations.context_masking(features, jnp.asarray(predicted))
  background = cct_perturbations.object_masking(features, jnp.asarray(predicted))
  np.testing.assert_array_equal(context, np.where(objects[..., None], features, 0.0))
  np.testing.assert_array_equal(background, np.where(objects[..., None], 0.0, features))


def test_guided_cutout_zeroes_a_box_inside_each_predicted_objects_bounding_box():
  predicted = np.zeros((2, 16, 16), np.int32)
  predicted[0, 2:12, 3:14] = 1   # Bounding box extents 9 and 10: a 3 x 4 box.
  predicted[0, 12:16, 0:6] = 2   # Extents 3 and 5: a 1 x 2 box.
  features = jnp.ones((2, 16, 16, 3))
  positions = set()
  for seed in range(6):
    cut = np.asarray(cct_perturbations.guided_cutout(
        jax.random.key(seed), features, jnp.asarray(predicted), num_classes=3))
    zeroed = cut == 0
    assert (zeroed.all(-1) == zeroed.any(-1)).all()  # Whole positions, every channel.
    zeroed = zeroed[..., 0]
    assert not zeroed[1].any()  # No predicted object, nothing cut.
    for rows, cols, shape in ((slice(2, 12), slice(3, 14), (3, 4)),
                              (slice(12, 16), slice(0, 6), (1, 2))):
      inside = np.zeros((16, 16), bool)
      inside[rows, cols] = True
      box_rows, box_cols = np.nonzero(zeroed[0] & inside)
      assert len(box_rows) == shape[0] * shape[1]
      assert (box_rows.max() - box_rows.min() + 1, box_cols.max() - box_cols.min() + 1) == shape
      if shape == (3, 4):
        positions.add((box_rows.min(), box_cols.min()))
    assert zeroed[0].sum() == 3 * 4 + 1 * 2
  assert len(positions) > 1


def test_vat_perturbation_has_norm_epsilon_lives_where_the_head_looks_and_is_adversarial():
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)

  def kl_after(head, perturbation):
    clean = jax.nn.softmax(head(features))
    return losses.kl_divergence(clean, head(features + perturbation))[0]

  # A head that reads channel 0 only: no perturbation of the other channels can matter.
  channel_zero = lambda z: z @ weights.at[1:].set(0.0)
  r_adv = cct_perturbations.vat(jax.random.key(0), features, channel_zero, epsilon=2.0) - features
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(r_adv**2, axis=(1, 2, 3))), [2.0, 2.0], rtol=1e-5)
  np.testing.assert_allclose(r_adv[..., 1:], 0.0, atol=1e-7)
  assert np.abs(r_adv[..., 0]).min() > 0

  full = lambda z: z @ weights
  r_adv = cct_perturbations.vat(jax.random.key(0), features, full, epsilon=2.0) - features
  adversarial = kl_after(full, r_adv)
  for seed in range(5):
    random = jax.random.normal(jax.random.key(seed + 10), features.shape)
    random = 2.0 * random / jnp.sqrt(jnp.sum(random**2, axis=(1, 2, 3), keepdims=True))
    assert adversarial > 2 * kl_after(full, random)
  # The perturbation is a constant: the gradient reaches the features unchanged.
  direction = jnp.asarray(rng.normal(size=features.shape), jnp.float32)
  gradient = jax.grad(lambda z: jnp.sum(direction * cct_perturbations.vat(
      jax.random.key(0), z, full, epsilon=2.0)))(features)
  np.testing.assert_allclose(gradient, direction, rtol=1e-6)


def _tiny_unet_state(num_heads=None):
  config = config_lib.base_config("cct")
  if num_heads is not None:
    config.cct.num_heads.update(num_heads)
  model = models.UNet(num_classes=3, width=4, depth=1)
  tx = optax.sgd(0.1)
  batch = {"image": jnp.zeros((1, 16, 16, 3))}
  return config, model, tx, cct.init_state(jax.random.key(0), model, tx, batch, config)


def test_init_state_keeps_the_model_and_adds_thirty_different_heads():
  config, model, tx, state = _tiny_unet_state()
  reference = supervised.init_state(jax.random.key(0), model, tx,
                                    {"image": jnp.zeros((1, 16, 16, 3))}, config)
  jax.tree.map(np.testing.assert_array_equal, state.params, reference.params)
  heads = state.extras["aux_heads"]
  kernels = heads["classifier"]["kernel"]
  assert kernels.shape == (30,) + state.params["classifier"]["kernel"].shape
  assert all(not np.allclose(kernels[0], kernels[k]) for k in range(1, 30))
  assert not np.allclose(kernels[0], state.params["classifier"]["kernel"])
  assert (jax.tree.structure(state.extras["aux_opt_state"])
          == jax.tree.structure(tx.init(heads)))


class _Encoder(nn.Module):
  """Features = the image; the classifier head is a 1x1 conv (the contract's ``classify``)."""

  def setup(self):
    self.classifier = nn.Conv(3, (1, 1))

  def __call__(self, images, *, train):
    return {"logits": self.classify(images, train=train), "features": images}

  def classify(self, features, *, train, output_size=None):
    del train, output_size
    return self.classifier(features)


def test_consistency_is_zero_for_unmasked_copies_of_the_main_head_and_exact_when_masked():
  model = _Encoder()
  features = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 4, 3)), jnp.float32)
  # Logits = features + bias, features in [0, 1): class 0 wins everywhere (all background).
  params = {"classifier": {"kernel": jnp.eye(3)[None, None],
                           "bias": jnp.array([2.0, 0.0, 0.0])}}
  main_logits = model.apply({"params": params}, features, train=False)["logits"]
  head = cct.make_head_fn(model, (4, 4))
  one_copy = jax.tree.map(lambda x: x[None], params)
  valid = jnp.ones((2, 4, 4), bool).at[1, 3].set(False)
  settings = config_lib.base_config("cct").cct

  settings.num_heads.update({**NO_HEADS, "object_masking": 1})
  unmasked = cct.consistency_loss(jax.random.key(0), head, one_copy, features, main_logits,
                                  valid, settings)
  np.testing.assert_allclose(unmasked, 0.0, atol=1e-7)

  settings.num_heads.update({**NO_HEADS, "context_masking": 1})
  masked = cct.consistency_loss(jax.random.key(0), head, one_copy, features, main_logits,
                                valid, settings)
  # Every feature is masked, so the head outputs softmax(bias) at every pixel.
  aux = np.broadcast_to(jax.nn.softmax(params["classifier"]["bias"]), (2, 4, 4, 3))
  expected = ((aux - jax.nn.softmax(main_logits))**2).sum(-1)[np.asarray(valid)].mean() / 3
  np.testing.assert_allclose(masked, expected, rtol=1e-5)
  assert masked > 1e-6


def test_consistency_trains_features_and_heads_but_not_the_main_prediction():
  config, model, _, state = _tiny_unet_state()
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)), jnp.float32)
  outputs = model.apply({"params": state.params}, images, train=False)
  head = cct.make_head_fn(model, (16, 16))

  def loss(features, main_logits, heads):
    return cct.consistency_loss(jax.random.key(0), head, heads, features, main_logits,
                                jnp.ones((2, 16, 16), bool), config.cct)

  value, (d_features, d_main, d_heads) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
      outputs["features"], outputs["logits"], state.extras["aux_heads"])
  assert value > 1e-4
  np.testing.assert_array_equal(d_main, 0.0)
  assert np.abs(d_features).max() > 0
  # Every head gets its own gradient (the bias: a masking head may see all-zero features).
  assert (np.abs(d_heads["classifier"]["bias"]).max(axis=1) > 0).all()


def test_consistency_and_its_gradients_are_the_same_with_heads_vmapped_or_looped():
  config, model, _, state = _tiny_unet_state({**NO_HEADS, "vat": 2, "feature_noise": 1})
  heads = state.extras["aux_heads"]
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 3)), jnp.float32)
  outputs = model.apply({"params": state.params}, images, train=False)
  head = cct.make_head_fn(model, (16, 16))
  valid = jnp.ones((2, 16, 16), bool).at[0, :3].set(False)
  results = []
  for member_map in ("vmap", "loop"):
    loss = lambda features, heads, member_map=member_map: cct.consistency_loss(
        jax.random.key(0), head, heads, features, outputs["logits"], valid, config.cct,
        member_map=member_map)
    results.append(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(outputs["features"], heads))
  (vmapped, vmapped_grads), (looped, looped_grads) = results
  assert float(looped) > 1e-4
  np.testing.assert_allclose(vmapped, looped, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               vmapped_grads, looped_grads)


@pytest.mark.parametrize("field, value, message", [
    ("num_heads.vat", -1, r"config\.cct\.num_heads\.vat=-1"),
    ("dropout_rate", 1.0, r"config\.cct\.dropout_rate=1\.0"),
    ("feature_drop_range", (0.9, 0.7), r"config\.cct\.feature_drop_range=\(0\.9, 0\.7\)"),
    ("vat_iterations", 0, r"config\.cct\.vat_iterations=0"),
])
def test_check_config_names_the_field(field, value, message):
  config = config_lib.base_config("cct")
  config.update_from_flattened_dict({f"cct.{field}": value})
  with pytest.raises(ValueError, match=message):
    cct.check_config(config)


def test_check_config_needs_at_least_one_head():
  config = config_lib.base_config("cct")
  config.cct.num_heads.update(NO_HEADS)
  with pytest.raises(ValueError, match="at least one auxiliary head"):
    cct.check_config(config)
