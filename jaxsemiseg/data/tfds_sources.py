"""Named TFDS segmentation datasets as random-access ``SegmentationSource``s.

``load_tfds(name, split)`` prepares the dataset with TFDS (in the ``array_record``
format, so that ``tfds.data_source`` reads it by index without TensorFlow) and maps
its masks to train labels (``[0, C)`` plus 255 = ignore). A dataset already prepared
in another format is read once through ``tfds.as_numpy`` instead, keeping the encoded
bytes in memory.

Images and masks are decoded in ``load(i)``, never ahead of time. Ids come from the
dataset's own id field where it has one (Pet file names, Cityscapes image ids), so split
lists written elsewhere can be matched. Reading them takes one pass over the split, so
that pass waits until the ids are first needed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxsemiseg.data.source import IGNORE_INDEX, SegmentationSource

# --- Label mappings -------------------------------------------------------------------

_PET_CLASS_NAMES = ("background", "pet")


def pet_trimap_to_label(trimap: np.ndarray) -> np.ndarray:
  """Maps an Oxford-IIIT Pet trimap to ``{0: background, 1: pet, 255: ignore}``.

  The trimap marks 1 = pet, 2 = background, 3 = the "unclassified" strip drawn along
  the pet's outline. Those border pixels are neither reliably pet nor background, so
  they are ignored (255) in the loss and in mIoU rather than guessed; some works count
  them as pet instead. Any other value (none occurs in the real data) is ignored too.

  Args:
    trimap: integer ``[H, W]`` or ``[H, W, 1]``.

  Returns:
    uint8 ``[H, W]``.
  """
  lookup = np.full(256, IGNORE_INDEX, np.uint8)
  lookup[1], lookup[2] = 1, 0
  return lookup[_single_channel(trimap, "trimap")]


_CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle")
# Label ids (cityscapesScripts labels.py) of the 19 evaluated classes, in train-id order.
_CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                        31, 32, 33)


def cityscapes_id_to_train_id(label_ids: np.ndarray) -> np.ndarray:
  """Maps Cityscapes label ids (0..33, ``*_gtFine_labelIds.png``) to the 19 train ids.

  Ids not evaluated by the benchmark (unlabeled, ego vehicle, ground, parking, rail
  track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate, ...)
  become 255.

  Args:
    label_ids: integer ``[H, W]`` or ``[H, W, 1]``.

  Returns:
    uint8 ``[H, W]`` with values in ``[0, 19)`` or 255.
  """
  lookup = np.full(256, IGNORE_INDEX, np.uint8)
  lookup[list(_CITYSCAPES_EVAL_IDS)] = np.arange(len(_CITYSCAPES_EVAL_IDS))
  return lookup[_single_channel(label_ids, "label_ids")]


_ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag")
# SceneParse150 class (1-based) of each of the 100 instance categories 1..100, from
# the Places Challenge 2017 mapping (Mask2Former datasets/ade20k_instance_catid_mapping.txt).
_ADE20K_INSTANCE_TO_SEMANTIC = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40,
    42, 43, 44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73,
    74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93, 94, 96, 98, 99, 103,
    104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124, 125, 126, 127,
    128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149,
    150)


def scene_parse150_annotation_to_label(annotation: np.ndarray) -> np.ndarray:
  """Maps a TFDS ``scene_parse150`` annotation to SceneParse150 class ids (0..149).

  TFDS builds this dataset from ``annotations_instance.tar`` of the Places Challenge
  2017, not from the semantic masks of ``ADEChallengeData2016``: the red channel holds
  one of 100 *instance* categories (0 = no instance) and the green channel the
  instance id. The 100 categories are the "thing" classes of SceneParse150, so this
  maps each to its SceneParse150 index; everything else, including every "stuff"
  class (wall, sky, floor, ...) that the instance masks never mark, becomes 255.

  Args:
    annotation: uint8 ``[H, W, 3]`` (or ``[H, W]``/``[H, W, 1]``: the category plane).

  Returns:
    uint8 ``[H, W]`` with values in ``[0, 150)`` or 255.
  """
  if annotation.ndim == 3 and annotation.shape[-1] == 3:
    annotation = annotation[..., 0]
  lookup = np.full(256, IGNORE_INDEX, np.uint8)
  lookup[1:len(_ADE20K_INSTANCE_TO_SEMANTIC) + 1] = np.array(
      _ADE20K_INSTANCE_TO_SEMANTIC) - 1
  return lookup[_single_channel(annotation, "annotation")]


def _single_channel(mask: np.ndarray, field: str) -> np.ndarray:
  """Drops a trailing channel axis of size 1; raises if the result is not ``[H, W]``."""
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
    raise ValueError(f"{field} has shape {mask.shape} and dtype {mask.dtype}; expected an "
                     "integer [H, W] or [H, W, 1] array.")
  return mask


# --- Dataset specs ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TfdsSegmentationSpec:
  """How to read one TFDS dataset as a ``SegmentationSource``.

  Attributes:
    tfds_name: the TFDS name with its config, e.g. ``"cityscapes/semantic_segmentation"``.
    splits: the split names the dataset has.
    image_key: the RGB image feature.
    mask_key: the mask feature.
    id_key: a unique per-example text feature, or None to use ``"<split>_<index>"``.
    to_label: maps the decoded mask to uint8 ``[H, W]`` train labels.
    class_names: one name per class.
    manual_files: files the user must download by hand into TFDS's ``manual_dir``.
    manual_download_page: where to get ``manual_files``.
  """

  tfds_name: str
  splits: tuple[str, ...]
  image_key: str
  mask_key: str
  id_key: str | None
  to_label: Callable[[np.ndarray], np.ndarray]
  class_names: tuple[str, ...]
  manual_files: tuple[str, ...] = ()
  manual_download_page: str | None = None


DATASETS = {
    "oxford_iiit_pet": TfdsSegmentationSpec(
        tfds_name="oxford_iiit_pet", splits=("train", "test"), image_key="image",
        mask_key="segmentation_mask", id_key="file_name", to_label=pet_trimap_to_label,
        class_names=_PET_CLASS_NAMES),
    "cityscapes": TfdsSegmentationSpec(
        tfds_name="cityscapes/semantic_segmentation",
        splits=("train", "validation", "test"), image_key="image_left",
        mask_key="segmentation_label", id_key="image_id",
        to_label=cityscapes_id_to_train_id, class_names=_CITYSCAPES_CLASS_NAMES,
        manual_files=("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"),
        manual_download_page="https://www.cityscapes-dataset.com/downloads/ (free account)"),
    # TFDS's "test" split is the ADE20K validation set (the challenge test set has no
    # public labels).
    "scene_parse150": TfdsSegmentationSpec(
        tfds_name="scene_parse150", splits=("train", "test"), image_key="image",
        mask_key="annotation", id_key=None, to_label=scene_parse150_annotation_to_label,
        class_names=_ADE20K_CLASS_NAMES),
}


def load_tfds(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
              manual_dir: str | os.PathLike | None = None) -> SegmentationSource:
  """Prepares (if needed) a named TFDS dataset and returns one split of it.

  Args:
    name: a key of ``DATASETS``: ``"oxford_iiit_pet"``, ``"cityscapes"`` or
      ``"scene_parse150"``.
    split: a split of that dataset, optionally with a TFDS slice (``"train[:100]"``).
    data_dir: TFDS data directory; None means TFDS's default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    manual_dir: where manually downloaded files are; None means
      ``<data_dir>/downloads/manual``.

  Returns:
    The split as a ``SegmentationSource``.

  Raises:
    ValueError: for an unknown name or split.
    FileNotFoundError: if the dataset needs manual files that are missing.
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown TFDS dataset {name!r}; supported: {sorted(DATASETS)}.")
  spec = DATASETS[name]
  check_split(spec, split)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir is not None else None,
      # Only TFRecord datasets are hosted on GCS; don't spend a network round trip.
      try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=download_config,
                                 file_format="array_record")
  except AssertionError as error:
    where = epath.Path(manual_dir or builder.data_dir_root / "downloads" / "manual")
    missing = [file for file in spec.manual_files if not (where / file).exists()]
    if not missing:
      raise
    raise FileNotFoundError(
        f"TFDS dataset {spec.tfds_name!r} is built from files you download yourself "
        f"from {spec.manual_download_page}: {', '.join(missing)} missing from "
        f"{os.fspath(where)}. Put {' and '.join(spec.manual_files)} there, unextracted, "
        f"or pass manual_dir= naming the folder that holds them. TFDS said: {error}"
    ) from error
  return source_from_builder(builder, split, spec, name=f"{name}:{split}")


