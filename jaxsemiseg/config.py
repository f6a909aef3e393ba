"""The configuration schema: every key a run understands, its default and its type.

Configs in ``configs/`` start from :func:`base_config` and change what they need, so a
typo or a value of the wrong type is caught by :func:`validate_config` on the host,
before any data is read or anything is compiled, with a message naming the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxsemiseg import stacked

DATASET_NAMES = ("shapes", "folder", "voc", "oxford_iiit_pet", "cityscapes", "scene_parse150")
MODEL_NAMES = ("unet", "deeplabv3plus")
UNCERTAINTY_MEASURES = ("none", "entropy", "mutual_information")
# Images of Pascal VOC 2012's SegmentationClassAug ``train_aug`` list: the pool the labeled
# images of every semi-supervised VOC protocol are drawn from; the rest are unlabeled.
VOC_TRAIN_AUG_SIZE = 10582
# UniMatch's Pascal VOC splits (labeled images of the 1464 finely annotated ones) and its
# schedule in passes over the unlabeled pool (configs/pascal.yaml).
UNIMATCH_VOC_SPLITS = (92, 183, 366, 732, 1464)
UNIMATCH_VOC_EPOCHS = 80
# CutMix probability of the self-training configs on the bundled shapes (the methods'
# default, UniMatch's 0.5, stays for real photos). A shape's class is its outline alone,
# so a box that cuts an object leaves a fragment whose class the strong view no longer
# shows, and the pseudo-label asks the network to name it anyway: FixMatch at 1/16 fell to
# 18.6 mIoU with CutMix against 30.4 labeled-only, and reached 34.7 without it on the same
# split (bench/RESULTS.md, "CutMix on the shapes"). On photos a fragment of a cat still
# looks like a cat.
SHAPES_CUTMIX_P = 0.0


def base_config(method: str = "supervised") -> ml_collections.ConfigDict:
  """All keys shared by every method, with defaults for the bundled dataset.

  Args:
    method: the training method; its own hyper-parameters (its ``default_config()``) are
      added under ``config.<method>`` so ``--config.<method>.<key>=...`` can override them.

  Raises:
    ValueError: if ``method`` is not a registered method.
  """
  from jaxsemiseg import methods  # pylint: disable=g-import-not-at-top
  config = _shared_config()
  config.method = method
  config[method] = methods.get_method(method).default_config()
  return config


def voc_num_labeled(arg: str | None, *, default: int, config_name: str,
                    examples: Sequence[int]) -> int:
  """The number of labeled images a ``configs/<config_name>.py:<arg>`` VOC run asks for.

  Args:
    arg: the config file's argument, a decimal string; None or "" means ``default``.
    default: the reference's number of labeled images.
    config_name: the config file's name without ``.py``, for the error message.
    examples: the reference's split sizes, for the error message.

  Returns:
    The number of labeled ``train_aug`` images.

  Raises:
    ValueError: if ``arg`` is not a whole number in (0, VOC_TRAIN_AUG_SIZE).
  """
  *others, last = map(str, examples)
  expected = (f"expected a number of labeled images in (0, {VOC_TRAIN_AUG_SIZE}), e.g. "
              f"{', '.join(others)} or {last}.")
  try:
    num_labeled = int(arg) if arg else default
  except ValueError:
    raise ValueError(f"configs/{config_name}.py:{arg}; {expected}") from None
  if not 0 < num_labeled < VOC_TRAIN_AUG_SIZE:
    raise ValueError(f"configs/{config_name}.py:{arg}; {expected}")
  return num_labeled


def unimatch_voc_config(method: str, arg: str | None, *,
                        config_name: str) -> ml_collections.ConfigDict:
  """``configs/<config_name>.py:<arg>`` on the whole of UniMatch's Pascal VOC protocol.

  :func:`voc_config` with ``arg`` labeled images (default 92, UniMatch's 1/16 of the 1464
  finely annotated ones) trained for UniMatch's 80 epochs of the unlabeled pool
  (:func:`voc_epoch_schedule`); the self-training configs start here and add their
  method's hyper-parameters.

  Args:
    method: the training method.
    arg: the config file's argument (see :func:`voc_num_labeled`).
    config_name: the config file's name without ``.py``, for the error message.

  Returns:
    The config; ``dataset.root`` is still to be set.

  Raises:
    ValueError: for an ``arg`` that is not a number of labeled images.
  """
  num_labeled = voc_num_labeled(arg, default=UNIMATCH_VOC_SPLITS[0], config_name=config_name,
                                examples=UNIMATCH_VOC_SPLITS)
  config = voc_config(method, num_labeled=num_labeled)
  voc_epoch_schedule(config, epochs=UNIMATCH_VOC_EPOCHS)
  return config


def voc_epoch_schedule(config: ml_collections.ConfigDict, *, epochs: int) -> int:
  """Trains a VOC config for ``epochs`` passes over its unlabeled pool, evaluating after each.

  UniMatch's epoch (and CCT's): one pass over the ``train_aug`` images that are not
  labeled, the labeled ids repeated to match, at ``config.unlabeled_batch_size`` per step.
  Sets ``num_steps``, and ``eval_every`` and ``checkpoint_every`` to one epoch (UniMatch
  evaluates and keeps the best checkpoint after every epoch); call it after the batch size
  and ``dataset.num_labeled`` are final.

  Args:
    config: a config from :func:`voc_config`.
    epochs: the reference's number of epochs.

  Returns:
    The steps in one epoch.
  """
  steps_per_epoch = ((VOC_TRAIN_AUG_SIZE - config.dataset.num_labeled)
                     // config.unlabeled_batch_size)
  config.num_steps = epochs * steps_per_epoch
  config.eval_every = steps_per_epoch
  config.checkpoint_every = steps_per_epoch
  return steps_per_epoch


def voc_config(method: str, *, num_labeled: int) -> ml_collections.ConfigDict:
  """``base_config(method)`` on Pascal VOC 2012 with UniMatch's protocol (configs/pascal.yaml).

  UniMatch's settings, which the other VOC configs start from and change where their
  reference differs: ``num_labeled`` images of ``train_aug`` labeled and the rest
  unlabeled, validation on ``val`` padded to 512x512; crop 321 after a long-side rescale
  by U(0.5, 2.0); DeepLabV3+ with a ResNet-101 backbone at output stride 16 and no dropout
  before the classifier; SGD (momentum 0.9, weight decay 1e-4) at 1e-3 with the head at
  10x and poly decay 0.9; 8 labeled + 8 unlabeled images per step, 16 per evaluation
  batch. The schedule (``num_steps``, ``eval_every``, ``checkpoint_every``) is each
  reference's own and left to the config.

  Args:
    method: the training method (see :func:`base_config`).
    num_labeled: labeled images of ``train_aug`` (e.g. from :func:`voc_num_labeled`).

  Returns:
    The config; ``dataset.root`` (the VOC2012 directory) is still to be set.
  """
  config = base_config(method)
  config.dataset.update(dict(
      name="voc", train_split="train_aug", val_split="val", num_labeled=num_labeled,
      crop_size=321, scale_range=(0.5, 2.0), eval_pad_to=512))
  config.model.name = "deeplabv3plus"
  config.model.deeplabv3plus.update(dict(backbone="resnet101", output_stride=16,
                                         dropout_rate=0.0))
  config.optimizer.update(dict(name="sgd", learning_rate=1e-3, momentum=0.9,
                               weight_decay=1e-4, schedule="poly", poly_power=0.9,
                               head_lr_multiplier=10.0))
  config.batch_size = 8
  config.unlabeled_batch_size = 8
  config.eval_batch_size = 16
  return config


def _shared_config() -> ml_collections.ConfigDict:
  """The keys every method shares."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = "supervised"

  config.dataset = ml_collections.ConfigDict(dict(
      # One of DATASET_NAMES.
      name="shapes",
      # Where TFDS datasets live / are built ("" = the TFDS default, ~/tensorflow_datasets).
      data_dir="",
      # TFDS builder config ("" = the dataset's default; "tiny" = 32+16 images of shapes).
      builder_config="",
      # shapes only: render the dataset in memory instead of reading its TFDS copy (the
      # same images and ids; for machines without TensorFlow, ~15 s per start).
      in_memory=False,
      # Root directory of a "folder" or "voc" dataset.
      root="",
      # TFDS manual-download directory (Cityscapes zips).
      manual_dir="",
      train_split="train",
      val_split="validation",
      # Class count; -1 takes it from the dataset (required for "folder").
      num_classes=-1,
      # Labeled subset: a split file of ids, else num_labeled (> 0), else labeled_fraction.
      split_file="",
      num_labeled=-1,
      labeled_fraction=0.125,
      split_seed=0,
      crop_size=64,
      # Long-side rescale factors of the weak view. UniMatch uses (0.5, 2.0) on real photos
      # (the VOC/Cityscapes configs set it); on the 64 px shapes, halving makes the smaller
      # shapes illegible and fills 3/4 of the crop with padding, and the labeled-only UNet
      # then learns no shape class within a CPU budget (bench/RESULTS.md, H200 sweeps).
      scale_range=(1.0, 1.0),
      flip=True,
      # Evaluation batches are padded (image 0, label 255) to this square size; 0 = to the
      # largest image of each batch. Several processes need a fixed size (VOC: 512). Padded
      # pixels are not scored, but a model's image-wide statistics see them (DeepLab's ASPP
      # pooling, UNet-S's GroupNorm), so with images of several sizes the scores depend on
      # the padding; eval_batch_size=1 with 0 evaluates every image unpadded.
      eval_pad_to=0,
      # Scan every labeled training mask and every validation mask, and decode every
      # unlabeled image, before training, so a bad label or an undecodable file fails the
      # run before compilation rather than hours into it.
      check_labels=True,
  ))

  config.model = ml_collections.ConfigDict(dict(
      # One of MODEL_NAMES; the sub-config of that name holds its arguments.
      name="unet",
      # Compute dtype ("float32" or "bfloat16"); parameters stay float32.
      dtype="float32",
      # Rematerialise the backbone's residual blocks (UNet: its encoder blocks) in the
      # backward pass: less activation memory for about one more forward pass. A bool, not
      # a jax.checkpoint policy name: the named policies select dot_general results, and
      # these backbones are convolutions, so per-block recomputation is the one useful one.
      remat=False,
      # A local .npz of backbone weights (see jaxsemiseg.models.weights); "" = random init.
      pretrained_path="",
      # "UNet-S", the twin of shared/bench/torch_unet_step.py.
      unet=dict(width=16, depth=3, groups=4, dropout_rate=0.0),
      # DeepLabV3+ (UniMatch's has no dropout before the classifier, voc_config sets 0;
      # voc_st_plus_plus.py keeps ST++'s 0.1).
      deeplabv3plus=dict(backbone="resnet50", output_stride=16, aspp_channels=256,
                         low_level_channels=48, decoder_channels=256, dropout_rate=0.1),
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      # "adamw" or "sgd" (SGD with momentum, the DeepLab/UniMatch choice).
      name="adamw",
      learning_rate=2e-3,
      momentum=0.9,
      weight_decay=1e-4,
      # "poly" (lr0 * (1 - t/T)^power, UniMatch) or "cosine".
      schedule="poly",
      # The VOC configs use the DeepLab/UniMatch 0.9. On the shapes, UNet-S keeps learning
      # the classes as long as the rate stays high: 0.3 holds it above half until 90% of the
      # run and reached 58.3 mIoU at 3000 steps where cosine reached 46.0 (RESULTS.md).
      poly_power=0.3,
      warmup_steps=0,
      # Learning-rate multiplier for everything outside the "backbone" subtree (UniMatch: 10).
      head_lr_multiplier=1.0,
      grad_clip_norm=0.0,
  ))

  config.loss = ml_collections.ConfigDict(dict(
      dice_weight=0.0,
      ohem=False,
      ohem_threshold=0.7,
      # Over the global batch; UniMatch's 200000 (Cityscapes) is per GPU, so on its 8 GPUs
      # use 8 * 200000 (losses.ohem_cross_entropy).
      ohem_min_kept=100_000,
  ))

  # Global batch sizes (all processes and devices together).
  config.batch_size = 8
  config.unlabeled_batch_size = 8
  # ~9 minutes on a 2-core CPU: well past the point (~1500-2500 steps) where UNet-S starts
  # to tell the shapes apart, and where 1/16 of the labels falls >= 15 mIoU behind all.
  config.num_steps = 4000
  config.log_every = 50
  config.eval_every = 500
  config.eval_batch_size = 32
  # "whole" image or "sliding" window (window = crop_size, stride 2/3 of it).
  config.eval_mode = "whole"
  config.checkpoint_every = 500
  config.keep_checkpoints = 2
  config.progress_bar = True
  # Devices in the ("data",) mesh; -1 = every device of every process.
  config.num_devices = -1
  # How stacked members (ensembles, co-training, CCT heads) run: "vmap", "loop" (unrolled)
  # or "auto" (loop on CPU, vmap on GPU/TPU; see jaxsemiseg.stacked).
  config.member_map = "auto"

  config.distributed = ml_collections.ConfigDict(dict(
      # Call jax.distributed.initialize (multi-host); the address/counts default to the cluster's.
      enabled=False,
      coordinator_address="",
      num_processes=-1,
      process_id=-1,
  ))

  config.predict = ml_collections.ConfigDict(dict(
      input_dir="",
      output_dir="",
      # Also write a heat-map PNG per image: "entropy" (predictive entropy) or
      # "mutual_information" (BALD) of MC Dropout samples; "none" = masks only.
      uncertainty="none",
      # MC Dropout passes T (UA-MT uses 8). Needs a model with dropout_rate > 0.
      mc_samples=8,
  ))
  return config


def full_schema() -> ml_collections.ConfigDict:
  """The base schema plus each registered method's own sub-config under its name."""
  from jaxsemiseg import methods  # pylint: disable=g-import-not-at-top
  schema = _shared_config()
  for name, defaults in methods.method_configs().items():
    schema[name] = defaults
  return schema


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first unknown key or mistyped value in ``config``.

  Checks every key against :func:`full_schema`, then the values that have a fixed set of
  choices or a range. Runs on the host before any data is read or anything is compiled.
  """
  from jaxsemiseg import methods  # pylint: disable=g-import-not-at-top
  _check_tree(config, full_schema(), prefix="config")
  method = methods.get_method(config.method)
  if config.method not in config:
    config_file = "default" if config.method == "supervised" else config.method
    raise ValueError(
        f"config.method={config.method!r} but config.{config.method} (its hyper-parameters) is "
        f"missing: start from that method's config, --config=configs/{config_file}.py (in "
        f"code: jaxsemiseg.config.base_config({config.method!r})).")
  if hasattr(method, "check_config"):
    method.check_config(config)
  if config.dataset.name not in DATASET_NAMES:
    raise ValueError(f"config.dataset.name={config.dataset.name!r}; expected one of {DATASET_NAMES}.")
  if config.dataset.in_memory and config.dataset.name != "shapes":
    raise ValueError(f"config.dataset.in_memory=True is for the bundled dataset only, not "
                     f"{config.dataset.name!r}; set it to False.")
  if config.model.name not in MODEL_NAMES:
    raise ValueError(f"config.model.name={config.model.name!r}; expected one of {MODEL_NAMES}.")
  for key in ("batch_size", "num_steps", "eval_batch_size", "log_every", "eval_every",
              "checkpoint_every", "keep_checkpoints"):
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]}; expected a positive integer.")
  choices = {
      "optimizer.name": ("adamw", "sgd"),
      "optimizer.schedule": ("poly", "cosine"),
      "model.dtype": ("float32", "bfloat16"),
      "model.deeplabv3plus.backbone": ("resnet18", "resnet50", "resnet101"),
      "model.deeplabv3plus.output_stride": (8, 16),
      "member_map": stacked.MEMBER_MAPS,
  }
  for key, allowed in choices.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if value not in allowed:
      raise ValueError(f"config.{key}={value!r}; expected one of {allowed}.")
  if config.unlabeled_batch_size <= 0:
    raise ValueError(
        f"config.unlabeled_batch_size={config.unlabeled_batch_size}; expected a positive integer.")
  if config.eval_mode not in ("whole", "sliding"):
    raise ValueError(f"config.eval_mode={config.eval_mode!r}; expected 'whole' or 'sliding'.")
  if config.predict.uncertainty not in UNCERTAINTY_MEASURES:
    raise ValueError(f"config.predict.uncertainty={config.predict.uncertainty!r}; expected one "
                     f"of {UNCERTAINTY_MEASURES}.")
  if config.predict.mc_samples < 1:
    raise ValueError(f"config.predict.mc_samples={config.predict.mc_samples}; expected >= 1.")
  if not config.optimizer.learning_rate > 0:
    raise ValueError(f"config.optimizer.learning_rate={config.optimizer.learning_rate}; "
                     "expected a positive rate.")
  if config.optimizer.weight_decay < 0:
    raise ValueError(f"config.optimizer.weight_decay={config.optimizer.weight_decay}; "
                     "expected >= 0.")
  if config.dataset.crop_size < 1:
    raise ValueError(f"config.dataset.crop_size={config.dataset.crop_size}; expected a "
                     "positive number of pixels.")
  if not 0 < config.dataset.labeled_fraction <= 1:
    raise ValueError(
        f"config.dataset.labeled_fraction={config.dataset.labeled_fraction}; expected (0, 1].")


def _check_tree(config: Any, schema: Any, *, prefix: str) -> None:
  for key in config.keys():
    name = f"{prefix}.{key}"
    if key not in schema:
      raise ValueError(
          f"Unknown config key {name!r}. Known keys here: {sorted(schema.keys())}.")
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ValueError(f"{name} must be a nested config, got {value!r}.")
      _check_tree(value, default, prefix=name)
    elif not _same_kind(value, default):
      raise ValueError(
          f"{name}={value!r} has type {type(value).__name__}; expected "
          f"{type(default).__name__} (default {default!r}).")


def _same_kind(value: Any, default: Any) -> bool:
  if default is None or isinstance(default, config_dict.FieldReference):
    return True
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))
