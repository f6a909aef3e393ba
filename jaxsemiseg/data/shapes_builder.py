"""The bundled "shapes" benchmark as a TFDS dataset, generated offline on first use.

``load_shapes(split)`` builds ``jaxsemiseg_shapes`` into the TFDS data directory the
first time (about 20 s on one CPU core: images come from ``bundled.generate_shapes``,
nothing is downloaded), then reads it by index through ``tfds.data_source``.

The generator's keyword defaults define the benchmark and are stored with the built
data. After changing them (or ``bundled.BUILDS``), bump ``bundled.VERSION`` so that TFDS
builds a new copy; ``load_shapes`` refuses to read a copy built with other defaults.
"""

from __future__ import annotations

import dataclasses
import inspect
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxsemiseg.data import bundled
from jaxsemiseg.data import tfds_sources
from jaxsemiseg.data.source import SegmentationSource

SPLITS = bundled.SPLITS


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Sizes and seed of one build; the look of the images is set by the generator.

  Attributes:
    num_train: number of training images.
    num_validation: number of validation images.
    seed: base seed; split ``k`` of ``SPLITS`` is generated from ``(seed, k)``.
  """

  num_train: int = 2000
  num_validation: int = 500
  seed: int = 0


def generator_defaults() -> dict:
  """The keyword defaults of ``bundled.generate_shapes``: the benchmark's definition."""
  return {name: parameter.default
          for name, parameter in inspect.signature(bundled.generate_shapes).parameters.items()
          if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


class JaxsemisegShapes(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes for semi-supervised segmentation (TFDS name ``jaxsemiseg_shapes``)."""

  VERSION = tfds.core.Version(bundled.VERSION)
  RELEASE_NOTES = {
      "1.0.0": "Disk, triangle, square, star, ring; strokes and crosses as clutter.",
      # With 4000, 1/16 of the labels (250 images) generalised almost as well as all of
      # them at the default budget (gap ~10 mIoU); with 2000 the gap is ~20 (RESULTS.md).
      "1.1.0": "2000 training images (the first 2000 of 1.0.0's 4000)."}
  BUILDER_CONFIGS = [
      ShapesConfig(name=name, num_train=build["train"], num_validation=build["validation"],
                   seed=build["seed"], description=description)
      for name, build, description in (
          ("default", bundled.BUILDS["default"], "2000 train + 500 validation images."),
          ("tiny", bundled.BUILDS["tiny"],
           "32 train + 16 validation images, for tests and smoke runs."))]

  def _info(self) -> tfds.core.DatasetInfo:
    size = generator_defaults()["image_size"]
    return tfds.core.DatasetInfo(
        builder=self,
        description=bundled.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "segmentation_mask": tfds.features.Image(shape=(size, size, 1)),
            "id": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(generator_defaults=generator_defaults()),
        # Keep the generation order, so that the id "train_00007" is index 7.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    del dl_manager  # Nothing to download.
    sizes = {"train": self.builder_config.num_train,
             "validation": self.builder_config.num_validation}
    return {split: self._generate_examples(split, sizes[split]) for split in SPLITS}

  def _generate_examples(self, split: str, num_examples: int):
    images, labels = bundled.generate_shapes(
        (self.builder_config.seed, SPLITS.index(split)), num_examples)
    for index in range(num_examples):
      yield index, {"image": images[index], "segmentation_mask": labels[index, ..., None],
                    "id": bundled.example_id(split, index)}


def _mask_to_label(mask: np.ndarray) -> np.ndarray:
  """The stored ``[H, W, 1]`` mask already holds class ids; drop the channel axis."""
  return mask[..., 0]


_SPEC = tfds_sources.TfdsSegmentationSpec(
    tfds_name="jaxsemiseg_shapes", splits=SPLITS, image_key="image",
    mask_key="segmentation_mask", id_key="id",
    to_label=_mask_to_label, class_names=bundled.CLASS_NAMES)


def load_shapes(split: str, *, data_dir: str | os.PathLike | None = None,
                config: str = "default") -> SegmentationSource:
  """Builds the shapes dataset if it is not in ``data_dir`` yet, and returns a split.

  Args:
    split: ``"train"`` or ``"validation"``, optionally sliced (``"train[:250]"``).
    data_dir: TFDS data directory; None means TFDS's default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    config: ``"default"`` (2000 + 500 images) or ``"tiny"`` (32 + 16).

  Returns:
    The split as a ``SegmentationSource`` with ``bundled.NUM_CLASSES`` classes.

  Raises:
    ValueError: for an unknown split or config, or if the copy in ``data_dir`` was
      generated with other generator defaults than the current code's.
  """
  tfds_sources.check_split(_SPEC, split)
  configs = [builder_config.name for builder_config in JaxsemisegShapes.BUILDER_CONFIGS]
  if config not in configs:
    raise ValueError(f"jaxsemiseg_shapes has no config {config!r}; expected one of {configs}.")
  builder = JaxsemisegShapes(config=config, data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  built_with, current = dict(builder.info.metadata["generator_defaults"]), generator_defaults()
  if built_with != current:
    changed = sorted(name for name in built_with.keys() | current.keys()
                     if built_with.get(name) != current.get(name))
    raise ValueError(
        f"The shapes dataset at {builder.data_dir} was generated with other defaults of "
        f"generate_shapes ({', '.join(changed)} differ: built with {built_with}). Bump "
        "VERSION in jaxsemiseg/data/bundled.py so that a new copy is built.")
  return tfds_sources.source_from_builder(builder, split, _SPEC,
                                          name=f"jaxsemiseg_shapes/{config}:{split}")
