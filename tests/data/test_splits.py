"""Tests for jaxsemiseg.data.splits."""

import collections.abc
import random

import numpy as np
import pytest

from jaxsemiseg.data import splits
from jaxsemiseg.data.source import SegmentationSource

IDS = [f"img_{i:02d}" for i in range(20)]


class _LabelRaisingExample(collections.abc.Mapping):
  """An example whose label must never be read."""

  def __init__(self, example_id):
    self._items = {"image": np.full((2, 3, 3), 7, np.uint8), "id": example_id}

  def __getitem__(self, key):
    if key == "label":
      raise AssertionError("the label of an unlabeled example was read")
    return self._items[key]

  def __iter__(self):
    return iter(("image", "label", "id"))

  def __len__(self):
    return 3


def _source(ids, load):
  return SegmentationSource(name="toy", ids=list(ids), num_classes=3,
                            class_names=("a", "b", "c"), load=load)


def test_labeled_split_partitions_ids():
  labeled, unlabeled = splits.labeled_split(IDS, num_labeled=5, seed=3)
  assert len(labeled) == 5 and len(unlabeled) == 15
  assert labeled == sorted(labeled) and unlabeled == sorted(unlabeled)
  assert not set(labeled) & set(unlabeled)
  assert sorted(labeled + unlabeled) == IDS


def test_labeled_split_is_deterministic_and_order_independent():
  shuffled = list(IDS)
  random.Random(0).shuffle(shuffled)
  assert shuffled != IDS
  first = splits.labeled_split(IDS, num_labeled=6, seed=1)
  assert splits.labeled_split(shuffled, num_labeled=6, seed=1) == first
  assert splits.labeled_split(IDS, num_labeled=6, seed=1) == first
  assert splits.labeled_split(IDS, num_labeled=6, seed=2) != first


def test_smaller_labeled_sets_are_nested_in_larger_ones():
  small, _ = splits.labeled_split(IDS, num_labeled=3, seed=5)
  large, _ = splits.labeled_split(IDS, num_labeled=9, seed=5)
  assert set(small) < set(large)


@pytest.mark.parametrize("fraction, expected", [
    (0.25, 5), (0.125, 3), (0.01, 1), (1.0, 20), (0.05, 1), (0.175, 4)])
def test_fraction_rounds_half_up_and_keeps_one(fraction, expected):
  labeled, unlabeled = splits.labeled_split(IDS, fraction=fraction)
  assert len(labeled) == expected and len(unlabeled) == 20 - expected


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of num_labeled and fraction"),
    ({"num_labeled": 2, "fraction": 0.5}, "exactly one of num_labeled and fraction"),
    ({"num_labeled": 21}, r"num_labeled=21 is out of range; the dataset has 20"),
    ({"num_labeled": 0}, r"num_labeled=0 is out of range"),
    ({"num_labeled": 2.0}, r"num_labeled=2.0; expected an int"),
    ({"fraction": 0.0}, r"fraction=0.0 is out of range"),
    ({"fraction": 1.5}, r"fraction=1.5 is out of range"),
    ({"num_labeled": 2, "seed": -1}, r"seed=-1; expected a non-negative int"),
])
def test_labeled_split_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    splits.labeled_split(IDS, **kwargs)


def test_labeled_split_rejects_duplicate_and_empty_ids():
  with pytest.raises(ValueError, match=r"1 duplicate id\(s\) \(first: \['b'\]\)"):
    splits.labeled_split(["a", "b", "b"], num_labeled=1)
  with pytest.raises(ValueError, match="ids is empty"):
    splits.labeled_split([], num_labeled=1)


def test_split_file_round_trip(tmp_path):
  path = tmp_path / "sub" / "labeled.txt"
  ids = ["2007_000032", "b", "img.001"]
  splits.write_split_file(path, ids)
  assert path.read_text().startswith("#")
  assert splits.read_split_file(path) == ids


