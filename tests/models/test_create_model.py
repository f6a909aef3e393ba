"""Tests for jaxsemiseg.models.create_model."""

import jax.numpy as jnp
import ml_collections
import pytest

from jaxsemiseg import models


def test_builds_unet_from_config():
  config = ml_collections.ConfigDict(
      {"name": "unet", "num_classes": 4, "width": 8, "dropout_rate": 0.2, "dtype": "bfloat16"})
  model = models.create_model(config)
  assert isinstance(model, models.UNet)
  assert (model.num_classes, model.width, model.dropout_rate) == (4, 8, 0.2)
  assert model.dtype == jnp.bfloat16


def test_builds_deeplab_and_turns_lists_into_tuples():
  model = models.create_model({"name": "deeplabv3plus", "num_classes": 21,
                               "backbone": "resnet101", "output_stride": 8,
                               "aspp_dilations": [12, 24, 36]})
  assert isinstance(model, models.DeepLabV3Plus)
  assert (model.backbone, model.output_stride) == ("resnet101", 8)
  assert model.aspp_dilations == (12, 24, 36)


@pytest.mark.parametrize("config, match", [
    ({"name": "segformer", "num_classes": 2}, r"one of \['deeplabv3plus', 'unet'\]; got 'segformer'"),
    ({"num_classes": 2}, r"one of .* got None"),
    ({"name": "unet", "num_classes": 2, "backbone": "resnet50"},
     r"\['backbone'\] are not arguments of UNet"),
    ({"name": "unet"}, r"lacks required field\(s\) \['num_classes'\]"),
])
def test_rejects_bad_configs(config, match):
  with pytest.raises(ValueError, match=match):
    models.create_model(config)
