"""Predictive uncertainty: MC Dropout, MC BatchNorm, deep ensembles, maps and calibration.

Stochastic predictors return the class probabilities of every pass, ``[T, B, H, W, C]``:
  - ``mc_dropout``: T forward passes with dropout on and BatchNorm in inference mode,
    one ``jax.vmap`` over T dropout keys (Gal & Ghahramani; UA-MT uses T = 8).
  - ``mc_batchnorm``: T passes, each normalising with the BatchNorm statistics of its own
    training batch (Teye et al., ICML 2018).
  - ``ensemble_predict``: one pass per member of a stacked-params ensemble (the
    ``jax.vmap(init)(keys)`` layout), ``stacked.stacked_map`` over the members (one
    ``jax.vmap`` on GPU/TPU, an unrolled loop on CPU).

Maps reduce ``[T, ..., C]`` samples to ``[...]`` (``shared/reference/METHODS.md`` 13):
predictive entropy ``H[p_mean]``, expected entropy ``mean_t H[p_t]``, mutual information
(BALD) = their difference, variance and max probability of the mean prediction.

Calibration: the ECE itself is ``metrics.expected_calibration_error`` (per-bin sums that
add over batches and devices) and ``metrics.ece_from_bins``; this module draws those bins
as a reliability diagram and fits / applies a temperature (Guo et al., 2017).
``uncertainty_heatmap`` colours an uncertainty map for the predict mode's PNGs.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsemiseg import losses, stacked

IGNORE_INDEX = 255

Variables = Mapping[str, Any]
# apply_fn(variables, images) -> logits [B, H, W, C]; deterministic.
ApplyFn = Callable[[Variables, jax.Array], jax.Array]
# apply_fn(variables, images, key) -> logits [B, H, W, C]; the key drives dropout.
StochasticApplyFn = Callable[[Variables, jax.Array, jax.Array], jax.Array]


def make_apply_fn(model: nn.Module) -> ApplyFn:
  """``apply_fn(variables, images) -> logits`` in inference mode, for ``ensemble_predict``.

  Args:
    model: a model with this package's contract (``jaxsemiseg.models``):
      ``model.apply(variables, images, train=False)`` returns a dict with ``"logits"``.

  Returns:
    The function; BatchNorm uses the running statistics and dropout is off.
  """

  def apply_fn(variables: Variables, images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False)["logits"]

  return apply_fn


def make_mc_dropout_apply_fn(model: nn.Module) -> StochasticApplyFn:
  """``apply_fn(variables, images, key) -> logits`` with dropout on, for ``mc_dropout``.

  Args:
    model: a model with this package's contract: ``model.apply(variables, images,
      train=False, mc_dropout=True, rngs={"dropout": key})`` returns ``"logits"``.

  Returns:
    The function; BatchNorm stays in inference mode (running statistics, no update) and
    only dropout is stochastic.
  """

  def apply_fn(variables: Variables, images: jax.Array, key: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False, mc_dropout=True,
                       rngs={"dropout": key})["logits"]

  return apply_fn


def _check_num_samples(num_samples: Any) -> None:
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(
        f"num_samples={num_samples!r}; expected a positive int, the number of stochastic "
        "forward passes T (UA-MT uses 8).")


def _probabilities(logits: jax.Array) -> jax.Array:
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def mc_dropout(key: jax.Array, apply_fn: StochasticApplyFn, variables: Variables,
               images: jax.Array, *, num_samples: int) -> jax.Array:
  """Class probabilities of ``num_samples`` MC Dropout passes, vmapped over dropout keys.

  Args:
    key: PRNG key; it is split into one dropout key per pass.
    apply_fn: ``apply_fn(variables, images, key) -> logits [B, H, W, C]`` with dropout
      on and BatchNorm in inference mode, e.g. ``make_mc_dropout_apply_fn(model)``.
    variables: the model's variables (``{"params": ..., "batch_stats": ...}``).
    images: ``[B, H, W, 3]`` float images in [0, 1].
    num_samples: T, the number of passes.

  Returns:
    float32 probabilities ``[T, B, H, W, C]``. A model whose dropout rate is 0 gives T
    identical samples.

  Raises:
    ValueError: if ``num_samples`` is not a positive int.
  """
  _check_num_samples(num_samples)
  keys = jax.random.split(key, num_samples)
  logits = jax.vmap(apply_fn, in_axes=(None, None, 0))(variables, images, keys)
  return _probabilities(logits)


def ensemble_predict(apply_fn: ApplyFn, stacked_variables: Variables,
                     images: jax.Array, *, member_map: str = "auto") -> jax.Array:
  """Class probabilities of every member of a stacked ensemble, one pass per member.

  Args:
    apply_fn: ``apply_fn(variables, images) -> logits [B, H, W, C]``, deterministic,
      e.g. ``make_apply_fn(model)``.
    stacked_variables: the members' variables stacked on a leading axis K, as returned
      by ``jax.vmap(model.init)(keys, ...)``.
    images: ``[B, H, W, 3]`` float images in [0, 1], shared by all members.
    member_map: how the members run, ``stacked.stacked_map``'s ``member_map``: one
      ``jax.vmap`` (GPU/TPU) or an unrolled loop, faster on XLA:CPU (``"auto"`` picks).

  Returns:
    float32 probabilities ``[K, B, H, W, C]``; average over axis 0 for the ensemble's
    prediction, or pass them to the uncertainty maps.

  Raises:
    ValueError: if the leaves of ``stacked_variables`` do not share a leading axis, or
      ``member_map`` is not one of ``stacked.MEMBER_MAPS``.
  """
  logits = stacked.stacked_map(apply_fn, stacked_variables, images, in_axes=(0, None),
                               member_map=member_map)
  return _probabilities(logits)


def _require_batch_stats(variables: Variables) -> None:
  if not variables.get("batch_stats"):
    raise ValueError(
        "MC BatchNorm needs a model with BatchNorm, but variables has no (or an empty) "
        f"'batch_stats' collection (collections: {sorted(variables)}). Use mc_dropout "
        "or an ensemble for BatchNorm-free models such as the UNet.")


def training_batch_statistics(key: jax.Array, model: nn.Module, variables: Variables,
                              train_images: jax.Array) -> Any:
  """The BatchNorm statistics of one training batch, layer by layer.

  The statistics are those a train-mode forward pass of ``train_images`` computes: each
  BatchNorm layer's batch mean and (biased) variance of its input, with every earlier
  layer normalised by its own batch statistics. They are read back through the running
  average update ``new = m * old + (1 - m) * batch``, evaluated from ``old = 0`` and
  ``old = 1`` (one ``vmap``: only the update depends on ``old``, so the forward pass
  runs once): ``m = new(1) - new(0)`` and ``batch = new(0) / (1 - m)``. This holds for
  any momentum ``m < 1`` (including per-layer momenta) and keeps the test batch out of
  the statistics, as Teye et al. prescribe. In float32 the relative error is about
  ``1e-7 * max(1, |new(0)|) / (1 - m)``: ~1e-6 for our models' ``m = 0.9``.

  Args:
    key: PRNG key for the ``"dropout"`` stream of the train-mode pass (our models only
      drop out after their last BatchNorm, so it does not change the statistics).
    model: a model with this package's contract whose ``batch_stats`` are running
      averages with momentum < 1 (``flax.linen.BatchNorm``).
    variables: ``{"params": ..., "batch_stats": ...}``.
    train_images: ``[Bt, H', W', 3]`` training images in [0, 1]; their size may differ
      from the images later normalised with these statistics.

  Returns:
    A pytree shaped like ``variables["batch_stats"]`` holding the batch statistics.

  Raises:
    ValueError: if ``variables`` has no BatchNorm statistics.
  """
  _require_batch_stats(variables)

  def updated_statistics(start: Any) -> Any:
    _, updates = model.apply({**variables, "batch_stats": start}, train_images,
                             train=True, rngs={"dropout": key}, mutable=["batch_stats"])
    return updates["batch_stats"]

  starts = jax.tree.map(lambda s: jnp.stack([jnp.zeros_like(s), jnp.ones_like(s)]),
                        variables["batch_stats"])
  from_both = jax.vmap(updated_statistics)(starts)
  return jax.tree.map(lambda u: u[0] / (1.0 - (u[1] - u[0])), from_both)


def mc_batchnorm(key: jax.Array, model: nn.Module, variables: Variables,
                 images: jax.Array, train_batches: jax.Array) -> jax.Array:
  """Class probabilities of MC BatchNorm passes, one per training batch (Teye et al.).

  Pass t normalises ``images`` at every BatchNorm layer with the statistics of training
  batch t (``training_batch_statistics``) instead of the running averages; dropout is
  off, so the only randomness is which training batch was drawn. Both steps are vmapped
  over the T batches. The statistics do not depend on ``images``: to predict a whole
  validation set with the same T draws, reuse the same ``train_batches`` (and key).

  Args:
    key: PRNG key, split into one ``"dropout"`` key per statistics pass.
    model: a BatchNorm model with this package's contract (e.g. DeepLabV3Plus).
    variables: ``{"params": ..., "batch_stats": ...}``.
    images: ``[B, H, W, 3]`` float images in [0, 1] to predict.
    train_batches: ``[T, Bt, H', W', 3]`` training batches, freshly sampled from the
      training set at the training batch size Bt (the sampling happens in the input
      pipeline, on the host).

  Returns:
    float32 probabilities ``[T, B, H, W, C]``.

  Raises:
    ValueError: if the model has no BatchNorm or ``train_batches`` is not 5-D.
  """
  _require_batch_stats(variables)
  if train_batches.ndim != 5:
    raise ValueError(
        f"train_batches has shape {train_batches.shape}; expected [T, Bt, H, W, 3], T "
        "training batches of Bt images each.")
  keys = jax.random.split(key, train_batches.shape[0])
  statistics = jax.vmap(
      lambda k, batch: training_batch_statistics(k, model, variables, batch))(
          keys, train_batches)

  def predict(batch_stats: Any) -> jax.Array:
    return model.apply({**variables, "batch_stats": batch_stats}, images,
                       train=False)["logits"]

  return _probabilities(jax.vmap(predict)(statistics))


def _check_samples(samples: jax.Array, name: str) -> None:
  if samples.ndim < 2:
    raise ValueError(
        f"{name}: samples have shape {samples.shape}; expected [T, ..., C] probabilities "
        "(T stochastic passes or members first, classes last). Pass p[None] for one "
        "prediction.")


def _entropy(probs: jax.Array) -> jax.Array:
  # entr(p) = -p log p with entr(0) = 0, so one-hot predictions give 0, not NaN.
  return jax.scipy.special.entr(probs.astype(jnp.float32)).sum(axis=-1)


def predictive_entropy(samples: jax.Array) -> jax.Array:
  """``H[p_mean] = -sum_c p_mean,c log p_mean,c`` with ``p_mean = mean_t p_t``.

  Total uncertainty, in nats, between 0 and ``log C``; UA-MT thresholds it.

  Args:
    samples: ``[T, ..., C]`` probabilities.

  Returns:
    float32 ``[...]``.

  Raises:
    ValueError: if ``samples`` has fewer than 2 axes.
  """
  _check_samples(samples, "predictive_entropy")
  return _entropy(samples.mean(axis=0))


def expected_entropy(samples: jax.Array) -> jax.Array:
  """``mean_t H[p_t]``, the aleatoric part of the predictive entropy, in nats.

  Args:
    samples: ``[T, ..., C]`` probabilities.

  Returns:
    float32 ``[...]``.

  Raises:
    ValueError: if ``samples`` has fewer than 2 axes.
  """
  _check_samples(samples, "expected_entropy")
  return _entropy(samples).mean(axis=0)


def mutual_information(samples: jax.Array) -> jax.Array:
  """BALD mutual information ``H[p_mean] - mean_t H[p_t]``, the epistemic part, in nats.

  It is 0 when all T samples agree and at most ``log C``. By Jensen's inequality it is
  never negative; rounding can make the difference slightly negative, so it is clipped
  at 0.

  Args:
    samples: ``[T, ..., C]`` probabilities.

  Returns:
    float32 ``[...]``.

  Raises:
    ValueError: if ``samples`` has fewer than 2 axes.
  """
  _check_samples(samples, "mutual_information")
  return jnp.maximum(predictive_entropy(samples) - expected_entropy(samples), 0.0)


def predictive_variance(samples: jax.Array) -> jax.Array:
  """``mean_c Var_t p_t,c``: the variance over samples (ddof 0), averaged over classes.

  Args:
    samples: ``[T, ..., C]`` probabilities.

  Returns:
    float32 ``[...]``; 0 when all samples agree.

  Raises:
    ValueError: if ``samples`` has fewer than 2 axes.
  """
  _check_samples(samples, "predictive_variance")
  return samples.astype(jnp.float32).var(axis=0).mean(axis=-1)


def max_probability(samples: jax.Array) -> jax.Array:
  """``max_c p_mean,c``, the confidence of the mean prediction (FixMatch's ``q``).

  Args:
    samples: ``[T, ..., C]`` probabilities.

  Returns:
    float32 ``[...]`` in ``[1 / C, 1]``.

  Raises:
    ValueError: if ``samples`` has fewer than 2 axes.
  """
  _check_samples(samples, "max_probability")
  return samples.astype(jnp.float32).mean(axis=0).max(axis=-1)


def _check_bins(bins: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(count, accuracy_sum, confidence_sum) as float64 arrays; ValueError if malformed."""
  keys = ("count", "accuracy_sum", "confidence_sum")
  missing = [key for key in keys if key not in bins]
  if missing:
    raise ValueError(
        f"bins lacks {missing}; pass the dict returned by "
        "metrics.expected_calibration_error (summed over batches).")
  count, accuracy_sum, confidence_sum = (np.asarray(bins[key], np.float64) for key in keys)
  if count.ndim != 1 or accuracy_sum.shape != count.shape or (
      confidence_sum.shape != count.shape):
    raise ValueError(
        f"bins arrays have shapes {count.shape}, {accuracy_sum.shape}, "
        f"{confidence_sum.shape}; expected three [num_bins] arrays.")
  if count.sum() == 0:
    raise ValueError("the ECE bins count no pixel (all ignored?); nothing to draw.")
  return count, accuracy_sum, confidence_sum


def reliability_curve(bins: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The numbers a reliability diagram draws, from (summed) ECE bins.

  Args:
    bins: ``metrics.expected_calibration_error(probs, labels)`` summed over the
      validation set (``{"count", "accuracy_sum", "confidence_sum"}``, ``[num_bins]``).

  Returns:
    ``{"accuracy", "confidence", "fraction"}``, float64 ``[num_bins]``: each bin's mean
    accuracy and mean confidence (0 for an empty bin) and its share of the pixels.

  Raises:
    ValueError: if ``bins`` is malformed or counts no pixel.
  """
  count, accuracy_sum, confidence_sum = _check_bins(bins)
  filled = count > 0
  return {
      "accuracy": np.divide(accuracy_sum, count, out=np.zeros_like(count), where=filled),
      "confidence": np.divide(confidence_sum, count, out=np.zeros_like(count), where=filled),
      "fraction": count / count.sum(),
  }


def reliability_diagram(bins: Mapping[str, Any], path: str, *,
                        title: str = "Reliability diagram") -> None:
  """Writes a reliability diagram PNG from (summed) ECE bins.

  Top: the mean accuracy of each confidence bin as bars, the gap to the bin's mean
  confidence in red and the diagonal of perfect calibration; the ECE is in the title.
  Bottom: the fraction of pixels in each bin. Empty bins draw nothing.

  Args:
    bins: ``metrics.expected_calibration_error(probs, labels)`` summed over the
      validation set (``{"count", "accuracy_sum", "confidence_sum"}``, ``[num_bins]``).
    path: output PNG; missing directories are created.
    title: the figure title, before the ECE.

  Raises:
    ValueError: if ``bins`` is malformed or counts no pixel.
  """
  # Imported here: matplotlib takes ~0.7 s to import, and train steps import this module.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  curve = reliability_curve(bins)
  accuracy, confidence, fraction = curve["accuracy"], curve["confidence"], curve["fraction"]
  num_bins = accuracy.size
  filled = fraction > 0
  ece = float(np.sum(fraction * np.abs(accuracy - confidence)))
  left_edges = np.arange(num_bins) / num_bins
  width = 1.0 / num_bins

  figure = Figure(figsize=(4.5, 5.5))
  top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  top.bar(left_edges[filled], accuracy[filled], width=width, align="edge",
          color="tab:blue", edgecolor="black", label="accuracy")
  top.bar(left_edges[filled], (confidence - accuracy)[filled], width=width, align="edge",
          bottom=accuracy[filled], color="tab:red", alpha=0.35, edgecolor="tab:red",
          hatch="//", label="gap to confidence")
  top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.set_ylabel("accuracy")
  top.set_title(f"{title} (ECE {100 * ece:.2f}%)")
  top.legend(loc="upper left", fontsize="small")
  bottom.bar(left_edges, fraction, width=width, align="edge", color="gray",
             edgecolor="black")
  bottom.set_xlabel("confidence")
  bottom.set_ylabel("pixel fraction")
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)


def apply_temperature(logits: jax.Array, temperature: jax.Array | float) -> jax.Array:
  """Temperature-scaled logits ``logits / T``; the argmax (and so mIoU) is unchanged.

  Args:
    logits: ``[..., C]`` logits.
    temperature: the scalar ``T > 0`` from ``fit_temperature``.

  Returns:
    float32 ``[..., C]`` logits; their softmax is the calibrated probability.
  """
  return logits.astype(jnp.float32) / temperature


def fit_temperature(logits: jax.Array, labels: jax.Array, *,
                    ignore_index: int = IGNORE_INDEX, min_temperature: float = 0.05,
                    max_temperature: float = 20.0, num_iterations: int = 40) -> jax.Array:
  """The temperature minimising the NLL of ``softmax(logits / T)`` on labelled pixels.

  The NLL is convex in ``1 / T`` (a log-sum-exp of functions linear in it, minus a
  linear term), so it has one minimum along ``s = log T`` and its derivative in ``s``
  changes sign once. Each iteration halves a bracket of ``s`` by the sign of that
  derivative at the midpoint (bisection, inside one ``jax.lax.fori_loop``). The sign of
  the derivative stays exact near the optimum, where NLL differences vanish below
  float32 resolution; 40 halvings of the default bracket reach float32 resolution. The
  reference (gpleiss/temperature_scaling) runs LBFGS (lr 0.01, 50 iterations) on ``T``;
  both minimise the same function.

  The NLL is averaged over the pixels whose label is not ``ignore_index``
  (``losses.cross_entropy``). Logits of a whole validation set rarely fit in memory:
  pass a random subsample of validation pixels, e.g. ``[N, C]`` with ``N ~ 1e6``.

  Args:
    logits: ``[..., C]`` uncalibrated logits.
    labels: ``[...]`` int labels, ``ignore_index`` where unlabelled.
    ignore_index: label of pixels left out.
    min_temperature: lower end of the search bracket.
    max_temperature: upper end of the search bracket; a result at either end means the
      optimum lies outside it.
    num_iterations: bisection steps.

  Returns:
    The float32 scalar temperature ``T``; use ``apply_temperature(logits, T)``.

  Raises:
    ValueError: on mismatched shapes, a bad bracket or iteration count, or no labelled
      pixel.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"logits have shape {logits.shape} and labels {labels.shape}; expected logits "
        "[..., C] with labels [...].")
  if not 0.0 < min_temperature < max_temperature or not math.isfinite(max_temperature):
    raise ValueError(
        f"temperature bracket ({min_temperature}, {max_temperature}); expected "
        "0 < min_temperature < max_temperature < inf.")
  if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or (
      num_iterations < 1):
    raise ValueError(f"num_iterations={num_iterations!r}; expected a positive int.")
  if not bool(jnp.any(labels != ignore_index)):
    raise ValueError(
        f"every label is ignore_index={ignore_index}; fitting a temperature needs "
        "labelled validation pixels.")
  return _bisect_log_temperature(
      jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
      jnp.log(jnp.float32(min_temperature)), jnp.log(jnp.float32(max_temperature)),
      ignore_index=ignore_index, num_iterations=num_iterations)


@functools.partial(jax.jit, static_argnames=("ignore_index", "num_iterations"))
def _bisect_log_temperature(logits: jax.Array, labels: jax.Array, low: jax.Array,
                            high: jax.Array, *, ignore_index: int,
                            num_iterations: int) -> jax.Array:
  """Bisection on the sign of d NLL / d log T; see ``fit_temperature``."""

  def nll(log_temperature):
    scaled = apply_temperature(logits, jnp.exp(log_temperature))
    return losses.cross_entropy(scaled, labels, ignore_index=ignore_index)[0]

  def halve(_, bracket):
    low, high = bracket
    middle = 0.5 * (low + high)
    rising = jax.grad(nll)(middle) > 0
    return jnp.where(rising, low, middle), jnp.where(rising, middle, high)

  low, high = jax.lax.fori_loop(0, num_iterations, halve, (low, high))
  return jnp.exp(0.5 * (low + high))


def uncertainty_heatmap(values: Any, *, vmax: float, colormap: str = "magma") -> np.ndarray:
  """Colours an uncertainty map with a perceptual colour map, for a heat-map PNG.

  Args:
    values: ``[H, W]`` non-negative uncertainty (entropy, mutual information, ...).
    vmax: the value drawn with the brightest colour; larger values are clipped. Use
      ``log(C)`` for entropy and mutual information so that images share one scale.
    colormap: a matplotlib colour map name; "magma" runs from black (certain) to light
      yellow (uncertain).

  Returns:
    uint8 RGB ``[H, W, 3]`` (``PIL.Image.fromarray(...).save(path)`` writes it). NaN
    pixels get the colour map's "bad" colour (black for "magma").

  Raises:
    ValueError: if ``values`` is not 2-D, ``vmax`` is not positive and finite, or the
      colour map is unknown.
  """
  # Imported here: matplotlib takes ~0.7 s to import, and train steps import this module.
  import matplotlib  # pylint: disable=g-import-not-at-top

  values = np.asarray(values, np.float64)
  if values.ndim != 2:
    raise ValueError(f"values have shape {values.shape}; expected one [H, W] map.")
  if not (math.isfinite(vmax) and vmax > 0):
    raise ValueError(f"vmax={vmax}; expected a positive finite value, e.g. log(C).")
  if colormap not in matplotlib.colormaps:
    raise ValueError(
        f"colormap={colormap!r} is not a matplotlib colour map; try 'magma', 'inferno' "
        "or 'viridis'.")
  scaled = np.clip(values / vmax, 0.0, 1.0)
  return matplotlib.colormaps[colormap](scaled, bytes=True)[..., :3]