def test_read_split_file_accepts_both_line_formats(tmp_path):
  path = tmp_path / "labeled.txt"
  path.write_text(
      "# UniMatch-style list\n"
      "\n"
      "JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png\n"
      "/JPEGImages/2007_000033.JPG\tSegmentationClass/2007_000033.png\n"
      "2007_000039\n"
      "  2007_000042.jpg  \n")
  assert splits.read_split_file(path) == [
      "2007_000032", "2007_000033", "2007_000039", "2007_000042"]


def test_read_split_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
    splits.read_split_file(tmp_path / "missing.txt")
  empty = tmp_path / "empty.txt"
  empty.write_text("# nothing\n\n")
  with pytest.raises(ValueError, match="names no example"):
    splits.read_split_file(empty)
  twice = tmp_path / "twice.txt"
  twice.write_text("a\nJPEGImages/a.jpg\nb\n")
  with pytest.raises(ValueError, match=r"names 1 id\(s\) more than once \(first: \['a'\]\)"):
    splits.read_split_file(twice)


@pytest.mark.parametrize("bad_id", ["has space", "#comment", "dir/name", "x.png", ""])
def test_write_split_file_rejects_ids_that_do_not_read_back(tmp_path, bad_id):
  with pytest.raises(ValueError, match="cannot be stored in a split file"):
    splits.write_split_file(tmp_path / "s.txt", ["ok", bad_id])


def test_resolve_split_from_file(tmp_path):
  path = tmp_path / "labeled.txt"
  path.write_text("img_05\nJPEGImages/img_01.jpg SegmentationClassAug/img_01.png\n")
  labeled, unlabeled = splits.resolve_split(IDS, split_file=path)
  assert labeled == ["img_01", "img_05"]
  assert unlabeled == [i for i in IDS if i not in ("img_01", "img_05")]


def test_resolve_split_without_file_draws():
  assert (splits.resolve_split(IDS, fraction=0.25, seed=4)
          == splits.labeled_split(IDS, fraction=0.25, seed=4))


def test_resolve_split_errors(tmp_path):
  path = tmp_path / "labeled.txt"
  path.write_text("img_01\nnope_1\nnope_2\n")
  with pytest.raises(ValueError, match=r"labeled.txt' names 2 id\(s\) that are not in the "
                     r"dataset \(first: \['nope_1', 'nope_2'\]\)"):
    splits.resolve_split(IDS, split_file=path)
  with pytest.raises(ValueError, match="give either a split file"):
    splits.resolve_split(IDS, split_file=path, num_labeled=2)


def test_without_labels_never_reads_the_label():
  ids = ["x", "y"]
  source = _source(ids, lambda index: _LabelRaisingExample(ids[index]))
  unlabeled = splits.without_labels(source)
  example = unlabeled[1]
  assert example["label"] is None and example["id"] == "y"
  np.testing.assert_array_equal(example["image"], np.full((2, 3, 3), 7, np.uint8))
  assert unlabeled.ids == ids and unlabeled.name == "toy"


def test_split_source_gives_labeled_part_and_label_free_pool():
  ids = [f"e{i}" for i in range(6)]

  def load(index):
    return {"image": np.zeros((2, 2, 3), np.uint8),
            "label": np.full((2, 2), index % 3, np.uint8), "id": ids[index]}

  labeled, unlabeled = splits.split_source(_source(ids, load), num_labeled=2, seed=0)
  expected_labeled, expected_unlabeled = splits.labeled_split(ids, num_labeled=2, seed=0)
  assert list(labeled.ids) == expected_labeled
  assert list(unlabeled.ids) == expected_unlabeled
  for i, example_id in enumerate(labeled.ids):
    assert labeled[i]["label"][0, 0] == ids.index(example_id) % 3
  assert all(unlabeled[i]["label"] is None for i in range(len(unlabeled)))
  assert [unlabeled[i]["id"] for i in range(len(unlabeled))] == expected_unlabeled
