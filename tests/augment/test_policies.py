"""Tests for jaxsemiseg.augment.policies: policy data, op mapping, AutoAugment, RandAugment."""

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.augment import geometric, photometric, policies

SIZE = 16
IMAGE = jax.random.uniform(jax.random.key(1), (SIZE, SIZE, 3))
LABELS = (0, 3, 7)
MASK = jax.random.choice(jax.random.key(2), jnp.array(LABELS), (SIZE, SIZE)).astype(jnp.int32)
FILL = policies.DEFAULT_FILL
# A quarter of the 16-px side: TranslateX level 5 moves 2 px, Cutout level 5 is 4 px wide.
CONST = 0.25
# 25 sub-policies, the ImageNet policy's shape, so one compile serves every AutoAugment
# test; every op appears, at strong levels.
ALL_OPS_POLICY = ([[(name, 1.0, 10), (other, 1.0, 7)]
                   for name, other in zip(policies.OP_NAMES, reversed(policies.OP_NAMES))]
                  + [[("Rotate", 1.0, 10), ("Cutout", 1.0, 10)]] * 8)

TRACES = []


def _traced_autoaugment(key, image, mask, policy):
  TRACES.append(1)
  return policies.autoaugment(key, image, mask, policy=policy, translate_const=CONST,
                              cutout_const=CONST)


# One compile for every AutoAugment test: the [25, 2] policy arrays are traced arguments.
BATCHED_AUTOAUGMENT = jax.jit(jax.vmap(_traced_autoaugment, in_axes=(0, None, None, None)))
APPLY_OP = jax.jit(functools.partial(policies.apply_op, translate_const=CONST,
                                     cutout_const=CONST))


BATCH = 250


def _keys(count, seed=0):
  return jax.random.split(jax.random.key(seed), count)


def _autoaugment(policy, image=IMAGE, seed=0):
  """BATCHED_AUTOAUGMENT on BATCH keys; the fixed batch keeps it at one compile."""
  arrays = policy if isinstance(policy, policies.PolicyArrays) else (
      policies.policy_to_arrays(policy))
  return BATCHED_AUTOAUGMENT(_keys(BATCH, seed), image, MASK, arrays)


def _apply(name, level, key):
  return APPLY_OP(key, IMAGE, MASK, op=jnp.int32(policies.OP_NAMES.index(name)),
                  level=jnp.float32(level))


def test_imagenet_policy_is_the_tpu_policy_v0_and_round_trips_through_json():
  policy = policies.IMAGENET_POLICY
  assert len(policy) == 25 and all(len(sub) == 2 for sub in policy)
  assert all(name in policies.OP_NAMES for sub in policy for name, _, _ in sub)
  assert policy[0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
  assert policy[15] == (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9))
  assert policy[24] == (("Color", 0.8, 6), ("Rotate", 0.4, 5))
  loaded = json.loads(json.dumps(policy))
  policies.validate_policy(loaded)
  for original, restored in zip(policies.policy_to_arrays(policy),
                                policies.policy_to_arrays(loaded)):
    np.testing.assert_array_equal(original, restored)


def test_op_sets():
  assert len(policies.RANDAUGMENT_OPS) == 16 and "Identity" not in policies.RANDAUGMENT_OPS
  assert "SolarizeAdd" in policies.RANDAUGMENT_OPS and "Cutout" in policies.RANDAUGMENT_OPS
  assert len(policies.FIXMATCH_RANDAUGMENT_OPS) == 16
  assert "Cutout" not in policies.FIXMATCH_RANDAUGMENT_OPS
  assert policies.FIXMATCH_RANDAUGMENT_OPS[-2:] == ("SolarizeAdd", "Identity")


def test_policy_to_arrays_values():
  arrays = policies.policy_to_arrays([[("Rotate", 0.6, 8), ("Identity", 0.0, 0)],
                                      [("Cutout", 1.0, 2.5), ("Invert", 0.3, 10)]])
  np.testing.assert_array_equal(arrays.op_index, [[3, 16], [14, 2]])
  np.testing.assert_allclose(arrays.probability, [[0.6, 0.0], [1.0, 0.3]])
  np.testing.assert_allclose(arrays.level, [[8, 0], [2.5, 10]])
  assert arrays.op_index.dtype == np.int32 and arrays.level.dtype == np.float32


