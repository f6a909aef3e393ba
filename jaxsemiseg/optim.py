"""Optimizers and learning-rate schedules from ``config.optimizer``."""

from __future__ import annotations

from typing import Callable

import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, *,
                           num_steps: int) -> optax.Schedule:
  """The base learning rate per step: optional linear warm-up, then poly or cosine decay.

  ``poly`` is DeepLab's ``lr0 * (1 - t / T) ** power`` (power 0.9 in UniMatch, CPS, U2PL).
  """
  decay_steps = max(num_steps - config.warmup_steps, 1)
  if config.schedule == "poly":
    decay = optax.polynomial_schedule(
        init_value=config.learning_rate, end_value=0.0, power=config.poly_power,
        transition_steps=decay_steps)
  elif config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
  else:
    raise ValueError(
        f"config.optimizer.schedule={config.schedule!r}; expected 'poly' or 'cosine'.")
  if config.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def _optimizer(config: ml_collections.ConfigDict,
               schedule: Callable) -> optax.GradientTransformation:
  if config.name == "sgd":
    # Coupled L2 (added to the gradient), as torch.optim.SGD(weight_decay=...) in the references.
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum))
  if config.name == "adamw":
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  raise ValueError(f"config.optimizer.name={config.name!r}; expected 'sgd' or 'adamw'.")


def param_groups(params) -> dict | str:
  """Labels each top-level parameter subtree ``"backbone"`` or ``"head"``."""
  return {key: "backbone" if key == "backbone" else "head" for key in params}


def make_optimizer(config: ml_collections.ConfigDict, *,
                   num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer of ``config.optimizer`` for a run of ``num_steps`` updates.

  Parameters outside the model's ``backbone`` subtree train at ``head_lr_multiplier`` times
  the base rate (UniMatch and CCT use 10 with a pretrained backbone, CPS 1). Models without a
  ``backbone`` subtree train entirely at the head rate, so keep the multiplier at 1 there.

  Returns:
    ``(tx, schedule)``: the transformation and the base learning-rate schedule (for logging).
  """
  schedule = learning_rate_schedule(config, num_steps=num_steps)
  multiplier = config.head_lr_multiplier
  if multiplier == 1.0:
    tx = _optimizer(config, schedule)
  else:
    tx = optax.multi_transform(
        {"backbone": _optimizer(config, schedule),
         "head": _optimizer(config, lambda step: multiplier * schedule(step))},
        param_groups)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule

