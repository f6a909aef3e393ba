"""Pieces every method's step shares: the forward pass and the labeled loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses
from jaxsemiseg.models import weights


def forward(model, params: Any, batch_stats: Any, images: jax.Array, *, train: bool,
            rng: jax.Array | None = None, perturbation_rng: jax.Array | None = None,
            **kwargs) -> tuple[dict, Any]:
  """Runs ``model`` and returns ``(outputs, new_batch_stats)``.

  BatchNorm statistics are updated only when ``train`` is set and the model has them;
  otherwise ``batch_stats`` comes back unchanged, so callers need no special case for
  GroupNorm models such as the UNet. ``rng`` drives dropout and ``perturbation_rng`` the
  model's ``decoder_input_perturbation`` (passed on with the other ``kwargs``).
  """
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  rngs = {name: key for name, key in (("dropout", rng), ("perturbation", perturbation_rng))
          if key is not None} or None
  if train and batch_stats:
    outputs, updated = model.apply(variables, images, train=True, rngs=rngs,
                                   mutable=["batch_stats"], **kwargs)
    return outputs, updated["batch_stats"]
  return model.apply(variables, images, train=train, rngs=rngs, **kwargs), batch_stats


def supervised_loss(logits: jax.Array, labels: jax.Array,
                    config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """The labeled loss of ``config.loss``: CE (or OHEM CE) with ignore, plus optional Dice.

  Returns:
    ``(loss, metrics)`` where metrics holds the individual terms.
  """
  if config.ohem:
    ce, _ = losses.ohem_cross_entropy(
        logits, labels, threshold=config.ohem_threshold, min_kept=config.ohem_min_kept)
  else:
    ce, _ = losses.cross_entropy(logits, labels)
  metrics = {"loss_ce": ce}
  loss = ce
  if config.dice_weight > 0:
    dice = losses.dice_loss(logits, labels, num_classes=logits.shape[-1])
    metrics["loss_dice"] = dice
    loss = loss + config.dice_weight * dice
  return loss, metrics


def forward_labeled_and_unlabeled(
    key: jax.Array, model, params: Any, batch_stats: Any, images: jax.Array,
    labels: jax.Array, unlabeled_images: jax.Array, *,
    loss_config: ml_collections.ConfigDict,
    num_target_rows: int = 0) -> tuple[jax.Array, dict, jax.Array, Any]:
  """One train-mode pass over labeled and unlabeled images, and the labeled loss ``L_x``.

  The two go through the network as one batch, as the references'
  ``model(torch.cat((x, u)))``, so BatchNorm normalises both with one set of batch
  statistics and updates its running averages once.

  The first ``num_target_rows`` unlabeled images may be rows whose outputs only become
  targets (FixMatch's weak view, equivariance's unwarped images). For a model without
  BatchNorm nothing couples the rows, so those take a separate pass of
  ``stop_gradient(params)``: the same outputs, and the backward pass skips them (FixMatch's
  UNet-S step: 22.4 -> 17.9 GFLOP). With BatchNorm the batch statistics couple them and
  the joint pass stays, as in the references.

  Args:
    key: the dropout key.
    model: the segmentation model.
    params: its parameters (the ones the gradient is taken of).
    batch_stats: its BatchNorm statistics (empty for models without BatchNorm).
    images: float32 ``[B, H, W, 3]`` labeled images.
    labels: int32 ``[B, H, W]`` their labels.
    unlabeled_images: float32 ``[Bu, H, W, 3]``, e.g. weak or strong views.
    loss_config: ``config.loss``, as ``supervised_loss`` reads it.
    num_target_rows: how many leading unlabeled images no gradient is taken through.

  Returns:
    ``(loss_x, terms, unlabeled_logits, batch_stats)``: the labeled loss and its terms
    (``supervised_loss``), the ``[Bu, H, W, C]`` logits of ``unlabeled_images`` and the
    updated BatchNorm statistics.
  """
  num_labeled = images.shape[0]
  if num_target_rows and not batch_stats:
    key, target_key = jax.random.split(key)
    targets, _ = forward(model, jax.lax.stop_gradient(params), batch_stats,
                         unlabeled_images[:num_target_rows], train=True, rng=target_key)
    outputs, _ = forward(model, params, batch_stats,
                         jnp.concatenate([images, unlabeled_images[num_target_rows:]]),
                         train=True, rng=key)
    logits = jnp.concatenate([outputs["logits"][:num_labeled], targets["logits"],
                              outputs["logits"][num_labeled:]])
  else:
    outputs, batch_stats = forward(model, params, batch_stats,
                                   jnp.concatenate([images, unlabeled_images]), train=True,
                                   rng=key)
    logits = outputs["logits"]
  loss_x, terms = supervised_loss(logits[:num_labeled], labels, loss_config)
  return loss_x, terms, logits[num_labeled:], batch_stats


def apply_updates_with_heads(tx, state, grads: Any, heads: Any, head_grads: Any,
                             head_opt_state: Any) -> tuple[Any, Any, Any, Any]:
  """One optimizer step for the model and for extra heads kept outside ``state.params``.

  CCT's auxiliary decoders and PseudoSeg's classifier and attention heads live in
  ``state.extras`` with their own optimizer state, so the model's parameter tree (and its
  checkpoints and pretrained weights) stays the plain model's.

  Args:
    tx: the optimizer, shared by model and heads.
    state: the TrainState (its ``params`` and ``opt_state`` are updated).
    grads: gradients of ``state.params``.
    heads: the heads' parameters.
    head_grads: their gradients.
    head_opt_state: their optimizer state.

  Returns:
    ``(params, opt_state, heads, head_opt_state)`` after the step.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  head_updates, head_opt_state = tx.update(head_grads, head_opt_state, heads)
  return (optax.apply_updates(state.params, updates), opt_state,
          optax.apply_updates(heads, head_updates), head_opt_state)


def with_pretrained_backbone(state: Any, path: str, *, tx: optax.GradientTransformation,
                             stacked: bool = False) -> Any:
  """``state`` with its backbone from ``path`` and a fresh optimizer state.

  The loop calls a method's ``with_pretrained_backbone`` (this one by default) on the
  initial state when ``config.model.pretrained_path`` is set.

  Args:
    state: an initial train state (step 0), on the host.
    path: an ``.npz`` of backbone weights (``weights.load_pretrained_backbone``).
    tx: the optimizer, whose state is rebuilt for the new parameters.
    stacked: the state holds members on a leading axis (``cotraining.init_members``):
      each member gets the same backbone and keeps its own head and optimizer state.

  Returns:
    The new state; its ``extras`` are kept as they are.
  """
  variables = weights.load_pretrained_backbone(state.variables, path, stacked=stacked)
  params = variables["params"]
  return state.replace(params=params,
                       batch_stats=variables.get("batch_stats", state.batch_stats),
                       opt_state=(jax.vmap(tx.init) if stacked else tx.init)(params))
