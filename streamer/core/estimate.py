"""A one-line time estimate for a whole input, from its first output frames.

Example:
    >>> estimate = Estimate(every=1)
    >>> texts = [estimate.tick(total=100) for _ in range(4)]   # one call per output frame
    >>> duration_words(75), duration_words(5400)
    ('75 s', '1 h 30 min')
"""

from __future__ import annotations

import time

__all__ = ["Estimate", "duration_words"]


def duration_words(seconds: float) -> str:
    """``seconds`` as people say it: seconds up to 90, then minutes, then hours and minutes.

    Example:
        >>> duration_words(42.4), duration_words(600), duration_words(7260)
        ('42 s', '10 min', '2 h 01 min')
    """
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


class Estimate:
    """Times the first output frames and words one estimate for the rest (``tick`` per frame).

    The first frame is not counted (it fills the pipeline); the estimate is made after
    ``2 * every + 1`` more frames (so reused frames do not make it look fast), or 10 s.

    Example:
        >>> estimate = Estimate(every=1)
        >>> estimate.tick(total=None) is None          # a live source: no estimate
        True
    """

    def __init__(self, every: int = 1) -> None:
        self.need = max(3, 2 * every + 1)
        self.first: float | None = None
        self.count = 0

    def tick(self, total: int | None) -> str | None:
        """Count one output frame of ``total``; the estimate once it can be made, else None."""
        now = time.monotonic()
        self.count += 1
        if self.first is None:
            self.first = now
            return None
        timed = self.count - 1
        if total is None or total <= self.count or (
                timed < self.need and now - self.first < 10.0):
            return None
        per = (now - self.first) / timed
        return (f"estimate: {total} frames at {per:.2f} s each, about "
                f"{duration_words(per * (total - self.count))} to go (timed on {timed} frames; "
                "--max-frames N tries fewer)")
