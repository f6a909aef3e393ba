"""What the co-training methods share: N members stacked in one state, one pass for all.

CPS and Deep Co-Training (METHODS.md 3 and 5) train N networks of one architecture from
different initialisations, each with its own optimizer. Here the members are one pytree
with a leading member axis N, built by ``jax.vmap(model.init)`` over N keys, and live in
the ordinary ``TrainState`` fields, not in ``extras``:

- ``state.params`` and ``state.batch_stats``: every leaf ``[N, ...]``;
- ``state.opt_state``: ``jax.vmap(tx.init)(params)``, so each member has its own
  optimizer state (its own step count, momentum and gradient clipping, as the references'
  separate optimizers), updated by ``jax.vmap(tx.update)``.

So the loop's checkpointing, finiteness checks and gradient norm cover every member
without special cases, and the members' forward passes are one ``stacked.stacked_map``
over the member axis: one ``jax.vmap`` on GPU/TPU, an unrolled loop on CPU, where XLA
runs the vmapped (grouped) convolutions slowly; ``config.member_map`` forces either. A
method's loss is the sum of its members' losses: with separate optimizer states, each
member's update then follows the gradient of the terms its own parameters enter.

Evaluation: the loop evaluates ``make_predict_fn``, the mean of the members' eval-mode
probabilities. ``member_predict_fn(model, i)`` predicts with member i alone, and
``evaluate_members(run, val_source)`` evaluates every member and the average.

Pretrained weights (``config.model.pretrained_path``): ``with_pretrained_backbone`` gives
every member the same backbone, as CPS's two nets both start from ImageNet weights, while
the heads keep their own initialisations.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import stacked, uncertainty
from jaxsemiseg import evaluate as evaluate_lib
from jaxsemiseg.methods import common
from jaxsemiseg.state import TrainState


def with_pretrained_backbone(state: TrainState, path: str, *,
                             tx: optax.GradientTransformation) -> TrainState:
  """Every member's backbone from ``path``; heads and optimizer states stay per member.

  A co-training method's ``with_pretrained_backbone`` (the loop calls it when
  ``config.model.pretrained_path`` is set); ``common.with_pretrained_backbone`` with
  ``stacked=True``.
  """
  return common.with_pretrained_backbone(state, path, tx=tx, stacked=True)


def init_members(rng: jax.Array, model, tx: optax.GradientTransformation,
                 images: jax.Array, *, num_members: int) -> TrainState:
  """A state of ``num_members`` differently initialised members stacked on axis 0.

  Args:
    rng: PRNG key, split into one init key per member.
    model: the segmentation model.
    tx: the optimizer; each member gets its own state (``jax.vmap(tx.init)``).
    images: a sample batch ``[B, H, W, 3]`` for the shapes.
    num_members: N >= 1.

  Returns:
    A ``TrainState`` at step 0 whose ``params``, ``batch_stats`` and ``opt_state`` leaves
    have a leading axis N; ``step`` is one shared scalar.

  Raises:
    ValueError: if ``num_members`` < 1.
  """
  if num_members < 1:
    raise ValueError(f"num_members={num_members}; expected at least 1.")

  def init(key: jax.Array) -> dict:
    return dict(model.init({"params": key, "dropout": key}, images, train=False))

  variables = jax.vmap(init)(jax.random.split(rng, num_members))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=jax.vmap(tx.init)(params))


def num_members_of(params: Any) -> int:
  """N, the size of the leading member axis of stacked ``params``."""
  return jax.tree.leaves(params)[0].shape[0]


member = stacked.member


def forward_members(model, params: Any, batch_stats: Any, images: jax.Array, *, train: bool,
                    rng: jax.Array | None = None, images_per_member: bool = False,
                    member_map: str = "auto") -> tuple[dict, Any]:
  """``common.forward`` of every member, ``stacked.stacked_map`` over the member axis.

  Args:
    model: the segmentation model.
    params: stacked parameters ``[N, ...]``.
    batch_stats: stacked BatchNorm statistics (an empty dict for models without them).
    images: ``[B, H, W, 3]`` seen by every member, or ``[N, B, H, W, 3]`` with
      ``images_per_member``.
    train: train mode (BatchNorm batch statistics, dropout on).
    rng: dropout key, split into one key per member; None runs without one.
    images_per_member: whether ``images`` has a leading member axis.
    member_map: ``stacked.stacked_map``'s ``"vmap"``, ``"loop"`` or ``"auto"``.

  Returns:
    ``(outputs, batch_stats)``: the model's output dict with every entry ``[N, ...]``
    and the members' updated statistics (unchanged unless ``train``).
  """
  num_members = num_members_of(params)
  keys = None if rng is None else jax.random.split(rng, num_members)

  def one(member_params, member_stats, member_images, key):
    return common.forward(model, member_params, member_stats, member_images, train=train,
                          rng=key)

  return stacked.stacked_map(one, params, batch_stats, images, keys,
                             in_axes=(0, 0, 0 if images_per_member else None, 0),
                             member_map=member_map)


def member_probabilities(model, params: Any, batch_stats: Any, images: jax.Array, *,
                         member_map: str = "auto") -> jax.Array:
  """Eval-mode probabilities ``[N, B, H, W, C]`` of every member (``ensemble_predict``)."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return uncertainty.ensemble_predict(uncertainty.make_apply_fn(model), variables, images,
                                      member_map=member_map)


