"""Boxes and the detector interface: ``Detector``, IoU, non-maximum suppression.

The lowest piece of person finding: every detector (:mod:`streamer.vision.detectors`,
:mod:`streamer.vision.detect_nets`), the tracker (:mod:`streamer.vision.tracker`) and the box
clean-up in :mod:`streamer.vision.detect` build on these. ``streamer.vision.detect`` re-exports
them, so ``from streamer.vision.detect import nms`` keeps working.

Example:
    >>> keep = nms(np.array([[0, 0, 10, 20], [1, 1, 11, 21]]), np.array([0.9, 0.8]))
    >>> keep
    array([0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from streamer.core.types import Box

__all__ = ["Detector", "box_array", "iou_matrix", "nms"]


class Detector(Protocol):
    """Anything with ``detect(image) -> list[Box]``: RGB uint8 in, boxes in frame pixels out."""

    def detect(self, image: np.ndarray) -> list[Box]: ...



def box_array(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    """``(N, 5)`` float64 ``x0, y0, x1, y1, score`` from Boxes or an ``(N, 4|5)`` array."""
    if isinstance(boxes, np.ndarray):
        arr = np.asarray(boxes, np.float64).reshape(-1, boxes.shape[-1] if boxes.size else 5)
        if arr.shape[1] == 4:
            arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
        if arr.shape[1] != 5:
            raise ValueError(f"boxes must be (N, 4) or (N, 5), not {boxes.shape}")
        return arr
    return np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in boxes],
                    np.float64).reshape(-1, 5)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4+) with every box in ``b`` (M, 4+): an (N, M) array.

    Example:
        >>> iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10]]))
        array([[1.        , 0.33333333]])
    """
    a = np.asarray(a, np.float64)[:, None, :4]
    b = np.asarray(b, np.float64)[None, :, :4]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4,
        containment: float = 0.8) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    A box is suppressed by a better one when their IoU exceeds ``iou_threshold`` or when more
    than ``containment`` of the smaller box lies inside the other (HOG likes nested boxes).

    Example:
        >>> nms(np.array([[0, 0, 10, 20], [1, 1, 11, 21], [50, 0, 60, 20]]),
        ...     np.array([0.9, 0.8, 0.7]))
        array([0, 2])
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if len(order) == 0:
        return order
    b = boxes[order]
    iou = iou_matrix(b, b)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2])
                 - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3])
                 - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    smaller = np.minimum(area[:, None], area[None, :])
    contained = np.divide(iw * ih, smaller, out=np.zeros_like(iou), where=smaller > 0)
    overlaps = (iou > iou_threshold) | (contained > containment)
    keep = np.ones(len(b), bool)
    for i in range(len(b)):  # greedy, over the (few) boxes; the overlaps are all precomputed
        if keep[i]:
            keep[i + 1:] &= ~overlaps[i, i + 1:]
    return order[keep]

