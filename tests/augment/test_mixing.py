"""Tests for jaxsemiseg.augment.mixing: box samplers, ClassMix, Cutout, Erasing, Mixup."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.augment import mixing

NUM_SAMPLES = 2000


def _sample_masks(sampler, seed=0, num=NUM_SAMPLES):
  """``num`` draws of ``sampler(key)`` in one jit(vmap) call, as numpy."""
  keys = jax.random.split(jax.random.key(seed), num)
  return np.asarray(jax.jit(jax.vmap(sampler))(keys))


def _box_sides(masks):
  """Heights and widths of masks that each hold one axis-aligned box (or nothing)."""
  rows, cols = masks.any(axis=2), masks.any(axis=1)
  heights, widths = rows.sum(axis=1), cols.sum(axis=1)
  np.testing.assert_array_equal(masks.sum(axis=(1, 2)), heights * widths)
  return heights, widths


def test_mix_takes_source_inside_mask_and_target_outside_for_every_leaf():
  masks = jnp.array([[[True, False], [False, True]], [[False, False], [True, True]]])
  target = {"image": jnp.zeros((2, 2, 2, 3)), "label": jnp.full((2, 2, 2), 1, jnp.int32),
            "confidence": jnp.full((2, 2, 2), 0.25)}
  source = {"image": jnp.ones((2, 2, 2, 3)), "label": jnp.full((2, 2, 2), 7, jnp.int32),
            "confidence": jnp.full((2, 2, 2), 0.75)}
  mixed = mixing.mix(masks, target, source)
  np.testing.assert_array_equal(mixed["image"], np.repeat(masks[..., None], 3, -1) * 1.0)
  np.testing.assert_array_equal(mixed["label"], np.where(masks, 7, 1))
  np.testing.assert_array_equal(mixed["confidence"], np.where(masks, 0.75, 0.25))
  assert mixed["label"].dtype == jnp.int32
  with pytest.raises(ValueError, match="'label'"):
    mixing.mix(masks, target, {**source, "label": jnp.zeros((2, 3, 2), jnp.int32)})


def test_cutmix_batch_box_pixels_come_from_source_and_the_rest_from_target():
  batch, size = 4, 16
  images = jnp.arange(batch, dtype=jnp.float32)[:, None, None, None] * jnp.ones(
      (batch, size, size, 3)) / 10
  labels = jnp.arange(batch, dtype=jnp.int32)[:, None, None] * jnp.ones(
      (batch, size, size), jnp.int32)
  sampler = functools.partial(mixing.unimatch_cutmix_box, size=size, p=1.0)
  roll = jnp.roll(jnp.arange(batch), -1)
  run = jax.jit(lambda key: mixing.cutmix_batch(
      key, images, {"label": labels}, sampler=sampler, permutation=roll))
  mixed_images, mixed_targets, masks = run(jax.random.key(3))
  expected_label = np.where(masks, (np.arange(batch)[:, None, None] + 1) % batch,
                            np.arange(batch)[:, None, None])
  np.testing.assert_array_equal(mixed_targets["label"], expected_label)
  np.testing.assert_allclose(mixed_images[..., 0], expected_label / 10)
  assert masks.any(axis=(1, 2)).all() and not masks.all(axis=(1, 2)).any()
  again = run(jax.random.key(3))
  np.testing.assert_array_equal(again[2], masks)


def test_cutmix_batch_with_second_batch_and_with_random_permutation():
  images = jnp.zeros((5, 8, 8, 1))
  numbered = jnp.arange(5.0)[:, None, None, None] * jnp.ones((5, 8, 8, 1))
  sampler = functools.partial(mixing.u2pl_box_mask, size=8)

  @jax.jit
  def run(key):
    with_second = mixing.cutmix_batch(key, images, sampler=sampler,
                                      second=(numbered + 1, None))
    shuffled = mixing.cutmix_batch(key, numbered, sampler=sampler)
    return with_second[0], with_second[2], shuffled[0], shuffled[2]

  mixed, masks, shuffled, shuffled_masks = (np.asarray(a) for a in run(jax.random.key(1)))
  np.testing.assert_array_equal(mixed[..., 0], masks * (np.arange(5)[:, None, None] + 1.0))
  pasted = [set(np.unique(shuffled[i][shuffled_masks[i]])) for i in range(5)]
  assert sorted(v for s in pasted for v in s) == [0.0, 1.0, 2.0, 3.0, 4.0]
  with pytest.raises(ValueError, match="permutation"):
    mixing.cutmix_batch(jax.random.key(0), images, sampler=sampler,
                        second=(images, None), permutation=jnp.arange(5))


def _reference_box_sides(size, *, redraw_area, num, seed=0):
  """Heights and widths from the references' loops, ported to NumPy: UniMatch's
  ``obtain_cutmix_box`` (area drawn once) and ST++'s ``cutout`` (area redrawn)."""
  rng = np.random.default_rng(seed)
  sides = []
  for _ in range(num):
    area = rng.uniform(0.02, 0.4) * size * size
    while True:
      if redraw_area:
        area = rng.uniform(0.02, 0.4) * size * size
      ratio = rng.uniform(0.3, 1 / 0.3)
      width, height = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
      left, top = rng.integers(0, size), rng.integers(0, size)
      if left + width <= size and top + height <= size:
        break
    sides.append((height, width))
  return np.array(sides).T


