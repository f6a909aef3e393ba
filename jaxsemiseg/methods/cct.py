"""Cross-Consistency Training (Ouali et al., CVPR 2020), as yassouali/CCT (METHODS.md 6).

A shared encoder, a main decoder and K auxiliary decoders. Here the encoder is the whole
model up to its ``features`` (the classifier input) and every decoder is the model's
classifier head (``method=type(model).classify``: dropout, 1x1 conv, upsampling to the
input size); in CCT the main decoder is likewise a thin upsampling head. Per step:

1. The labeled images go through the model in train mode: ``L_x``, CE with ignore.
2. The unlabeled images ``image_u`` go through it in a second train-mode pass (separate
   BatchNorm batches, as the reference's two encoder calls): main logits and ``z``.
3. Each auxiliary head k reads its own perturbed copy of ``z`` (``cct_perturbations``),
   in the reference's order and counts: VAT 2, dropout 6, guided cutout 6, context
   masking 2, object masking 2, feature drop 6, feature noise 6 (K = 30). The guided
   perturbations and the targets use the **detached** main prediction; ``z`` itself is
   not detached, so the consistency term trains the encoder, as in the reference.
4. ``L = L_x + w(t) (1/K) sum_k MSE(softmax(aux_k), sg softmax(main))``, the MSE over the
   valid unlabeled pixels and all classes (``losses.probability_mse``), ``w(t) = 30
   sigmoid_rampup(t, rampup_steps)`` with ``t`` the updates done before this one.

The K heads are stacked parameters (``jax.vmap`` of the head's init over K keys, so they
start different) run in one ``stacked.stacked_map``: one ``jax.vmap`` on GPU/TPU, an
unrolled loop on CPU, where XLA runs the vmapped (grouped) convolutions slowly
(``config.member_map`` forces either); they live in ``state.extras["aux_heads"]`` with
their own optimizer state ``state.extras["aux_opt_state"]`` (the same ``tx``, so the same
learning rate as the head), keeping ``state.params`` the plain model that evaluation,
checkpoint conversion and prediction expect. Evaluation uses the main decoder alone.

Differences from the reference:
  - The auxiliary heads run without the model's dropout (``train=False``): CCT's decoders
    have none, the perturbation is their noise. The main prediction, the heads' target,
    comes from the train-mode pass, so with a classifier dropout (DeepLabV3+'s
    ``dropout_rate``, 0 in ``configs/voc_cct.py`` and absent from UNet-S) the target is
    a dropout-perturbed prediction too.
  - Crop padding (``valid_u``) is excluded from the MSE and counts as background for the
    guided perturbations; the reference averages over every pixel.
  - Guided cutout cuts one box per predicted class rather than per connected component
    (see ``cct_perturbations.guided_cutout``).
  - VAT's power iteration is the exact ``xi -> 0`` limit (see ``cct_perturbations.vat``).
  - ``config.optimizer.grad_clip_norm`` clips the model's and the heads' gradients
    separately (two optimizer states).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses, stacked
from jaxsemiseg.methods import cct_perturbations, common, supervised
from jaxsemiseg.state import TrainState

USES_UNLABELED = True

# The auxiliary heads' perturbations, in the reference's order of ``aux_decoders``.
PERTURBATIONS = ("vat", "dropout", "cutout", "context_masking", "object_masking",
                 "feature_drop", "feature_noise")

HeadFn = Callable[[Any, jax.Array], jax.Array]


def default_config() -> ml_collections.ConfigDict:
  """Head counts per perturbation, their parameters, the consistency weight and ramp."""
  return ml_collections.ConfigDict(dict(
      # Auxiliary heads per perturbation (CCT configs/config.json).
      num_heads=dict(vat=2, dropout=6, cutout=6, context_masking=2, object_masking=2,
                     feature_drop=6, feature_noise=6),
      # VAT on z: eps 2.0, one power iteration (xi is the exact limit, see the docstring).
      vat_epsilon=2.0,
      vat_iterations=1,
      # Dropout2d rate of the dropout heads: config.json's drop_rate (the class default
      # in decoders.py is 0.3, which the config overrides).
      dropout_rate=0.5,
      # Guided cutout's box side as a fraction of the object's bounding box.
      cutout_erase=0.4,
      # Feature drop's gamma ~ U(0.7, 0.9) of the channel-mean attention's max (paper).
      feature_drop_range=(0.7, 0.9),
      # Feature noise U(-0.3, 0.3), multiplicative.
      feature_noise_range=0.3,
      # unsupervised_w in config.json.
      consistency_weight=30.0,
      # CCT ramps the weight up over the first 10% of training (ramp_up 0.1): 400 of the
      # default 4000 steps; configs for other budgets set 0.1 * num_steps.
      rampup_steps=400,
  ))


def num_aux_heads(settings: ml_collections.ConfigDict) -> int:
  """K, the total number of auxiliary heads of ``config.cct``."""
  return sum(settings.num_heads[name] for name in PERTURBATIONS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.cct`` value outside its range."""
  settings = config.cct
  for name in PERTURBATIONS:
    if settings.num_heads[name] < 0:
      raise ValueError(
          f"config.cct.num_heads.{name}={settings.num_heads[name]}; expected a count >= 0.")
  if num_aux_heads(settings) < 1:
    raise ValueError(
        "config.cct.num_heads are all 0; expected at least one auxiliary head (CCT uses "
        "vat=2, dropout=6, cutout=6, context_masking=2, object_masking=2, feature_drop=6, "
        "feature_noise=6).")
  drop_range = tuple(settings.feature_drop_range)
  if len(drop_range) != 2 or not 0.0 <= drop_range[0] <= drop_range[1]:
    raise ValueError(f"config.cct.feature_drop_range={drop_range}; expected (low, high) with "
                     "0 <= low <= high.")
  ranges = (
      ("vat_epsilon", settings.vat_epsilon >= 0, ">= 0"),
      ("vat_iterations", settings.vat_iterations >= 1, "an int >= 1"),
      ("dropout_rate", 0.0 <= settings.dropout_rate < 1.0, "a rate in [0, 1)"),
      ("cutout_erase", 0.0 <= settings.cutout_erase <= 1.0, "a fraction in [0, 1]"),
      ("feature_noise_range", settings.feature_noise_range >= 0, "a half-width >= 0"),
      ("consistency_weight", settings.consistency_weight >= 0, ">= 0"),
      ("rampup_steps", settings.rampup_steps >= 0, "a step count >= 0 (0 = no ramp-up)"),
  )
  for name, in_range, expected in ranges:
    if not in_range:
      raise ValueError(f"config.cct.{name}={settings[name]!r}; expected {expected}.")


