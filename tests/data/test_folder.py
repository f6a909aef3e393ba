"""Tests for jaxsemiseg.data.folder."""

import os

import numpy as np
import pytest
from PIL import Image

from jaxsemiseg.data import folder

HEIGHT, WIDTH = 8, 10


def _image(seed):
  return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _mask(seed, num_classes=3):
  values = np.random.default_rng(seed).integers(0, num_classes, (HEIGHT, WIDTH))
  values[0, :3] = 255
  return values.astype(np.uint8)


def _save_palette_mask(path, mask):
  image = Image.fromarray(mask, mode="P")
  # VOC-like colours: index 1 is dark red, so an RGB conversion would not give 1 back.
  palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253
  image.putpalette(palette)
  image.save(path)


def _make_folder(root, stems=("b", "a", "c"), masked=("a", "b", "c")):
  os.makedirs(root / "images")
  os.makedirs(root / "masks")
  for seed, stem in enumerate(stems):
    Image.fromarray(_image(seed)).save(root / "images" / f"{stem}.png")
    if stem in masked:
      _save_palette_mask(root / "masks" / f"{stem}.png", _mask(seed))
  (root / "images" / "notes.txt").write_text("not an image")
  return root


def test_load_folder_decodes_images_and_palette_indices(tmp_path):
  source = folder.load_folder(_make_folder(tmp_path), num_classes=3)
  assert list(source.ids) == ["a", "b", "c"]
  assert source.num_classes == 3 and source.class_names == ("class_0", "class_1", "class_2")
  assert source.name == f"folder:{tmp_path}"
  # Stem "a" was written second (seed 1).
  example = source[0]
  assert example["id"] == "a"
  np.testing.assert_array_equal(example["image"], _image(1))
  assert example["label"].dtype == np.uint8
  np.testing.assert_array_equal(example["label"], _mask(1))


def test_load_folder_reads_grayscale_and_16_bit_masks(tmp_path):
  os.makedirs(tmp_path / "img")
  os.makedirs(tmp_path / "gt")
  Image.fromarray(_image(0)).save(tmp_path / "img" / "x.jpg")
  Image.fromarray(_mask(0, num_classes=5), mode="L").save(tmp_path / "gt" / "x.png")
  Image.fromarray(_image(1)).save(tmp_path / "img" / "y.bmp")
  Image.fromarray(_mask(1, num_classes=5).astype(np.uint16)).save(tmp_path / "gt" / "y.png")
  source = folder.load_folder(tmp_path, num_classes=5, image_dir="img", mask_dir="gt",
                              class_names=list("abcde"))
  assert source.class_names == tuple("abcde")
  jpeg = source[0]
  assert jpeg["image"].shape == (HEIGHT, WIDTH, 3) and jpeg["image"].dtype == np.uint8
  np.testing.assert_array_equal(jpeg["label"], _mask(0, num_classes=5))
  np.testing.assert_array_equal(source[1]["image"], _image(1))
  np.testing.assert_array_equal(source[1]["label"], _mask(1, num_classes=5))


def test_images_without_masks_load_unlabeled_when_allowed(tmp_path):
  root = _make_folder(tmp_path, masked=("a",))
  source = folder.load_folder(root, num_classes=3, require_masks=False)
  assert [source[i]["label"] is None for i in range(3)] == [False, True, True]
  os.rename(root / "masks", root / "moved")
  source = folder.load_folder(root, num_classes=3, require_masks=False)
  assert all(source[i]["label"] is None for i in range(3))


def test_missing_or_empty_directories_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"image directory .*nowhere.*images.* does "
                     r"not exist; expected .*<stem>.png"):
    folder.load_folder(tmp_path / "nowhere", num_classes=2)
  os.makedirs(tmp_path / "images")
  (tmp_path / "images" / "readme.md").write_text("")
  with pytest.raises(FileNotFoundError, match="holds no image"):
    folder.load_folder(tmp_path, num_classes=2)
  Image.fromarray(_image(0)).save(tmp_path / "images" / "a.png")
  with pytest.raises(FileNotFoundError, match=r"mask directory .*masks' does not exist.*"
                     "require_masks=False"):
    folder.load_folder(tmp_path, num_classes=2)


def test_images_without_masks_raise_listing_stems(tmp_path):
  root = _make_folder(tmp_path, masked=("b",))
  with pytest.raises(ValueError, match=r"2 image\(s\) in .* have no mask .*"
                     r"\(first: \['a', 'c'\]\)"):
    folder.load_folder(root, num_classes=3)


def test_duplicate_stems_and_bad_class_arguments_raise(tmp_path):
  root = _make_folder(tmp_path)
  with pytest.raises(ValueError, match=r"class_names has 2 names but num_classes=3"):
    folder.load_folder(root, num_classes=3, class_names=["x", "y"])
  with pytest.raises(ValueError, match=r"num_classes=256 is out of range"):
    folder.load_folder(root, num_classes=256)
  Image.fromarray(_image(9)).save(root / "images" / "a.jpg")
  with pytest.raises(ValueError, match=r"two files with stem 'a' \('a.jpg' and 'a.png'\)"):
    folder.load_folder(root, num_classes=3)


