"""Per-person motion between two frames by dense optical flow (OpenCV's DIS), and scene cuts.

``render.propagate: flow`` uses :class:`FlowPropagator` to find, for every person of a parse,
where each pixel of a later frame comes from; :func:`streamer.vision.propagate.warp_result`
then moves the labels along. Where there is no flow (a scene cut, found by
:func:`is_scene_cut`, or a region too small), the person is only shifted by box motion.

Example:
    >>> flow = FlowPropagator(preset="ultrafast", size=256)
    >>> motions = flow.motions(result, previous_image, image, {1: (3, 0)})
    >>> moved = warp_result(result, motions)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from streamer.core.checks import check_choice
from streamer.core.types import Box, ParseResult
from streamer.vision.propagate import Motion, clip_box

__all__ = ["FLOW_PRESETS", "MIN_FLOW_SIDE", "FlowPropagator", "is_scene_cut"]

FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
MIN_FLOW_SIDE = 16  # regions smaller than this (px, after shrinking) are shifted, not flowed


def is_scene_cut(a: np.ndarray, b: np.ndarray, threshold: float = 0.2,
                 samples: int = 64) -> bool:
    """Whether ``b`` is a different shot from ``a``: mean absolute difference of two
    ``samples``-wide thumbnails, as a fraction of 255, above ``threshold``.

    Example:
        >>> black, white = np.zeros((72, 128, 3), np.uint8), np.full((72, 128, 3), 255, np.uint8)
        >>> is_scene_cut(black, black), is_scene_cut(black, white)
        (False, True)
    """
    if a.shape != b.shape:
        return True
    step = max(1, max(a.shape[:2]) // samples)
    ta = a[::step, ::step].astype(np.int16)
    tb = b[::step, ::step].astype(np.int16)
    return float(np.abs(ta - tb).mean()) / 255.0 > threshold


def _grey_window(image: np.ndarray, x0: int, y0: int, w: int, h: int,
                 size: tuple[int, int]) -> np.ndarray:
    """The ``w`` x ``h`` window at ``(x0, y0)`` of ``image`` (edges replicated where it leaves
    the frame), grey, shrunk to ``size`` = (width, height)."""
    ih, iw = image.shape[:2]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, iw), min(y0 + h, ih)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros((size[1], size[0]), np.uint8)
    crop = image[cy0:cy1, cx0:cx1]
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    if (cx0, cy0, cx1, cy1) != (x0, y0, x0 + w, y0 + h):
        grey = cv2.copyMakeBorder(grey, cy0 - y0, y0 + h - cy1, cx0 - x0, x0 + w - cx1,
                                  cv2.BORDER_REPLICATE)
    if (w, h) != size:
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(grey)


class FlowPropagator:
    """Per-person motion between two frames, by DIS optical flow inside each person's box.

    The flow of a person is computed on a window of the target frame around the person's box
    moved by its box motion (grown by ``margin`` of its size on each side), shrunk so that its
    long side is at most ``size`` px, against the same window of the source frame moved back
    by the box motion. Not thread-safe: one per stream.

    Example:
        >>> flow = FlowPropagator(preset="ultrafast", size=256)
        >>> motions = flow.motions(result, previous_image, image, {1: (3, 0)})
        >>> moved = warp_result(result, motions)
    """

    def __init__(self, preset: str = "ultrafast", size: int = 256, margin: float = 0.1,
                 scene_cut: float = 0.2, finest_scale: int | None = 1) -> None:
        check_choice("flow preset", preset, FLOW_PRESETS)
        self.preset = preset
        self.size = int(size)
        self.margin = float(margin)
        self.scene_cut = float(scene_cut)
        self._dis = cv2.DISOpticalFlow.create(FLOW_PRESETS[preset])
        if finest_scale is not None:
            self._dis.setFinestScale(int(finest_scale))

    def motions(self, result: ParseResult, source: np.ndarray, target: np.ndarray,
                offsets: Mapping[int, tuple[int, int]]) -> dict[int, Motion]:
        """The :class:`Motion` of every person in ``result`` (parsed on, or aligned to,
        ``source``) to ``target``. After a scene cut every person is only shifted."""
        shifted: dict[int, Motion] = {}
        for p in result.persons:
            dx, dy = offsets.get(p.id, (0, 0))
            shifted[p.id] = Motion((dx, dy))
        if source.shape != target.shape or is_scene_cut(source, target, self.scene_cut):
            return shifted
        h, w = target.shape[:2]
        out = {}
        for person in result.persons:
            dx, dy = shifted[person.id].offset
            box = clip_box(person.box, w, h)
            pad_x = max(2, round(self.margin * box.width))
            pad_y = max(2, round(self.margin * box.height))
            region = clip_box(Box(box.x0 + dx - pad_x, box.y0 + dy - pad_y,
                               box.x1 + dx + pad_x, box.y1 + dy + pad_y), w, h)
            out[person.id] = self._motion(source, target, region, (dx, dy)) or shifted[person.id]
        return out

    def _motion(self, source: np.ndarray, target: np.ndarray, region: Box,
                offset: tuple[int, int]) -> Motion | None:
        # Shrink by a whole factor (INTER_AREA is ~30x faster at one): trim the region's far
        # edges (its margin) to a multiple of it.
        k = max(1, math.ceil(max(region.width, region.height) / self.size))
        sw, sh = region.width // k, region.height // k
        if min(sw, sh) < MIN_FLOW_SIDE:
            return None
        rw, rh = sw * k, sh * k
        region = Box(region.x0, region.y0, region.x0 + rw, region.y0 + rh, region.score)
        dx, dy = offset
        now = _grey_window(target, region.x0, region.y0, rw, rh, (sw, sh))
        before = _grey_window(source, region.x0 - dx, region.y0 - dy, rw, rh, (sw, sh))
        # now(x) ~ before(x + flow(x)); (the stubs lack the flow=None form OpenCV accepts)
        flow = self._dis.calc(now, before, None)  # type: ignore[call-overload]
        # Turn the flow into source coordinates at the small size (the frame pixel under each
        # small pixel's centre, plus its flow), then enlarge: the enlarged map of a linear grid
        # plus flow is the enlarged flow plus the full-size grid, at the cost of one resize.
        fx, fy = rw / sw, rh / sh
        flow[..., 0] *= fx
        flow[..., 1] *= fy
        flow[..., 0] += ((np.arange(sw, dtype=np.float32) + 0.5) * fx - 0.5
                         + (region.x0 - dx))[None, :]
        flow[..., 1] += ((np.arange(sh, dtype=np.float32) + 0.5) * fy - 0.5
                         + (region.y0 - dy))[:, None]
        if (sw, sh) != (rw, rh):
            flow = cv2.resize(flow, (rw, rh), interpolation=cv2.INTER_LINEAR)
        return Motion(offset, region, flow)