def init_aux_heads(rng: jax.Array, model, features: jax.Array, *, num_heads: int) -> Any:
  """K independently initialised classifier heads, stacked on a leading axis of size K.

  Args:
    rng: PRNG key; head k is initialised from ``split(rng, K)[k]``.
    model: the segmentation model (its ``classify`` method is the head).
    features: a sample of ``outputs["features"]``, e.g. zeros of its shape.
    num_heads: K.

  Returns:
    The heads' ``params``, every leaf ``[K, ...]``.
  """
  def init_one(key: jax.Array) -> Any:
    return model.init({"params": key}, features, train=False,
                      method=type(model).classify)["params"]

  return jax.vmap(init_one)(jax.random.split(rng, num_heads))


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """The supervised state plus the K auxiliary heads and their optimizer state in extras."""
  state = supervised.init_state(rng, model, tx, sample_batch, config)
  features = jax.eval_shape(
      lambda: model.apply(state.variables, sample_batch["image"], train=False))["features"]
  heads = init_aux_heads(jax.random.fold_in(rng, 1), model,
                         jnp.zeros(features.shape, features.dtype),
                         num_heads=num_aux_heads(config.cct))
  return state.replace(extras={"aux_heads": heads, "aux_opt_state": tx.init(heads)})


def make_head_fn(model, output_size: tuple[int, int]) -> HeadFn:
  """``head(params, features) -> logits [B, H, W, C]``: one head, no dropout, input size."""
  def head(params: Any, features: jax.Array) -> jax.Array:
    return model.apply({"params": params}, features, train=False, output_size=output_size,
                       method=type(model).classify)

  return head


def _take(tree: Any, start: int, stop: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[start:stop], tree)


def perturbed_features(key: jax.Array, features: jax.Array, predicted: jax.Array,
                       head: HeadFn, heads: Any, settings: ml_collections.ConfigDict, *,
                       num_classes: int, member_map: str = "auto") -> jax.Array:
  """Every auxiliary head's input: ``[K, B, h, w, F]``, in ``PERTURBATIONS`` order.

  Args:
    key: PRNG key; each head's perturbation gets its own.
    features: ``[B, h, w, F]`` encoder features ``z``.
    predicted: int ``[B, H, W]`` argmax of the detached main prediction.
    head: the head function (VAT attacks head k with head k's parameters).
    heads: the stacked head parameters.
    settings: ``config.cct``.
    num_classes: C.
    member_map: how the VAT heads run (``stacked.stacked_map``).

  Returns:
    The K perturbed copies of ``features``.
  """
  perturb = {
      "dropout": functools.partial(cct_perturbations.channel_dropout,
                                   rate=settings.dropout_rate),
      "cutout": lambda k, z: cct_perturbations.guided_cutout(
          k, z, predicted, num_classes=num_classes, erase=settings.cutout_erase),
      "context_masking": lambda _, z: cct_perturbations.context_masking(z, predicted),
      "object_masking": lambda _, z: cct_perturbations.object_masking(z, predicted),
      "feature_drop": functools.partial(cct_perturbations.feature_drop,
                                        threshold_range=tuple(settings.feature_drop_range)),
      "feature_noise": functools.partial(cct_perturbations.feature_noise,
                                         noise_range=settings.feature_noise_range),
  }

  def vat(k: jax.Array, params: Any) -> jax.Array:
    return cct_perturbations.vat(
        k, features, functools.partial(head, jax.lax.stop_gradient(params)),
        epsilon=settings.vat_epsilon, num_iterations=settings.vat_iterations)

  copies, offset = [], 0
  for name, name_key in zip(PERTURBATIONS, jax.random.split(key, len(PERTURBATIONS))):
    count = settings.num_heads[name]
    if count == 0:
      continue
    keys = jax.random.split(name_key, count)
    if name == "vat":
      copies.append(stacked.stacked_map(vat, keys, _take(heads, offset, offset + count),
                                        member_map=member_map))
    else:
      copies.append(jax.vmap(perturb[name], in_axes=(0, None))(keys, features))
    offset += count
  return jnp.concatenate(copies)