def test_colour_and_out_of_range_masks_raise_on_load(tmp_path):
  root = _make_folder(tmp_path)
  Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(root / "masks" / "a.png")
  wide = np.full((HEIGHT, WIDTH), 300, np.uint16)
  Image.fromarray(wide).save(root / "masks" / "b.png")
  source = folder.load_folder(root, num_classes=3)
  with pytest.raises(ValueError, match=r"a.png' has mode 'RGB'.*palette \('P'\)"):
    source[0]
  with pytest.raises(ValueError, match=r"b.png' holds value 300"):
    source[1]


def test_out_of_range_class_ids_are_caught_by_the_source(tmp_path):
  root = _make_folder(tmp_path)
  source = folder.load_folder(root, num_classes=2)
  with pytest.raises(ValueError, match=r"label value\(s\) \[2\]"):
    source[0]


VOC_IDS = [f"2007_00000{i}" for i in range(1, 7)]


def _voc_mask(index, value):
  mask = np.full((HEIGHT, WIDTH), value, np.uint8)
  mask[:, 0] = 255
  mask[0, 1] = index
  return mask


@pytest.fixture
def voc_root(tmp_path):
  root = tmp_path / "VOC2012"
  for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug",
            "ImageSets/Segmentation", "ImageSets/SegmentationAug"):
    os.makedirs(root / d)
  for index, example_id in enumerate(VOC_IDS):
    Image.fromarray(_image(index)).save(root / "JPEGImages" / f"{example_id}.jpg")
    # Fine masks (palette, value 20) for the first three ids only, as in VOC's train set;
    # aug masks (grayscale, value 15) for all six, as SBD provides.
    if index < 3:
      _save_palette_mask(root / "SegmentationClass" / f"{example_id}.png",
                         _voc_mask(index, 20))
    Image.fromarray(_voc_mask(index, 15), mode="L").save(
        root / "SegmentationClassAug" / f"{example_id}.png")
  (root / "ImageSets/Segmentation/train.txt").write_text(f"{VOC_IDS[0]}\n{VOC_IDS[1]}\n")
  (root / "ImageSets/Segmentation/val.txt").write_text(f"{VOC_IDS[2]}\n")
  (root / "ImageSets/SegmentationAug/train_aug.txt").write_text("".join(
      f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in VOC_IDS[3:]))
  return root


def test_load_voc_named_split_prefers_aug_masks(voc_root):
  source = folder.load_voc(voc_root, "train")
  assert list(source.ids) == VOC_IDS[:2] and source.name == "voc:train"
  assert source.num_classes == 21 and source.class_names == folder.VOC_CLASS_NAMES
  assert source.class_names[0] == "background" and source.class_names[20] == "tvmonitor"
  example = source[1]
  assert example["image"].shape == (HEIGHT, WIDTH, 3) and example["id"] == VOC_IDS[1]
  np.testing.assert_array_equal(example["label"], _voc_mask(1, 15))


def test_load_voc_fine_masks_keep_palette_indices(voc_root):
  source = folder.load_voc(voc_root, "val", use_aug=False)
  np.testing.assert_array_equal(source[0]["label"], _voc_mask(2, 20))


def test_load_voc_finds_train_aug_list(voc_root):
  source = folder.load_voc(voc_root, "train_aug")
  assert list(source.ids) == VOC_IDS[3:]
  np.testing.assert_array_equal(source[2]["label"], _voc_mask(5, 15))
  with pytest.raises(FileNotFoundError, match=r"3 example\(s\) named by .*train_aug.txt' "
                     r"have no mask .*SegmentationClassAug/ and use_aug=True"):
    folder.load_voc(voc_root, "train_aug", use_aug=False)


def test_load_voc_split_as_list_file_path(voc_root, tmp_path, monkeypatch):
  splits_dir = tmp_path / "splits" / "92"
  os.makedirs(splits_dir)
  (splits_dir / "labeled.txt").write_text(
      f"JPEGImages/{VOC_IDS[4]}.jpg SegmentationClassAug/{VOC_IDS[4]}.png\n{VOC_IDS[0]}\n")
  source = folder.load_voc(voc_root, str(splits_dir / "labeled.txt"))
  assert list(source.ids) == [VOC_IDS[4], VOC_IDS[0]] and source.name == "voc:labeled"
  monkeypatch.chdir(tmp_path)
  assert list(folder.load_voc(voc_root, "splits/92/labeled.txt").ids) == list(source.ids)
  assert list(folder.load_voc(voc_root, "ImageSets/Segmentation/val.txt").ids) == [VOC_IDS[2]]


def test_load_voc_errors(voc_root, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"split='test': no list file at .*"
                     r"ImageSets/Segmentation/test.txt"):
    folder.load_voc(voc_root, "test")
  with pytest.raises(FileNotFoundError, match=r"no list file at .*missing.txt"):
    folder.load_voc(voc_root, str(tmp_path / "missing.txt"))
  bad_list = tmp_path / "bad.txt"
  bad_list.write_text(f"{VOC_IDS[0]}\n2012_999999\n")
  with pytest.raises(FileNotFoundError, match=r"1 image\(s\) named by .*bad.txt' are not in "
                     r".*JPEGImages' \(first: \['2012_999999.jpg'\]\)"):
    folder.load_voc(voc_root, str(bad_list))
  with pytest.raises(FileNotFoundError, match=r"JPEGImages' does not exist; expected the "
                     "Pascal VOC 2012 layout"):
    folder.load_voc(tmp_path / "nowhere", "train")
