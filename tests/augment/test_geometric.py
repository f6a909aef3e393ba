"""Tests for jaxsemiseg.augment.geometric: identities, hand-checked moves, inverses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.augment import geometric

SIZE = 16
KEY = jax.random.key(0)
IMAGE = jax.random.uniform(jax.random.key(1), (SIZE, SIZE, 3))
LABELS = (0, 3, 7)
MASK = jax.random.choice(jax.random.key(2), jnp.array(LABELS), (SIZE, SIZE)).astype(jnp.int32)


def _linear_image_at(xs, ys):
  """An affine function of pixel coordinates (x = column, y = row), channels last.

  Bilinear sampling reproduces it exactly, so a warp of it can be checked against the
  function at the source points.
  """
  return np.stack([0.1 + 0.03 * xs + 0.01 * ys, 0.9 - 0.02 * xs - 0.03 * ys,
                   0.3 + 0.04 * xs], axis=-1).astype(np.float32)


GRID_Y, GRID_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
LINEAR = jnp.asarray(_linear_image_at(GRID_X, GRID_Y))


IDENTITY_OPS = {
    "random_affine_defaults": lambda: geometric.random_affine(KEY, IMAGE, MASK),
    "random_affine_zero_ranges": lambda: geometric.random_affine(
        KEY, IMAGE, MASK, degrees=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0),
        shear=(0.0, 0.0, 0.0, 0.0)),
    "rotate": lambda: geometric.rotate(IMAGE, MASK, degrees=0.0),
    "rot90": lambda: geometric.rot90(IMAGE, MASK, k=4),
    "shear_x": lambda: geometric.shear_x(IMAGE, MASK, level=0.0),
    "shear_y": lambda: geometric.shear_y(IMAGE, MASK, level=0.0),
    "translate_x": lambda: geometric.translate_x(IMAGE, MASK, pixels=0.0),
    "translate_y": lambda: geometric.translate_y(IMAGE, MASK, pixels=0.0),
    "flip_left_right": lambda: geometric.random_flip_left_right(KEY, IMAGE, MASK,
                                                                probability=0.0),
    "flip_up_down": lambda: geometric.random_flip_up_down(KEY, IMAGE, MASK, probability=0.0),
    "random_resized_crop": lambda: geometric.random_resized_crop(
        KEY, IMAGE, MASK, size=SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
    "elastic_deformation": lambda: geometric.elastic_deformation(KEY, IMAGE, MASK, alpha=0.0),
}


@pytest.mark.parametrize("name", sorted(IDENTITY_OPS))
def test_magnitude_zero_is_exact_identity(name):
  image, mask, params = IDENTITY_OPS[name]()
  np.testing.assert_array_equal(image, IMAGE)
  np.testing.assert_array_equal(mask, MASK)
  np.testing.assert_array_equal(params.matrix, np.eye(3))
  if params.displacement is not None:
    np.testing.assert_array_equal(params.displacement, 0.0)


def test_mask_only_holds_input_labels_and_ignore():
  strong_ops = [
      lambda k: geometric.random_affine(k, IMAGE, MASK, degrees=40.0, translate=(0.2, 0.2),
                                        scale=(0.7, 1.3), shear=(-20.0, 20.0, -10.0, 10.0)),
      lambda k: geometric.rotate(IMAGE, MASK, degrees=33.0),
      lambda k: geometric.shear_x(IMAGE, MASK, level=0.3),
      lambda k: geometric.shear_y(IMAGE, MASK, level=-0.3),
      lambda k: geometric.translate_x(IMAGE, MASK, pixels=-2.6),
      lambda k: geometric.random_rot90(k, IMAGE, MASK),
      lambda k: geometric.random_resized_crop(k, IMAGE, MASK, size=(12, 10)),
      lambda k: geometric.elastic_deformation(k, IMAGE, MASK, alpha=8.0, sigma=2.0),
  ]
  for index, op in enumerate(strong_ops):
    _, mask, _ = op(jax.random.key(index))
    assert mask.dtype == MASK.dtype
    assert set(np.unique(mask).tolist()) <= {*LABELS, 255}, index
  _, rotated, _ = strong_ops[1](KEY)
  assert (rotated == 255).any()  # the corners come from outside the image


def test_flips_mirror_image_and_mask():
  image, mask, _ = geometric.random_flip_left_right(KEY, IMAGE, MASK, probability=1.0)
  np.testing.assert_array_equal(image, IMAGE[:, ::-1])
  np.testing.assert_array_equal(mask, MASK[:, ::-1])
  image, mask, _ = geometric.random_flip_up_down(KEY, IMAGE, MASK, probability=1.0)
  np.testing.assert_array_equal(image, IMAGE[::-1])
  np.testing.assert_array_equal(mask, MASK[::-1])


def test_flip_probability_is_respected():
  keys = jax.random.split(KEY, 400)
  flip = jax.jit(jax.vmap(
      lambda k: geometric.random_flip_left_right(k, IMAGE, probability=0.3)[2].matrix))
  flipped = np.asarray(flip(keys)[:, 0, 0] == -1.0)
  assert 0.24 < flipped.mean() < 0.36


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_equals_jnp_rot90(k):
  image, mask, _ = geometric.rot90(IMAGE, MASK, k=k)
  np.testing.assert_array_equal(image, jnp.rot90(IMAGE, k))
  np.testing.assert_array_equal(mask, jnp.rot90(MASK, k))


def test_rotation_direction_is_counter_clockwise():
  image, mask, _ = geometric.rotate(IMAGE, MASK, degrees=90.0)
  np.testing.assert_allclose(image, jnp.rot90(IMAGE), atol=1e-5)
  np.testing.assert_array_equal(mask, jnp.rot90(MASK))
  image, _, _ = geometric.random_affine(KEY, IMAGE, degrees=(90.0, 90.0))
  np.testing.assert_allclose(image, jnp.rot90(IMAGE), atol=1e-5)
  _, mask, params = geometric.random_rot90(KEY, IMAGE, MASK)
  turns = {(1, 0): 0, (0, 1): 1, (-1, 0): 2, (0, -1): 3}[
      (int(params.matrix[0, 0]), int(params.matrix[1, 0]))]
  np.testing.assert_array_equal(mask, jnp.rot90(MASK, turns))


def test_translate_by_three_pixels_moves_a_pixel_by_three():
  image = jnp.zeros((SIZE, SIZE, 3)).at[5, 4].set(1.0)
  mask = jnp.zeros((SIZE, SIZE), jnp.int32).at[5, 4].set(7)
  moved, moved_mask, _ = geometric.translate_x(image, mask, pixels=3.0, fill=0.5)
  np.testing.assert_array_equal(moved[5, 7], 1.0)
  np.testing.assert_array_equal(moved[:, 3:], image[:, :-3])
  np.testing.assert_array_equal(moved[:, :3], 0.5)
  np.testing.assert_array_equal(moved_mask[:, 3:], mask[:, :-3])
  np.testing.assert_array_equal(moved_mask[:, :3], 255)
  moved, moved_mask, _ = geometric.translate_y(image, mask, pixels=-3.0)
  np.testing.assert_array_equal(moved[2, 4], 1.0)
  np.testing.assert_array_equal(moved_mask[:-3], mask[3:])
  np.testing.assert_array_equal(moved_mask[-3:], 255)


def test_fractional_translation_blends_neighbours_and_fill():
  image, mask, _ = geometric.translate_x(IMAGE, MASK, pixels=2.4, fill=0.5)
  # Output column x samples x - 2.4 = (x - 3) + 0.6.
  np.testing.assert_allclose(image[:, 3:], 0.4 * IMAGE[:, :-3] + 0.6 * IMAGE[:, 1:-2],
                             atol=1e-6)
  np.testing.assert_allclose(image[:, 2], 0.4 * 0.5 + 0.6 * IMAGE[:, 0], atol=1e-6)
  np.testing.assert_array_equal(mask[:, 2:], MASK[:, :-2])  # nearest: round(x - 2.4)
  np.testing.assert_array_equal(mask[:, :2], 255)


def test_shear_matches_pil_affine_from_the_corner():
  image, mask, _ = geometric.shear_x(IMAGE, MASK, level=1.0)
  # PIL (1, 1, 0, 0, 1, 0): output (x, y) samples x + (y + 0.5) in index coordinates.
  for y, x in [(0, 0), (2, 5), (6, 8)]:
    np.testing.assert_allclose(image[y, x], 0.5 * (IMAGE[y, x + y] + IMAGE[y, x + y + 1]),
                               atol=1e-6)
    assert mask[y, x] == MASK[y, x + y + 1]
  assert (mask[SIZE - 1, 1:] == 255).all()
  image, _, _ = geometric.shear_y(IMAGE, level=1.0)
  np.testing.assert_allclose(image[3, 2], 0.5 * (IMAGE[5, 2] + IMAGE[6, 2]), atol=1e-6)


def test_random_affine_scale_and_shear_about_the_centre():
  center = (SIZE - 1) / 2
  image, _, _ = geometric.random_affine(KEY, LINEAR, scale=(2.0, 2.0))
  # Zoom x2 about the centre: output pixel p samples c + (p - c) / 2.
  np.testing.assert_allclose(image, _linear_image_at((GRID_X + center) / 2,
                                                     (GRID_Y + center) / 2), atol=1e-5)
  _, _, params = geometric.random_affine(KEY, LINEAR, shear=(30.0, 30.0))
  tan = math.tan(math.radians(30.0))
  np.testing.assert_allclose(params.matrix, [[1, tan, -tan * center], [0, 1, 0], [0, 0, 1]],
                             atol=1e-6)


def test_random_affine_translation_is_whole_pixels_within_range():
  keys = jax.random.split(KEY, 64)
  matrices = jax.jit(jax.vmap(lambda k: geometric.random_affine(
      k, IMAGE, translate=(0.25, 0.0))[2].matrix))(keys)
  shifts = -np.asarray(matrices[:, 0, 2])
  np.testing.assert_array_equal(shifts, np.round(shifts))
  assert shifts.min() >= -4 and shifts.max() <= 4 and len(set(shifts.tolist())) >= 6
  np.testing.assert_array_equal(matrices[:, 1, 2], 0.0)
  moved, _, _ = geometric.random_affine(keys[0], IMAGE, translate=(0.25, 0.0))
  expected, _, _ = geometric.translate_x(IMAGE, pixels=float(shifts[0]))
  np.testing.assert_array_equal(moved, expected)


def _crop_box(matrix, out_h, out_w):
  """(top, left, height, width) of the box a resized crop read, from its matrix."""
  m = np.asarray(matrix)
  height, width = m[..., 1, 1] * out_h, m[..., 0, 0] * out_w
  left = m[..., 0, 2] + 0.5 - 0.5 * m[..., 0, 0]
  top = m[..., 1, 2] + 0.5 - 0.5 * m[..., 1, 1]
  return top, left, height, width


def test_random_resized_crop_without_resize_is_a_crop():
  for index in range(3):
    image, mask, params = geometric.random_resized_crop(
        jax.random.key(index), IMAGE, MASK, size=8, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    top, left, height, width = (round(float(v)) for v in _crop_box(params.matrix, 8, 8))
    assert (height, width) == (8, 8)
    np.testing.assert_array_equal(image, IMAGE[top:top + 8, left:left + 8])
    np.testing.assert_array_equal(mask, MASK[top:top + 8, left:left + 8])


def test_random_resized_crop_sampler_follows_torchvision_ranges():
  keys = jax.random.split(KEY, 300)
  matrices = jax.jit(jax.vmap(
      lambda k: geometric.random_resized_crop(k, IMAGE, size=8)[2].matrix))(keys)
  top, left, height, width = _crop_box(matrices, 8, 8)
  for value in (top, left, height, width):
    np.testing.assert_allclose(value, np.round(value), atol=1e-4)
  top, left, height, width = (np.round(v) for v in (top, left, height, width))
  # Sides are round(sqrt(area * aspect)) and round(sqrt(area / aspect)): undo the
  # rounding with +-0.5 and check the area and aspect intervals meet torchvision's ranges.
  area_low, area_high = (height - 0.5) * (width - 0.5), (height + 0.5) * (width + 0.5)
  assert (area_high >= 0.08 * SIZE**2).all() and (area_low <= SIZE**2).all()
  aspect_low, aspect_high = (width - 0.5) / (height + 0.5), (width + 0.5) / (height - 0.5)
  assert (aspect_high >= 3 / 4).all() and (aspect_low <= 4 / 3).all()
  fraction = height * width / SIZE**2
  assert fraction.min() < 0.15 and fraction.max() > 0.85
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + height <= SIZE).all() and (left + width <= SIZE).all()
  assert len(set(top.tolist())) > 5 and len(set(left.tolist())) > 5


def test_random_resized_crop_falls_back_to_the_centre_crop():
  # No box of aspect 4 and area 1 fits: torchvision takes the full width, h = 16 / 4.
  image, _, params = geometric.random_resized_crop(KEY, IMAGE, size=(4, 16), scale=(1.0, 1.0),
                                                   ratio=(4.0, 4.0))
  assert tuple(float(v) for v in _crop_box(params.matrix, 4, 16)) == (6.0, 0.0, 4.0, 16.0)
  np.testing.assert_array_equal(image, IMAGE[6:10])


def test_elastic_field_is_smoothed_uniform_noise_times_alpha():
  """Recomputes the field from the op's noise draw with an independent NumPy blur."""
  sigma = 2.0
  _, _, once = geometric.elastic_deformation(KEY, IMAGE, alpha=1.0, sigma=sigma)
  _, _, twice = geometric.elastic_deformation(KEY, IMAGE, alpha=2.0, sigma=sigma)
  np.testing.assert_allclose(twice.displacement, 2 * once.displacement, rtol=1e-6)
  noise = np.asarray(jax.random.uniform(KEY, (SIZE, SIZE, 2), minval=-1.0, maxval=1.0))
  taps = np.exp(-np.arange(-8, 9)**2 / (2 * sigma**2))  # radius round(4 sigma)
  taps /= taps.sum()
  def blur(a, axis):  # zero padding, as scipy's gaussian_filter(mode="constant")
    return np.apply_along_axis(lambda v: np.convolve(np.pad(v, 8), taps, "valid"), axis, a)
  np.testing.assert_allclose(once.displacement, blur(blur(noise, 0), 1), atol=1e-6)
  assert np.abs(np.asarray(once.displacement)).max() <= 1.0


