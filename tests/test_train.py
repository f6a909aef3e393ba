import json
import os
import signal
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from jaxsemiseg import checkpoint as checkpoint_lib
from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import inference, parallel, train
from jaxsemiseg.data import splits

import tiny_data


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("tiny")))


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def _params(config, workdir):
  run, _ = inference.restore_run(config, workdir)
  return jax.device_get(run.state.params)


def _wrap_step(monkeypatch, on_call):
  """Makes the compiled train step call ``on_call(step_number, state, metrics)``."""
  real_compile = parallel.compile_step

  def compile_step(step, mesh, **kwargs):
    compiled = real_compile(step, mesh, **kwargs)
    calls = {"n": 0}

    def wrapped(state, batch, rng):
      calls["n"] += 1
      new_state, metrics = compiled(state, batch, rng)
      return new_state, on_call(calls["n"], new_state, metrics)

    return wrapped

  monkeypatch.setattr(parallel, "compile_step", compile_step)


def test_end_to_end_writes_everything(dataset_root, tmp_path):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(tiny_data.tiny_config(dataset_root), workdir)
  assert results["step"] == 3
  assert 0.0 <= results["miou"] <= 1.0
  assert results["confusion"].sum() == 6 * tiny_data.SIZE ** 2
  assert results["calibration"]["count"].sum() == 6 * tiny_data.SIZE ** 2
  assert 0.0 <= results["ece"] <= 1.0
  for name in ("metrics.jsonl", "labeled_ids.txt", "final_metrics.json", "run_info.json",
               "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    assert json.load(f)["ece"] == pytest.approx(results["ece"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert any("val/ece" in json.loads(line) for line in f)
  assert len(splits.read_split_file(os.path.join(workdir, "labeled_ids.txt"))) == 8
  assert set(_train_losses(workdir)) == {1, 2, 3}


def test_loss_goes_down_on_a_fixed_batch(dataset_root):
  config = tiny_data.tiny_config(dataset_root, num_steps=1000)
  mesh = parallel.make_mesh(1)
  run = train.build_run(config, num_classes=tiny_data.NUM_CLASSES, mesh=mesh)
  step = jax.jit(run.method.make_train_step(run.model, run.tx, config))
  datasets = data_lib.load_datasets(config)
  examples = [datasets.labeled[i] for i in range(4)]
  batch = {"image": np.stack([e["image"] for e in examples]).astype(np.float32) / 255,
           "label": np.stack([e["label"] for e in examples]).astype(np.int32)}
  state, losses = run.state, []
  for i in range(25):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]


def test_one_and_four_devices_agree(dataset_root, tmp_path):
  results = {}
  for devices in (1, 4):
    workdir = str(tmp_path / f"dev{devices}")
    # SGD, not Adam: Adam turns float32 reduction-order noise in near-zero gradients into
    # full-size steps of either sign, so its parameters are not comparable across layouts.
    config = tiny_data.tiny_config(dataset_root, num_devices=devices,
                                   **{"optimizer.name": "sgd", "optimizer.learning_rate": 0.1})
    final = train.train_and_evaluate(config, workdir)
    results[devices] = (_train_losses(workdir), final, _params(config, workdir))
  (losses1, final1, params1), (losses4, final4, params4) = results[1], results[4]
  for step in losses1:
    np.testing.assert_allclose(losses4[step], losses1[step], rtol=1e-4)
  np.testing.assert_allclose(final4["miou"], final1["miou"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params1, params4)


def test_resume_continues_like_an_uninterrupted_run(dataset_root, tmp_path, monkeypatch):
  config = tiny_data.tiny_config(dataset_root, num_steps=6, checkpoint_every=3)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)

  resumed = str(tmp_path / "resumed")

  def crash_after_step_4(n, state, metrics):
    if n == 5:
      raise KeyboardInterrupt("simulated crash")
    return metrics

  with monkeypatch.context() as patch:
    _wrap_step(patch, crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, resumed)
  with checkpoint_lib.Checkpointer(os.path.join(resumed, "checkpoints")) as checkpointer:
    assert checkpointer.all_steps() == [3]
  train.train_and_evaluate(config, resumed)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               _params(config, straight), _params(config, resumed))
  # Step 4, logged before the crash, is logged again after the resume: once in the file.
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    logged = [json.loads(line)["step"] for line in f if "train/loss" in line]
  assert logged == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(_train_losses(resumed)[6], _train_losses(straight)[6], rtol=1e-5)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_sigterm_saves_a_checkpoint_and_stops(dataset_root, tmp_path, monkeypatch):
  def preempt_at_step_2(n, state, metrics):
    if n == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return metrics

  _wrap_step(monkeypatch, preempt_at_step_2)
  workdir = str(tmp_path / "run")
  config = tiny_data.tiny_config(dataset_root, num_steps=6, checkpoint_every=5)
  assert train.train_and_evaluate(config, workdir) == {"step": 2, "preempted": True}
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    assert checkpointer.all_steps() == [2]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(dataset_root, tmp_path,
                                                              monkeypatch):
  def nan_at_step_3(n, state, metrics):
    return {**metrics, "loss": metrics["loss"] * np.nan} if n == 3 else metrics

  _wrap_step(monkeypatch, nan_at_step_3)
  workdir = str(tmp_path / "run")
  config = tiny_data.tiny_config(dataset_root, num_steps=5, checkpoint_every=1)
  with pytest.raises(FloatingPointError, match=r"between steps 2 and 3.*step 2"):
    train.train_and_evaluate(config, workdir)
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    assert checkpointer.all_steps() == [1, 2]


