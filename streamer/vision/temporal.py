"""Carrying parses between frames: propagation by box shift or optical flow, and stability.

Parsing is slower than video, so most frames are shown with the parse of an earlier frame.
:class:`Carrier` keeps what is shown in step with the picture. Three propagation methods
(``render.propagate``):

- ``none``: the last parse as it is;
- ``shift``: each person's labels move with the person's tracked box
  (:func:`streamer.vision.propagate.shift_persons`); the tracker moves a box at a steady size, by
  the same whole pixels, so a parse made on a detector run, shifted, sits exactly on the crop
  the parser would take on the later frame;
- ``flow``: each person's labels are warped by dense optical flow (OpenCV's DIS, preset
  ``ultrafast`` with its finest scale at 1/2) computed inside that person's box, shrunk so its
  long side is at most 256 px. Every shown frame is warped straight from the frame where the
  parse landed (errors do not pile up from frame to frame); the person's box motion, and where
  the previous frame found the person, give the flow its starting point, so large moves are
  found too. Labels are sampled nearest-neighbour: class ids never blend. Where there is no
  flow (a scene cut, found by a frame-difference threshold, or a region too small), the
  person is shifted by box motion instead. About 6.5 ms per 720p frame with 3 people of
  450 px on 2 busy cores (``shift``: 2 ms; ``benchmarks/temporal_bench.py``,
  ``ms_per_frame_720p_3_people``).

And optional stability (``render.stability``), applied when a new parse lands for a person
already on screen, pixel by pixel inside that person's box:

- ``majority``: the label most of the last ``render.stability_depth`` parses agree on, every
  older parse aligned to the current frame by the same propagation (ties go to the newest, so
  a depth of 3 or more is needed);
- ``blend``: the propagated map is blended with the new parse through a per-pixel bank of
  votes, carried along with it: agreement adds one (up to ``stability_depth - 1``),
  disagreement takes one away, and the new label replaces the shown one when the bank is
  empty.

Both remove a label that appears in a single parse; both are causal (a parse is applied on the
frame it lands on, never held back for later frames); a lasting change shows from the second
parse that has it at the default depth of 3 (one parse later than without stability; a
larger depth waits longer, a depth of 2 turns stability into a no-op). People
new to the screen, and pixels of other people, are taken from the new parse as they are.

Example:
    >>> carrier = Carrier(propagate="flow", stability="majority")
    >>> shown = carrier.carry(frame.image, frame.index, result,              # a parse lands
    ...                       source_image=parsed.image, source_index=parsed.index,
    ...                       velocities={1: np.array([2.0, 0.0, 2.0, 0.0])})
    >>> later = carrier.carry(next_frame.image, next_frame.index, result)  # same parse, moved
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.core.errors import ConfigError
from streamer.core.types import Box, ParseResult, Person, whole_pixels
from streamer.vision.propagate import shift_persons

__all__ = [
    "FLOW_PRESETS",
    "PROPAGATE_METHODS",
    "STABILITY_MODES",
    "Carrier",
    "FlowPropagator",
    "Motion",
    "blend_votes",
    "is_scene_cut",
    "majority_labels",
    "agreement",
    "flicker",
    "warp_result",
    "warp_with",
]

PROPAGATE_METHODS = ("none", "shift", "flow")
STABILITY_MODES = ("none", "majority", "blend")
FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
MIN_FLOW_SIDE = 16  # regions smaller than this (px, after shrinking) are shifted, not flowed


def _clip(box: Box, w: int, h: int) -> Box:
    return Box(min(max(box.x0, 0), w), min(max(box.y0, 0), h),
               min(max(box.x1, 0), w), min(max(box.y1, 0), h), box.score)


def _xyxy(box: Box) -> tuple[int, int, int, int]:
    return box.x0, box.y0, box.x1, box.y1


def _moved(box: Box, dx: int, dy: int) -> Box:
    return Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy, box.score)


@dataclass
class Motion:
    """How one person moves from the source frame to the target frame.

    ``offset`` is the box motion ``(dx, dy)`` in whole pixels. ``field`` (optional) is a
    float32 ``(H, W, 2)`` map over ``region`` of the target frame: for every target pixel, the
    source pixel ``(x, y)`` it comes from. Without a field the person is shifted by ``offset``.
    """

    offset: tuple[int, int] = (0, 0)
    region: Box | None = None
    field: np.ndarray | None = None
    _maps: tuple[np.ndarray, np.ndarray] | None = None

    def pull(self, array: np.ndarray) -> np.ndarray:
        """``array`` (frame-sized) sampled nearest-neighbour at ``field`` (0 outside)."""
        if self._maps is None:
            assert self.field is not None
            # The stubs want a second map; OpenCV takes None for a two-channel first one.
            self._maps = cv2.convertMaps(  # type: ignore[call-overload]
                self.field, None, cv2.CV_16SC2, nninterpolation=True)
        map1, map2 = self._maps
        return cv2.remap(array, map1, map2, cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)


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
        if preset not in FLOW_PRESETS:
            raise ConfigError(f"flow preset must be one of {', '.join(FLOW_PRESETS)}, "
                              f"not {preset!r}")
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
            box = _clip(person.box, w, h)
            pad_x = max(2, round(self.margin * box.width))
            pad_y = max(2, round(self.margin * box.height))
            region = _clip(Box(box.x0 + dx - pad_x, box.y0 + dy - pad_y,
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


def _as_people(result: ParseResult) -> ParseResult:
    """``result`` with a person-id map; a map without one becomes a single whole-frame person."""
    if result.instances is not None:
        return result
    h, w = result.labels.shape
    instances = (result.labels != 0).astype(np.uint16)
    return ParseResult(result.labels, result.classes, instances, [Person(1, 1.0, Box(0, 0, w, h))])


def warp_result(result: ParseResult, motions: Mapping[int, Motion]) -> ParseResult:
    """A copy of ``result`` with each person's pixels moved by ``motions[id]``.

    Labels that belong to nobody stay where they are; people are pasted lowest score first so
    the higher score wins where they overlap; a person moved out of the frame is dropped; a
    person without a motion stays put. Sampling is nearest-neighbour, so the output holds only
    values of the input. With motions that are offsets only, this is
    :func:`~streamer.vision.propagate.shift_persons`.

    Example:
        >>> moved = warp_result(result, {1: Motion((4, 0))})   # person 1: 4 px to the right
    """
    return warp_with(result, motions, ())[0]


def warp_with(result: ParseResult, motions: Mapping[int, Motion],
              extras: Sequence[np.ndarray]) -> tuple[ParseResult, list[np.ndarray]]:
    """:func:`warp_result`, and ``extras`` (arrays the size of the frame) carried the same way
    as the labels: a person's values move with the person, nobody's stay put.

    Example:
        >>> moved, (votes,) = warp_with(result, motions, [votes])
    """
    result = _as_people(result)
    src_labels, src_inst = result.labels, _instances(result)
    h, w = src_labels.shape
    labels = src_labels.copy()
    instances = np.zeros_like(src_inst)
    carried = [np.array(e, copy=True) for e in extras]
    extent: dict[int, tuple[int, int, int, int]] = {}  # where each person's pixels were
    for person in result.persons:  # clear everybody's pixels; nobody's stay
        b = _clip(person.box, w, h)
        mine = src_inst[b.y0:b.y1, b.x0:b.x1] == person.id
        labels[b.y0:b.y1, b.x0:b.x1][mine] = 0
        for c in carried:
            c[b.y0:b.y1, b.x0:b.x1][mine] = 0
        if person.id in motions and motions[person.id].field is not None:
            bx, by, bw, bh = cv2.boundingRect(mine.view(np.uint8))
            extent[person.id] = (b.x0 + bx, b.y0 + by, bw, bh)
    persons: list[Person] = []
    for person in sorted(result.persons, key=lambda p: p.score):
        motion = motions.get(person.id) or Motion()
        src = _clip(person.box, w, h)
        dx, dy = motion.offset
        if motion.field is None:
            dst = _clip(_moved(src, dx, dy), w, h)
            if dst.width <= 0 or dst.height <= 0:
                continue  # carried out of the frame
            sx0, sy0 = dst.x0 - dx, dst.y0 - dy
            sx1, sy1 = sx0 + dst.width, sy0 + dst.height
            mine = src_inst[sy0:sy1, sx0:sx1] == person.id
            labels[dst.y0:dst.y1, dst.x0:dst.x1][mine] = src_labels[sy0:sy1, sx0:sx1][mine]
            instances[dst.y0:dst.y1, dst.x0:dst.x1][mine] = person.id
            for c, e in zip(carried, extras, strict=True):
                c[dst.y0:dst.y1, dst.x0:dst.x1][mine] = e[sy0:sy1, sx0:sx1][mine]
            persons.append(Person(person.id, person.score, Box(*_xyxy(dst), person.score)))
            continue
        r = motion.region
        assert r is not None
        pull = motion.pull
        mine = pull(src_inst) == person.id
        if not mine.any():
            continue
        labels[r.y0:r.y1, r.x0:r.x1][mine] = pull(src_labels)[mine]
        instances[r.y0:r.y1, r.x0:r.x1][mine] = person.id
        for c, e in zip(carried, extras, strict=True):
            c[r.y0:r.y1, r.x0:r.x1][mine] = pull(e)[mine]
        # The box moves as the person's pixels did (centre of their extent), and always
        # holds them.
        bx, by, bw, bh = cv2.boundingRect(mine.view(np.uint8))
        bx, by = bx + r.x0, by + r.y0
        ex, ey, ew, eh = extent.get(person.id, (bx, by, bw, bh))
        moved = _clip(_moved(src, round(bx + bw / 2 - ex - ew / 2),
                             round(by + bh / 2 - ey - eh / 2)), w, h)
        box = Box(min(moved.x0, bx), min(moved.y0, by), max(moved.x1, bx + bw),
                  max(moved.y1, by + bh), person.score)
        persons.append(Person(person.id, person.score, box))
    persons.sort(key=lambda p: p.id)
    return ParseResult(labels, result.classes, instances, persons), carried


# ---------------------------------------------------------------------------- stability
def majority_labels(maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the value most of ``maps`` (oldest first) agree on; ties go to the newest.
    Also returns, per pixel, the index of the map whose value was taken.

    Example:
        >>> a, b = np.array([[1, 2]]), np.array([[3, 2]])
        >>> majority_labels([a, a, b])[0].tolist(), majority_labels([a, b])[0].tolist()
        ([[1, 2]], [[3, 2]])
    """
    if not maps:
        raise ValueError("majority of no maps")
    k = len(maps)
    best = np.array(maps[-1], copy=True)
    best_count = np.zeros(best.shape, np.int16)
    which = np.full(best.shape, k - 1, np.int16)
    for i in range(k - 1, -1, -1):  # newest first; only a strictly larger count replaces it
        count = np.zeros(best.shape, np.int16)
        for j in range(k):
            count += maps[j] == maps[i]
        better = count > best_count
        best[better] = maps[i][better]
        which[better] = i
        best_count = np.maximum(best_count, count)
    return best, which