def test_elastic_samples_the_displaced_coordinates():
  image, _, params = geometric.elastic_deformation(KEY, LINEAR, alpha=2.0, sigma=3.0)
  src_x = GRID_X + np.asarray(params.displacement[..., 0])
  src_y = GRID_Y + np.asarray(params.displacement[..., 1])
  inside = (src_x >= 0) & (src_x <= SIZE - 1) & (src_y >= 0) & (src_y <= SIZE - 1)
  assert inside.mean() > 0.5
  np.testing.assert_allclose(np.asarray(image)[inside],
                             _linear_image_at(src_x, src_y)[inside], atol=1e-5)


def test_invert_recovers_the_interior_of_rotation_and_scale():
  image, mask, params = geometric.random_affine(KEY, LINEAR, MASK, degrees=(20.0, 20.0),
                                                scale=(1.2, 1.2))
  back = geometric.invert(params, image)
  np.testing.assert_allclose(back[4:12, 4:12], LINEAR[4:12, 4:12], atol=1e-4)
  labels_back = geometric.invert(params, mask, fill=255)
  np.testing.assert_array_equal(labels_back[6:10, 6:10], MASK[6:10, 6:10])
  assert labels_back[0, 0] == 255  # zoomed in: the corner was never visible


def test_invert_exact_permutations_and_compositions():
  flip = geometric.random_flip_left_right(KEY, IMAGE, probability=1.0)[2]
  turn = geometric.rot90(IMAGE, k=1)[2]
  both = geometric.compose(flip, turn)
  image, mask = geometric.warp(both, IMAGE, MASK)
  np.testing.assert_array_equal(image, jnp.rot90(IMAGE[:, ::-1]))
  np.testing.assert_array_equal(mask, jnp.rot90(MASK[:, ::-1]))
  np.testing.assert_array_equal(geometric.invert(both, mask, fill=255), MASK)
  np.testing.assert_array_equal(geometric.invert(both, image), IMAGE)