def test_the_finiteness_check_covers_the_whole_state(dataset_root):
  run = train.build_run(tiny_data.tiny_config(dataset_root), num_classes=tiny_data.NUM_CLASSES,
                        mesh=parallel.make_mesh(1))
  assert bool(train._all_finite(run.state))
  poisoned = jax.tree.map(lambda x: x * np.nan if x.dtype == np.float32 else x,
                          run.state.opt_state)
  assert not bool(train._all_finite(run.state.replace(opt_state=poisoned)))


def test_checkpoint_of_another_model_is_rejected(dataset_root, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_data.tiny_config(dataset_root), workdir)
  wider = tiny_data.tiny_config(dataset_root, **{"model.unet.width": 8})
  with pytest.raises(checkpoint_lib.CheckpointShapeError, match="another model"):
    train.train_and_evaluate(wider, workdir)


def test_eval_and_predict_modes(dataset_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_data.tiny_config(dataset_root)
  final = train.train_and_evaluate(config, workdir)
  evaluated = inference.evaluate_checkpoint(config, workdir)
  assert evaluated["step"] == 3
  np.testing.assert_allclose(evaluated["miou"], final["miou"], rtol=1e-6)
  np.testing.assert_allclose(evaluated["ece"], final["ece"], rtol=1e-5)
  assert evaluated["reliability_diagram"] == os.path.join(workdir, "reliability_step3.png")
  assert Image.open(evaluated["reliability_diagram"]).format == "PNG"
  # The ECE bins are sums over batches: one batch of all six images gives the same.
  config.eval_batch_size = 8
  one_batch = inference.evaluate_checkpoint(config, workdir)
  for key in ("count", "accuracy_sum", "confidence_sum"):
    np.testing.assert_allclose(one_batch["calibration"][key], evaluated["calibration"][key],
                               rtol=1e-5)

  config.predict.input_dir = os.path.join(dataset_root, "val", "images")
  config.predict.output_dir = str(tmp_path / "masks")
  paths = inference.predict_folder(config, workdir)
  assert len(paths) == 6
  mask = Image.open(paths[0])
  assert mask.mode == "P" and mask.size == (tiny_data.SIZE, tiny_data.SIZE)
  assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}


def test_predict_mode_rejects_a_file_that_is_not_an_image_before_restoring(tmp_path,
                                                                           monkeypatch):
  input_dir = tmp_path / "images"
  input_dir.mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(input_dir / "a.png")
  (input_dir / "b.jpg").write_bytes(b"not a jpeg")
  config = tiny_data.tiny_config(str(tmp_path))
  config.predict.input_dir = str(input_dir)
  monkeypatch.setattr(inference, "restore_run", lambda *a, **k: pytest.fail("restored"))
  with pytest.raises(ValueError, match=r"b\.jpg' is not a readable image.*remove it"):
    inference.predict_folder(config, str(tmp_path / "run"))


