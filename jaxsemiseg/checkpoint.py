"""Orbax checkpoints of the train state: periodic saves, resume, restore for evaluation.

A run's checkpoints live in ``<workdir>/checkpoints/<step>``. Restoring checks the saved
shapes against the model first (a checkpoint of another model is a clear error, not a
silent mis-load), and a checkpoint that cannot be read (a crash mid-write, a truncated
file) is skipped with a warning in favour of the previous one; a resuming run deletes it
(single process; with several processes the error is raised, so hosts never resume
apart), evaluation and prediction leave it in place.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers


class CheckpointShapeError(ValueError):
  """The checkpoint's arrays do not match the model being restored into."""


class Checkpointer:
  """Saves and restores :class:`~jaxsemiseg.state.TrainState` pytrees under a directory.

  Args:
    directory: where the step folders go (created if missing).
    keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(keep),
        create=True,
        # Writes happen in the background while training goes on; `wait` before reading.
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts saving ``state`` as checkpoint ``step`` (asynchronously)."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, *, step: int | None = None,
              delete_unreadable: bool = True) -> tuple[Any, int]:
    """Restores into the structure, shapes and shardings of ``abstract_state``.

    Args:
      abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (with shardings) or arrays.
      step: the checkpoint to restore; None = the newest readable one.
      delete_unreadable: delete the newer checkpoints that could not be read once an
        older one is restored (a resuming run, which will save those steps again); read-
        only uses (evaluation) keep them.

    Returns:
      ``(state, step)``.

    Raises:
      FileNotFoundError: no checkpoint (or not ``step``) in the directory.
      CheckpointShapeError: the checkpoint belongs to a different model or method.
      RuntimeError: no candidate checkpoint could be read.
    """
    self.wait()
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {self.directory}; available: {steps}.")
      candidates = [step]
    else:
      candidates = steps[::-1]
    if not candidates:
      raise FileNotFoundError(
          f"No checkpoint in {self.directory}; train first (mode=train) or point --workdir at "
          "the run's directory.")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    errors, unreadable = [], []
    for candidate in candidates:
      try:
        self._check_shapes(candidate, target)
        restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(target))
      except CheckpointShapeError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        # A read error on one host only would make hosts resume from different steps.
        if jax.process_count() > 1:
          raise
        # Orbax/tensorstore raise many types for unreadable data; any of them means "corrupt".
        logging.warning("Checkpoint %d in %s is unreadable (%s: %s); trying an older one.",
                        candidate, self.directory, type(error).__name__, error)
        errors.append(f"step {candidate}: {type(error).__name__}: {error}")
        unreadable.append(candidate)
        continue
      # Left in place, an unreadable step would block saving that step again when training
      # gets there, and would count against `keep`.
      for bad_step in unreadable if delete_unreadable else ():
        logging.warning("Deleting unreadable checkpoint %d in %s.", bad_step, self.directory)
        self._manager.delete(bad_step)
      if unreadable and not delete_unreadable:
        logging.warning("Using checkpoint %d in %s: the newer %s could not be read.",
                        candidate, self.directory, unreadable)
      return restored, candidate
    raise RuntimeError(
        f"No readable checkpoint in {self.directory}:\n  " + "\n  ".join(errors) +
        "\nTo start the run over, move that directory away or use a fresh --workdir.")

  def _check_shapes(self, step: int, target: Any) -> None:
    saved = self._manager.item_metadata(step)
    saved_leaves = {_path_names(path): leaf for path, leaf
                    in jax.tree_util.tree_flatten_with_path(_as_tree(saved))[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
      name = jax.tree_util.keystr(path)
      saved_leaf = saved_leaves.get(_path_names(path))
      if saved_leaf is None:
        raise CheckpointShapeError(
            f"Checkpoint {step} in {self.directory} has no entry {name}: it was written by a "
            "different model or method. Use a fresh --workdir or the matching config.")
      saved_shape = tuple(getattr(saved_leaf, "shape", ()))
      if saved_shape != tuple(leaf.shape):
        raise CheckpointShapeError(
            f"Checkpoint {step} in {self.directory} stores {name} with shape {saved_shape}, "
            f"but the model expects {tuple(leaf.shape)}: the checkpoint is from another model "
            "(width, classes or backbone differ). Use a fresh --workdir or the matching config.")

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _as_tree(metadata: Any) -> Any:
  """Orbax returns a metadata object; the tree of per-array metadata is its ``.tree``."""
  return getattr(metadata, "tree", metadata)


def _path_names(path: tuple) -> tuple[str, ...]:
  """A path as plain names, so dict keys and dataclass fields of the same name match."""
  names = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return tuple(names)