def _box_statistics(heights, widths, size):
  """Mean area fraction, and mean |log aspect| of the boxes over 30% of the image."""
  fraction = heights * widths / size**2
  large = fraction > 0.3
  return fraction.mean(), np.abs(np.log(heights[large] / widths[large])).mean()


def test_unimatch_box_probability_and_range():
  size = 64
  masks = _sample_masks(functools.partial(mixing.unimatch_cutmix_box, size=size, p=0.5))
  drawn = masks.any(axis=(1, 2))
  assert abs(drawn.mean() - 0.5) < 0.05
  heights, widths = _box_sides(masks[drawn])
  fraction = heights * widths / size**2
  assert fraction.max() <= 0.4 and fraction.min() >= 0.01
  assert fraction.max() > 0.35 and fraction.min() < 0.04
  aspect = heights / widths
  assert aspect.min() > 0.2 and aspect.max() < 4.5


@pytest.mark.parametrize("redraw_area", [False, True])
def test_box_distribution_matches_the_reference_loop(redraw_area):
  # Area drawn once (UniMatch): mean area ~0.20, large boxes near-square (~0.44);
  # redrawn (ST++): ~0.14. Placing any box among the fitting positions, its sides cut
  # to the image, gives ~0.20 and ~0.67 either way.
  size = 64
  sampler = functools.partial(mixing.unimatch_cutmix_box, size=size, p=1.0,
                              redraw_area=redraw_area)
  heights, widths = _box_sides(_sample_masks(sampler, num=4000))
  area, aspect = _box_statistics(heights, widths, size)
  expected_area, expected_aspect = _box_statistics(
      *_reference_box_sides(size, redraw_area=redraw_area, num=10000), size)
  assert abs(area - expected_area) < 0.01, (area, expected_area)
  assert abs(aspect - expected_aspect) < 0.05, (aspect, expected_aspect)


def test_french_single_box_area_matches_range_and_boxes_toggle():
  size = 64
  masks = _sample_masks(functools.partial(
      mixing.french_box_mask, size=size, num_boxes=1, area_range=(0.25, 0.5)))
  heights, widths = _box_sides(masks)
  fraction = heights * widths / size**2
  assert fraction.min() >= 0.22 and fraction.max() <= 0.53
  assert abs(fraction.mean() - 0.375) < 0.01
  # Two 8x8 boxes XOR-ed cover 128 - 2 * overlap pixels: always even, below 128 when
  # they overlap; a union would give 128 - overlap.
  pair_sampler = functools.partial(mixing.french_box_mask, size=16, num_boxes=2,
                                   area_range=(0.5, 0.5), random_aspect=False)
  pairs = _sample_masks(lambda key: jnp.stack(
      [pair_sampler(key), pair_sampler(key, invert=False)]), num=300)
  np.testing.assert_array_equal(pairs[:, 1], ~pairs[:, 0])
  counts = pairs[:, 0].sum(axis=(1, 2))
  assert (counts % 2 == 0).all() and counts.max() == 128 and counts.min() < 100


def test_u2pl_box_covers_half_the_image_with_the_reference_width_range():
  height, width = 32, 48
  masks = _sample_masks(functools.partial(mixing.u2pl_box_mask, size=(height, width)))
  heights, widths = _box_sides(masks)
  assert widths.min() == 25 and widths.max() == 47
  np.testing.assert_array_equal(heights, np.round(height * width / 2 / widths))
  assert np.abs(heights * widths / (height * width) - 0.5).max() <= 0.5 / height


