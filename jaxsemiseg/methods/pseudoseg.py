"""PseudoSeg (Zou et al., ICLR 2021), as googleinterns/wss ``train_wss.py`` (METHODS.md 7).

Weak/strong consistency with calibrated soft pseudo-labels. Besides the segmentation
model, two heads (``models/pseudoseg_heads.py``): an image classifier on the backbone's
last stage ``A`` and a self-attention module that turns its Grad-CAM into segmentation
logits. Per step:

1. Weak view (``image_u``), no gradient: the model in train mode gives the decoder logits;
   the model in eval mode gives ``A`` and the hypercolumn. Image labels are ``sigmoid(
   classifier(A)) >= 0.5``; their Grad-CAM, refined by the attention module (train-mode
   BatchNorm, as in the reference), gives the attention logits. The soft pseudo-label is
   ``sharpen((softmax + softmax) / 2, T)`` of the two after one shared logit norm
   (``pseudoseg_calibration``).
2. Labeled images, train mode: ``L_x`` (the labeled CE of ``config.loss``), the classifier's
   multi-label BCE on the classes present in each mask (``L_cls``), and CE of the attention
   logits, refined from the Grad-CAM of the true image labels (``L_att``).
3. Strong view: colour jitter (always) and a Cutout square of side ``cutout_fraction`` of
   the crop, filled with the mean pixel; ``L_u = soft CE(p, strong logits)`` over the
   valid pixels.
4. ``L = L_x + L_cls + L_att + unlabeled_weight * L_u``.

"Valid" pixels are those of ``valid_u`` outside the Cutout square: the reference zeroes its
``valid`` mask in the square and then uses that one mask everywhere, so ``L_u`` is the
sum over valid pixels divided by their number (METHODS.md 7 says "/ #non-pad pixels", but
``train_wss.py`` divides by the same cutout-zeroed mask) and the weak view's attention
masks the square too. The labeled batch has no padding mask; its ignore pixels (255, i.e.
padding and VOC's object borders) stand in for it in the attention.

The heads' parameters live in ``state.extras["heads"]``, their BatchNorm statistics in
``state.extras["head_batch_stats"]`` and their optimizer state in
``state.extras["head_opt_state"]`` (the same ``tx``), so ``state.params`` stays the plain
model that evaluation and prediction use; evaluation is the decoder alone.

Differences from the reference:
  - The colour jitter has torchvision semantics (``photometric.color_jitter``: brightness,
    contrast and saturation factors ``U(0.5, 1.5)``, hue ``U(-0.25, 0.25)``, random order,
    p = 1); the reference's TF ops add a brightness delta ``U(-0.5, 0.5)`` and stretch
    contrast per channel.
  - Pseudo-labels and ``L_u`` are at input resolution (the reference: the decoder's stride
    4), and the attention logits are upsampled to it.
  - The labeled classifier and attention terms reuse the labeled forward pass (the
    reference runs the backbone on the labeled images a second time, in the same train
    mode, which gives the same features).
  - The logit-norm scalar is over the global batch (the reference's: one GPU's batch).
  - ``config.optimizer.grad_clip_norm`` clips the model's and the heads' gradients
    separately (two optimizer states).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsemiseg import losses
from jaxsemiseg.augment import mixing, photometric
from jaxsemiseg.methods import common, pseudoseg_calibration, supervised
from jaxsemiseg.models import layers, pseudoseg_heads
from jaxsemiseg.state import TrainState

USES_UNLABELED = True

# sigmoid(logit) >= 0.5 marks a class as present in an unlabeled image.
_PRESENCE_THRESHOLD = 0.5


def default_config() -> ml_collections.ConfigDict:
  """The reference's flags: unlabeled weight, temperature, attention dim, Cutout side."""
  return ml_collections.ConfigDict(dict(
      unlabeled_weight=1.0,
      temperature=0.5,
      attention_dim=128,
      # cutout_with_mask(pad_size=50): a 100 px square at the 513 px crop, as a fraction
      # of the crop side so it scales with it (12 px at the 64 px shapes crop).
      cutout_fraction=100 / 513,
  ))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a ``config.pseudoseg`` value outside its range."""
  settings = config.pseudoseg
  ranges = (
      ("unlabeled_weight", settings.unlabeled_weight >= 0, ">= 0"),
      ("temperature", settings.temperature > 0, "> 0 (1 = no sharpening)"),
      ("attention_dim", settings.attention_dim >= 1, "an int >= 1"),
      ("cutout_fraction", 0 <= settings.cutout_fraction <= 1,
       "a fraction of the crop side in [0, 1] (0 = no Cutout)"),
  )
  for name, in_range, expected in ranges:
    if not in_range:
      raise ValueError(f"config.pseudoseg.{name}={settings[name]!r}; expected {expected}.")


class Heads(NamedTuple):
  """The two head modules (static; their variables live in ``state.extras``)."""

  classifier: pseudoseg_heads.ImageClassifier
  attention: pseudoseg_heads.SelfAttentionRefinement


def make_heads(num_classes: int, settings: ml_collections.ConfigDict) -> Heads:
  """The classifier (C - 1 outputs) and attention module for ``num_classes`` classes."""
  if num_classes < 2:
    raise ValueError(
        f"PseudoSeg needs a background and at least one foreground class; the model has "
        f"num_classes={num_classes}.")
  return Heads(pseudoseg_heads.ImageClassifier(num_classes - 1),
               pseudoseg_heads.SelfAttentionRefinement(
                   num_classes, attention_dim=settings.attention_dim))


def init_state(rng: jax.Array, model, tx: optax.GradientTransformation,
               sample_batch: dict, config: ml_collections.ConfigDict) -> TrainState:
  """The supervised state plus the heads, their statistics and optimizer state in extras."""
  state = supervised.init_state(rng, model, tx, sample_batch, config)
  images = sample_batch["image"]
  outputs = jax.eval_shape(lambda: model.apply(state.variables, images, train=False))
  heads = make_heads(outputs["logits"].shape[-1], config.pseudoseg)
  stages = [jnp.zeros(s.shape, s.dtype) for s in outputs["backbone_features"]]
  columns = pseudoseg_calibration.hypercolumn(stages)
  cam = jnp.zeros(columns.shape[:3] + (heads.classifier.num_outputs,))
  classifier_rng, attention_rng = jax.random.split(jax.random.fold_in(rng, 1))
  attention = heads.attention.init(attention_rng, columns, cam,
                                   jnp.ones(columns.shape[:3], bool), train=False)
  params = {"classifier": heads.classifier.init(classifier_rng, stages[-1])["params"],
            "attention": attention["params"]}
  return state.replace(extras={"heads": params,
                               "head_batch_stats": attention["batch_stats"],
                               "head_opt_state": tx.init(params)})


def num_classes_of(head_params: dict) -> int:
  """C, one more than the classifier's outputs (its shapes are static)."""
  return head_params["classifier"]["dense"]["bias"].shape[0] + 1


