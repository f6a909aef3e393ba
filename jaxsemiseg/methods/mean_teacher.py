"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) for segmentation (METHODS.md 4).

The teacher is an exponential moving average of the student, kept in
``state.extras["teacher"]`` as ``{"params", "batch_stats"}``. Per step:

1. The teacher predicts the unlabeled weak view ``image_u`` in eval mode (BatchNorm
   running statistics, no dropout), a deterministic target.
2. The student sees the labeled images and a noisy view of ``image_u`` (UniMatch's strong
   colour draw, ``strong_colour=True``; else the weak view itself) in one train-mode batch.
3. ``L = L_x + w(t) * MSE(softmax(student), softmax(teacher))`` over the valid unlabeled
   pixels and all classes, with ``w(t) = consistency_weight * sigmoid_rampup(t,
   rampup_steps)`` and ``t`` the number of updates done before this one.
4. After the student update, with ``s = t + 1`` updates done:
   ``theta_teacher <- d theta_teacher + (1 - d) theta_student``,
   ``d = min(1 - 1 / (s + 1), ema_decay)`` (``self_training.ema_decay``).

The teacher's BatchNorm statistics, ``teacher_batch_stats``:
  - ``"ema"`` (default): averaged with the same decay as the parameters, so statistics
    and weights describe the same averaged network (timm's ``ModelEmaV2`` averages all
    buffers the same way);
  - ``"copy"``: the student's running statistics after the update.
The references (CuriousAI, U2PL) instead run the teacher in train mode, its buffers then
coming from its own forward passes; here the teacher never runs in train mode, so its
statistics must come from the student. Models without BatchNorm (the UNet) are unaffected.

Evaluation and prediction use the teacher (``make_predict_fn``). With
``config.model.pretrained_path`` the teacher starts from the same pretrained backbone as
the student (``with_pretrained_backbone``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses
from jaxsemiseg.methods import common, self_training, supervised
from jaxsemiseg.state import TrainState

USES_UNLABELED = True

TEACHER_BATCH_STATS = ("ema", "copy")


def default_config() -> ml_collections.ConfigDict:
  """EMA decay, consistency weight and ramp-up, teacher BatchNorm statistics, student view."""
  return ml_collections.ConfigDict(dict(
      # U2PL, UA-MT, French et al. and TorchSemiSeg's Mean Teacher.
      ema_decay=0.99,
      # TorchSemiSeg's MSE(softmax) weight; CuriousAI's CIFAR-10 setting too.
      consistency_weight=100.0,
      # CuriousAI ramps up over 5 epochs of CIFAR-10. An eighth of the default 4000-step
      # budget here, so the consistency term is at full weight for most of a run.
      rampup_steps=500,
      # One of TEACHER_BATCH_STATS; see the module docstring.
      teacher_batch_stats="ema",
      # Student input noise: the UniMatch strong colour view (the paper adds Gaussian input
      # noise and relies on dropout; the default UNet has no dropout, so without a
      # perturbation student and teacher would see the same function of the same image).
      strong_colour=True,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.mean_teacher`` value outside its range."""
  settings = config.mean_teacher
  self_training.check_unit_interval("config.mean_teacher.ema_decay", settings.ema_decay)
  self_training.check_non_negative("config.mean_teacher.consistency_weight",
                                   settings.consistency_weight)
  if settings.rampup_steps < 0:
    raise ValueError(
        f"config.mean_teacher.rampup_steps={settings.rampup_steps}; expected a step count "
        ">= 0 (0 = no ramp-up).")
  self_training.check_one_of("config.mean_teacher.teacher_batch_stats",
                             settings.teacher_batch_stats, TEACHER_BATCH_STATS)


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """The supervised state plus a teacher that starts as a copy of the student."""
  state = supervised.init_state(rng, model, tx, sample_batch, config)
  return state.replace(
      extras={"teacher": {"params": state.params, "batch_stats": state.batch_stats}})


def with_pretrained_backbone(state: TrainState, path: str, *,
                             tx: optax.GradientTransformation) -> TrainState:
  """The student's backbone from ``path``, and the teacher restarted as its copy.

  As at initialisation: otherwise the EMA, which keeps 1 / (s + 1) of the initial teacher
  after s updates, would average the random backbone into the teacher for hundreds of
  steps.
  """
  state = common.with_pretrained_backbone(state, path, tx=tx)
  return state.replace(extras={
      **state.extras, "teacher": {"params": state.params, "batch_stats": state.batch_stats}})


def _teacher_probs(model, teacher: dict, images: jax.Array) -> jax.Array:
  outputs, _ = common.forward(model, teacher["params"], teacher["batch_stats"], images,
                              train=False)
  return jax.nn.softmax(outputs["logits"].astype(jnp.float32), axis=-1)


def make_predict_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """``predict(state, images) -> [B, H, W, C]`` probabilities of the teacher (eval mode)."""
  del config

  def predict(state: TrainState, images: jax.Array) -> jax.Array:
    return _teacher_probs(model, state.extras["teacher"], images)

  return predict


def update_teacher(teacher: dict, state: TrainState, settings: ml_collections.ConfigDict
                   ) -> tuple[dict, jax.Array]:
  """The EMA of the student after ``state.step`` updates, and the decay it used.

  Args:
    teacher: ``{"params", "batch_stats"}`` before this update.
    state: the student after its optimizer step.
    settings: ``ema_decay`` (alpha) and ``teacher_batch_stats`` ("ema" or "copy").

  Returns:
    ``(teacher, decay)`` with ``decay = min(1 - 1 / (step + 1), alpha)``.
  """
  decay = self_training.ema_decay(state.step, alpha=settings.ema_decay)
  batch_stats = state.batch_stats
  if settings.teacher_batch_stats == "ema":
    batch_stats = self_training.ema_update(teacher["batch_stats"], batch_stats, decay=decay)
  params = self_training.ema_update(teacher["params"], state.params, decay=decay)
  return {"params": params, "batch_stats": batch_stats}, decay


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u`` and ``valid_u``. Metrics: ``loss``,
  ``loss_x`` (with the labeled terms such as ``loss_ce``), ``loss_consistency``,
  ``consistency_weight`` (the ramped weight of this step), ``ema_decay`` and ``grad_norm``.
  """
  settings = config.mean_teacher

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    colour_rng, dropout_rng = jax.random.split(rng)
    teacher = state.extras["teacher"]
    teacher_probs = _teacher_probs(model, teacher, batch["image_u"])
    student_view = batch["image_u"]
    if settings.strong_colour:
      student_view = self_training.strong_colour_batch(colour_rng, student_view)
    weight = settings.consistency_weight * losses.sigmoid_rampup(
        state.step, length=settings.rampup_steps)

    def loss_fn(params: Any):
      loss_x, terms, student_logits, batch_stats = common.forward_labeled_and_unlabeled(
          dropout_rng, model, params, state.batch_stats, batch["image"], batch["label"],
          student_view, loss_config=config.loss)
      student_probs = jax.nn.softmax(student_logits, axis=-1)
      consistency, _ = losses.probability_mse(
          student_probs, teacher_probs, mask=batch["valid_u"])
      metrics = {**terms, "loss_x": loss_x, "loss_consistency": consistency,
                 "consistency_weight": weight}
      return loss_x + weight * consistency, (batch_stats, metrics)

    state, metrics = self_training.apply_gradients(state, tx, loss_fn)
    teacher, decay = update_teacher(teacher, state, settings)
    return state.replace(extras={**state.extras, "teacher": teacher}), {
        **metrics, "ema_decay": decay}

  return step