def test_yun_cutmix_box_lambda_is_the_clipped_box_and_area_matches_beta():
  size = 32
  keys = jax.random.split(jax.random.key(0), NUM_SAMPLES)
  masks, lam = jax.jit(jax.vmap(functools.partial(mixing.cutmix_box, size=size)))(keys)
  masks, lam = np.asarray(masks), np.asarray(lam)
  heights, widths = _box_sides(masks)
  np.testing.assert_allclose(lam, 1 - heights * widths / size**2, atol=1e-6)
  # Expected clipped area: lam ~ U(0, 1) on a grid, half side h = int(S sqrt(1 - lam))
  # // 2, all centres c, side length |[c - h, c + h) & [0, S)|.
  lam_grid = (np.arange(2000) + 0.5) / 2000
  half = np.floor(size * np.sqrt(1 - lam_grid)).astype(int) // 2
  centres = np.arange(size)
  side = (np.minimum(centres[None] + half[:, None], size) -
          np.maximum(centres[None] - half[:, None], 0)).mean(axis=1)
  expected_area = (side**2).mean() / size**2  # axes independent given lam: E[side]^2.
  assert abs((1 - lam).mean() - expected_area) < 0.015
  assert lam.min() >= 0 and lam.max() == 1.0


def test_classmix_selects_half_the_present_classes_whole_and_never_ignore():
  labels = jnp.array([[0, 0, 1, 1], [2, 2, 3, 3], [255, 255, 3, 0]], jnp.int32)
  masks = _sample_masks(lambda key: mixing.classmix_mask(key, labels), num=200)
  labels = np.asarray(labels)
  chosen_counts = np.zeros(4)
  for mask in masks:
    chosen = set(np.unique(labels[mask]))
    assert len(chosen) == 2 and 255 not in chosen
    np.testing.assert_array_equal(mask, np.isin(labels, list(chosen)))
    chosen_counts[list(chosen)] += 1
  assert chosen_counts.min() > 60
  three = mixing.classmix_mask(jax.random.key(1), jnp.array([[4, 5, 6, 255]]))
  assert int(three.sum()) == 1 and not bool(three[0, 3])
  assert not mixing.classmix_mask(jax.random.key(1), jnp.full((2, 2), 9)).any()


def test_cutout_fills_a_clipped_square_and_ignores_its_labels():
  image = jnp.full((16, 16, 3), 0.2)
  mask = jnp.arange(256, dtype=jnp.int32).reshape(16, 16) % 7
  fill = jnp.array([0.1, 0.5, 0.9])
  run = jax.jit(jax.vmap(
      lambda key, side: mixing.cutout(key, image, mask, size=side, fill=fill),
      in_axes=(0, None)))
  images, masks, boxes = (np.asarray(a) for a in run(jax.random.split(
      jax.random.key(0), 200), jnp.int32(6)))
  heights, widths = _box_sides(boxes)
  assert heights.max() == 6 and widths.max() == 6 and (heights * widths).min() < 36
  assert (heights * widths).min() >= 9  # A centre inside the image keeps >= half a side.
  np.testing.assert_allclose(images, np.where(boxes[..., None], np.asarray(fill), 0.2))
  np.testing.assert_array_equal(masks, np.where(boxes, 255, np.asarray(mask)))
  kept_image, kept_mask, box = mixing.cutout(jax.random.key(1), image, mask, size=4,
                                             ignore_in_box=False)
  np.testing.assert_array_equal(kept_mask, mask)
  assert int(box.sum()) > 0 and np.allclose(kept_image[np.asarray(box)], 0.5)
  unchanged, none_mask, empty = mixing.cutout(jax.random.key(1), image, size=0)
  assert none_mask is None and not empty.any()
  np.testing.assert_array_equal(unchanged, image)


def test_random_erasing_noise_box_and_probability_zero_is_identity():
  image = jnp.full((32, 32, 3), 2.0)  # Out of [0, 1], so erased pixels are visible.
  mask = jnp.ones((32, 32), jnp.int32)
  run = jax.jit(jax.vmap(lambda key: mixing.random_erasing(key, image, mask, p=1.0)))
  keys = jax.random.split(jax.random.key(2), 2)
  erased, erased_mask, box = (np.asarray(a)[0] for a in run(keys))
  np.testing.assert_array_equal(np.asarray(run(keys)[0])[0], erased)
  heights, widths = _box_sides(box[None])
  assert heights[0] * widths[0] >= 0.01 * 32 * 32
  inside = np.asarray(erased)[box]
  assert inside.min() >= 0 and inside.max() < 1 and inside.std() > 0.1
  np.testing.assert_array_equal(np.asarray(erased)[~box], 2.0)
  np.testing.assert_array_equal(erased_mask, np.where(box, 255, 1))
  same, same_mask, nothing = mixing.random_erasing(jax.random.key(2), image, mask, p=0.0)
  np.testing.assert_array_equal(same, image)
  np.testing.assert_array_equal(same_mask, mask)
  assert not nothing.any()


