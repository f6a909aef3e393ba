"""Uncertainty-aware Mean Teacher (UA-MT; Yu et al., MICCAI 2019) for segmentation.

yulequan/UA-MT ``code/train_LA_meanteacher_certainty_unlabel.py`` (METHODS.md 4). A Mean
Teacher whose consistency counts only the pixels the teacher is sure of. Per step, with
``t`` the number of updates done before this one:

1. The EMA teacher (``state.extras["teacher"]``, as in ``mean_teacher``) predicts the
   unlabeled images ``T + 1`` times, each pass with its own dropout draw and input noise
   ``clip(N(0, noise_std^2), -noise_clip, noise_clip)``, in one ``vmap``
   (``uncertainty.mc_dropout``). The first pass is the consistency target (the
   reference's separate ``ema_model(ema_inputs)``); the other ``T`` give the uncertainty
   ``u = H[mean_t p_t]`` (``uncertainty.predictive_entropy``).
2. The student sees the labeled and the clean unlabeled images in one train-mode batch.
3. ``L = L_x + w(t) * sum_mask ||p_s - p_t||^2 / (C * #mask)``
   (``losses.probability_mse``) with ``mask = valid & (u < H(t))``,
   ``H(t) = (0.75 + 0.25 * ramp(t, threshold_rampup_steps)) * ln C`` and
   ``w(t) = consistency_weight * ramp(t, rampup_steps)``, ``ramp`` the sigmoid ramp-up.
4. The teacher is updated as Mean Teacher's: parameters by EMA with the warmed-up decay,
   BatchNorm statistics per ``teacher_batch_stats``.

Differences from the reference:
  - The reference teacher runs in train mode, so its VNet's BatchNorm normalises with the
    batch statistics of each noisy pass. Here the passes are MC Dropout passes
    (BatchNorm in inference mode with the teacher's statistics, dropout on), as the
    ``uncertainty`` module defines them; for the GroupNorm UNet the two are the same.
  - The reference's weight ramps in steps of 150 iterations (``ramp(iter // 150, 40)``
    over its 6000); here both ramps are smooth and last the whole run by default.
  - The entropy is exact (``0 log 0 = 0``) instead of ``-sum mu log(mu + 1e-6)``.
  - The EMA decay counts this update (``self_training.ema_decay``, as Mean Teacher here);
    the reference passes the count before it, so its first update copies the student.

The teacher's uncertainty is MC Dropout's, so ``check_config`` rejects a model whose
dropout rate is 0: its passes would differ by the input noise only.
Evaluation uses the student, as the reference saves and tests the student.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses, uncertainty
from jaxsemiseg.methods import common, mean_teacher, self_training
from jaxsemiseg.state import TrainState

USES_UNLABELED = True

# Threshold fractions of ln C at the start and at the end of its ramp (UA-MT).
THRESHOLD_START = 0.75
THRESHOLD_END = 1.0


def default_config() -> ml_collections.ConfigDict:
  """EMA, consistency weight and ramps, teacher passes and input noise (UA-MT's values)."""
  return ml_collections.ConfigDict(dict(
      # UA-MT's ema_decay.
      ema_decay=0.99,
      # UA-MT's consistency weight.
      consistency_weight=0.1,
      # Ramp-up lengths in steps of the weight and of the entropy threshold; -1 = the whole
      # run (config.num_steps), as UA-MT ramps both over its 6000 iterations.
      rampup_steps=-1,
      threshold_rampup_steps=-1,
      # T stochastic teacher passes for the uncertainty (UA-MT: 8).
      num_samples=8,
      # UA-MT's input noise clamp(N(0, 0.1^2), -0.2, 0.2). Its inputs are standardised
      # volumes; on [0, 1] images the same noise is about four times stronger relative to
      # the image contrast. Kept at the reference values.
      noise_std=0.1,
      noise_clip=0.2,
      # One of mean_teacher.TEACHER_BATCH_STATS; see mean_teacher's docstring.
      teacher_batch_stats="ema",
  ))


def _ramp_length(value: int, config: ml_collections.ConfigDict) -> int:
  """A ramp length from the config; -1 means the whole run."""
  return config.num_steps if value == -1 else value


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.ua_mt`` value out of range, or a dropout-free model."""
  settings = config.ua_mt
  self_training.check_unit_interval("config.ua_mt.ema_decay", settings.ema_decay)
  self_training.check_non_negative("config.ua_mt.consistency_weight",
                                   settings.consistency_weight)
  for name in ("rampup_steps", "threshold_rampup_steps"):
    if settings[name] < -1:
      raise ValueError(
          f"config.ua_mt.{name}={settings[name]}; expected a step count >= 0 (0 = no "
          "ramp-up) or -1 (the whole run).")
  if settings.num_samples < 1:
    raise ValueError(
        f"config.ua_mt.num_samples={settings.num_samples}; expected at least 1 teacher pass "
        "(UA-MT uses 8).")
  if settings.noise_std < 0 or settings.noise_clip < 0:
    raise ValueError(
        f"config.ua_mt.noise_std={settings.noise_std} and noise_clip={settings.noise_clip}; "
        "expected both >= 0.")
  self_training.check_one_of("config.ua_mt.teacher_batch_stats",
                             settings.teacher_batch_stats, mean_teacher.TEACHER_BATCH_STATS)
  # An unknown model name is reported by config.validate_config itself.
  model_settings = config.model.get(config.model.name)
  dropout_rate = model_settings.dropout_rate if model_settings else None
  if dropout_rate is not None and dropout_rate <= 0:
    raise ValueError(
        f"config.model.{config.model.name}.dropout_rate={dropout_rate}; UA-MT's teacher "
        "needs dropout for its stochastic passes: set it > 0 (configs/ua_mt.py uses 0.5).")


# The state is Mean Teacher's: the student plus a teacher that starts as its copy.
init_state = mean_teacher.init_state
with_pretrained_backbone = mean_teacher.with_pretrained_backbone


def teacher_samples(key: jax.Array, model, teacher: dict, images: jax.Array, *,
                    num_samples: int, noise_std: float, noise_clip: float) -> jax.Array:
  """Probabilities of ``num_samples`` noisy MC Dropout passes of the teacher.

  Args:
    key: PRNG key; each pass gets its own noise and dropout draw.
    model: the segmentation model (with dropout).
    teacher: ``{"params", "batch_stats"}`` of the teacher.
    images: float32 ``[B, H, W, 3]``.
    num_samples: the number of passes.
    noise_std: standard deviation of the Gaussian input noise.
    noise_clip: the noise is clipped to ``[-noise_clip, noise_clip]``.

  Returns:
    float32 ``[num_samples, B, H, W, C]``, with no gradient.
  """
  dropout_apply = uncertainty.make_mc_dropout_apply_fn(model)

  def noisy_apply(variables: Any, images: jax.Array, key: jax.Array) -> jax.Array:
    noise_key, dropout_key = jax.random.split(key)
    noise = noise_std * jax.random.normal(noise_key, images.shape, images.dtype)
    return dropout_apply(variables, images + jnp.clip(noise, -noise_clip, noise_clip),
                         dropout_key)

  variables = {"params": teacher["params"]}
  if teacher["batch_stats"]:
    variables["batch_stats"] = teacher["batch_stats"]
  samples = uncertainty.mc_dropout(key, noisy_apply, variables, images,
                                   num_samples=num_samples)
  return jax.lax.stop_gradient(samples)


def entropy_threshold(step: jax.Array | int, *, num_classes: int,
                      rampup_steps: int) -> jax.Array:
  """UA-MT's ``(0.75 + 0.25 * sigmoid_rampup(step, rampup_steps)) * ln C``, in nats.

  ``sigmoid_rampup`` starts at ``exp(-5)``, so the threshold starts just above
  ``0.75 ln C`` and reaches ``ln C`` (every pixel counts) at ``rampup_steps``.
  """
  ramp = losses.sigmoid_rampup(step, length=rampup_steps)
  fraction = THRESHOLD_START + (THRESHOLD_END - THRESHOLD_START) * ramp
  return fraction * math.log(num_classes)


def certain_mask(samples: jax.Array, valid: jax.Array, *,
                 threshold: jax.Array | float) -> jax.Array:
  """Bool ``[B, H, W]``: valid pixels whose predictive entropy is below ``threshold``.

  Args:
    samples: ``[T, B, H, W, C]`` teacher probabilities.
    valid: bool ``[B, H, W]`` mask of real (not padded) pixels.
    threshold: the entropy threshold in nats (strict ``<``, as UA-MT).

  Returns:
    The mask.
  """
  return valid.astype(bool) & (uncertainty.predictive_entropy(samples) < threshold)


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u`` and ``valid_u``. Metrics: ``loss``,
  ``loss_x`` (with the labeled terms such as ``loss_ce``), ``loss_consistency``,
  ``consistency_weight`` and ``entropy_threshold`` (this step's ramped values),
  ``certain_fraction`` (of the valid unlabeled pixels), ``ema_decay`` and ``grad_norm``.
  """
  settings = config.ua_mt
  rampup_steps = _ramp_length(settings.rampup_steps, config)
  threshold_rampup_steps = _ramp_length(settings.threshold_rampup_steps, config)

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    teacher_rng, dropout_rng = jax.random.split(rng)
    teacher = state.extras["teacher"]
    samples = teacher_samples(
        teacher_rng, model, teacher, batch["image_u"], num_samples=settings.num_samples + 1,
        noise_std=settings.noise_std, noise_clip=settings.noise_clip)
    target, uncertainty_samples = samples[0], samples[1:]
    threshold = entropy_threshold(state.step, num_classes=samples.shape[-1],
                                  rampup_steps=threshold_rampup_steps)
    mask = certain_mask(uncertainty_samples, batch["valid_u"], threshold=threshold)
    weight = settings.consistency_weight * losses.sigmoid_rampup(state.step,
                                                                 length=rampup_steps)

    def loss_fn(params: Any):
      loss_x, terms, student_logits, batch_stats = common.forward_labeled_and_unlabeled(
          dropout_rng, model, params, state.batch_stats, batch["image"], batch["label"],
          batch["image_u"], loss_config=config.loss)
      student_probs = jax.nn.softmax(student_logits, axis=-1)
      consistency, _ = losses.probability_mse(student_probs, target, mask=mask)
      metrics = {**terms, "loss_x": loss_x, "loss_consistency": consistency,
                 "consistency_weight": weight}
      return loss_x + weight * consistency, (batch_stats, metrics)

    state, metrics = self_training.apply_gradients(state, tx, loss_fn)
    teacher, decay = mean_teacher.update_teacher(teacher, state, settings)
    certain_fraction = mask.sum() / jnp.maximum(batch["valid_u"].sum(), 1).astype(jnp.float32)
    return state.replace(extras={**state.extras, "teacher": teacher}), {
        **metrics, "entropy_threshold": threshold, "certain_fraction": certain_fraction,
        "ema_decay": decay}

  return step
