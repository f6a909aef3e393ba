"""Validation: predictions, a confusion matrix summed over the whole set, then mIoU.

The confusion matrix is accumulated inside jit over global (sharded) batches, so the
sum over devices and hosts is part of the computation and every process ends with the
same numbers (UniMatch's all-reduced intersection/union, not a mean of per-image IoUs).
The expected calibration error's bins (15, ``metrics.expected_calibration_error``) are
summed the same way, so every evaluation also reports the ECE of the probabilities it
scored.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jaxsemiseg import metrics, parallel
from jaxsemiseg.methods import common


def make_predict_fn(model) -> Callable:
  """``predict(state, images) -> class probabilities [B, H, W, C]`` in eval mode."""

  def predict(state, images):
    outputs, _ = common.forward(model, state.params, state.batch_stats, images, train=False)
    return jax.nn.softmax(outputs["logits"].astype(jnp.float32), axis=-1)

  return predict


def make_probs_fn(predict_fn: Callable, *, num_classes: int, mode: str = "whole",
                  window: int = 0) -> Callable:
  """``probs(state, images) -> [B, H, W, C]`` by whole-image or sliding-window inference.

  Args:
    predict_fn: ``predict(state, images) -> probabilities``.
    num_classes: C.
    mode: ``"whole"`` image, or ``"sliding"`` window (window ``window``, stride 2/3 of it,
      averaged probabilities).
    window: the sliding window size (the training crop).
  """
  if mode not in ("whole", "sliding"):
    raise ValueError(f"eval mode {mode!r}; expected 'whole' or 'sliding'.")
  if mode == "whole":
    return predict_fn

  def probs(state, images):
    return metrics.predict_sliding_window(
        lambda x: predict_fn(state, x), images, window=window, num_classes=num_classes)

  return probs


def make_eval_step(predict_fn: Callable, *, num_classes: int, mode: str = "whole",
                   window: int = 0) -> Callable:
  """``eval_step(state, batch) -> {"confusion", "calibration"}`` sums of one batch.

  ``confusion`` is the int32 ``[C, C]`` confusion matrix, ``calibration`` the ECE bins of
  ``metrics.expected_calibration_error``. Arguments as :func:`make_probs_fn`.
  """
  probs_fn = make_probs_fn(predict_fn, num_classes=num_classes, mode=mode, window=window)

  def eval_step(state, batch):
    probs = probs_fn(state, batch["image"])
    return {
        "confusion": metrics.confusion_matrix(jnp.argmax(probs, axis=-1), batch["label"],
                                              num_classes=num_classes),
        "calibration": metrics.expected_calibration_error(probs, batch["label"]),
    }

  return eval_step


def evaluate(eval_step: Callable, state, batches: Iterable[dict], mesh: Mesh, *,
             num_batches: int | None = None, progress: bool = False) -> dict:
  """Runs a jitted ``eval_step`` over ``batches`` and returns the segmentation metrics.

  Returns:
    :func:`jaxsemiseg.metrics.segmentation_metrics` of the summed confusion matrix, plus
    ``"confusion"`` (numpy int64 [C, C]), ``"ece"`` and ``"calibration"`` (the summed ECE
    bins, for ``uncertainty.reliability_diagram``).
  """
  total, pending = None, None
  for batch in tqdm(batches, total=num_batches, desc="eval", leave=False, disable=not progress):
    sums = eval_step(state, parallel.to_global_batch(batch, mesh))
    # Summed on the host in 64 bits (a large set overflows int32 pixel counts); fetching
    # the previous batch's sums keeps the device one batch ahead.
    if pending is not None:
      total = _add(total, pending)
    pending = sums
  if pending is None:
    raise ValueError("The validation set is empty; check config.dataset.val_split.")
  total = _add(total, pending)
  return {**metrics.segmentation_metrics(total["confusion"]), "confusion": total["confusion"],
          "ece": metrics.ece_from_bins(total["calibration"]),
          "calibration": total["calibration"]}


def _add(total: dict | None, sums: dict) -> dict:
  sums = jax.tree.map(
      lambda x: np.asarray(x, np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64),
      jax.device_get(sums))
  return sums if total is None else jax.tree.map(np.add, total, sums)
