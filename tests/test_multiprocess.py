"""Two processes on localhost (2 fake CPU devices each) train like one process with 4.

The multi-host path (``jax.distributed``, per-process input shards, global arrays from
process-local data, a checkpoint written by every process into one directory) is
exercised for real with two worker processes (``multiprocess_worker.py``) joined over
127.0.0.1, and compared with the same run in this process on its 4 fake devices.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxsemiseg
from jaxsemiseg import inference, train

import multiprocess_worker
import tiny_data

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
# A hang (a worker waiting forever for a dead peer) fails the test instead of blocking CI.
TIMEOUT_S = 240
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "multiprocess_worker.py")
LOG_TAIL_CHARS = 4000


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _worker_env(port: int) -> dict[str, str]:
  env = dict(os.environ)
  # JAX's coordinator service listens on every interface unless told otherwise.
  env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
  # Replaces (not extends) the 4 fake devices conftest gives this process.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
  env["JAX_PLATFORMS"] = "cpu"
  # No persistent compilation cache: only process 0 writes it and process 1's cache keys
  # differ, so with a warm cache process 0 would skip a ~25 s compile that process 1 still
  # does, and wait for it at the first collective longer than gloo's fixed 30 s timeout.
  # Both compiling keeps the processes in step.
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  # The workers import the same jaxsemiseg as this test, installed or not.
  package_parent = os.path.dirname(os.path.dirname(os.path.abspath(jaxsemiseg.__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
  return env


def _log_tails(log_paths: list[str]) -> str:
  parts = []
  for process_id, path in enumerate(log_paths):
    with open(path, encoding="utf-8", errors="replace") as f:
      parts.append(f"--- worker {process_id} ({path}), last {LOG_TAIL_CHARS} chars ---\n"
                   f"{f.read()[-LOG_TAIL_CHARS:]}")
  return "\n".join(parts)


def _run_workers(dataset_root: str, workdir: str, log_dir: str) -> None:
  """Runs the workers to completion; fails the test (with their logs) if any fails or hangs."""
  port = _free_port()
  env = _worker_env(port)
  processes, log_paths = [], []
  try:
    for process_id in range(NUM_PROCESSES):
      log_paths.append(os.path.join(log_dir, f"worker{process_id}.log"))
      with open(log_paths[-1], "w", encoding="utf-8") as log:
        processes.append(subprocess.Popen(
            [sys.executable, WORKER_SCRIPT, f"--dataset_root={dataset_root}",
             f"--workdir={workdir}", f"--port={port}", f"--process_id={process_id}",
             f"--num_processes={NUM_PROCESSES}"],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    # Polled rather than waited on in turn: when one worker dies its peer blocks on the
    # coordinator, and the test should fail now, not at the deadline.
    while (any(p.poll() is None for p in processes)
           and not any(p.poll() for p in processes) and time.monotonic() < deadline):
      time.sleep(0.5)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
      process.wait()
  codes = [p.returncode for p in processes]
  if any(codes):
    pytest.fail(f"worker exit codes {codes} (negative: killed, e.g. after the {TIMEOUT_S} s "
                f"timeout)\n{_log_tails(log_paths)}", pytrace=False)


def _train_losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_two_processes_match_one_process_with_four_devices(tmp_path):
  dataset_root = tiny_data.write_dataset(str(tmp_path / "data"))
  config = tiny_data.tiny_config(dataset_root, **multiprocess_worker.CONFIG_OVERRIDES)
  reference_dir = str(tmp_path / "reference")
  reference = train.train_and_evaluate(config, reference_dir)
  assert jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS

  distributed_dir = str(tmp_path / "distributed")
  _run_workers(dataset_root, distributed_dir, str(tmp_path))

  reference_losses, losses = _train_losses(reference_dir), _train_losses(distributed_dir)
  assert sorted(losses) == sorted(reference_losses) == [1, 2, 3]
  for step, loss in reference_losses.items():
    np.testing.assert_allclose(losses[step], loss, rtol=1e-4, err_msg=f"train/loss step {step}")
  with open(os.path.join(distributed_dir, "final_metrics.json"), encoding="utf-8") as f:
    final = json.load(f)
  assert final["step"] == 3
  # Every pixel of the 6 validation images counted once: no example lost or doubled
  # by the per-process split of the evaluation batches or their padding.
  assert np.sum(final["confusion"]) == 6 * tiny_data.SIZE ** 2
  np.testing.assert_allclose(final["miou"], reference["miou"], rtol=1e-4)
  # The checkpoint both processes wrote into one directory restores here, on 4 devices of
  # one process, to the reference parameters.
  run, step = inference.restore_run(config, distributed_dir)
  assert step == 3
  reference_run, _ = inference.restore_run(config, reference_dir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(run.state.params), jax.device_get(reference_run.state.params))
