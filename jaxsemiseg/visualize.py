"""Colour-coded masks and image/mask grids, for predictions people look at."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from jaxsemiseg.data.source import IGNORE_INDEX


def color_palette(num_colors: int = 256) -> np.ndarray:
  """The Pascal VOC palette (uint8 [num_colors, 3]): class c's colour from the bits of c.

  Index 255 (ignore) is white, as in VOC's border pixels.
  """
  palette = np.zeros((max(num_colors, 256), 3), np.uint8)
  for index in range(palette.shape[0]):
    c, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= ((c >> 0) & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    palette[index] = (r, g, b)
  palette[IGNORE_INDEX] = 255
  return palette[:num_colors] if num_colors < 256 else palette


def save_mask_png(path: str, mask: np.ndarray) -> None:
  """Writes a class-id mask as a palette PNG: the pixels stay class ids, viewers show colours."""
  image = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
  image.putpalette(color_palette().reshape(-1).tolist())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image.save(path)


def save_prediction_grid(path: str, images: np.ndarray, predictions: np.ndarray,
                         labels: np.ndarray | None = None, *,
                         class_names: Sequence[str] | None = None) -> None:
  """Saves a PNG grid: one row per image with the image, the prediction and the label.

  Args:
    path: output PNG.
    images: float [N, H, W, 3] in [0, 1] or uint8.
    predictions: int [N, H, W] class ids.
    labels: optional int [N, H, W] ground truth (255 = ignore).
    class_names: optional legend entries.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  palette = color_palette()
  columns = [("image", None), ("prediction", predictions)]
  if labels is not None:
    columns.append(("label", labels))
  rows = len(images)
  fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows),
                           squeeze=False)
  for row in range(rows):
    for col, (title, masks) in enumerate(columns):
      ax = axes[row, col]
      ax.imshow(images[row] if masks is None else palette[np.asarray(masks[row], np.int64)])
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(title)
  if class_names:
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i] / 255.0)
               for i in range(len(class_names))]
    columns_in_legend = min(len(class_names), 3)
    fig.legend(handles, class_names, loc="lower center", ncol=columns_in_legend,
               fontsize="small", frameon=False)
  legend_rows = -(-len(class_names) // 3) if class_names else 0
  fig.tight_layout(rect=(0, 0.12 * legend_rows / rows, 1, 1))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
