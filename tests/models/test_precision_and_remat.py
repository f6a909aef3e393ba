"""Mixed precision (``model.dtype="bfloat16"``) and rematerialisation (``model.remat``).

Remat must change nothing but memory and FLOPs: the same parameter tree, loss, gradients
and BatchNorm statistics to float32 round-off. bfloat16 compute must keep parameters,
gradients, optimizer state, BatchNorm statistics and logits in float32, run every
convolution in bfloat16, and give a loss and gradients within bfloat16's error of float32.
"""

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import losses, models, parallel, train
from jaxsemiseg.methods import common

NUM_CLASSES = 3

# Inputs: the UNet's 16 px give its depth-2 bottleneck 4x4 maps; 33 px give the ResNet-18
# stages 9, 5, 3, 3 (output stride 16).
_MODELS = {
    "unet": (functools.partial(models.UNet, NUM_CLASSES, width=4, depth=2), (2, 16, 16)),
    "deeplab_r18": (functools.partial(
        models.DeepLabV3Plus, NUM_CLASSES, backbone="resnet18", aspp_channels=16,
        low_level_channels=8, decoder_channels=16, dropout_rate=0.0), (2, 33, 33)),
}


@pytest.fixture(scope="module")
def inputs(random_variables):
  """``inputs(name) -> (images, labels, variables of the float32 model)``, random, cached."""

  @functools.cache
  def make(name):
    build, shape = _MODELS[name]
    rng = np.random.default_rng(0)
    images = rng.random(shape + (3,), np.float32)
    labels = rng.integers(0, NUM_CLASSES, shape).astype(np.int32)
    return images, labels, random_variables(build(), images, train=False)

  return make


def _loss_fn(name, images, labels, variables, **model_kwargs):
  """``params -> (CE loss, (outputs, batch_stats))`` of the variant of ``name``, train mode."""
  model = _MODELS[name][0](**model_kwargs)

  def loss_fn(params):
    outputs, batch_stats = common.forward(
        model, params, variables.get("batch_stats", {}), images, train=True)
    return losses.cross_entropy(outputs["logits"], labels)[0], (outputs, batch_stats)

  return loss_fn


@pytest.fixture(scope="module")
def loss_and_grads(inputs):
  """``loss_and_grads(name, **model_kwargs) -> (loss, logits, batch_stats, grads, flops)``.

  The variant compiled and run, always at the float32 model's variables, so a variant whose
  parameter names differ (e.g. under remat) fails here instead of initialising its own.
  """

  @functools.cache
  def compute(name, **model_kwargs):
    images, labels, variables = inputs(name)
    compiled = jax.jit(jax.value_and_grad(
        _loss_fn(name, images, labels, variables, **model_kwargs), has_aux=True)).lower(
            variables["params"]).compile()
    (loss, (outputs, batch_stats)), grads = compiled(variables["params"])
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return loss, outputs["logits"], batch_stats, grads, float(cost["flops"])

  return compute


def _flat(tree):
  return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_remat_and_bfloat16_keep_the_float32_parameter_tree(name):
  build, shape = _MODELS[name]
  images = jnp.zeros(shape + (3,))

  def variables(**kwargs):
    return jax.eval_shape(lambda: build(**kwargs).init(jax.random.key(0), images, train=False))

  reference = variables()
  assert variables(remat=True) == reference
  assert variables(remat=True, dtype=jnp.bfloat16) == reference
  assert {leaf.dtype for leaf in jax.tree.leaves(reference)} == {jnp.dtype(jnp.float32)}