def test_predict_mode_writes_uncertainty_maps(dataset_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_data.tiny_config(dataset_root)
  config.model.unet.dropout_rate = 0.5
  train.train_and_evaluate(config, workdir)
  config.predict.input_dir = os.path.join(dataset_root, "val", "images")
  config.predict.output_dir = str(tmp_path / "masks")
  config.predict.uncertainty = "mutual_information"
  config.predict.mc_samples = 3
  paths = inference.predict_folder(config, workdir)
  assert len(paths) == 12 and paths[1].endswith("_mutual_information.png")
  heat = Image.open(paths[1])
  assert heat.mode == "RGB" and heat.size == (tiny_data.SIZE, tiny_data.SIZE)


def _broken_dataset(root, *, mask_value=None, mask_size=None):
  tiny_data.write_dataset(root)
  path = os.path.join(root, "val", "masks", "val002.png")
  mask = np.asarray(Image.open(path)).copy()
  if mask_value is not None:
    mask[0, 0] = mask_value
  if mask_size is not None:
    mask = np.zeros(mask_size, np.uint8)
  Image.fromarray(mask).save(path)
  return root


def _fail_before_compiling(monkeypatch):
  def no_compile(*args, **kwargs):
    raise AssertionError("compiled despite bad input")
  monkeypatch.setattr(parallel, "compile_step", no_compile)


def test_eval_batch_not_divisible_by_devices_fails_before_compile(dataset_root, tmp_path,
                                                                  monkeypatch):
  _fail_before_compiling(monkeypatch)
  config = tiny_data.tiny_config(dataset_root, eval_batch_size=6)
  with pytest.raises(ValueError, match=r"config\.eval_batch_size=6 is not divisible by the 4"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_undecodable_unlabeled_image_fails_before_compile(tmp_path, monkeypatch):
  _fail_before_compiling(monkeypatch)
  root = tiny_data.write_dataset(str(tmp_path / "data"))
  split_file = tmp_path / "labeled.txt"
  split_file.write_text("".join(f"train{i:03d}\n" for i in range(8)))
  broken = os.path.join(root, "train", "images", "train012.png")
  with open(broken, "wb") as f:
    f.write(b"not a png")
  config = tiny_data.tiny_config(root, **{"dataset.split_file": str(split_file)})
  config.method = "fixmatch"
  config.fixmatch = config_lib.base_config("fixmatch").fixmatch
  with pytest.raises(ValueError, match=r"train012\.png' cannot be decoded.*replace the file"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_label_outside_classes_fails_before_compile(tmp_path, monkeypatch):
  _fail_before_compiling(monkeypatch)
  root = _broken_dataset(str(tmp_path / "data"), mask_value=7)
  with pytest.raises(ValueError, match=r"val002.*\[7\] outside \[0, 3\)"):
    train.train_and_evaluate(tiny_data.tiny_config(root), str(tmp_path / "run"))


def test_image_mask_size_mismatch_fails_before_compile(tmp_path, monkeypatch):
  _fail_before_compiling(monkeypatch)
  root = _broken_dataset(str(tmp_path / "data"), mask_size=(8, 16))
  with pytest.raises(ValueError, match=r"val002.*16x16 but its mask is 8x16"):
    train.train_and_evaluate(tiny_data.tiny_config(root), str(tmp_path / "run"))


def test_missing_dataset_directory(tmp_path, monkeypatch):
  _fail_before_compiling(monkeypatch)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(tiny_data.tiny_config(str(tmp_path / "nowhere")),
                             str(tmp_path / "run"))


def test_split_file_with_unknown_ids(dataset_root, tmp_path, monkeypatch):
  _fail_before_compiling(monkeypatch)
  split_file = tmp_path / "labeled.txt"
  split_file.write_text("train000\nnot_an_image\n")
  config = tiny_data.tiny_config(dataset_root, **{"dataset.split_file": str(split_file)})
  with pytest.raises(ValueError, match="not_an_image"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_split_file_reproduces_the_labeled_set(dataset_root, tmp_path):
  first = str(tmp_path / "first")
  config = tiny_data.tiny_config(dataset_root, **{"dataset.split_seed": 5})
  train.train_and_evaluate(config, first)
  labeled = os.path.join(first, "labeled_ids.txt")
  again = tiny_data.tiny_config(dataset_root, **{"dataset.split_file": labeled})
  second = str(tmp_path / "second")
  train.train_and_evaluate(again, second)
  assert (splits.read_split_file(os.path.join(second, "labeled_ids.txt"))
          == splits.read_split_file(labeled))
  np.testing.assert_allclose(_train_losses(second)[3], _train_losses(first)[3], rtol=1e-5)


def test_in_memory_datasets(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, tiny_data.NUM_CLASSES, (12, tiny_data.SIZE, tiny_data.SIZE))
  images = (labels[..., None] * 80 + rng.integers(0, 20, labels.shape + (3,))).astype(np.uint8)
  names = ("a", "b", "c")
  config = tiny_data.tiny_config("")
  datasets = data_lib.split_datasets(
      config, data_lib.source_from_arrays("train", images[:8], labels[:8].astype(np.uint8),
                                          class_names=names),
      data_lib.source_from_arrays("val", images[8:], labels[8:].astype(np.uint8),
                                  class_names=names), workdir=str(tmp_path / "run"))
  assert (len(datasets.labeled), len(datasets.unlabeled)) == (4, 4)
  assert datasets.unlabeled[0]["label"] is None
  results = train.train_and_evaluate(config, str(tmp_path / "run"), datasets=datasets)
  assert results["confusion"].sum() == 4 * tiny_data.SIZE ** 2