def image_labels_from_masks(labels: jax.Array, *, num_classes: int) -> jax.Array:
  """Multi-label targets ``[B, C - 1]``: 1 for each foreground class present in the mask.

  Background (class 0) has no output and ignore pixels (255) count for no class, as the
  reference's ``cls_label`` from the cropped mask.
  """
  present = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32).max(axis=(1, 2))
  return present[:, 1:]


def strong_view(key: jax.Array, images: jax.Array, valid: jax.Array, *,
                cutout_fraction: float) -> tuple[jax.Array, jax.Array]:
  """PseudoSeg's strong view of each image: colour jitter, then a mean-pixel Cutout.

  ColorJitter(0.5, 0.5, 0.5, 0.25) always applied (METHODS.md 1f) and one square of side
  ``round(cutout_fraction * crop side)`` around a uniform centre, clipped at the border
  (``mixing.cutout``), filled with the ImageNet mean the models standardise with; the
  valid mask is zeroed in the square, as the reference's ``cutout_with_mask``.

  Args:
    key: PRNG key.
    images: float32 ``[B, H, W, 3]`` weak views.
    valid: bool ``[B, H, W]``, False on crop padding.
    cutout_fraction: the square's side as a fraction of ``H``.

  Returns:
    ``(strong_images, valid)``: float32 ``[B, H, W, 3]`` and bool ``[B, H, W]``, False on
    padding and in the square.
  """
  side = round(cutout_fraction * images.shape[1])

  def one(image_key: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    colour_key, cutout_key = jax.random.split(image_key)
    image = photometric.color_jitter(colour_key, image, brightness=0.5, contrast=0.5,
                                     saturation=0.5, hue=0.25, p=1.0)
    image, _, box = mixing.cutout(cutout_key, image, size=side,
                                  fill=jnp.asarray(layers.IMAGENET_MEAN))
    return image, box

  strong_images, boxes = jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
  return strong_images, valid & ~boxes


def consistency_loss(strong_logits: jax.Array, targets: jax.Array,
                     valid: jax.Array) -> jax.Array:
  """``L_u``: soft CE of the strong view to the pseudo-label, summed over valid / #valid.

  ``train_wss.py``'s ``loss_consistency`` (before ``unlabeled_weight``): the per-pixel
  ``-sum_c p_c log softmax(z_s)_c`` summed over the valid pixels (not padding, not in the
  Cutout square) and divided by their number; 0 when none is valid.
  """
  loss, _ = losses.soft_cross_entropy(strong_logits, targets, mask=valid)
  return loss


def attention_logits(heads: Heads, params: dict, batch_stats: Any, stages: tuple,
                     image_labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, Any]:
  """The attention module's train-mode logits at the images' size, from a Grad-CAM seed.

  Args:
    heads: the head modules.
    params: their parameters (``{"classifier", "attention"}``).
    batch_stats: the attention module's BatchNorm statistics.
    stages: the model's ``backbone_features``.
    image_labels: ``[B, C - 1]`` 0/1 labels whose classes get a CAM.
    valid: bool ``[B, H, W]``, False on padding.

  Returns:
    ``(logits [B, H, W, C], new_batch_stats)``.
  """
  classify = functools.partial(heads.classifier.apply,
                               {"params": jax.lax.stop_gradient(params["classifier"])})
  cam = pseudoseg_calibration.grad_cam(classify, stages[-1], image_labels)
  logits, updated = heads.attention.apply(
      {"params": params["attention"], "batch_stats": batch_stats},
      pseudoseg_calibration.hypercolumn(stages), cam,
      pseudoseg_calibration.at_feature_grid(valid, cam.shape[1:3]), train=True,
      mutable=["batch_stats"])
  return pseudoseg_calibration.to_image_grid(logits, valid.shape[1:]), updated["batch_stats"]


def weak_pseudo_labels(model, heads: Heads, state: TrainState, images: jax.Array,
                       valid: jax.Array, *, rng: jax.Array,
                       temperature: float) -> tuple[jax.Array, jax.Array, Any, Any]:
  """The calibrated soft pseudo-labels of the weak views, carrying no gradient.

  As the reference: the decoder logits come from a train-mode pass (its BatchNorm
  statistics are updated), the classifier, Grad-CAM and hypercolumn from an eval-mode
  pass ("Using inference mode to generate Grad-CAM"), on the classes whose sigmoid is at
  least 0.5; the attention module runs in train mode.

  Args:
    model: the segmentation model.
    heads: the head modules.
    state: the train state (model and heads before this step's update).
    images: float32 ``[B, H, W, 3]`` weak views.
    valid: bool ``[B, H, W]`` pixels the attention may attend to.
    rng: dropout key of the train-mode pass.
    temperature: T of the sharpening.

  Returns:
    ``(targets [B, H, W, C], present [B, C - 1], batch_stats, head_batch_stats)``: the
    pseudo-labels, the foreground classes the image classifier found in each view (the
    ones the Grad-CAM is drawn for; none means a zero CAM) and the model's and attention
    module's statistics after the train-mode passes.
  """
  eval_outputs, _ = common.forward(model, state.params, state.batch_stats, images,
                                   train=False)
  train_outputs, batch_stats = common.forward(model, state.params, state.batch_stats,
                                              images, train=True, rng=rng)
  stages = eval_outputs["backbone_features"]
  present = jax.nn.sigmoid(heads.classifier.apply(
      {"params": state.extras["heads"]["classifier"]}, stages[-1])) >= _PRESENCE_THRESHOLD
  attention, head_batch_stats = attention_logits(
      heads, state.extras["heads"], state.extras["head_batch_stats"], stages, present, valid)
  targets = pseudoseg_calibration.soft_pseudo_labels(train_outputs["logits"], attention,
                                                     temperature=temperature)
  return targets, present, batch_stats, head_batch_stats


def make_train_step(model, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the pure, un-jitted ``step(state, batch, rng) -> (state, metrics)``.

  ``batch`` needs ``image``, ``label``, ``image_u`` and ``valid_u``. Metrics: ``loss``,
  ``loss_x`` (with the labeled terms such as ``loss_ce``), ``loss_cls``, ``loss_att``,
  ``loss_u``, ``pseudo_confidence`` (mean max probability of the sharpened pseudo-label
  over the valid pixels), ``no_class_fraction`` (weak views in which the image classifier
  found no foreground class, so their Grad-CAM is zero and the attention half of their
  pseudo-label is the attention module's learned prior alone) and ``grad_norm`` (of the
  model's and the heads' gradients).
  """
  settings = config.pseudoseg

  def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    view_rng, weak_rng, labeled_rng, strong_rng = jax.random.split(rng, 4)
    num_classes = num_classes_of(state.extras["heads"])
    heads = make_heads(num_classes, settings)
    strong_images, valid_u = strong_view(view_rng, batch["image_u"], batch["valid_u"],
                                         cutout_fraction=settings.cutout_fraction)
    targets, present, batch_stats, head_batch_stats = weak_pseudo_labels(
        model, heads, state, batch["image_u"], valid_u, rng=weak_rng,
        temperature=settings.temperature)
    image_labels = image_labels_from_masks(batch["label"], num_classes=num_classes)

    def loss_fn(trainable: tuple[Any, Any]):
      params, head_params = trainable
      outputs, new_stats = common.forward(model, params, batch_stats, batch["image"],
                                          train=True, rng=labeled_rng)
      loss_x, terms = common.supervised_loss(outputs["logits"], batch["label"], config.loss)
      stages = outputs["backbone_features"]
      class_logits = heads.classifier.apply({"params": head_params["classifier"]},
                                            stages[-1])
      loss_cls = optax.sigmoid_binary_cross_entropy(class_logits, image_labels).mean()
      labeled_attention, new_head_stats = attention_logits(
          heads, head_params, head_batch_stats, stages, image_labels,
          batch["label"] != losses.IGNORE_INDEX)
      loss_att, _ = losses.cross_entropy(labeled_attention, batch["label"])
      strong_outputs, new_stats = common.forward(model, params, new_stats, strong_images,
                                                 train=True, rng=strong_rng)
      loss_u = consistency_loss(strong_outputs["logits"], targets, valid_u)
      total = loss_x + loss_cls + loss_att + settings.unlabeled_weight * loss_u
      metrics = {**terms, "loss_x": loss_x, "loss_cls": loss_cls, "loss_att": loss_att,
                 "loss_u": loss_u}
      return total, ((new_stats, new_head_stats), metrics)

    head_params = state.extras["heads"]
    (loss, ((new_stats, new_head_stats), metrics)), (grads, head_grads) = (
        jax.value_and_grad(loss_fn, has_aux=True)((state.params, head_params)))
    params, opt_state, head_params, head_opt_state = common.apply_updates_with_heads(
        tx, state, grads, head_params, head_grads, state.extras["head_opt_state"])
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state,
        extras={"heads": head_params, "head_batch_stats": new_head_stats,
                "head_opt_state": head_opt_state})
    confidence = (jnp.where(valid_u, targets.max(axis=-1), 0.0).sum()
                  / jnp.maximum(valid_u.sum(), 1))
    return new_state, {**metrics, "loss": loss, "pseudo_confidence": confidence,
                       "no_class_fraction": jnp.mean(~present.any(axis=-1)),
                       "grad_norm": optax.tree.norm((grads, head_grads))}

  return step
