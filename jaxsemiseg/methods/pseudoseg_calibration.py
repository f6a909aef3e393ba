"""PseudoSeg's calibrated soft pseudo-labels: Grad-CAM, hypercolumn, fusion, sharpening.

The pure pieces of googleinterns/wss ``train_wss.py::_build_pseudo_seg`` and
``core/train_utils_core.py::compute_cam_v2`` (METHODS.md 7); ``methods/pseudoseg.py``
wires them to the model and the heads of ``models/pseudoseg_heads.py``:

1. Grad-CAM of the image classifier at the backbone's last stage, for the classes the
   image is labeled (or predicted) with, each map divided by its maximum.
2. The self-attention module refines it on a hypercolumn of the last two stages.
3. Decoder and attention logits are divided by one shared scalar ("logit norm"), their
   softmaxes averaged and the average sharpened with temperature T.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxsemiseg.models import layers

# The reference's _div_maybe_zero floor on a CAM's maximum, and its logit-norm epsilon.
_MIN_CAM_MAX = 1e-5
_LOGIT_NORM_EPSILON = 1e-8


def feature_stride(image_size: int, feature_size: int) -> int:
  """The stride s of a feature map of ``feature_size`` pixels over ``image_size`` ones.

  The models' maps have ``ceil(image_size / s)`` pixels for a power of two s <= the image
  size (stride-2 convs and pools with centred padding), and then ``ceil(image_size /
  feature_size)`` lies in ``(s / 2, s]``: s is the next power of two.
  """
  return 1 << (-(-image_size // feature_size) - 1).bit_length()


def at_feature_grid(mask: jax.Array, size: Sequence[int]) -> jax.Array:
  """Samples a ``[B, H, W]`` pixel mask at the pixels under a ``size`` feature grid.

  Feature pixel ``j`` of a stride-s map sits over input pixel ``s j`` (``models.layers``),
  so this is the nearest-neighbour resize the reference applies to its valid mask.
  """
  rows = feature_stride(mask.shape[1], size[0])
  cols = feature_stride(mask.shape[2], size[1])
  return mask[:, ::rows, ::cols]


def to_image_grid(maps: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear upsampling of ``[B, h, w, C]`` feature-grid maps to the images' ``size``.

  The grid of the decoders' ``layers.upsample_bilinear``: the reference's
  ``resize_bilinear(align_corners=True)`` at its 513 crops.
  """
  stride = feature_stride(size[0], maps.shape[1])
  if feature_stride(size[1], maps.shape[2]) != stride:
    raise ValueError(
        f"maps of size {maps.shape[1:3]} do not have one stride over images of size "
        f"{tuple(size)}.")
  return layers.upsample_bilinear(maps, size, stride=stride)


def grad_cam(classify: Callable[[jax.Array], jax.Array], features: jax.Array,
             image_labels: jax.Array) -> jax.Array:
  """Grad-CAM of every foreground class, normalised per image and class, no gradient.

  ``w_ck = mean_{h,w} d logit_c / d A_hwk``; ``cam_c = ReLU(sum_k w_ck A_k) label_c``,
  divided by its maximum over the image (0 where the maximum is 0; the reference floors
  the divisor at 1e-5). The spatial sum of the gradient is the gradient with respect to
  a shift ``delta_k`` added to every pixel of ``A``, so one vector-Jacobian product per
  class of a ``[B, K]`` input gives it, without a ``[C - 1, B, h, w, K]`` Jacobian.

  Args:
    classify: ``A -> logits [B, C - 1]`` where image b's logits depend on image b only.
    features: ``[B, h, w, K]`` the feature map ``A`` (the backbone's last stage).
    image_labels: ``[B, C - 1]`` 0/1 image-level labels.

  Returns:
    float32 ``[B, h, w, C - 1]`` in ``[0, 1]``, carrying no gradient.
  """
  features = jax.lax.stop_gradient(features.astype(jnp.float32))
  batch, height, width, channels = features.shape
  shift = jnp.zeros((batch, channels), jnp.float32)
  logits, pullback = jax.vjp(lambda d: classify(features + d[:, None, None, :]), shift)
  num_outputs = logits.shape[-1]
  per_class = jnp.broadcast_to(jnp.eye(num_outputs, dtype=logits.dtype)[:, None, :],
                               (num_outputs, batch, num_outputs))
  (gradient_sums,) = jax.vmap(pullback)(per_class)
  weights = gradient_sums / (height * width)
  cam = jax.nn.relu(jnp.einsum("bhwk,cbk->bhwc", features, weights))
  cam = cam * image_labels.astype(jnp.float32)[:, None, None, :]
  peak = cam.max(axis=(1, 2), keepdims=True)
  cam = jnp.where(peak > 0, cam / jnp.maximum(peak, _MIN_CAM_MAX), 0.0)
  return jax.lax.stop_gradient(cam)


