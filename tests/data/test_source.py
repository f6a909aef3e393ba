import numpy as np
import pytest

from jaxsemiseg.data.source import SegmentationSource, check_example


def _example(label, image_shape=(4, 5, 3)):
  return {"image": np.zeros(image_shape, np.uint8), "label": label, "id": "ex1"}


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_valid_labels_pass(dtype):
  label = np.array([[0, 1, 2, 255, 0]] * 4, dtype)
  check_example(_example(label), num_classes=3, source="t")
  check_example(_example(None), num_classes=3, source="t")


@pytest.mark.parametrize("dtype,bad", [(np.uint8, 3), (np.uint8, 254), (np.int32, -1),
                                       (np.int32, 300)])
def test_out_of_range_label_names_value_and_example(dtype, bad):
  label = np.zeros((4, 5), dtype)
  label[1, 2] = bad
  with pytest.raises(ValueError, match=rf"'ex1' has label value\(s\) \[{bad}\] outside \[0, 3\)"):
    check_example(_example(label), num_classes=3, source="t")


def test_size_mismatch_and_bad_image():
  with pytest.raises(ValueError, match="4x5 but its mask is 4x4"):
    check_example(_example(np.zeros((4, 4), np.uint8)), num_classes=3, source="t")
  with pytest.raises(ValueError, match=r"expected \[H, W, 3\]"):
    check_example(_example(None, image_shape=(4, 5)), num_classes=3, source="t")


def test_subset_orders_and_rejects_unknown_ids():
  data = {f"id{i}": np.full((2, 2), i, np.uint8) for i in range(3)}
  ids = sorted(data)
  source = SegmentationSource(
      name="t", ids=ids, num_classes=3, class_names=("a", "b", "c"),
      load=lambda i: {"image": np.zeros((2, 2, 3), np.uint8), "label": data[ids[i]],
                      "id": ids[i]})
  subset = source.subset(["id2", "id0"])
  assert [subset[i]["id"] for i in range(2)] == ["id2", "id0"]
  assert subset[0]["label"][0, 0] == 2
  with pytest.raises(ValueError, match="not in dataset 't'"):
    source.subset(["id9"])
