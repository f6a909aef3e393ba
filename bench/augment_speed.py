r"""Cost of on-device augmentation against one training step of DeepLabV3+-ResNet-50.

Times, compiled and on the default device, for a batch of ``--batch`` images of
``--size`` x ``--size`` pixels (issue #3: 16 at 321x321, target under 10%):

  strong_view   UniMatch's strong view: colour jitter, grayscale, blur (per image, under
                vmap), then a UniMatch CutMix box mixing each image with the next one;
  autoaugment   one draw of the ImageNet AutoAugment policy per image, image and mask;
  train_step    forward + backward of DeepLabV3+-ResNet-50 (output stride 16) with the
                cross-entropy loss, the reference cost of the augmentations.

Each is the median of ``--repeats`` timed calls after one warm-up call; the JSON line with
the ratios is printed and appended to ``--output``.

  python bench/augment_speed.py                       # 16 x 321 x 321
  python bench/augment_speed.py --batch=2 --size=65   # a smoke test
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from jaxsemiseg import losses, models
from jaxsemiseg.augment import mixing, photometric, policies

import _records  # pylint: disable=g-bad-import-order

_BATCH = flags.DEFINE_integer("batch", 16, "Images per batch.")
_SIZE = flags.DEFINE_integer("size", 321, "Crop side in pixels.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(os.path.dirname(os.path.abspath(__file__)), "augment_speed.jsonl"),
    "JSON-lines file the result is appended to.")
NUM_CLASSES = 21


def strong_view(key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """UniMatch's strong view of a batch and its CutMix boxes (mixed with the next image)."""
  colour_key, box_key = jax.random.split(key)
  batch, size = images.shape[0], images.shape[1]
  coloured = jax.vmap(photometric.unimatch_strong_colour)(
      jax.random.split(colour_key, batch), images)
  boxes = jax.vmap(lambda k: mixing.unimatch_cutmix_box(k, size=size))(
      jax.random.split(box_key, batch))
  return mixing.mix(boxes, coloured, jnp.roll(coloured, 1, axis=0)), boxes


def autoaugment(key: jax.Array, images: jax.Array,
                masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One ImageNet-policy draw per image, applied to the image and its mask."""
  return jax.vmap(policies.autoaugment)(jax.random.split(key, images.shape[0]), images, masks)


def _deeplab_step():
  """``(variables, step)``: DeepLabV3+-R50 and its jitted forward + backward."""
  config = ml_collections.ConfigDict(dict(
      name="deeplabv3plus", dtype="float32", num_classes=NUM_CLASSES, backbone="resnet50",
      output_stride=16, aspp_channels=256, low_level_channels=48, decoder_channels=256,
      dropout_rate=0.1))
  model = models.create_model(config)
  size = _SIZE.value
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)

  @jax.jit
  def step(variables, images, labels, key):
    def loss_fn(params):
      outputs, updates = model.apply(
          {**variables, "params": params}, images, train=True, rngs={"dropout": key},
          mutable=["batch_stats"])
      return losses.cross_entropy(outputs["logits"], labels)[0], updates
    return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

  return variables, step


def _median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  batch, size = _BATCH.value, _SIZE.value
  image_key, label_key, key = jax.random.split(jax.random.key(0), 3)
  images = jax.random.uniform(image_key, (batch, size, size, 3))
  labels = jax.random.randint(label_key, (batch, size, size), 0, NUM_CLASSES)
  seconds = {
      "strong_view": _median_seconds(jax.jit(strong_view), key, images),
      "autoaugment": _median_seconds(jax.jit(autoaugment), key, images, labels),
  }
  variables, step = _deeplab_step()
  seconds["train_step"] = _median_seconds(step, variables, images, labels, key)
  _records.write_record({
      "batch": batch, "size": size, "repeats": _REPEATS.value,
      **{f"{name}_s": round(value, 5) for name, value in seconds.items()},
      "strong_view_ratio": round(seconds["strong_view"] / seconds["train_step"], 4),
      "autoaugment_ratio": round(seconds["autoaugment"] / seconds["train_step"], 4),
  }, _OUTPUT.value, script="bench/augment_speed.py")


if __name__ == "__main__":
  app.run(main)