def check_split(spec: TfdsSegmentationSpec, split: str) -> None:
  """Raises ValueError unless ``split`` (maybe sliced, ``"train[:100]"``) is in ``spec``."""
  if split.split("[")[0] not in spec.splits:
    raise ValueError(f"{spec.tfds_name} has no split {split!r}; expected one of "
                     f"{list(spec.splits)}, optionally sliced (e.g. 'train[:100]').")


# --- Reading a prepared builder --------------------------------------------------------


def source_from_builder(builder: tfds.core.DatasetBuilder, split: str,
                        spec: TfdsSegmentationSpec, *, name: str) -> SegmentationSource:
  """Random access to ``split`` of an already prepared builder.

  Args:
    builder: a prepared TFDS builder whose features match ``spec``.
    split: the split to read (TFDS split syntax).
    spec: which features hold the image, mask and id, and how masks become labels.
    name: the source's name for messages.

  Returns:
    A ``SegmentationSource`` whose ``load(i)`` decodes example ``i`` only.
  """
  records, open_id_records = _records(builder, split, spec)
  image_feature = builder.info.features[spec.image_key]
  mask_feature = builder.info.features[spec.mask_key]

  def example_id(index: int, record: dict) -> str:
    if spec.id_key is None:
      return f"{split}_{index:06d}"
    value = record[spec.id_key]
    value = value.item() if isinstance(value, np.ndarray) else value
    # Text features are bytes when read without TensorFlow.
    return value.decode() if isinstance(value, bytes) else str(value)

  def load(index: int) -> dict:
    record = records[index]
    mask = _decoded(mask_feature, record[spec.mask_key])
    return {"image": _decoded(image_feature, record[spec.image_key]),
            "label": spec.to_label(mask), "id": example_id(index, record)}

  if spec.id_key is None:
    ids = [example_id(index, {}) for index in range(len(records))]
  else:
    ids = _LazyIds(open_id_records, len(records), example_id)
  return SegmentationSource(name=name, ids=ids, num_classes=len(spec.class_names),
                            class_names=spec.class_names, load=load)


