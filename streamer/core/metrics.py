"""Counters and timings of a pipeline run, and the summary printed at the end.

Per-frame cost is an integer increment or a float append; percentiles are computed once, at
the end (or when a live view asks for them).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "detect", "parse", "render", "encode")
# Enough for percentiles over long runs without growing without bound on a 24/7 stream.
WINDOW = 20_000


def percentiles(values: Any) -> dict[str, float]:
    data = np.fromiter(values, dtype=np.float64)
    if data.size == 0:
        return {"p50": 0.0, "p95": 0.0}
    p50, p95 = np.percentile(data, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


@dataclass
class RunMetrics:
    """What happened in a run. Thread-safe where several threads write."""

    frames_read: int = 0
    frames_parsed: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    gap_seconds: float = 0.0
    decode_errors: int = 0
    packets_corrupt: int = 0
    frames_corrupt: int = 0
    crops_parsed: int = 0
    crops_reused: int = 0
    # Live only: frames captured but never shown or written (the display buffer overflowed),
    # and the rate the source said it delivers.
    display_dropped: int = 0
    source_fps: float | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    stages: dict[str, deque[float]] = field(
        default_factory=lambda: {s: deque(maxlen=WINDOW) for s in STAGES})
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    # Age of the overlay on each shown/written frame: capture of the frame that was parsed
    # -> the moment a frame carrying that parse is out (what a viewer sees, not display lag).
    overlay_age: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stages[stage].append(seconds * 1000.0)

    def add_output(self, capture_time: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames_written += 1
            self.latency.append((now - capture_time) * 1000.0)
            self.recent.append((now, capture_time))

    def add_overlay(self, parse_capture_time: float) -> None:
        """Note that a frame showing the parse of a frame captured then is out now."""
        age = (time.monotonic() - parse_capture_time) * 1000.0
        with self._lock:
            self.overlay_age.append(age)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def current_fps(self) -> float:
        """Output frames per second over the last few seconds (for live views)."""
        with self._lock:
            if len(self.recent) < 2:
                return 0.0
            span = self.recent[-1][0] - self.recent[0][0]
            return (len(self.recent) - 1) / span if span > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        elapsed = self.elapsed
        with self._lock:
            latency = percentiles(list(self.latency))
            overlay_age = percentiles(list(self.overlay_age))
        return {
            "frames_read": self.frames_read,
            "frames_parsed": self.frames_parsed,
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "decode_errors": self.decode_errors,
            "packets_corrupt": self.packets_corrupt,
            "frames_corrupt": self.frames_corrupt,
            "reconnects": self.reconnects,
            "crops_parsed": self.crops_parsed,
            "crops_reused": self.crops_reused,
            "gap_seconds": round(self.gap_seconds, 3),
            "latency_ms": latency,
            "overlay_age_ms": overlay_age,
            "display_dropped": self.display_dropped,
            "source_fps": round(self.source_fps, 3) if self.source_fps else None,
            "stages_ms": {s: percentiles(list(v)) for s, v in self.stages.items()},
            "fps": round(self.frames_written / elapsed, 3) if elapsed > 0 else 0.0,
            "parse_fps": round(self.frames_parsed / elapsed, 3) if elapsed > 0 else 0.0,
            "elapsed_s": round(elapsed, 3),
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.summary(), indent=2) + "\n")


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table: counts, per-stage p50/p95, end-to-end latency and FPS."""
    lines = [
        f"frames  read {summary['frames_read']}  parsed {summary['frames_parsed']}  "
        f"written {summary['frames_written']}  dropped {summary['frames_dropped']}"
        + (f"  decode errors {summary['decode_errors']}" if summary["decode_errors"] else "")
        + (f"  damaged packets {summary['packets_corrupt']}"
           if summary.get("packets_corrupt") else "")
        + (f"  damaged frames {summary['frames_corrupt']}" if summary.get("frames_corrupt") else "")
        + (f"  reconnects {summary['reconnects']}" if summary["reconnects"] else "")
        + (f"  crops reused {summary['crops_reused']}/"
           f"{summary['crops_reused'] + summary['crops_parsed']}"
           if summary.get("crops_reused") else ""),
        f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}",
    ]
    for stage, q in summary["stages_ms"].items():
        lines.append(f"{stage:<12}{q['p50']:>10.1f}{q['p95']:>10.1f}")
    lat = summary["latency_ms"]
    lines.append(f"{'end-to-end':<12}{lat['p50']:>10.1f}{lat['p95']:>10.1f}")
    age = summary.get("overlay_age_ms")
    if age is not None:
        lines.append(f"{'overlay age':<12}{age['p50']:>10.1f}{age['p95']:>10.1f}")
    lines.append(
        f"effective {summary['fps']:.2f} fps written, {summary['parse_fps']:.2f} fps parsed, "
        f"{summary['elapsed_s']:.1f} s")
    return "\n".join(lines)
