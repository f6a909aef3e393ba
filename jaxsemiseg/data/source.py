"""The random-access dataset interface every loader returns, and host-side validation.

A *source* is what the input pipeline reads: a sized, indexable collection of examples,
each a dict ``{"image": uint8[H, W, 3], "label": uint8[H, W], "id": str}``. TFDS
datasets, image/mask folders, the Pascal VOC layout and the bundled dataset all return
one, so the split protocol, augmentation and batching are written once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class SegmentationSource:
  """Random access to segmentation examples.

  Attributes:
    name: a human-readable name, used in error messages (e.g. ``"voc:train_aug"``).
    ids: one unique string id per example, in a fixed order.
    num_classes: the number of classes C; valid labels are ``[0, C)`` and 255 (ignore).
    class_names: C names, for logs and plots.
    load: ``load(i) -> {"image", "label", "id"}`` for index ``i`` of ``ids``; ``label``
      is ``None`` for an unlabeled example.
  """

  name: str
  ids: Sequence[str]
  num_classes: int
  class_names: Sequence[str]
  load: Callable[[int], dict]

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index: int) -> dict:
    example = self.load(index)
    check_example(example, num_classes=self.num_classes, source=self.name)
    return example

  def subset(self, ids: Sequence[str]) -> "SegmentationSource":
    """The examples named by ``ids`` (in that order); raises on an unknown id."""
    position = {example_id: i for i, example_id in enumerate(self.ids)}
    missing = [example_id for example_id in ids if example_id not in position]
    if missing:
      raise ValueError(
          f"{len(missing)} id(s) are not in dataset {self.name!r} (first: {missing[:3]}); "
          "check that the split file belongs to this dataset.")
    indices = [position[example_id] for example_id in ids]
    return dataclasses.replace(
        self, ids=list(ids), load=lambda i: self.load(indices[i]))


def check_example(example: dict, *, num_classes: int, source: str) -> None:
  """Raises ValueError if an example's image or label is malformed.

  Checks: image is ``[H, W, 3]``; label (when present) is ``[H, W]`` with the same H, W;
  every label value is in ``[0, num_classes)`` or is 255.
  """
  image, label, example_id = example["image"], example.get("label"), example.get("id", "?")
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
        f"{source}: image {example_id!r} has shape {image.shape}; expected [H, W, 3] (RGB).")
  if label is None:
    return
  if label.shape != image.shape[:2]:
    raise ValueError(
        f"{source}: image {example_id!r} is {image.shape[0]}x{image.shape[1]} but its mask is "
        f"{'x'.join(map(str, label.shape))}; image and mask must have the same size.")
  # Every training and validation example passes here; a histogram is ~3x faster than
  # np.unique on uint8 masks.
  values = (np.flatnonzero(np.bincount(label.ravel(), minlength=256))
            if label.dtype == np.uint8 else np.unique(label))
  bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_INDEX)]
  if bad.size:
    raise ValueError(
        f"{source}: mask {example_id!r} has label value(s) {bad.tolist()} outside "
        f"[0, {num_classes}) and not {IGNORE_INDEX} (ignore). Fix the mask or set "
        "config.dataset.num_classes to the right class count.")


def source_from_arrays(name: str, images: np.ndarray, labels: np.ndarray | None, *,
                       class_names: Sequence[str],
                       ids: Sequence[str] | None = None) -> SegmentationSource:
  """A source over in-memory arrays: uint8 ``[N, H, W, 3]`` images, ``[N, H, W]`` labels.

  Ids are ``ids`` or ``f"{name}{index:06d}"``; ``labels=None`` gives an unlabeled source.
  """
  ids = list(ids) if ids is not None else [f"{name}{index:06d}" for index in range(len(images))]

  def load(index: int) -> dict:
    return {"image": images[index], "label": None if labels is None else labels[index],
            "id": ids[index]}

  return SegmentationSource(name=name, ids=ids, num_classes=len(class_names),
                            class_names=tuple(class_names), load=load)