def test_remat_unet_initialises_the_same_values():
  build, shape = _MODELS["unet"]
  images = jnp.zeros(shape + (3,))
  # An "rbg" key, as train.build_run: XLA:CPU compiles threefry inits ~4x slower.
  key = jax.random.key(1, impl="rbg")
  plain, rematerialised = (
      jax.jit(lambda model=build(remat=remat): model.init(key, images, train=False))()
      for remat in (False, True))
  jax.tree.map(np.testing.assert_array_equal, plain, rematerialised)


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_remat_gives_the_same_loss_gradients_and_statistics(loss_and_grads, name):
  loss, logits, batch_stats, grads, flops = loss_and_grads(name)
  loss_r, logits_r, batch_stats_r, grads_r, flops_r = loss_and_grads(name, remat=True)
  # Only float32 reassociation separates the two: recomputation runs the same ops.
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  np.testing.assert_allclose(logits_r, logits, rtol=1e-5, atol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               (grads_r, batch_stats_r), (grads, batch_stats))
  # The recomputed forward convolutions show up in XLA's count: recomputing the UNet's
  # encoder blocks adds 8-12% to the step's FLOPs (8% with jax 0.10.2 at any level and at
  # the suite's optimisation level 0, 12% with jax 0.12 at XLA's default), the ResNet-18's
  # blocks 32%.
  assert flops_r > 1.05 * flops


def _conv_input_dtypes(jaxpr):
  """The operand dtypes of every convolution in ``jaxpr`` and its sub-jaxprs (remat)."""
  dtypes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      dtypes.update(var.aval.dtype for var in eqn.invars)
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(item, jax.extend.core.ClosedJaxpr):
          item = item.jaxpr
        if isinstance(item, jax.extend.core.Jaxpr):
          dtypes |= _conv_input_dtypes(item)
  return dtypes


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_bfloat16_computes_in_bfloat16_and_returns_float32(inputs, name):
  params = inputs(name)[2]["params"]
  loss_fn = jax.value_and_grad(
      _loss_fn(name, *inputs(name), dtype=jnp.bfloat16, remat=True), has_aux=True)
  (loss, (outputs, batch_stats)), grads = jax.eval_shape(loss_fn, params)
  assert outputs["features"].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves((loss, outputs["logits"], batch_stats, grads))
          } == {jnp.dtype(jnp.float32)}
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  if name == "deeplab_r18":
    assert jax.tree.leaves(batch_stats)
  # Every convolution runs in bfloat16 but the classifier's, kept in float32.
  assert _conv_input_dtypes(jax.make_jaxpr(loss_fn)(params).jaxpr) == {
      jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}


# bfloat16 keeps 8 significant bits: every activation is rounded by up to 2^-9 (0.2%)
# relative, and the errors of ~10-20 rounded layers move the logits by ~1%; the loss, a
# mean over pixels, moves less. Measured on these inputs (seeds 0-2): UNet logits 0.6-1.1%,
# loss 0.01-0.06%; DeepLab R18 (BatchNorm in eval mode, see below) logits 0.8%.
_LOGITS_RTOL = 0.05
_LOSS_RTOL = 1e-2


def _relative_error(value, reference):
  return np.linalg.norm(_flat(value) - _flat(reference)) / np.linalg.norm(_flat(reference))


def test_bfloat16_unet_loss_logits_and_gradients_are_close_to_float32(loss_and_grads):
  loss, logits, _, grads, _ = loss_and_grads("unet")
  loss_h, logits_h, _, grads_h, _ = loss_and_grads("unet", dtype=jnp.bfloat16)
  np.testing.assert_allclose(loss_h, loss, rtol=_LOSS_RTOL)
  assert _relative_error(logits_h, logits) <= _LOGITS_RTOL
  # At random initialisation the gradient is ill-conditioned: perturbing the float32 UNet's
  # weights alone by bfloat16's rounding (2^-9 relative) moves it by 1-7%, and bfloat16
  # rounds every activation too, which measured 4-13% (seeds 0-2). A missing cast or a
  # wrong layer gives O(1).
  assert _relative_error(grads_h, grads) <= 0.2