@pytest.mark.parametrize("policy, message", [
    ([], "non-empty list of sub-policies"),
    ("Rotate", "non-empty list of sub-policies"),
    ([[]], r"policy\[0\]=\[\]"),
    ([[("Rotate", 0.5, 3)], [("Rotate", 0.5, 3), ("Invert", 0.5, 3)]], r"policy\[1\] has 2"),
    ([[("Rotate", 0.5, 3), ("Blur", 0.5, 3)]], r"policy\[0\]\[1\] has op 'Blur'"),
    ([[("Rotate", 1.5, 3)]], r"policy\[0\]\[0\] has probability 1.5"),
    ([[("Rotate", 0.5, 11)]], r"policy\[0\]\[0\] has level 11"),
    ([[("Rotate", 0.5, None)]], "has level None"),
    ([[("Rotate", 0.5)]], r"policy\[0\]\[0\]=\('Rotate', 0.5\)"),
])
def test_validate_policy_names_the_bad_entry(policy, message):
  with pytest.raises(ValueError, match=message):
    policies.validate_policy(policy)


def test_bad_arguments_raise_on_the_host():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"image has shape \(16, 16\)"):
    policies.autoaugment(key, IMAGE[..., 0])
  with pytest.raises(ValueError, match="mask has shape"):
    policies.randaugment(key, IMAGE, MASK.astype(jnp.float32))
  with pytest.raises(ValueError, match="policy arrays have shapes"):
    arrays = policies.policy_to_arrays(policies.IMAGENET_POLICY)
    policies.autoaugment(key, IMAGE, policy=arrays._replace(level=arrays.level[:3]))
  with pytest.raises(ValueError, match="magnitude=11"):
    policies.randaugment(key, IMAGE, magnitude=11)
  with pytest.raises(ValueError, match="num_ops=-1"):
    policies.randaugment_fixmatch(key, IMAGE, num_ops=-1)
  with pytest.raises(ValueError, match="ops='Rotate'"):
    policies.randaugment(key, IMAGE, ops="Rotate")
  with pytest.raises(ValueError, match="ops=.*'Blur'"):
    policies.randaugment(key, IMAGE, ops=("Rotate", "Blur"))
  with pytest.raises(ValueError, match="op='Blur'"):
    policies.apply_op(key, IMAGE, op="Blur", level=3)
  with pytest.raises(ValueError, match="op=17"):
    policies.apply_op(key, IMAGE, op=17, level=3)
  with pytest.raises(ValueError, match="fill=2.0"):
    policies.autoaugment(key, IMAGE, fill=2.0)


def _candidates(op, argument, value):
  return [op(IMAGE, MASK, **{argument: sign * value}, fill=FILL)[:2] for sign in (1.0, -1.0)]


def _direct(image):
  return [(image, MASK)]


# Hand-computed arguments with translate_const = cutout_const = 0.25 on 16 px.
DIRECT_CALLS = {
    ("Rotate", 8): lambda: _candidates(geometric.rotate, "degrees", 24.0),
    ("ShearX", 3): lambda: _candidates(geometric.shear_x, "level", 0.09),
    ("ShearY", 10): lambda: _candidates(geometric.shear_y, "level", 0.3),
    ("TranslateX", 5): lambda: _candidates(geometric.translate_x, "pixels", 2.0),
    ("TranslateY", 10): lambda: _candidates(geometric.translate_y, "pixels", 4.0),
    ("Posterize", 6): lambda: _direct(photometric.posterize(IMAGE, bits=6)),
    ("Posterize", 2): lambda: _direct(photometric.posterize(IMAGE, bits=4)),
    ("Solarize", 3): lambda: _direct(photometric.solarize(IMAGE, threshold=76 / 255)),
    ("Solarize", 10): lambda: _direct(IMAGE),
    ("SolarizeAdd", 7): lambda: _direct(photometric.solarize_add(IMAGE, addition=77 / 255)),
    ("Color", 9): lambda: _direct(photometric.adjust_saturation(IMAGE, factor=1.72)),
    ("Contrast", 1): lambda: _direct(photometric.adjust_contrast(IMAGE, factor=0.28)),
    ("Brightness", 0): lambda: _direct(photometric.adjust_brightness(IMAGE, factor=0.1)),
    ("Sharpness", 10): lambda: _direct(photometric.adjust_sharpness(IMAGE, factor=1.9)),
    ("AutoContrast", 3): lambda: _direct(photometric.autocontrast(IMAGE)),
    ("Equalize", 5): lambda: _direct(photometric.equalize(IMAGE)),
    ("Invert", 0): lambda: _direct(1.0 - IMAGE),
    ("Identity", 7): lambda: _direct(IMAGE),
}


def test_each_switch_branch_matches_the_op_at_the_mapped_argument():
  for (name, level), expected in DIRECT_CALLS.items():
    candidates = expected()
    signs_seen = set()
    for seed in range(8):
      image, mask = _apply(name, level, jax.random.key(seed))
      matches = [i for i, (want_image, want_mask) in enumerate(candidates)
                 if np.allclose(image, want_image, atol=1e-5)
                 and np.array_equal(mask, want_mask)]
      assert matches, (name, level)
      signs_seen.add(matches[0])
    if len(candidates) == 2:
      assert not np.allclose(candidates[0][0], candidates[1][0]), name
      assert signs_seen == {0, 1}, f"{name} never drew one of the signs"


