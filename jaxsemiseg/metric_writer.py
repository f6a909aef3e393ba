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
  """

  def __init__(self, workdir: str):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tensorboard = None
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
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
