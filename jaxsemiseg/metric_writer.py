"""Scalars to TensorBoard and to a JSON-lines file, from process 0 only."""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np


class MetricWriter:
  """Writes ``{name: scalar}`` per step to ``<workdir>/metrics.jsonl`` and TensorBoard.

  On processes other than 0 every call is a no-op, so callers need not check.

  Args:
    workdir: the run's directory.
    resumed_step: the checkpoint a resumed run starts from; the JSON-lines rows of later
      steps (logged before the interruption, about to be logged again) are dropped, so
      each step appears once.
  """

  def __init__(self, workdir: str, *, resumed_step: int = 0):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tensorboard = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      if resumed_step and os.path.exists(path):
        _drop_rows_after(path, resumed_step)
      self._jsonl = open(path, "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    values = {name: float(np.asarray(value)) for name, value in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites the JSON-lines file ``path`` without its rows of steps after ``step``."""
  with open(path, encoding="utf-8") as f:
    # A row cut short by the interruption is dropped too.
    rows = [line for line in f if line.endswith("\n")]
  kept = [line for line in rows if json.loads(line)["step"] <= step]
  if len(kept) != len(rows):
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(kept)