def test_compose_with_a_crop_and_elastic_resamples_once():
  crop = geometric.random_resized_crop(KEY, LINEAR, size=12, scale=(0.5, 0.5),
                                       ratio=(1.0, 1.0))[2]
  cropped = geometric.warp(crop, LINEAR)[0]
  elastic = geometric.elastic_deformation(KEY, cropped, alpha=1.5, sigma=4.0)[2]
  turn = geometric.rotate(cropped, degrees=15.0)[2]
  chained = geometric.warp(turn, geometric.warp(elastic, cropped)[0])[0]
  composed = geometric.warp(geometric.compose(crop, geometric.compose(elastic, turn)), LINEAR)[0]
  np.testing.assert_allclose(composed[3:9, 3:9], chained[3:9, 3:9], atol=1e-4)


def test_invert_of_a_crop_fills_outside_the_box():
  image, _, params = geometric.random_resized_crop(KEY, LINEAR, size=12, scale=(0.3, 0.5))
  back = geometric.invert(params, image, fill=-1.0)
  top, left, height, width = (round(float(v)) for v in _crop_box(params.matrix, 12, 12))
  inner = (slice(top + 1, top + height - 1), slice(left + 1, left + width - 1))
  np.testing.assert_allclose(back[inner], LINEAR[inner], atol=1e-4)
  outside = np.ones((SIZE, SIZE), bool)
  outside[max(top - 1, 0):top + height + 1, max(left - 1, 0):left + width + 1] = False
  assert outside.any()
  np.testing.assert_allclose(np.asarray(back)[outside], -1.0, atol=1e-6)


