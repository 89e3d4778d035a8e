"""Value objects that flow between the stages.

Every stage speaks in these small dataclasses, so a stage knows its inputs and outputs and
nothing about its neighbours. Images are always RGB ``uint8`` arrays of shape ``(H, W, 3)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What a source knows about its stream before the first frame.

    Example:
        >>> info = VideoInfo(width=640, height=360, fps=25.0)
        >>> info.resolution
        (640, 360)
    """

    width: int
    height: int
    fps: float
    frame_count: int | None = None
    time_base: Fraction | None = None
    is_live: bool = False
    has_audio: bool = False
    uri: str = ""

    @property
    def resolution(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass
class Frame:
    """One decoded picture and where it came from.

    ``pts`` is the presentation timestamp in ``time_base`` units (``None`` when the source has
    none, such as a webcam); ``timestamp`` is the same in seconds. ``capture_time`` is
    ``time.monotonic()`` when the frame left the decoder, used for end-to-end latency.
    ``name`` is the source image's file stem for images (``None`` for video frames).
    """

    index: int
    image: np.ndarray
    timestamp: float
    capture_time: float
    pts: int | None = None
    time_base: Fraction | None = None
    #: The file stem of an image read from a folder (``None`` for video): label maps and
    #: other per-frame files are named after it.
    name: str | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


#: The smallest frame side, in pixels, that is parsed: nothing smaller can show a person.
MIN_PARSE_SIDE = 8
#: The most elongated frame that is parsed (long side / short side). Fitted onto the model's
#: canvas, a thinner strip would shrink to less than a pixel across (a 2x4000 video).
MAX_PARSE_ASPECT = 20


def unparseable_size(height: int, width: int) -> str | None:
    """Why a ``height x width`` frame cannot be parsed, or ``None`` when it can.

    Example:
        >>> unparseable_size(480, 640) is None
        True
        >>> unparseable_size(4000, 2)
        '2x4000 px, too small or too thin to parse (frames need at least 8 px on each side ...'
    """
    short, long = min(height, width), max(height, width)
    if short >= MIN_PARSE_SIDE and long <= MAX_PARSE_ASPECT * short:
        return None
    return (f"{width}x{height} px, too small or too thin to parse (frames need at least "
            f"{MIN_PARSE_SIDE} px on each side, and the long side at most {MAX_PARSE_ASPECT} "
            "times the short one)")


def whole_pixels(x: np.ndarray | float) -> np.ndarray:
    """Pixel coordinates rounded halves up (``floor(x + 0.5)``), so whole-pixel moves add up
    whatever the start. The tracker's boxes and the carrier's shifts share it, so that a parse
    shifted with its person's box lands exactly where the box went."""
    return np.floor(np.asarray(x, np.float64) + 0.5)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates, ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 1.0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def iou(self, other: Box) -> float:
        ix0, iy0 = max(self.x0, other.x0), max(self.y0, other.y0)
        ix1, iy1 = min(self.x1, other.x1), min(self.y1, other.y1)
        inter = max(0, ix1 - ix0) * max(0, iy1 - iy0)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Person:
    """A person found in a frame: a stable track id, a confidence and a box."""

    id: int
    score: float
    box: Box

    def to_json(self) -> dict[str, object]:
        """``{"id", "score", "box": [x0, y0, x1, y1]}``, as the stats JSONL records it.

        Example:
            >>> Person(1, 0.9, Box(0, 0, 10, 20)).to_json()
            {'id': 1, 'score': 0.9, 'box': [0, 0, 10, 20]}
        """
        b = self.box
        return {"id": int(self.id), "score": round(float(self.score), 4),
                "box": [int(b.x0), int(b.y0), int(b.x1), int(b.y1)]}


@dataclass
class ParseResult:
    """The parse of one image.

    ``labels`` holds one class id per pixel (index into ``classes``, 0 = background).
    ``instances`` holds the person id per pixel (0 = nobody), or ``None`` when the model
    does not separate people.
    """

    labels: np.ndarray
    classes: tuple[str, ...]
    instances: np.ndarray | None = None
    persons: list[Person] = field(default_factory=list)

    def class_pixel_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        return {name: int(counts[i]) for i, name in enumerate(self.classes) if counts[i]}


@dataclass
class Output:
    """What every sink's ``write(item)`` takes: one output frame, as the pipeline made it.

    ``frame`` is the source frame (``index``, ``pts``/``time_base``, ``timestamp``, ``name``),
    ``image`` the rendered RGB picture to show or encode, ``result`` the parse shown on it
    (``None``: nothing parsed yet, or a frame too small to parse) and ``record`` the stats line
    of the frame (``None`` when nobody asked for one).

    Example:
        >>> out = Output(frame, overlay, result, {"index": frame.index, "parsed": True})
        >>> with VideoFileSink("out.mp4", info) as video, JsonlStatsSink("s.jsonl") as stats:
        ...     video.write(out); stats.write(out)
    """

    frame: Frame
    image: np.ndarray
    result: ParseResult | None = None
    record: Mapping[str, Any] | None = None
