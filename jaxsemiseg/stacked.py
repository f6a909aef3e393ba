"""Running a function over stacked members: one ``jax.vmap``, or an unrolled loop on CPU.

Deep ensembles, co-training members and CCT's auxiliary heads keep their K parameter sets
stacked on a leading axis (``jax.vmap(init)(keys)``) and run all K in one jitted step.
:func:`stacked_map` is the one place where that happens, with two implementations:

- ``"vmap"``: ``jax.vmap`` over the member axis. A convolution vmapped over its weights
  becomes one grouped (batch-group) convolution, which keeps a GPU or TPU busy: the
  form of "K members trained in one jitted step with ``jax.vmap`` over stacked params"
  (issue #4), and the default there.
- ``"loop"``: the K calls unrolled in Python, so the compiled step holds K plain copies of
  ``fn``. XLA:CPU runs grouped convolutions far below its ordinary convolution speed
  (bench/RESULTS.md: the vmapped 4-member ensemble step takes ~2.5x its 4 sequential
  single-model steps, the loop ~1x; CPS's step runs 13x faster looped), hence the default
  on CPU. It is not a ``lax.map``/``lax.scan``: XLA:CPU's ``ConvCanonicalization`` pass
  visits only the entry computation, so the backward-pass convolutions of a loop body (not
  in NHWC/HWIO form) miss the Eigen kernels and run in a naive emitter, ~10x slower than
  unrolled. The price of unrolling is compile time, which grows with K (2.5x the vmap's
  for the 4-member ensemble step).

``member_map="auto"`` picks ``"loop"`` when ``jax.default_backend()`` is CPU and
``"vmap"`` otherwise, at trace time. Both give the same values and gradients up to
float32 rounding; ``config.member_map`` lets a run force either.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MEMBER_MAPS = ("auto", "vmap", "loop")


def resolve_member_map(member_map: str) -> str:
  """``"vmap"`` or ``"loop"``: ``member_map`` with ``"auto"`` decided by the backend.

  Args:
    member_map: one of MEMBER_MAPS; ``"auto"`` is ``"loop"`` on CPU, else ``"vmap"``.

  Returns:
    The implementation :func:`stacked_map` uses.

  Raises:
    ValueError: if ``member_map`` is not one of MEMBER_MAPS.
  """
  if member_map not in MEMBER_MAPS:
    raise ValueError(f"member_map={member_map!r}; expected one of {MEMBER_MAPS}.")
  if member_map == "auto":
    return "loop" if jax.default_backend() == "cpu" else "vmap"
  return member_map


def member(stacked: Any, index: int) -> Any:
  """Member ``index`` of a pytree stacked on a leading axis (params, states, outputs)."""
  return jax.tree.map(lambda leaf: leaf[index], stacked)


def unstack(stacked: Any, num_members: int) -> list[Any]:
  """Every member of a pytree stacked on a leading axis of size ``num_members``, in order.

  One ``lax.split`` per leaf rather than ``num_members`` indexings: the gradient of a
  split is one concatenation, while each index's gradient is a zero-padded copy of the
  whole stack, so K indexings of a large stacked input (CCT's 30 perturbed feature maps)
  write K full-size buffers in the backward pass (~11 ms each for CCT's features on a
  2-core CPU, more than the head they feed).

  Args:
    stacked: a pytree whose leaves all have the leading member axis.
    num_members: K, the size of that axis.

  Returns:
    K pytrees of ``stacked``'s structure without the leading axis.
  """
  leaves, treedef = jax.tree.flatten(stacked)
  pieces = [[jnp.squeeze(piece, 0) for piece in jax.lax.split(leaf, [1] * num_members)]
            for leaf in leaves]
  return [jax.tree.unflatten(treedef, [leaf_pieces[index] for leaf_pieces in pieces])
          for index in range(num_members)]


def _check_in_axes(in_axes: int | None | Sequence[int | None],
                   num_args: int) -> tuple[int | None, ...]:
  axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * num_args
  if len(axes) != num_args or any(axis not in (0, None) for axis in axes):
    raise ValueError(
        f"in_axes={in_axes!r} for {num_args} arguments; expected 0 or None, or a sequence "
        "of one 0 (mapped over the leading member axis) or None (shared) per argument.")
  return axes


def _num_members(args: Sequence[Any], axes: Sequence[int | None]) -> int:
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None
           for arg, axis in zip(args, axes) if axis == 0 for leaf in jax.tree.leaves(arg)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        "stacked_map: every leaf of the mapped arguments needs the same leading member "
        f"axis; got leading sizes {sorted(sizes, key=str)} (an empty set: nothing is "
        "mapped). Stack members with jax.vmap(init)(keys).")
  return sizes.pop()


def stacked_map(fn: Callable[..., Any], *args: Any,
                in_axes: int | None | Sequence[int | None] = 0,
                member_map: str = "auto") -> Any:
  """``jax.vmap(fn, in_axes)(*args)``, as a vmap or an unrolled loop over the members.

  Args:
    fn: the function of one member, e.g. a forward pass or a train step.
    *args: its arguments; the mapped ones have a leading member axis K on every leaf.
    in_axes: 0 (every argument mapped) or a sequence with one entry per argument: 0 for
      mapped over the member axis, None for shared by every member. Nothing finer than a
      whole argument, unlike ``jax.vmap``.
    member_map: ``"vmap"``, ``"loop"`` or ``"auto"`` (loop on CPU, vmap elsewhere);
      see the module docstring.

  Returns:
    ``fn``'s outputs of every member, stacked on a new leading axis K.

  Raises:
    ValueError: if ``member_map`` or ``in_axes`` is not one of the allowed values, or if the
      mapped leaves do not share a leading axis.
  """
  mode = resolve_member_map(member_map)
  axes = _check_in_axes(in_axes, len(args))
  num_members = _num_members(args, axes)
  if mode == "vmap":
    return jax.vmap(fn, in_axes=axes)(*args)
  members = [unstack(arg, num_members) if axis == 0 else [arg] * num_members
             for arg, axis in zip(args, axes)]
  outputs = [fn(*member_args) for member_args in zip(*members)]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)
