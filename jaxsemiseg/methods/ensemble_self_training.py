"""Ensemble self-training: K members trained in one step on their mean's pseudo-labels.

A deep ensemble (Lakshminarayanan et al., NeurIPS 2017; METHODS.md 4 and 13) as its own
teacher. The K members share the architecture and differ in their initialisation; they
are stacked as co-training stacks its members (``cotraining.init_members``: every leaf of
``state.params``, ``state.batch_stats`` and ``state.opt_state`` has a leading axis K,
``state.step`` is shared). Per step:

1. Every member predicts the weak views of both unlabeled batches in eval mode (BatchNorm
   running statistics, no dropout), in one pass over the members
   (``uncertainty.ensemble_predict``). The pseudo-label is the argmax of the mean
   probability ``p_mean``; the ``filter`` keeps a pixel when
     - ``"confidence"``: ``max_c p_mean,c >= threshold``;
     - ``"entropy"``: ``H[p_mean] <= max_entropy``;
     - ``"mutual_information"``: ``H[p_mean] - mean_k H[p_k] <= max_mutual_information``
       (BALD: the members' disagreement only, so pixels where all members agree on an
       uncertain prediction are kept).
2. Each member, in one pass over the members with its own key (``jax.random.split(rng,
   K)[k]``), draws its own strong view: FixMatch's, a strong colour view of ``image_u``
   with a CutMix box (probability ``cutmix_p``) of a strong view of ``image_u2``, whose
   pixels take ``image_u2``'s pseudo-labels. Its loss is the library's FixMatch objective
   ``(L_x + L_u) / 2``: ``L_x`` the labeled loss on the labeled batch (with ``bootstrap``,
   on a resample of it with replacement) and ``L_u = sum CE [kept] [valid] / #valid``.
   Labeled images and strong view go through the member in one train-mode batch.
3. Each member's optimizer update (``tx.update`` in the same pass).

A pass over the members is ``stacked.stacked_map``: the "K members trained in one jitted
step with ``jax.vmap`` over stacked params" of issue #4 on GPU/TPU, an unrolled loop on
CPU, where XLA runs the vmapped (grouped) convolutions slowly; ``config.member_map``
forces either.

``bootstrap`` resamples each batch afresh at every step, so over a run every member sees
every labeled image equally often in expectation: it adds per-member gradient noise, not
the fixed per-member subsets of bagging, which would need example ids in the batch.
Lakshminarayanan et al. found bagging hurts deep ensembles, hence off by default.

Evaluation and prediction average the members' probabilities (``make_predict_fn``);
``cotraining.evaluate_members`` evaluates each member and the average. With
``config.model.pretrained_path`` every member starts from the same backbone and differs in
its head's initialisation (``cotraining.with_pretrained_backbone``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import stacked, uncertainty
from jaxsemiseg.augment import mixing
from jaxsemiseg.methods import common, cotraining, self_training
from jaxsemiseg.state import TrainState

USES_UNLABELED = True
NUM_UNLABELED_VIEWS = 2

FILTERS = ("confidence", "entropy", "mutual_information")

# ``PseudoLabels.confidence`` of ensemble pseudo-labels is 1 where the filter keeps a pixel
# and 0 elsewhere, so the shared confident-CE code trains the kept pixels at this threshold.
KEPT = 1.0


def default_config() -> ml_collections.ConfigDict:
  """Ensemble size, bootstrap, the pseudo-label filter and its thresholds, CutMix."""
  return ml_collections.ConfigDict(dict(
      # K members. Lakshminarayanan et al. use 5; 4 keeps a CPU step affordable and is the
      # size the vmap speed benchmark measures.
      num_members=4,
      # Each member trains on its own resample of every labeled batch (module docstring).
      bootstrap=False,
      # One of FILTERS.
      filter="confidence",
      # "confidence": FixMatch's / UniMatch's tau on the mean prediction.
      threshold=0.95,
      # "entropy", in nats: 0.2 is the entropy of a 0.95 / 0.05 split between two classes,
      # the doubt tau = 0.95 allows when it lies between two classes.
      max_entropy=0.2,
      # "mutual_information", in nats: two members at 0.95 / 0.05 and two at 0.75 / 0.25 on
      # the same class give 0.042; members split 2:2 between two classes at 0.95 give 0.49.
      max_mutual_information=0.05,
      # UniMatch's obtain_cutmix_box(p=0.5), as the library's FixMatch.
      cutmix_p=0.5,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.ensemble_self_training`` value out of range."""
  settings = config.ensemble_self_training
  if settings.num_members < 1:
    raise ValueError(
        f"config.ensemble_self_training.num_members={settings.num_members}; expected at "
        "least 1 member (4 by default).")
  self_training.check_one_of("config.ensemble_self_training.filter", settings.filter, FILTERS)
  self_training.check_unit_interval("config.ensemble_self_training.threshold",
                                    settings.threshold)
  self_training.check_unit_interval("config.ensemble_self_training.cutmix_p",
                                    settings.cutmix_p)
  for name in ("max_entropy", "max_mutual_information"):
    if settings[name] < 0:
      raise ValueError(
          f"config.ensemble_self_training.{name}={settings[name]}; expected a value in nats "
          ">= 0.")


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """``config.ensemble_self_training.num_members`` members (``cotraining.init_members``)."""
  return cotraining.init_members(rng, model, tx, sample_batch["image"],
                                 num_members=config.ensemble_self_training.num_members)


