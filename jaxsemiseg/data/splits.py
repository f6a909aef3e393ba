"""The labeled/unlabeled split protocol: draw, save, read and apply a labeled subset.

Semi-supervised benchmarks label a fixed subset of a training set (e.g. 92 of the 1464
Pascal VOC fine images) and treat the rest as the unlabeled pool. A split is either drawn
here (``labeled_split``: deterministic in the seed, independent of the order of the ids)
or read from a list file, including the public UniMatch/U2PL/CPS split files.

List files hold one example per line, in either of two formats::

  2007_000032
  JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png

Blank lines and lines starting with ``#`` are skipped. A line's id is its first token;
when that token is a path (it holds a ``/``) or ends in an image suffix, the id is the
file name without directory and suffix.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from jaxsemiseg.data.source import SegmentationSource

# File suffixes that name image or mask files, both in folder scans and in list files.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def labeled_split(
    ids: Sequence[str],
    *,
    num_labeled: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
  """Draws a labeled subset of ``ids``; the rest is the unlabeled pool.

  The ids are sorted before the draw, so the split depends only on the set of ids and
  the seed. The labeled set is a prefix of one seeded permutation, so for a fixed seed
  a smaller labeled set is contained in every larger one (1/16 inside 1/8 inside 1/4).

  Args:
    ids: the unique example ids of the training set.
    num_labeled: how many examples are labeled, in ``[1, len(ids)]``.
    fraction: the labeled fraction in ``(0, 1]``; the count is ``fraction * len(ids)``
      rounded half up, and at least 1.
    seed: the seed of the draw.

  Returns:
    ``(labeled_ids, unlabeled_ids)``, each sorted, disjoint, together all of ``ids``.

  Raises:
    ValueError: if not exactly one of ``num_labeled`` and ``fraction`` is given, if
      either is out of range, or if ``ids`` is empty or holds duplicates.
  """
  sorted_ids = _sorted_unique(ids)
  count = _labeled_count(len(sorted_ids), num_labeled=num_labeled, fraction=fraction)
  _check_seed(seed)
  order = np.random.default_rng(seed).permutation(len(sorted_ids))
  is_labeled = np.zeros(len(sorted_ids), dtype=bool)
  is_labeled[order[:count]] = True
  labeled = [i for i, flag in zip(sorted_ids, is_labeled) if flag]
  unlabeled = [i for i, flag in zip(sorted_ids, is_labeled) if not flag]
  return labeled, unlabeled


def write_split_file(path: str | os.PathLike, labeled_ids: Sequence[str]) -> None:
  """Writes ``labeled_ids`` to ``path``, one id per line, after a ``#`` header line.

  Args:
    path: the file to write; missing parent directories are created.
    labeled_ids: the ids to write, in order.

  Raises:
    ValueError: if an id would not read back unchanged (empty, holds whitespace or
      ``/``, starts with ``#`` or ends in an image suffix).
  """
  unreadable = [i for i in labeled_ids if _id_from_line(str(i)) != i]
  if unreadable:
    raise ValueError(
        f"labeled_ids: {len(unreadable)} id(s) cannot be stored in a split file "
        f"(first: {unreadable[:3]}); ids must be non-empty, hold no whitespace or '/', "
        f"not start with '#' and not end in one of {IMAGE_SUFFIXES}.")
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "w") as f:
    f.write(f"# jaxsemiseg labeled split: {len(labeled_ids)} ids\n")
    f.writelines(f"{i}\n" for i in labeled_ids)


def read_split_file(path: str | os.PathLike) -> list[str]:
  """Reads the ids of a list file (either line format, see the module docstring).

  Args:
    path: the list file.

  Returns:
    The ids in file order.

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: if the file names no id or names one twice.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"split file {os.fspath(path)!r} does not exist; expected a text file with one id "
        "(or one 'image_path mask_path' pair) per line.")
  with open(path) as f:
    ids = [i for i in map(_id_from_line, f) if i is not None]
  if not ids:
    raise ValueError(f"split file {os.fspath(path)!r} names no example.")
  duplicates = sorted(i for i, count in collections.Counter(ids).items() if count > 1)
  if duplicates:
    raise ValueError(
        f"split file {os.fspath(path)!r} names {len(duplicates)} id(s) more than once "
        f"(first: {duplicates[:3]}); each example may be listed once.")
  return ids