def test_invert_elastic_by_fixed_point_iteration():
  image, _, params = geometric.elastic_deformation(KEY, LINEAR, alpha=2.0, sigma=4.0)
  crude = geometric.invert(params, image, iterations=0)
  back = geometric.invert(params, image)
  error_crude = np.abs(crude - LINEAR)[4:12, 4:12].max()
  error = np.abs(back - LINEAR)[4:12, 4:12].max()
  assert error < 2e-3 < error_crude


def _pipeline(key, image, mask):
  """Every random op in sequence, so one compile covers them all."""
  keys = jax.random.split(key, 6)
  image, mask, affine = geometric.random_affine(keys[0], image, mask, degrees=30.0,
                                                scale=(0.8, 1.2), fill=0.5)
  restored = geometric.invert(affine, image)
  image, mask, _ = geometric.random_flip_left_right(keys[1], image, mask)
  image, mask, _ = geometric.random_flip_up_down(keys[2], image, mask)
  image, mask, _ = geometric.random_rot90(keys[3], image, mask)
  image, mask, _ = geometric.random_resized_crop(keys[4], image, mask, size=12)
  image, mask, elastic = geometric.elastic_deformation(keys[5], image, mask, alpha=2.0,
                                                       sigma=2.0)
  return image, mask, restored, elastic.displacement