# Every member's backbone from config.model.pretrained_path; the heads keep their own inits.
with_pretrained_backbone = cotraining.with_pretrained_backbone
# --mode=eval scores each member besides their average.
evaluate_members = cotraining.evaluate_members


def kept_pixels(samples: jax.Array, *, measure: str, threshold: float) -> jax.Array:
  """Bool ``[...]``: the pixels of ``[K, ..., C]`` member probabilities the filter keeps.

  Args:
    samples: the members' probabilities.
    measure: one of FILTERS. ``"confidence"`` keeps ``max_c p_mean,c >= threshold``;
      ``"entropy"`` and ``"mutual_information"`` keep the pixels where that measure (in
      nats) is ``<= threshold``.
    threshold: the filter's threshold.

  Returns:
    The mask.

  Raises:
    ValueError: if ``measure`` is not one of FILTERS.
  """
  if measure == "confidence":
    return uncertainty.max_probability(samples) >= threshold
  if measure == "entropy":
    return uncertainty.predictive_entropy(samples) <= threshold
  if measure == "mutual_information":
    return uncertainty.mutual_information(samples) <= threshold
  raise ValueError(f"measure={measure!r}; expected one of {FILTERS}.")


def filter_threshold(settings: ml_collections.ConfigDict) -> float:
  """The threshold of ``settings.filter``: ``threshold``, ``max_entropy`` or
  ``max_mutual_information``."""
  return {"confidence": settings.threshold, "entropy": settings.max_entropy,
          "mutual_information": settings.max_mutual_information}[settings.filter]


def ensemble_pseudo_labels(model, params: Any, batch_stats: Any, images: jax.Array,
                           valid: jax.Array, *, measure: str, threshold: float,
                           member_map: str = "auto") -> self_training.PseudoLabels:
  """Pseudo-labels of a stacked ensemble: argmax of the mean and the filter's verdict.

  Args:
    model: the segmentation model.
    params: the members' stacked parameters.
    batch_stats: their stacked BatchNorm statistics (empty without BatchNorm).
    images: float32 ``[B, H, W, 3]`` weak views.
    valid: bool ``[B, H, W]`` mask of real (not padded) pixels.
    measure: the filter, one of FILTERS (see ``kept_pixels``).
    threshold: its threshold.
    member_map: how the members run (``stacked.stacked_map``).

  Returns:
    ``PseudoLabels`` whose ``confidence`` is ``KEPT`` (1.0) where the filter keeps a pixel
    and 0.0 elsewhere; no gradient flows through them.
  """
  samples = jax.lax.stop_gradient(
      cotraining.member_probabilities(model, params, batch_stats, images,
                                      member_map=member_map))
  keep = kept_pixels(samples, measure=measure, threshold=threshold)
  return self_training.PseudoLabels(
      labels=jnp.argmax(samples.mean(axis=0), axis=-1).astype(jnp.int32),
      confidence=jnp.where(keep, KEPT, 0.0), valid=valid.astype(bool))