def consistency_loss(key: jax.Array, head: HeadFn, heads: Any, features: jax.Array,
                     main_logits: jax.Array, valid: jax.Array,
                     settings: ml_collections.ConfigDict, *,
                     member_map: str = "auto") -> jax.Array:
  """``(1/K) sum_k MSE(softmax(head_k(perturb_k(z))), sg softmax(main))``.

  Each MSE is ``losses.probability_mse`` over the ``valid`` pixels and all classes (the
  reference's ``F.mse_loss`` mean when every pixel is valid). No gradient reaches
  ``main_logits``; ``features`` and the heads get one.

  Args:
    key: PRNG key of the perturbations.
    head: :func:`make_head_fn`'s head.
    heads: the K stacked head parameters.
    features: ``[B, h, w, F]`` encoder features of the unlabeled images.
    main_logits: ``[B, H, W, C]`` main-decoder logits of the same images.
    valid: bool ``[B, H, W]`` real (not padded) pixels.
    settings: ``config.cct``.
    member_map: how the heads run (``stacked.stacked_map``).

  Returns:
    The scalar consistency loss.
  """
  main_logits = jax.lax.stop_gradient(main_logits)
  target = jax.nn.softmax(main_logits.astype(jnp.float32), axis=-1)
  predicted = jnp.where(valid, jnp.argmax(main_logits, axis=-1), 0)
  inputs = perturbed_features(key, features, predicted, head, heads, settings,
                              num_classes=main_logits.shape[-1], member_map=member_map)

  # Each head's loss inside the map, so the CPU loop never stacks the K heads'
  # full-resolution logits into one [K, B, H, W, C] array.
  def head_mse(params: Any, head_input: jax.Array) -> jax.Array:
    probs = jax.nn.softmax(head(params, head_input), axis=-1)
    return losses.probability_mse(probs, target, mask=valid)[0]

  return jnp.mean(stacked.stacked_map(head_mse, heads, inputs, member_map=member_map))


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u`` and ``valid_u``. Metrics: ``loss``,
  ``loss_x`` (with the labeled terms such as ``loss_ce``), ``loss_consistency`` (the mean
  over heads), ``consistency_weight`` (the ramped weight of this step) and ``grad_norm``
  (of the model's and the heads' gradients together).
  """
  settings = config.cct

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    labeled_rng, unlabeled_rng, perturbation_rng = jax.random.split(rng, 3)
    weight = settings.consistency_weight * losses.sigmoid_rampup(
        state.step, length=settings.rampup_steps)
    head = make_head_fn(model, batch["image_u"].shape[1:3])

    def loss_fn(trainable: tuple[Any, Any]):
      params, heads = trainable
      outputs, batch_stats = common.forward(model, params, state.batch_stats, batch["image"],
                                            train=True, rng=labeled_rng)
      loss_x, terms = common.supervised_loss(outputs["logits"], batch["label"], config.loss)
      outputs_u, batch_stats = common.forward(model, params, batch_stats, batch["image_u"],
                                              train=True, rng=unlabeled_rng)
      consistency = consistency_loss(perturbation_rng, head, heads, outputs_u["features"],
                                     outputs_u["logits"], batch["valid_u"], settings,
                                     member_map=config.member_map)
      metrics = {**terms, "loss_x": loss_x, "loss_consistency": consistency,
                 "consistency_weight": weight}
      return loss_x + weight * consistency, (batch_stats, metrics)

    heads = state.extras["aux_heads"]
    (loss, (batch_stats, metrics)), (grads, head_grads) = jax.value_and_grad(
        loss_fn, has_aux=True)((state.params, heads))
    params, opt_state, heads, head_opt_state = common.apply_updates_with_heads(
        tx, state, grads, heads, head_grads, state.extras["aux_opt_state"])
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        extras={**state.extras, "aux_heads": heads, "aux_opt_state": head_opt_state})
    return new_state, {**metrics, "loss": loss,
                       "grad_norm": optax.tree.norm((grads, head_grads))}

  return step
