"""Recordings for 24/7 use: a video sink that rotates into finalised segments, with retention.

:class:`SegmentedVideoSink` writes like :class:`~streamer.io.sinks.video.VideoFileSink` but starts a
new file every ``segment_seconds`` of stream time, named after the wall-clock time (UTC) its
first frame was written: ``FOLDER/20261201-093015.250.mkv``. Each segment starts on a keyframe
at timestamp 0 and is closed (finalised) before the next one opens, so a crash or SIGKILL loses
at most the unwritten tail of the current segment; with ``.mkv`` even that segment keeps what
reached the disk. After each rotation the oldest segments in the folder (this naming only;
other files are never touched) are deleted while there are more than ``keep_segments`` or they
take more than ``max_disk_mb`` (0 turns either limit off); the segment being written (at the
end: the last one written) is never deleted.

Example:
    >>> with SegmentedVideoSink("rec/door", info, segment_seconds=60, keep_segments=24 * 60,
    ...                         max_disk_mb=50_000) as sink:
    ...     for frame in frames:
    ...         sink.write(Output(frame, render(frame.image)))
    >>> [p.name for p in sink.segments][:1]
    ['20261201-093015.250.mkv']
"""

from __future__ import annotations

import logging
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output, VideoInfo
from streamer.io.sinks.base import FinalisingSink, video_item
from streamer.io.sinks.checks import VIDEO_SUFFIXES
from streamer.io.sinks.video import VideoFileSink

__all__ = ["SegmentedVideoSink", "list_segments", "segment_name"]

log = logging.getLogger("streamer.segments")

_NAME = re.compile(r"^\d{8}-\d{6}\.\d{3}(?:-\d+)?$")


def segment_name(wall_time: float) -> str:
    """The file stem of a segment started at ``wall_time`` (seconds since the epoch, UTC).

    Example:
        >>> segment_name(0.25)
        '19700101-000000.250'
    """
    whole = int(wall_time)
    millis = int(round((wall_time - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(whole)) + f".{millis:03d}"


def list_segments(folder: str | os.PathLike[str], suffix: str = ".mkv") -> list[Path]:
    """The segment files in ``folder``, oldest first (their names sort by start time)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix == suffix and _NAME.match(p.stem) and p.is_file())


class SegmentedVideoSink(FinalisingSink):
    """Writes a stream as consecutive finalised video files in ``folder``; see the module doc.

    ``sink_options`` go to each segment's :class:`VideoFileSink` (``codec``, ``crf``,
    ``preset``, ...). ``segments`` lists the files this sink wrote that still exist, and
    ``deleted`` those retention removed.
    """

    def __init__(self, folder: str | os.PathLike[str], info: VideoInfo, *,
                 segment_seconds: float, keep_segments: int = 0, max_disk_mb: float = 0.0,
                 suffix: str = ".mkv", clock: Any = time.time, **sink_options: Any) -> None:
        if not segment_seconds > 0:
            raise SinkError(f"output.segment_seconds must be above 0, not {segment_seconds!r}")
        if suffix.lower() not in VIDEO_SUFFIXES:
            raise SinkError(f"cannot write segments as {suffix!r}",
                            hint=f"use one of {', '.join(sorted(VIDEO_SUFFIXES))}")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the segment folder {self.folder} ({exc.strerror})",
                            hint="choose a writable output folder") from None
        self.info = info
        self.segment_seconds = float(segment_seconds)
        self.keep_segments = int(keep_segments)
        self.max_bytes = int(max_disk_mb * 1024 * 1024) if max_disk_mb else 0
        self.suffix = suffix
        self.sink_options = sink_options
        self._clock = clock
        self._sink: VideoFileSink | None = None
        self._origin: float | None = None  # stream time (s) where the segment began
        self._first_pts: tuple[int, Fraction] | None = None
        self._closed = False
        self.frames_written = 0
        self.segments: list[Path] = []
        self.deleted: list[Path] = []

    @property
    def current(self) -> Path | None:
        """The segment being written, if any."""
        return self._sink.path if self._sink is not None else None

    def _stream_time(self, pts: int | None, time_base: Fraction | None) -> float:
        if pts is not None and time_base:
            return float(pts * Fraction(time_base))
        fps = self.info.fps if self.info.fps > 0 else 25.0
        return self.frames_written / fps

    def _open(self, image: np.ndarray) -> None:
        stem = segment_name(self._clock())
        path = self.folder / f"{stem}{self.suffix}"
        n = 1
        while path.exists():  # two segments in the same millisecond, or a clock step back
            path = self.folder / f"{stem}-{n}{self.suffix}"
            n += 1
        h, w = image.shape[:2]
        info = VideoInfo(width=w, height=h, fps=self.info.fps, time_base=self.info.time_base,
                         is_live=self.info.is_live, uri=self.info.uri)
        self._sink = VideoFileSink(path, info, **self.sink_options)
        self.segments.append(path)
        log.info("recording segment %s", path)

    def _finish_segment(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close()

    def _apply_retention(self) -> None:
        # The segment being written, or at the end the last one written, is always kept.
        current = self.current or (self.segments[-1] if self.segments else None)
        found = [p for p in list_segments(self.folder, self.suffix) if p != current]
        sizes = {p: p.stat().st_size for p in found}
        total = sum(sizes.values()) + (current.stat().st_size if current and current.exists()
                                       else 0)
        count = len(found) + (1 if current is not None else 0)
        while found:
            over_count = self.keep_segments and count > self.keep_segments
            over_disk = self.max_bytes and total > self.max_bytes
            if not (over_count or over_disk):
                break
            oldest = found.pop(0)
            try:
                oldest.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete old segment %s: %s", oldest, exc.strerror)
                continue
            self.deleted.append(oldest)
            if oldest in self.segments:
                self.segments.remove(oldest)
            total -= sizes[oldest]
            count -= 1
            log.info("deleted old segment %s", oldest)

    def write(self, item: Output | np.ndarray, pts: int | None = None,
              time_base: Fraction | None = None) -> None:
        """Write ``item.image`` at its frame's ``pts`` (or an RGB image given alone, at ``pts``
        in ``time_base``); starts a new segment once ``segment_seconds`` have passed."""
        image, pts, time_base = video_item(item, pts, time_base)
        if self._closed:
            raise SinkError(f"segments in {self.folder} are already closed")
        now = self._stream_time(pts, time_base)
        if self._sink is not None and self._origin is not None and (
                now - self._origin >= self.segment_seconds or now < self._origin):
            self._finish_segment()
        if self._sink is None:
            self._open(image)
            self._apply_retention()  # counting the new segment, which is never deleted
            self._origin = now
            self._first_pts = (pts, Fraction(time_base)) if pts is not None and time_base \
                else None
        assert self._sink is not None
        if self._first_pts is not None and pts is not None and time_base:
            first, tb = self._first_pts
            # Each segment starts at 0, on the segment's own clock.
            shifted = round((pts * Fraction(time_base) - first * tb) / Fraction(time_base))
            self._sink.write(image, max(0, shifted), time_base)
        else:
            self._sink.write(image)
        self.frames_written += 1

    def close(self) -> None:
        """Finalise the current segment and apply retention once more."""
        if self._closed:
            return
        self._closed = True
        self._finish_segment()
        self._apply_retention()
