"""Host-side input pipeline: weak augmentation, training batches and evaluation batches.

Training batches are an endless, resumable stream. The batch of step ``t`` is a pure
function of ``(seed, t, process_index, process_count)``: the examples come from a
per-epoch permutation ``default_rng([seed, stream, epoch]).permutation(N)`` at the
positions ``t * B + j`` (``B`` the global batch, ``j`` the slot in it), and slot ``j``
is augmented with ``default_rng([seed, stream, t, j])``. Restarting at ``start_step=k``
therefore replays exactly the batches of an uninterrupted run, and process ``p`` of
``P`` reads slots ``[p * B / P, (p + 1) * B / P)`` of every global batch.

Examples are decoded and augmented on a small thread pool, a few batches ahead of the
consumer, so the device is not starved; batches come out in step order regardless.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import os
from typing import Callable, Iterator, Sequence
import weakref

import numpy as np
from PIL import Image

from jaxsemiseg.data.source import IGNORE_INDEX, SegmentationSource
from jaxsemiseg.data.splits import without_labels

# Stream ids, part of every seed, so the three streams draw independent randomness.
_LABELED_STREAM, _UNLABELED_STREAM, _SECOND_UNLABELED_STREAM = 0, 1, 2

# Epoch permutations kept per stream; a batch spans at most a few epochs unless the
# dataset is smaller than the batch, where recomputing them is cheap anyway.
_CACHED_EPOCHS = 4


def weak_augment(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
  """The UniMatch weak view: random rescale, pad, random square crop, horizontal flip.

  The long side is resized to an integer drawn uniformly from
  ``[int(L * scale_range[0]), int(L * scale_range[1])]`` (``L`` the original long side)
  and the short side keeps the aspect ratio, rounded half up; the image is resized
  bilinearly and the label with nearest neighbour. The result is padded at the bottom
  and right to at least ``crop_size`` (image with 0, label with 255), cropped at a
  uniform position, and flipped left-right with probability 0.5.

  Args:
    rng: the randomness of this example.
    image: uint8 ``[H, W, 3]``.
    label: uint8 ``[H, W]``, or None for an unlabeled example.
    crop_size: the side S of the square crop.
    scale_range: the range of the long-side scale factor.
    flip: whether to flip with probability 0.5.

  Returns:
    ``(image, label)``: uint8 ``[S, S, 3]`` and uint8 ``[S, S]`` (None if ``label`` is).

  Raises:
    ValueError: if the arguments have the wrong type, shape or range.
  """
  _check_augment_args(crop_size=crop_size, scale_range=scale_range)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
        f"image has dtype {image.dtype} and shape {image.shape}; expected uint8 [H, W, 3].")
  if label is not None and (label.dtype != np.uint8 or label.shape != image.shape[:2]):
    raise ValueError(
        f"label has dtype {label.dtype} and shape {label.shape}; expected uint8 "
        f"{list(image.shape[:2])} to match the image.")
  height, width = image.shape[:2]
  long_side = max(height, width)
  new_long = max(1, int(rng.integers(int(long_side * scale_range[0]),
                                     int(long_side * scale_range[1]) + 1)))
  if height > width:
    new_height, new_width = new_long, max(1, int(width * new_long / height + 0.5))
  else:
    new_height, new_width = max(1, int(height * new_long / width + 0.5)), new_long
  if (new_height, new_width) != (height, width):
    image = np.asarray(
        Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR))
    if label is not None:
      label = np.asarray(
          Image.fromarray(label).resize((new_width, new_height), Image.Resampling.NEAREST))
  pad_height, pad_width = max(crop_size - new_height, 0), max(crop_size - new_width, 0)
  if pad_height or pad_width:
    image = np.pad(image, ((0, pad_height), (0, pad_width), (0, 0)))
    if label is not None:
      label = np.pad(label, ((0, pad_height), (0, pad_width)), constant_values=IGNORE_INDEX)
  top = int(rng.integers(0, image.shape[0] - crop_size + 1))
  left = int(rng.integers(0, image.shape[1] - crop_size + 1))
  rows, cols = slice(top, top + crop_size), slice(left, left + crop_size)
  image, label = image[rows, cols], None if label is None else label[rows, cols]
  if flip and rng.random() < 0.5:
    image, label = image[:, ::-1], None if label is None else label[:, ::-1]
  return (np.ascontiguousarray(image),
          None if label is None else np.ascontiguousarray(label))


def train_batches(
    labeled: SegmentationSource,
    unlabeled: SegmentationSource | None = None,
    *,
    batch_size: int,
    unlabeled_batch_size: int | None = None,
    crop_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    num_unlabeled_views: int = 1,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    num_workers: int | None = None,
    prefetch: int = 2,
) -> BatchStream:
  """An endless, deterministic, resumable stream of weakly augmented training batches.

  Every epoch of each stream visits every example once, in a fresh order; an epoch
  boundary may fall inside a batch. The unlabeled pool is read through
  ``splits.without_labels``, so its masks never reach a batch.

  Args:
    labeled: the labeled training examples.
    unlabeled: the unlabeled pool, or None for supervised training.
    batch_size: the GLOBAL labeled batch size, divisible by ``process_count``.
    unlabeled_batch_size: the GLOBAL unlabeled batch size; defaults to ``batch_size``.
    crop_size: the side S of the square training crop.
    seed: a non-negative int; with the step it fixes every batch.
    process_index: this process's index in ``[0, process_count)``.
    process_count: the number of processes that share each global batch.
    start_step: the step of the first batch yielded (resume from a checkpoint).
    num_unlabeled_views: 2 adds ``image_u2``: a second unlabeled batch from its own
      shuffle of the pool, the mixing partner of UniMatch/FixMatch CutMix.
    scale_range: see ``weak_augment``.
    flip: see ``weak_augment``.
    num_workers: threads that decode and augment examples; None = min(8, #CPUs).
    prefetch: batches prepared ahead of the one being consumed.

  Returns:
    A ``BatchStream`` of dicts with ``b = batch_size // process_count`` (``u`` likewise):
    ``image`` float32 ``[b, S, S, 3]`` in [0, 1] and ``label`` int32 ``[b, S, S]``;
    with ``unlabeled``, ``image_u`` float32 ``[u, S, S, 3]`` and ``valid_u`` bool
    ``[u, S, S]`` (False on crop padding, which UniMatch leaves out of the unlabeled
    loss); with two views also ``image_u2`` and ``valid_u2``.

  Raises:
    ValueError: if an argument is out of range, a batch size is not divisible by
      ``process_count``, or a source is empty.
  """
  _check_int("seed", seed, minimum=0)
  _check_int("start_step", start_step, minimum=0)
  _check_int("prefetch", prefetch, minimum=0)
  _check_augment_args(crop_size=crop_size, scale_range=scale_range)
  _check_processes(process_index, process_count)
  if num_unlabeled_views not in (1, 2):
    raise ValueError(f"num_unlabeled_views={num_unlabeled_views!r}; expected 1 or 2.")
  if num_unlabeled_views == 2 and unlabeled is None:
    raise ValueError("num_unlabeled_views=2 needs an unlabeled source; got unlabeled=None.")
  if len(labeled) == 0:
    raise ValueError(f"labeled source {labeled.name!r} is empty.")
  if unlabeled is not None and len(unlabeled) == 0:
    raise ValueError(
        f"unlabeled source {unlabeled.name!r} is empty; pass unlabeled=None to train "
        "without an unlabeled pool.")
  augment = functools.partial(weak_augment, crop_size=crop_size, scale_range=scale_range,
                              flip=flip)
  streams = [_Stream(
      "image", "label", labeled, _LABELED_STREAM, seed=seed,
      batch_name="batch_size", global_batch=batch_size, process_index=process_index,
      process_count=process_count,
      make_task=functools.partial(_labeled_example, augment=augment))]
  if unlabeled is not None:
    pool = without_labels(unlabeled)
    make_task = functools.partial(_unlabeled_example, augment=augment)
    global_batch = batch_size if unlabeled_batch_size is None else unlabeled_batch_size
    views = (("_u", _UNLABELED_STREAM), ("_u2", _SECOND_UNLABELED_STREAM))
    for suffix, stream_id in views[:num_unlabeled_views]:
      streams.append(_Stream(
          "image" + suffix, "valid" + suffix, pool, stream_id, seed=seed,
          batch_name="unlabeled_batch_size", global_batch=global_batch,
          process_index=process_index, process_count=process_count, make_task=make_task))

  def plans() -> Iterator[list[Callable[[], tuple]]]:
    step = start_step
    while True:
      yield [task for stream in streams for task in stream.tasks(step)]
      step += 1

  def assemble(results: list[tuple]) -> dict[str, np.ndarray]:
    batch, start = {}, 0
    for stream in streams:
      images, extras = zip(*results[start:start + stream.local_batch])
      batch[stream.image_key] = np.stack(images)
      batch[stream.extra_key] = np.stack(extras)
      start += stream.local_batch
    return batch

  return BatchStream(plans(), assemble, num_workers=_num_workers(num_workers),
                     prefetch=prefetch)


def eval_batches(
    source: SegmentationSource,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    pad_to: int | tuple[int, int] | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
) -> BatchStream:
  """The whole evaluation set once, in order, sharded across processes and padded.

  Global batch ``k`` holds examples ``[k * B, (k + 1) * B)``; process ``p`` gets slots
  ``[p * B / P, (p + 1) * B / P)`` of it, so concatenating the processes' batches in
  process order gives the global batch. Every process yields ``ceil(N / B)`` batches;
  slots past the end of the set are padding: image 0, label all 255 (never counted by
  a metric that ignores 255), id ``""``. Images are not resized: each batch is padded at
  the bottom and right (image 0, label 255) to the largest height and width in it, or to
  ``pad_to``. A fixed ``pad_to`` also means one compilation of the evaluation step; it
  is required with several processes, whose local batches must have one shape. An
  example without a label (predict mode) gets an all-255 label.

  Args:
    source: the evaluation set.
    batch_size: the GLOBAL batch size, divisible by ``process_count``.
    process_index: this process's index in ``[0, process_count)``.
    process_count: the number of processes.
    pad_to: ``(height, width)`` (or one int for both) every batch is padded to; it must
      hold the largest image.
    num_workers: threads that decode examples; None = min(8, #CPUs).
    prefetch: batches prepared ahead of the one being consumed.

  Returns:
    A ``BatchStream`` of dicts: ``image`` float32 ``[b, H, W, 3]`` in [0, 1],
    ``label`` int32 ``[b, H, W]`` and ``id``, a list of ``b`` strings.

  Raises:
    ValueError: if an argument is out of range, ``pad_to`` is missing with several
      processes or is smaller than an image (raised when that batch is built), or the
      source is empty.
  """
  _check_int("prefetch", prefetch, minimum=0)
  _check_processes(process_index, process_count)
  local_batch = _local_batch("batch_size", batch_size, process_count)
  if len(source) == 0:
    raise ValueError(f"evaluation source {source.name!r} is empty.")
  if pad_to is None and process_count > 1:
    raise ValueError(
        f"pad_to=None with process_count={process_count}: every process must build arrays "
        "of one shape, so give pad_to=(height, width) covering the largest image "
        "(e.g. (512, 512) for Pascal VOC).")
  pad_size = None if pad_to is None else _pad_size(pad_to)
  offset = process_index * local_batch

  def plans() -> Iterator[list[Callable[[], tuple]]]:
    for k in range(math.ceil(len(source) / batch_size)):
      first = k * batch_size + offset
      yield [functools.partial(_eval_example, source, i)
             for i in range(first, min(first + local_batch, len(source)))]

  def assemble(results: list[tuple]) -> dict:
    height, width = pad_size or tuple(np.max([r[0].shape[:2] for r in results], axis=0))
    images = np.zeros((local_batch, height, width, 3), np.float32)
    labels = np.full((local_batch, height, width), IGNORE_INDEX, np.int32)
    for slot, (image, label, example_id) in enumerate(results):
      if image.shape[0] > height or image.shape[1] > width:
        raise ValueError(
            f"{source.name}: image {example_id!r} is {image.shape[0]}x{image.shape[1]}, "
            f"larger than pad_to={pad_to!r}; pad_to must hold the largest image.")
      images[slot, :image.shape[0], :image.shape[1]] = image
      labels[slot, :label.shape[0], :label.shape[1]] = label
    ids = [r[2] for r in results] + [""] * (local_batch - len(results))
    return {"image": images, "label": labels, "id": ids}

  return BatchStream(plans(), assemble, num_workers=_num_workers(num_workers),
                     prefetch=prefetch)


class _Stream:
  """One shuffled stream of a training batch: its source, seeds and batch slots."""

  def __init__(self, image_key: str, extra_key: str, source: SegmentationSource,
               stream_id: int, *, seed: int, batch_name: str, global_batch: int,
               process_index: int, process_count: int, make_task: Callable) -> None:
    self.image_key, self.extra_key = image_key, extra_key
    self.local_batch = _local_batch(batch_name, global_batch, process_count)
    self._source, self._stream_id, self._seed = source, stream_id, seed
    self._global_batch = global_batch
    self._slots = process_index * self.local_batch + np.arange(self.local_batch)
    self._make_task = make_task
    self._permutations: dict[int, np.ndarray] = {}

  def tasks(self, step: int) -> list[Callable[[], tuple]]:
    """One task per local slot of ``step``'s batch, returning ``(image, extra)``."""
    epochs, offsets = np.divmod(step * self._global_batch + self._slots, len(self._source))
    return [
        functools.partial(self._make_task, self._source, int(self._permutation(e)[o]),
                          [self._seed, self._stream_id, step, int(slot)])
        for e, o, slot in zip(epochs.tolist(), offsets.tolist(), self._slots)]

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) >= _CACHED_EPOCHS:
        del self._permutations[min(self._permutations)]
      self._permutations[epoch] = np.random.default_rng(
          [self._seed, self._stream_id, epoch]).permutation(len(self._source))
    return self._permutations[epoch]


def _labeled_example(source: SegmentationSource, index: int, seed_words: list[int], *,
                     augment: Callable) -> tuple[np.ndarray, np.ndarray]:
  example = source[index]
  if example["label"] is None:
    raise ValueError(
        f"{source.name}: example {example['id']!r} of the labeled source has no mask; "
        "labeled training examples need one.")
  image, label = augment(np.random.default_rng(seed_words), example["image"],
                         example["label"])
  return image.astype(np.float32) / 255.0, label.astype(np.int32)


def _unlabeled_example(source: SegmentationSource, index: int, seed_words: list[int], *,
                       augment: Callable) -> tuple[np.ndarray, np.ndarray]:
  image = source[index]["image"]
  # An all-zero mask through the same geometry marks the crop's padding with 255.
  image, mask = augment(np.random.default_rng(seed_words), image,
                        np.zeros(image.shape[:2], np.uint8))
  return image.astype(np.float32) / 255.0, mask == 0


def _eval_example(source: SegmentationSource, index: int) -> tuple[np.ndarray, np.ndarray, str]:
  example = source[index]
  image, label = example["image"], example["label"]
  if label is None:
    label = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
  return image.astype(np.float32) / 255.0, label, example["id"]


class BatchStream:
  """An iterator of batches, built on a thread pool a few batches ahead of the consumer.

  Each plan is a list of tasks (one per example); the batch is ``assemble`` of their
  results, in plan order whatever order the tasks finish in. ``close()`` (also on
  leaving a ``with`` block) ends the iteration and cancels the queued work, which also
  happens on garbage collection and at interpreter exit.
  """

  def __init__(self, plans: Iterator[list[Callable]], assemble: Callable[[list], dict], *,
               num_workers: int, prefetch: int) -> None:
    self._plans, self._assemble, self._prefetch = plans, assemble, prefetch
    self._pending: collections.deque = collections.deque()
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=num_workers, thread_name_prefix="jaxsemiseg-input")
    self._executor = executor
    self._close = weakref.finalize(self, executor.shutdown, wait=False, cancel_futures=True)

  def __iter__(self) -> "BatchStream":
    return self

  def __next__(self) -> dict:
    while len(self._pending) <= self._prefetch:
      plan = next(self._plans, None)
      if plan is None:
        break
      self._pending.append([self._executor.submit(task) for task in plan])
    if not self._pending:
      self.close()
      raise StopIteration
    return self._assemble([future.result() for future in self._pending.popleft()])

  def close(self) -> None:
    """Stops the worker threads and ends the iteration, like closing a generator."""
    self._plans = iter(())
    self._pending.clear()
    self._close()

  def __enter__(self) -> "BatchStream":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _check_augment_args(*, crop_size: int, scale_range: Sequence[float]) -> None:
  _check_int("crop_size", crop_size, minimum=1)
  if (len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]):
    raise ValueError(
        f"scale_range={scale_range!r}; expected (low, high) with 0 < low <= high.")


