"""One process of a multi-process training run on localhost, launched by test_multiprocess.py.

Each process sees its own fake CPU devices (``XLA_FLAGS`` from the launcher), joins the
others through ``jax.distributed`` on 127.0.0.1 and runs ``train.train_and_evaluate`` on
the tiny dataset with the config the single-process reference uses, so the two runs can
be compared step by step.

Usage:
  python tests/multiprocess_worker.py --dataset_root=DIR --workdir=DIR --port=PORT \
      --process_id=I --num_processes=N
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax
import ml_collections

from jaxsemiseg import train

import tiny_data

# SGD, not Adam: Adam turns float32 reduction-order noise in near-zero gradients into
# full-size steps of either sign, so its runs are not comparable across device layouts.
# Several processes need one evaluation shape, hence a fixed eval_pad_to.
CONFIG_OVERRIDES = {
    "optimizer.name": "sgd",
    "optimizer.learning_rate": 0.1,
    "dataset.eval_pad_to": tiny_data.SIZE,
}


def distributed_config(dataset_root: str, *, port: int, process_id: int,
                       num_processes: int) -> ml_collections.ConfigDict:
  """The reference config of the tiny run plus the ``distributed`` fields of one process.

  Args:
    dataset_root: the tiny folder dataset (``tiny_data.write_dataset``).
    port: the coordinator's port on 127.0.0.1.
    process_id: this process's index in ``[0, num_processes)``.
    num_processes: how many processes join the run.

  Returns:
    ``tiny_data.tiny_config`` with ``CONFIG_OVERRIDES`` and ``distributed`` enabled.
  """
  return tiny_data.tiny_config(dataset_root, **CONFIG_OVERRIDES, **{
      "distributed.enabled": True,
      "distributed.coordinator_address": f"127.0.0.1:{port}",
      "distributed.num_processes": num_processes,
      "distributed.process_id": process_id,
  })


def main(argv: Sequence[str] | None = None) -> None:
  """Parses the command line (``argv``, default ``sys.argv[1:]``) and trains."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--dataset_root", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  args = parser.parse_args(argv)
  # Cross-process computations on CPU need a collectives backend. Gloo (TCP, no extra
  # setup) is JAX's default from 0.10 to 0.12 at least; pinned so an inherited
  # JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi cannot pick a transport this test does not set
  # up. It is read when the CPU client is created, after jax.distributed.initialize.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  config = distributed_config(args.dataset_root, port=args.port, process_id=args.process_id,
                              num_processes=args.num_processes)
  train.train_and_evaluate(config, args.workdir)


if __name__ == "__main__":
  main()
