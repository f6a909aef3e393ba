"""Tests for jaxsemiseg.data.pipeline."""

import collections

import numpy as np
import pytest

from jaxsemiseg.data import pipeline
from jaxsemiseg.data.source import SegmentationSource

NUM_CLASSES = 8


def _source(images, labels, name="toy"):
  ids = [f"id{i}" for i in range(len(images))]

  def load(index):
    return {"image": images[index], "label": labels[index], "id": ids[index]}

  return SegmentationSource(name=name, ids=ids, num_classes=NUM_CLASSES,
                            class_names=[str(c) for c in range(NUM_CLASSES)], load=load)


def _indexed_source(size, side=6, name="toy"):
  """Example i is a constant image of value 10 * i + 5 and a constant label i % 8."""
  images = [np.full((side, side, 3), 10 * i + 5, np.uint8) for i in range(size)]
  labels = [np.full((side, side), i % NUM_CLASSES, np.uint8) for i in range(size)]
  return _source(images, labels, name=name)


def _example_indices(images):
  """Recovers the example indices of a batch of constant ``_indexed_source`` images."""
  return [int(round(v * 255 - 5)) // 10 for v in images[:, 0, 0, 0]]


def _identity_kwargs(side=6):
  return {"crop_size": side, "scale_range": (1.0, 1.0), "flip": False, "num_workers": 2}


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _column_coded(height, width):
  """An image whose column c has value 30 * c and a label whose column c is c."""
  columns = np.arange(width)
  image = np.broadcast_to((30 * columns)[None, :, None], (height, width, 3)).astype(np.uint8)
  label = np.broadcast_to(columns[None, :], (height, width)).astype(np.uint8)
  return image, label


def test_weak_augment_at_scale_one_without_flip_is_identity():
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  label = np.random.default_rng(1).integers(0, 5, (8, 8), dtype=np.uint8)
  out_image, out_label = pipeline.weak_augment(
      np.random.default_rng(2), image, label, crop_size=8, scale_range=(1.0, 1.0),
      flip=False)
  np.testing.assert_array_equal(out_image, image)
  np.testing.assert_array_equal(out_label, label)


def test_weak_augment_flips_and_crops_image_and_mask_together():
  image, label = _column_coded(9, 8)
  orientations = set()
  for seed in range(24):
    out_image, out_label = pipeline.weak_augment(
        np.random.default_rng(seed), image, label, crop_size=5, scale_range=(1.0, 1.0))
    assert out_image.shape == (5, 5, 3) and out_label.shape == (5, 5)
    np.testing.assert_array_equal(out_image[..., 0], 30 * out_label.astype(np.int64))
    # Columns stay consecutive: a crop of width 5, maybe reversed.
    step = int(out_label[0, 1]) - int(out_label[0, 0])
    np.testing.assert_array_equal(out_label[0], out_label[0, 0] + step * np.arange(5))
    orientations.add(step)
  assert orientations == {1, -1}


@pytest.mark.parametrize("scale, crop, valid_shape", [
    (0.5, 10, (4, 3)),    # 8x6 -> long side 4, short int(6 * 4 / 8 + 0.5) = 3.
    (2.0, 16, (16, 12)),  # 8x6 -> 16x12, padded on the right to 16x16.
])
def test_weak_augment_scales_the_long_side_and_pads_bottom_right(scale, crop, valid_shape):
  image = np.full((8, 6, 3), 200, np.uint8)
  label = np.full((8, 6), 3, np.uint8)
  out_image, out_label = pipeline.weak_augment(
      np.random.default_rng(0), image, label, crop_size=crop, scale_range=(scale, scale),
      flip=False)
  expected_label = np.full((crop, crop), 255, np.uint8)
  expected_label[:valid_shape[0], :valid_shape[1]] = 3
  np.testing.assert_array_equal(out_label, expected_label)
  np.testing.assert_array_equal(out_image[..., 0], np.where(expected_label == 3, 200, 0))


def test_weak_augment_draws_the_long_side_uniformly_over_the_integer_range():
  image = np.zeros((8, 8, 3), np.uint8)
  label = np.zeros((8, 8), np.uint8)
  sides = collections.Counter()
  for seed in range(300):
    _, out_label = pipeline.weak_augment(
        np.random.default_rng(seed), image, label, crop_size=8, scale_range=(0.5, 1.0),
        flip=False)
    sides[int((out_label[0] != 255).sum())] += 1
  assert set(sides) == {4, 5, 6, 7, 8}
  assert min(sides.values()) > 30


def test_weak_augment_keeps_mask_values_and_supports_no_label():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
  label = rng.choice(np.array([0, 3, 7], np.uint8), size=(13, 11))
  for seed in range(10):
    out_image, out_label = pipeline.weak_augment(
        np.random.default_rng(seed), image, label, crop_size=12)
    assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8
    assert set(np.unique(out_label)) <= {0, 3, 7, 255}
    # Padding (the only 255s) is black in the image.
    assert np.all(out_image[out_label == 255] == 0)
    image_only, no_label = pipeline.weak_augment(
        np.random.default_rng(seed), image, None, crop_size=12)
    assert no_label is None
    np.testing.assert_array_equal(image_only, out_image)


@pytest.mark.parametrize("kwargs, match", [
    ({"crop_size": 0}, r"crop_size=0; expected an int >= 1"),
    ({"crop_size": 4, "scale_range": (2.0, 1.0)}, r"scale_range=\(2.0, 1.0\); expected"),
    ({"crop_size": 4, "label": np.zeros((3, 3), np.uint8)}, r"label has dtype uint8 and "
     r"shape \(3, 3\); expected uint8 \[4, 4\]"),
    ({"crop_size": 4, "image": np.zeros((4, 4, 3), np.float32)}, "image has dtype float32"),
])
def test_weak_augment_rejects_bad_input(kwargs, match):
  args = {"image": np.zeros((4, 4, 3), np.uint8), "label": np.zeros((4, 4), np.uint8)}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    pipeline.weak_augment(np.random.default_rng(0), **args)


def test_train_batches_shapes_and_dtypes():
  stream = pipeline.train_batches(
      _indexed_source(5, side=7), _indexed_source(9, side=9), batch_size=2,
      unlabeled_batch_size=4, crop_size=6, seed=0, num_unlabeled_views=2, num_workers=2)
  batch = next(stream)
  assert set(batch) == {"image", "label", "image_u", "valid_u", "image_u2", "valid_u2"}
  expected = {"image": ((2, 6, 6, 3), np.float32), "label": ((2, 6, 6), np.int32),
              "image_u": ((4, 6, 6, 3), np.float32), "valid_u": ((4, 6, 6), np.bool_),
              "image_u2": ((4, 6, 6, 3), np.float32), "valid_u2": ((4, 6, 6), np.bool_)}
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert set(np.unique(batch["label"])) <= set(range(NUM_CLASSES)) | {255}


def test_train_batches_visit_every_example_once_per_epoch():
  stream = pipeline.train_batches(_indexed_source(5), batch_size=2, seed=3,
                                  **_identity_kwargs())
  order = [i for batch in _take(stream, 5) for i in _example_indices(batch["image"])]
  assert sorted(order[:5]) == sorted(order[5:]) == list(range(5))
  assert order[:5] != order[5:]
  batch = next(pipeline.train_batches(_indexed_source(5), batch_size=2, seed=3,
                                      **_identity_kwargs()))
  # Identity augmentation: the label is the example's own.
  np.testing.assert_array_equal(batch["label"][:, 0, 0],
                                [i % NUM_CLASSES for i in _example_indices(batch["image"])])


def test_every_step_and_slot_draws_its_own_augmentation():
  image, label = _column_coded(6, 8)
  stream = pipeline.train_batches(_source([image], [label]), batch_size=4, crop_size=5,
                                  seed=0, scale_range=(1.0, 1.0), num_workers=2)
  # The one example fills every slot; its crop's first row says where the crop went.
  first_rows = [tuple(row) for batch in _take(stream, 4) for row in batch["label"][:, 0, :]]
  assert len(set(first_rows[:4])) > 1
  assert len({rows for rows in zip(*[iter(first_rows)] * 4)}) == 4


def test_train_batches_are_deterministic_and_seeded():
  def first_batches(seed):
    return _take(pipeline.train_batches(
        _indexed_source(6, side=8), _indexed_source(7, side=8), batch_size=2, crop_size=6,
        seed=seed, num_workers=3), 3)

  first, again, other = first_batches(1), first_batches(1), first_batches(2)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))


