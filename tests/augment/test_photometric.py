"""Tests for jaxsemiseg.augment.photometric: PIL/colorsys references and hand-computed values."""

import colorsys
import inspect
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from jaxsemiseg.augment import photometric as ph

_RNG = np.random.default_rng(0)
# Non-square so a swapped H/W would show.
IMAGE_U8 = _RNG.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
# PIL's equalize step is (#pixels - count of the top level) // 255: with 64000 pixels it
# is ~250, where // 256 would give one less, so an off-by-one in the formula shows.
EQUALIZE_U8 = _RNG.integers(0, 256, size=(256, 250, 3), dtype=np.uint8)
IMAGE = jnp.asarray(IMAGE_U8 / 255.0, jnp.float32)
# Squared values crowd the dark levels and leave gaps: a histogram equalize must reshape.
SKEWED_U8 = (IMAGE_U8.astype(np.int32) ** 2 // 255 // 2 + 20).astype(np.uint8)
PIL_TOLERANCE = 2 / 255  # PIL truncates blends to 8 bits and rounds its gray mean.


def _pil_apply(image_u8: np.ndarray, fn) -> np.ndarray:
  return np.asarray(fn(Image.fromarray(image_u8)), np.float32) / 255.0


def _as_float(image_u8: np.ndarray) -> jax.Array:
  return jnp.asarray(image_u8 / 255.0, jnp.float32)


def _gaussian_taps(sigma: float, radius: int) -> np.ndarray:
  taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
  return taps / taps.sum()


IDENTITIES = {
    "brightness": lambda x: ph.adjust_brightness(x, factor=1.0),
    "contrast": lambda x: ph.adjust_contrast(x, factor=1.0),
    "saturation": lambda x: ph.adjust_saturation(x, factor=1.0),
    "hue": lambda x: ph.adjust_hue(x, delta=0.0),
    "gamma": lambda x: ph.adjust_gamma(x, gamma=1.0),
    "solarize": lambda x: ph.solarize(x, threshold=256 / 255),
    "solarize_add": lambda x: ph.solarize_add(x, addition=0.0),
    "posterize": lambda x: ph.posterize(x, bits=8),
    "sharpness": lambda x: ph.adjust_sharpness(x, factor=1.0),
    "blur": lambda x: ph.gaussian_blur(x, sigma=0.0, kernel_size=5),
    "jitter_factors": lambda x: ph.apply_color_jitter(x, order=[3, 2, 1, 0],
                                                      factors=[1.0, 1.0, 1.0, 0.0]),
    "jitter_p0": lambda x: ph.color_jitter(jax.random.key(0), x, p=0.0),
    "jitter_zero_strength": lambda x: ph.color_jitter(
        jax.random.key(1), x, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0),
    "grayscale_p0": lambda x: ph.random_grayscale(jax.random.key(2), x, p=0.0),
    "blur_p0": lambda x: ph.random_gaussian_blur(jax.random.key(3), x, p=0.0),
    "strong_p0": lambda x: ph.strong_colour(
        jax.random.key(4), x, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25,
        jitter_p=0.0, grayscale_p=0.0, blur_p=0.0),
}


@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_identity_magnitude_leaves_image_unchanged(name):
  out = IDENTITIES[name](IMAGE)
  assert out.shape == IMAGE.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, IMAGE, atol=1e-6)


PIL_CASES = [
    ("autocontrast", ph.autocontrast, ImageOps.autocontrast, 1 / 255 + 1e-6),
    *[(f"posterize{b}", lambda x, b=b: ph.posterize(x, bits=b),
       lambda im, b=b: ImageOps.posterize(im, b), 1e-6) for b in (1, 4, 7)],
    *[(f"solarize{t}", lambda x, t=t: ph.solarize(x, threshold=t / 255),
       lambda im, t=t: ImageOps.solarize(im, t), 1e-6) for t in (0, 1, 128, 255, 256)],
    *[(f"{name}{f}", lambda x, f=f, op=op: op(x, factor=f),
       lambda im, f=f, enh=enh: enh(im).enhance(f), PIL_TOLERANCE)
      for (name, op, enh), f in itertools.product(
          [("sharpness", ph.adjust_sharpness, ImageEnhance.Sharpness),
           ("contrast", ph.adjust_contrast, ImageEnhance.Contrast),
           ("color", ph.adjust_saturation, ImageEnhance.Color),
           ("brightness", ph.adjust_brightness, ImageEnhance.Brightness)],
          (0.0, 0.4, 1.7))],
]