def resolve_split(
    ids: Sequence[str],
    *,
    split_file: str | os.PathLike | None = None,
    num_labeled: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
  """The labeled and unlabeled ids of a training set, from a split file or a draw.

  Args:
    ids: the unique example ids of the training set.
    split_file: a list file naming the labeled ids; when given, ``num_labeled`` and
      ``fraction`` must not be.
    num_labeled: see ``labeled_split``.
    fraction: see ``labeled_split``.
    seed: see ``labeled_split``.

  Returns:
    ``(labeled_ids, unlabeled_ids)``, each sorted; the unlabeled pool is every id that
    is not labeled.

  Raises:
    ValueError: if the split file names ids that are not in ``ids``, if it is given
      together with ``num_labeled`` or ``fraction``, or as raised by ``labeled_split``.
    FileNotFoundError: if ``split_file`` does not exist.
  """
  if split_file is None:
    return labeled_split(ids, num_labeled=num_labeled, fraction=fraction, seed=seed)
  if num_labeled is not None or fraction is not None:
    raise ValueError(
        f"split_file={os.fspath(split_file)!r} was given together with "
        f"num_labeled={num_labeled!r} / fraction={fraction!r}; give either a split file "
        "or a labeled count/fraction, not both.")
  sorted_ids = _sorted_unique(ids)
  labeled = set(read_split_file(split_file))
  unknown = sorted(labeled.difference(sorted_ids))
  if unknown:
    raise ValueError(
        f"split file {os.fspath(split_file)!r} names {len(unknown)} id(s) that are not in "
        f"the dataset (first: {unknown[:3]}); check that the file belongs to this dataset "
        "and split.")
  return sorted(labeled), [i for i in sorted_ids if i not in labeled]


def without_labels(source: SegmentationSource) -> SegmentationSource:
  """A view of ``source`` whose examples carry no label.

  The unlabeled pool of a split must not leak its masks into training. The returned
  source's ``load`` copies only ``"image"`` and ``"id"`` from the wrapped example and
  never reads its ``"label"``.

  Args:
    source: any source.

  Returns:
    A source with the same ids whose ``load(i)["label"]`` is ``None``.
  """
  def load(index: int) -> dict:
    example = source.load(index)
    return {"image": example["image"], "label": None, "id": example["id"]}

  return dataclasses.replace(source, load=load)


def split_source(
    source: SegmentationSource,
    *,
    split_file: str | os.PathLike | None = None,
    num_labeled: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> tuple[SegmentationSource, SegmentationSource]:
  """Splits a training source into its labeled part and its label-free unlabeled pool.

  Args:
    source: the training set.
    split_file: see ``resolve_split``.
    num_labeled: see ``resolve_split``.
    fraction: see ``resolve_split``.
    seed: see ``resolve_split``.

  Returns:
    ``(labeled, unlabeled)``; ``unlabeled`` is wrapped by ``without_labels`` and is
    empty when every example is labeled.

  Raises:
    ValueError, FileNotFoundError: as ``resolve_split``.
  """
  labeled_ids, unlabeled_ids = resolve_split(
      source.ids, split_file=split_file, num_labeled=num_labeled, fraction=fraction,
      seed=seed)
  return source.subset(labeled_ids), without_labels(source.subset(unlabeled_ids))


def _id_from_line(line: str) -> str | None:
  """The example id of one list-file line, or None for a blank or comment line."""
  tokens = line.split()
  if not tokens or tokens[0].startswith("#"):
    return None
  token = tokens[0]
  if "/" not in token and not token.lower().endswith(IMAGE_SUFFIXES):
    return token
  name = token.rsplit("/", 1)[-1]
  stem, suffix = os.path.splitext(name)
  return stem if suffix.lower() in IMAGE_SUFFIXES else name


def _sorted_unique(ids: Sequence[str]) -> list[str]:
  sorted_ids = sorted(ids)
  if not sorted_ids:
    raise ValueError("ids is empty; a split needs at least one example.")
  duplicates = sorted({a for a, b in zip(sorted_ids, sorted_ids[1:]) if a == b})
  if duplicates:
    raise ValueError(
        f"ids holds {len(duplicates)} duplicate id(s) (first: {duplicates[:3]}); "
        "example ids must be unique.")
  return sorted_ids


def _labeled_count(size: int, *, num_labeled: int | None, fraction: float | None) -> int:
  if (num_labeled is None) == (fraction is None):
    raise ValueError(
        f"give exactly one of num_labeled and fraction; got num_labeled={num_labeled!r}, "
        f"fraction={fraction!r}.")
  if num_labeled is not None:
    if isinstance(num_labeled, bool) or not isinstance(num_labeled, (int, np.integer)):
      raise ValueError(f"num_labeled={num_labeled!r}; expected an int.")
    if not 1 <= num_labeled <= size:
      raise ValueError(
          f"num_labeled={num_labeled} is out of range; the dataset has {size} examples, "
          f"so expected 1 <= num_labeled <= {size}.")
    return int(num_labeled)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction={fraction!r} is out of range; expected 0 < fraction <= 1.")
  return max(1, math.floor(fraction * size + 0.5))


def _check_seed(seed: int) -> None:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}; expected a non-negative int.")