def blend_votes(shown: np.ndarray, new: np.ndarray, votes: np.ndarray,
                depth: int) -> tuple[np.ndarray, np.ndarray]:
    """One parse's worth of blending: ``(labels, votes)`` after ``new`` lands on ``shown``.

    Where they agree the vote bank grows (at most ``depth``); where they disagree it shrinks,
    and the new label takes over (with one vote) once it is empty.

    Example:
        >>> shown, new = np.array([[5, 5]]), np.array([[5, 7]])
        >>> blend_votes(shown, new, np.array([[2, 2]], np.uint8), 3)
        (array([[5, 5]]), array([[3, 1]], dtype=uint8))
        >>> blend_votes(shown, new, np.array([[2, 1]], np.uint8), 3)[0]
        array([[5, 7]])
    """
    v = votes.astype(np.int16)
    agree = shown == new
    v = np.where(agree, np.minimum(v + 1, depth), v - 1)
    switch = v <= 0
    labels = np.where(switch, new, shown)
    v[switch] = 1
    return labels, v.astype(np.uint8)


def _instances(result: ParseResult) -> np.ndarray:
    """The person-id map of a result known to have one (one from :func:`_as_people`)."""
    assert result.instances is not None, "a result without a person-id map"
    return result.instances


def _ids(result: ParseResult) -> set[int]:
    return {p.id for p in result.persons}