def test_start_step_resumes_the_exact_stream():
  kwargs = dict(batch_size=4, unlabeled_batch_size=2, crop_size=5, seed=7,
                num_unlabeled_views=2, num_workers=2)
  labeled, unlabeled = _indexed_source(3, side=7), _indexed_source(5, side=7)
  full = _take(pipeline.train_batches(labeled, unlabeled, **kwargs), 6)
  resumed = _take(pipeline.train_batches(labeled, unlabeled, start_step=3, **kwargs), 3)
  for a, b in zip(full[3:], resumed):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_processes_read_disjoint_shards_of_the_global_batch():
  kwargs = dict(batch_size=4, unlabeled_batch_size=6, crop_size=5, seed=0,
                num_unlabeled_views=2, num_workers=2)
  labeled, unlabeled = _indexed_source(7, side=8), _indexed_source(9, side=8)
  single = _take(pipeline.train_batches(labeled, unlabeled, **kwargs), 3)
  shards = [_take(pipeline.train_batches(labeled, unlabeled, process_index=p,
                                         process_count=2, **kwargs), 3) for p in (0, 1)]
  for step, global_batch in enumerate(single):
    assert shards[0][step]["image"].shape[0] == 2
    assert shards[0][step]["image_u"].shape[0] == 3
    for key, value in global_batch.items():
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]), value)