def test_jit_vmap_and_determinism():
  keys = jax.random.split(KEY, 3)
  images, masks = jnp.stack([IMAGE] * 3), jnp.stack([MASK] * 3)
  batched = jax.jit(jax.vmap(_pipeline))
  first, again = batched(keys, images, masks), batched(keys, images, masks)
  reordered = batched(keys[::-1], images, masks)
  for a, b, c in zip(first, again, reordered):
    np.testing.assert_array_equal(a, b)
    # Each example depends on its own key only, not on its place in the batch.
    np.testing.assert_allclose(a, c[::-1], atol=1e-6)
  assert not np.array_equal(first[0][0], first[0][1])
  assert first[0].shape == (3, 12, 12, 3) and first[1].shape == (3, 12, 12)
  np.testing.assert_array_equal(first[3].shape, (3, 12, 12, 2))


def test_magnitudes_may_be_traced():
  def explicit(degrees, level, pixels, k):
    outputs = [geometric.rotate(IMAGE, MASK, degrees=degrees),
               geometric.shear_x(IMAGE, MASK, level=level),
               geometric.shear_y(IMAGE, MASK, level=-level),
               geometric.translate_x(IMAGE, MASK, pixels=pixels),
               geometric.translate_y(IMAGE, MASK, pixels=-pixels),
               geometric.rot90(IMAGE, MASK, k=k)]
    return [(image, mask) for image, mask, _ in outputs]
  traced = jax.jit(explicit)(jnp.float32(25.0), jnp.float32(0.23), jnp.float32(3.0), 3)
  for (a_image, a_mask), (b_image, b_mask) in zip(traced, explicit(25.0, 0.23, 3.0, 3)):
    np.testing.assert_allclose(a_image, b_image, atol=1e-5)
    np.testing.assert_array_equal(a_mask, b_mask)


@pytest.mark.parametrize("call, message", [
    (lambda: geometric.rotate(IMAGE[0], degrees=1.0), "expected one example"),
    (lambda: geometric.rotate(IMAGE, MASK[1:], degrees=1.0), "mask has shape"),
    (lambda: geometric.random_flip_left_right(KEY, IMAGE, probability=1.5), "probability=1.5"),
    (lambda: geometric.random_affine(KEY, IMAGE, degrees=-3.0), "degrees=-3.0"),
    (lambda: geometric.random_affine(KEY, IMAGE, scale=(1.2, 0.8)), "scale="),
    (lambda: geometric.random_affine(KEY, IMAGE, translate=(1.5, 0.0)), "translate="),
    (lambda: geometric.random_affine(KEY, IMAGE, shear=(1.0, 2.0, 3.0)), "shear="),
    (lambda: geometric.random_resized_crop(KEY, IMAGE, size=0), "size=0"),
    (lambda: geometric.random_resized_crop(KEY, IMAGE, size=8, scale=(0.9, 0.1)), "scale="),
    (lambda: geometric.elastic_deformation(KEY, IMAGE, sigma=jnp.float32(2.0)), "kernel_size"),
    (lambda: geometric.elastic_deformation(KEY, IMAGE, sigma=-1.0), "sigma=-1.0"),
    (lambda: geometric.invert(geometric.rotate(IMAGE, degrees=1.0)[2], IMAGE[:8]), "values"),
    (lambda: geometric.compose(
        geometric.random_resized_crop(KEY, IMAGE, size=8)[2],
        geometric.rotate(IMAGE, degrees=1.0)[2]), "second.input_shape"),
])
def test_bad_input_raises_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
