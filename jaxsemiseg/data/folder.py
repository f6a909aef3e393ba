"""Image/mask folders and the Pascal VOC 2012 layout, as ``SegmentationSource``s.

Files are decoded lazily, one example per ``load(i)`` call, with Pillow. Masks are read
as raw values: a palette PNG gives its palette indices (VOC's colour masks keep their
class ids), a grayscale PNG its gray levels. EXIF orientation is not applied to images,
because masks carry none and the two must stay aligned.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from jaxsemiseg.data.source import SegmentationSource
from jaxsemiseg.data.splits import IMAGE_SUFFIXES, read_split_file

VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor")

# Where the Pascal VOC devkit, the SBD-augmented release (DeepLab) and mmsegmentation's
# converter put their list files, in the order they are searched.
_VOC_LIST_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", "SegmentationClassAug")

# Mask modes that hold one class id per pixel; colour modes would need a palette lookup.
_MASK_MODES = ("P", "L", "1", "I", "I;16")


def load_folder(
    root: str | os.PathLike,
    *,
    num_classes: int,
    image_dir: str = "images",
    mask_dir: str = "masks",
    class_names: Sequence[str] | None = None,
    require_masks: bool = True,
) -> SegmentationSource:
  """A dataset stored as ``root/<image_dir>/<stem>.<ext>`` + ``root/<mask_dir>/<stem>.png``.

  Images and masks are matched by file stem; masks are PNG (palette or grayscale) whose
  values are class ids in ``[0, num_classes)`` or 255 (ignore). Masks without an image
  are skipped.

  Args:
    root: the dataset directory.
    num_classes: the number of classes C.
    image_dir: the image sub-directory of ``root``.
    mask_dir: the mask sub-directory of ``root``.
    class_names: C class names; defaults to ``class_0 ... class_{C-1}``.
    require_masks: if False, images without a mask (or no mask directory at all) are
      allowed and load with ``label=None``: an unlabeled pool or predict mode.

  Returns:
    A source whose ids are the sorted image stems.

  Raises:
    FileNotFoundError: if a directory is missing or holds no image.
    ValueError: if an image has no mask (and ``require_masks``), two images share a
      stem, or ``num_classes`` / ``class_names`` are invalid.
  """
  names = _class_names(num_classes, class_names)
  layout = (f"expected {os.path.join(root, image_dir, '<stem>.jpg|png|...')} and "
            f"{os.path.join(root, mask_dir, '<stem>.png')}")
  image_root = os.path.join(root, image_dir)
  mask_root = os.path.join(root, mask_dir)
  if not os.path.isdir(image_root):
    raise FileNotFoundError(f"image directory {image_root!r} does not exist; {layout}.")
  images = _files_by_stem(image_root)
  if not images:
    raise FileNotFoundError(
        f"image directory {image_root!r} holds no image ({', '.join(IMAGE_SUFFIXES)}); "
        f"{layout}.")
  if os.path.isdir(mask_root):
    masks = _files_by_stem(mask_root, suffixes=(".png",))
  elif require_masks:
    raise FileNotFoundError(
        f"mask directory {mask_root!r} does not exist; {layout}, or pass "
        "require_masks=False for images without masks.")
  else:
    masks = {}
  ids = sorted(images)
  unmatched = [i for i in ids if i not in masks]
  if unmatched and require_masks:
    raise ValueError(
        f"{len(unmatched)} image(s) in {image_root!r} have no mask in {mask_root!r} "
        f"(first: {unmatched[:5]}); add <stem>.png masks or pass require_masks=False.")
  return _file_source(
      f"folder:{os.fspath(root)}", ids, [images[i] for i in ids],
      [masks.get(i) for i in ids], num_classes=num_classes, class_names=names)


def load_voc(root: str | os.PathLike, split: str, *,
             use_aug: bool = True) -> SegmentationSource:
  """Pascal VOC 2012 segmentation (21 classes, 255 = object border, ignored).

  Layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG) and,
  optionally, ``SegmentationClassAug/<id>.png`` (the SBD-augmented masks). A split name
  is looked up as ``<name>.txt`` in ``ImageSets/Segmentation/``, then in
  ``ImageSets/SegmentationAug/`` and ``SegmentationClassAug/`` (where the augmented
  releases put ``train_aug.txt``). A split may also be the path of any list file, such
  as the public UniMatch/U2PL/CPS ``labeled.txt`` / ``unlabeled.txt``; either line
  format of ``jaxsemiseg.data.splits`` is accepted.

  Args:
    root: the ``VOC2012`` directory.
    split: a split name (``"train"``, ``"val"``, ``"train_aug"``, ...) or the path of a
      list file (it contains a path separator or ends in ``.txt``), absolute, relative to
      the working directory or relative to ``root``.
    use_aug: read an example's mask from ``SegmentationClassAug/`` when that directory
      holds it, otherwise from ``SegmentationClass/``.

  Returns:
    A source in list-file order.

  Raises:
    FileNotFoundError: if ``root``, ``JPEGImages/``, the list file, or an image or mask
      named by the list file is missing.
    ValueError: as ``read_split_file`` for a malformed list file.
  """
  layout = ("expected the Pascal VOC 2012 layout: JPEGImages/, SegmentationClass/, "
            "optionally SegmentationClassAug/, and ImageSets/Segmentation/<split>.txt")
  image_root = os.path.join(root, "JPEGImages")
  if not os.path.isdir(image_root):
    raise FileNotFoundError(f"{image_root!r} does not exist; {layout}.")
  list_file = _voc_list_file(root, split)
  ids = read_split_file(list_file)
  image_files = set(os.listdir(image_root))
  missing_images = [i for i in ids if f"{i}.jpg" not in image_files]
  if missing_images:
    raise FileNotFoundError(
        f"{len(missing_images)} image(s) named by {list_file!r} are not in {image_root!r} "
        f"(first: {[f'{i}.jpg' for i in missing_images[:3]]}); the list file does not "
        "match this VOC directory.")
  mask_roots = [os.path.join(root, "SegmentationClass")]
  if use_aug:
    mask_roots.insert(0, os.path.join(root, "SegmentationClassAug"))
  mask_files = [set(os.listdir(d)) if os.path.isdir(d) else set() for d in mask_roots]
  mask_paths = []
  for i in ids:
    found = [d for d, files in zip(mask_roots, mask_files) if f"{i}.png" in files]
    mask_paths.append(os.path.join(found[0], f"{i}.png") if found else None)
  missing_masks = [i for i, path in zip(ids, mask_paths) if path is None]
  if missing_masks:
    hint = ("" if use_aug else
            "; the augmented train_aug ids need SegmentationClassAug/ and use_aug=True")
    raise FileNotFoundError(
        f"{len(missing_masks)} example(s) named by {list_file!r} have no mask in "
        f"{' or '.join(map(repr, mask_roots))} (first: {missing_masks[:3]}){hint}.")
  name = os.path.splitext(os.path.basename(list_file))[0]
  return _file_source(
      f"voc:{name}", ids, [os.path.join(image_root, f"{i}.jpg") for i in ids],
      mask_paths, num_classes=len(VOC_CLASS_NAMES), class_names=VOC_CLASS_NAMES)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Decodes an image file as uint8 RGB ``[H, W, 3]`` (gray and alpha are converted).

  Raises:
    ValueError: naming the file, if it cannot be decoded (truncated, not an image).
  """
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError) as error:  # PIL's errors for undecodable files.
    raise ValueError(
        f"image {os.fspath(path)!r} cannot be decoded ({type(error).__name__}: {error}); "
        "replace the file, or remove it (and its mask) from the dataset.") from error


