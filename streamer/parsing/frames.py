"""Frames of a stream in, parses out: find the tracked people in a frame, then parse them.

The video counterpart of :mod:`streamer.parsing.photo`: one ``PersonFinder`` and one
``CropMemory`` per stream, so track ids and reused crops carry over from frame to frame; each
step is timed into the run's :class:`~streamer.core.metrics.RunMetrics` (stages ``detect`` and
``parse``). The pipeline's threads and its lane of a shared parse scheduler both use it.

Example:
    >>> detected = find_people(PersonFinder(options), frame, metrics)   # None: whole frame
    >>> result = parse_detected(parser, detected, CropMemory(2.5), metrics)
    >>> item = Parsed(frame, result, True, detected.velocities)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamer.core.metrics import RunMetrics
from streamer.core.types import Frame, ParseResult, Person, unparseable_size
from streamer.parsing.parser import HumanParser
from streamer.vision.detect import PersonFinder
from streamer.vision.reuse import CropMemory

__all__ = ["Detected", "Parsed", "find_people", "parse_detected"]


@dataclass
class Parsed:
    """A frame on its way out, with the parse result to draw (``fresh``: parsed on it).

    ``velocities`` holds each tracked person's box motion in pixels per frame (x0, y0, x1, y1)
    at the time of the parse, so that a later frame can move the overlay along.
    """

    frame: Frame
    result: ParseResult | None
    fresh: bool
    velocities: dict[int, np.ndarray] = field(default_factory=dict)
    # Capture time of the frame ``result`` was parsed on (for the overlay's age when shown).
    parse_capture: float | None = None


@dataclass
class Detected:
    """A frame with the people found in it (``None``: parse the whole frame)."""

    frame: Frame
    persons: list[Person] | None
    velocities: dict[int, np.ndarray]


def find_people(finder: PersonFinder | None, frame: Frame, metrics: RunMetrics) -> Detected:
    """The people in one frame, with their tracked box motion (timed as ``detect``).

    ``finder`` None (the parser takes whole frames), or a frame too small to parse: nobody is
    looked for, the whole frame goes on.

    Example:
        >>> find_people(None, frame, metrics).persons is None
        True
    """
    if finder is None or unparseable_size(frame.height, frame.width) is not None:
        return Detected(frame, None, {})
    started = time.perf_counter()
    persons = finder.find(frame.image, frame.index)
    metrics.add_stage("detect", time.perf_counter() - started)
    velocities = {t.id: t.velocity.copy() for t in finder.tracker.tracks if t.missed == 0}
    return Detected(frame, persons, velocities)


def parse_detected(parser: HumanParser, detected: Detected, memory: CropMemory,
                   metrics: RunMetrics) -> ParseResult:
    """Parse the people of ``detected`` (timed as ``parse``), reusing crops through ``memory``.

    Example:
        >>> parse_detected(parser, detected, memory, metrics).labels.shape == frame.image.shape[:2]
        True
    """
    started = time.perf_counter()
    memory.tick()
    result = parser.parse(detected.frame.image, detected.persons, memory=memory)
    metrics.add_stage("parse", time.perf_counter() - started)
    metrics.frames_parsed += 1
    metrics.crops_reused = memory.reused
    metrics.crops_parsed = memory.parsed
    return result
