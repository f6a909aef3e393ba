"""Cross pseudo supervision (CPS; Chen et al., CVPR 2021) with CutMix (METHODS.md 5).

Two networks of one architecture with different initialisations and their own optimizer
states, stacked as in ``cotraining``. Per step, with ``image_u`` (A) and ``image_u2`` (B):

1. A CPS box mask ``M`` per image (``mixing.french_box_mask``: 3 boxes, area 0.25-0.5,
   XOR-toggled) and the mixed image ``A (1 - M) + B M``.
2. Both nets predict A and B (train mode, no gradient); net i's hard pseudo-labels of the
   mixed image are ``argmax`` of its A and B predictions mixed with the same ``M``.
3. ``L = CE(f1(x_l), y) + CE(f2(x_l), y) + lambda [CE(f1(x_mix), y2_hat) +
   CE(f2(x_mix), y1_hat)]``: each net learns from the other's pseudo-labels, with no
   confidence threshold, averaged over the valid (not padded) pixels.

As in charlesCXK/TorchSemiSeg, every forward pass is in train mode and the labeled and
mixed batches go through each net in separate calls (so BatchNorm statistics are never
shared between them); here A and B are predicted in one call per net.

``cutmix=False`` is the paper's CPS without CutMix (TorchSemiSeg's ``voc8.res50v3+.CPS``,
weight 1.5): each net predicts the labeled images and ``image_u`` once (two train-mode
calls), and the cross supervision is ``CE(f1(x), y2_hat) + CE(f2(x), y1_hat)`` over the
pixels of both batches, the pseudo-labels the argmax of those same predictions (no
gradient). B (``image_u2``) is then unused. The labeled images' pixels count where their
label is not 255 (crop padding, and VOC's object borders, which the reference counts).

Evaluation uses the average of the two nets' probabilities (``cotraining``); the
reference evaluates its first net alone, which ``cotraining.evaluate_members`` reports too.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses
from jaxsemiseg.augment import mixing
from jaxsemiseg.methods import common, cotraining, self_training
from jaxsemiseg.state import TrainState

USES_UNLABELED = True
NUM_UNLABELED_VIEWS = 2
NUM_MEMBERS = 2

make_predict_fn = cotraining.make_predict_fn


def default_config() -> ml_collections.ConfigDict:
  """The CPS weight lambda and the CutMix box-mask generator."""
  return ml_collections.ConfigDict(dict(
      # TorchSemiSeg's cps_weight for VOC with CutMix (Cityscapes with CutMix: 5).
      cps_weight=1.0,
      # CPS with CutMix (the paper's best setting); False: CPS on the plain images, labeled
      # and unlabeled (the reference then uses cps_weight 1.5).
      cutmix=True,
      # TorchSemiSeg's BoxMaskGenerator(prop_range=(0.25, 0.5), n_boxes=3).
      num_boxes=3,
      box_area_range=(0.25, 0.5),
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.cps`` value outside its range."""
  settings = config.cps
  self_training.check_non_negative("config.cps.cps_weight", settings.cps_weight)
  if settings.num_boxes < 1:
    raise ValueError(f"config.cps.num_boxes={settings.num_boxes}; expected >= 1.")
  low, high = settings.box_area_range
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(
        f"config.cps.box_area_range={tuple(settings.box_area_range)}; expected (low, high) "
        "with 0 <= low <= high <= 1 (proportions of the image area).")


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """Two differently initialised nets, stacked (``cotraining.init_members``)."""
  del config
  return cotraining.init_members(rng, model, tx, sample_batch["image"],
                                 num_members=NUM_MEMBERS)


# Every member's backbone from config.model.pretrained_path; the heads keep their own inits.
with_pretrained_backbone = cotraining.with_pretrained_backbone
# --mode=eval scores each member besides their average.
evaluate_members = cotraining.evaluate_members


def box_masks(key: jax.Array, batch_size: int, size: tuple[int, int], *,
              settings: ml_collections.ConfigDict) -> jax.Array:
  """Bool ``[B, H, W]`` CPS CutMix masks, one per image; True = from the partner B."""
  sampler = functools.partial(mixing.french_box_mask, size=size, num_boxes=settings.num_boxes,
                              area_range=tuple(settings.box_area_range))
  return jax.vmap(sampler)(jax.random.split(key, batch_size))


def mixed_pseudo_labels(model, params: Any, batch_stats: Any, images: jax.Array,
                        partner_images: jax.Array, masks: jax.Array, *,
                        rng: jax.Array | None = None,
                        member_map: str = "auto") -> tuple[jax.Array, Any]:
  """Each net's hard labels of the mixed images, from its predictions of the un-mixed ones.

  Args:
    model: the segmentation model.
    params: stacked parameters of the nets ``[N, ...]``.
    batch_stats: their stacked BatchNorm statistics.
    images: ``[B, H, W, 3]`` unlabeled batch A.
    partner_images: ``[B, H, W, 3]`` unlabeled batch B.
    masks: bool ``[B, H, W]``; True where the mixed image shows B.
    rng: dropout key of the train-mode pass.
    member_map: how the nets run (``cotraining.forward_members``).

  Returns:
    ``(labels, batch_stats)``: int32 ``[N, B, H, W]`` pseudo-labels of every net, carrying
    no gradient, and the statistics after the train-mode pass.
  """
  outputs, batch_stats = cotraining.forward_members(
      model, params, batch_stats, jnp.concatenate([images, partner_images]), train=True,
      rng=rng, member_map=member_map)
  logits = jax.lax.stop_gradient(outputs["logits"])
  own, partner = jnp.split(logits, 2, axis=1)
  mixed = mixing.mix(jnp.broadcast_to(masks, own.shape[:-1]), own, partner)
  return jnp.argmax(mixed, axis=-1).astype(jnp.int32), batch_stats