def read_mask(path: str | os.PathLike) -> np.ndarray:
  """Decodes a mask file as uint8 ``[H, W]`` class ids, palette indices kept as is.

  Raises:
    ValueError: if the mask is a colour image or holds values outside [0, 255].
  """
  with Image.open(path) as mask:
    if mask.mode not in _MASK_MODES:
      raise ValueError(
          f"mask {os.fspath(path)!r} has mode {mask.mode!r}; masks must hold one class id "
          "per pixel: save it as a palette ('P') or grayscale ('L') PNG.")
    values = np.asarray(mask)
  if values.dtype != np.uint8:
    bad = values[(values < 0) | (values > 255)]
    if bad.size:
      raise ValueError(
          f"mask {os.fspath(path)!r} holds value {int(bad[0])}; class ids must be in "
          "[0, 254] and 255 means ignore.")
    values = values.astype(np.uint8)
  return values


def _file_source(
    name: str,
    ids: list[str],
    image_paths: list[str],
    mask_paths: list[str | None],
    *,
    num_classes: int,
    class_names: Sequence[str],
) -> SegmentationSource:
  def load(index: int) -> dict:
    mask_path = mask_paths[index]
    return {
        "image": read_image(image_paths[index]),
        "label": None if mask_path is None else read_mask(mask_path),
        "id": ids[index],
    }

  return SegmentationSource(
      name=name, ids=ids, num_classes=num_classes, class_names=tuple(class_names),
      load=load)


def _files_by_stem(directory: str,
                   suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, str]:
  """Maps file stem -> path for the files of ``directory`` with one of ``suffixes``."""
  by_stem: dict[str, str] = {}
  for entry in sorted(os.listdir(directory)):
    stem, suffix = os.path.splitext(entry)
    path = os.path.join(directory, entry)
    if suffix.lower() not in suffixes or not os.path.isfile(path):
      continue
    if stem in by_stem:
      raise ValueError(
          f"{directory!r} holds two files with stem {stem!r} "
          f"({os.path.basename(by_stem[stem])!r} and {entry!r}); stems must be unique.")
    by_stem[stem] = path
  return by_stem


def _voc_list_file(root: str | os.PathLike, split: str) -> str:
  if os.sep in split or "/" in split or split.endswith(".txt"):
    candidates = [split] if os.path.isabs(split) else [split, os.path.join(root, split)]
  else:
    candidates = [os.path.join(root, d, f"{split}.txt") for d in _VOC_LIST_DIRS]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(
      f"split={split!r}: no list file at {' or '.join(map(repr, candidates))}; give a split "
      "name whose <split>.txt is in ImageSets/Segmentation/, or the path of a list file.")


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> tuple[str, ...]:
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
    raise ValueError(f"num_classes={num_classes!r}; expected an int.")
  if not 1 <= num_classes <= 255:
    raise ValueError(
        f"num_classes={num_classes} is out of range; expected 1..255 (masks are uint8 and "
        "255 is the ignore label).")
  if class_names is None:
    return tuple(f"class_{c}" for c in range(num_classes))
  if len(class_names) != num_classes:
    raise ValueError(
        f"class_names has {len(class_names)} names but num_classes={num_classes}; give one "
        "name per class.")
  return tuple(class_names)
