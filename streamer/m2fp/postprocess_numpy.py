"""Single-person label maps from network outputs in numpy: the torch-free run path.

The same computation as :func:`streamer.m2fp.postprocess.semantic_labels` (which follows
ModelScope's pipeline with ``grid_sample`` and ``interpolate``), written with numpy so that a
run whose compiled engine comes from the cache never imports torch. Bilinear resampling keeps
torch's conventions exactly: pixel centres at ``+0.5`` (``align_corners=False``), coordinates
clamped to the edge (``padding_mode="border"``, and ``interpolate``'s clamp at 0 and at the last
row or column). Both resamplings are separable (the sample points form a grid), so each is one
linear interpolation along the columns and one along the rows; only rounding differs from
torch's four-tap form (label maps agree on >= 99.9% of pixels, tests/test_torch_free.py).

Example:
    >>> labels = semantic_labels(logits, masks, (512, 384), (0, 0, 384, 512), (512, 384))
    >>> labels.dtype, labels.shape
    (dtype('uint8'), (512, 384))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Floats per resampled strip (512 KB), whatever the number of maps or the frame width (both
#: post-processings use it): under the size glibc serves by mmap (streamer.core.heap), so strips
#: reuse heap memory instead of faulting in fresh pages each time (post-processing of a 512x254
#: crop: 95 ms -> 65 ms).
STRIP_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class Taps:
    """Linear interpolation along one axis: ``out[i] = (1 - w[i]) * a[lo[i]] + w[i] * a[hi[i]]``."""

    lo: np.ndarray  # intp
    hi: np.ndarray  # intp
    w: np.ndarray  # float32

    def apply(self, values: np.ndarray, axis: int, start: int = 0, end: int | None = None
              ) -> np.ndarray:
        """``values`` resampled along ``axis`` at the taps ``start:end``."""
        lo, hi, w = self.lo[start:end], self.hi[start:end], self.w[start:end]
        shape = [1] * values.ndim
        shape[axis] = w.shape[0]
        w = w.reshape(shape)
        a = np.take(values, lo, axis=axis)
        b = np.take(values, hi, axis=axis)
        # (1 - w) * a + w * b, written as a + w * (b - a) in place: one temporary fewer.
        b -= a
        b *= w
        a += b
        return a


def _taps(source: np.ndarray, size: int) -> Taps:
    """Taps at fractional source coordinates (float32), clamped to ``[0, size - 1]``."""
    source = np.clip(source, 0, size - 1).astype(np.float32)
    lo = np.floor(source).astype(np.intp)
    hi = np.minimum(lo + 1, size - 1)
    return Taps(lo, hi, (source - lo).astype(np.float32))


def grid_taps(start: int, end: int, count: int, canvas: int, size: int) -> Taps:
    """Where ``grid_sample`` (bilinear, border, ``align_corners=False``) reads a map of ``size``
    cells spread over ``canvas`` pixels, for the centres of ``count`` output pixels spread
    over canvas pixels ``start..end``."""
    centres = np.float32(start) + (np.arange(count, dtype=np.float32) + np.float32(0.5)) * \
        np.float32((end - start) / count)
    normalised = centres / np.float32(canvas) * np.float32(2) - np.float32(1)
    return _taps(((normalised + np.float32(1)) * np.float32(size) - np.float32(1))
                 / np.float32(2), size)


def resize_taps(size: int, count: int) -> Taps:
    """Where ``interpolate`` (bilinear, ``align_corners=False``) reads ``size`` cells for
    ``count`` outputs: ``(i + 0.5) * size / count - 0.5``, clamped at 0."""
    scale = np.float32(size / count)
    source = (np.arange(count, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    return _taps(np.maximum(source, np.float32(0)), size)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    shifted = logits.astype(np.float32) - logits.max(-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(-1, keepdims=True)
    return shifted


def sigmoid(values: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in place (float32)."""
    np.negative(values, out=values)
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x << 0 gives 1 / inf = 0, as torch
        np.exp(values, out=values)
    values += np.float32(1)
    np.reciprocal(values, out=values)
    return values


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(0)`` as uint8 for (C, ...) scores, the first class winning a tie: one
    comparison pass per class, which numpy runs far faster than its strided axis-0 argmax."""
    best = scores[0].copy()
    labels = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        higher = scores[c] > best
        labels[higher] = c
        np.maximum(best, scores[c], out=best)
    return labels


def semantic_labels(
    logits: np.ndarray,
    masks: np.ndarray,
    canvas_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Single-person label map: argmax over classes of ``softmax(logits) . sigmoid(masks)``.

    ``logits`` (Q, C+1) and ``masks`` (Q, h, w) are one image's outputs on the stride-4 grid;
    the last logit is "no object". Mask logits are resampled bilinearly to canvas pixels inside
    ``box`` only, in row strips, before the sigmoid; the class scores are then resized to
    ``out_hw`` if the crop was shrunk onto the canvas.
    """
    probs = np.ascontiguousarray(softmax(logits)[:, :-1].T)  # (C, Q)
    masks = np.asarray(masks, np.float32)
    x0, y0, x1, y1 = box
    bh, bw = y1 - y0, x1 - x0
    q, mh, mw = masks.shape
    c = probs.shape[0]
    columns = grid_taps(x0, x1, bw, canvas_hw[1], mw).apply(masks, 2)  # (Q, h, bw)
    rows_of = grid_taps(y0, y1, bh, canvas_hw[0], mh)
    resize = (bh, bw) != tuple(out_hw)
    labels = np.empty((bh, bw), np.uint8)
    scores = np.empty((c, bh, bw), np.float32) if resize else None
    rows = max(1, STRIP_ELEMENTS // max(1, q * bw))
    for r0 in range(0, bh, rows):
        r1 = min(bh, r0 + rows)
        sampled = sigmoid(rows_of.apply(columns, 1, r0, r1))  # (Q, rows, bw)
        strip = (probs @ sampled.reshape(q, -1)).reshape(c, r1 - r0, bw)
        if scores is None:
            labels[r0:r1] = argmax_classes(strip)
        else:
            scores[:, r0:r1] = strip
    if scores is None:
        return labels
    oh, ow = out_hw
    wide = resize_taps(bw, ow).apply(scores, 2)  # (C, bh, ow)
    down = resize_taps(bh, oh)
    out = np.empty((oh, ow), np.uint8)
    rows = max(1, STRIP_ELEMENTS // max(1, c * ow))
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        out[r0:r1] = argmax_classes(down.apply(wide, 1, r0, r1))
    return out