@pytest.mark.parametrize("image_u8", [IMAGE_U8, SKEWED_U8], ids=["uniform", "skewed"])
@pytest.mark.parametrize("name,ours,pil,atol", PIL_CASES, ids=[c[0] for c in PIL_CASES])
def test_matches_pil(name, ours, pil, atol, image_u8):
  del name
  np.testing.assert_allclose(ours(_as_float(image_u8)), _pil_apply(image_u8, pil),
                             atol=atol, rtol=0)


@pytest.mark.parametrize("image_u8", [EQUALIZE_U8, EQUALIZE_U8 // 3 + 40, SKEWED_U8],
                         ids=["uniform", "narrow", "skewed"])
def test_equalize_matches_pil(image_u8):
  out = np.asarray(ph.equalize(_as_float(image_u8)))
  np.testing.assert_allclose(out, _pil_apply(image_u8, ImageOps.equalize), atol=1e-6)
  assert np.abs(out - image_u8 / 255.0).max() > 2 / 255  # Not left unchanged.


def test_equalize_spreads_a_narrow_histogram():
  out = np.asarray(ph.equalize(_as_float(EQUALIZE_U8 // 3 + 40)))  # Levels 40..125.
  assert out.min() < 3 / 255 and out.max() > 252 / 255
  # Each channel's levels end up close to uniform: the median near the middle.
  assert np.all(np.abs(np.median(out, axis=(0, 1)) - 0.5) < 0.02)


def test_equalize_and_autocontrast_leave_constant_channels():
  image = np.stack([np.full((4, 5), 77), np.full((4, 5), 0), np.tile([10, 200], 10).reshape(4, 5)],
                   axis=-1).astype(np.uint8)
  for op, pil in ((ph.equalize, ImageOps.equalize), (ph.autocontrast, ImageOps.autocontrast)):
    out = np.asarray(op(_as_float(image)))
    np.testing.assert_allclose(out[..., :2], image[..., :2] / 255.0, atol=1e-6)
    np.testing.assert_allclose(out, _pil_apply(image, pil), atol=1e-6)
  # Two levels stretch to the full range.
  np.testing.assert_allclose(np.unique(ph.autocontrast(_as_float(image))[..., 2]), [0.0, 1.0])


@pytest.mark.parametrize("delta", [-0.5, -0.2, 0.13, 0.5])
def test_hue_matches_colorsys(delta):
  pixels = np.array([[[1.0, 0.0, 0.0], [0.2, 0.7, 0.4], [0.9, 0.9, 0.1]],
                     [[0.3, 0.3, 0.3], [0.05, 0.1, 0.95], [0.6, 0.2, 0.5]]], np.float32)
  expected = np.array([[colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
                        for h, s, v in (colorsys.rgb_to_hsv(*px) for px in row)]
                       for row in pixels])
  np.testing.assert_allclose(ph.adjust_hue(jnp.asarray(pixels), delta=delta), expected,
                             atol=1e-5)


def test_hand_computed_values():
  pixels = jnp.array([[[0.2, 0.5, 0.8], [0.5, 0.25, 0.25]]])
  np.testing.assert_allclose(ph.adjust_brightness(pixels, factor=1.5),
                             [[[0.3, 0.75, 1.0], [0.75, 0.375, 0.375]]], atol=1e-6)
  lumas = [0.299 * 0.2 + 0.587 * 0.5 + 0.114 * 0.8, 0.299 * 0.5 + 0.587 * 0.25 + 0.114 * 0.25]
  np.testing.assert_allclose(ph.rgb_to_grayscale(pixels)[..., 0], [lumas], atol=1e-6)
  np.testing.assert_allclose(ph.adjust_contrast(pixels, factor=0.0),
                             np.full((1, 2, 3), np.mean(lumas)), atol=1e-6)
  # Saturation 2: g + 2 (x - g) with g = 0.32475 for the second pixel.
  np.testing.assert_allclose(ph.adjust_saturation(pixels, factor=2.0)[0, 1],
                             [0.67525, 0.17525, 0.17525], atol=1e-6)
  np.testing.assert_allclose(ph.adjust_gamma(pixels, gamma=2.0)[0, 0], [0.04, 0.25, 0.64],
                             atol=1e-6)
  np.testing.assert_allclose(ph.adjust_gamma(pixels, gamma=0.5, gain=2.0)[0, 1],
                             [1.0, 1.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(ph.invert(pixels), 1.0 - pixels, atol=1e-7)
  np.testing.assert_allclose(ph.solarize_add(pixels, addition=0.5, threshold=0.5)[0, 0],
                             [0.7, 0.5, 0.8], atol=1e-6)
  # 200 = 0b11001000 keeps 0b11000000 = 192 with 2 bits; 63 < 64 becomes 0.
  levels = jnp.array([[[200, 63, 255]]]) / 255.0
  np.testing.assert_allclose(ph.posterize(levels, bits=2) * 255, [[[192, 0, 192]]], atol=1e-4)
  np.testing.assert_allclose(ph.posterize(levels, bits=0), 0.0)  # TF AutoAugment at level < 2.5.


def test_sharpness_hand_example_keeps_border():
  image = jnp.zeros((3, 4, 1)).at[1, 1, 0].set(0.5).at[0, 0, 0].set(0.3)
  smoothed = ph.adjust_sharpness(image, factor=0.0)[..., 0]
  # Interior (1, 1): (5 * 0.5 + 0.3) / 13; (1, 2) only sees its neighbour (1, 1): 0.5 / 13.
  np.testing.assert_allclose(smoothed[1, 1:3], [2.8 / 13, 0.5 / 13], atol=1e-6)
  np.testing.assert_allclose(smoothed[0], image[0, :, 0], atol=1e-7)
  np.testing.assert_allclose(smoothed[:, 0], image[:, 0, 0], atol=1e-7)
  sharpened = ph.adjust_sharpness(image, factor=2.0)[..., 0]
  np.testing.assert_allclose(sharpened[1, 2], 0.0, atol=1e-7)  # 2 * 0 - 0.5/13 clipped.
  np.testing.assert_allclose(sharpened[1, 1], 1.0 - 2.8 / 13, atol=1e-6)


def test_gaussian_blur_impulse_is_the_kernel_and_edges_are_replicated():
  assert ph.blur_kernel_size(2.0) == 13 and ph.blur_kernel_size(0.5) == 5
  impulse = jnp.zeros((9, 9, 1)).at[4, 4, 0].set(1.0)
  taps = _gaussian_taps(1.0, 3)
  np.testing.assert_allclose(ph.gaussian_blur(impulse, sigma=1.0, kernel_size=7)[2:7, 2:7, 0],
                             np.outer(taps, taps)[1:6, 1:6], atol=1e-6)
  # A zero-padded blur would darken the border of a constant image.
  constant = jnp.full((6, 5, 3), 0.7)
  np.testing.assert_allclose(ph.gaussian_blur(constant, sigma=2.0), constant, atol=1e-6)


@pytest.mark.parametrize("op", [
    lambda x: ph.adjust_brightness(x, factor=3.0),
    lambda x: ph.adjust_contrast(x, factor=3.0),
    lambda x: ph.adjust_saturation(x, factor=3.0),
    lambda x: ph.adjust_hue(x, delta=0.5),
    lambda x: ph.adjust_gamma(x, gamma=0.2, gain=3.0),
    lambda x: ph.adjust_sharpness(x, factor=5.0),
    lambda x: ph.solarize_add(x, addition=1.0, threshold=1.0),
    lambda x: ph.gaussian_blur(x, sigma=2.0),
    lambda x: ph.color_jitter(jax.random.key(5), x, brightness=2.0, contrast=2.0,
                              saturation=2.0, hue=0.5, p=1.0),
])
def test_outputs_stay_in_unit_range(op):
  out = np.asarray(op(IMAGE))
  assert out.min() >= 0.0 and out.max() <= 1.0


def test_no_photometric_op_takes_a_mask():
  public = [f for name, f in inspect.getmembers(ph, inspect.isfunction)
            if not name.startswith("_") and f.__module__ == ph.__name__]
  assert len(public) >= 20
  assert not any("mask" in inspect.signature(f).parameters for f in public)


def test_color_jitter_params_distribution():
  keys = jax.random.split(jax.random.key(6), 2400)
  orders, factors = jax.vmap(
      lambda k: ph.color_jitter_params(k, brightness=1.5, contrast=0.5, saturation=0.2,
                                       hue=0.25))(keys)
  factors = np.asarray(factors)
  for column, (low, high) in enumerate([(0.0, 2.5), (0.5, 1.5), (0.8, 1.2), (-0.25, 0.25)]):
    values = factors[:, column]
    assert low <= values.min() < low + 0.02 and high - 0.02 < values.max() <= high
    assert abs(values.mean() - (low + high) / 2) < 0.03 * (high - low)
  counts = {}
  for order in map(tuple, np.asarray(orders)):
    counts[order] = counts.get(order, 0) + 1
  assert set(counts) == set(itertools.permutations(range(4)))
  assert all(60 < c < 140 for c in counts.values())  # 100 expected, std ~10.


def test_apply_color_jitter_follows_order():
  image = IMAGE[:4, :4]
  factors = [1.6, 0.5, 1.3, 0.2]
  steps = [lambda x: ph.adjust_brightness(x, factor=1.6),
           lambda x: ph.adjust_contrast(x, factor=0.5),
           lambda x: ph.adjust_saturation(x, factor=1.3),
           lambda x: ph.adjust_hue(x, delta=0.2)]
  outputs = []
  for order in ([0, 1, 2, 3], [3, 1, 2, 0]):
    expected = image
    for index in order:
      expected = steps[index](expected)
    out = ph.apply_color_jitter(image, order=jnp.array(order), factors=jnp.array(factors))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    outputs.append(out)
  assert np.abs(outputs[0] - outputs[1]).max() > 0.05


def test_random_ops_apply_with_probability_p():
  keys = jax.random.split(jax.random.key(7), 400)
  image = IMAGE[:4, :4]
  gray = ph.rgb_to_grayscale(image, num_channels=3)
  jittered = jax.jit(jax.vmap(lambda k: ph.color_jitter(k, image, p=0.8)))(keys)
  changed = np.abs(np.asarray(jittered) - np.asarray(image)).max(axis=(1, 2, 3)) > 1e-6
  assert abs(changed.mean() - 0.8) < 0.07
  grays = np.asarray(jax.vmap(lambda k: ph.random_grayscale(k, image, p=0.2))(keys))
  is_gray = np.abs(grays - np.asarray(gray)).max(axis=(1, 2, 3)) < 1e-7
  is_same = np.abs(grays - np.asarray(image)).max(axis=(1, 2, 3)) < 1e-7
  assert np.all(is_gray | is_same) and abs(is_gray.mean() - 0.2) < 0.06


def test_random_blur_sigma_within_range():
  impulse = jnp.zeros((15, 15, 1)).at[7, 7, 0].set(1.0)
  keys = jax.random.split(jax.random.key(8), 200)
  centers = np.asarray(jax.vmap(
      lambda k: ph.random_gaussian_blur(k, impulse, sigma_range=(0.5, 2.0), p=0.5))(keys)
  )[:, 7, 7, 0]
  blurred = centers < 1.0
  assert abs(blurred.mean() - 0.5) < 0.1
  # The centre of a 2D Gaussian is taps[r]^2: between sigma 2 and sigma 0.5.
  low, high = _gaussian_taps(2.0, 6)[6] ** 2, _gaussian_taps(0.5, 6)[6] ** 2
  assert low - 1e-6 <= centers[blurred].min() and centers[blurred].max() <= high + 1e-6
  assert centers[blurred].max() - centers[blurred].min() > 0.5 * (high - low)


def test_traced_magnitudes_under_jit_vmap_match_static_calls():
  def all_ops(image, m):
    return jnp.stack([
        ph.adjust_brightness(image, factor=m[0]),
        ph.adjust_contrast(image, factor=m[0]),
        ph.adjust_saturation(image, factor=m[0]),
        ph.adjust_sharpness(image, factor=m[0]),
        ph.adjust_hue(image, delta=m[1]),
        ph.adjust_gamma(image, gamma=m[0]),
        ph.solarize(image, threshold=m[2]),
        ph.solarize_add(image, addition=m[1]),
        ph.posterize(image, bits=m[3].astype(jnp.int32)),
        ph.gaussian_blur(image, sigma=m[0], kernel_size=7),
        ph.equalize(image),
        ph.autocontrast(image),
        ph.invert(image),
    ])
  images = jnp.stack([IMAGE, _as_float(SKEWED_U8)])
  magnitudes = np.array([[0.4, -0.3, 0.5, 3.0], [1.7, 0.1, 0.9, 6.0]], np.float32)
  batched = jax.jit(jax.vmap(all_ops))(images, jnp.asarray(magnitudes))
  for i in range(2):
    np.testing.assert_allclose(batched[i], all_ops(images[i], magnitudes[i]), atol=1e-6)
  # Sharpness 0.4 and posterize to 3 bits changed the image: the magnitudes were used.
  assert np.abs(np.asarray(batched[0, 3] - images[0])).max() > 0.05
  np.testing.assert_allclose(batched[0, 8] * 255 % 32, 0.0, atol=1e-3)


def test_strong_colour_jit_vmap_deterministic_and_presets():
  keys = jax.random.split(jax.random.key(9), 3)
  images = jnp.stack([IMAGE, _as_float(SKEWED_U8), 1.0 - IMAGE])
  run = jax.jit(jax.vmap(ph.unimatch_strong_colour))
  first = run(keys, images)
  np.testing.assert_array_equal(first, run(keys, images))
  np.testing.assert_allclose(first[1], ph.unimatch_strong_colour(keys[1], images[1]),
                             atol=1e-5)
  assert np.abs(np.asarray(run(keys[::-1], images)) - np.asarray(first)).max() > 1e-3
  np.testing.assert_allclose(
      ph.unimatch_strong_colour(keys[0], IMAGE),
      ph.strong_colour(keys[0], IMAGE, brightness=0.5, contrast=0.5, saturation=0.5,
                       hue=0.25, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5,
                       blur_sigma=(0.1, 2.0)), atol=1e-6)
  np.testing.assert_allclose(
      ph.french_strong_colour(keys[0], IMAGE),
      ph.strong_colour(keys[0], IMAGE, brightness=0.4, contrast=0.4, saturation=0.4,
                       hue=0.1, jitter_p=0.8, grayscale_p=0.2, blur_p=0.0), atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda: ph.adjust_brightness(IMAGE[None], factor=1.0), r"\[H, W, C\]"),
    (lambda: ph.invert(jnp.asarray(IMAGE_U8)), "dtype uint8"),
    (lambda: ph.adjust_contrast(IMAGE[..., :2], factor=1.0), "RGB"),
    (lambda: ph.adjust_saturation(IMAGE, factor=-0.5), "factor=-0.5"),
    (lambda: ph.adjust_hue(IMAGE, delta=0.7), "delta=0.7"),
    (lambda: ph.posterize(IMAGE, bits=9), "bits=9"),
    (lambda: ph.posterize(IMAGE, bits=2.5), "bits=2.5"),
    (lambda: ph.gaussian_blur(IMAGE, sigma=1.0, kernel_size=4), "kernel_size=4"),
    (lambda: jax.jit(lambda s: ph.gaussian_blur(IMAGE, sigma=s))(1.0), "kernel_size"),
    (lambda: ph.random_gaussian_blur(jax.random.key(0), IMAGE, sigma_range=(2.0, 1.0)),
     "sigma_range"),
    (lambda: ph.random_grayscale(jax.random.key(0), IMAGE, p=1.5), "p=1.5"),
    (lambda: ph.color_jitter(jax.random.key(0), IMAGE, hue=0.6), "hue=0.6"),
    (lambda: ph.rgb_to_grayscale(IMAGE, num_channels=2), "num_channels=2"),
    (lambda: ph.apply_color_jitter(IMAGE, order=[0, 1, 2], factors=[1.0] * 4), "order"),
])
def test_bad_input_raises_clear_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_solarize_threshold_one_still_inverts_white_as_pil():
  white = jnp.full((1, 1, 1), 1.0)
  assert math.isclose(float(ph.solarize(white, threshold=1.0)[0, 0, 0]), 0.0)