def _records(
    builder: tfds.core.DatasetBuilder, split: str, spec: TfdsSegmentationSpec,
) -> tuple[Sequence[dict], Callable[[], Sequence[dict]]]:
  """Examples of ``split`` to load, and how to open them for a cheap pass over ids.

  The pass over ids leaves images and masks encoded, so reading every id does not
  decode every image.
  """
  encoded = {spec.image_key: tfds.decode.SkipDecoding(),
             spec.mask_key: tfds.decode.SkipDecoding()}
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError:
    logging.warning(
        "%s is prepared at %s in a format without random access; reading the split "
        "into memory once. Convert it with `tfds convert_format "
        "--dataset_version_dir=%s --out_file_format=array_record` to avoid this.",
        spec.tfds_name, builder.data_dir, builder.data_dir)
    records = _MaterialisedRecords(builder, split, encoded)
    return records, lambda: records
  return records, lambda: builder.as_data_source(split=split, decoders=encoded)


def _decoded(feature: tfds.features.FeatureConnector,
             value: bytes | np.ndarray) -> np.ndarray:
  """Decodes an image or mask that was read still encoded; passes arrays through."""
  return feature.decode_example_np(value) if isinstance(value, bytes) else value


class _MaterialisedRecords(Sequence):
  """A split read sequentially with ``tfds.as_numpy``, once, on first access.

  Images and masks stay encoded, so memory holds the split's file size, not its
  decoded size.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, decoders: dict):
    self._builder, self._split, self._decoders = builder, split, decoders
    self._records: list[dict] | None = None

  def __len__(self) -> int:
    return self._builder.info.splits[self._split].num_examples

  def __getitem__(self, index: int) -> dict:
    if self._records is None:
      dataset = self._builder.as_dataset(split=self._split, decoders=self._decoders,
                                         shuffle_files=False)
      self._records = list(tfds.as_numpy(dataset))
    return self._records[index]


class _LazyIds(Sequence):
  """Example ids, read from every record the first time one is asked for."""

  def __init__(self, open_records: Callable[[], Sequence[dict]], length: int,
               example_id: Callable[[int, dict], str]):
    self._open_records, self._length, self._example_id = open_records, length, example_id
    self._ids: list[str] | None = None

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> str:
    if self._ids is None:
      records = self._open_records()
      self._ids = [self._example_id(i, records[i]) for i in range(self._length)]
    return self._ids[index]