def test_cutout_branch_is_a_square_of_the_mapped_side_filled_and_ignored():
  full_boxes = 0
  for seed in range(12):
    # Side 2 * int(0.25 * 16 * 5 / 10) = 4.
    image, mask = _apply("Cutout", 5, jax.random.key(seed))
    box = np.asarray(mask) == 255
    rows, cols = np.nonzero(box.any(axis=1))[0], np.nonzero(box.any(axis=0))[0]
    assert len(rows) <= 4 and len(cols) <= 4
    assert box.sum() == len(rows) * len(cols)  # a full rectangle
    np.testing.assert_allclose(np.asarray(image)[box], FILL, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(image)[~box], np.asarray(IMAGE)[~box])
    np.testing.assert_array_equal(np.asarray(mask)[~box], np.asarray(MASK)[~box])
    full_boxes += box.sum() == 16
  assert full_boxes > 0


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY",
                                  "Cutout"])
def test_geometric_ops_at_level_zero_are_the_identity(name):
  for seed in range(3):
    image, mask = _apply(name, 0, jax.random.key(seed))
    np.testing.assert_array_equal(image, IMAGE)
    np.testing.assert_array_equal(mask, MASK)


def test_probability_zero_policy_is_the_identity():
  arrays = policies.policy_to_arrays(ALL_OPS_POLICY)
  arrays = arrays._replace(probability=np.zeros_like(arrays.probability))
  images, masks = _autoaugment(arrays)
  np.testing.assert_array_equal(images, jnp.broadcast_to(IMAGE, images.shape))
  np.testing.assert_array_equal(masks, jnp.broadcast_to(MASK, masks.shape))


@pytest.mark.parametrize("policy", [policies.IMAGENET_POLICY, ALL_OPS_POLICY])
def test_policy_masks_hold_only_input_labels_and_ignore(policy):
  images, masks = _autoaugment(policy)
  assert set(np.unique(masks).tolist()) <= {*LABELS, 255}
  assert (masks == 255).any()  # some geometric op or Cutout ran
  assert images.min() >= 0.0 and images.max() <= 1.0
  changed = np.abs(images - IMAGE).max(axis=(1, 2, 3)) > 0
  assert changed.mean() > 0.5


def test_autoaugment_draws_sub_policies_uniformly():
  # Sub-policy (a, b) brightens a gray image by f(a) f(b), f(l) = 0.1 + 0.18 l: a signature.
  pairs = list(itertools.product(range(5), range(6, 11)))
  policy = [[("Brightness", 1.0, a), ("Brightness", 1.0, b)] for a, b in pairs]
  gray = jnp.full((SIZE, SIZE, 3), 0.5, jnp.float32)  # not weakly typed: no recompile
  signatures = np.array([0.5 * (0.1 + 0.18 * a) * (0.1 + 0.18 * b) for a, b in pairs])
  assert np.diff(np.sort(signatures)).min() > 1e-3
  values = np.concatenate([np.asarray(_autoaugment(policy, gray, seed)[0][:, 0, 0, 0])
                           for seed in range(8)])
  draws = len(values)
  distance = np.abs(values[:, None] - signatures[None, :])
  assert distance.min(axis=1).max() < 1e-5
  counts = np.bincount(distance.argmin(axis=1), minlength=len(pairs))
  expected = draws / len(pairs)
  chi_square = ((counts - expected) ** 2 / expected).sum()
  assert chi_square < 51.2  # 99.9% quantile of chi-square with 24 degrees of freedom


def test_autoaugment_is_deterministic_and_compiles_once_for_any_policy():
  first = _autoaugment(policies.IMAGENET_POLICY, seed=5)
  traces = len(TRACES)
  again = _autoaugment(policies.IMAGENET_POLICY, seed=5)
  _autoaugment(ALL_OPS_POLICY, seed=5)
  assert len(TRACES) == traces
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  other = _autoaugment(policies.IMAGENET_POLICY, seed=6)
  assert not np.array_equal(first[0], other[0])
  # Rows follow their own keys (many coincide: a fixed-level photometric sub-policy is
  # deterministic, so only the ~50 outcomes of the drawn coins and signs differ).
  assert len({row.tobytes() for row in np.asarray(first[0])}) > 20


def _brightness_randaugment(num_ops, **kwargs):
  fn = lambda key, image: policies.randaugment(key, image, num_ops=num_ops,
                                               ops=("Brightness",), **kwargs)[0]
  return jax.jit(jax.vmap(fn, in_axes=(0, None)))


