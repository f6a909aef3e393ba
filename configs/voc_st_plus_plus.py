r"""ST++ on Pascal VOC 2012 at the reference settings (LiheYoung/ST-PlusPlus, VOC).

DeepLabV3+ with a ResNet-101 backbone at output stride 8 (ASPP rates 12, 24, 36; dropout
0.1 before the classifier), crop 321, SGD (momentum 0.9, weight decay 1e-4) at 1e-3 with
the head at 10x, poly decay 0.9, 16 images per step in every round (students: 8 labeled +
8 pseudo-labeled), 80 epochs per round, pseudo-labels from test-time augmentation (scales
0.5, 0.75, 1, 1.5, 2 and flips, every pixel kept). The argument is the number of labeled
images (default 92):

  python -m jaxsemiseg.main --config=configs/voc_st_plus_plus.py:92 --workdir=/tmp/stpp92 \
      --config.dataset.root=/data/VOCdevkit/VOC2012 \
      --config.model.pretrained_path=/data/resnet101_imagenet.npz \
      --config.dataset.split_file=/data/ST-PlusPlus/dataset/splits/pascal/1_16/split_0/labeled.txt

The reference's epochs, in steps (batch 16, last partial batch dropped): the teacher's
epoch is the labeled ids (doubled when fewer than 200); a student's is the labeled ids
repeated ceil(U / L) times plus the U pseudo-labeled ids (U = the reliable half of the
pool, then the whole pool). The unlabeled pool is the rest of the 10582 ``train_aug``
images.

Differences from the reference that the config cannot remove: each round labels with its
final model, not its best one on the validation set; a student's 16 images per step are
always 8 labeled and 8 pseudo-labeled, where the reference draws them from one shuffled
list of both (the same half-and-half on average, by the epoch above); the ASPP projection has no
Dropout2d(0.5); the weak view rescales each image's own long side (by 0.4-1.6, which is
the reference's 400 x U(0.5, 2) for the usual 500-pixel VOC long side, where the
reference uses a fixed base of 400); evaluation and labeling pad images to 512x512.
"""

import math

from jaxsemiseg.config import VOC_TRAIN_AUG_SIZE, voc_config, voc_num_labeled

EPOCHS = 80
BATCH = 16
# ST++ doubles the labeled ids of the supervised teacher when there are fewer than this.
FEW_LABELED = 200


def round_steps(num_labeled: int) -> tuple[int, int, int]:
  """Teacher, student 1 and student 2 steps for ``num_labeled`` labeled images."""
  pool = VOC_TRAIN_AUG_SIZE - num_labeled
  teacher_ids = 2 * num_labeled if num_labeled < FEW_LABELED else num_labeled

  def student_ids(pseudo_labeled: int) -> int:
    return num_labeled * math.ceil(pseudo_labeled / num_labeled) + pseudo_labeled

  return tuple(EPOCHS * (ids // BATCH) for ids in (
      teacher_ids, student_ids(pool // 2), student_ids(pool)))


def get_config(arg=None):
  """The config for ``arg`` labeled images (a decimal string; default "92")."""
  num_labeled = voc_num_labeled(arg, default=92, config_name="voc_st_plus_plus",
                                examples=(92, 183, 366, 732, 1464))
  # ST++'s lr is 0.001 / 16 * batch size: UniMatch's 1e-3 at 16 images per step.
  config = voc_config("pseudo_label", num_labeled=num_labeled)
  config.dataset.scale_range = (0.4, 1.6)
  config.model.deeplabv3plus.update(dict(output_stride=8, dropout_rate=0.1))
  config.batch_size = BATCH // 2
  config.unlabeled_batch_size = BATCH // 2
  config.pseudo_label.variant = "st++"
  config.pseudo_label.round_steps = round_steps(num_labeled)
  # One checkpoint about every epoch of student 1 (a crash costs at most that); the loop
  # keeps no best checkpoint, so validation only reports progress.
  config.checkpoint_every = 500
  config.eval_every = 5000
  return config
