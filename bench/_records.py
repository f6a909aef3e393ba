"""The JSON-lines result records of the speed benchmarks: provenance, print, append.

A record is the measured values plus what is needed to compare it with another one: the
machine, its load when the record is written (timings from a shared machine are only as
good as that), the jax and Python versions and the command that produced it.
"""

from __future__ import annotations

import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accuracy  # pylint: disable=g-import-not-at-top,wrong-import-position


def write_record(values: dict, path: str, *, script: str) -> dict:
  """Adds provenance to ``values``, prints the record and appends it to ``path``.

  Args:
    values: the measured values and settings, JSON-serialisable.
    path: the JSON-lines file (one record per line) to append to.
    script: the benchmark's path as it is run, e.g. ``"bench/vmap_speed.py"``; with the
      process's arguments it makes the record's ``command``.

  Returns:
    The record: ``values`` plus ``machine``, ``load_average_1min`` (the OS's run-queue
    average over the last minute, against the machine's core count), ``jax``, ``python``
    and ``command``.
  """
  record = {
      **values,
      "machine": accuracy.machine_description(),
      "load_average_1min": round(os.getloadavg()[0], 2), "jax": jax.__version__,
      "python": sys.version.split()[0],
      "command": " ".join(["python", script, *sys.argv[1:]]),
  }
  line = json.dumps(record)
  print(line, flush=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(line + "\n")
  return record
