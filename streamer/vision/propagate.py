"""Carrying a parse result to a later frame, so that an overlay follows the people it belongs to.

On live video most frames are shown with the parse of an earlier frame. :func:`shift_persons`
moves each person's labels by how far that person's tracked box has moved since;
:func:`warp_result` / :func:`warp_with` move them by a :class:`Motion` each (a box offset, or a
dense field from :class:`streamer.vision.flow.FlowPropagator`), carrying frame-sized extras
(a vote bank) along. :class:`streamer.vision.temporal.Carrier` decides which to use per frame.

Example:
    >>> moved = shift_persons(result, {1: (12, -3)})   # person 1 moved 12 px right, 3 px up
    >>> warped = warp_result(result, {1: Motion((12, -3))})   # the same, by a Motion
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.core.types import Box, ParseResult, Person

__all__ = [
    "Motion",
    "as_people",
    "clip_box",
    "person_map",
    "shift_persons",
    "warp_result",
    "warp_with",
]


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` with its corners clipped to a ``width`` x ``height`` frame.

    Example:
        >>> clip_box(Box(-5, 10, 300, 20), 200, 100)
        Box(x0=0, y0=10, x1=200, y1=20, score=1.0)
    """
    return Box(min(max(box.x0, 0), width), min(max(box.y0, 0), height),
               min(max(box.x1, 0), width), min(max(box.y1, 0), height), box.score)


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


#: Person-id map dtypes that OpenCV compares and copies (not 64-bit integers).
_CV_ID_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.int32))


def shift_persons(result: ParseResult, offsets: dict[int, tuple[int, int]]) -> ParseResult:
    """A copy of ``result`` with each person's pixels moved by ``offsets[id] = (dx, dy)``.

    Needs a person-id map (``result.instances``). Labels that belong to nobody stay where they
    are; people are pasted lowest score first, so the higher score wins where they overlap.
    """
    if result.instances is None or not any(offsets.get(p.id, (0, 0)) != (0, 0)
                                           for p in result.persons):
        return result
    h, w = result.labels.shape
    src_labels, src_inst = result.labels, result.instances
    # OpenCV's compare/masked copy do it in a third of numpy's time (where + boolean
    # indexing), for the dtypes it knows; the same pixels either way. (cv2's stubs lack
    # compare's overload with a scalar as the second operand.)
    fast = src_labels.dtype == np.uint8 and src_inst.dtype in _CV_ID_TYPES
    if fast:
        labels = cv2.bitwise_and(src_labels, cv2.compare(src_inst, 0, cv2.CMP_EQ))  # type: ignore[call-overload]
    else:
        labels = np.where(src_inst == 0, src_labels, 0).astype(src_labels.dtype)
    instances = np.zeros_like(src_inst)
    persons: list[Person] = []
    for person in sorted(result.persons, key=lambda p: p.score):
        dx, dy = offsets.get(person.id, (0, 0))
        src = clip_box(person.box, w, h)
        dst = clip_box(Box(src.x0 + dx, src.y0 + dy, src.x1 + dx, src.y1 + dy, person.score), w, h)
        if dst.width <= 0 or dst.height <= 0:
            continue  # carried out of the frame
        # The part of the source box that lands inside the frame.
        sx0, sy0 = dst.x0 - dx, dst.y0 - dy
        sx1, sy1 = sx0 + dst.width, sy0 + dst.height
        ids = src_inst[sy0:sy1, sx0:sx1]
        to_labels = labels[dst.y0:dst.y1, dst.x0:dst.x1]
        to_ids = instances[dst.y0:dst.y1, dst.x0:dst.x1]
        if fast:
            mask = cv2.compare(ids, person.id, cv2.CMP_EQ)  # type: ignore[call-overload]
            cv2.copyTo(src_labels[sy0:sy1, sx0:sx1], mask, to_labels)  # in place, in the views
            cv2.copyTo(ids, mask, to_ids)  # under the mask the source ids are person.id
        else:
            mine = ids == person.id
            to_labels[mine] = src_labels[sy0:sy1, sx0:sx1][mine]
            to_ids[mine] = person.id
        persons.append(Person(person.id, person.score, dst))
    persons.sort(key=lambda p: p.id)
    return ParseResult(labels, result.classes, instances, persons)


def as_people(result: ParseResult) -> ParseResult:
    """``result`` with a person-id map; a map without one becomes a single whole-frame person.

    Example:
        >>> as_people(result).instances is not None
        True
    """
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
    :func:`shift_persons`.

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
    result = as_people(result)
    src_labels, src_inst = result.labels, person_map(result)
    h, w = src_labels.shape
    labels = src_labels.copy()
    instances = np.zeros_like(src_inst)
    carried = [np.array(e, copy=True) for e in extras]
    extent: dict[int, tuple[int, int, int, int]] = {}  # where each person's pixels were
    for person in result.persons:  # clear everybody's pixels; nobody's stay
        b = clip_box(person.box, w, h)
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
        src = clip_box(person.box, w, h)
        dx, dy = motion.offset
        if motion.field is None:
            dst = clip_box(_moved(src, dx, dy), w, h)
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
        moved = clip_box(_moved(src, round(bx + bw / 2 - ex - ew / 2),
                             round(by + bh / 2 - ey - eh / 2)), w, h)
        box = Box(min(moved.x0, bx), min(moved.y0, by), max(moved.x1, bx + bw),
                  max(moved.y1, by + bh), person.score)
        persons.append(Person(person.id, person.score, box))
    persons.sort(key=lambda p: p.id)
    return ParseResult(labels, result.classes, instances, persons), carried


def person_map(result: ParseResult) -> np.ndarray:
    """The person-id map of a result known to have one (one from :func:`as_people`).

    Example:
        >>> person_map(as_people(result)).shape == result.labels.shape
        True
    """
    assert result.instances is not None, "a result without a person-id map"
    return result.instances
