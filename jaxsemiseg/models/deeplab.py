"""DeepLabV3+ with a dilated ResNet backbone, following UniMatch's ``deeplabv3plus.py``.

Structure (LiheYoung/UniMatch ``model/semseg/deeplabv3plus.py``):
  backbone: ResNet, output stride 16 (stage 4 dilated) or 8 (stages 3-4 dilated);
  ASPP on the last stage: 1x1 conv, three dilated 3x3 convs, image pooling (global mean ->
    1x1 conv, broadcast back), each with BN + ReLU, concatenated, projected by 1x1 conv +
    BN + ReLU;
  decoder: the stride-4 stage-1 output reduced to 48 channels (1x1 conv + BN + ReLU), the
    ASPP output upsampled bilinearly to stride 4, concatenated (reduced low level first),
    two 3x3 conv 256 + BN + ReLU -> ``features``;
  head: dropout -> 1x1 conv (with bias) -> bilinear upsampling to the input size.

Differences from UniMatch, on purpose:
  - UniMatch's backbone is ResNet-v1c (three 3x3 stem convs, its own pretrained weights);
    this one keeps torchvision's 7x7 stem so that torchvision weights convert directly.
  - Dropout: UniMatch has none; torchvision's ASPP drops 0.5 after the projection, and the
    original DeepLabV3+ decoder (jfzhang95/pytorch-deeplab-xception) drops 0.5 and 0.1
    inside its last convs. Only the 0.1 before the classifier is kept (``dropout_rate``),
    so MC Dropout has a stochastic layer; ``dropout_rate=0`` gives UniMatch's network.
  - Bilinear resizing samples the coarse map at ``i / stride`` (``layers.upsample_bilinear``),
    identical to UniMatch's ``align_corners=True`` at its 321/513 crops.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsemiseg.models import layers
from jaxsemiseg.models import resnet

# The low-level features (ResNet stage 1), and therefore ``features``, are at stride 4.
FEATURE_STRIDE = 4

BACKBONE_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}

# DeepLabV3+ paper / UniMatch configs: the rates double when the output stride halves.
DEFAULT_ASPP_DILATIONS = {16: (6, 12, 18), 8: (12, 24, 36)}


class ConvBNReLU(nn.Module):
  """Bias-free conv -> BatchNorm -> ReLU with PyTorch's padding, init and BN defaults.

  The head's convolutions keep PyTorch's default init, as UniMatch's: its kaiming loop
  runs over the backbone's modules only. (Kaiming fan-out weights, ~7x larger in the
  ASPP, would make the BatchNorm-followed head learn ~48x slower at the same rate.)

  Attributes:
    features: output channels.
    kernel_size: square kernel size (1 or 3 here).
    dilation: kernel dilation.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = layers.torch_conv(self.features, self.kernel_size, dilation=self.dilation,
                          kernel_init=layers.TORCH_DEFAULT_INIT, dtype=self.dtype,
                          name="conv")(x)
    return nn.relu(layers.torch_batch_norm(train=train, dtype=self.dtype, name="bn")(x))


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling (UniMatch's ``ASPPModule``, without dropout).

  Attributes:
    features: channels of every branch and of the projection.
    dilations: the three 3x3 branches' dilation rates.
    dtype: computation dtype.
  """

  features: int = 256
  dilations: Sequence[int] = (6, 12, 18)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    branches = [ConvBNReLU(self.features, 1, dtype=self.dtype, name="branch_1x1")(
        x, train=train)]
    for index, dilation in enumerate(self.dilations):
      branches.append(ConvBNReLU(self.features, 3, dilation, self.dtype,
                                 name=f"branch_3x3_{index}")(x, train=train))
    pooled = ConvBNReLU(self.features, 1, dtype=self.dtype, name="branch_pool")(
        jnp.mean(x, axis=(1, 2), keepdims=True), train=train)
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
    return ConvBNReLU(self.features, 1, dtype=self.dtype, name="project")(
        jnp.concatenate(branches, axis=-1), train=train)


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+ semantic segmentation model.

  ``apply(variables, images, train=..., mc_dropout=False, decoder_input_perturbation=None,
  rngs={"dropout": key, "perturbation": key}, mutable=["batch_stats"] if train)`` returns
  ``{"logits": float32 [B, H, W, C], "features": [B, ceil(H/4), ceil(W/4),
  decoder_channels]}``; ``features`` is the classifier input. Any ``H, W`` work.

  ``method=DeepLabV3Plus.classify`` runs only the head (dropout, classifier, upsampling) on
  given features, e.g. K perturbed copies for CCT.

  BatchNorm uses batch statistics only when ``train=True``; ``mc_dropout=True`` turns
  dropout on while BatchNorm stays in eval mode.

  Attributes:
    num_classes: output classes C.
    backbone: "resnet18", "resnet34", "resnet50" or "resnet101" (torchvision layout).
    output_stride: 16 or 8.
    aspp_dilations: the ASPP 3x3 rates; ``None`` picks (6, 12, 18) for output stride 16
      and (12, 24, 36) for 8.
    aspp_channels: ASPP branch and projection channels (UniMatch: 2048 // 8 = 256).
    low_level_channels: channels the stride-4 features are reduced to.
    decoder_channels: channels of the two 3x3 decoder convs, i.e. of ``features``.
    dropout_rate: dropout on the classifier input, active when ``train or mc_dropout``.
    dtype: computation dtype (parameters stay float32, logits are returned as float32).
    remat: rematerialise the backbone's residual blocks (see ``resnet.ResNet``).
  """

  num_classes: int
  backbone: str = "resnet50"
  output_stride: int = 16
  aspp_dilations: Sequence[int] | None = None
  aspp_channels: int = 256
  low_level_channels: int = 48
  decoder_channels: int = 256
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    _check_config(self)
    dilations = self.aspp_dilations or DEFAULT_ASPP_DILATIONS[self.output_stride]
    # Named "backbone" so that weights.load_pretrained_backbone finds it by default.
    self.encoder = resnet.ResNet(
        BACKBONE_DEPTHS[self.backbone],
        replace_stride_with_dilation=resnet.dilation_for_output_stride(self.output_stride),
        dtype=self.dtype, remat=self.remat, name="backbone")
    self.aspp = ASPP(self.aspp_channels, tuple(dilations), self.dtype)
    self.reduce = ConvBNReLU(self.low_level_channels, 1, dtype=self.dtype)
    self.fuse = [ConvBNReLU(self.decoder_channels, 3, dtype=self.dtype) for _ in range(2)]
    self.dropout = nn.Dropout(self.dropout_rate)
    # In float32 whatever the compute dtype: its bias gradient is a sum over every pixel,
    # which XLA:CPU accumulates in the compute dtype (bfloat16 stalls), and the logits
    # feed the losses in float32 anyway.
    self.classifier = nn.Conv(
        self.num_classes, (1, 1), dtype=jnp.float32, kernel_init=layers.TORCH_DEFAULT_INIT,
        bias_init=layers.torch_default_bias_init(self.decoder_channels))

  def __call__(self, images: jax.Array, *, train: bool, mc_dropout: bool = False,
               decoder_input_perturbation: layers.Perturbation | None = None
               ) -> dict[str, jax.Array]:
    """Segments a batch.

    Args:
      images: float ``[B, H, W, 3]`` in [0, 1].
      train: training mode: BatchNorm uses and updates batch statistics (pass
        ``mutable=["batch_stats"]``) and dropout is on.
      mc_dropout: dropout on while BatchNorm stays in eval mode (MC Dropout).
      decoder_input_perturbation: ``fn(key, x) -> x`` applied to the two backbone outputs
        the decoder reads (stage 1 and stage 4), each call with a fresh key from the
        ``"perturbation"`` rng stream. This is UniMatch's feature perturbation site. ``fn``
        may change the batch size, the same way for both: UniMatch's
        ``concat([x, dropout2d(key, x, rate=0.5)])`` decodes clean and perturbed copies in
        one pass, so the decoder's BatchNorm sees both; the outputs then have that batch.

    Returns:
      ``{"logits": float32 [B, H, W, C], "features": [B, ceil(H/4), ceil(W/4),
      decoder_channels], "backbone_features": the four ResNet stage outputs}``; the
      stage outputs are taken before ``decoder_input_perturbation``.

    Raises:
      ValueError: images of the wrong shape or dtype.
    """
    layers.check_images(images, model="DeepLabV3Plus")
    x = layers.normalize_imagenet(images, self.dtype)
    backbone_features = self.encoder(x, train=train)
    low_level, _, _, high_level = backbone_features
    if decoder_input_perturbation is not None:
      low_level = decoder_input_perturbation(self.make_rng("perturbation"), low_level)
      high_level = decoder_input_perturbation(self.make_rng("perturbation"), high_level)
    high_level = self.aspp(high_level, train=train)
    high_level = layers.upsample_bilinear(
        high_level, low_level.shape[1:3], stride=self.output_stride // FEATURE_STRIDE)
    x = jnp.concatenate([self.reduce(low_level, train=train), high_level], axis=-1)
    for conv in self.fuse:
      x = conv(x, train=train)
    logits = self.classify(x, train=train, mc_dropout=mc_dropout,
                           output_size=images.shape[1:3])
    return {"logits": logits, "features": x, "backbone_features": backbone_features}

  def classify(self, features: jax.Array, *, train: bool, mc_dropout: bool = False,
               output_size: Sequence[int] | None = None) -> jax.Array:
    """The head alone: dropout (when active), the 1x1 classifier and upsampling.

    Args:
      features: ``[B, h, w, decoder_channels]`` at stride 4, e.g. perturbed copies of
        ``outputs["features"]``.
      train: dropout on.
      mc_dropout: dropout on in eval mode.
      output_size: the input images' ``(H, W)`` to upsample the logits to; ``None`` keeps
        them at stride 4.

    Returns:
      float32 logits ``[B, H, W, C]`` (or ``[B, h, w, C]``).
    """
    x = self.dropout(features, deterministic=not (train or mc_dropout))
    logits = self.classifier(x).astype(jnp.float32)
    if output_size is None:
      return logits
    return layers.upsample_bilinear(logits, output_size, stride=FEATURE_STRIDE)


def _check_config(model: DeepLabV3Plus) -> None:
  """Raises ValueError for hyper-parameters DeepLabV3Plus cannot be built with."""
  if model.num_classes < 1:
    raise ValueError(f"DeepLabV3Plus: num_classes must be >= 1; got {model.num_classes}.")
  if model.backbone not in BACKBONE_DEPTHS:
    raise ValueError(
        f"DeepLabV3Plus: backbone must be one of {sorted(BACKBONE_DEPTHS)}; "
        f"got {model.backbone!r}.")
  if model.output_stride not in DEFAULT_ASPP_DILATIONS:
    raise ValueError(
        f"DeepLabV3Plus: output_stride must be one of {sorted(DEFAULT_ASPP_DILATIONS)}; "
        f"got {model.output_stride!r}.")
  if model.aspp_dilations is not None and len(model.aspp_dilations) != 3:
    raise ValueError(
        "DeepLabV3Plus: aspp_dilations must hold 3 rates (or be None for the default); "
        f"got {model.aspp_dilations!r}.")
  if not 0.0 <= model.dropout_rate < 1.0:
    raise ValueError(
        f"DeepLabV3Plus: dropout_rate must be in [0, 1); got {model.dropout_rate}.")
