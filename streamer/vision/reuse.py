"""Skip re-parsing a tracked person whose crop has barely changed since their last parse.

A parse costs about half a second per person on a CPU; a person standing still in front of a
fixed camera gives nearly the same crop frame after frame. :class:`CropMemory` keeps, per
track id, a small grey thumbnail of the crop that was last parsed and its label map. A new crop
of the same person is compared with that thumbnail by mean absolute pixel difference (0-255
grey levels); under ``threshold`` the stored labels are reused (resized to the new box) instead
of parsing again. The reference stays the crop of the last real parse, so slow drift adds up
until it crosses the threshold and forces a parse.

Example:
    >>> memory = CropMemory(threshold=2.5)
    >>> labels = memory.recall(person, crop)        # None: parse it
    >>> if labels is None:
    ...     labels = parse(crop)
    ...     memory.remember(person, crop, labels)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamer.core.types import Person

THUMB_WH = (32, 64)
# A box whose size changed by more than this fraction is a different framing: parse again.
MAX_SIZE_CHANGE = 0.15


def thumbnail(crop: np.ndarray) -> np.ndarray:
    """A 32x64 grey thumbnail (float32), area-averaged, so noise counts less than change."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    return cv2.resize(grey, THUMB_WH, interpolation=cv2.INTER_AREA).astype(np.float32)


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@dataclass
class _Memory:
    thumb: np.ndarray
    labels: np.ndarray
    hw: tuple[int, int]
    seen: int  # ``CropMemory.clock`` when this person was last looked at


class CropMemory:
    """Label maps of each tracked person's last parsed crop. Not thread-safe: one per stream.

    ``threshold`` 0 turns reuse off. People not seen for ``forget_after`` calls are dropped.
    """

    def __init__(self, threshold: float, forget_after: int = 100) -> None:
        self.threshold = threshold
        self.forget_after = forget_after
        self.clock = 0
        self.reused = 0
        self.parsed = 0
        self._people: dict[int, _Memory] = {}

    def tick(self) -> None:
        """Advance one frame; forget people gone for too long."""
        self.clock += 1
        stale = [pid for pid, m in self._people.items()
                 if self.clock - m.seen > self.forget_after]
        for pid in stale:
            del self._people[pid]

    def recall(self, person: Person, crop: np.ndarray) -> np.ndarray | None:
        """The stored labels resized to ``crop``, if this person's crop barely changed."""
        if self.threshold <= 0:
            return None
        memory = self._people.get(person.id)
        if memory is None:
            return None
        memory.seen = self.clock
        h, w = crop.shape[:2]
        mh, mw = memory.hw
        if abs(h - mh) > MAX_SIZE_CHANGE * mh or abs(w - mw) > MAX_SIZE_CHANGE * mw:
            return None
        if mean_abs_difference(thumbnail(crop), memory.thumb) >= self.threshold:
            return None
        self.reused += 1
        if (h, w) == memory.hw:
            return memory.labels
        return cv2.resize(memory.labels, (w, h), interpolation=cv2.INTER_NEAREST)

    def remember(self, person: Person, crop: np.ndarray, labels: np.ndarray) -> None:
        self.parsed += 1
        if self.threshold <= 0:
            return
        self._people[person.id] = _Memory(thumbnail(crop), labels, crop.shape[:2], self.clock)