def apply_member_gradients(state: TrainState, tx: optax.GradientTransformation,
                           loss_fn: Callable[[Any], tuple[jax.Array, tuple[Any, dict]]]
                           ) -> tuple[TrainState, dict]:
  """One update of every member, each with its own optimizer state.

  Args:
    state: a state from ``init_members``.
    tx: the optimizer, applied per member under ``jax.vmap``.
    loss_fn: ``stacked params -> (loss, (new_batch_stats, metrics))``; its gradient with
      respect to member i's slice is what member i's update follows.

  Returns:
    ``(state, metrics)``: the state one step on and ``metrics`` plus ``loss`` and
    ``grad_norm`` (the norm of all members' gradients together).
  """
  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = jax.vmap(tx.update)(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_predict_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """``predict(state, images) -> [B, H, W, C]``: the mean of the members' probabilities.

  The members run as ``config.member_map`` says (``stacked.stacked_map``).
  """

  def predict(state: TrainState, images: jax.Array) -> jax.Array:
    return member_probabilities(model, state.params, state.batch_stats, images,
                                member_map=config.member_map).mean(axis=0)

  return predict


def member_predict_fn(model, index: int) -> Callable:
  """``predict(state, images) -> [B, H, W, C]``: member ``index`` alone, in eval mode."""

  def predict(state: TrainState, images: jax.Array) -> jax.Array:
    member_state = state.replace(params=member(state.params, index),
                                 batch_stats=member(state.batch_stats, index))
    return evaluate_lib.make_predict_fn(model)(member_state, images)

  return predict


def evaluate_members(run, val_source) -> dict[str, dict]:
  """Validation metrics of each member and of their average.

  Args:
    run: a ``train.Run`` of a co-training method (e.g. from
      ``inference.restore_run``), whose ``state`` holds the stacked members.
    val_source: the validation source (``data.load_source(...)``).

  Returns:
    ``{"member_0": results, ..., "average": results}``, each as ``train.run_evaluation``
    returns them (``miou``, per-class ``iou``, ...).
  """
  # The loop imports the method registry, which imports this module.
  from jaxsemiseg import train  # pylint: disable=g-import-not-at-top
  predict_fns = {f"member_{i}": member_predict_fn(run.model, i)
                 for i in range(num_members_of(run.state.params))}
  predict_fns["average"] = make_predict_fn(run.model, run.config)
  results = {}
  for name, predict_fn in predict_fns.items():
    # The loop's eval step for a run whose method predicts with ``predict_fn``.
    method = types.SimpleNamespace(make_predict_fn=lambda model, config, fn=predict_fn: fn)
    member_run = dataclasses.replace(run, method=method)
    results[name] = train.run_evaluation(member_run, train.make_eval_step(member_run),
                                         val_source)
  return results
