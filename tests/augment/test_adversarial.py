"""Tests for jaxsemiseg.augment.adversarial on linear models with closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsemiseg.augment import adversarial

NUM_CLASSES, DIM, BATCH = 3, 6, 4


def logits_fn(params, x):
  return x @ params["w"].T + params["b"]


def loss_fn(params, x, y):
  log_probs = jax.nn.log_softmax(logits_fn(params, x))
  return -jnp.take_along_axis(log_probs, y[:, None], axis=1).mean()


def _linear_problem(seed=0, num_classes=NUM_CLASSES):
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {"w": jax.random.normal(keys[0], (num_classes, DIM)),
            "b": 0.1 * jax.random.normal(keys[1], (num_classes,))}
  x = jax.random.uniform(keys[2], (BATCH, DIM), minval=0.2, maxval=0.8)
  y = jax.random.randint(keys[3], (BATCH,), 0, num_classes)
  return params, x, y


def _input_gradient_direction(params, x, y):
  """``W^T (p - onehot(y))`` per example, in float64 numpy."""
  w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
  logits = np.asarray(x, np.float64) @ w.T + b
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  return (probs - np.eye(w.shape[0])[np.asarray(y)]) @ w


def test_fgsm_on_linear_softmax_equals_the_closed_form():
  params, x, y = _linear_problem()
  epsilon = 0.3
  x_adv = jax.jit(adversarial.fgsm(loss_fn, epsilon=epsilon))(params, x, y, None)
  direction = _input_gradient_direction(params, x, y)
  assert np.abs(direction).min() > 1e-4  # No sign is decided by rounding.
  expected = np.clip(np.asarray(x) + epsilon * np.sign(direction), 0.0, 1.0)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)
  assert (expected == 0).any() or (expected == 1).any()  # The clip is exercised.
  unclipped = adversarial.fgsm(loss_fn, epsilon=epsilon, clip=None)(params, x, y)
  np.testing.assert_allclose(unclipped, np.asarray(x) + epsilon * np.sign(direction),
                             atol=1e-6)


def test_pgd_stays_in_the_ball_and_range_and_raises_the_loss():
  params, x, y = _linear_problem(seed=1)
  epsilon = 0.1
  clean_loss = loss_fn(params, x, y)
  attack = jax.jit(adversarial.pgd(loss_fn, epsilon=epsilon, step_size=0.03,
                                   num_steps=5))
  keys = jax.random.split(jax.random.key(0), 3)
  for key in keys:
    x_adv = attack(params, x, y, key)
    assert float(jnp.abs(x_adv - x).max()) <= epsilon + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(loss_fn(params, x_adv, y)) > float(clean_loss)
  np.testing.assert_array_equal(attack(params, x, y, keys[0]), attack(params, x, y, keys[0]))
  assert not np.array_equal(attack(params, x, y, keys[0]), attack(params, x, y, keys[1]))
  # I-FGSM from the clean input never lowers a convex loss, step after step.
  losses = [clean_loss] + [loss_fn(params, adversarial.pgd(
      loss_fn, epsilon=epsilon, step_size=0.03, num_steps=n, random_start=False)(
          params, x, y), y) for n in (1, 2, 4)]
  assert all(float(a) < float(b) for a, b in zip(losses, losses[1:]))


def test_iterated_fgsm_on_multiclass_linear_model_equals_a_numpy_reference():
  # Three classes: the input gradient's sign changes along the path, so each step's
  # direction, the projection onto the ball and the clip all matter.
  params, x, y = _linear_problem(seed=3)
  epsilon, step_size = 0.1, 0.06
  x_adv = adversarial.pgd(loss_fn, epsilon=epsilon, step_size=step_size, num_steps=3,
                          random_start=False)(params, x, y)
  x0 = np.asarray(x, np.float64)
  expected = x0.copy()
  for _ in range(3):
    expected = expected + step_size * np.sign(_input_gradient_direction(params, expected, y))
    expected = np.clip(np.clip(expected, x0 - epsilon, x0 + epsilon), 0, 1)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)
  assert np.abs(np.asarray(x_adv) - x0).max() == pytest.approx(epsilon, abs=1e-6)


def test_pgd_on_binary_linear_model_converges_to_the_fgsm_corner_of_the_ball():
  # Two classes: grad_x = (p1 - y1)(w1 - w0), whose sign is constant on the ball, so
  # PGD from any start ends at x + eps * sign(...), clipped.
  params, x, y = _linear_problem(seed=2, num_classes=2)
  epsilon = 0.05
  attack = adversarial.pgd(loss_fn, epsilon=epsilon, step_size=0.02, num_steps=6)
  x_adv = attack(params, x, y, jax.random.key(4))
  expected = np.clip(np.asarray(x) + epsilon * np.sign(
      _input_gradient_direction(params, x, y)), 0, 1)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def _kl_hessian_top_eigenvectors(params, x):
  """Top eigenvector and eigenvalue of d^2/dr^2 KL(p(x) || p(x + r)) at r = 0."""
  vectors, values = [], []
  for example in x:
    clean = jax.nn.softmax(logits_fn(params, example))

    def divergence(r, example=example, clean=clean):
      log_q = jax.nn.log_softmax(logits_fn(params, example + r))
      return jnp.sum(clean * (jnp.log(clean) - log_q))

    hessian = np.asarray(jax.hessian(divergence)(jnp.zeros(DIM)), np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    assert eigenvalues[-1] > 1.5 * eigenvalues[-2]  # A clear top direction.
    vectors.append(eigenvectors[:, -1])
    values.append(eigenvalues[-1])
  return np.stack(vectors), np.array(values)


def test_vat_direction_is_the_top_eigenvector_of_the_kl_hessian():
  params, x, _ = _linear_problem(seed=3)
  epsilon = 0.05
  top_vectors, top_values = _kl_hessian_top_eigenvectors(params, x)
  # xi = 1e-3, not the reference 1e-6: float32 would round the probe away (see vat).
  perturb = jax.jit(adversarial.vat(logits_fn, xi=1e-3, epsilon=epsilon,
                                    num_power_iterations=8))
  r_adv = np.asarray(perturb(params, x, jax.random.key(0)), np.float64)
  norms = np.linalg.norm(r_adv, axis=1)
  np.testing.assert_allclose(norms, epsilon, rtol=1e-4)
  cosines = np.abs(np.sum(r_adv * top_vectors, axis=1)) / norms
  assert cosines.min() > 0.99, cosines
  np.testing.assert_array_equal(perturb(params, x, jax.random.key(0)), r_adv)
  # LDS = KL(p(x) || p(x + r_adv)) = eps^2 lambda_max / 2 + O(eps^3), batch-averaged.
  small_epsilon = 0.01
  lds = adversarial.vat_loss(logits_fn, xi=1e-3, epsilon=small_epsilon,
                             num_power_iterations=8)(params, x, jax.random.key(0))
  np.testing.assert_allclose(lds, 0.5 * small_epsilon**2 * top_values.mean(), rtol=0.02)


def test_vat_loss_gradient_flows_only_through_the_perturbed_pass():
  params, x, _ = _linear_problem(seed=4)
  key = jax.random.key(1)
  kwargs = dict(xi=1e-3, epsilon=0.5)
  r_adv = adversarial.vat(logits_fn, **kwargs)(params, x, key)
  clean = jax.nn.softmax(logits_fn(params, x))

  def fixed_target_kl(p):
    log_q = jax.nn.log_softmax(logits_fn(p, x + r_adv))
    return jnp.mean(jnp.sum(clean * (jnp.log(clean) - log_q), axis=-1))

  loss = adversarial.vat_loss(logits_fn, **kwargs)
  grads = jax.grad(loss)(params, x, key)
  expected = jax.grad(fixed_target_kl)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               grads, expected)


def test_vat_on_segmentation_logits_averages_the_pixel_kl():
  params, _, _ = _linear_problem(seed=5)
  pixels = jax.random.uniform(jax.random.key(0), (2, 3, 3, DIM))
  loss = adversarial.vat_loss(logits_fn, xi=1e-3, epsilon=0.2)
  r_adv = adversarial.vat(logits_fn, xi=1e-3, epsilon=0.2)(params, pixels,
                                                            jax.random.key(2))
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(r_adv).reshape(2, -1), axis=1), 0.2, rtol=1e-4)
  clean = jax.nn.log_softmax(logits_fn(params, pixels))
  perturbed = jax.nn.log_softmax(logits_fn(params, pixels + r_adv))
  per_pixel = jnp.sum(jnp.exp(clean) * (clean - perturbed), axis=-1)
  np.testing.assert_allclose(loss(params, pixels, jax.random.key(2)), per_pixel.mean(),
                             rtol=1e-5)


def test_vat_with_a_mask_spends_epsilon_on_the_masked_pixels_only():
  params, _, _ = _linear_problem(seed=5)
  pixels = jax.random.uniform(jax.random.key(0), (2, 3, 3, DIM))
  mask = jnp.zeros((2, 3, 3), bool).at[0, :2].set(True).at[1, 1:, 1:].set(True)
  perturb = adversarial.vat(logits_fn, xi=1e-3, epsilon=0.2)
  masked = np.asarray(perturb(params, pixels, jax.random.key(2), mask=mask))
  plain = np.asarray(perturb(params, pixels, jax.random.key(2)))
  assert not masked[~np.asarray(mask)].any()
  np.testing.assert_allclose(np.linalg.norm(masked.reshape(2, -1), axis=1), 0.2, rtol=1e-4)
  # Pixels are independent here, so within the mask the direction is the unmasked one's
  # (up to the finite xi, whose probe differs in scale between the two).
  for example in range(2):
    inside = np.asarray(mask[example])
    ours, theirs = masked[example][inside].ravel(), plain[example][inside].ravel()
    cosine = ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs))
    assert cosine > 0.999, cosine


def test_deepfool_on_linear_binary_classifier_lands_at_the_scaled_distance():
  w = jnp.array([0.5, -1.0, 2.0, 0.25, 0.0, -0.75])
  params = {"w": jnp.stack([jnp.zeros(DIM), w]), "b": jnp.array([0.0, -0.3])}
  x = jax.random.uniform(jax.random.key(0), (BATCH, DIM))
  overshoot = 0.02
  x_adv = jax.jit(adversarial.deepfool(logits_fn, overshoot=overshoot))(params, x)
  margin = np.asarray(x @ w - 0.3)
  step = np.asarray(x_adv - x)
  np.testing.assert_allclose(np.linalg.norm(step, axis=1),
                             np.abs(margin) / np.linalg.norm(w) * (1 + overshoot),
                             rtol=1e-5)
  np.testing.assert_allclose(step, -np.outer(margin / np.dot(w, w), w) * (1 + overshoot),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(
      np.argmax(logits_fn(params, x_adv), -1), 1 - np.argmax(logits_fn(params, x), -1))


def test_deepfool_multiclass_flips_every_prediction_to_the_nearest_boundary():
  params, x, _ = _linear_problem(seed=6, num_classes=5)
  x_adv = adversarial.deepfool(logits_fn, top_k=5)(params, x)
  clean = np.asarray(logits_fn(params, x))
  label = clean.argmax(-1)
  assert (np.asarray(logits_fn(params, x_adv)).argmax(-1) != label).all()
  # For a linear model the first step is exact: the distance to the nearest boundary.
  w = np.asarray(params["w"])
  rows = np.arange(BATCH)
  distances = (clean[rows, label][:, None] - clean) / np.maximum(
      np.linalg.norm(w[None] - w[label][:, None], axis=-1), 1e-12)
  distances[rows, label] = np.inf
  boundary = distances.min(axis=1)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(x_adv - x), axis=1),
                             boundary * 1.02, rtol=1e-4)
  with pytest.raises(ValueError, match=r"\[B, K\]"):
    adversarial.deepfool(lambda p, z: logits_fn(p, z)[:, None])(params, x)


def test_adversarial_training_loss_mixes_clean_and_fixed_adversarial_terms():
  params, x, y = _linear_problem(seed=7)
  alpha = 0.3
  # A differentiable "attack", so a missing stop-gradient would change the gradient.
  shift = lambda p, x, y, key: x + 0.1 * jnp.tanh(p["b"].sum())
  loss = adversarial.adversarial_training_loss(loss_fn, shift, alpha=alpha)
  x_adv = shift(params, x, y, None)
  np.testing.assert_allclose(
      loss(params, x, y), alpha * loss_fn(params, x, y) +
      (1 - alpha) * loss_fn(params, x_adv, y), rtol=1e-6)
  expected = jax.grad(lambda p: alpha * loss_fn(p, x, y) +
                      (1 - alpha) * loss_fn(p, x_adv, y))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.grad(loss)(params, x, y), expected)


def test_attacks_vmap_over_an_ensemble_of_parameters_under_jit():
  members = [_linear_problem(seed=s)[0] for s in (8, 9)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
  _, x, y = _linear_problem(seed=8)
  attack = adversarial.fgsm(loss_fn, epsilon=0.1)
  batched = jax.jit(jax.vmap(attack, in_axes=(0, None, None, None)))(stacked, x, y, None)
  for i, member in enumerate(members):
    np.testing.assert_allclose(batched[i], attack(member, x, y), atol=1e-6)
  training_loss = adversarial.adversarial_training_loss(
      loss_fn, adversarial.pgd(loss_fn, epsilon=0.1, step_size=0.05, num_steps=2))
  keys = jax.random.split(jax.random.key(0), 2)
  losses = jax.jit(jax.vmap(training_loss, in_axes=(0, None, None, 0)))(stacked, x, y, keys)
  np.testing.assert_allclose(losses[1], training_loss(members[1], x, y, keys[1]), rtol=1e-5)


@pytest.mark.parametrize("build, field", [
    (lambda: adversarial.fgsm(loss_fn, epsilon=-0.1), "epsilon"),
    (lambda: adversarial.pgd(loss_fn, epsilon=0.1, step_size=0.0, num_steps=3),
     "step_size"),
    (lambda: adversarial.pgd(loss_fn, epsilon=0.1, step_size=0.1, num_steps=2.5),
     "num_steps"),
    (lambda: adversarial.fgsm(loss_fn, epsilon=0.1, clip=(1.0, 0.0)), "clip"),
    (lambda: adversarial.vat(logits_fn, xi=0.0, epsilon=1.0), "xi"),
    (lambda: adversarial.vat_loss(logits_fn, epsilon=1.0, num_power_iterations=0),
     "num_power_iterations"),
    (lambda: adversarial.deepfool(logits_fn, top_k=1), "top_k"),
    (lambda: adversarial.adversarial_training_loss(loss_fn, None, alpha=1.5), "alpha"),
])
def test_bad_arguments_raise_naming_the_field(build, field):
  with pytest.raises(ValueError, match=field):
    build()


def test_pgd_with_random_start_needs_a_key():
  params, x, y = _linear_problem()
  with pytest.raises(ValueError, match="key"):
    adversarial.pgd(loss_fn, epsilon=0.1, step_size=0.1, num_steps=1)(params, x, y)
