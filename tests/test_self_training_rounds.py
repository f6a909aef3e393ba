"""The ST / ST++ rounds driver on the tiny dataset: round dirs, pseudo-label files, resuming."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxsemiseg import checkpoint as checkpoint_lib
from jaxsemiseg import config as config_lib
from jaxsemiseg import data as data_lib
from jaxsemiseg import evaluate, inference, train
from jaxsemiseg import self_training_rounds as rounds
from jaxsemiseg.methods import pseudo_label

import tiny_data


def rounds_config(root: str, **settings):
  config = tiny_data.tiny_config(root, **{"model.unet.depth": 1, "log_every": 1})
  config.method = "pseudo_label"
  config.pseudo_label = config_lib.base_config("pseudo_label").pseudo_label
  config.pseudo_label.update(settings)
  return config


def read_mask(path: str) -> np.ndarray:
  with Image.open(path) as mask:
    return np.asarray(mask)


def label_files(workdir: str, labeler: int) -> set[str]:
  directory = os.path.join(workdir, rounds.PSEUDO_LABEL_DIR, f"round_{labeler}")
  return {name[:-4] for name in os.listdir(directory) if name.endswith(".png")}


def teacher_tta_probs(config, workdir: str, images: np.ndarray) -> np.ndarray:
  """What the teacher's model predicts for ``images`` with the config's TTA."""
  run, _ = inference.restore_run(rounds.round_config(config, 0), rounds.round_dir(workdir, 0))
  settings = config.pseudo_label
  probs_fn = evaluate.make_probs_fn(train.predict_fn_for(run), num_classes=run.num_classes)
  return np.asarray(pseudo_label.tta_probabilities(
      lambda x: probs_fn(run.state, x), images, scales=tuple(settings.tta_scales),
      flip=settings.tta_flip, size_multiple=inference.SIZE_MULTIPLE))


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def st_plus_plus(dataset_root, tmp_path_factory):
  config = rounds_config(dataset_root, variant="st++", round_steps=(3, 2, 2))
  workdir = str(tmp_path_factory.mktemp("st_plus_plus"))
  return config, workdir, rounds.train_rounds(config, workdir)


def test_st_plus_plus_writes_its_rounds_ranking_and_pseudo_labels(st_plus_plus):
  config, workdir, results = st_plus_plus
  for index in range(3):
    assert os.path.exists(os.path.join(rounds.round_dir(workdir, index), "final_metrics.json"))
  with open(os.path.join(rounds.round_dir(workdir, 2), "final_metrics.json")) as f:
    assert json.load(f)["miou"] == pytest.approx(results["miou"])
  assert results["step"] == 2 and 0.0 <= results["miou"] <= 1.0

  pool = data_lib.load_datasets(config).unlabeled
  with open(os.path.join(workdir, rounds.PSEUDO_LABEL_DIR, rounds.STABILITY_FILE)) as f:
    ranking = json.load(f)
  reliable, unreliable = ranking["reliable"], ranking["unreliable"]
  assert len(reliable) == len(unreliable) == len(pool) // 2
  assert sorted(reliable + unreliable) == sorted(pool.ids)
  scores = [ranking["stability"][i] for i in reliable + unreliable]
  assert scores == sorted(scores, reverse=True) and 0.0 <= min(scores) <= max(scores) <= 1.0

  # Student 1 trained on the reliable half labeled by the teacher; student 2 also on the
  # unreliable half, labeled by student 1.
  assert label_files(workdir, 0) == set(reliable)
  assert label_files(workdir, 1) == set(unreliable)
  for example_id in reliable + unreliable:
    labeler = 0 if example_id in reliable else 1
    mask = read_mask(rounds.label_path(workdir, labeler, example_id))
    assert mask.shape == (tiny_data.SIZE, tiny_data.SIZE) and mask.max() < tiny_data.NUM_CLASSES
  with open(os.path.join(rounds.round_dir(workdir, 2), "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert any("train/pseudo_label_fraction" in row for row in rows)


def test_teacher_pseudo_labels_are_its_tta_argmax_of_the_same_image(st_plus_plus):
  config, workdir, _ = st_plus_plus
  pool = data_lib.load_datasets(config).unlabeled
  images = np.stack([pool[i]["image"] for i in range(len(pool))]).astype(np.float32) / 255
  expected = teacher_tta_probs(config, workdir, images).argmax(-1)
  files = label_files(workdir, 0)
  for index, example_id in enumerate(pool.ids):
    if example_id in files:
      np.testing.assert_array_equal(
          read_mask(rounds.label_path(workdir, 0, example_id)), expected[index])


def test_stability_is_the_agreement_of_the_teachers_snapshots_with_its_final_model(
    st_plus_plus):
  config, workdir, _ = st_plus_plus
  pool = data_lib.load_datasets(config).unlabeled
  images = np.stack([pool[i]["image"] for i in range(len(pool))]).astype(np.float32) / 255
  teacher_dir = rounds.round_dir(workdir, 0)
  run, final_step = inference.restore_run(rounds.round_config(config, 0), teacher_dir)
  assert final_step == 3
  # The snapshots at E // 3 and 2E // 3 of E = 3 steps, then the final model.
  with checkpoint_lib.Checkpointer(os.path.join(teacher_dir, rounds.SNAPSHOT_DIR)) as snapshots:
    assert snapshots.all_steps() == [1, 2]
    states = [snapshots.restore(run.state, step=step)[0] for step in (1, 2)] + [run.state]
  predict = evaluate.make_predict_fn(run.model)
  predictions = np.stack([np.asarray(predict(state, images)).argmax(-1) for state in states])
  expected = pseudo_label.stability_scores(
      predictions, np.ones(predictions.shape[1:], bool), num_classes=tiny_data.NUM_CLASSES)
  with open(os.path.join(workdir, rounds.PSEUDO_LABEL_DIR, rounds.STABILITY_FILE)) as f:
    stability = json.load(f)["stability"]
  np.testing.assert_allclose([stability[i] for i in pool.ids], expected, rtol=1e-5)
  assert len(set(np.round(np.asarray(expected), 5).tolist())) > 1  # Not all tied.


@pytest.fixture
def train_calls(monkeypatch):
  """Records the workdir of every round the driver trains (and still trains it)."""
  calls = []
  train_and_evaluate = rounds.train.train_and_evaluate

  def recording(config, workdir, **kwargs):
    calls.append(os.path.basename(workdir))
    return train_and_evaluate(config, workdir, **kwargs)

  monkeypatch.setattr(rounds.train, "train_and_evaluate", recording)
  return calls


def test_rerun_skips_finished_rounds_and_reuses_written_pseudo_labels(st_plus_plus,
                                                                      train_calls, tmp_path):
  config, finished_workdir, results = st_plus_plus
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_workdir, workdir)
  assert rounds.train_rounds(config, workdir)["miou"] == pytest.approx(results["miou"])
  assert not train_calls

  # A run that died after writing part of student 1's labels, during student 2's round.
  os.remove(os.path.join(rounds.round_dir(workdir, 2), "final_metrics.json"))
  unreliable = sorted(label_files(workdir, 1))
  lost = rounds.label_path(workdir, 1, unreliable[0])
  kept = rounds.label_path(workdir, 1, unreliable[1])
  lost_mask, kept_mtime = read_mask(lost), os.stat(kept).st_mtime_ns
  os.remove(lost)
  with open(os.path.join(rounds.round_dir(workdir, 2), "metrics.jsonl")) as f:
    logged_steps = f.read().count('"train/loss"')

  resumed = rounds.train_rounds(config, workdir)
  assert train_calls == ["round_2"]
  np.testing.assert_array_equal(read_mask(lost), lost_mask)
  assert os.stat(kept).st_mtime_ns == kept_mtime
  # Round 2 resumed from its final checkpoint: evaluated again, no step retrained.
  with open(os.path.join(rounds.round_dir(workdir, 2), "metrics.jsonl")) as f:
    assert f.read().count('"train/loss"') == logged_steps
  assert resumed["miou"] == pytest.approx(results["miou"])


def test_preempted_round_stops_the_rounds(st_plus_plus, monkeypatch, tmp_path):
  config, finished_workdir, _ = st_plus_plus
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_workdir, workdir)
  for index in (1, 2):
    os.remove(os.path.join(rounds.round_dir(workdir, index), "final_metrics.json"))
  calls = []

  def preempted(config, workdir, **kwargs):
    del config, kwargs
    calls.append(os.path.basename(workdir))
    return {"step": 1, "preempted": True}

  monkeypatch.setattr(rounds.train, "train_and_evaluate", preempted)
  assert rounds.train_rounds(config, workdir) == {"step": 1, "preempted": True}
  assert calls == ["round_1"]


def test_a_workdir_refuses_other_pseudo_label_settings(st_plus_plus, tmp_path):
  config, finished_workdir, _ = st_plus_plus
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_workdir, workdir)
  config = config.copy_and_resolve_references()
  config.pseudo_label.confidence_threshold = 0.5
  with pytest.raises(ValueError, match=r"confidence_threshold=0\.5 \(recorded: 0\.0\)"):
    rounds.train_rounds(config, workdir)


def test_st_filters_unconfident_pixels_and_relabels_the_whole_pool(dataset_root, tmp_path):
  config = rounds_config(dataset_root, variant="st", round_steps=(2, 1),
                         confidence_threshold=0.4, tta_scales=(1.0, 2.0))
  workdir = str(tmp_path)
  rounds.train_rounds(config, workdir)
  assert sorted(os.listdir(workdir)) == sorted([
      "labeled_ids.txt", "pseudo_label_settings.json", "pseudo_labels", "round_0", "round_1"])
  pool = data_lib.load_datasets(config).unlabeled
  assert label_files(workdir, 0) == set(pool.ids)
  images = np.stack([pool[i]["image"] for i in range(len(pool))]).astype(np.float32) / 255
  probs = teacher_tta_probs(config, workdir, images)
  expected = np.where(probs.max(-1) >= 0.4, probs.argmax(-1), 255)
  masks = np.stack([read_mask(rounds.label_path(workdir, 0, i)) for i in pool.ids])
  # The threshold matters here: some pixels of a 2-step teacher are ignored, not all.
  assert 0 < np.mean(masks == 255) < 1
  np.testing.assert_array_equal(masks, expected)


def test_rounds_reject_a_labeled_only_split(dataset_root, tmp_path):
  config = rounds_config(dataset_root, round_steps=(2, 1))
  config.dataset.labeled_fraction = 1.0
  with pytest.raises(ValueError, match="unlabeled pool is empty"):
    rounds.train_rounds(config, str(tmp_path))


def test_round_configs_train_the_teacher_supervised_at_the_full_batch(dataset_root):
  config = rounds_config(dataset_root, variant="st++", round_steps=(30, 20, 10))
  teacher, student = rounds.round_config(config, 0), rounds.round_config(config, 2)
  assert (teacher.method, teacher.num_steps, teacher.seed, teacher.batch_size) == (
      "supervised", 30, 0, 8)
  assert (student.method, student.num_steps, student.seed, student.batch_size) == (
      "pseudo_label", 10, 2, 4)
  assert rounds.snapshot_steps(30) == (10, 20)
  config_lib.validate_config(teacher)


def test_train_any_method_runs_rounds_only_for_pseudo_label(monkeypatch):
  calls = []
  monkeypatch.setattr(rounds, "train_rounds", lambda c, w: calls.append(("rounds", w)) or {})
  monkeypatch.setattr(rounds.train, "train_and_evaluate",
                      lambda c, w: calls.append(("one run", w)) or {})
  rounds.train_any_method(ml_collections.ConfigDict({"method": "pseudo_label"}), "a")
  rounds.train_any_method(ml_collections.ConfigDict({"method": "fixmatch"}), "b")
  assert calls == [("rounds", "a"), ("one run", "b")]
