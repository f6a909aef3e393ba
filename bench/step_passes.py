"""The passes of the model that each method's train step needs: the budget of issue #6.

``bench/speed.py`` compares a method's step time with the time of the passes the method
needs (FixMatch: labeled fwd+bwd, weak fwd, strong fwd+bwd, partner weak fwd); a step that
costs much more than that sum does work its method does not ask for. A pass is one pass of
the model over one batch of ``config.batch_size`` images (the benchmarks feed labeled and
unlabeled batches of one size):

- ``fwd_bwd``: a train-mode forward whose backward computes gradients;
- ``fwd``: a forward without gradient (eval mode, or train mode whose output is detached);
- ``head_fwd_bwd`` / ``head_fwd``: the same for the model's classifier head alone
  (``method=type(model).classify``) over the decoder features, CCT's auxiliary decoders.

The counts are those the method's reference needs (shared/reference/METHODS.md), not those
this library's step happens to run: where the step does more, e.g. a batch differentiated
as a whole whose weak-view rows need no gradient, the extra shows in ``step_vs_passes``.
Counts that are config values (members, teacher passes, heads, attack steps) are read from
``config``, so ``step_passes(config_lib.base_config(method))`` is the default's budget.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from jaxsemiseg.methods import cct, cps


@dataclasses.dataclass(frozen=True)
class StepPasses:
  """Passes of one train step, in units of one pass over one batch.

  Attributes:
    fwd_bwd: forward+backward passes of the whole model.
    fwd: forward-only passes of the whole model.
    head_fwd_bwd: forward+backward passes of the classifier head alone.
    head_fwd: forward-only passes of the classifier head alone.
  """

  fwd_bwd: float
  fwd: float
  head_fwd_bwd: float = 0.0
  head_fwd: float = 0.0


def _supervised(config: ml_collections.ConfigDict) -> StepPasses:
  # Labeled fwd+bwd; adversarial training adds the attack's input gradients (FGSM one,
  # PGD one per step; an input gradient is counted as a whole fwd+bwd though it skips the
  # weight gradients) and the fwd+bwd on the adversarial images.
  settings = config.supervised.adversarial
  attack_passes = {"none": 0, "fgsm": 1, "pgd": settings.pgd_num_steps}[settings.attack]
  return StepPasses(fwd_bwd=1 + (attack_passes + 1 if attack_passes else 0), fwd=0)


def _fixmatch(config: ml_collections.ConfigDict) -> StepPasses:
  # Labeled fwd+bwd and strong fwd+bwd; the weak view of A and the partner B forward only
  # (pseudo-labels). With BatchNorm the step differentiates [labeled; weak A] as one
  # batch, as the reference (the batch statistics couple the rows), which shows in the
  # ratio; without it the weak rows skip the backward pass.
  del config
  return StepPasses(fwd_bwd=2, fwd=2)


def _unimatch(config: ml_collections.ConfigDict) -> StepPasses:
  # Labeled fwd+bwd, two strong views fwd+bwd, weak A and partner B forward only, and the
  # feature-perturbed pass of A, counted as a whole fwd+bwd: its decoder pass needs
  # gradients and so does A's encoder pass under it (whose forward the weak pass counts
  # too, so the budget is generous by one encoder forward). With BatchNorm the step, as
  # the reference, also decodes the labeled images' perturbed features (they enter the
  # batch statistics) and drops them, which shows in the ratio; without it, it does not.
  del config
  return StepPasses(fwd_bwd=4, fwd=2)


def _mean_teacher(config: ml_collections.ConfigDict) -> StepPasses:
  # Student: labeled and unlabeled fwd+bwd; teacher: one eval-mode forward of image_u.
  del config
  return StepPasses(fwd_bwd=2, fwd=1)


def _ua_mt(config: ml_collections.ConfigDict) -> StepPasses:
  # Student: labeled and unlabeled fwd+bwd; teacher: the target pass plus T noisy MC
  # Dropout passes (UA-MT: T = 8), forward only.
  return StepPasses(fwd_bwd=2, fwd=1 + config.ua_mt.num_samples)


def _ensemble_self_training(config: ml_collections.ConfigDict) -> StepPasses:
  # Per member: labeled and strong-view fwd+bwd, and eval-mode forwards of both unlabeled
  # batches (the mean prediction's pseudo-labels).
  members = config.ensemble_self_training.num_members
  return StepPasses(fwd_bwd=2 * members, fwd=2 * members)


def _cct(config: ml_collections.ConfigDict) -> StepPasses:
  # Labeled and unlabeled fwd+bwd (main decoder included); each of the K auxiliary heads a
  # head fwd+bwd on its perturbed features; each VAT head first a head forward of the clean
  # features and one head fwd+bwd (an input gradient) per power iteration.
  settings = config.cct
  num_vat = settings.num_heads["vat"]
  return StepPasses(fwd_bwd=2, fwd=0,
                    head_fwd_bwd=cct.num_aux_heads(settings) + num_vat * settings.vat_iterations,
                    head_fwd=num_vat)


def _equivariance(config: ml_collections.ConfigDict) -> StepPasses:
  # Labeled and transformed-view fwd+bwd; the untransformed image_u forward only (its
  # warped prediction is the detached target). With BatchNorm the step differentiates all
  # three batches as one (shows in the ratio); without it the target rows skip the
  # backward pass.
  del config
  return StepPasses(fwd_bwd=2, fwd=1)


def _cps(config: ml_collections.ConfigDict) -> StepPasses:
  # Per net: labeled and mixed-image fwd+bwd, and train-mode forwards of both un-mixed
  # unlabeled batches without gradient (the pseudo-labels).
  del config
  return StepPasses(fwd_bwd=2 * cps.NUM_MEMBERS, fwd=2 * cps.NUM_MEMBERS)


def _deep_cotraining(config: ml_collections.ConfigDict) -> StepPasses:
  # Per net: labeled and unlabeled fwd+bwd (CE and JSD). Per ordered pair (i -> j): net
  # j's fwd+bwd on the adversarial images and net i's attack, with probability p FGSM (one
  # input gradient) and otherwise VAT with one power iteration (a clean forward and one
  # input gradient), an input gradient counted as a whole fwd+bwd. The reference runs only
  # the drawn attack; the CPU step runs both and keeps one, which shows in the ratio.
  settings = config.deep_cotraining
  nets = settings.num_members
  pairs = nets * (nets - 1)
  return StepPasses(fwd_bwd=2 * nets + 2 * pairs,
                    fwd=pairs * (1 - settings.labeled_adversarial_p))


def _pseudo_label(config: ml_collections.ConfigDict) -> StepPasses:
  # The student's supervised step: one fwd+bwd over the labeled and the pseudo-labeled
  # batch (the offline labeling is not part of the step).
  del config
  return StepPasses(fwd_bwd=2, fwd=0)


def _pseudoseg(config: ml_collections.ConfigDict) -> StepPasses:
  # Labeled and strong-view fwd+bwd; the weak view forward twice, in train mode (decoder
  # logits) and in eval mode (Grad-CAM features; it needs only the backbone and is counted
  # as a whole pass). The reference's second backbone pass on the labeled images gives the
  # features the labeled pass already has and is not counted; nor are the classifier and
  # attention heads, which are small next to a pass and show in the ratio.
  del config
  return StepPasses(fwd_bwd=2, fwd=2)


PASSES: dict[str, Callable[[ml_collections.ConfigDict], StepPasses]] = {
    "supervised": _supervised,
    "mean_teacher": _mean_teacher,
    "fixmatch": _fixmatch,
    "unimatch": _unimatch,
    "cct": _cct,
    "equivariance": _equivariance,
    "ua_mt": _ua_mt,
    "ensemble_self_training": _ensemble_self_training,
    "cps": _cps,
    "deep_cotraining": _deep_cotraining,
    "pseudo_label": _pseudo_label,
    "pseudoseg": _pseudoseg,
}


def step_passes(config: ml_collections.ConfigDict) -> StepPasses:
  """The passes ``config.method``'s train step needs under ``config``.

  Args:
    config: a run config (``config_lib.base_config(method)`` for the defaults).

  Returns:
    The passes, each over one batch of ``config.batch_size`` images.

  Raises:
    ValueError: if the method has no entry here, or the unlabeled batch differs in size
      from the labeled one (the unit would then differ between passes).
  """
  if config.method not in PASSES:
    raise ValueError(f"config.method={config.method!r} has no pass count in "
                     f"bench/step_passes.py; expected one of {sorted(PASSES)}.")
  if config.unlabeled_batch_size != config.batch_size:
    raise ValueError(
        f"config.unlabeled_batch_size={config.unlabeled_batch_size} differs from "
        f"config.batch_size={config.batch_size}; the pass counts are in batches of one "
        "size: give both the same size.")
  return PASSES[config.method](config)