@pytest.mark.parametrize("num_ops", [0, 1, 3])
def test_randaugment_applies_exactly_num_ops(num_ops):
  gray = jnp.full((SIZE, SIZE, 3), 0.05)
  images = _brightness_randaugment(num_ops, magnitude=10)(_keys(4), gray)
  np.testing.assert_allclose(images, 0.05 * 1.9**num_ops, rtol=1e-5)


def test_randaugment_magnitude_may_be_traced():
  gray = jnp.full((SIZE, SIZE, 3), 0.5)
  apply = jax.jit(jax.vmap(lambda key, image, m: policies.randaugment(
      key, image, num_ops=2, ops=("Brightness",), magnitude=m)[0], in_axes=(0, None, None)))
  np.testing.assert_allclose(apply(_keys(2), gray, 0.0), 0.5 * 0.1**2, rtol=1e-5)
  np.testing.assert_allclose(apply(_keys(2), gray, 5.0), 0.5, rtol=1e-5)


def test_randaugment_draws_ops_uniformly_from_the_op_set():
  gray = jnp.full((SIZE, SIZE, 3), 0.2)
  apply = jax.jit(jax.vmap(lambda key, image: policies.randaugment(
      key, image, num_ops=1, ops=("Invert", "Brightness"), magnitude=10)[0],
                           in_axes=(0, None)))
  values = np.asarray(apply(_keys(400), gray)[:, 0, 0, 0])
  inverted = np.isclose(values, 0.8)
  assert np.all(inverted | np.isclose(values, 0.38))
  assert 160 < inverted.sum() < 240  # Binomial(400, 1/2): mean 200, sd 10


def test_randaugment_fixmatch_draws_a_level_per_op():
  gray = jnp.full((SIZE, SIZE, 3), 0.1)
  factors = 0.1 + 0.18 * np.arange(11)

  def run(num_ops, count):
    fn = lambda key, image: policies.randaugment_fixmatch(
        key, image, num_ops=num_ops, ops=("Brightness",))[0]
    return np.asarray(jax.jit(jax.vmap(fn, in_axes=(0, None)))(_keys(count), gray))[:, 0, 0, 0]

  single = run(1, 1100) / 0.1
  distance = np.abs(single[:, None] - factors[None, :])
  assert distance.min(axis=1).max() < 1e-4
  counts = np.bincount(distance.argmin(axis=1), minlength=11)
  chi_square = ((counts - 100) ** 2 / 100).sum()
  assert chi_square < 29.6  # 99.9% quantile of chi-square with 10 degrees of freedom
  pairs = run(2, 64) / 0.1
  products = np.outer(factors, factors).ravel()
  assert np.abs(pairs[:, None] - products[None, :]).min(axis=1).max() < 1e-4
  # Independent levels: most pairs are not one factor squared.
  assert (np.abs(pairs[:, None] - factors[None, :] ** 2).min(axis=1) > 1e-4).mean() > 0.5


def test_default_randaugment_moves_masks_only_to_input_labels_and_ignore():
  apply = jax.jit(jax.vmap(lambda key: policies.randaugment(
      key, IMAGE, MASK, magnitude=10, translate_const=CONST, cutout_const=CONST)))
  images, masks = apply(_keys(32))
  again, _ = apply(_keys(32))
  np.testing.assert_array_equal(images, again)
  assert set(np.unique(masks).tolist()) <= {*LABELS, 255}
  assert (masks == 255).any()
  assert (np.abs(images - IMAGE).max(axis=(1, 2, 3)) > 0).mean() > 0.5


def test_fill_and_cutout_ignore_reach_the_ops():
  key = jax.random.key(0)
  shift = functools.partial(policies.randaugment, key, IMAGE, MASK, num_ops=1, magnitude=10,
                            ops=("TranslateX",), translate_const=CONST, fill=0.3)
  image, mask = shift()
  moved_in = np.asarray(mask) == 255
  np.testing.assert_array_equal(moved_in.sum(axis=1), 4)  # 0.25 * 16 px at level 10
  np.testing.assert_allclose(np.asarray(image)[moved_in], 0.3)
  erase = functools.partial(policies.randaugment, key, IMAGE, MASK, num_ops=1, magnitude=10,
                            ops=("Cutout",), cutout_const=CONST)
  image, mask = erase(cutout_ignore=False)
  np.testing.assert_array_equal(mask, MASK)
  assert np.isclose(np.asarray(image), FILL).all(axis=-1).sum() >= 16  # side 8, clipped
  _, ignored = erase(cutout_ignore=True)
  assert (np.asarray(ignored) == 255).sum() >= 16


def test_mask_none_stays_none():
  image, mask = policies.randaugment(jax.random.key(0), IMAGE, ops=("TranslateX", "Cutout"))
  assert mask is None and image.shape == IMAGE.shape