@dataclass
class _State:
    """What is on screen and the stability state, all aligned to frame ``index`` (``image``).

    ``done`` is how many frames after its parse the shown map's box motion has reached;
    ``velocity`` is that parse's box motion per frame."""

    image: np.ndarray
    index: int
    shown: ParseResult
    done: int
    velocity: dict[int, tuple[float, float]]
    history: list[ParseResult]
    votes: np.ndarray | None


class Carrier:
    """What to show on each frame, given the latest parse: propagation and stability.

    Call :meth:`carry` once per shown frame, in order, with the latest parse result; pass
    ``source_image`` / ``source_index`` / ``velocities`` (per-person box motion in px per frame,
    ``x0, y0, x1, y1``) when that result is new (later calls may repeat them).
    ``result`` objects are told apart by identity: the same object means the same parse.
    Not thread-safe: one per stream, in the thread that shows the frames.

    With ``chain=False`` (the default) every frame is warped straight from the frame where the
    parse landed, so warping errors do not pile up; ``chain=True`` warps from the previous
    shown frame (smaller motions, but an error made once is carried on).

    Example:
        >>> carrier = Carrier(propagate="flow")
        >>> for frame, parsed in stream:            # parsed: the latest parse and its frame
        ...     shown = carrier.carry(frame.image, frame.index, parsed.result,
        ...                           source_image=parsed.frame.image,
        ...                           source_index=parsed.frame.index,
        ...                           velocities=parsed.velocities)
    """

    def __init__(self, propagate: str = "shift", stability: str = "none",
                 stability_depth: int = 3, *, flow_preset: str = "ultrafast",
                 flow_size: int = 256, scene_cut: float = 0.2,
                 flow_finest_scale: int | None = 1, chain: bool = False) -> None:
        if propagate not in PROPAGATE_METHODS:
            raise ConfigError(f"render.propagate must be one of {', '.join(PROPAGATE_METHODS)}, "
                              f"not {propagate!r}")
        if stability not in STABILITY_MODES:
            raise ConfigError(f"render.stability must be one of {', '.join(STABILITY_MODES)}, "
                              f"not {stability!r}")
        if int(stability_depth) < 2:
            raise ConfigError(f"render.stability_depth must be at least 2, not {stability_depth}")
        self.propagate = propagate
        self.stability = stability
        self.depth = int(stability_depth)
        self.chain = bool(chain)
        self.flow = FlowPropagator(flow_preset, flow_size, scene_cut=scene_cut,
                                   finest_scale=flow_finest_scale) \
            if propagate == "flow" else None
        self.reset()

    @classmethod
    def from_config(cls, render: object) -> Carrier:
        """From the ``render`` config section (``propagate``, ``stability``,
        ``stability_depth``; missing keys take the defaults)."""
        return cls(getattr(render, "propagate", "shift"), getattr(render, "stability", "none"),
                   getattr(render, "stability_depth", 3))

    @property
    def stateless(self) -> bool:
        """Whether this carrier keeps nothing between frames (``none`` or ``shift``, no
        stability): then it only ever moves the parse from its own frame."""
        return self.propagate != "flow" and self.stability == "none"

    def reset(self) -> None:
        """Forget everything (a new stream, a seek, a change of frame size)."""
        self._source: ParseResult | None = None
        self._source_index = 0
        self._velocity: dict[int, tuple[float, float]] = {}
        self._anchor: _State | None = None  # where the current parse landed (settled)
        self._last: _State | None = None  # the last frame shown

    # -------------------------------------------------------------------- the public step
    def carry(self, image: np.ndarray, index: int, result: ParseResult | None, *,
              source_image: np.ndarray | None = None, source_index: int | None = None,
              velocities: Mapping[int, np.ndarray] | None = None) -> ParseResult | None:
        """The parse to show on frame ``index`` (``image``), from the latest ``result``."""
        if result is None or result.labels.shape != image.shape[:2]:
            # Nothing parsed, or a parse of a frame of another size: nothing to carry over.
            self.reset()
            return None
        last = self._last
        if last is not None and (index < last.index or image.shape != last.image.shape):
            self.reset()  # the stream started again, or changed size
            last = None
        new = result is not self._source
        if new:
            src_image = image if source_image is None else source_image
            src_index = index if source_index is None else int(source_index)
            self._velocity = {pid: ((float(v[0]) + float(v[2])) / 2,
                                    (float(v[1]) + float(v[3])) / 2)
                              for pid, v in (velocities or {}).items()}
        else:
            src_image, src_index = image, self._source_index
        if self.stateless:
            self._source, self._source_index = result, src_index
            if self.propagate == "none":
                return result
            return shift_persons(result, self._offsets(self._velocity, index - src_index))
        if not new:
            assert self._anchor is not None and last is not None
            if index == last.index:
                return last.shown
            base = last if self.chain else self._anchor
            moved = self._advance(base, image, index, with_state=self.chain, guide=last)
            self._last = moved
            return moved.shown
        # A new parse lands: bring it to this frame, then settle it against what is shown.
        landed = _as_people(result) if self.stability != "none" else result
        if index > src_index and src_image.shape == image.shape:
            motions = self._motions(landed, src_image, image,
                                    self._offsets(self._velocity, index - src_index))
            landed = warp_result(landed, motions) if motions else landed
        history: list[ParseResult] = []
        votes = None
        if self.stability != "none" and last is not None and self._anchor is not None:
            base = last if self.chain else self._anchor
            before = self._advance(base, image, index, with_state=True, guide=last)
            shown, votes = self._settle(landed, before.shown, before.history, before.votes)
            history = before.history
        else:
            shown = landed
            if self.stability == "blend":
                votes = np.ones(landed.labels.shape, np.uint8)
        if self.stability == "majority":
            history = [*history, landed][-(self.depth - 1):]
        self._source, self._source_index = result, src_index
        self._anchor = _State(image, index, shown, index - src_index, dict(self._velocity),
                              history, votes)
        self._last = self._anchor
        return shown

    # -------------------------------------------------------------------- internals
    @staticmethod
    def _offsets(velocity: Mapping[int, tuple[float, float]], steps: int,
                 done: int = 0) -> dict[int, tuple[int, int]]:
        """Box motion from ``done`` to ``steps`` frames after the parse, in whole pixels
        (rounded cumulatively, so many small steps add up to the one big step; with
        :func:`~streamer.core.types.whole_pixels`, as the tracker rounds its boxes)."""
        def whole(x: float) -> int:
            return int(whole_pixels(x))

        return {pid: (whole(vx * steps) - whole(vx * done), whole(vy * steps) - whole(vy * done))
                for pid, (vx, vy) in velocity.items()}

    def _motions(self, result: ParseResult, source: np.ndarray, target: np.ndarray,
                 offsets: dict[int, tuple[int, int]]) -> dict[int, Motion]:
        if self.propagate == "flow":
            assert self.flow is not None
            return self.flow.motions(_as_people(result), source, target, offsets)
        if self.propagate == "shift":
            return {pid: Motion(off) for pid, off in offsets.items()}
        return {}

    def _advance(self, base: _State, image: np.ndarray, index: int, *, with_state: bool,
                 guide: _State | None = None) -> _State:
        """``base`` moved to frame ``index``; its history and votes too when ``with_state``.

        ``guide``, a later frame already shown, tells the flow where each person has got to
        since ``base`` (its box), so that only the last frame's motion is left to find."""
        done = base.done + index - base.index
        if index == base.index:
            return base
        offsets = self._offsets(base.velocity, done, base.done)
        if self.propagate == "flow" and guide is not None and base.index < guide.index < index:
            now = {p.id: p.box for p in guide.shown.persons}
            step = self._offsets(base.velocity, done, guide.done)
            for person in base.shown.persons:
                if person.id in now:
                    b, g = person.box, now[person.id]
                    sx, sy = step.get(person.id, (0, 0))
                    offsets[person.id] = (round((g.x0 + g.x1 - b.x0 - b.x1) / 2) + sx,
                                          round((g.y0 + g.y1 - b.y0 - b.y1) / 2) + sy)
        motions = self._motions(base.shown, base.image, image, offsets)
        if not motions:
            return _State(image, index, base.shown, done, base.velocity, base.history,
                          base.votes)
        extras = [base.votes] if with_state and base.votes is not None else []
        shown, carried = warp_with(base.shown, motions, extras)
        history = base.history
        if with_state:
            history = [warp_result(old, motions) for old in base.history]
        votes = carried[0] if carried else (base.votes if with_state else None)
        return _State(image, index, shown, done, base.velocity, history, votes)

    def _settle(self, landed: ParseResult, shown: ParseResult, history: Sequence[ParseResult],
                votes: np.ndarray | None) -> tuple[ParseResult, np.ndarray | None]:
        """``landed`` with the pixels of people already on screen stabilized."""
        landed = _as_people(landed)
        shown = _as_people(shown)
        on_screen = _ids(shown)
        labels = landed.labels.copy()
        instances = _instances(landed).copy()
        h, w = labels.shape
        new_votes = np.ones((h, w), np.uint8) if votes is not None else None
        for person in sorted(landed.persons, key=lambda p: p.score):
            if person.id not in on_screen:
                continue
            b = _clip(person.box, w, h)
            if b.width <= 0 or b.height <= 0:
                continue
            win = (slice(b.y0, b.y1), slice(b.x0, b.x1))
            new = np.where(_instances(landed)[win] == person.id, landed.labels[win], 0)
            if self.stability == "majority":
                olds = [np.where(_instances(m)[win] == person.id, m.labels[win], 0)
                        for m in history if person.id in _ids(m)]
                if not olds:
                    continue
                final, _ = majority_labels([*olds, new])
            else:
                assert votes is not None and new_votes is not None
                was = np.where(_instances(shown)[win] == person.id, shown.labels[win], 0)
                final, v = blend_votes(was, new, votes[win], self.depth - 1)
            # This person's pixels in the new parse take the settled label; pixels of nobody
            # take it where it is a label of this person's (old parses still see them there).
            owner = _instances(landed)[win]
            free = (owner == person.id) | ((owner == 0) & (final != 0))
            labels[win][free] = final[free]
            instances[win][free] = np.where(final[free] != 0, person.id, 0)
            if new_votes is not None:
                new_votes[win][free] = v[free]
        out = ParseResult(labels, landed.classes, instances, list(landed.persons))
        return out, new_votes


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of person pixels (non-zero in ``a`` or ``b``) where the labels agree; 1.0 when
    neither has any.

    Example:
        >>> agreement(np.array([[0, 1, 2]]), np.array([[0, 1, 3]]))
        0.5
    """
    person = (a != 0) | (b != 0)
    n = int(person.sum())
    return 1.0 if n == 0 else float((a[person] == b[person]).sum()) / n


def flicker(previous: np.ndarray, current: np.ndarray) -> float:
    """Fraction of person pixels whose label changes between two shown frames.

    Example:
        >>> flicker(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 2, 5]]))
        0.3333333333333333
    """
    person = (previous != 0) | (current != 0)
    n = int(person.sum())
    return 0.0 if n == 0 else float((previous[person] != current[person]).sum()) / n

