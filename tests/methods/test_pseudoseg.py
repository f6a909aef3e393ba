"""PseudoSeg: Grad-CAM, attention refinement, calibration and losses by hand; the step.

The step is compiled as the training loop compiles it (``parallel.compile_step``) on a
depth-1 width-4 UNet, for 1 and 4 fake devices.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import models, parallel
from jaxsemiseg.methods import pseudoseg, pseudoseg_calibration, supervised
from jaxsemiseg.models import layers, pseudoseg_heads

import tiny_data

SIZE, BATCH, NUM_CLASSES = 16, 4, tiny_data.NUM_CLASSES
NUM_STEPS = 10


def _np_softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _np_normalised_cam(raw, labels):
  cam = np.maximum(raw, 0.0) * labels[:, None, None, :]
  peak = cam.max(axis=(1, 2), keepdims=True)
  return np.where(peak > 0, cam / np.maximum(peak, 1e-5), 0.0)


# --- Grad-CAM ---


def test_grad_cam_of_a_linear_head_is_relu_of_the_pooled_weights_times_label_over_max():
  rng = np.random.default_rng(0)
  features = rng.uniform(0.1, 1.0, (2, 3, 4, 5)).astype(np.float32)
  kernel = rng.normal(size=(5, 3)).astype(np.float32)
  # Features are positive: class 1's CAM is ReLU'd to 0 everywhere, class 2's is positive.
  kernel[:, 1], kernel[:, 2] = -np.abs(kernel[:, 1]), np.abs(kernel[:, 2])
  bias = rng.normal(size=(3,)).astype(np.float32)
  labels = np.array([[1, 1, 0], [1, 0, 1]], np.float32)

  def classify(a):
    return a.mean(axis=(1, 2)) @ kernel + bias

  cam = pseudoseg_calibration.grad_cam(classify, jnp.asarray(features), jnp.asarray(labels))
  # d logit_c / d A_hwk = kernel[k, c] / (h w) at every pixel, so that is its mean too.
  expected = _np_normalised_cam(features @ (kernel / 12.0), labels)
  np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-6)
  assert cam.shape == (2, 3, 4, 3)
  np.testing.assert_array_equal(cam[0, ..., 1], 0.0)  # ReLU'd away: 0, not 0/0.
  np.testing.assert_array_equal(cam[0, ..., 2], 0.0)  # Label 0.
  np.testing.assert_allclose(cam[1, ..., 2].max(), 1.0, rtol=1e-6)
  gradient = jax.grad(lambda a: pseudoseg_calibration.grad_cam(
      classify, a, jnp.asarray(labels)).sum())(jnp.asarray(features))
  np.testing.assert_array_equal(gradient, 0.0)


def test_grad_cam_weights_are_the_spatial_mean_of_the_gradient_for_a_nonlinear_head():
  rng = np.random.default_rng(1)
  features = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  labels = jnp.ones((2, 2))

  def classify(a):
    return jnp.tanh(a).mean(axis=(1, 2)) ** 2 @ kernel

  weights = []
  for c in range(2):
    per_pixel = jax.grad(lambda a, c=c: classify(a)[:, c].sum())(features)
    weights.append(np.asarray(per_pixel).mean(axis=(1, 2)))  # [B, K]
  raw = np.einsum("bhwk,cbk->bhwc", np.asarray(features), np.stack(weights))
  cam = pseudoseg_calibration.grad_cam(classify, features, labels)
  np.testing.assert_allclose(cam, _np_normalised_cam(raw, np.ones((2, 2))), rtol=1e-5,
                             atol=1e-6)


# --- Self-attention refinement ---


def _np_refined_scores(queries, keys, cam, valid):
  batch, height, width, dim = queries.shape
  q = queries.reshape(batch, -1, dim)
  k = keys.reshape(batch, -1, dim)
  v = valid.reshape(batch, -1)
  logits = q @ k.transpose(0, 2, 1) / math.sqrt(dim)
  # The reference adds -1e9 in float32, which rounds every masked logit to -1e9.
  logits = np.where(v[:, :, None] & v[:, None, :], logits, -1e9)
  refined = (_np_softmax(logits) @ cam.reshape(batch, height * width, -1)).reshape(
      cam.shape) + cam
  return np.concatenate([2 - refined.max(-1, keepdims=True), refined], axis=-1)


def _attention_inputs(seed=0):
  rng = np.random.default_rng(seed)
  queries = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  keys = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  cam = rng.uniform(size=(2, 3, 3, 2)).astype(np.float32)
  valid = np.ones((2, 3, 3), bool)
  valid[1, 2, :] = False
  return queries, keys, cam, valid


def test_attention_refined_scores_match_numpy():
  queries, keys, cam, valid = _attention_inputs()
  scores = pseudoseg_heads.attention_refined_scores(*map(jnp.asarray, (queries, keys, cam,
                                                                       valid)))
  expected = _np_refined_scores(queries, keys, cam, valid)
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  # A valid query attends to valid keys only: padding's CAM never leaks into it.
  changed = cam.copy()
  changed[1, 2] = 5.0
  moved = pseudoseg_heads.attention_refined_scores(*map(jnp.asarray, (queries, keys, changed,
                                                                      valid)))
  np.testing.assert_allclose(moved[1, :2], scores[1, :2], rtol=1e-6)


def test_attention_module_is_batch_norm_of_a_conv_of_the_scores_and_learns_alone():
  _, _, cam, valid = _attention_inputs()
  hypercolumn = np.random.default_rng(2).normal(size=(2, 3, 3, 6)).astype(np.float32)
  module = pseudoseg_heads.SelfAttentionRefinement(3, attention_dim=4)
  variables = module.init(jax.random.key(0), hypercolumn, cam, valid, train=False)
  params = variables["params"]
  stats = {"bn": {"mean": jnp.array([0.1, -0.2, 0.3]), "var": jnp.array([2.0, 0.5, 1.5])}}
  logits = module.apply({"params": params, "batch_stats": stats}, hypercolumn, cam, valid,
                        train=False)
  kernel = lambda name: np.asarray(params[name]["kernel"])[0, 0]
  scores = _np_refined_scores(hypercolumn @ kernel("query"), hypercolumn @ kernel("key"),
                              cam, valid)
  expected = ((scores @ kernel("classifier") - np.asarray(stats["bn"]["mean"]))
              / np.sqrt(np.asarray(stats["bn"]["var"]) + 1e-3) + params["bn"]["bias"])
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
  assert "scale" not in params["bn"]

  def total(params, hypercolumn, cam):
    return module.apply({"params": params, "batch_stats": stats}, hypercolumn, cam, valid,
                        train=False)[..., 1].sum()

  d_params, d_hypercolumn, d_cam = jax.grad(total, argnums=(0, 1, 2))(
      params, jnp.asarray(hypercolumn), jnp.asarray(cam))
  np.testing.assert_array_equal(d_hypercolumn, 0.0)
  np.testing.assert_array_equal(d_cam, 0.0)
  assert np.abs(d_params["query"]["kernel"]).max() > 0
  with pytest.raises(ValueError, match="cam has 3 channels; expected num_classes - 1 = 2"):
    module.apply(variables, hypercolumn, np.zeros((2, 3, 3, 3), np.float32), valid,
                 train=False)


# --- Calibration ---


def test_logit_norm_divides_both_by_one_scalar_over_their_concatenation():
  rng = np.random.default_rng(3)
  decoder = rng.normal(0, 3.0, (2, 4, 4, 3)).astype(np.float32)
  attention = rng.normal(0, 0.5, (2, 4, 4, 3)).astype(np.float32)
  scale = 1 / np.sqrt(np.mean(np.concatenate([decoder, attention]) ** 2) + 1e-8)
  normalised = pseudoseg_calibration.normalise_logits(jnp.asarray(decoder),
                                                      jnp.asarray(attention))
  np.testing.assert_allclose(normalised[0], decoder * scale, rtol=1e-5)
  np.testing.assert_allclose(normalised[1], attention * scale, rtol=1e-5)


def test_sharpening_raises_to_one_over_t_and_renormalises():
  probs = jnp.array([0.6, 0.3, 0.1])
  np.testing.assert_allclose(pseudoseg_calibration.sharpen(probs, temperature=0.5),
                             np.array([0.36, 0.09, 0.01]) / 0.46, rtol=1e-6)
  np.testing.assert_allclose(pseudoseg_calibration.sharpen(probs, temperature=1.0), probs,
                             rtol=1e-6)


def test_soft_pseudo_labels_fuse_normalised_softmaxes_then_sharpen_without_gradient():
  rng = np.random.default_rng(4)
  decoder = rng.normal(0, 2.0, (1, 2, 2, 3)).astype(np.float32)
  attention = rng.normal(size=(1, 2, 2, 3)).astype(np.float32)
  scale = 1 / np.sqrt(np.mean(np.concatenate([decoder, attention]) ** 2) + 1e-8)
  fused = (_np_softmax(decoder * scale) + _np_softmax(attention * scale)) / 2
  expected = fused**2 / (fused**2).sum(-1, keepdims=True)
  targets = pseudoseg_calibration.soft_pseudo_labels(
      jnp.asarray(decoder), jnp.asarray(attention), temperature=0.5)
  np.testing.assert_allclose(targets, expected, rtol=1e-5)
  gradient = jax.grad(lambda d: pseudoseg_calibration.soft_pseudo_labels(
      d, jnp.asarray(attention), temperature=0.5)[..., 0].sum())(jnp.asarray(decoder))
  np.testing.assert_array_equal(gradient, 0.0)


def test_feature_grids_follow_the_models_strides():
  assert [pseudoseg_calibration.feature_stride(image, feature) for image, feature in
          ((513, 33), (321, 21), (64, 4), (16, 8), (65, 9), (8, 8))] == [16, 16, 16, 2, 8, 1]
  mask = jnp.arange(2 * 9 * 9).reshape(2, 9, 9) % 3 == 0
  np.testing.assert_array_equal(pseudoseg_calibration.at_feature_grid(mask, (3, 3)),
                                mask[:, ::4, ::4])
  coarse = jnp.asarray(np.random.default_rng(5).normal(size=(1, 3, 3, 2)), jnp.float32)
  np.testing.assert_array_equal(pseudoseg_calibration.to_image_grid(coarse, (9, 9)),
                                layers.upsample_bilinear(coarse, (9, 9), stride=4))


def test_hypercolumn_concatenates_the_last_two_stages_at_the_last_resolution():
  first = jnp.zeros((1, 8, 8, 1))
  previous = jnp.arange(16.0).reshape(1, 4, 4, 1)
  last = jnp.ones((1, 2, 2, 3))
  column = pseudoseg_calibration.hypercolumn((first, previous, last))
  # Halving the size bilinearly averages each 2x2 cell.
  np.testing.assert_allclose(column[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])
  np.testing.assert_array_equal(column[..., 1:], 1.0)
  same = pseudoseg_calibration.hypercolumn((last, 2 * last))
  np.testing.assert_array_equal(same, jnp.concatenate([last, 2 * last], -1))
  with pytest.raises(ValueError, match="needs the last two"):
    pseudoseg_calibration.hypercolumn((last,))


# --- Targets, views and losses ---


def test_image_labels_are_the_foreground_classes_present_ignoring_255():
  labels = jnp.array([[[0, 2], [255, 2]], [[0, 0], [0, 255]], [[1, 3], [2, 0]]])
  np.testing.assert_array_equal(
      pseudoseg.image_labels_from_masks(labels, num_classes=4),
      [[0, 1, 0], [0, 0, 0], [1, 1, 1]])


def test_consistency_loss_sums_soft_ce_over_valid_pixels_and_divides_by_their_number():
  # Pixel 0: target (1/2, 1/2), prediction (3/4, 1/4): CE = (log(4/3) + log 4) / 2.
  # Pixel 1: target (1, 0), prediction (1/2, 1/2): CE = log 2.
  # Pixels 2 (Cutout) and 3 (padding): huge losses, neither summed nor counted.
  logits = jnp.array([[[math.log(3), 0.0], [0.0, 0.0], [-40.0, 40.0], [40.0, -40.0]]])
  targets = jnp.array([[[0.5, 0.5], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
  valid = jnp.array([[True, True, False, False]])
  loss = pseudoseg.consistency_loss(logits, targets, valid)
  expected = ((math.log(4 / 3) + math.log(4)) / 2 + math.log(2)) / 2
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(pseudoseg.consistency_loss(logits, targets, jnp.zeros_like(valid))) == 0.0


def test_strong_view_jitters_every_image_and_cuts_a_mean_pixel_square_out_of_valid():
  images = jnp.asarray(np.random.default_rng(6).uniform(0.2, 0.8, (3, SIZE, SIZE, 3)),
                       jnp.float32)
  valid = jnp.ones((3, SIZE, SIZE), bool).at[:, -2:].set(False)
  strong, strong_valid = jax.jit(lambda k, x, v: pseudoseg.strong_view(
      k, x, v, cutout_fraction=0.25))(jax.random.key(0), images, valid)
  boxes = np.asarray(valid & ~strong_valid)
  mean = np.asarray(layers.IMAGENET_MEAN)
  for index in range(3):
    box = np.asarray(~strong_valid[index] & np.asarray(valid[index]))
    filled = np.all(np.isclose(strong[index], mean, atol=1e-6), axis=-1)
    rows, cols = np.nonzero(filled)
    # One square of side 0.25 * 16 = 4, clipped at the border.
    assert 0 < filled.sum() <= 16 and filled.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert np.all(box <= filled) and np.all(filled[:-2] == box[:-2])
    # p = 1: every image is jittered outside the square.
    assert not np.allclose(strong[index][~filled], images[index][~filled], atol=1e-3)
  assert not np.array_equal(boxes[0], boxes[1])
  np.testing.assert_array_equal(strong_valid[:, -2:], False)
  unchanged = pseudoseg.strong_view(jax.random.key(0), images, valid, cutout_fraction=0.0)[1]
  np.testing.assert_array_equal(unchanged, valid)


def test_attention_logits_train_only_the_attention_module():
  _, state = _model_and_state()
  heads = pseudoseg.make_heads(NUM_CLASSES, config_lib.base_config("pseudoseg").pseudoseg)
  rng = np.random.default_rng(7)
  # The depth-1 UNet's stages: its level-0 block output and its bottleneck.
  stages = (jnp.asarray(rng.uniform(size=(2, SIZE, SIZE, 4)), jnp.float32),
            jnp.asarray(rng.uniform(size=(2, SIZE // 2, SIZE // 2, 8)), jnp.float32))
  labels = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  valid = jnp.ones((2, SIZE, SIZE), bool)

  def loss(head_params, stages):
    logits, _ = pseudoseg.attention_logits(heads, head_params,
                                           state.extras["head_batch_stats"], stages, labels,
                                           valid)
    return logits[..., 1].sum(), logits

  (_, logits), (d_heads, d_stages) = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True))(state.extras["heads"], stages)
  assert logits.shape == (2, SIZE, SIZE, NUM_CLASSES)
  assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(d_stages))
  assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(d_heads["classifier"]))
  assert np.abs(d_heads["attention"]["query"]["kernel"]).max() > 0


# --- State, step and configs ---


def _model_and_state(tx=None):
  model = tiny_data.tiny_unet()
  config = config_lib.base_config("pseudoseg")
  state = pseudoseg.init_state(jax.random.key(0), model, tx or optax.sgd(0.1),
                               {"image": jnp.zeros((1, SIZE, SIZE, 3))}, config)
  return model, state


def test_init_state_keeps_the_model_and_adds_the_heads_with_their_own_optimizer_state():
  model, state = _model_and_state()
  reference = supervised.init_state(jax.random.key(0), model, optax.sgd(0.1),
                                    {"image": jnp.zeros((1, SIZE, SIZE, 3))}, None)
  jax.tree.map(np.testing.assert_array_equal, state.params, reference.params)
  heads = state.extras["heads"]
  # The UNet's bottleneck has 8 channels; the hypercolumn adds its last level's 4.
  assert heads["classifier"]["dense"]["kernel"].shape == (8, NUM_CLASSES - 1)
  assert heads["attention"]["query"]["kernel"].shape == (1, 1, 12, 128)
  assert heads["attention"]["classifier"]["kernel"].shape == (1, 1, NUM_CLASSES, NUM_CLASSES)
  assert set(state.extras["head_batch_stats"]["bn"]) == {"mean", "var"}
  assert (jax.tree.structure(state.extras["head_opt_state"])
          == jax.tree.structure(optax.sgd(0.1).init(heads)))
  assert pseudoseg.num_classes_of(heads) == NUM_CLASSES


def _coloured_batch(seed: int) -> dict:
  """Squares of class 1 (red) or 2 (blue) on a dark background; image_u 0 is padded."""
  rng = np.random.default_rng(seed)
  colours = np.array([[20, 20, 20], [230, 40, 40], [40, 40, 230]], np.float32) / 255
  batch = {}
  for suffix in ("", "_u"):
    labels = np.zeros((BATCH, SIZE, SIZE), np.int32)
    for index in range(BATCH):
      top, left = rng.integers(0, SIZE // 2, size=2)
      labels[index, top:top + SIZE // 2, left:left + SIZE // 2] = 1 + index % 2
    images = colours[labels] + rng.uniform(0, 0.08, (BATCH, SIZE, SIZE, 3))
    batch["image" + suffix] = images.astype(np.float32)
    if suffix:
      valid = np.ones((BATCH, SIZE, SIZE), bool)
      valid[0, -3:] = False
      batch["image_u"][~valid] = 0.0
      batch["valid_u"] = valid
    else:
      batch["label"] = labels
  return batch


@pytest.fixture(scope="module")
def compiled_steps():
  """The step compiled for 1 and 4 devices, with the state and batch placed for each."""
  tx = optax.sgd(0.1)
  model, state = _model_and_state(tx)
  config = config_lib.base_config("pseudoseg")
  batch = _coloured_batch(0)
  runs = {}
  for devices in (1, 4):
    mesh = parallel.make_mesh(devices)
    step = parallel.compile_step(pseudoseg.make_train_step(model, tx, config), mesh)
    runs[devices] = (step, parallel.replicate(state, mesh),
                     parallel.to_global_batch(batch, mesh))
  return runs


def test_step_reports_its_terms_and_learns_a_fixed_batch(compiled_steps):
  step, state, batch = compiled_steps[1]
  state, history = tiny_data.train_on_fixed_batch(step, state, batch, NUM_STEPS)
  for metrics in history:
    assert metrics.keys() == {"loss", "grad_norm", "loss_x", "loss_ce", "loss_cls",
                              "loss_att", "loss_u", "pseudo_confidence", "no_class_fraction"}
    np.testing.assert_allclose(
        metrics["loss"], metrics["loss_x"] + metrics["loss_cls"] + metrics["loss_att"]
        + metrics["loss_u"], rtol=1e-5)
  first, last = history[0], history[-1]
  assert int(state.step) == NUM_STEPS
  assert last["loss"] < 0.75 * first["loss"], [m["loss"] for m in history]
  for name in ("loss_x", "loss_cls", "loss_att", "loss_u"):
    assert last[name] < first[name], (name, [m[name] for m in history])
  assert 0.0 < first["pseudo_confidence"] < last["pseudo_confidence"] <= 1.0


@pytest.mark.parametrize("first_class_bias, expected", [(-50.0, 1.0), (50.0, 0.0)])
def test_no_class_fraction_counts_views_whose_classifier_finds_no_class(
    compiled_steps, first_class_bias, expected):
  step, state, batch = compiled_steps[1]
  state = tiny_data.copy_state(state)  # the step donates its state
  heads = state.extras["heads"]
  classifier = heads["classifier"]
  # Every class but the first is absent from every view; one present class is enough.
  bias = jnp.full_like(classifier["dense"]["bias"], -50.0).at[0].set(first_class_bias)
  dense = {**classifier["dense"], "bias": bias}
  state = state.replace(extras={**state.extras, "heads": {
      **heads, "classifier": {**classifier, "dense": dense}}})
  _, metrics = step(state, batch, jax.random.key(0))
  assert float(metrics["no_class_fraction"]) == expected


def test_one_and_four_devices_agree(compiled_steps):
  results = {}
  for devices, (step, state, batch) in compiled_steps.items():
    state, metrics = step(tiny_data.copy_state(state), batch, jax.random.key(3))
    state, metrics = step(state, batch, jax.random.key(4))
    results[devices] = jax.device_get((state.params, state.batch_stats, state.extras,
                                       metrics))
  one, four = results[1], results[4]
  for name in one[-1]:
    np.testing.assert_allclose(four[-1][name], one[-1][name], rtol=1e-4, atol=1e-7,
                               err_msg=name)
  # atol 1e-5: the attention module's BatchNorm divides by a small batch deviation at
  # init, which makes the summation order of 1 vs 4 devices visible at ~1e-6; a
  # per-device logit norm moves them by 5e-4 after these two steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               one[:-1], four[:-1])


@pytest.mark.parametrize("field, value, message", [
    ("unlabeled_weight", -1.0, r"config\.pseudoseg\.unlabeled_weight=-1\.0; expected >= 0"),
    ("temperature", 0.0, r"config\.pseudoseg\.temperature=0\.0; expected > 0"),
    ("attention_dim", 0, r"config\.pseudoseg\.attention_dim=0"),
    ("cutout_fraction", 1.5, r"config\.pseudoseg\.cutout_fraction=1\.5"),
])
def test_check_config_names_the_field(field, value, message):
  config = config_lib.base_config("pseudoseg")
  config.pseudoseg[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(config)


def test_heads_need_a_foreground_class():
  with pytest.raises(ValueError, match="num_classes=1"):
    pseudoseg.make_heads(1, config_lib.base_config("pseudoseg").pseudoseg)


def test_models_return_their_stages_as_backbone_features():
  images = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
  deeplab = models.DeepLabV3Plus(num_classes=3, backbone="resnet18", aspp_channels=8,
                                 low_level_channels=8, decoder_channels=8)
  variables = jax.eval_shape(lambda x: deeplab.init(jax.random.key(0), x, train=False),
                             images)
  outputs = jax.eval_shape(lambda v, x: deeplab.apply(v, x, train=False), variables, images)
  assert [s.shape for s in outputs["backbone_features"]] == [
      (2, 9, 9, 64), (2, 5, 5, 128), (2, 3, 3, 256), (2, 3, 3, 512)]
  unet = models.UNet(num_classes=3, width=4, depth=2)
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: unet.init(jax.random.key(0), x, train=False), images)
  outputs = jax.eval_shape(lambda v, x: unet.apply(v, x, train=False), variables, images)
  assert [s.shape for s in outputs["backbone_features"]] == [
      (2, 16, 16, 4), (2, 8, 8, 8), (2, 4, 4, 16)]


def test_configs_validate_and_voc_follows_the_reference():
  config = tiny_data.load_config("pseudoseg")
  config_lib.validate_config(config)
  assert config.method == "pseudoseg"
  settings = config.pseudoseg
  assert (settings.temperature, settings.unlabeled_weight, settings.attention_dim) == (
      0.5, 1.0, 128)
  assert round(settings.cutout_fraction * config.dataset.crop_size) == 12
  voc = tiny_data.load_config("voc_pseudoseg")
  config_lib.validate_config(voc)
  assert (voc.dataset.num_labeled, voc.dataset.crop_size) == (183, 513)
  assert round(voc.pseudoseg.cutout_fraction * voc.dataset.crop_size) == 100
  assert (voc.optimizer.learning_rate, voc.optimizer.schedule, voc.num_steps) == (
      0.007, "poly", 30_000)
  assert (voc.batch_size, voc.unlabeled_batch_size) == (64, 64)
  assert voc.model.deeplabv3plus.output_stride == 16
  assert tiny_data.load_config("voc_pseudoseg", "92").dataset.num_labeled == 92
  with pytest.raises(ValueError, match="voc_pseudoseg.py:0"):
    tiny_data.load_config("voc_pseudoseg", "0")
