"""The train state pytree every method carries through its step."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """What a train step reads and returns; a pytree, so it can be jitted, sharded, saved.

  Attributes:
    step: number of optimizer updates done so far (int32 scalar).
    params: the model's parameters.
    batch_stats: BatchNorm running statistics (an empty dict for models without BatchNorm).
    opt_state: the optax state of ``params``.
    extras: method-specific state (EMA teacher params, a second network, a memory bank, ...),
      a dict of arrays; empty for the supervised baseline.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extras: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict:
    """The Flax ``variables`` dict for ``model.apply``."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def create_train_state(*, variables: dict, tx, extras: Any = None) -> TrainState:
  """A fresh state at step 0 from a model's ``variables`` and an optax transformation."""
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      extras={} if extras is None else extras)
