"""Offline pseudo-label self-training: ST and ST++ (Yang et al., CVPR 2022; METHODS.md 4).

A teacher trained on the labeled images labels the unlabeled pool once, offline; a student
is then retrained from scratch on the labeled images plus the pseudo-labeled ones. The
rounds (teacher, labeling, students) are driven by ``jaxsemiseg.self_training_rounds``,
each round an ordinary run of the training loop. This module holds what a round needs:

- the **student step**: cross-entropy with ignore 255 over the labeled batch and the
  pseudo-labeled batch together (one mean over their valid pixels, as ST++'s single
  ``CrossEntropyLoss`` over its mixed batches), where only the pseudo-labeled images get
  the **strong view** on device (ST++ ``dataset/semi.py``: colour jitter, grayscale, blur,
  then Cutout / Random Erasing whose box is ignored: METHODS.md 1d, 1f);
- ``train_batches``: the loop's input for that step, a labeled stream and a stream of the
  pseudo-labeled pool (``image_p``, ``label_p``);
- the offline pieces: test-time augmentation (``tta_probabilities``: ST++'s scales 0.5 to 2
  with flips, ``model/semseg/base.py``), confidence filtering (``confident_labels``) and
  ST++'s **stability** of an unlabeled image (``stability_scores``: the mean per-image mIoU
  between the predictions of earlier checkpoints and the final one, ``select_reliable``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsemiseg.augment import mixing, photometric
from jaxsemiseg.data import pipeline
from jaxsemiseg.data.source import IGNORE_INDEX, SegmentationSource
from jaxsemiseg.methods import common, self_training, supervised
from jaxsemiseg.state import TrainState

# The loop hands the pool (with its pseudo-labels) to ``train_batches``.
USES_UNLABELED = True
VARIANTS = ("st", "st++")
# Rounds of ST++: the teacher, a student on the reliable half, a student on everything.
ST_PLUS_PLUS_ROUNDS = 3
# Mixed into the seed of the pseudo-labeled stream, so its crops and flips are drawn
# independently of the labeled stream's.
_PSEUDO_STREAM = 1


def default_config() -> ml_collections.ConfigDict:
  """The ST/ST++ settings of LiheYoung/ST-PlusPlus (see the field comments)."""
  return ml_collections.ConfigDict(dict(
      # "st": teacher -> student rounds, each student labeling the pool for the next.
      # "st++": stability-ranked rounds (reliable half first, then everything).
      variant="st",
      # Steps of each round, teacher first; () = config.num_steps for each of the variant's
      # rounds (ST: teacher and one student; ST++: teacher and two students). Every round
      # trains on batch_size + unlabeled_batch_size images per step: the teacher on labeled
      # images only, the students on batch_size labeled and unlabeled_batch_size
      # pseudo-labeled ones (ST++: 16 images per step in every stage).
      round_steps=(),
      # Pixels whose (TTA) confidence is below this become 255. ST and ST++ keep every
      # pixel (0.0); a positive value is the classic confidence-filtered pseudo-labeling.
      confidence_threshold=0.0,
      # ST++ labels with the sum of softmax over these scales, each with its flip.
      tta_scales=(0.5, 0.75, 1.0, 1.5, 2.0),
      tta_flip=True,
      # ST++ trains pseudo-labeled images on their strong view; labeled ones stay weak.
      strong_view=True,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.pseudo_label`` value outside its range."""
  settings = config.pseudo_label
  self_training.check_one_of("config.pseudo_label.variant", settings.variant, VARIANTS)
  self_training.check_unit_interval("config.pseudo_label.confidence_threshold",
                                    settings.confidence_threshold)
  if not settings.tta_scales or any(scale <= 0 for scale in settings.tta_scales):
    raise ValueError(
        f"config.pseudo_label.tta_scales={tuple(settings.tta_scales)}; expected one or more "
        "positive scales, e.g. (1.0,) for no multi-scale test-time augmentation.")
  steps = round_steps(config)
  if any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in steps):
    raise ValueError(
        f"config.pseudo_label.round_steps={tuple(settings.round_steps)}; expected positive "
        "integers (steps of each round, teacher first).")
  if settings.variant == "st++" and len(steps) != ST_PLUS_PLUS_ROUNDS:
    raise ValueError(
        f"config.pseudo_label.round_steps={tuple(settings.round_steps)} with variant "
        f"'st++'; expected {ST_PLUS_PLUS_ROUNDS} entries (teacher, reliable-half student, "
        "all-images student) or () for config.num_steps each.")
  if len(steps) < 2:
    raise ValueError(
        f"config.pseudo_label.round_steps={tuple(settings.round_steps)}; expected at least "
        "2 entries (a teacher and one student) or () for config.num_steps each.")
  if settings.variant == "st++" and steps[0] < 3:
    raise ValueError(
        f"ST++'s teacher runs {steps[0]} steps (config.pseudo_label.round_steps[0] or "
        "config.num_steps); it needs at least 3 for its checkpoints at 1/3 and 2/3.")


