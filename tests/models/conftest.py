"""Shared helpers for the model tests."""

import math

import jax
import numpy as np
import pytest
from flax import traverse_util


def _host_random_variables(model, *args, seed=0, **kwargs):
  """Variables with the shapes ``model.init`` would give, filled on the host with numpy.

  ``model.init`` compiles one random-number kernel per parameter shape, which takes ~25 s
  for a ResNet-18 on two CPU cores; tracing with ``jax.eval_shape`` and filling with numpy
  takes about a second. BatchNorm statistics get non-trivial values so that updates show.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, spec in traverse_util.flatten_dict(shapes, sep="/").items():
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("var", "scale"):
      value = rng.uniform(0.5, 1.5, spec.shape)
    elif leaf in ("mean", "bias"):
      value = 0.1 * rng.standard_normal(spec.shape)
    else:
      value = rng.standard_normal(spec.shape) / math.sqrt(np.prod(spec.shape[:-1]))
    flat[path] = np.asarray(value, spec.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="session")
def random_variables():
  """``random_variables(model, *init_args, seed=0, **init_kwargs) -> variables``."""
  return _host_random_variables