def test_unlabeled_views_are_independent_shuffles_and_labels_are_never_read():
  class LabelRaisingExample(dict):
    def __getitem__(self, key):
      if key == "label":
        raise AssertionError("an unlabeled mask was read")
      return super().__getitem__(key)

    def get(self, key, default=None):
      return self[key] if key in self else default

  pool = _indexed_source(8)
  pool_with_secret_labels = SegmentationSource(
      name="secret", ids=pool.ids, num_classes=NUM_CLASSES, class_names=pool.class_names,
      load=lambda i: LabelRaisingExample(pool.load(i)))
  stream = pipeline.train_batches(
      _indexed_source(2), pool_with_secret_labels, batch_size=2, unlabeled_batch_size=4,
      seed=0, num_unlabeled_views=2, **_identity_kwargs())
  batches = _take(stream, 2)
  first = [i for b in batches for i in _example_indices(b["image_u"])]
  second = [i for b in batches for i in _example_indices(b["image_u2"])]
  assert sorted(first) == sorted(second) == list(range(8))
  assert first != second
  assert all(b["valid_u"].all() and b["valid_u2"].all() for b in batches)


def test_valid_u_marks_crop_padding():
  stream = pipeline.train_batches(
      _indexed_source(2, side=8), _indexed_source(3, side=8), batch_size=2, crop_size=8,
      seed=0, scale_range=(0.5, 0.5), flip=False, num_workers=2)
  batch = next(stream)
  expected = np.zeros((8, 8), bool)
  expected[:4, :4] = True
  for valid, image in zip(batch["valid_u"], batch["image_u"]):
    np.testing.assert_array_equal(valid, expected)
    assert np.all(image[~valid] == 0) and np.all(image[valid] > 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 3, "process_count": 2},
     r"batch_size=3 is not divisible by process_count=2"),
    ({"unlabeled_batch_size": 3, "process_count": 2},
     r"unlabeled_batch_size=3 is not divisible"),
    ({"process_index": 2, "process_count": 2}, r"process_index=2 with process_count=2"),
    ({"num_unlabeled_views": 3}, r"num_unlabeled_views=3; expected 1 or 2"),
    ({"unlabeled": None, "num_unlabeled_views": 2}, "needs an unlabeled source"),
    ({"unlabeled": _indexed_source(0)}, "is empty; pass unlabeled=None"),
    ({"seed": -1}, r"seed=-1; expected an int >= 0"),
    ({"start_step": 1.5}, r"start_step=1.5; expected an int"),
])
def test_train_batches_rejects_bad_arguments(kwargs, match):
  args = dict(labeled=_indexed_source(4), unlabeled=_indexed_source(4), batch_size=2,
              crop_size=4, seed=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    pipeline.train_batches(**args)


def test_labeled_example_without_mask_raises():
  source = _source([np.zeros((4, 4, 3), np.uint8)], [None], name="half")
  stream = pipeline.train_batches(source, batch_size=1, crop_size=4, seed=0)
  with pytest.raises(ValueError, match=r"half: example 'id0' of the labeled source has no "
                     "mask"):
    next(stream)


EVAL_SIZES = [(4, 5), (6, 3), (5, 5), (3, 7), (4, 4)]


def _eval_source():
  images = [np.full((h, w, 3), 51 * (i + 1), np.uint8) for i, (h, w) in enumerate(EVAL_SIZES)]
  labels = [np.full((h, w), i, np.uint8) for i, (h, w) in enumerate(EVAL_SIZES)]
  return _source(images, labels)


def test_eval_batches_pad_each_batch_to_its_largest_image():
  batches = list(pipeline.eval_batches(_eval_source(), batch_size=2, num_workers=2))
  assert [b["image"].shape for b in batches] == [(2, 6, 5, 3), (2, 5, 7, 3), (2, 4, 4, 3)]
  assert [b["id"] for b in batches] == [["id0", "id1"], ["id2", "id3"], ["id4", ""]]
  first = batches[0]
  assert first["image"].dtype == np.float32 and first["label"].dtype == np.int32
  expected_label = np.full((6, 5), 255)
  expected_label[:6, :3] = 1
  np.testing.assert_array_equal(first["label"][1], expected_label)
  np.testing.assert_allclose(first["image"][1, ..., 0], np.where(expected_label == 1, 0.4, 0))
  assert np.all(batches[2]["label"][1] == 255) and np.all(batches[2]["image"][1] == 0)
  counted = sum(int((b["label"] != 255).sum()) for b in batches)
  assert counted == sum(h * w for h, w in EVAL_SIZES)
  per_class = np.bincount(
      np.concatenate([b["label"][b["label"] != 255] for b in batches]), minlength=5)
  np.testing.assert_array_equal(per_class, [h * w for h, w in EVAL_SIZES])


def test_eval_batches_shard_across_processes_with_equal_counts():
  shards = [list(pipeline.eval_batches(_eval_source(), batch_size=4, process_index=p,
                                       process_count=2, pad_to=(6, 8), num_workers=2))
            for p in (0, 1)]
  assert len(shards[0]) == len(shards[1]) == 2
  ids = [i for k in range(2) for p in (0, 1) for i in shards[p][k]["id"]]
  assert ids == ["id0", "id1", "id2", "id3", "id4", "", "", ""]
  for batch in shards[0] + shards[1]:
    assert batch["image"].shape == (2, 6, 8, 3) and batch["label"].shape == (2, 6, 8)
  assert np.all(shards[1][1]["label"] == 255)
  counted = sum(int((b["label"] != 255).sum()) for b in shards[0] + shards[1])
  assert counted == sum(h * w for h, w in EVAL_SIZES)


def test_eval_batches_fill_missing_labels_with_ignore():
  source = _source([np.zeros((3, 3, 3), np.uint8)], [None])
  (batch,) = pipeline.eval_batches(source, batch_size=1, pad_to=4)
  assert batch["label"].shape == (1, 4, 4) and np.all(batch["label"] == 255)


def test_eval_batches_errors():
  with pytest.raises(ValueError, match=r"pad_to=None with process_count=2.*pad_to="):
    pipeline.eval_batches(_eval_source(), batch_size=2, process_count=2)
  with pytest.raises(ValueError, match=r"batch_size=3 is not divisible by process_count=2"):
    pipeline.eval_batches(_eval_source(), batch_size=3, process_count=2, pad_to=8)
  with pytest.raises(ValueError, match=r"pad_to=\(0, 4\); expected a positive int"):
    pipeline.eval_batches(_eval_source(), batch_size=2, pad_to=(0, 4))
  too_small = pipeline.eval_batches(_eval_source(), batch_size=2, pad_to=(5, 5))
  with pytest.raises(ValueError, match=r"image 'id1' is 6x3, larger than pad_to=\(5, 5\)"):
    next(too_small)


def test_streams_can_be_closed_early():
  with pipeline.train_batches(_indexed_source(4), batch_size=2, seed=0,
                              **_identity_kwargs()) as stream:
    next(stream)
  with pytest.raises(StopIteration):
    next(stream)
  stream = pipeline.eval_batches(_eval_source(), batch_size=2, num_workers=1, prefetch=0)
  assert len(list(stream)) == 3
  with pytest.raises(StopIteration):
    next(stream)
