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

This module holds the carrier and its options; what it is built from has modules of its own
(re-exported here): :mod:`streamer.vision.propagate` (moving a parse by a :class:`Motion`),
:mod:`streamer.vision.flow` (the optical flow, scene cuts), :mod:`streamer.vision.stability`
(``majority``, ``blend``, and the agreement and flicker measures).

Example:
    >>> carrier = Carrier(propagate="flow", stability="majority")
    >>> shown = carrier.carry(frame.image, frame.index, result,              # a parse lands
    ...                       source_image=parsed.image, source_index=parsed.index,
    ...                       velocities={1: np.array([2.0, 0.0, 2.0, 0.0])})
    >>> later = carrier.carry(next_frame.image, next_frame.index, result)  # same parse, moved
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamer.core.checks import check_choice
from streamer.core.errors import ConfigError
from streamer.core.types import ParseResult, whole_pixels
from streamer.vision.flow import FLOW_PRESETS, FlowPropagator, is_scene_cut
from streamer.vision.propagate import (
    Motion,
    as_people,
    clip_box,
    person_map,
    shift_persons,
    warp_result,
    warp_with,
)
from streamer.vision.stability import agreement, blend_votes, flicker, majority_labels

__all__ = [
    "FLOW_PRESETS",
    "PROPAGATE_METHODS",
    "STABILITY_MODES",
    "Carrier",
    "FlowPropagator",
    "Motion",
    "agreement",
    "blend_votes",
    "flicker",
    "is_scene_cut",
    "majority_labels",
    "warp_result",
    "warp_with",
]

PROPAGATE_METHODS = ("none", "shift", "flow")
STABILITY_MODES = ("none", "majority", "blend")


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
        check_choice("render.propagate", propagate, PROPAGATE_METHODS)
        check_choice("render.stability", stability, STABILITY_MODES)
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
        landed = as_people(result) if self.stability != "none" else result
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
            return self.flow.motions(as_people(result), source, target, offsets)
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
        landed = as_people(landed)
        shown = as_people(shown)
        on_screen = _ids(shown)
        labels = landed.labels.copy()
        instances = person_map(landed).copy()
        h, w = labels.shape
        new_votes = np.ones((h, w), np.uint8) if votes is not None else None
        for person in sorted(landed.persons, key=lambda p: p.score):
            if person.id not in on_screen:
                continue
            b = clip_box(person.box, w, h)
            if b.width <= 0 or b.height <= 0:
                continue
            win = (slice(b.y0, b.y1), slice(b.x0, b.x1))
            new = np.where(person_map(landed)[win] == person.id, landed.labels[win], 0)
            if self.stability == "majority":
                olds = [np.where(person_map(m)[win] == person.id, m.labels[win], 0)
                        for m in history if person.id in _ids(m)]
                if not olds:
                    continue
                final, _ = majority_labels([*olds, new])
            else:
                assert votes is not None and new_votes is not None
                was = np.where(person_map(shown)[win] == person.id, shown.labels[win], 0)
                final, v = blend_votes(was, new, votes[win], self.depth - 1)
            # This person's pixels in the new parse take the settled label; pixels of nobody
            # take it where it is a label of this person's (old parses still see them there).
            owner = person_map(landed)[win]
            free = (owner == person.id) | ((owner == 0) & (final != 0))
            labels[win][free] = final[free]
            instances[win][free] = np.where(final[free] != 0, person.id, 0)
            if new_votes is not None:
                new_votes[win][free] = v[free]
        out = ParseResult(labels, landed.classes, instances, list(landed.persons))
        return out, new_votes