def round_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The steps of every round of ``config``, teacher first (resolving the () default)."""
  settings = config.pseudo_label
  if settings.round_steps:
    return tuple(settings.round_steps)
  rounds = ST_PLUS_PLUS_ROUNDS if settings.variant == "st++" else 2
  return (config.num_steps,) * rounds


# The state is the supervised one: parameters, BatchNorm statistics and the optimizer.
init_state = supervised.init_state


def strong_views(key: jax.Array, images: jax.Array,
                 labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ST++'s strong view of a batch: strong colour, then Random Erasing ignored in the box.

  ``photometric.unimatch_strong_colour`` (ColorJitter 0.5/0.5/0.5/0.25 with p 0.8,
  grayscale p 0.2, blur p 0.5) and ``mixing.random_erasing`` (ST++'s ``cutout``: p 0.5,
  area 0.02-0.4, aspect 0.3-3.3, noise fill, labels 255 in the box), one draw per image.

  Args:
    key: PRNG key.
    images: float32 ``[B, H, W, 3]`` weak views in [0, 1].
    labels: int32 ``[B, H, W]`` pseudo-labels.

  Returns:
    ``(images, labels)`` of the same shapes.
  """

  def one(key, image, label):
    colour_key, erase_key = jax.random.split(key)
    image = photometric.unimatch_strong_colour(colour_key, image)
    image, label, _ = mixing.random_erasing(erase_key, image, label)
    return image, label

  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images, labels)


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted student ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image`` and ``label`` (labeled) and ``image_p`` and ``label_p``
  (pseudo-labeled). Metrics: ``loss`` (= ``loss_ce`` plus any Dice term of
  ``config.loss``), ``pseudo_label_fraction`` (pixels of the pseudo-labeled images that
  count, after filtering and erasing) and ``grad_norm``.
  """
  use_strong_view = config.pseudo_label.strong_view

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    view_rng, dropout_rng = jax.random.split(rng)
    images_p, labels_p = batch["image_p"], batch["label_p"]
    if use_strong_view:
      images_p, labels_p = strong_views(view_rng, images_p, labels_p)
    images = jnp.concatenate([batch["image"], images_p])
    labels = jnp.concatenate([batch["label"], labels_p])

    def loss_fn(params: Any):
      outputs, batch_stats = common.forward(model, params, state.batch_stats, images,
                                            train=True, rng=dropout_rng)
      loss, terms = common.supervised_loss(outputs["logits"], labels, config.loss)
      return loss, (batch_stats, {
          **terms, "pseudo_label_fraction": jnp.mean(labels_p != IGNORE_INDEX)})

    return self_training.apply_gradients(state, tx, loss_fn)

  return step


@contextlib.contextmanager
def train_batches(labeled: SegmentationSource, unlabeled: SegmentationSource | None, *,
                  batch_size: int, unlabeled_batch_size: int | None = None, seed: int,
                  num_unlabeled_views: int = 1, **stream_args) -> Iterator[Iterator[dict]]:
  """The student's input: ``pipeline.train_batches`` of the labeled images and of the pool.

  The pool must carry pseudo-labels (a source built by the rounds driver); both streams
  get the weak view (``stream_args``: crop, rescale, flip, start step, processes) and
  their own shuffles. The loop calls this in place of ``pipeline.train_batches``.

  Args:
    labeled: the labeled images.
    unlabeled: the pseudo-labeled pool.
    batch_size: labeled images per global batch.
    unlabeled_batch_size: pseudo-labeled images per global batch (default batch_size).
    seed: the run's data seed.
    num_unlabeled_views: must be 1.
    **stream_args: passed to both ``pipeline.train_batches`` streams.

  Yields:
    An iterator of batches: the labeled ``image``/``label`` plus ``image_p``/``label_p``.

  Raises:
    ValueError: if there is no pool, or it has no pseudo-labels.
  """
  if unlabeled is None or num_unlabeled_views != 1:
    raise ValueError(
        f"method pseudo_label trains on one pseudo-labeled pool; got unlabeled={unlabeled!r} "
        f"and num_unlabeled_views={num_unlabeled_views}.")
  if len(unlabeled) and unlabeled.load(0)["label"] is None:
    raise ValueError(
        f"method pseudo_label got the unlabeled pool {unlabeled.name!r} without pseudo-labels: "
        "its rounds are run by jaxsemiseg.self_training_rounds.train_rounds (python -m "
        "jaxsemiseg.main does this for config.method='pseudo_label'), not by "
        "train.train_and_evaluate alone.")
  pseudo_seed = int(np.random.SeedSequence([seed, _PSEUDO_STREAM]).generate_state(1)[0])
  with pipeline.train_batches(labeled, batch_size=batch_size, seed=seed,
                              **stream_args) as labeled_batches, \
       pipeline.train_batches(unlabeled, batch_size=unlabeled_batch_size or batch_size,
                              seed=pseudo_seed, **stream_args) as pseudo_batches:
    yield ({**batch, "image_p": pseudo["image"], "label_p": pseudo["label"]}
           for batch, pseudo in zip(labeled_batches, pseudo_batches))


def tta_probabilities(probs_fn: Callable[[jax.Array], jax.Array], images: jax.Array, *,
                      scales: Sequence[float], flip: bool,
                      size_multiple: int = 1) -> jax.Array:
  """ST++'s test-time augmentation: class probabilities averaged over scales and flips.

  Each scale ``s`` resizes the images bilinearly to ``(int(H s), int(W s))``; that view
  and (with ``flip``) its mirror image are predicted, the mirror's prediction is flipped
  back, and both are resized to ``H x W``. ST++ sums the softmax outputs (its argmax is
  the pseudo-label); the mean returned here has the same argmax and is a probability, so
  its maximum is a confidence. ST++ resizes with ``align_corners=True``; here the resize
  is JAX's half-pixel bilinear without antialiasing.

  Args:
    probs_fn: ``images -> probabilities [B, h, w, C]`` for any ``h, w`` that are
      multiples of ``size_multiple``.
    images: float32 ``[B, H, W, 3]``.
    scales: the scales, e.g. ST++'s ``(0.5, 0.75, 1.0, 1.5, 2.0)``.
    flip: also predict each scale's horizontal mirror image.
    size_multiple: each resized view is zero-padded at the bottom and right to a multiple
      of this (so every encoder level halves evenly), and the padding is cut off again;
      views at the input size are predicted as they are, as validation predicts them.

  Returns:
    float32 ``[B, H, W, C]``: the mean probability over the ``len(scales) * (1 + flip)``
    views.
  """
  batch, height, width, _ = images.shape
  total = 0.0
  for scale in scales:
    size = (int(height * scale), int(width * scale))
    view = _resize(images, size)
    if flip:
      view = jnp.concatenate([view, view[:, :, ::-1]])
    multiple = 1 if size == (height, width) else size_multiple
    padded = jnp.pad(view, ((0, 0), (0, -size[0] % multiple), (0, -size[1] % multiple),
                            (0, 0)))
    probs = probs_fn(padded)[:, :size[0], :size[1]].astype(jnp.float32)
    if flip:
      probs = probs[:batch] + probs[batch:, :, ::-1]
    total = total + _resize(probs, (height, width))
  return total / (len(scales) * (2 if flip else 1))


def _resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "linear", antialias=False)


def confident_labels(probs: jax.Array, valid: jax.Array, *, threshold: float) -> jax.Array:
  """Pseudo-labels ``argmax p``, with 255 where ``max p < threshold`` or ``~valid``.

  Args:
    probs: float ``[B, H, W, C]`` class probabilities.
    valid: bool ``[B, H, W]`` real (not padded) pixels.
    threshold: the confidence below which a pixel is ignored; 0 keeps every valid pixel.

  Returns:
    uint8 ``[B, H, W]`` labels in ``[0, C)`` or 255.
  """
  keep = valid & (jnp.max(probs, axis=-1) >= threshold)
  return jnp.where(keep, jnp.argmax(probs, axis=-1), IGNORE_INDEX).astype(jnp.uint8)


def per_image_miou(predictions: jax.Array, reference: jax.Array, valid: jax.Array, *,
                   num_classes: int) -> jax.Array:
  """Each image's mIoU of ``predictions`` against ``reference``, over its valid pixels.

  ST++'s ``meanIOU`` on one image: ``IoU_c = I_c / U_c`` for the classes present in either
  map (``U_c > 0``; the others are NaN in the reference and left out of its ``nanmean``).

  Args:
    predictions: int ``[B, H, W]`` class ids.
    reference: int ``[B, H, W]`` class ids taken as the ground truth.
    valid: bool ``[B, H, W]`` pixels to count.
    num_classes: C.

  Returns:
    float32 ``[B]``; 0 for an image without valid pixels.
  """
  predicted = jax.nn.one_hot(predictions, num_classes, dtype=jnp.bool_) & valid[..., None]
  target = jax.nn.one_hot(reference, num_classes, dtype=jnp.bool_) & valid[..., None]
  intersection = jnp.sum(predicted & target, axis=(1, 2))
  union = jnp.sum(predicted | target, axis=(1, 2))
  present = union > 0
  iou = jnp.where(present, intersection / jnp.maximum(union, 1), 0.0)
  return (iou.sum(-1) / jnp.maximum(present.sum(-1), 1)).astype(jnp.float32)


def stability_scores(predictions: jax.Array, valid: jax.Array, *,
                     num_classes: int) -> jax.Array:
  """ST++'s stability: mean over earlier checkpoints of the mIoU with the final one.

  Args:
    predictions: int ``[K, B, H, W]``: the class ids of K checkpoints, in training order
      (ST++: E/3, 2E/3, E); the last one is the reference.
    valid: bool ``[B, H, W]`` real pixels.
    num_classes: C.

  Returns:
    float32 ``[B]``: ``mean_{k < K} mIoU(predictions[k], predictions[K - 1])``.

  Raises:
    ValueError: with fewer than two checkpoints.
  """
  if predictions.shape[0] < 2:
    raise ValueError(
        f"predictions has {predictions.shape[0]} checkpoint(s); stability needs at least 2.")
  scores = jax.vmap(lambda p: per_image_miou(p, predictions[-1], valid,
                                             num_classes=num_classes))(predictions[:-1])
  return scores.mean(axis=0)


def split_reliable(ids: Sequence[str],
                   scores: Sequence[float]) -> tuple[list[str], list[str]]:
  """ST++'s split: ids sorted by stability, descending; the first half is reliable.

  Ties keep the order of ``ids`` (a stable sort, as Python's ``list.sort``); with an odd
  count the extra image is unreliable (``[:N // 2]`` in the reference).

  Returns:
    ``(reliable, unreliable)``, each in decreasing stability.
  """
  if len(ids) != len(scores):
    raise ValueError(f"{len(ids)} ids but {len(scores)} scores; expected one score per id.")
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  ranked = [ids[i] for i in order]
  return ranked[:len(ranked) // 2], ranked[len(ranked) // 2:]
