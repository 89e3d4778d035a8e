"""Stable person ids: an IoU tracker that carries boxes between detector runs.

``streamer.vision.detect`` re-exports :class:`IouTracker`, and its :class:`PersonFinder`
runs it on the ``detector.every`` schedule.

Example:
    >>> tracker = IouTracker()
    >>> tracker.update([Box(0, 0, 50, 100)], frame_index=0)[0].id
    1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streamer.core.types import Box, Person, whole_pixels
from streamer.vision.boxes import box_array, iou_matrix

__all__ = ["IouTracker"]


@dataclass
class _Track:
    id: int
    box: np.ndarray  # (4,) float: x0, y0, x1, y1 at the last detection (size smoothed)
    frame: int  # frame index of the last detection
    score: float
    # px per frame, x0, y0, x1, y1: the centre's motion on both corners (the size holds)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    missed: int = 0

    def at(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame)


class IouTracker:
    """Stable person ids by greedy IoU matching of detections to tracks.

    On detector frames, :meth:`update` matches each detection to the track whose predicted box
    overlaps it most (highest IoU first, at least ``iou_match``); unmatched detections start new
    tracks with fresh ids (1, 2, ...), and a track unmatched on more than ``max_missed``
    detector runs is removed. Between detector runs, :meth:`predict` moves each track's box
    along its constant-velocity estimate (an exponential average, weight ``smoothing``, of its
    centre's displacement per frame). Only tracks seen on the last detector run are returned.

    A box keeps its size between detector runs, and on a detector run its size moves only
    ``size_smoothing`` of the way to the detection's (its centre goes all the way): HOG's box
    size jitters by a pyramid step or more from run to run, and a parse follows its crop, so a
    box that breathes makes the overlay flicker. A size change of more than ``size_jump``
    (0.25: a quarter) is taken at once, so a person who stands up is not cut off.

    Frame indices are optional; without them each call is taken as the next frame. Boxes are
    clamped to ``frame_size`` (width, height) once one has been given.

    Example:
        >>> tracker = IouTracker(iou_match=0.3, max_missed=5)
        >>> tracker.update([Box(0, 0, 50, 100)], frame_index=0)
        [Person(id=1, score=1.0, box=Box(x0=0, y0=0, x1=50, y1=100, score=1.0))]
        >>> tracker.update([Box(10, 0, 60, 100)], frame_index=1)[0].id
        1
        >>> tracker.predict(frame_index=2)[0].box.x0
        20
    """

    def __init__(self, iou_match: float = 0.3, max_missed: int = 5,
                 smoothing: float = 0.5, size_smoothing: float = 0.5,
                 size_jump: float = 0.25) -> None:
        self.iou_match = float(iou_match)
        self.max_missed = int(max_missed)
        self.smoothing = float(smoothing)
        self.size_smoothing = float(size_smoothing)
        self.size_jump = float(size_jump)
        self.tracks: list[_Track] = []
        self.frame_size: tuple[int, int] | None = None
        self._frame: int | None = None
        self._next_id = 1

    def reset(self) -> None:
        """Forget every track; ids start again at 1."""
        self.tracks = []
        self._frame = None
        self._next_id = 1

    def _advance(self, frame_index: int | None, frame_size: tuple[int, int] | None) -> int:
        if frame_size is not None:
            self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        if frame_index is None:
            frame_index = 0 if self._frame is None else self._frame + 1
        self._frame = int(frame_index)
        return self._frame

    def update(self, boxes: Sequence[Box] | np.ndarray, frame_index: int | None = None,
               frame_size: tuple[int, int] | None = None) -> list[Person]:
        """Match this detector run's ``boxes``; the persons seen now, by id."""
        frame = self._advance(frame_index, frame_size)
        dets = box_array(boxes)
        det_track = np.full(len(dets), -1)
        if self.tracks and len(dets):
            predicted = np.stack([t.at(frame) for t in self.tracks])
            iou = iou_matrix(predicted, dets)
            free_t = np.ones(len(self.tracks), bool)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                ti, di = divmod(int(flat), len(dets))
                if iou[ti, di] < self.iou_match or iou[ti, di] <= 0:
                    break
                if free_t[ti] and det_track[di] < 0:
                    free_t[ti] = False
                    det_track[di] = ti
        matched = set(det_track[det_track >= 0].tolist())
        for di in np.flatnonzero(det_track >= 0).tolist():
            self._refresh(self.tracks[det_track[di]], dets[di], frame)
        survivors = []
        for ti, track in enumerate(self.tracks):
            if ti not in matched:
                track.missed += 1
                if track.missed > self.max_missed:
                    continue
            survivors.append(track)
        for di in np.flatnonzero(det_track < 0).tolist():  # new people, in the order of ``boxes``
            survivors.append(_Track(self._next_id, dets[di, :4].copy(), frame,
                                    float(dets[di, 4])))
            self._next_id += 1
        self.tracks = survivors  # stays sorted by id: new tracks get ever higher ids
        persons = (self._person(t, t.box) for t in self.tracks if t.missed == 0)
        return [p for p in persons if p is not None]

    def _refresh(self, track: _Track, det: np.ndarray, frame: int) -> None:
        centre = (det[:2] + det[2:4]) / 2
        size = det[2:4] - det[:2]
        dt = frame - track.frame
        if dt > 0:
            step = np.tile(centre - (track.box[:2] + track.box[2:]) / 2, 2) / dt
            if track.hits == 1:
                track.velocity = step
            else:
                track.velocity = (1 - self.smoothing) * track.velocity + self.smoothing * step
        held = track.box[2:] - track.box[:2]
        change = np.abs(size / np.maximum(held, 1e-6) - 1)
        size = whole_pixels(np.where(change > self.size_jump, size,
                               held + self.size_smoothing * (size - held)))
        # Whole pixels on a detector run: the box then moves by exactly the rounded velocity
        # times the frames since (as the carrier shifts a parse), never a pixel off.
        corner = whole_pixels(centre - size / 2)
        track.box = np.concatenate([corner, corner + size])
        track.frame = frame
        track.score = float(det[4])
        track.hits += 1
        track.missed = 0

    def predict(self, frame_index: int | None = None,
                frame_size: tuple[int, int] | None = None) -> list[Person]:
        """Boxes of the tracks seen on the last detector run, moved to ``frame_index``, by id."""
        frame = self._advance(frame_index, frame_size)
        persons = (self._person(t, t.at(frame)) for t in self.tracks if t.missed == 0)
        return [p for p in persons if p is not None]

    def _person(self, track: _Track, box: np.ndarray) -> Person | None:
        # Rounded as corner + size, so that a box moving at a steady size keeps it exactly.
        x0, y0 = (int(v) for v in whole_pixels(box[:2]))
        x1, y1 = x0 + int(whole_pixels(box[2] - box[0])), y0 + int(whole_pixels(box[3] - box[1]))
        if self.frame_size is not None:
            w, h = self.frame_size
            x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
            y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
        if x1 <= x0 or y1 <= y0:
            return None  # carried out of the frame
        return Person(track.id, track.score, Box(x0, y0, x1, y1, track.score))

