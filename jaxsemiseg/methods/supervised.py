"""Supervised baseline: the labeled-only model every semi-supervised table compares to.

Loss: pixel cross-entropy with ignore index 255, averaged over valid pixels (optionally
OHEM, and a Dice term); the unlabeled part of the batch, if any, is not used.

Optional adversarial training (Goodfellow et al., "Explaining and harnessing adversarial
examples"): with ``config.supervised.adversarial.attack`` set to ``"fgsm"`` or ``"pgd"``
(Madry et al.), the loss is ``alpha * J(x, y) + (1 - alpha) * J(x_adv, y)``, the objective
of ``augment.adversarial.adversarial_training_loss``. ``x_adv`` is attacked against the
labeled loss with the model in inference mode (no dropout, BatchNorm running statistics,
so examples do not interact) and held fixed; both terms then train the model, and the
BatchNorm statistics are updated from the clean batch only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from jaxsemiseg.augment import adversarial
from jaxsemiseg.methods import common
from jaxsemiseg.state import TrainState, create_train_state

ATTACKS = ("none", "fgsm", "pgd")


def default_config() -> ml_collections.ConfigDict:
  """``adversarial``: the attack of adversarial training; "none" trains on clean images."""
  return ml_collections.ConfigDict(dict(adversarial=dict(
      attack="none",
      # L-infinity radius on [0, 1] images: Madry et al.'s 8/255. Goodfellow et al.'s MNIST
      # 0.25 would wipe out natural images.
      epsilon=8 / 255,
      # Weight of the clean loss; 0.5 as in Goodfellow et al.
      alpha=0.5,
      # PGD training settings of Madry et al. (step 2/255, 7 steps, random start).
      pgd_step_size=2 / 255,
      pgd_num_steps=7,
  )))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.supervised`` value outside its range."""
  settings = config.supervised.adversarial
  if settings.attack not in ATTACKS:
    raise ValueError(
        f"config.supervised.adversarial.attack={settings.attack!r}; expected one of {ATTACKS}.")
  if settings.epsilon < 0:
    raise ValueError(
        f"config.supervised.adversarial.epsilon={settings.epsilon}; expected >= 0.")
  if not 0 <= settings.alpha <= 1:
    raise ValueError(
        f"config.supervised.adversarial.alpha={settings.alpha}; expected a weight in [0, 1].")
  if settings.pgd_step_size <= 0 or settings.pgd_num_steps < 1:
    raise ValueError(
        "config.supervised.adversarial.pgd_step_size and pgd_num_steps must be positive; got "
        f"{settings.pgd_step_size} and {settings.pgd_num_steps}.")


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """Initialises the model on ``sample_batch["image"]`` and the optimizer."""
  del config
  variables = model.init({"params": rng, "dropout": rng}, sample_batch["image"], train=False)
  return create_train_state(variables=dict(variables), tx=tx)


def make_attack(model, batch_stats: Any,
                config: ml_collections.ConfigDict) -> adversarial.Attack | None:
  """The attack of ``config.supervised.adversarial`` on the labeled loss, or None.

  Returns ``attack(params, images, labels, key) -> images_adv`` with the model in
  inference mode, so per-example gradients are exact.
  """
  settings = config.supervised.adversarial
  if settings.attack == "none":
    return None

  def inference_loss(params: Any, images: jax.Array, labels: jax.Array) -> jax.Array:
    outputs, _ = common.forward(model, params, batch_stats, images, train=False)
    return common.supervised_loss(outputs["logits"], labels, config.loss)[0]

  if settings.attack == "fgsm":
    return adversarial.fgsm(inference_loss, epsilon=settings.epsilon)
  return adversarial.pgd(inference_loss, epsilon=settings.epsilon,
                         step_size=settings.pgd_step_size, num_steps=settings.pgd_num_steps)


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``."""
  alpha = config.supervised.adversarial.alpha

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    dropout_rng, attack_rng = jax.random.split(rng)
    attack = make_attack(model, state.batch_stats, config)

    def labeled_loss(params: Any, images: jax.Array):
      outputs, batch_stats = common.forward(
          model, params, state.batch_stats, images, train=True, rng=dropout_rng)
      loss, terms = common.supervised_loss(outputs["logits"], batch["label"], config.loss)
      return loss, (batch_stats, terms)

    def loss_fn(params: Any):
      loss, (batch_stats, terms) = labeled_loss(params, batch["image"])
      if attack is None:
        return loss, (batch_stats, terms)
      images_adv = attack(params, batch["image"], batch["label"], attack_rng)
      adversarial_loss, _ = labeled_loss(params, images_adv)
      total = alpha * loss + (1 - alpha) * adversarial_loss
      return total, (batch_stats, {**terms, "loss_adversarial": adversarial_loss})

    (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **terms}

  return step
