"""Tests for the procedural shapes generator and its TFDS builder."""

import ml_collections
import numpy as np
import pytest

from jaxsemiseg import data as data_lib
from jaxsemiseg.data import bundled
from jaxsemiseg.data import shapes_builder


@pytest.fixture(scope="module")
def one_chunk():
  """256 images with the default knobs (exactly one rendering chunk)."""
  return bundled.generate_shapes(0, 256)


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  """A TFDS data dir holding the "tiny" shapes build (32 train + 16 validation)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  shapes_builder.load_shapes("train", data_dir=data_dir, config="tiny")
  return data_dir


# --- Generator ------------------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_other_bytes():
  images, labels = bundled.generate_shapes(7, 5)
  again_images, again_labels = bundled.generate_shapes(7, 5)
  other_images, _ = bundled.generate_shapes(8, 5)
  assert images.tobytes() == again_images.tobytes()
  assert labels.tobytes() == again_labels.tobytes()
  assert images.tobytes() != other_images.tobytes()


def test_first_images_do_not_depend_on_the_total_count():
  many_images, many_labels = bundled.generate_shapes((3, 1), 260)
  few_images, few_labels = bundled.generate_shapes((3, 1), 5)
  np.testing.assert_array_equal(many_images[:5], few_images)
  np.testing.assert_array_equal(many_labels[:5], few_labels)
  # The second chunk has its own random stream, not a copy of the first.
  assert not np.array_equal(many_images[256:260], many_images[:4])


def test_shapes_dtypes_and_every_class_present(one_chunk):
  images, labels = one_chunk
  assert images.shape == (256, 64, 64, 3) and images.dtype == np.uint8
  assert labels.shape == (256, 64, 64) and labels.dtype == np.uint8
  pixel_counts = np.bincount(labels.ravel(), minlength=bundled.NUM_CLASSES)
  assert pixel_counts.size == bundled.NUM_CLASSES == len(bundled.CLASS_NAMES) == 6
  assert (pixel_counts[1:] > 0.01 * labels.size).all()
  assert pixel_counts[0] > 0.5 * labels.size


def test_class_is_not_given_away_by_colour(one_chunk):
  images, labels = one_chunk
  images = images / 255.0
  class_means = []
  for label in range(bundled.NUM_CLASSES):
    per_image = [images[i][labels[i] == label].mean(0) for i in range(len(images))
                 if (labels[i] == label).sum() >= 10]
    per_image = np.array(per_image)
    # Uniform colours have std 0.29 per channel; blending in the texture's second
    # colour averages it down to about 0.23. A class with its own colour would be ~0.
    assert per_image.std(0).min() > 0.15, bundled.CLASS_NAMES[label]
    class_means.append(per_image.mean(0))
  class_means = np.array(class_means)
  assert np.abs(class_means - 0.5).max() < 0.08


def test_object_and_distractor_counts_follow_the_knobs():
  _, labels = bundled.generate_shapes(1, 40, max_objects=1, max_distractors=0)
  classes_per_image = [np.setdiff1d(np.unique(label), [0]).size for label in labels]
  assert max(classes_per_image) == 1
  _, labels = bundled.generate_shapes(1, 40, max_objects=4)
  classes_per_image = [np.setdiff1d(np.unique(label), [0]).size for label in labels]
  assert max(classes_per_image) >= 3


def test_without_texture_and_noise_each_region_has_one_colour():
  images, labels = bundled.generate_shapes(
      2, 8, max_objects=1, max_distractors=0, texture_strength=0.0, noise_std=0.0)
  for image, label in zip(images, labels):
    # Pixels whose 3x3 neighbourhood has one label are away from anti-aliased edges;
    # only sub-pixel star tips (labelled background) can still mix colours there.
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(label, 1, "edge"), (3, 3))
    interior = (windows == label[..., None, None]).all(axis=(-1, -2))
    for value in np.unique(label[interior]):
      _, counts = np.unique(image[interior & (label == value)], axis=0,
                            return_counts=True)
      assert counts.max() > 0.95 * counts.sum()
  textured, _ = bundled.generate_shapes(2, 8, max_objects=1, max_distractors=0)
  for image, label in zip(textured, labels):
    _, counts = np.unique(image[label == 0], axis=0, return_counts=True)
    assert counts.max() < 0.1 * counts.sum()


@pytest.mark.parametrize("knob, value", [
    ("max_radius", 0.6), ("min_radius", 0.0), ("max_objects", 0), ("aspect_jitter", -0.1),
    ("noise_std", -1.0), ("texture_strength", 1.5), ("min_contrast", 0.9)])
def test_out_of_range_knob_raises_naming_it(knob, value):
  with pytest.raises(ValueError, match=f"{knob}={value}"):
    bundled.generate_shapes(0, 1, **{knob: value})


def test_zero_images():
  images, labels = bundled.generate_shapes(0, 0, image_size=16)
  assert images.shape == (0, 16, 16, 3) and labels.shape == (0, 16, 16)


# --- Geometry and compositing (hand-computed) -----------------------------------------


def _sdf(name, u, v):
  return bundled._SDFS[bundled.CLASS_NAMES.index(name)](
      np.array(u, float), np.array(v, float), None)


def test_disk_ring_square_distances():
  np.testing.assert_allclose(_sdf("disk", [0.0, 2.0, 0.6], [0.0, 0.0, 0.8]),
                             [-1.0, 1.0, 0.0], atol=1e-12)
  # The ring's hole (radius 0.55) is outside the shape.
  np.testing.assert_allclose(_sdf("ring", [0.0, 0.8, 1.5], [0.0, 0.0, 0.0]),
                             [0.55, -0.2, 0.5], atol=1e-12)
  np.testing.assert_allclose(_sdf("square", [0.85, 0.5, 1.0], [0.0, -0.85, 1.0]),
                             [0.0, 0.0, 0.15], atol=1e-12)


def test_triangle_vertices_on_boundary_and_centre_inside():
  r = 1.25
  c30 = np.cos(np.pi / 6)
  np.testing.assert_allclose(
      _sdf("triangle", [0.0, r * c30, -r * c30, 0.0], [r, -r / 2, -r / 2, 0.0]),
      [0.0, 0.0, 0.0, -r / 2], atol=1e-12)


def test_star_tips_and_inner_corners_on_boundary():
  tips = np.deg2rad([0, 72, 144, 216, 288])
  corners = tips + np.deg2rad(36)
  np.testing.assert_allclose(_sdf("star", 1.2 * np.cos(tips), 1.2 * np.sin(tips)), 0,
                             atol=1e-12)
  np.testing.assert_allclose(_sdf("star", 0.5 * np.cos(corners), 0.5 * np.sin(corners)),
                             0, atol=1e-12)
  # Between two tips at the tips' radius lies empty space; the centre is inside.
  assert _sdf("star", 1.2 * np.cos(np.deg2rad(18)), 1.2 * np.sin(np.deg2rad(18))) > 0.3
  assert _sdf("star", 0.0, 0.0) < -0.4


def test_composite_occludes_and_labels_by_half_coverage():
  image = np.zeros((1, 1, 3, 3), np.float32)
  label = np.full((1, 1, 3), 2, np.uint8)
  coverage = np.array([[[0.0, 0.5, 0.4]]], np.float32)
  colour = np.ones((1, 1, 3, 3), np.float32)
  image, label = bundled._composite(image, label, coverage, colour, np.array([4]))
  np.testing.assert_allclose(image[0, 0, :, 0], [0.0, 0.5, 0.4])
  np.testing.assert_array_equal(label[0, 0], [2, 4, 2])


def test_smooth_noise_interpolates_linearly_between_grid_values():
  grid = np.tile(np.arange(6.0)[:, None], (1, 6))[None]  # value = row index
  field = bundled._smooth_noise(grid, 10)
  expected_rows = (np.arange(10) + 0.5) / 10 * 5
  np.testing.assert_allclose(field[0], np.tile(expected_rows[:, None], (1, 10)),
                             atol=1e-6)


# --- TFDS builder ----------------------------------------------------------------------


def test_built_dataset_holds_exactly_the_generated_images(tiny_data_dir):
  for split, split_index, size in (("train", 0, 32), ("validation", 1, 16)):
    source = shapes_builder.load_shapes(split, data_dir=tiny_data_dir, config="tiny")
    images, labels = bundled.generate_shapes((0, split_index), size)
    assert len(source) == size
    assert source.num_classes == 6 and tuple(source.class_names) == bundled.CLASS_NAMES
    assert source.ids[0] == f"{split}_00000" and source.ids[-1] == f"{split}_{size - 1:05d}"
    for index in (0, size - 1):
      example = source[index]
      assert example["id"] == source.ids[index]
      assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
      np.testing.assert_array_equal(example["image"], images[index])
      np.testing.assert_array_equal(example["label"], labels[index])


def test_in_memory_source_is_the_tfds_copy(tiny_data_dir):
  dataset = ml_collections.ConfigDict(dict(name="shapes", builder_config="tiny",
                                           in_memory=True, data_dir=tiny_data_dir))
  for split in bundled.SPLITS:
    in_memory = data_lib.load_source(dataset, split)
    built = shapes_builder.load_shapes(split, data_dir=tiny_data_dir, config="tiny")
    assert list(in_memory.ids) == list(built.ids)
    assert in_memory.class_names == built.class_names
    for index in (0, 7, len(built) - 1):
      for key in ("image", "label", "id"):
        np.testing.assert_array_equal(in_memory[index][key], built[index][key])


def test_in_memory_refuses_slices_and_unknown_builds():
  with pytest.raises(ValueError, match="'train\\[:4\\]'.*TFDS copy"):
    bundled.render_split("train[:4]", build="tiny")
  with pytest.raises(ValueError, match="'huge'.*tiny"):
    bundled.render_split("train", build="huge")


def test_sliced_split(tiny_data_dir):
  source = shapes_builder.load_shapes("validation[4:7]", data_dir=tiny_data_dir,
                                      config="tiny")
  assert list(source.ids) == ["validation_00004", "validation_00005", "validation_00006"]


def test_unknown_split_or_config_raises(tiny_data_dir):
  with pytest.raises(ValueError, match="'test'.*train"):
    shapes_builder.load_shapes("test", data_dir=tiny_data_dir)
  with pytest.raises(ValueError, match="'huge'.*tiny"):
    shapes_builder.load_shapes("train", data_dir=tiny_data_dir, config="huge")


def test_copy_built_with_other_defaults_is_refused(tiny_data_dir, monkeypatch):
  changed = dict(bundled.generate_shapes.__kwdefaults__, noise_std=0.1)
  monkeypatch.setattr(bundled.generate_shapes, "__kwdefaults__", changed)
  with pytest.raises(ValueError, match="noise_std.*Bump VERSION in jaxsemiseg/data/bundled.py"):
    shapes_builder.load_shapes("train", data_dir=tiny_data_dir, config="tiny")
