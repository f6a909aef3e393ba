"""bench/memory.py compiles a step from abstract inputs and reports XLA's buffer sizes."""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import _step_builder  # pylint: disable=wrong-import-position
import memory  # pylint: disable=wrong-import-position

from jaxsemiseg import parallel  # pylint: disable=g-bad-import-order,wrong-import-position


def _bytes(tree):
  return sum(leaf.size * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def test_reports_the_state_batch_and_donation_of_a_tiny_unet_step(tmp_path):
  output = tmp_path / "memory.jsonl"
  output.write_text('{"earlier": "line"}\n')
  memory.main(["--method", "supervised", "--model", "unet", "--width", "4", "--size", "16",
               "--batch", "2", "--classes", "3", "--settings", "f32,bf16+remat",
               "--output", str(output)])
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert lines[0] == {"earlier": "line"} and len(lines) == 3
  f32, bf16_remat = lines[1:]
  assert (f32["setting"], f32["dtype"], f32["remat"]) == ("f32", "float32", False)
  assert (bf16_remat["dtype"], bf16_remat["remat"]) == ("bfloat16", True)

  config = _step_builder.make_config(method="supervised", width=4, size=16, batch=2,
                                     optimizer="sgd")
  run, _ = _step_builder.build(config, num_classes=3, mesh=parallel.make_mesh(1),
                               abstract=True)
  state_bytes = _bytes(run.state)
  batch_bytes = 2 * 16 * 16 * 3 * 4 + 2 * 16 * 16 * 4
  for line in (f32, bf16_remat):
    # bfloat16 compute keeps the float32 state: the arguments are the same bytes, plus the
    # rng key's two uint32 where jit keeps it (this step, without dropout, never reads it).
    assert state_bytes + batch_bytes <= line["argument_bytes"] <= state_bytes + batch_bytes + 8
    # The donated state is written in place: every state output aliases its input.
    assert line["alias_bytes"] == state_bytes
    assert line["output_bytes"] >= state_bytes
    assert line["peak_bytes"] == (line["argument_bytes"] + line["output_bytes"]
                                  + line["temp_bytes"] - line["alias_bytes"])
    assert line["temp_bytes"] > 0
