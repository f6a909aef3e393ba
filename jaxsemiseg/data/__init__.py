"""Datasets: loaders returning a :class:`SegmentationSource`, the split protocol, batching.

``load_datasets(config, workdir=...)`` is the one entry the training loop uses: it loads
the training and validation sources named by ``config.dataset``, draws (or reads) the
labeled subset, writes the labeled ids to the workdir so the run can be reproduced, and
checks every mask the run will read for labels outside ``[0, C) ∪ {255}``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import ml_collections
from tqdm import tqdm

from jaxsemiseg.data import splits
from jaxsemiseg.data.source import (IGNORE_INDEX, SegmentationSource, check_example,
                                    source_from_arrays)

LABELED_IDS_FILE = "labeled_ids.txt"
TFDS_NAMES = ("oxford_iiit_pet", "cityscapes", "scene_parse150")


@dataclasses.dataclass(frozen=True)
class Datasets:
  """The three sources of a run."""

  labeled: SegmentationSource
  unlabeled: SegmentationSource
  val: SegmentationSource

  @property
  def num_classes(self) -> int:
    return self.val.num_classes

  @property
  def class_names(self) -> Sequence[str]:
    return self.val.class_names


def load_source(config: ml_collections.ConfigDict, split: str) -> SegmentationSource:
  """The source for ``split`` of the dataset described by ``config.dataset``."""
  name = config.name
  if name == "shapes" and config.in_memory:
    from jaxsemiseg.data import bundled  # pylint: disable=g-import-not-at-top
    images, labels, ids = bundled.render_split(split, build=config.builder_config or "default")
    return source_from_arrays(f"shapes:{split}", images, labels,
                              class_names=bundled.CLASS_NAMES, ids=ids)
  if name == "shapes":
    from jaxsemiseg.data import shapes_builder  # pylint: disable=g-import-not-at-top
    return shapes_builder.load_shapes(split, data_dir=config.data_dir or None,
                                      config=config.builder_config or "default")
  if name in TFDS_NAMES:
    from jaxsemiseg.data import tfds_sources  # pylint: disable=g-import-not-at-top
    return tfds_sources.load_tfds(name, split, data_dir=config.data_dir or None,
                                  manual_dir=config.manual_dir or None)
  from jaxsemiseg.data import folder  # pylint: disable=g-import-not-at-top
  if not config.root:
    raise ValueError(f"config.dataset.root is empty; dataset {name!r} needs its directory.")
  if name == "voc":
    return folder.load_voc(config.root, split)
  if name == "folder":
    if config.num_classes <= 0:
      raise ValueError("config.dataset.num_classes must be set (> 0) for a folder dataset.")
    return folder.load_folder(os.path.join(config.root, split), num_classes=config.num_classes)
  raise ValueError(f"config.dataset.name={name!r} is not a known dataset.")


def load_datasets(config: ml_collections.ConfigDict, *, workdir: str | None = None) -> Datasets:
  """Loads the labeled, unlabeled and validation sources of a run.

  Args:
    config: the run config (reads ``config.dataset``).
    workdir: where to write ``labeled_ids.txt`` (process 0 only); None = don't write.

  Returns:
    The three sources; the unlabeled one never returns masks.
  """
  dataset = config.dataset
  train = load_source(dataset, dataset.train_split)
  val = load_source(dataset, dataset.val_split)
  if dataset.num_classes > 0 and dataset.num_classes != val.num_classes:
    raise ValueError(
        f"config.dataset.num_classes={dataset.num_classes} but dataset {val.name!r} has "
        f"{val.num_classes} classes; set it to -1 to use the dataset's count.")
  return split_datasets(config, train, val, workdir=workdir)


def split_datasets(config: ml_collections.ConfigDict, train: SegmentationSource,
                   val: SegmentationSource, *, workdir: str | None = None) -> Datasets:
  """Splits ``train`` into labeled and unlabeled parts as ``config.dataset`` says.

  Writes the labeled ids to ``workdir`` (process 0) and, with ``check_labels``, scans the
  labeled and validation masks (the loop also decodes the unlabeled pool once, for
  methods that use it: ``check_readable``).
  """
  dataset = config.dataset
  if dataset.split_file:
    split_args = dict(split_file=dataset.split_file)
  elif dataset.num_labeled > 0:
    split_args = dict(num_labeled=dataset.num_labeled)
  else:
    split_args = dict(fraction=dataset.labeled_fraction)
  labeled, unlabeled = splits.split_source(train, seed=dataset.split_seed, **split_args)
  if workdir is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    splits.write_split_file(os.path.join(workdir, LABELED_IDS_FILE), labeled.ids)
  if dataset.check_labels:
    check_labels(labeled)
    check_labels(val)
  return Datasets(labeled=labeled, unlabeled=unlabeled, val=val)


def check_labels(source: SegmentationSource) -> None:
  """Reads every example of ``source`` and raises on the first malformed one."""
  for index in tqdm(range(len(source)), desc=f"checking {source.name}", leave=False,
                    disable=len(source) < 1000 or jax.process_index() != 0):
    check_example(source.load(index), num_classes=source.num_classes, source=source.name)


def check_readable(source: SegmentationSource) -> None:
  """Reads every example of ``source`` once, so an undecodable file fails before training."""
  for index in tqdm(range(len(source)), desc=f"reading {source.name}", leave=False,
                    disable=len(source) < 1000 or jax.process_index() != 0):
    source.load(index)


__all__ = ["Datasets", "IGNORE_INDEX", "SegmentationSource", "check_labels", "check_readable",
           "load_datasets", "load_source", "source_from_arrays", "split_datasets"]