def hypercolumn(stages: Sequence[jax.Array]) -> jax.Array:
  """The last two stage outputs at the last one's resolution, concatenated.

  The reference's strides 15 and 16 (Xception exit-flow blocks 1 and 2; ResNet blocks 3
  and 4, both at stride 16 in DeepLab). A finer map (the UNet's last level before its
  bottleneck) is resized bilinearly; at a factor of 2 that averages each 2x2 cell.

  Args:
    stages: the model's ``backbone_features``, at least two maps ``[B, h_i, w_i, K_i]``.

  Returns:
    float32 ``[B, h, w, K_{-2} + K_{-1}]``.

  Raises:
    ValueError: if there are fewer than two stages.
  """
  if len(stages) < 2:
    raise ValueError(
        f"backbone_features has {len(stages)} stage(s); PseudoSeg's hypercolumn needs the "
        "last two.")
  previous, last = (stage.astype(jnp.float32) for stage in stages[-2:])
  if previous.shape[1:3] != last.shape[1:3]:
    previous = jax.image.resize(previous, last.shape[:3] + previous.shape[3:], "linear",
                                antialias=False)
  return jnp.concatenate([previous, last], axis=-1)


def normalise_logits(decoder_logits: jax.Array,
                     attention_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """PseudoSeg's "logit norm": both divided by one scalar ``sqrt(mean(v^2) + 1e-8)``.

  ``v`` is the concatenation of the two tensors, so the scalar is shared by both and by
  the whole (global) batch; it brings the two sources to one flatness before fusion.

  Returns:
    The two normalised float32 logits, shapes unchanged.
  """
  decoder_logits = decoder_logits.astype(jnp.float32)
  attention_logits = attention_logits.astype(jnp.float32)
  count = decoder_logits.size + attention_logits.size
  mean_square = (jnp.sum(decoder_logits**2) + jnp.sum(attention_logits**2)) / count
  scale = jax.lax.rsqrt(mean_square + _LOGIT_NORM_EPSILON)
  return decoder_logits * scale, attention_logits * scale


def sharpen(probs: jax.Array, *, temperature: float) -> jax.Array:
  """``p^(1/T) / sum_c p^(1/T)``, computed as ``softmax(log p / T)`` so it cannot underflow."""
  return jax.nn.softmax(jnp.log(probs) / temperature, axis=-1)


def soft_pseudo_labels(decoder_logits: jax.Array, attention_logits: jax.Array, *,
                       temperature: float) -> jax.Array:
  """The calibrated target: ``sharpen((softmax(dec) + softmax(att)) / 2)`` after logit norm.

  Args:
    decoder_logits: ``[B, H, W, C]`` the segmentation decoder's weak-view logits.
    attention_logits: ``[B, H, W, C]`` the self-attention module's, at the same grid.
    temperature: T of the sharpening (the reference's 0.5).

  Returns:
    float32 ``[B, H, W, C]`` probabilities, carrying no gradient.
  """
  decoder_logits, attention_logits = normalise_logits(
      jax.lax.stop_gradient(decoder_logits), jax.lax.stop_gradient(attention_logits))
  fused = (jax.nn.softmax(decoder_logits, axis=-1)
           + jax.nn.softmax(attention_logits, axis=-1)) / 2
  return sharpen(fused, temperature=temperature)
