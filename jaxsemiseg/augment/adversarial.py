"""Adversarial input transforms: FGSM, PGD, VAT, DeepFool, adversarial training.

Each builder closes over a model-agnostic function and returns a pure,
jit-able transform built on ``jax.grad`` with respect to the **input**:

* ``loss_fn(params, x, y) -> scalar`` for the supervised attacks (FGSM, PGD) and
  adversarial training;
* ``logits_fn(params, x) -> logits`` for VAT (``[B, K]`` or ``[B, H, W, K]``) and
  DeepFool (``[B, K]``).

Attacks share the call ``attack(params, x, y, key) -> x_adv`` on a batch
``x [B, ...]`` and return stop-gradient'ed inputs, so they can sit inside a
jitted train step and a second network can be trained on them. They read
per-example gradients off the gradient of a batch-level function, which is exact
when examples do not interact: run BatchNorm with its running statistics (the
reference VAT also keeps BN statistics fixed on perturbed passes). PGD's and VAT's
few iterations are unrolled (XLA:CPU runs the convolutions of a loop body ~10x slower
than at top level); DeepFool's data-dependent stop is a ``lax.while_loop``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
LossFn = Callable[[Params, jax.Array, jax.Array], jax.Array]
LogitsFn = Callable[[Params, jax.Array], jax.Array]
Attack = Callable[..., jax.Array]


def _check_number(name: str, value: Any, *, minimum: float, strict: bool) -> None:
  """Host check of a static number against a lower bound; traced values pass."""
  if not isinstance(value, (int, float, np.integer, np.floating)):
    return
  if value < minimum or (strict and value == minimum):
    relation = ">" if strict else ">="
    raise ValueError(f"{name}={value}; expected a number {relation} {minimum}.")


def _check_count(name: str, value: Any, *, minimum: int) -> None:
  if not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}={value!r}; expected a static int >= {minimum}.")


def _check_clip(clip: Sequence[float] | None) -> None:
  if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
    raise ValueError(f"clip={clip!r}; expected None or a (low, high) pair with low < high.")


def _clip(x: jax.Array, clip: Sequence[float] | None) -> jax.Array:
  return x if clip is None else jnp.clip(x, clip[0], clip[1])


def pgd(
    loss_fn: LossFn,
    *,
    epsilon: float,
    step_size: float,
    num_steps: int,
    random_start: bool = True,
    clip: Sequence[float] | None = (0.0, 1.0),
) -> Attack:
  """Projected gradient descent (Madry et al.), L-infinity; I-FGSM / BIM without start.

  From ``x0`` (plus ``U(-epsilon, epsilon)`` noise, clipped, when
  ``random_start``), repeat ``num_steps`` times:
  ``x <- clip(proj_{|x - x0| <= epsilon}(x + step_size * sign(grad_x loss)))``.
  Reference (MadryLab/cifar10_challenge ``LinfPGDAttack``): epsilon 8/255,
  step 2/255, 10 steps (7 for training, 20 for evaluation in the paper), random
  start, CE loss. Iterative FGSM (Kurakin et al.) is ``random_start=False``.

  Args:
    loss_fn: ``loss_fn(params, x, y) -> scalar`` to increase.
    epsilon: radius of the L-infinity ball around the clean input.
    step_size: size of each signed-gradient step.
    num_steps: number of steps (static, >= 0).
    random_start: start from a uniform point of the ball (needs a key).
    clip: valid input range ``(low, high)``, or None for no range.

  Returns:
    ``attack(params, x, y, key=None) -> x_adv``, stop-gradient'ed, inside the
    epsilon-ball around ``x`` and the clip range.

  Raises:
    ValueError: on a negative ``epsilon``, a non-positive ``step_size``, a bad
      ``num_steps`` or ``clip``; the attack raises if ``random_start`` and no key.
  """
  _check_number("epsilon", epsilon, minimum=0.0, strict=False)
  _check_number("step_size", step_size, minimum=0.0, strict=True)
  _check_count("num_steps", num_steps, minimum=0)
  _check_clip(clip)
  input_gradient = jax.grad(loss_fn, argnums=1)

  def attack(params: Params, x: jax.Array, y: jax.Array,
             key: jax.Array | None = None) -> jax.Array:
    x = jax.lax.stop_gradient(x)
    x_adv = x
    if random_start:
      if key is None:
        raise ValueError("pgd with random_start=True needs a PRNG key; got key=None.")
      noise = jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon)
      x_adv = _clip(x + noise, clip)

    def step(_, x_adv):
      x_adv = x_adv + step_size * jnp.sign(input_gradient(params, x_adv, y))
      return _clip(jnp.clip(x_adv, x - epsilon, x + epsilon), clip)

    # Unrolled (the counts are small): XLA:CPU runs the backward convolutions of a loop
    # body ~10x slower than at top level (jaxsemiseg/stacked.py).
    for i in range(num_steps):
      x_adv = step(i, x_adv)
    return jax.lax.stop_gradient(x_adv)

  return attack


def fgsm(loss_fn: LossFn, *, epsilon: float,
         clip: Sequence[float] | None = (0.0, 1.0)) -> Attack:
  """Fast gradient sign method (Goodfellow et al.): ``clip(x + eps sign(grad_x J))``.

  One PGD step of size ``epsilon`` from the clean input. Reference settings:
  Goodfellow et al. epsilon 0.25 on MNIST; deep ensembles 1% of the input range;
  Deep Co-Training 0.02 (classification) and 0.05 (segmentation, clamp to [0, 1]).

  Args:
    loss_fn: ``loss_fn(params, x, y) -> scalar`` to increase.
    epsilon: step size (the L-infinity radius).
    clip: valid input range ``(low, high)``, or None.

  Returns:
    ``attack(params, x, y, key=None) -> x_adv``, stop-gradient'ed; the key is
    unused (FGSM is deterministic) and accepted so every attack is called alike.

  Raises:
    ValueError: on a negative ``epsilon`` or a bad ``clip``.
  """
  return pgd(loss_fn, epsilon=epsilon, step_size=epsilon, num_steps=1,
             random_start=False, clip=clip)


def _normalize_per_example(d: jax.Array) -> jax.Array:
  """takerum/vat_tf ``get_normalized_vector``: divide by max|d|, then by the L2 norm."""
  example_axes = tuple(range(1, d.ndim))
  d = d / (1e-12 + jnp.max(jnp.abs(d), axis=example_axes, keepdims=True))
  return d / jnp.sqrt(1e-6 + jnp.sum(d**2, axis=example_axes, keepdims=True))


def _mean_kl(p_logits: jax.Array, q_logits: jax.Array,
             mask: jax.Array | None = None) -> jax.Array:
  """``KL(softmax(p) || softmax(q))`` over the last axis, averaged over the rest (over the
  ``mask`` entries when given)."""
  p_log = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  q_log = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  kl = jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)
  if mask is None:
    return jnp.mean(kl)
  return jnp.sum(jnp.where(mask, kl, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def vat(logits_fn: LogitsFn, *, xi: float = 1e-6, epsilon: float,
        num_power_iterations: int = 1) -> Callable[..., jax.Array]:
  """Virtual adversarial perturbation (Miyato et al.; takerum/vat_tf ``vat.py``).

  Draws ``d ~ N(0, I)`` and runs power iteration on the Hessian of
  ``D(r) = KL(p(x) || p(x + r))`` at ``r = 0``, with the clean prediction
  ``p(x)`` held fixed: ``d <- grad_r D(r)`` at ``r = xi * normalize(d)``; then
  ``r_adv = epsilon * normalize(d)``. ``normalize`` divides each example by its
  max-abs and then by ``sqrt(1e-6 + sum d^2)``, as the reference. The KL is
  summed over classes and averaged over the batch and, for segmentation logits,
  over pixels (Deep Co-Training seg). Reference defaults: ``xi = 1e-6``, one
  iteration; epsilon 8.0 (CIFAR-10, ZCA inputs), 0.05 (Deep Co-Training seg on
  [0, 1] images), 2.0 (CCT, on features).

  Precision: the probe ``x + xi * normalize(d)`` moves each of an example's D
  entries by about ``xi / sqrt(D)``, which float32 rounds away once it falls below
  the spacing of ``x`` (6e-8 near 0.5). Then the gradient is rounding noise or
  zero and so is ``r_adv``. For float32 images in [0, 1] use
  ``xi >~ 1e-6 * sqrt(D)`` (about 1e-3 at 321x321x3); the reference 1e-6 suits
  small inputs such as features.

  Args:
    logits_fn: ``logits_fn(params, x) -> [B, ..., K]`` logits; must not update
      batch statistics.
    xi: finite-difference radius of the power iteration.
    epsilon: L2 norm of the returned perturbation (per example).
    num_power_iterations: power-iteration steps (static, >= 1).

  Returns:
    ``perturb(params, x, key, clean_logits=None, mask=None) -> r_adv``, the
    stop-gradient'ed perturbation of ``x``'s shape; pass ``clean_logits`` to reuse a
    forward pass. ``mask``, bool ``[B, H, W]`` for images ``[B, H, W, C]`` (e.g. a crop's
    real pixels, without its padding), confines both the KL and the perturbation to the
    masked pixels, so the whole epsilon goes where predictions are scored.

  Raises:
    ValueError: on a non-positive ``xi``, a negative ``epsilon`` or a bad
      ``num_power_iterations``.
  """
  _check_number("xi", xi, minimum=0.0, strict=True)
  _check_number("epsilon", epsilon, minimum=0.0, strict=False)
  _check_count("num_power_iterations", num_power_iterations, minimum=1)

  def perturb(params: Params, x: jax.Array, key: jax.Array,
              clean_logits: jax.Array | None = None,
              mask: jax.Array | None = None) -> jax.Array:
    x = jax.lax.stop_gradient(x)
    if clean_logits is None:
      clean_logits = logits_fn(params, x)
    clean_logits = jax.lax.stop_gradient(clean_logits)
    divergence = lambda r: _mean_kl(clean_logits, logits_fn(params, x + r), mask)
    confine = (lambda d: d) if mask is None else (lambda d: d * mask[..., None])

    def power_step(_, d):
      return confine(jax.grad(divergence)(xi * _normalize_per_example(d)))

    d = confine(jax.random.normal(key, x.shape, x.dtype))
    for i in range(num_power_iterations):  # Unrolled, as in pgd.
      d = power_step(i, d)
    return jax.lax.stop_gradient(epsilon * _normalize_per_example(d))

  return perturb


def vat_loss(logits_fn: LogitsFn, *, xi: float = 1e-6, epsilon: float,
             num_power_iterations: int = 1) -> Callable[..., jax.Array]:
  """VAT's local distributional smoothness loss ``LDS = KL(sg p(x) || p(x + r_adv))``.

  ``r_adv`` comes from :func:`vat` with the same arguments; the clean prediction
  is held fixed (stop-gradient), so the gradient flows only through the
  perturbed pass. Weight it with alpha (reference 1).

  Args:
    logits_fn: ``logits_fn(params, x) -> [B, ..., K]`` logits; must not update
      batch statistics.
    xi: finite-difference radius of the power iteration (see :func:`vat`).
    epsilon: L2 norm of the perturbation (per example).
    num_power_iterations: power-iteration steps (static, >= 1).

  Returns:
    ``loss(params, x, key, clean_logits=None) -> scalar``: the KL summed over
    classes and averaged over the batch and pixels.

  Raises:
    ValueError: on bad ``xi``, ``epsilon`` or ``num_power_iterations``.
  """
  perturb = vat(logits_fn, xi=xi, epsilon=epsilon,
                num_power_iterations=num_power_iterations)

  def loss(params: Params, x: jax.Array, key: jax.Array,
           clean_logits: jax.Array | None = None) -> jax.Array:
    if clean_logits is None:
      clean_logits = logits_fn(params, x)
    clean_logits = jax.lax.stop_gradient(clean_logits)
    r_adv = perturb(params, x, key, clean_logits)
    return _mean_kl(clean_logits, logits_fn(params, x + r_adv))

  return loss


def deepfool(logits_fn: LogitsFn, *, overshoot: float = 0.02, max_iterations: int = 50,
             top_k: int = 10) -> Attack:
  """DeepFool (Moosavi-Dezfooli et al.; LTS4/DeepFool ``deepfool.py``), batched.

  The candidate classes are the clean input's ``top_k`` highest logits, the
  first being its label ``k0``. While an example still predicts ``k0``, at its
  current point ``x_i = x0 + (1 + overshoot) r``: ``w_k = grad f_k - grad f_k0``,
  ``f'_k = f_k - f_k0`` for each other candidate, ``l = argmin |f'_k| / ||w_k||``,
  and ``r += |f'_l| / ||w_l|| * w_l / ||w_l||``; at most ``max_iterations``
  steps. The result is not clipped to a valid range (neither is the reference's).
  Reference defaults: overshoot 0.02, 50 iterations, top 10 classes.

  Logits must be classification-shaped ``[B, K]`` (K is read from them). For a
  segmenter, attack an image-level decision, e.g. the pooled logits
  ``lambda p, x: model.apply(p, x)["logits"].mean(axis=(1, 2))``.

  Args:
    logits_fn: ``logits_fn(params, x) -> [B, K]`` logits; examples must not
      interact (BatchNorm with running statistics).
    overshoot: relative step past the linearised boundary.
    max_iterations: most linearisation steps (static, >= 1).
    top_k: how many top classes are candidates (static, >= 2; capped at K).

  Returns:
    ``attack(params, x, y=None, key=None) -> x_adv``, stop-gradient'ed; ``y`` and
    ``key`` are unused (the label is the model's own prediction) and accepted so
    every attack is called alike.

  Raises:
    ValueError: on a negative ``overshoot``, bad counts, or (when the attack is
      traced) logits that are not ``[B, K]``.
  """
  _check_number("overshoot", overshoot, minimum=0.0, strict=False)
  _check_count("max_iterations", max_iterations, minimum=1)
  _check_count("top_k", top_k, minimum=2)

  def attack(params: Params, x: jax.Array, y: jax.Array | None = None,
             key: jax.Array | None = None) -> jax.Array:
    del y, key
    x = jax.lax.stop_gradient(x)
    clean_logits = logits_fn(params, x)
    if clean_logits.ndim != 2 or clean_logits.shape[0] != x.shape[0]:
      raise ValueError(
          f"deepfool: logits_fn returned shape {clean_logits.shape} for inputs "
          f"{x.shape}; expected [B, K] (pool a segmenter's logits first).")
    batch_size, num_classes = clean_logits.shape
    candidates = jax.lax.top_k(clean_logits, min(top_k, num_classes))[1]
    label = candidates[:, 0]
    # One cotangent per candidate rank: the vjp with it is the per-example gradient
    # of that example's candidate logit.
    cotangents = jnp.moveaxis(
        jax.nn.one_hot(candidates, num_classes, dtype=clean_logits.dtype), 1, 0)
    expand = lambda v: v.reshape(v.shape + (1,) * (x.ndim - 1))

    def linearised_step(state):
      iteration, r_total, _ = state
      logits, pullback = jax.vjp(lambda z: logits_fn(params, z),
                                 x + (1 + overshoot) * r_total)
      active = jnp.argmax(logits, axis=-1) == label
      (gradients,) = jax.vmap(pullback)(cotangents)
      candidate_logits = jnp.take_along_axis(logits, candidates, axis=-1).T
      directions = gradients[1:] - gradients[:1]
      margins = jnp.abs(candidate_logits[1:] - candidate_logits[:1])
      norms = jnp.sqrt(jnp.sum(directions**2, axis=tuple(range(2, directions.ndim))))
      safe_norms = jnp.where(norms > 0, norms, 1.0)
      distances = jnp.where(norms > 0, margins / safe_norms, jnp.inf)
      nearest = (jnp.argmin(distances, axis=0), jnp.arange(batch_size))
      # r_i = |f'_l| / ||w_l|| * w_l / ||w_l||; examples already fooled stay put.
      scale = jnp.where(active & jnp.isfinite(distances[nearest]),
                        distances[nearest] / safe_norms[nearest], 0.0)
      return iteration + 1, r_total + expand(scale) * directions[nearest], jnp.any(active)

    def some_unfooled(state):
      iteration, _, any_active = state
      return (iteration < max_iterations) & any_active

    _, r_total, _ = jax.lax.while_loop(
        some_unfooled, linearised_step, (0, jnp.zeros_like(x), jnp.array(True)))
    return jax.lax.stop_gradient(x + (1 + overshoot) * r_total)

  return attack


def adversarial_training_loss(loss_fn: LossFn, attack: Attack, *,
                              alpha: float = 0.5) -> Callable[..., jax.Array]:
  """Adversarial training objective (Goodfellow et al.): ``a J(x, y) + (1 - a) J(x_adv, y)``.

  ``x_adv = attack(params, x, y, key)`` is held fixed (stop-gradient), so the
  gradient with respect to ``params`` is that of the two loss terms only.
  Reference: alpha 0.5 with FGSM (epsilon 0.25 on MNIST; deep ensembles use 1%
  of the input range).

  Args:
    loss_fn: ``loss_fn(params, x, y) -> scalar``.
    attack: an attack from this module, e.g. ``fgsm(loss_fn, epsilon=...)``.
    alpha: weight of the clean loss, in [0, 1].

  Returns:
    ``loss(params, x, y, key=None) -> scalar``.

  Raises:
    ValueError: if a static ``alpha`` is outside [0, 1].
  """
  if isinstance(alpha, (int, float, np.integer, np.floating)) and not 0 <= alpha <= 1:
    raise ValueError(f"alpha={alpha}; expected a weight in [0, 1].")

  def loss(params: Params, x: jax.Array, y: jax.Array,
           key: jax.Array | None = None) -> jax.Array:
    x_adv = jax.lax.stop_gradient(attack(params, x, y, key))
    return alpha * loss_fn(params, x, y) + (1 - alpha) * loss_fn(params, x_adv, y)

  return loss
