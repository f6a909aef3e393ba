import glob
import os

import ml_collections
import pytest

from jaxsemiseg import config as config_lib
from jaxsemiseg import methods
import tiny_data

_CONFIG_NAMES = sorted(os.path.basename(path)[:-3] for path in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def _config(**overrides):
  config = config_lib.base_config()
  config.update_from_flattened_dict(overrides)
  return config


def test_base_config_is_valid():
  config_lib.validate_config(config_lib.base_config())


def test_unknown_key_names_the_key():
  config = config_lib.base_config()
  config.dataset.unlabelled_fraction = 0.5
  with pytest.raises(ValueError, match=r"config\.dataset\.unlabelled_fraction"):
    config_lib.validate_config(config)


def test_unknown_top_level_key():
  config = config_lib.base_config()
  config.num_step = 10
  with pytest.raises(ValueError, match=r"Unknown config key 'config\.num_step'"):
    config_lib.validate_config(config)


def test_wrong_type_names_field_and_value():
  config = config_lib.base_config()
  config.unlock()
  config.dataset = ml_collections.ConfigDict({**config.dataset.to_dict(), "crop_size": "64"})
  with pytest.raises(ValueError, match=r"config\.dataset\.crop_size='64' has type str"):
    config_lib.validate_config(config)


def test_int_is_accepted_for_float_but_not_bool_for_int():
  config_lib.validate_config(_config(**{"optimizer.learning_rate": 1}))
  config = config_lib.base_config()
  config.unlock()
  config.num_steps = True
  with pytest.raises(ValueError, match="num_steps"):
    config_lib.validate_config(config)


@pytest.mark.parametrize("key,value,match", [
    ("method", "fixmatchh", "config.method='fixmatchh'"),
    ("dataset.name", "pascal", "config.dataset.name='pascal'"),
    ("model.name", "segformer", "config.model.name='segformer'"),
    ("num_steps", 0, "config.num_steps=0"),
    ("dataset.labeled_fraction", 1.5, "labeled_fraction=1.5"),
    ("eval_mode", "tiles", "config.eval_mode='tiles'"),
    ("optimizer.name", "lamb", "config.optimizer.name='lamb'"),
    ("optimizer.schedule", "step", "config.optimizer.schedule='step'"),
    ("model.dtype", "float16", "config.model.dtype='float16'"),
    ("model.deeplabv3plus.backbone", "resnet34", "backbone='resnet34'"),
    ("model.deeplabv3plus.output_stride", 32, "output_stride=32"),
    ("unlabeled_batch_size", 0, "unlabeled_batch_size=0"),
    ("optimizer.learning_rate", -0.1, "config.optimizer.learning_rate=-0.1"),
    ("optimizer.weight_decay", -1e-4, "config.optimizer.weight_decay=-0.0001"),
    ("dataset.crop_size", 0, "config.dataset.crop_size=0"),
])
def test_bad_values(key, value, match):
  with pytest.raises(ValueError, match=match.replace(".", r"\.").replace("(", r"\(")):
    config_lib.validate_config(_config(**{key: value}))


def test_in_memory_is_for_the_bundled_dataset_only():
  with pytest.raises(ValueError, match=r"in_memory=True is for the bundled dataset only, "
                                       r"not 'voc'"):
    config_lib.validate_config(_config(**{"dataset.name": "voc", "dataset.in_memory": True}))
  config_lib.validate_config(_config(**{"dataset.in_memory": True}))


def test_method_sub_config_is_checked():
  config = config_lib.base_config()
  config.supervised = ml_collections.ConfigDict({"threshold": 0.9})
  with pytest.raises(ValueError, match=r"config\.supervised\.threshold"):
    config_lib.validate_config(config)


def test_base_config_holds_the_methods_hyper_parameters():
  config = config_lib.base_config()
  assert config.method == "supervised"
  assert config.supervised.adversarial.attack == "none"
  with pytest.raises(ValueError, match="config.method='nope'"):
    config_lib.base_config("nope")


def test_missing_method_sub_config_is_named():
  config = config_lib.base_config()
  del config["supervised"]
  with pytest.raises(ValueError, match=r"config\.supervised .*--config=configs/default\.py"):
    config_lib.validate_config(config)


@pytest.mark.parametrize("key, value, match", [
    ("attack", "deepfool", "attack='deepfool'"),
    ("alpha", 1.5, "alpha=1.5"),
    ("epsilon", -0.1, "epsilon=-0.1"),
    ("pgd_num_steps", 0, "pgd_num_steps"),
])
def test_bad_adversarial_settings(key, value, match):
  config = config_lib.base_config()
  config.supervised.adversarial[key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)


def test_voc_config_is_unimatchs_pascal_protocol():
  config = config_lib.voc_config("cps", num_labeled=183)
  config_lib.validate_config(config)
  assert config.method == "cps"
  base = config_lib.base_config()
  assert config.dataset.to_dict() == base.dataset.to_dict() | dict(
      name="voc", train_split="train_aug", val_split="val", num_labeled=183, crop_size=321,
      scale_range=(0.5, 2.0), eval_pad_to=512)
  assert (config.model.name, config.model.deeplabv3plus.backbone,
          config.model.deeplabv3plus.output_stride,
          config.model.deeplabv3plus.dropout_rate) == ("deeplabv3plus", "resnet101", 16, 0.0)
  assert config.optimizer.to_dict() == base.optimizer.to_dict() | dict(
      name="sgd", learning_rate=1e-3, momentum=0.9, weight_decay=1e-4, schedule="poly",
      poly_power=0.9, head_lr_multiplier=10.0)
  assert (config.batch_size, config.unlabeled_batch_size, config.eval_batch_size) == (8, 8, 16)


@pytest.mark.parametrize("arg, expected", [(None, 92), ("", 92), ("1464", 1464), ("1", 1),
                                           ("10581", 10581)])
def test_voc_num_labeled_reads_the_argument_or_takes_the_default(arg, expected):
  assert config_lib.voc_num_labeled(arg, default=92, config_name="voc_x",
                                    examples=(92, 183)) == expected


@pytest.mark.parametrize("arg", ["0", "10582", "-5", "1/8"])
def test_voc_num_labeled_outside_train_aug_names_the_config_and_the_range(arg):
  with pytest.raises(ValueError, match=(
      rf"configs/voc_x\.py:{arg}; expected a number of labeled images in \(0, 10582\), "
      r"e\.g\. 92, 183 or 366\.$")):
    config_lib.voc_num_labeled(arg, default=92, config_name="voc_x", examples=(92, 183, 366))


@pytest.mark.parametrize("name", _CONFIG_NAMES)
def test_every_config_file_is_valid(name):
  config_lib.validate_config(tiny_data.load_config(name))


@pytest.mark.parametrize("name", ["fixmatch", "unimatch", "ensemble_self_training"])
def test_shapes_self_training_configs_paste_no_cutmix_box(name):
  config = tiny_data.load_config(name)
  assert config.dataset.name == "shapes"
  assert config[name].cutmix_p == config_lib.SHAPES_CUTMIX_P == 0.0
  # The methods keep UniMatch's default for photos.
  assert methods.get_method(name).default_config().cutmix_p == 0.5
  assert tiny_data.load_config("voc_unimatch").unimatch.cutmix_p == 0.5


def test_shapes_cps_is_cps_without_cutmix_and_voc_keeps_it():
  config = tiny_data.load_config("cps")
  assert (config.cps.cutmix, config.cps.cps_weight) == (False, 1.5)
  assert methods.get_method("cps").default_config().cutmix
  assert tiny_data.load_config("voc_cps").cps.cutmix


def test_unimatch_voc_config_is_80_epochs_of_the_unlabeled_pool():
  config = config_lib.unimatch_voc_config("fixmatch", None, config_name="voc_fixmatch")
  steps_per_epoch = (10582 - 92) // 8
  assert (config.method, config.dataset.num_labeled) == ("fixmatch", 92)
  assert (config.num_steps, config.eval_every, config.checkpoint_every) == (
      80 * steps_per_epoch, steps_per_epoch, steps_per_epoch)
  assert config_lib.unimatch_voc_config("fixmatch", "1464",
                                        config_name="voc_fixmatch").dataset.num_labeled == 1464
  with pytest.raises(ValueError, match=r"configs/voc_fixmatch\.py:0; .*92, 183, 366, 732"):
    config_lib.unimatch_voc_config("fixmatch", "0", config_name="voc_fixmatch")
