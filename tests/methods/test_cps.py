"""CPS's cross supervision and the shared co-training members, on a tiny UNet.

CPS's step (its terms, learning, 1 vs 4 devices, a run of the loop) is checked with the
other methods in ``test_self_training.py``.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import evaluate, inference, losses, parallel, train, uncertainty
from jaxsemiseg.augment import mixing
from jaxsemiseg.methods import common, cotraining, cps

import tiny_data

SIZE, BATCH, NUM_CLASSES = 16, 2, tiny_data.NUM_CLASSES


@pytest.fixture(scope="module")
def setup():
  """A depth-1 width-4 UNet, two stacked members and an unlabeled batch pair with masks."""
  model = tiny_data.tiny_unet()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((BATCH, SIZE, SIZE, 3)), jnp.float32)
  partner_images = jnp.asarray(rng.random((BATCH, SIZE, SIZE, 3)), jnp.float32)
  state = cotraining.init_members(jax.random.key(0), model, optax.sgd(0.1), images,
                                  num_members=2)
  settings = config_lib.base_config("cps").cps
  masks = cps.box_masks(jax.random.key(1), BATCH, (SIZE, SIZE), settings=settings)
  return model, state, images, partner_images, masks


def _single_logits(model, state, index, images):
  outputs, _ = common.forward(model, cotraining.member(state.params, index),
                              cotraining.member(state.batch_stats, index), images, train=True)
  return outputs["logits"]


def test_members_differ_at_init_and_have_their_own_optimizer_state(setup):
  _, state, *_ = setup
  kernels = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    assert leaf.shape[0] == 2
    if path[-1].key == "kernel":  # Biases and norm scales start equal by design.
      kernels += 1
      assert not np.allclose(leaf[0], leaf[1]), jax.tree_util.keystr(path)
  assert kernels > 0
  assert cotraining.num_members_of(state.params) == 2
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      jax.vmap(optax.sgd(0.1).init)(state.params))


def test_box_masks_are_per_image_cps_boxes(setup):
  *_, masks = setup
  assert masks.shape == (BATCH, SIZE, SIZE) and masks.dtype == bool
  # 3 XOR-toggled boxes of 0.25-0.5 of the area in total: neither empty nor full.
  assert np.all(masks.any(axis=(1, 2))) and not np.any(masks.all(axis=(1, 2)))
  assert not np.array_equal(masks[0], masks[1])


def test_pseudo_labels_are_each_nets_argmax_of_the_unmixed_images_mixed(setup):
  model, state, images, partner_images, masks = setup
  labels, _ = cps.mixed_pseudo_labels(model, state.params, state.batch_stats, images,
                                      partner_images, masks)
  assert labels.shape == (2, BATCH, SIZE, SIZE)
  for index in range(2):
    # The reference forwards the two unlabeled batches one at a time: the UNet's
    # GroupNorm makes that the same as one call.
    own = jnp.argmax(_single_logits(model, state, index, images), -1)
    partner = jnp.argmax(_single_logits(model, state, index, partner_images), -1)
    np.testing.assert_array_equal(labels[index], np.where(masks, partner, own))
  assert not np.array_equal(labels[0], labels[1])


def test_each_net_learns_the_other_nets_labels(setup):
  model, state, images, partner_images, masks = setup
  labels, _ = cps.mixed_pseudo_labels(model, state.params, state.batch_stats, images,
                                      partner_images, masks)
  mixed = mixing.mix(masks, images, partner_images)
  logits = jnp.stack([_single_logits(model, state, i, mixed) for i in range(2)])
  valid = jnp.ones((BATCH, SIZE, SIZE), bool).at[0, -3:].set(False)
  terms = cps.cross_supervision_losses(logits, labels, valid)
  for index in range(2):
    other_labels = jnp.where(valid, labels[1 - index], 255)
    expected, _ = losses.cross_entropy(logits[index], other_labels)
    np.testing.assert_allclose(terms[index], expected, rtol=1e-6)
    own_labels = jnp.where(valid, labels[index], 255)
    assert abs(float(terms[index] - losses.cross_entropy(logits[index], own_labels)[0])) > 1e-3


@pytest.mark.parametrize("trained", [0, 1])
def test_cps_gradient_reaches_a_net_only_through_its_own_prediction(setup, trained):
  model, state, images, partner_images, masks = setup
  valid = jnp.ones((BATCH, SIZE, SIZE), bool)

  def cps_term(params):
    # The pseudo-labels come from the same parameters as the predictions being trained.
    labels, _ = cps.mixed_pseudo_labels(model, params, state.batch_stats, images,
                                        partner_images, masks)
    outputs, _ = cotraining.forward_members(
        model, params, state.batch_stats, mixing.mix(masks, images, partner_images),
        train=True)
    return cps.cross_supervision_losses(outputs["logits"], labels, valid)[trained]

  grads = jax.jit(jax.grad(cps_term))(state.params)
  norms = [optax.tree.norm(cotraining.member(grads, i)) for i in range(2)]
  assert float(norms[trained]) > 1e-4
  assert float(norms[1 - trained]) == 0.0


def test_step_is_the_same_with_the_members_vmapped_or_looped(setup):
  model, state, images, partner_images, _ = setup
  rng = np.random.default_rng(1)
  batch = {"image": images, "label": jnp.asarray(rng.integers(0, NUM_CLASSES, images.shape[:3])),
           "image_u": partner_images, "valid_u": jnp.ones(images.shape[:3], bool),
           "image_u2": images[::-1], "valid_u2": jnp.ones(images.shape[:3], bool)}
  results = {}
  for member_map in ("vmap", "loop"):
    config = config_lib.base_config("cps")
    config.member_map = member_map
    step = jax.jit(cps.make_train_step(model, optax.sgd(0.1), config))
    results[member_map] = step(state, batch, jax.random.key(3))
  (vmapped, vmapped_metrics), (looped, looped_metrics) = results["vmap"], results["loop"]
  assert float(looped_metrics["loss_cps"]) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               (vmapped.params, vmapped_metrics), (looped.params, looped_metrics))
  # The step changed the members, so equal states are not just the unchanged start.
  assert not np.allclose(looped.params["classifier"]["kernel"],
                         state.params["classifier"]["kernel"])


def test_cutmix_step_cross_supervises_with_the_other_nets_mixed_labels_numpy(setup):
  # Each net's CE on the mixed images against the other net's argmax of the box-mixed
  # predictions of the two un-mixed batches, over the mixed images' valid pixels.
  model, state, images, partner_images, _ = setup
  rng = np.random.default_rng(2)
  valid_u = np.ones(images.shape[:3], bool)
  valid_u[0, :, -3:] = False
  batch = {"image": images, "label": jnp.asarray(rng.integers(0, NUM_CLASSES, images.shape[:3])),
           "image_u": partner_images, "valid_u": jnp.asarray(valid_u),
           "image_u2": images[::-1], "valid_u2": jnp.ones(images.shape[:3], bool)}
  config = config_lib.base_config("cps")
  key = jax.random.key(4)
  _, metrics = jax.jit(cps.make_train_step(model, optax.sgd(0.1), config))(
      tiny_data.copy_state(state), batch, key)

  masks = np.asarray(cps.box_masks(jax.random.split(key, 4)[0], BATCH, (SIZE, SIZE),
                                   settings=config.cps))
  assert 0 < masks.mean() < 1
  mixed_images = np.where(masks[..., None], batch["image_u2"], batch["image_u"])
  mixed_valid = np.where(masks, batch["valid_u2"], valid_u)
  log_softmax = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
  total = 0.0
  for net in range(2):
    other = 1 - net
    mixed_logits = np.where(masks[..., None],
                            _single_logits(model, state, other, batch["image_u2"]),
                            _single_logits(model, state, other, batch["image_u"]))
    labels = mixed_logits.argmax(-1)
    log_probs = log_softmax(np.asarray(
        _single_logits(model, state, net, jnp.asarray(mixed_images)), np.float64))
    ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    total += ce[mixed_valid].mean()
  np.testing.assert_allclose(metrics["loss_cps"], total, rtol=1e-5)


def test_cps_without_cutmix_cross_supervises_labeled_and_unlabeled_images(setup):
  model, state, images, unlabeled, _ = setup
  labels = jnp.asarray(np.random.default_rng(2).integers(0, NUM_CLASSES, images.shape[:3]))
  labels = labels.at[0, :4].set(losses.IGNORE_INDEX)
  valid_u = jnp.ones(images.shape[:3], bool).at[1, -3:].set(False)
  batch = {"image": images, "label": labels, "image_u": unlabeled, "valid_u": valid_u,
           "image_u2": images[::-1], "valid_u2": jnp.ones(images.shape[:3], bool)}
  config = config_lib.base_config("cps")
  config.cps.cutmix, config.cps.cps_weight = False, 1.5
  _, metrics = jax.jit(cps.make_train_step(model, optax.sgd(0.0), config))(
      state, batch, jax.random.key(3))
  # The tiny UNet has no dropout, so the step's train-mode passes are these.
  logits = jnp.stack([jnp.concatenate([_single_logits(model, state, i, images),
                                       _single_logits(model, state, i, unlabeled)])
                      for i in range(2)])
  pseudo = jnp.argmax(logits, axis=-1)
  valid = jnp.concatenate([labels != losses.IGNORE_INDEX, valid_u])
  expected_cps = sum(
      losses.cross_entropy(logits[i], jnp.where(valid, pseudo[1 - i], 255))[0]
      for i in range(2))
  expected_x = sum(losses.cross_entropy(logits[i, :BATCH], labels)[0] for i in range(2))
  np.testing.assert_allclose(metrics["loss_cps"], expected_cps, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], expected_x + 1.5 * expected_cps, rtol=1e-5)


def test_average_predictor_is_the_mean_of_the_members(setup):
  model, state, images, *_ = setup
  average = cotraining.make_predict_fn(model, config_lib.base_config("cps"))(state, images)
  members = [cotraining.member_predict_fn(model, i)(state, images) for i in range(2)]
  np.testing.assert_allclose(average, (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-7)
  alone = state.replace(params=cotraining.member(state.params, 1),
                        batch_stats=cotraining.member(state.batch_stats, 1))
  np.testing.assert_allclose(members[1], evaluate.make_predict_fn(model)(alone, images),
                             rtol=1e-6)
  assert not np.allclose(members[0], members[1])
  assert cps.make_predict_fn is cotraining.make_predict_fn


def test_evaluate_members_scores_each_net_and_the_average(tmp_path):
  root = tiny_data.write_dataset(str(tmp_path))
  config = tiny_data.tiny_config(root, **{"model.unet.depth": 1})
  config.method = "cps"
  config.cps = config_lib.base_config("cps").cps
  run = train.build_run(config, num_classes=tiny_data.NUM_CLASSES,
                        mesh=parallel.make_mesh(1))
  val = data_lib.load_source(config.dataset, config.dataset.val_split)
  results = cotraining.evaluate_members(run, val)
  assert set(results) == {"member_0", "member_1", "average"}
  for scores in results.values():
    assert 0.0 <= scores["miou"] <= 1.0
  assert results["member_0"]["iou"].tolist() != results["member_1"]["iou"].tolist()


def test_eval_mode_reports_each_net_and_the_average(tmp_path):
  root = tiny_data.write_dataset(str(tmp_path))
  config = tiny_data.tiny_config(root, **{"model.unet.depth": 1})
  config.method = "cps"
  config.cps = config_lib.base_config("cps").cps
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  evaluated = inference.evaluate_checkpoint(config, workdir)
  np.testing.assert_allclose(evaluated["miou"], final["miou"], rtol=1e-6)
  assert set(evaluated["member_miou"]) == {"member_0", "member_1"}
  run, _ = inference.restore_run(config, workdir)
  alone = cotraining.evaluate_members(run, data_lib.load_source(config.dataset, "val"))
  for name in ("member_0", "member_1"):
    assert evaluated["member_miou"][name] == pytest.approx(alone[name]["miou"])

  # --mode=predict's uncertainty map comes from the two nets (no dropout needed).
  config.predict.update(dict(input_dir=os.path.join(root, "val", "images"),
                             output_dir=str(tmp_path / "masks"),
                             uncertainty="mutual_information"))
  paths = inference.predict_folder(config, workdir)
  heatmaps = [p for p in paths if p.endswith("_mutual_information.png")]
  assert len(heatmaps) == 6
  predict = inference.make_uncertainty_predictor(run, measure="mutual_information",
                                                 num_samples=8)
  images = np.stack([np.asarray(Image.open(os.path.join(root, "val", "images", name)),
                                np.float32) / 255 for name in ("val000.png", "val001.png")])
  ids, mutual_information = predict(images)
  # The predictor pads to a multiple of inference.SIZE_MULTIPLE and crops back.
  padded = np.pad(images, ((0, 0), (0, 16), (0, 16), (0, 0)))
  members = cotraining.member_probabilities(run.model, run.state.params,
                                            run.state.batch_stats, jnp.asarray(padded))
  members = np.asarray(members)[:, :, :16, :16]
  np.testing.assert_array_equal(ids, np.argmax(members.mean(0), -1))
  np.testing.assert_allclose(mutual_information,
                             uncertainty.mutual_information(members), rtol=1e-4, atol=1e-6)
  assert np.asarray(mutual_information).max() > 0


def test_check_config_names_bad_values():
  config = config_lib.base_config("cps")
  cps.check_config(config)
  for key, value, message in [
      ("cps.cps_weight", -1.0, r"config\.cps\.cps_weight=-1\.0"),
      ("cps.num_boxes", 0, r"config\.cps\.num_boxes=0"),
      ("cps.box_area_range", (0.5, 0.25), r"config\.cps\.box_area_range=\(0\.5, 0\.25\)"),
  ]:
    bad = config_lib.base_config("cps")
    bad.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=message):
      cps.check_config(bad)
  with pytest.raises(ValueError, match="num_members=0"):
    cotraining.init_members(jax.random.key(0), None, optax.sgd(0.1), jnp.zeros((1, 8, 8, 3)),
                            num_members=0)


def test_configs_validate_and_voc_follows_torchsemiseg():
  for name in ("cps", "deep_cotraining"):
    config = tiny_data.load_config(name)
    config_lib.validate_config(config)
    assert config.method == name
  voc = tiny_data.load_config("voc_cps")
  config_lib.validate_config(voc)
  assert (voc.dataset.num_labeled, voc.dataset.crop_size) == (1323, 512)
  assert voc.model.deeplabv3plus.backbone == "resnet50"
  assert (voc.optimizer.learning_rate, voc.batch_size, voc.cps.cps_weight) == (0.005, 16, 1.0)
  # 34 epochs of max(1323, 9259) images in batches of 16.
  assert voc.num_steps == 34 * (9259 // 16)
  assert tiny_data.load_config("voc_cps", "662").num_steps == 34 * (9920 // 16)
  with pytest.raises(ValueError, match="voc_cps.py:0"):
    tiny_data.load_config("voc_cps", "0")
