"""PseudoSeg's two extra heads: the image classifier and the self-attention refinement.

Both follow googleinterns/wss (METHODS.md 7). The classifier reads the backbone's last
stage (stride 16 in DeepLab) and gives C - 1 multi-label logits, one per foreground
class; its Grad-CAM is the seed that the self-attention module turns into a second,
decoder-independent segmentation (``core/train_utils_core.py::compute_self_att_v2``).
Layers are initialised with Xavier-uniform, the default of the reference's
``slim.conv2d``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# The attention logit of a pair of pixels that involves padding.
_MASKED_LOGIT = -1e9

_XAVIER = nn.initializers.xavier_uniform()


class ImageClassifier(nn.Module):
  """Global average pooling and a dense layer: the multi-label image classifier.

  The reference's backbone head (``feature_extractor(..., global_pool=True,
  num_classes=C - 1)``: a 1x1 conv with bias on the pooled features). Each image's
  logits depend on that image alone, which Grad-CAM relies on.

  Attributes:
    num_outputs: C - 1, one sigmoid logit per foreground class.
  """

  num_outputs: int

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    """Returns float32 logits ``[B, C - 1]`` of backbone features ``[B, h, w, K]``."""
    pooled = features.astype(jnp.float32).mean(axis=(1, 2))
    return nn.Dense(self.num_outputs, kernel_init=_XAVIER, name="dense")(pooled)


def attention_refined_scores(queries: jax.Array, keys: jax.Array, cam: jax.Array,
                             valid: jax.Array) -> jax.Array:
  """Propagates a CAM along pixel affinities: ``s = A cam + cam``, ``bg = 2 - max_c s``.

  ``A = softmax(q k^T / sqrt(D))`` over the pixels of each image, where every pair that
  involves a padding pixel gets the logit ``-1e9``: ``compute_self_att_v2`` adds ``-1e9``
  to them, which in float32 is the same for logits under 32 in magnitude, so a valid
  query ignores padding and a padding query attends uniformly. CAM values are in
  ``[0, 1]``, so ``s`` is in ``[0, 2]`` and ``2 - max_c s`` is the reference's initial
  background score.

  Args:
    queries: ``[B, h, w, D]`` query embeddings.
    keys: ``[B, h, w, D]`` key embeddings.
    cam: ``[B, h, w, C - 1]`` the foreground seed (the "value").
    valid: bool ``[B, h, w]``, False on padding.

  Returns:
    float32 ``[B, h, w, C]``: background score first, then the refined ``s``.
  """
  batch, height, width, dim = queries.shape
  q = queries.astype(jnp.float32).reshape(batch, height * width, dim)
  k = keys.astype(jnp.float32).reshape(batch, height * width, dim)
  pixel_valid = valid.reshape(batch, height * width)
  pair_valid = pixel_valid[:, :, None] & pixel_valid[:, None, :]
  logits = jnp.einsum("bqd,bkd->bqk", q, k) / math.sqrt(dim)
  attention = jax.nn.softmax(jnp.where(pair_valid, logits, _MASKED_LOGIT), axis=-1)
  values = cam.astype(jnp.float32).reshape(batch, height * width, -1)
  refined = jnp.einsum("bqk,bkc->bqc", attention, values).reshape(cam.shape) + cam
  background = 2.0 - refined.max(axis=-1, keepdims=True)
  return jnp.concatenate([background, refined], axis=-1)


class SelfAttentionRefinement(nn.Module):
  """PseudoSeg's self-attention module: CAM seed + hypercolumn -> C segmentation logits.

  Queries and keys are bias-free 1x1 convs of the hypercolumn to ``attention_dim``
  channels; ``attention_refined_scores`` spreads the CAM with them; a bias-free 1x1 conv
  and BatchNorm ("pixel_normalization") map the C scores to logits. No gradient reaches
  the hypercolumn or the CAM: only this module learns from the loss on its logits.

  Attributes:
    num_classes: C, background included.
    attention_dim: D of queries and keys (the reference's ``attention_dim`` 128).
  """

  num_classes: int
  attention_dim: int = 128

  @nn.compact
  def __call__(self, hypercolumn: jax.Array, cam: jax.Array, valid: jax.Array, *,
               train: bool) -> jax.Array:
    """Refines ``cam``.

    Args:
      hypercolumn: ``[B, h, w, F]`` backbone features at the CAM's resolution.
      cam: ``[B, h, w, C - 1]`` Grad-CAM in ``[0, 1]``.
      valid: bool ``[B, h, w]``, False on padding.
      train: BatchNorm uses (and updates, with ``mutable=["batch_stats"]``) batch
        statistics.

    Returns:
      float32 logits ``[B, h, w, C]``.

    Raises:
      ValueError: if ``cam`` does not have C - 1 channels.
    """
    if cam.shape[-1] != self.num_classes - 1:
      raise ValueError(
          f"SelfAttentionRefinement: cam has {cam.shape[-1]} channels; expected "
          f"num_classes - 1 = {self.num_classes - 1} (one per foreground class).")
    hypercolumn = jax.lax.stop_gradient(hypercolumn.astype(jnp.float32))
    embed = lambda name: nn.Conv(self.attention_dim, (1, 1), use_bias=False,
                                 kernel_init=_XAVIER, name=name)(hypercolumn)
    scores = attention_refined_scores(embed("query"), embed("key"),
                                      jax.lax.stop_gradient(cam), valid)
    logits = nn.Conv(self.num_classes, (1, 1), use_bias=False, kernel_init=_XAVIER,
                     name="classifier")(scores)
    # slim.batch_norm's defaults in the reference: a shift but no scale, decay 0.999,
    # epsilon 1e-3.
    return nn.BatchNorm(use_running_average=not train, use_scale=False, momentum=0.999,
                        epsilon=1e-3, name="bn")(logits)
