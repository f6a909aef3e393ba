"""The JSON-lines result records of the benchmarks: provenance, print, append.

A record is the measured values plus what is needed to compare it with another one: the
machine, its load when the record is written (timings from a shared machine are only as
good as that), the jax and Python versions and the command that produced it.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def print_and_append(record: dict, path: str) -> None:
  """Prints ``record`` as one JSON line, flushed, and appends it to ``path`` unless "".

  Args:
    record: JSON-serialisable values.
    path: the JSON-lines file (one record per line) to append to; "" = print only.
  """
  line = json.dumps(record)
  print(line, flush=True)
  if path:
    with open(path, "a", encoding="utf-8") as f:
      f.write(line + "\n")


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
  # Imported here: bench/gpu.py's parent process prints through this module and must not
  # import jax (each of its settings owns the device in a subprocess).
  import jax  # pylint: disable=g-import-not-at-top
  import accuracy  # pylint: disable=g-import-not-at-top

  record = {
      **values,
      "machine": accuracy.machine_description(),
      "load_average_1min": round(os.getloadavg()[0], 2), "jax": jax.__version__,
      "python": sys.version.split()[0],
      "command": " ".join(["python", script, *sys.argv[1:]]),
  }
  print_and_append(record, path)
  return record
