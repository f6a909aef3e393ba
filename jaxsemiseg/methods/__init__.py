"""Training methods, looked up by ``config.method``.

Each method module exposes ``default_config()``, ``init_state(rng, model, tx, sample_batch,
config)`` and ``make_train_step(model, tx, config)`` returning a pure, un-jitted
``step(state, batch, rng) -> (state, metrics)``. Optional module attributes:
``USES_UNLABELED`` (default False: the loop then feeds labeled batches only),
``NUM_UNLABELED_VIEWS`` (1, or 2 for methods that mix two unlabeled batches, giving
``image_u2``), ``make_predict_fn(model, config)`` when evaluation differs from a single
forward pass (ensembles, co-training) and ``train_batches(labeled, unlabeled, **args)`` when
the method builds its batches itself (``pseudo_label``: a labeled and a pseudo-labeled
stream), in place of ``data.pipeline.train_batches`` and with its arguments, and
``with_pretrained_backbone(state, path, *, tx)`` when loading
``config.model.pretrained_path`` into the initial state takes more than
``common.with_pretrained_backbone`` (Mean Teacher's teacher, co-training's stacked members),
and ``evaluate_members(run, val_source)`` for methods whose model is several members
(``--mode=eval`` then also reports each member's mIoU).
"""

from __future__ import annotations

import types

from jaxsemiseg.methods import ensemble_self_training, ua_mt
from jaxsemiseg.methods import fixmatch, mean_teacher, supervised, unimatch
from jaxsemiseg.methods import cct, equivariance
from jaxsemiseg.methods import cps, deep_cotraining
from jaxsemiseg.methods import pseudo_label
from jaxsemiseg.methods import pseudoseg

METHODS: dict[str, types.ModuleType] = {
    "supervised": supervised,
    "mean_teacher": mean_teacher,
    "fixmatch": fixmatch,
    "unimatch": unimatch,
    "cct": cct,
    "equivariance": equivariance,
    "ua_mt": ua_mt,
    "ensemble_self_training": ensemble_self_training,
    "cps": cps,
    "deep_cotraining": deep_cotraining,
    "pseudo_label": pseudo_label,
    "pseudoseg": pseudoseg,
}


def get_method(name: str) -> types.ModuleType:
  """The method module registered as ``name``; ValueError listing the known names."""
  if name not in METHODS:
    raise ValueError(f"config.method={name!r}; expected one of {sorted(METHODS)}.")
  return METHODS[name]


def method_configs() -> dict:
  """Each method's default sub-config, keyed by method name (for config validation)."""
  return {name: module.default_config() for name, module in METHODS.items()}
