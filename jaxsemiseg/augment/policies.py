"""AutoAugment and RandAugment as plain data, applied to an image and its mask on device.

Search space (Cubuk et al. 2019, "AutoAugment"): an op is ``(name, probability, level)``,
magnitudes discretised into levels ``0..MAX_LEVEL`` (10), probabilities into the 11 values
``0, 0.1, ..., 1``. A sub-policy is 2 ops applied in order, each with its probability; a
policy is a list of sub-policies, one drawn uniformly per image. Policies are
JSON-serialisable lists ``[[(name, probability, level), ...], ...]`` (sub-policies all of
one length), so a config or a search can supply one; :func:`policy_to_arrays` gives
fixed-shape arrays, which may also be traced.

Op set: the paper's 16 ops include SamplePairing; the reference code followed here
(tensorflow/tpu ``models/official/efficientnet/autoaugment.py``, copied in big_vision) has
SolarizeAdd instead. :data:`OP_NAMES` is those 16 ops plus ``Identity``, which FixMatch's
RandAugment (google-research/fixmatch ``imagenet/augment/rand_augment.py``) draws too.

Level -> argument (``l`` in ``[0, 10]``; "±": sign drawn with probability 1/2):

=============  ============================================================
ShearX/Y       shear coefficient ±0.3 l/10, origin at the top-left corner
TranslateX/Y   ±``translate_const`` l/10 of the image width / height
Rotate         ±30 l/10 degrees
Color etc.     Color, Contrast, Brightness, Sharpness: factor 0.1 + 1.8 l/10
Solarize       threshold int(256 l/10) / 255 (level 0 inverts every pixel)
SolarizeAdd    int(110 l/10) / 255 added to pixels below 128/255
Posterize      4 + int(4 l/10) bits (see below)
Cutout         square of side 2 int(``cutout_const`` l/10 * shorter side)
others         AutoContrast, Equalize, Invert, Identity ignore the level
=============  ============================================================

The reference gives ``translate_const`` and ``cutout_const`` in pixels (AutoAugment 250
and 100, RandAugment 100 and 40). Crops here have any size, so they are fractions of the
image side: the reference pixels over the ImageNet side they served, 331 px for
AutoAugment (the paper's ImageNet models) and 224 px for RandAugment (ResNet-50).

Posterize: the tpu code keeps ``int(4 l/10)`` bits, 0 to 4, so levels 0-2 turn the image
black (its ImageNet policy runs Posterize level 2 with probability 0.8) while the mask
keeps its labels. The paper's range is 4 to 8 bits; this module shifts the tpu mapping into
it, ``4 + int(4 l/10)``.

Ops follow PIL semantics via :mod:`photometric` (Contrast blends with the mean luma; the
tpu code uses ``#pixels / 256``). Shear, Translate and Rotate move the mask with nearest
neighbour and fill 255, the image with ``fill`` (128/255 as the reference). Cutout sets the
mask in its square to 255 (ST++ / PseudoSeg) unless ``cutout_ignore=False``.

Compilation: every op is a branch of one ``lax.switch`` with traced index and level, and
the ops of a sub-policy or of RandAugment run in a ``lax.scan``, so the switch compiles
once. Under ``jax.vmap`` the batched switch evaluates every branch and selects, so a batch
costs the sum of all ops; on one example only the drawn branch runs. The geometric branches
therefore only draw their matrix, and each op step resamples image and mask once with it
(the identity for the other ops), instead of five resamplings per step under vmap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsemiseg.augment import geometric, mixing, photometric

MAX_LEVEL = 10

# The tpu code's RandAugment order, then Identity.
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
            "TranslateY", "Cutout", "SolarizeAdd", "Identity")
# tensorflow/tpu ``distort_image_with_randaugment``'s ``available_ops``.
RANDAUGMENT_OPS = OP_NAMES[:16]
# google-research/fixmatch ``IMAGENET_AUG_OPS``: no Cutout, with Identity.
FIXMATCH_RANDAUGMENT_OPS = tuple(name for name in OP_NAMES if name != "Cutout")

DEFAULT_FILL = 128 / 255
AUTOAUGMENT_TRANSLATE_CONST = 250 / 331
AUTOAUGMENT_CUTOUT_CONST = 100 / 331
RANDAUGMENT_TRANSLATE_CONST = 100 / 224
RANDAUGMENT_CUTOUT_CONST = 40 / 224

# tensorflow/tpu ``policy_v0`` (big_vision's too), which that code calls the AutoAugment
# paper's policy; torchvision's ``AutoAugmentPolicy.IMAGENET`` lists other sub-policies.
IMAGENET_POLICY = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

Numeric = float | jax.Array
Policy = Sequence[Sequence[Sequence[Any]]]
Branch = Callable[[jax.Array, jax.Array, jax.Array | None, jax.Array],
                  tuple[jax.Array, jax.Array | None]]


class PolicyArrays(NamedTuple):
  """A policy as fixed-shape arrays (a pytree, so it can be a traced argument).

  Attributes:
    op_index: int ``[S, K]`` indices into :data:`OP_NAMES`, S sub-policies of K ops.
    probability: float ``[S, K]`` probabilities in [0, 1].
    level: float ``[S, K]`` levels in ``[0, MAX_LEVEL]``.
  """
  op_index: Any
  probability: Any
  level: Any


class _Settings(NamedTuple):
  fill: Numeric
  cutout_ignore: bool
  translate_const: Numeric
  cutout_const: Numeric


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_))


def _is_list(value: Any) -> bool:
  return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _check_between(name: str, value: Any, low: float, high: float) -> None:
  """Checks a host number; traced values pass through."""
  if _is_number(value) and not low <= value <= high:
    raise ValueError(f"{name}={value!r}; expected a value in [{low}, {high}].")


def _check_entry(where: str, entry: Any) -> None:
  if not _is_list(entry) or len(entry) != 3:
    raise ValueError(f"{where}={entry!r}; expected an (op_name, probability, level) entry.")
  name, probability, level = entry
  if name not in OP_NAMES:
    raise ValueError(f"{where} has op {name!r}; expected one of {OP_NAMES}.")
  if not _is_number(probability) or not 0 <= probability <= 1:
    raise ValueError(f"{where} has probability {probability!r}; expected a number in [0, 1].")
  if not _is_number(level) or not 0 <= level <= MAX_LEVEL:
    raise ValueError(f"{where} has level {level!r}; expected a number in [0, {MAX_LEVEL}].")


def validate_policy(policy: Policy) -> None:
  """Checks that ``policy`` is a list of equally long lists of valid op entries.

  Args:
    policy: ``[[(op_name, probability, level), ...], ...]``, e.g. :data:`IMAGENET_POLICY`
      or its JSON round trip. Names come from :data:`OP_NAMES`, probabilities from
      [0, 1] and levels from ``[0, MAX_LEVEL]`` (published policies use integer levels
      and probabilities in steps of 0.1; any number in range is accepted).

  Raises:
    ValueError: naming the first bad sub-policy or entry and what was expected.
  """
  if not _is_list(policy) or not policy:
    raise ValueError(f"policy={policy!r}; expected a non-empty list of sub-policies, each a "
                     "list of (op_name, probability, level) entries.")
  for i, sub_policy in enumerate(policy):
    if not _is_list(sub_policy) or not sub_policy:
      raise ValueError(f"policy[{i}]={sub_policy!r}; expected a non-empty list of "
                       "(op_name, probability, level) entries.")
    if len(sub_policy) != len(policy[0]):
      raise ValueError(f"policy[{i}] has {len(sub_policy)} ops but policy[0] has "
                       f"{len(policy[0])}; every sub-policy needs the same number of ops "
                       "(AutoAugment: 2) so the policy has a fixed shape.")
    for j, entry in enumerate(sub_policy):
      _check_entry(f"policy[{i}][{j}]", entry)


def policy_to_arrays(policy: Policy) -> PolicyArrays:
  """Validates a policy and converts it to fixed-shape NumPy arrays.

  Args:
    policy: ``[[(op_name, probability, level), ...], ...]`` as in :func:`validate_policy`.

  Returns:
    :class:`PolicyArrays` with int32 ``op_index`` and float32 ``probability`` and
    ``level``, each ``[S, K]`` for S sub-policies of K ops.

  Raises:
    ValueError: if the policy is invalid (see :func:`validate_policy`).
  """
  validate_policy(policy)
  column = lambda k, dtype: np.array([[entry[k] for entry in sub] for sub in policy], dtype)
  op_index = np.array([[OP_NAMES.index(entry[0]) for entry in sub] for sub in policy],
                      np.int32)
  return PolicyArrays(op_index=op_index, probability=column(1, np.float32),
                      level=column(2, np.float32))


def _check_example(image: jax.Array, mask: jax.Array | None) -> None:
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image has shape {image.shape}; expected one RGB image [H, W, 3] "
                     "(batch with jax.vmap over split keys).")
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f"image has dtype {image.dtype}; expected a float image in [0, 1].")
  if mask is not None and (mask.shape != image.shape[:2]
                           or not jnp.issubdtype(mask.dtype, jnp.integer)):
    raise ValueError(f"mask has shape {mask.shape} and dtype {mask.dtype}; expected int "
                     f"labels of the image's [H, W] = {image.shape[:2]}.")


def _settings(fill: Numeric, cutout_ignore: bool, translate_const: Numeric,
              cutout_const: Numeric) -> _Settings:
  _check_between("fill", fill, 0.0, 1.0)
  _check_between("translate_const", translate_const, 0.0, float("inf"))
  _check_between("cutout_const", cutout_const, 0.0, float("inf"))
  return _Settings(fill, bool(cutout_ignore), translate_const, cutout_const)


def _scaled(level: jax.Array, maximum: Numeric) -> jax.Array:
  # Multiplied first, so that integer arguments (int(110 l / 10)...) come out exact.
  return level * maximum / MAX_LEVEL


def _signed(key: jax.Array, magnitude: jax.Array) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key), magnitude, -magnitude)


def _branch_table(shape: tuple[int, int], settings: _Settings) -> dict[str, Branch]:
  """Every op as ``branch(key, image, mask, level) -> (image, mask, matrix)``.

  Geometric ops return their output -> input ``matrix`` and leave image and mask to be
  resampled by the caller; the others return the identity matrix.
  """
  height, width = shape
  identity = jnp.eye(3, dtype=jnp.float32)

  def photometric_op(adjust: Callable[..., jax.Array], **to_arguments: Callable) -> Branch:
    def branch(key, image, mask, level):
      arguments = {name: to_argument(level) for name, to_argument in to_arguments.items()}
      return adjust(image, **arguments).astype(image.dtype), mask, identity
    return branch

  def geometric_op(op: Callable[..., geometric.Result], argument: str,
                   largest: Numeric) -> Branch:
    def branch(key, image, mask, level):
      # Only the drawn matrix is kept (XLA drops the unused resampling); _apply_ops
      # resamples once per op, whichever branch ran.
      _, _, params = op(image, None, **{argument: _signed(key, _scaled(level, largest))})
      return image, mask, params.matrix
    return branch

  def cutout(key, image, mask, level):
    half = jnp.floor(_scaled(level, settings.cutout_const * min(height, width)))
    image, mask, _ = mixing.cutout(key, image, mask, size=2 * half.astype(jnp.int32),
                                   fill=settings.fill, ignore_in_box=settings.cutout_ignore)
    return image, mask, identity

  enhance = lambda level: 0.1 + _scaled(level, 1.8)
  return {
      "AutoContrast": photometric_op(photometric.autocontrast),
      "Equalize": photometric_op(photometric.equalize),
      "Invert": photometric_op(photometric.invert),
      "Rotate": geometric_op(geometric.rotate, "degrees", 30.0),
      "Posterize": photometric_op(photometric.posterize, bits=lambda level: 4 + jnp.floor(
          _scaled(level, 4)).astype(jnp.int32)),
      "Solarize": photometric_op(photometric.solarize, threshold=lambda level: jnp.floor(
          _scaled(level, 256)) / 255),
      "Color": photometric_op(photometric.adjust_saturation, factor=enhance),
      "Contrast": photometric_op(photometric.adjust_contrast, factor=enhance),
      "Brightness": photometric_op(photometric.adjust_brightness, factor=enhance),
      "Sharpness": photometric_op(photometric.adjust_sharpness, factor=enhance),
      "ShearX": geometric_op(geometric.shear_x, "level", 0.3),
      "ShearY": geometric_op(geometric.shear_y, "level", 0.3),
      "TranslateX": geometric_op(geometric.translate_x, "pixels",
                                 settings.translate_const * width),
      "TranslateY": geometric_op(geometric.translate_y, "pixels",
                                 settings.translate_const * height),
      "Cutout": cutout,
      "SolarizeAdd": photometric_op(photometric.solarize_add, addition=lambda level: jnp.floor(
          _scaled(level, 110)) / 255),
      "Identity": photometric_op(lambda image: image),
  }


def _apply_ops(key: jax.Array, image: jax.Array, mask: jax.Array | None, *,
               names: Sequence[str], indices: jax.Array, levels: jax.Array,
               settings: _Settings, probabilities: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
  """Applies ``names[indices[k]]`` at ``levels[k]`` for k in order, in one scan.

  With ``probabilities`` each op runs with its probability and is otherwise replaced by
  Identity, which ``names`` must then hold.
  """
  table = _branch_table(image.shape[:2], settings)
  branches = [table[name] for name in names]
  identity = names.index("Identity") if probabilities is not None else None

  def step(carry, xs):
    step_key, index, level, probability = xs
    coin_key, op_key = jax.random.split(step_key)
    if probabilities is not None:
      index = jnp.where(jax.random.uniform(coin_key) < probability, index, identity)
    image, mask, matrix = jax.lax.switch(index, branches, op_key, *carry, level)
    # One resampling per op: under vmap every branch runs, and five warps would cost
    # more than all the colour ops together. At the identity matrix it is exact.
    shape = image.shape[:2]
    warp = geometric.Warp(matrix=matrix, displacement=None, input_shape=shape,
                          output_shape=shape)
    return geometric.warp(warp, image, mask, fill=settings.fill), None

  count = indices.shape[0]
  gates = jnp.ones(count) if probabilities is None else probabilities
  xs = (jax.random.split(key, count), indices, jnp.asarray(levels, jnp.float32), gates)
  (image, mask), _ = jax.lax.scan(step, (image, mask), xs)
  return image, mask


def apply_op(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
             op: str | int | jax.Array, level: Numeric, fill: Numeric = DEFAULT_FILL,
             cutout_ignore: bool = True,
             translate_const: Numeric = AUTOAUGMENT_TRANSLATE_CONST,
             cutout_const: Numeric = AUTOAUGMENT_CUTOUT_CONST
             ) -> tuple[jax.Array, jax.Array | None]:
  """Applies one AutoAugment op at a level, always (probabilities belong to policies).

  Args:
    key: ``jax.random`` key for the op's sign (Shear, Translate, Rotate) or box (Cutout).
    image: ``[H, W, 3]`` float image in [0, 1].
    mask: optional int ``[H, W]`` labels (255 = ignore).
    op: a name from :data:`OP_NAMES` or its index (may be traced).
    level: in ``[0, MAX_LEVEL]`` (may be traced), mapped as in the module docstring.
    fill: image value where Shear, Translate, Rotate and Cutout leave no source.
    cutout_ignore: set the mask in the Cutout square to 255 (ST++); False keeps labels.
    translate_const: largest translation, as a fraction of the image side.
    cutout_const: half the largest Cutout side, as a fraction of the shorter side.

  Returns:
    ``(image, mask)``; mask None when None was given.

  Raises:
    ValueError: on a bad image or mask, an unknown op, or static arguments out of range.
  """
  _check_example(image, mask)
  if isinstance(op, str):
    if op not in OP_NAMES:
      raise ValueError(f"op={op!r}; expected one of {OP_NAMES}.")
    op = OP_NAMES.index(op)
  _check_between("op", op, 0, len(OP_NAMES) - 1)
  _check_between("level", level, 0, MAX_LEVEL)
  settings = _settings(fill, cutout_ignore, translate_const, cutout_const)
  return _apply_ops(key, image, mask, names=OP_NAMES, indices=jnp.asarray(op, jnp.int32)[None],
                    levels=jnp.asarray(level, jnp.float32)[None], settings=settings)


def autoaugment(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
                policy: Policy | PolicyArrays = IMAGENET_POLICY,
                fill: Numeric = DEFAULT_FILL, cutout_ignore: bool = True,
                translate_const: Numeric = AUTOAUGMENT_TRANSLATE_CONST,
                cutout_const: Numeric = AUTOAUGMENT_CUTOUT_CONST
                ) -> tuple[jax.Array, jax.Array | None]:
  """AutoAugment (Cubuk et al. 2019): one uniformly drawn sub-policy per image.

  Its ops run in order, each with its probability (tpu ``build_and_apply_nas_policy``).

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` float image in [0, 1].
    mask: optional int ``[H, W]`` labels (255 = ignore).
    policy: a policy as data (default :data:`IMAGENET_POLICY`), or :class:`PolicyArrays`
      from :func:`policy_to_arrays`, whose values may be traced and are not re-checked.
    fill: as in :func:`apply_op`; reference 128/255.
    cutout_ignore: as in :func:`apply_op`.
    translate_const: as in :func:`apply_op`; reference 250 px, here 250/331.
    cutout_const: as in :func:`apply_op`; reference 100 px, here 100/331.

  Returns:
    ``(image, mask)``; mask None when None was given.

  Raises:
    ValueError: on a bad image or mask, an invalid policy, policy arrays that are not
      three ``[S, K]`` arrays, or static arguments out of range.
  """
  _check_example(image, mask)
  arrays = policy if isinstance(policy, PolicyArrays) else policy_to_arrays(policy)
  shapes = [np.shape(a) for a in arrays]
  if len(shapes[0]) != 2 or 0 in shapes[0] or any(s != shapes[0] for s in shapes):
    raise ValueError(f"policy arrays have shapes {shapes}; expected three equal [S, K] "
                     "shapes with S, K >= 1 (use policy_to_arrays).")
  settings = _settings(fill, cutout_ignore, translate_const, cutout_const)
  select_key, ops_key = jax.random.split(key)
  chosen = jax.random.randint(select_key, (), 0, shapes[0][0])
  op_index, probability, level = (jnp.asarray(a)[chosen] for a in arrays)
  return _apply_ops(ops_key, image, mask, names=OP_NAMES, indices=op_index, levels=level,
                    settings=settings, probabilities=probability)


def _rand_augment(key: jax.Array, image: jax.Array, mask: jax.Array | None, *,
                  num_ops: int, magnitude: Numeric | None, ops: Sequence[str],
                  settings: _Settings) -> tuple[jax.Array, jax.Array | None]:
  """``num_ops`` ops drawn uniformly from ``ops``, at ``magnitude`` or a random level."""
  _check_example(image, mask)
  if not isinstance(num_ops, int) or num_ops < 0:
    raise ValueError(f"num_ops={num_ops!r}; expected a static int >= 0.")
  if not _is_list(ops) or not ops or any(name not in OP_NAMES for name in ops):
    raise ValueError(f"ops={ops!r}; expected a non-empty list of names from {OP_NAMES}.")
  choice_key, level_key, ops_key = jax.random.split(key, 3)
  indices = jax.random.randint(choice_key, (num_ops,), 0, len(ops))
  if magnitude is None:
    levels = jax.random.randint(level_key, (num_ops,), 0, MAX_LEVEL + 1)
  else:
    levels = jnp.full((num_ops,), magnitude)
  return _apply_ops(ops_key, image, mask, names=tuple(ops), indices=indices, levels=levels,
                    settings=settings)


def randaugment(key: jax.Array, image: jax.Array, mask: jax.Array | None = None, *,
                num_ops: int = 2, magnitude: Numeric = 9,
                ops: Sequence[str] = RANDAUGMENT_OPS, fill: Numeric = DEFAULT_FILL,
                cutout_ignore: bool = True,
                translate_const: Numeric = RANDAUGMENT_TRANSLATE_CONST,
                cutout_const: Numeric = RANDAUGMENT_CUTOUT_CONST
                ) -> tuple[jax.Array, jax.Array | None]:
  """RandAugment (Cubuk et al. 2020), TF version: N ops uniform over ``ops``, all at M.

  As tensorflow/tpu ``distort_image_with_randaugment``: every drawn op is applied (no
  probability) and ops may repeat.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` float image in [0, 1].
    mask: optional int ``[H, W]`` labels (255 = ignore).
    num_ops: N (static); the paper's ImageNet ResNet-50 uses N = 2, M = 9.
    magnitude: M in ``[0, MAX_LEVEL]``; may be traced.
    ops: op names to draw from (static); default the tpu code's 16.
    fill: as in :func:`apply_op`; reference 128/255.
    cutout_ignore: as in :func:`apply_op`.
    translate_const: as in :func:`apply_op`; reference 100 px, here 100/224.
    cutout_const: as in :func:`apply_op`; reference 40 px, here 40/224.

  Returns:
    ``(image, mask)``; mask None when None was given.

  Raises:
    ValueError: on a bad image, mask, ``num_ops`` or ``ops``, or static arguments out
      of range.
  """
  _check_between("magnitude", magnitude, 0, MAX_LEVEL)
  return _rand_augment(key, image, mask, num_ops=num_ops, magnitude=magnitude, ops=ops,
                       settings=_settings(fill, cutout_ignore, translate_const,
                                          cutout_const))


def randaugment_fixmatch(key: jax.Array, image: jax.Array, mask: jax.Array | None = None,
                         *, num_ops: int = 2, ops: Sequence[str] = FIXMATCH_RANDAUGMENT_OPS,
                         fill: Numeric = DEFAULT_FILL, cutout_ignore: bool = True,
                         translate_const: Numeric = RANDAUGMENT_TRANSLATE_CONST,
                         cutout_const: Numeric = RANDAUGMENT_CUTOUT_CONST
                         ) -> tuple[jax.Array, jax.Array | None]:
  """FixMatch's RandAugment: N ops, each at its own level drawn uniformly from 0..10.

  As google-research/fixmatch ``imagenet/augment/rand_augment.py`` with ``magnitude=None,
  num_levels=10`` and no ``prob_to_apply``; its ops are the tpu ones without Cutout, plus
  Identity.

  Args:
    key: ``jax.random`` key.
    image: ``[H, W, 3]`` float image in [0, 1].
    mask: optional int ``[H, W]`` labels (255 = ignore).
    num_ops: N (static); FixMatch uses 2.
    ops: op names to draw from (static); default :data:`FIXMATCH_RANDAUGMENT_OPS`.
    fill: as in :func:`apply_op`; reference 128/255.
    cutout_ignore: as in :func:`apply_op` (only if ``ops`` has Cutout).
    translate_const: as in :func:`apply_op`; FixMatch 100 px at 224 px, here 100/224.
    cutout_const: as in :func:`apply_op` (only if ``ops`` has Cutout).

  Returns:
    ``(image, mask)``; mask None when None was given.

  Raises:
    ValueError: on a bad image, mask, ``num_ops`` or ``ops``, or static arguments out
      of range.
  """
  return _rand_augment(key, image, mask, num_ops=num_ops, magnitude=None, ops=ops,
                       settings=_settings(fill, cutout_ignore, translate_const,
                                          cutout_const))