def test_bfloat16_deeplab_logits_are_close_to_float32(inputs):
  # BatchNorm in eval mode: in train mode on a batch of 2, the ASPP pooling branch
  # normalises 2 values per channel, which makes even the float32 network jump by ~5% when
  # its weights are perturbed by 2^-9, so no tolerance there would test bfloat16.
  images, labels, variables = inputs("deeplab_r18")
  build, _ = _MODELS["deeplab_r18"]
  logits, logits_h = (jax.jit(lambda v, model=build(dtype=dtype): model.apply(
      v, images, train=False)["logits"])(variables) for dtype in (jnp.float32, jnp.bfloat16))
  assert logits_h.dtype == jnp.float32
  assert _relative_error(logits_h, logits) <= _LOGITS_RTOL
  np.testing.assert_allclose(losses.cross_entropy(logits_h, labels)[0],
                             losses.cross_entropy(logits, labels)[0], rtol=_LOSS_RTOL)


def test_bfloat16_classifier_bias_gradient_is_summed_in_float32(inputs, loss_and_grads):
  # The classifier's bias gradient is the sum over pixels of the logits' cotangent,
  # (softmax - one_hot) / #pixels. Summed in bfloat16, XLA:CPU's sum stalls once the partial
  # sum outgrows the terms (4096 values summing to 0.81 gave 0.25), so the classifier runs
  # in float32 whatever the compute dtype.
  _, labels, _ = inputs("unet")
  _, logits_h, _, grads_h, _ = loss_and_grads("unet", dtype=jnp.bfloat16)
  cotangent = (jax.nn.softmax(logits_h) - jax.nn.one_hot(labels, NUM_CLASSES)) / labels.size
  expected = np.asarray(cotangent, np.float64).sum(axis=(0, 1, 2))
  np.testing.assert_allclose(grads_h["classifier"]["bias"], expected, rtol=1e-2)


def test_supervised_train_step_with_bfloat16_and_remat(inputs, loss_and_grads):
  config = config_lib.base_config("supervised")
  config.model.update(dtype="bfloat16", remat=True)
  config.model.unet.update(width=4, depth=2)
  config.dataset.crop_size = 16
  config.batch_size = 2
  # Plain SGD: its first update is -lr * gradient, which the float32 gradient predicts.
  config.optimizer.update(name="sgd", weight_decay=0.0, learning_rate=0.1)
  config_lib.validate_config(config)
  mesh = parallel.make_mesh(1)
  run = train.build_run(config, num_classes=NUM_CLASSES, mesh=mesh)
  assert run.model.dtype == jnp.bfloat16 and run.model.remat
  images, labels, variables = inputs("unet")
  state = parallel.replicate(run.state.replace(
      params=variables["params"], opt_state=run.tx.init(variables["params"])), mesh)
  step = parallel.compile_step(run.method.make_train_step(run.model, run.tx, config), mesh,
                               donate_state=False)
  new_state, metrics = step(
      state, jax.device_put({"image": images, "label": labels}, parallel.batch_sharding(mesh)),
      jax.random.key(0))

  floats = [leaf for leaf in jax.tree.leaves((new_state.params, new_state.opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert floats and {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}
  loss, _, _, grads, _ = loss_and_grads("unet")
  np.testing.assert_allclose(metrics["loss"], loss, rtol=_LOSS_RTOL)
  update = _flat(new_state.params) - _flat(variables["params"])
  # Within the bfloat16 gradient tolerance of test_bfloat16_unet_loss_... above.
  assert _relative_error(update, -0.1 * _flat(grads)) <= 0.2


def test_remat_must_be_a_bool():
  config = config_lib.base_config()
  assert config.model.remat is False
  # ConfigDict refuses the wrong type on assignment; a config rebuilt from a dict does not.
  config.unlock()
  config.model = ml_collections.ConfigDict({**config.model.to_dict(), "remat": "yes"})
  with pytest.raises(ValueError, match=r"config\.model\.remat='yes' has type str; expected bool"):
    config_lib.validate_config(config)