def cross_supervision_losses(logits: jax.Array, pseudo_labels: jax.Array,
                             valid: jax.Array) -> jax.Array:
  """Per-net CPS terms ``[2]``: net i's CE to the *other* net's pseudo-labels.

  Normaliser: the valid pixels (``losses.pseudo_label_cross_entropy`` with no threshold),
  TorchSemiSeg's ``CrossEntropyLoss(ignore_index=255)`` on labels that are never 255.

  Args:
    logits: ``[2, B, H, W, C]`` each net's prediction of the mixed images.
    pseudo_labels: int ``[2, B, H, W]`` each net's pseudo-labels of them.
    valid: bool ``[B, H, W]`` pixels that are not crop padding in the mixed images.

  Returns:
    float32 ``[2]``; entry i trains net i on net ``1 - i``'s labels.
  """
  term = lambda z, y: losses.pseudo_label_cross_entropy(z, y, valid=valid)[0]
  return jax.vmap(term)(logits, pseudo_labels[::-1])


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u``, ``valid_u``, ``image_u2`` and
  ``valid_u2``. Metrics: ``loss`` (``loss_x + cps_weight * loss_cps``), ``loss_x`` and the
  labeled terms such as ``loss_ce`` (summed over both nets), ``loss_cps`` (the sum of both
  nets' CPS terms, unweighted) and ``grad_norm``.
  """
  settings = config.cps
  if not settings.cutmix:
    return _make_plain_train_step(model, tx, config)

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    mask_rng, teacher_rng, labeled_rng, mixed_rng = jax.random.split(rng, 4)
    images_u = batch["image_u"]
    masks = box_masks(mask_rng, images_u.shape[0], images_u.shape[1:3], settings=settings)
    mixed_images = mixing.mix(masks, images_u, batch["image_u2"])
    mixed_valid = mixing.mix(masks, batch["valid_u"], batch["valid_u2"])
    pseudo_labels, batch_stats = mixed_pseudo_labels(
        model, state.params, state.batch_stats, images_u, batch["image_u2"], masks,
        rng=teacher_rng, member_map=config.member_map)

    def loss_fn(params: Any):
      labeled, new_stats = cotraining.forward_members(
          model, params, batch_stats, batch["image"], train=True, rng=labeled_rng,
          member_map=config.member_map)
      mixed, new_stats = cotraining.forward_members(
          model, params, new_stats, mixed_images, train=True, rng=mixed_rng,
          member_map=config.member_map)
      loss_x, terms = jax.vmap(
          lambda z: common.supervised_loss(z, batch["label"], config.loss))(labeled["logits"])
      loss_cps = cross_supervision_losses(mixed["logits"], pseudo_labels, mixed_valid).sum()
      metrics = {**{name: value.sum() for name, value in terms.items()},
                 "loss_x": loss_x.sum(), "loss_cps": loss_cps}
      return loss_x.sum() + settings.cps_weight * loss_cps, (new_stats, metrics)

    return cotraining.apply_member_gradients(state, tx, loss_fn)

  return step


def _make_plain_train_step(model, tx: optax.GradientTransformation,
                           config: ml_collections.ConfigDict) -> Callable:
  """CPS without CutMix: cross supervision on the labeled and unlabeled images themselves."""
  settings = config.cps

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    labeled_rng, unlabeled_rng = jax.random.split(rng)
    valid = jnp.concatenate([batch["label"] != losses.IGNORE_INDEX, batch["valid_u"]])

    def loss_fn(params: Any):
      labeled, new_stats = cotraining.forward_members(
          model, params, state.batch_stats, batch["image"], train=True, rng=labeled_rng,
          member_map=config.member_map)
      unlabeled, new_stats = cotraining.forward_members(
          model, params, new_stats, batch["image_u"], train=True, rng=unlabeled_rng,
          member_map=config.member_map)
      loss_x, terms = jax.vmap(
          lambda z: common.supervised_loss(z, batch["label"], config.loss))(labeled["logits"])
      logits = jnp.concatenate([labeled["logits"], unlabeled["logits"]], axis=1)
      pseudo_labels = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1).astype(jnp.int32)
      loss_cps = cross_supervision_losses(logits, pseudo_labels, valid).sum()
      metrics = {**{name: value.sum() for name, value in terms.items()},
                 "loss_x": loss_x.sum(), "loss_cps": loss_cps}
      return loss_x.sum() + settings.cps_weight * loss_cps, (new_stats, metrics)

    return cotraining.apply_member_gradients(state, tx, loss_fn)

  return step