def test_blend_with_lambda_one_is_the_identity():
  target = {"image": jnp.full((2, 4, 4, 3), 0.3), "probs": jnp.full((2, 4, 4, 5), 0.2)}
  source = jax.tree.map(lambda x: x + 0.5, target)
  same = mixing.blend(jnp.ones(2), target, source)
  jax.tree.map(np.testing.assert_array_equal, same, target)
  half = mixing.blend(jnp.array([0.5, 0.0]), target, source)
  np.testing.assert_allclose(half["probs"][0], 0.45)
  np.testing.assert_allclose(half["probs"][1], 0.7)


def test_mixup_blends_images_and_soft_targets_with_one_lambda_per_example():
  batch = 6
  images = jax.random.uniform(jax.random.key(0), (batch, 4, 4, 3))
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (batch, 4, 4, 5)))
  order = jnp.array([5, 4, 3, 2, 1, 0])

  @jax.jit
  def run(key):
    return mixing.mixup(key, images, probs, alpha=0.1, permutation=order)

  mixed_images, mixed_probs, lam = run(jax.random.key(2))
  weight = lam[:, None, None, None]
  np.testing.assert_allclose(mixed_images, weight * images + (1 - weight) * images[order],
                             rtol=1e-6)
  np.testing.assert_allclose(mixed_probs, weight * probs + (1 - weight) * probs[order],
                             rtol=1e-6)
  np.testing.assert_allclose(mixed_probs.sum(-1), 1.0, rtol=1e-5)
  assert len(np.unique(np.asarray(lam))) == batch
  labels = jnp.zeros((batch, 4, 4), jnp.int32)
  with pytest.raises(ValueError, match="floating"):
    mixing.blend(lam, labels, labels)


def test_mixup_per_batch_lambda_is_shared_and_follows_beta_alpha_alpha():
  alpha = 0.2
  lam = _sample_masks(lambda key: mixing.mixup(
      key, jnp.zeros((2, 1, 1, 1)), alpha=alpha, per_example=False)[2])
  np.testing.assert_array_equal(lam[:, 0], lam[:, 1])
  assert abs(lam.mean() - 0.5) < 0.03
  assert abs(lam[:, 0].var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_mixup_per_example_lambdas_follow_beta_alpha_alpha_independently():
  # Beta(0.1, 0.1): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.208; examples uncorrelated.
  alpha = 0.1
  lam = _sample_masks(lambda key: mixing.mixup(
      key, jnp.zeros((2, 1, 1, 1)), alpha=alpha, per_example=True)[2])
  assert abs(lam.mean() - 0.5) < 0.03
  np.testing.assert_allclose(lam.var(axis=0), 1 / (4 * (2 * alpha + 1)), atol=0.015)
  assert abs(np.corrcoef(lam[:, 0], lam[:, 1])[0, 1]) < 0.1


@pytest.mark.parametrize("call, field", [
    (lambda: mixing.unimatch_cutmix_box(jax.random.key(0), size=8, p=1.5), "p=1.5"),
    (lambda: mixing.unimatch_cutmix_box(jax.random.key(0), size=8,
                                        area_range=(0.5, 0.2)), "area_range"),
    (lambda: mixing.french_box_mask(jax.random.key(0), size=(8, 0)), "size"),
    (lambda: mixing.french_box_mask(jax.random.key(0), size=8, num_boxes=0), "num_boxes"),
    (lambda: mixing.u2pl_box_mask(jax.random.key(0), size=8, ratio=1.0), "ratio"),
    (lambda: mixing.cutmix_box(jax.random.key(0), size=8, alpha=0.0), "alpha"),
    (lambda: mixing.cutout(jax.random.key(0), jnp.zeros((4, 4)), size=2), "image"),
    (lambda: mixing.random_erasing(jax.random.key(0), jnp.zeros((4, 4, 3)),
                                   fill="mean"), "fill"),
])
def test_bad_static_arguments_raise_naming_the_field(call, field):
  with pytest.raises(ValueError, match=field):
    call()
