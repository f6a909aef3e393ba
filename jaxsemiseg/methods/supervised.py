"""Supervised baseline: the labeled-only model every semi-supervised table compares to.

Loss: pixel cross-entropy with ignore index 255, averaged over valid pixels (optionally
OHEM, and a Dice term); the unlabeled part of the batch, if any, is not used.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from jaxsemiseg.methods import common
from jaxsemiseg.state import TrainState, create_train_state


def default_config() -> ml_collections.ConfigDict:
  """The baseline has no hyper-parameters beyond ``config.loss`` and ``config.optimizer``."""
  return ml_collections.ConfigDict()


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """Initialises the model on ``sample_batch["image"]`` and the optimizer."""
  del config
  variables = model.init({"params": rng, "dropout": rng}, sample_batch["image"], train=False)
  return create_train_state(variables=dict(variables), tx=tx)


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``."""

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    def loss_fn(params: Any):
      outputs, batch_stats = common.forward(
          model, params, state.batch_stats, batch["image"], train=True, rng=rng)
      loss, terms = common.supervised_loss(outputs["logits"], batch["label"], config.loss)
      return loss, (batch_stats, terms)

    (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **terms}

  return step
