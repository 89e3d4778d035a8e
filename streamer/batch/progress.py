"""The batch's progress line: files done of total, frames per second, ETA.

Example:
    >>> progress = BatchProgress(jobs, sys.stderr, enabled=True)
    >>> progress.update({"00000": 120})        # frames written so far by running jobs
    >>> progress.line()
    'batch: 0/3 files done  120 frames  24.0 fps  ETA 0m12s  elapsed 5s'
"""

from __future__ import annotations

import time
from collections import deque
from typing import TextIO

from streamer.batch.plan import Job
from streamer.batch.report import FileRow


class BatchProgress:
    """The batch's progress line: files done of total, frames per second, ETA.

    On a terminal the line is redrawn in place twice a second; otherwise (logs, CI) a full
    line is printed every 15 seconds. Finished files are printed as they finish.
    """

    def __init__(self, jobs: list[Job], stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.files = [j for j in jobs if not j.live]
        self.streams = [j for j in jobs if j.live]
        known = [j.frames_expected for j in self.files if j.frames_expected]
        guess = sum(known) / len(known) if known else 0
        self.expected = {j.key: j.frames_expected or guess for j in self.files}
        self.started = time.monotonic()
        self.done_frames: dict[str, int] = {}
        self.live_frames: dict[str, int] = {}
        self.finished: set[str] = set()
        self.failed = 0
        self.samples: deque[tuple[float, int]] = deque(maxlen=240)
        self._last_print = 0.0
        self._shown = False

    def total_frames(self) -> int:
        return sum(self.done_frames.values()) + sum(self.live_frames.values())

    def update(self, running: dict[str, int]) -> None:
        self.live_frames = dict(running)
        now = time.monotonic()
        self.samples.append((now, self.total_frames()))
        period = 0.5 if self.tty else 15.0
        if self.enabled and now - self._last_print >= period:
            self._last_print = now
            self._emit(self.line())

    def finish(self, row: FileRow, final: bool) -> None:
        if not final:
            if self.enabled:
                error = row.errors[-1] if row.errors else ""
                self._emit(f"retrying {row.job.label} (attempt {row.attempts} failed: {error})",
                           keep=True)
            return
        self.finished.add(row.job.key)
        self.live_frames.pop(row.job.key, None)
        if row.result is not None:
            self.done_frames[row.job.key] = row.result.frames
            if row.job.key in self.expected and row.status == "ok":
                self.expected[row.job.key] = row.result.frames
        if row.status == "failed":
            self.failed += 1
        if self.enabled:
            self._emit(row_line(row), keep=True)
            self._emit(self.line())

    def fps(self) -> float:
        """Frames per second over the last minute (since the start before that)."""
        if len(self.samples) < 2:
            return 0.0
        now, frames = self.samples[-1]
        old = next(((t, f) for t, f in self.samples if now - t <= 60), self.samples[0])
        if now - old[0] < 1e-3:
            return 0.0
        return (frames - old[1]) / (now - old[0])

    def line(self) -> str:
        done = sum(1 for j in self.files if j.key in self.finished)
        frames = self.total_frames()
        fps = self.fps()
        parts = [f"batch: {done}/{len(self.files)} files done"]
        if self.failed:
            parts[0] += f" ({self.failed} failed)"
        if self.streams:
            live = sum(1 for j in self.streams if j.key not in self.finished)
            parts.append(f"{live} stream(s) running")
        parts.append(f"{frames} frames")
        parts.append(f"{fps:.1f} fps")
        file_frames = sum(v for k, v in self.done_frames.items() if k in self.expected) + sum(
            v for k, v in self.live_frames.items() if k in self.expected)
        left = sum(self.expected.values()) - file_frames
        if self.files and done < len(self.files):
            parts.append(f"ETA {_duration(left / fps)}" if fps > 0 and left > 0 else "ETA ?")
        parts.append(f"elapsed {_duration(time.monotonic() - self.started)}")
        return "  ".join(parts)

    def _emit(self, text: str, keep: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if keep else ""))
            self._shown = not keep
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def row_line(row: FileRow) -> str:
    r = row.result
    text = f"{row.status:<7} {row.job.label}"
    if r is not None:
        text += f"  {r.frames} frames  {r.seconds:.1f} s"
    if row.status != "ok" and row.errors:
        text += f"  {row.errors[-1]}"
    return text