def _check_processes(process_index: int, process_count: int) -> None:
  _check_int("process_count", process_count, minimum=1)
  _check_int("process_index", process_index, minimum=0)
  if process_index >= process_count:
    raise ValueError(
        f"process_index={process_index} with process_count={process_count}; expected "
        "0 <= process_index < process_count.")


def _local_batch(name: str, global_batch: int, process_count: int) -> int:
  _check_int(name, global_batch, minimum=1)
  if global_batch % process_count:
    raise ValueError(
        f"{name}={global_batch} is not divisible by process_count={process_count}; the "
        "batch size is global and each process loads an equal share.")
  return global_batch // process_count


def _num_workers(num_workers: int | None) -> int:
  if num_workers is None:
    return min(8, os.cpu_count() or 1)
  _check_int("num_workers", num_workers, minimum=1)
  return num_workers


def _pad_size(pad_to: int | tuple[int, int]) -> tuple[int, int]:
  size = (pad_to, pad_to) if isinstance(pad_to, (int, np.integer)) else tuple(pad_to)
  if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                           or s < 1 for s in size):
    raise ValueError(f"pad_to={pad_to!r}; expected a positive int or (height, width).")
  return int(size[0]), int(size[1])


def _check_int(name: str, value: int, *, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}={value!r}; expected an int >= {minimum}.")
