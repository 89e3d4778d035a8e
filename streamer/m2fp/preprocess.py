"""Fitting images onto the network's canvas, as ModelScope's M2FP pipeline does.

Resizing uses PIL's bilinear filter, the one the published models were evaluated with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The network's input normalisation and padding multiple (streamer.m2fp.model uses them);
#: here so that fitting images onto the canvas needs no torch.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISIBILITY = 32
SINGLE_PAD_VALUE = 128
MULTI_MIN_SIZE = 640
MULTI_MAX_SIZE = 1333


@dataclass(frozen=True)
class Placement:
    """Where an image landed on the canvas: ``(x0, y0, x1, y1)`` in canvas pixels."""

    box: tuple[int, int, int, int]
    source_hw: tuple[int, int]


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def fit_single(h: int, w: int, canvas_hw: tuple[int, int]) -> tuple[int, int]:
    """Shrink ``(h, w)`` to fit the canvas keeping the aspect ratio; never enlarge."""
    th, tw = canvas_hw
    if h <= th and w <= tw:
        return h, w
    if h > th and (w <= tw or h >= w):
        nh, nw = th, int(th * w / h)
        if nw > tw:
            nw, nh = tw, int(tw * h / w)
        return nh, nw
    nw, nh = tw, int(tw * h / w)
    if nh > th:
        nh, nw = th, int(th * w / h)
    return nh, nw


def to_single_canvas(
    image: np.ndarray, canvas_hw: tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, Placement]:
    """Centre one person crop on the single-person canvas, padding with grey (128)."""
    th, tw = canvas_hw
    h, w = image.shape[:2]
    nh, nw = fit_single(h, w, canvas_hw)
    resized = resize_rgb(image, nh, nw)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    canvas = out if out is not None else np.empty((th, tw, 3), np.uint8)
    canvas[...] = SINGLE_PAD_VALUE
    canvas[y0:y0 + nh, x0:x0 + nw] = resized
    return canvas, Placement((x0, y0, x0 + nw, y0 + nh), (h, w))


def multi_resized_shape(
    h: int, w: int, min_size: int = MULTI_MIN_SIZE, max_size: int = MULTI_MAX_SIZE
) -> tuple[int, int]:
    """Short side to ``min_size``, long side at most ``max_size`` (detectron2's rule)."""
    scale = min_size / min(h, w)
    nh, nw = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(nh, nw) > max_size:
        shrink = max_size / max(nh, nw)
        nh, nw = nh * shrink, nw * shrink
    return int(nh + 0.5), int(nw + 0.5)


def multi_canvas_hw(h: int, w: int) -> tuple[int, int]:
    nh, nw = multi_resized_shape(h, w)
    d = SIZE_DIVISIBILITY
    return (nh + d - 1) // d * d, (nw + d - 1) // d * d


def to_multi_canvas(image: np.ndarray) -> tuple[np.ndarray, Placement]:
    """Resize a whole frame for the multi-person model and pad it to a multiple of 32.

    The padding is the mean colour, which is zero after the network's normalisation: the same
    as ModelScope padding the normalised tensor with zeros. Returns float32 ``(H, W, 3)``.
    """
    h, w = image.shape[:2]
    nh, nw = multi_resized_shape(h, w)
    ch, cw = multi_canvas_hw(h, w)
    canvas = np.empty((ch, cw, 3), np.float32)
    canvas[...] = PIXEL_MEAN
    canvas[:nh, :nw] = resize_rgb(image, nh, nw)
    return canvas, Placement((0, 0, nw, nh), (h, w))
