"""bench/step_passes.py counts each method's passes; bench/speed.py times the step against them."""

import json
import math
import os
import sys

import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import methods

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import speed  # pylint: disable=wrong-import-position
import step_passes  # pylint: disable=wrong-import-position


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_has_positive_counts_at_its_defaults(method):
  passes = step_passes.step_passes(config_lib.base_config(method))
  assert passes.fwd_bwd >= 1
  assert min(passes.fwd, passes.head_fwd_bwd, passes.head_fwd) >= 0


def test_the_table_covers_exactly_the_registered_methods():
  assert set(step_passes.PASSES) == set(methods.METHODS)


@pytest.mark.parametrize("method, expected", [
    ("supervised", (1, 0, 0, 0)),
    # labeled + strong fwd+bwd; weak A and partner B forward.
    ("fixmatch", (2, 2, 0, 0)),
    # + a second strong view and the feature-perturbed pass.
    ("unimatch", (4, 2, 0, 0)),
    ("mean_teacher", (2, 1, 0, 0)),
    # the teacher's target pass and its 8 MC Dropout passes.
    ("ua_mt", (2, 9, 0, 0)),
    # 4 members x (labeled, strong) and 4 x (image_u, image_u2).
    ("ensemble_self_training", (8, 8, 0, 0)),
    # 30 heads + 2 VAT heads x 1 power iteration; the VAT heads' clean forwards.
    ("cct", (2, 0, 32, 2)),
    ("equivariance", (2, 1, 0, 0)),
    ("cps", (4, 4, 0, 0)),
    # 2 nets x (labeled, unlabeled), 2 pairs x (judge, attack); VAT's clean pass half the time.
    ("deep_cotraining", (8, 1, 0, 0)),
    ("pseudo_label", (2, 0, 0, 0)),
    ("pseudoseg", (2, 2, 0, 0)),
])
def test_default_counts(method, expected):
  passes = step_passes.step_passes(config_lib.base_config(method))
  assert (passes.fwd_bwd, passes.fwd, passes.head_fwd_bwd, passes.head_fwd) == expected


def test_counts_follow_the_config():
  config = config_lib.base_config("ua_mt")
  config.ua_mt.num_samples = 3
  assert step_passes.step_passes(config).fwd == 4

  config = config_lib.base_config("ensemble_self_training")
  config.ensemble_self_training.num_members = 3
  assert step_passes.step_passes(config) == step_passes.StepPasses(fwd_bwd=6, fwd=6)

  config = config_lib.base_config("cct")
  config.cct.num_heads.update(vat=3, dropout=1, cutout=0, context_masking=0,
                              object_masking=0, feature_drop=0, feature_noise=0)
  config.cct.vat_iterations = 2
  assert step_passes.step_passes(config) == step_passes.StepPasses(
      fwd_bwd=2, fwd=0, head_fwd_bwd=4 + 3 * 2, head_fwd=3)

  # 3 nets: 6 ordered pairs; FGSM with probability 0.25, else VAT's extra forward.
  config = config_lib.base_config("deep_cotraining")
  config.deep_cotraining.update(num_members=3, labeled_adversarial_p=0.25)
  assert step_passes.step_passes(config) == step_passes.StepPasses(fwd_bwd=6 + 12,
                                                                   fwd=6 * 0.75)

  config = config_lib.base_config("supervised")
  config.supervised.adversarial.update(attack="pgd", pgd_num_steps=5)
  assert step_passes.step_passes(config).fwd_bwd == 1 + 5 + 1
  config.supervised.adversarial.attack = "fgsm"
  assert step_passes.step_passes(config).fwd_bwd == 1 + 1 + 1


def test_rejects_unequal_batches_and_unknown_methods():
  config = config_lib.base_config("fixmatch")
  config.unlabeled_batch_size = 2 * config.batch_size
  with pytest.raises(ValueError, match="unlabeled_batch_size=16"):
    step_passes.step_passes(config)
  config = config_lib.base_config("supervised")
  config.method = "nonexistent"
  with pytest.raises(ValueError, match="'nonexistent'"):
    step_passes.step_passes(config)


def test_seconds_per_call_warms_up_then_times_each_function_in_turn():
  order = []
  calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
  seconds = speed.seconds_per_call(calls, steps=2, repeats=3)
  warmup = speed._WARMUP_CALLS  # pylint: disable=protected-access
  assert order == ["a"] * warmup + ["b"] * warmup + ["a", "a", "b", "b"] * 3
  assert set(seconds) == {"a", "b"} and all(value >= 0 for value in seconds.values())


def test_all_runs_every_method_with_dropout_for_ua_mt():
  runs = speed._runs(speed._parse(["--all", "--tag", "t"]))  # pylint: disable=protected-access
  assert [run.method for run in runs] == list(methods.METHODS)
  assert {run.method: run.dropout for run in runs}["ua_mt"] == 0.5
  assert {run.dropout for run in runs if run.method != "ua_mt"} == {0.0}
  with pytest.raises(SystemExit):
    speed._parse(["--all", "--method", "cps"])  # pylint: disable=protected-access


def test_pseudo_label_step_is_timed_against_its_passes(tmp_path, capsys):
  output = tmp_path / "passes.jsonl"
  speed.main(["--method", "pseudo_label", "--size", "16", "--batch", "2", "--width", "4",
              "--classes", "3", "--steps", "2", "--repeats", "1", "--json",
              "--output", str(output), "--tag", "smoke"])
  (line,) = output.read_text().splitlines()
  result = json.loads(line)
  assert json.loads(capsys.readouterr().out.strip()) == result
  assert result["tag"] == "smoke" and result["method"] == "pseudo_label"
  assert (result["n_fwd_bwd"], result["n_fwd"]) == (2, 0)
  assert result["pass_budget_s"] == pytest.approx(2 * result["fwd_bwd_s"])
  assert result["step_vs_passes"] == pytest.approx(
      result["step_s"] / result["pass_budget_s"])
  assert math.isfinite(result["step_vs_passes"]) and result["step_vs_passes"] > 0
