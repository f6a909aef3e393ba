"""Tests for the named TFDS datasets: label mappings, loading under mocks, errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxsemiseg.data import bundled
from jaxsemiseg.data import shapes_builder
from jaxsemiseg.data import tfds_sources

# --- Label mappings (hand-made masks) ---------------------------------------------------


def test_pet_trimap_to_label():
  trimap = np.array([[1, 2], [3, 2]], np.uint8)
  np.testing.assert_array_equal(tfds_sources.pet_trimap_to_label(trimap),
                                [[1, 0], [255, 0]])
  # TFDS stores the trimap as [H, W, 1]; values outside 1..3 do not occur but are ignored.
  trimap = np.array([[[1], [0]], [[7], [3]]], np.uint8)
  label = tfds_sources.pet_trimap_to_label(trimap)
  assert label.dtype == np.uint8
  np.testing.assert_array_equal(label, [[1, 255], [255, 255]])


def test_cityscapes_id_to_train_id():
  evaluated = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
  np.testing.assert_array_equal(
      tfds_sources.cityscapes_id_to_train_id(np.array([evaluated], np.uint8)),
      [list(range(19))])
  # Unlabeled, ego vehicle, ..., ground, parking, rail track, guard rail, bridge, tunnel,
  # polegroup, caravan, trailer, and license plate (-1, stored as 255).
  not_evaluated = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255]
  label = tfds_sources.cityscapes_id_to_train_id(np.array(not_evaluated, np.uint8)[:, None])
  np.testing.assert_array_equal(label, np.full((16, 1), 255))
  names = tfds_sources.DATASETS["cityscapes"].class_names
  assert len(names) == 19 and names[0] == "road" and names[13] == "car"


def test_scene_parse150_annotation_to_label():
  categories = np.array([[0, 1, 4], [8, 100, 101]], np.uint8)
  instance_ids = np.array([[0, 3, 9], [1, 2, 5]], np.uint8)
  annotation = np.stack([categories, instance_ids, np.zeros_like(categories)], axis=-1)
  label = tfds_sources.scene_parse150_annotation_to_label(annotation)
  names = tfds_sources.DATASETS["scene_parse150"].class_names
  assert len(names) == 150
  # Instance categories 1 bed, 4 person, 8 chair, 100 flag; 0 and 101 are not classes.
  np.testing.assert_array_equal(label, [[255, 7, 12], [19, 149, 255]])
  assert [names[i] for i in (7, 12, 19, 149)] == ["bed", "person", "chair", "flag"]


def test_every_instance_category_maps_to_a_distinct_thing_class():
  label = tfds_sources.scene_parse150_annotation_to_label(
      np.arange(1, 101, dtype=np.uint8)[None])
  assert len(set(label[0].tolist())) == 100 and label.max() < 150
  names = tfds_sources.DATASETS["scene_parse150"].class_names
  assert not {"wall", "sky", "floor", "road", "grass"} & {names[i] for i in label[0]}


def test_mask_of_wrong_shape_raises():
  with pytest.raises(ValueError, match=r"trimap has shape \(2, 2, 2\)"):
    tfds_sources.pet_trimap_to_label(np.zeros((2, 2, 2), np.uint8))


# --- Loading (TFDS mocked) ----------------------------------------------------------------


@pytest.mark.parametrize("name, split, allowed", [
    ("oxford_iiit_pet", "test", {0, 1, 255}),
    ("cityscapes", "validation", set(range(19)) | {255}),
    ("scene_parse150", "train", set(range(150)) | {255}),
])
def test_load_random_mock_data(name, split, allowed):
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds_sources.load_tfds(name, split)
    assert len(source) == 3
    assert source.num_classes == len(tfds_sources.DATASETS[name].class_names)
    example = source.load(2)
  assert example["image"].ndim == 3 and example["image"].shape[-1] == 3
  assert example["image"].dtype == np.uint8
  assert example["label"].ndim == 2 and example["label"].dtype == np.uint8
  assert set(np.unique(example["label"]).tolist()) <= allowed
  assert isinstance(example["id"], str) and example["id"]


def test_load_maps_masks_and_reads_ids_of_mocked_examples():
  trimaps = [np.array([[1, 2], [3, 3]]), np.array([[2, 2], [1, 1]])]
  records = [{"image": np.full((2, 2, 3), 10 * i, np.uint8),
              "segmentation_mask": trimap.astype(np.uint8)[..., None],
              "file_name": f"Abyssinian_{i}.jpg".encode()}
             for i, trimap in enumerate(trimaps)]

  def as_data_source(self, split, **kwargs):
    del self, split, kwargs
    return records

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source):
    source = tfds_sources.load_tfds("oxford_iiit_pet", "train")
    assert list(source.ids) == ["Abyssinian_0.jpg", "Abyssinian_1.jpg"]
    example = source[1]
    subset = source.subset(["Abyssinian_1.jpg"])
  np.testing.assert_array_equal(example["label"], [[0, 0], [1, 1]])
  np.testing.assert_array_equal(example["image"], records[1]["image"])
  assert example["id"] == "Abyssinian_1.jpg"
  np.testing.assert_array_equal(subset[0]["label"], [[0, 0], [1, 1]])


def test_scene_parse150_ids_are_split_and_index():
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds_sources.load_tfds("scene_parse150", "test")
    assert list(source.ids) == ["test_000000", "test_000001"]
    assert source.load(1)["id"] == "test_000001"


# --- Errors ----------------------------------------------------------------------------


def test_unknown_name_lists_supported_names():
  with pytest.raises(ValueError, match="'voc'.*cityscapes.*oxford_iiit_pet.*scene_parse150"):
    tfds_sources.load_tfds("voc", "train")


def test_unknown_split_lists_splits():
  with pytest.raises(ValueError, match="'val'.*'train', 'validation', 'test'"):
    tfds_sources.load_tfds("cityscapes", "val")


def test_cityscapes_without_manual_files_says_what_to_put_where(tmp_path):
  manual_dir = tmp_path / "manual"
  with pytest.raises(FileNotFoundError) as empty:
    tfds_sources.load_tfds("cityscapes", "train", data_dir=tmp_path / "data",
                           manual_dir=manual_dir)
  message = str(empty.value)
  assert "leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip missing" in message
  assert str(manual_dir) in message
  # With one of the two zips in place, only the other is reported missing.
  manual_dir.mkdir()
  (manual_dir / "leftImg8bit_trainvaltest.zip").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r": gtFine_trainvaltest.zip missing from"):
    tfds_sources.load_tfds("cityscapes", "train", data_dir=tmp_path / "data",
                           manual_dir=manual_dir)


# --- A dataset prepared without random access -----------------------------------------


def test_tfrecord_copy_is_read_through_as_numpy(tmp_path, caplog):
  builder = shapes_builder.JaxsemisegShapes(config="tiny", data_dir=tmp_path)
  builder.download_and_prepare(
      file_format="tfrecord",
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  source = shapes_builder.load_shapes("validation", data_dir=tmp_path, config="tiny")
  assert "without random access" in caplog.text
  images, labels = bundled.generate_shapes((0, 1), 16)
  assert len(source) == 16 and source.ids[3] == "validation_00003"
  for index in (0, 15):
    np.testing.assert_array_equal(source[index]["image"], images[index])
    np.testing.assert_array_equal(source[index]["label"], labels[index])