def make_member_step(model, tx: optax.GradientTransformation,
                     config: ml_collections.ConfigDict) -> Callable:
  """Returns ``member_step(member, batch, pseudo, partner, key) -> (member, metrics)``.

  One member's update, unstacked: ``member`` is a ``TrainState`` of one member,
  ``pseudo`` and ``partner`` the ensemble's pseudo-labels of ``image_u`` and ``image_u2``
  (``ensemble_pseudo_labels``), and ``key`` the member's key. The ensemble step is this
  function under ``stacked.stacked_map`` over members. Metrics: ``loss``, ``loss_x`` (with the
  labeled terms such as ``loss_ce``), ``loss_u`` and ``grad_norm``.
  """
  settings = config.ensemble_self_training

  def member_step(member: TrainState, batch: dict, pseudo: self_training.PseudoLabels,
                  partner: self_training.PseudoLabels, key: jax.Array
                  ) -> tuple[TrainState, dict]:
    view_key, bootstrap_key, dropout_key = jax.random.split(key, 3)
    images, labels = batch["image"], batch["label"]
    num_labeled = images.shape[0]
    if settings.bootstrap:
      resample = jax.random.randint(bootstrap_key, (num_labeled,), 0, num_labeled)
      images, labels = images[resample], labels[resample]
    strong, boxes = self_training.strong_cutmix_views(
        view_key, batch["image_u"], batch["image_u2"], num_views=1,
        cutmix_p=settings.cutmix_p)
    targets = mixing.mix(boxes[0], pseudo, partner)

    def loss_fn(params: Any):
      loss_x, terms, strong_logits, batch_stats = common.forward_labeled_and_unlabeled(
          dropout_key, model, params, member.batch_stats, images, labels, strong[0],
          loss_config=config.loss)
      loss_u = self_training.confident_cross_entropy(strong_logits, targets, threshold=KEPT)
      metrics = {**terms, "loss_x": loss_x, "loss_u": loss_u}
      return (loss_x + loss_u) / 2, (batch_stats, metrics)

    return self_training.apply_gradients(member, tx, loss_fn)

  return member_step


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u``, ``valid_u``, ``image_u2`` and
  ``valid_u2``. Metrics: the members' means of ``loss``, ``loss_x``, ``loss_ce`` (and the
  other labeled terms) and ``loss_u``; ``grad_norm``, the norm of all members' gradients
  together (as co-training reports it); and ``confident_fraction``, the fraction of
  ``image_u``'s valid pixels the filter keeps.
  """
  settings = config.ensemble_self_training
  member_step = make_member_step(model, tx, config)

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    num_unlabeled = batch["image_u"].shape[0]
    both = ensemble_pseudo_labels(
        model, state.params, state.batch_stats,
        jnp.concatenate([batch["image_u"], batch["image_u2"]]),
        jnp.concatenate([batch["valid_u"], batch["valid_u2"]]),
        measure=settings.filter, threshold=filter_threshold(settings),
        member_map=config.member_map)
    pseudo = jax.tree.map(lambda x: x[:num_unlabeled], both)
    partner = jax.tree.map(lambda x: x[num_unlabeled:], both)

    def update(params: Any, batch_stats: Any, opt_state: Any, key: jax.Array):
      member = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
      member, metrics = member_step(member, batch, pseudo, partner, key)
      return member.params, member.batch_stats, member.opt_state, metrics

    params, batch_stats, opt_state, metrics = stacked.stacked_map(
        update, state.params, state.batch_stats, state.opt_state,
        jax.random.split(rng, settings.num_members), member_map=config.member_map)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, {**jax.tree.map(jnp.mean, metrics),
                       "grad_norm": jnp.sqrt(jnp.sum(jnp.square(metrics["grad_norm"]))),
                       "confident_fraction": self_training.confident_fraction(
                           pseudo, threshold=KEPT)}

  return step


# Evaluation and prediction: the mean of the members' probabilities.
make_predict_fn = cotraining.make_predict_fn
