import glob
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import checkpoint as checkpoint_lib
from jaxsemiseg.state import create_train_state


def _state(width=4, value=1.0):
  variables = {"params": {"dense": {"kernel": jnp.full((3, width), value)}},
               "batch_stats": {"bn": {"mean": jnp.zeros(width)}}}
  return create_train_state(variables=variables, tx=optax.adam(1e-3))


def test_round_trip_restores_values_and_step(tmp_path):
  state = _state(value=3.0).replace(step=jnp.array(7, jnp.int32))
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=2) as checkpointer:
    checkpointer.save(7, state)
  with checkpoint_lib.Checkpointer(str(tmp_path)) as checkpointer:
    restored, step = checkpointer.restore(_state())
  assert step == 7
  assert int(restored.step) == 7
  np.testing.assert_array_equal(restored.params["dense"]["kernel"], 3.0)
  assert set(restored.batch_stats) == {"bn"}


def test_keeps_only_newest(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=2) as checkpointer:
    for step in (1, 2, 3):
      checkpointer.save(step, _state(value=step))
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 3]


def test_shape_mismatch_is_a_clear_error(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, _state(width=4))
  with checkpoint_lib.Checkpointer(str(tmp_path)) as checkpointer:
    with pytest.raises(checkpoint_lib.CheckpointShapeError,
                       match=r"params\['dense'\]\['kernel'\] with shape \(3, 4\).*\(3, 5\)"):
      checkpointer.restore(_state(width=5))


def _corrupt(directory, step):
  for path in glob.glob(os.path.join(directory, str(step), "**", "*"), recursive=True):
    if os.path.isfile(path) and "_METADATA" not in path and "_CHECKPOINT_METADATA" not in path:
      with open(path, "wb") as f:
        f.write(b"not a checkpoint")


def test_corrupt_latest_falls_back_to_previous(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=3) as checkpointer:
    checkpointer.save(1, _state(value=1.0))
    checkpointer.save(2, _state(value=2.0))
  _corrupt(tmp_path, 2)
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=3) as checkpointer:
    # Read-only use (evaluation) keeps the unreadable step for the user to inspect.
    restored, step = checkpointer.restore(_state(), delete_unreadable=False)
    assert step == 1 and checkpointer.all_steps() == [1, 2]
    restored, step = checkpointer.restore(_state())
    assert step == 1
    np.testing.assert_array_equal(restored.params["dense"]["kernel"], 1.0)
    # The unreadable step is gone, so training can save step 2 again.
    assert checkpointer.all_steps() == [1]
    checkpointer.save(2, _state(value=5.0))
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=3) as checkpointer:
    restored, step = checkpointer.restore(_state())
  assert step == 2
  np.testing.assert_array_equal(restored.params["dense"]["kernel"], 5.0)


def test_no_readable_checkpoint_says_how_to_start_over(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, _state())
  _corrupt(tmp_path, 1)
  with checkpoint_lib.Checkpointer(str(tmp_path)) as checkpointer:
    with pytest.raises(RuntimeError, match=r"(?s)step 1: .*fresh --workdir"):
      checkpointer.restore(_state())


def test_missing_checkpoint(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path)) as checkpointer:
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
      checkpointer.restore(_state())
    checkpointer.save(1, _state())
    with pytest.raises(FileNotFoundError, match="step 5"):
      checkpointer.restore(_state(), step=5)
