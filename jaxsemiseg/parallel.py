"""One code path for 1 device, N devices and N hosts: a ("data",) mesh, jit and shardings.

The batch is split along its first axis over the mesh; the train state is replicated.
Under ``jax.jit`` with these shardings XLA inserts the gradient all-reduce itself, and
BatchNorm statistics are computed over the global batch (SyncBN semantics).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# XLA:CPU's LLVM optimisation level for train steps. Convolutions and matmuls are library
# calls at any level; level 1 (default 2) compiled the UNet-S UniMatch step in 19-24 s
# instead of 29-40 s at the same steps/s, and the supervised one ~8-30% faster at -2 to
# -10% steps/s, on the 2-core CPU (bench/RESULTS.md). GPU and TPU keep XLA's defaults.
CPU_BACKEND_OPTIMIZATION_LEVEL = 1


def maybe_initialize_distributed(config) -> None:
  """Calls ``jax.distributed.initialize`` when ``config.distributed.enabled`` is set.

  Empty / -1 fields are left to JAX's cluster auto-detection (SLURM, TPU pods, ...).
  """
  if not config.distributed.enabled:
    return
  kwargs = {}
  if config.distributed.coordinator_address:
    kwargs["coordinator_address"] = config.distributed.coordinator_address
  if config.distributed.num_processes > 0:
    kwargs["num_processes"] = config.distributed.num_processes
  if config.distributed.process_id >= 0:
    kwargs["process_id"] = config.distributed.process_id
  jax.distributed.initialize(**kwargs)


def make_mesh(num_devices: int = -1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (-1: all of them)."""
  devices = list(jax.devices() if devices is None else devices)
  if num_devices > 0 and jax.process_count() > 1:
    raise ValueError(
        f"config.num_devices={num_devices} with {jax.process_count()} processes: the mesh "
        "must hold every process's devices; leave it at -1.")
  if num_devices > 0:
    if num_devices > len(devices):
      raise ValueError(
          f"config.num_devices={num_devices} but only {len(devices)} devices are visible.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch_size: int, mesh: Mesh, *, name: str = "batch_size") -> None:
  """Raises unless a global batch splits evenly over the mesh's devices."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
        f"config.{name}={global_batch_size} is not divisible by the {num_devices} devices of "
        "the mesh; use a multiple of the device count.")


def to_global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays, split over the mesh, from this process's part of the batch.

  Non-numeric entries (example ids) stay on the host and are dropped here.
  """
  sharding = batch_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, value)
      for key, value in local_batch.items()
      if isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
  }


def step_compiler_options(platform: str, xla_flags: str) -> dict[str, Any]:
  """XLA options for a train step on ``platform`` ("cpu", "gpu", "tpu").

  On CPU, ``CPU_BACKEND_OPTIMIZATION_LEVEL``, unless ``xla_flags`` (the ``XLA_FLAGS``
  environment variable) sets the level itself: the user's choice wins.
  """
  if platform != "cpu" or "xla_backend_optimization_level" in xla_flags:
    return {}
  return {"xla_backend_optimization_level": CPU_BACKEND_OPTIMIZATION_LEVEL}


def compile_step(step: Callable, mesh: Mesh, *, donate_state: bool = True) -> Callable:
  """Jits ``step(state, batch, rng) -> (state, metrics)`` for the mesh.

  State and metrics are replicated, the batch is split over ``"data"``; the input state's
  buffers are donated so the update happens in place. On CPU the step compiles with
  :func:`step_compiler_options`.
  """
  replicated = replicated_sharding(mesh)
  return jax.jit(
      step,
      in_shardings=(replicated, batch_sharding(mesh), replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,) if donate_state else (),
      compiler_options=step_compiler_options(mesh.devices.flat[0].platform,
                                             os.environ.get("XLA_FLAGS", "")))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host or single-device pytree as replicated global arrays on the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))
