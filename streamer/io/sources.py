"""Video sources: files, RTSP streams, webcams and images, all iterables of :class:`Frame`.

Every source is a context manager and an iterable of RGB ``uint8`` frames, knows its
:class:`~streamer.core.types.VideoInfo` as ``.info`` once constructed, and counts what happened in
``.stats`` (:class:`SourceStats`). :func:`open_source` picks the type from the URI itself
(scheme, device path, image suffix or folder), never from a frame count.

Example:
    >>> with open_source("clip.mp4", SourceOptions()) as source:
    ...     print(source.info.fps, source.info.frame_count)
    ...     for frame in source:
    ...         print(frame.index, frame.timestamp, frame.image.shape)
    >>> source.stats.frames_decoded
    241
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np

from streamer.core.errors import ConfigError, SourceError
from streamer.core.labels import IMAGE_SUFFIXES
from streamer.core.types import Frame, VideoInfo

__all__ = [
    "IMAGE_SUFFIXES",
    "FileSource",
    "ImageSource",
    "RtspSource",
    "Source",
    "SourceOptions",
    "SourceStats",
    "WebcamSource",
    "open_source",
    "redact_url",
]

log = logging.getLogger("streamer.sources")

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp"})
TRANSPORTS = ("tcp", "udp")


@dataclass
class SourceOptions:
    """How to open a source. Defaults suit a file or a camera on a local network.

    ``transport`` is the RTSP lower transport. Timeouts are in seconds. A lost live stream is
    retried ``reconnect_max_attempts`` times, waiting ``reconnect_base_s`` doubled on every try
    up to ``reconnect_cap_s``; ``0`` attempts means a disconnect ends the stream cleanly.
    ``image_fps`` is the frame rate given to images. ``realtime=True`` paces a file by its
    timestamps, as if it were live (for testing live policies). ``start`` skips the first
    seconds of a file or image folder (frames then count from 0 there); ``max_frames`` ends
    any source after that many frames (``None``: no limit).

    Example:
        >>> opts = SourceOptions(transport="udp", reconnect_max_attempts=0)
        >>> opts.open_timeout_s
        5.0
    """

    transport: str = "tcp"
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    reconnect_base_s: float = 0.5
    reconnect_cap_s: float = 8.0
    reconnect_max_attempts: int = 10
    image_fps: float = 1.0
    realtime: bool = False
    start: float = 0.0
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"source transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}"
            )
        for name in ("open_timeout_s", "read_timeout_s", "image_fps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"source {name} must be > 0, not {getattr(self, name)!r}")
        if self.reconnect_base_s < 0 or self.reconnect_cap_s < self.reconnect_base_s:
            raise ConfigError(
                "source reconnect delays must satisfy 0 <= reconnect_base_s <= reconnect_cap_s, "
                f"not {self.reconnect_base_s!r} and {self.reconnect_cap_s!r}"
            )
        if not self.start >= 0:
            raise ConfigError(f"source start must be >= 0 seconds, not {self.start!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"source max_frames must be at least 1, not {self.max_frames!r}")
        if self.reconnect_max_attempts < 0:
            raise ConfigError(
                f"source reconnect_max_attempts must be >= 0, not {self.reconnect_max_attempts!r}"
            )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (1-based).

        Example:
            >>> [SourceOptions().backoff(n) for n in (1, 2, 3, 6)]
            [0.5, 1.0, 2.0, 8.0]
        """
        return min(self.reconnect_cap_s, self.reconnect_base_s * 2 ** max(0, attempt - 1))


@dataclass
class SourceStats:
    """Counters a source keeps while it runs; updating one costs an integer increment.

    ``packets_corrupt``: packets the demuxer flagged as damaged (still decoded).
    ``frames_corrupt``: frames the decoder flagged as damaged (still delivered, concealed).
    ``decode_errors``: packets or images the decoder rejected; they are skipped.
    ``reconnects``: successful reconnections of a live source; ``gap_seconds``: total time
    without frames because of disconnects.

    Example:
        >>> stats = SourceStats()
        >>> stats.frames_decoded += 1
        >>> stats.as_dict()["frames_decoded"]
        1
    """

    frames_decoded: int = 0
    packets_corrupt: int = 0
    frames_corrupt: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    gap_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The counters as a plain dict, e.g. for a JSON line."""
        return dict(self.__dict__)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print or log.

    Example:
        >>> redact_url("rtsp://admin:secret@10.0.0.5:554/live")
        'rtsp://admin:***@10.0.0.5:554/live'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _fps_of(stream: Any, default: float = 25.0, live: bool = False) -> float:
    # A live stream is probed for a few packets only, so its average rate is a rough guess.
    rates = (stream.average_rate, stream.guessed_rate, stream.base_rate)
    for rate in (rates[1], rates[0], rates[2]) if live else rates:
        if rate:
            value = float(rate)
            if 0 < value < 1000:
                return value
    return default


def _describe_av_error(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


class Source:
    """Base of all sources: a context manager and an iterable of :class:`Frame`.

    Subclasses open their input in ``__init__`` (so a bad input fails at once with a
    :class:`SourceError`) and implement :meth:`_frames`. :meth:`interrupt` may be called from
    another thread to make a running iteration end soon (it wakes any pacing or backoff wait).

    Example:
        >>> with FileSource("clip.mp4") as source:
        ...     first = next(iter(source))
    """

    info: VideoInfo

    def __init__(self, uri: str, options: SourceOptions | None = None) -> None:
        self.uri = uri
        self.options = options or SourceOptions()
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._closed = False

    @property
    def is_live(self) -> bool:
        """Whether frames arrive in real time (a stream or camera) rather than on demand."""
        return self.info.is_live

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SourceError(f"source {redact_url(self.uri)} is already closed")
        limit = self.options.max_frames
        return self._frames() if limit is None else itertools.islice(self._frames(), limit)

    def _limited(self, count: int | None) -> int | None:
        """A frame count cut to ``options.max_frames``."""
        limit = self.options.max_frames
        if limit is None:
            return count
        return limit if count is None else min(count, limit)

    def _no_start(self) -> None:
        if self.options.start:
            raise ConfigError(f"source.start (--start) applies to files and image folders, not "
                              f"to the live source {redact_url(self.uri)}",
                              hint="leave --start out for streams and cameras")

    def _frames(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def interrupt(self) -> None:
        """Ask a running iteration, possibly in another thread, to end soon. Thread-safe."""
        self._stop.set()

    def close(self) -> None:
        """Release the input. Safe to call twice."""
        self._stop.set()
        self._closed = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.uri)!r})"


class _Pacer:
    """Sleeps so frames leave no faster than their timestamps say (``realtime`` mode)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._origin: tuple[float, float] | None = None

    def wait(self, timestamp: float) -> None:
        now = time.monotonic()
        if self._origin is None:
            self._origin = (now, timestamp)
            return
        due = self._origin[0] + (timestamp - self._origin[1])
        if due > now:
            self._stop.wait(due - now)


class FileSource(Source):
    """Any container FFmpeg reads, decoded with PyAV; frames carry the file's pts.

    Damaged input never stops or hangs decoding: packets the decoder rejects are counted in
    ``stats.decode_errors`` and skipped, damaged packets and frames are counted too, and a
    truncated file simply ends early.

    Example:
        >>> with FileSource("clip.mp4") as source:
        ...     info = source.info            # fps, frame_count, time_base, has_audio
        ...     frames = list(source)
        >>> frames[1].pts, frames[1].time_base, frames[1].timestamp
        (512, Fraction(1, 12800), 0.04)
    """

    def __init__(self, uri: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        uri = os.fspath(uri)
        super().__init__(uri, options)
        if "://" not in uri:
            self._check_path(Path(uri))
        try:
            self._container = av.open(
                uri, timeout=(self.options.open_timeout_s, self.options.read_timeout_s)
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(
                f"cannot read {uri} as a video ({_describe_av_error(exc)})",
                hint="check that it is a complete video file FFmpeg can play",
            ) from None
        if not self._container.streams.video:
            kinds: list[str] = sorted({s.type for s in self._container.streams}) or ["no streams"]
            self._container.close()
            raise SourceError(
                f"{uri} has no video stream (it holds {', '.join(kinds)})",
                hint="pass a file that contains video",
            )
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        cc = self._stream.codec_context
        time_base = self._stream.time_base or Fraction(1, 90000)
        self._start = self._stream.start_time or 0
        fps = _fps_of(self._stream)
        frames = self._stream.frames or None
        if frames is not None and self.options.start:
            frames = max(0, frames - math.ceil(self.options.start * fps - 1e-6))
        duration = self._duration()
        if self.options.start and duration is not None and self.options.start >= duration:
            self._container.close()
            raise SourceError(f"--start {self.options.start:g} s is past the end of {uri} "
                              f"({duration:.2f} s long)", hint="give an earlier start")
        self.info = VideoInfo(
            width=cc.width,
            height=cc.height,
            fps=fps,
            frame_count=self._limited(frames),
            time_base=Fraction(time_base),
            is_live=False,
            has_audio=bool(self._container.streams.audio),
            uri=uri,
        )

    @staticmethod
    def _check_path(path: Path) -> None:
        if not path.exists():
            raise SourceError(f"video file not found: {path}", hint="check the path and spelling")
        if path.is_dir():
            raise SourceError(
                f"{path} is a directory, not a video file",
                hint="pass a video file (or use a folder of images as an image source)",
            )
        if path.stat().st_size == 0:
            raise SourceError(
                f"video file is empty (0 bytes): {path}", hint="re-copy or re-export it"
            )
        if not os.access(path, os.R_OK):
            raise SourceError(f"no permission to read {path}", hint="fix the file's permissions")

    def _frames(self) -> Iterator[Frame]:
        stats, stream, tb = self.stats, self._stream, self.info.time_base
        assert tb is not None
        step = max(1, round(1 / (self.info.fps * tb)))
        pacer = _Pacer(self._stop) if self.options.realtime else None
        index, last_pts, shift = 0, None, 0
        start = self.options.start
        origin: int | None = None  # with a start time: the first kept pts, the new zero
        if start:
            self._seek(start)
        # AVI stores no presentation times, only each frame's slot in decode order; FFmpeg's
        # guesses from them are a frame late or, with B-frames, out of order. Frames leave
        # the decoder in presentation order, so the k-th frame out takes the k-th smallest
        # slot (a heap of the slots seen so far: later ones are all larger).
        slots: list[int] | None = [] if self._container.format.name == "avi" else None
        try:
            for packet in self._container.demux(stream):
                if self._stop.is_set():
                    return
                if slots is not None and packet.dts is not None and packet.size:
                    heapq.heappush(slots, packet.dts)
                if packet.is_corrupt:
                    stats.packets_corrupt += 1
                try:
                    decoded = packet.decode()
                except av.error.EOFError:
                    decoded = []
                except av.FFmpegError as exc:
                    stats.decode_errors += 1
                    log.debug("skipping undecodable packet in %s: %s", self.uri, exc)
                    continue
                for av_frame in decoded:
                    pts = heapq.heappop(slots) if slots else av_frame.pts
                    if pts is None:
                        pts = self._start if last_pts is None else last_pts + step
                    else:
                        pts += shift
                        if last_pts is not None and pts <= last_pts:
                            # Time went back (a damaged or badly muxed file): go on one frame
                            # after the last and keep the source's spacing from there.
                            shift += last_pts + step - pts
                            pts = last_pts + step
                    last_pts = pts
                    if av_frame.is_corrupt:
                        stats.frames_corrupt += 1
                    timestamp = float((pts - self._start) * tb)
                    if start:
                        if timestamp < start - 1e-6:
                            continue  # decoded from the keyframe before the start
                        if origin is None:
                            origin = pts
                        pts, timestamp = pts - origin, float((pts - origin) * tb)
                    # One swscale thread: the decoder's threads already fill the cores, and
                    # slice threads cost more than they save (720p: 1.63 s -> 1.40 s, 247 frames).
                    image = av_frame.to_ndarray(format="rgb24", threads=1)
                    stats.frames_decoded += 1
                    if pacer is not None:
                        pacer.wait(timestamp)
                        if self._stop.is_set():
                            return
                    yield Frame(index, image, timestamp, time.monotonic(), pts, tb)
                    index += 1
        except av.FFmpegError as exc:
            # A demuxer error (cut-off or garbled container): keep what was decoded.
            stats.decode_errors += 1
            log.warning("stopped reading %s early: %s", self.uri, _describe_av_error(exc))

    def _duration(self) -> float | None:
        """The video's length in seconds, when the container says."""
        stream = self._stream
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if self._container.duration:
            return self._container.duration / av.time_base
        return None

    def _seek(self, seconds: float) -> None:
        """Jump to the keyframe at or before ``seconds``; frames before it are then skipped."""
        stream = self._stream
        tb = self.info.time_base
        assert tb is not None
        try:
            self._container.seek(self._start + int(seconds / tb), stream=stream, backward=True)
        except av.FFmpegError as exc:  # not seekable (a pipe): decode from the start instead
            log.info("cannot seek in %s (%s); decoding up to %.2f s", self.uri,
                     _describe_av_error(exc), seconds)

    def close(self) -> None:
        super().close()
        self._container.close()


class RtspSource(Source):
    """A live network stream (RTSP by default) read with PyAV, reconnecting when it drops.

    PyAV simply ends its demux loop when the server goes away, so any end is treated as a
    disconnect: the source reconnects with exponential backoff
    (``reconnect_base_s`` doubling up to ``reconnect_cap_s``, at most ``reconnect_max_attempts``
    tries), counts ``stats.reconnects`` and ``stats.gap_seconds`` and logs the gap. With
    ``reconnect_max_attempts=0`` a disconnect is a clean end of stream. Frame indices and
    timestamps keep rising across reconnects (an offset is added when the server restarts its
    clock). If the resolution changes, frames carry the new size and ``.info`` is updated.

    Example:
        >>> opts = SourceOptions(open_timeout_s=2, reconnect_max_attempts=3)
        >>> with RtspSource("rtsp://127.0.0.1:8554/stream", opts) as source:
        ...     for frame in source:
        ...         print(frame.index, frame.timestamp, source.stats.reconnects)
    """

    #: The open PyAV container; None before connecting and between connections.
    _container: Any = None

    def __init__(self, uri: str, options: SourceOptions | None = None) -> None:
        super().__init__(uri, options)
        self._no_start()
        self._pending: list[Any] = []
        self._connect_with_retries(first=True)
        stream = self._container.streams.video[0]
        width = stream.codec_context.width or self._pending[0].width
        height = stream.codec_context.height or self._pending[0].height
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=_fps_of(stream, live=True),
            frame_count=None,
            time_base=Fraction(stream.time_base or Fraction(1, 90000)),
            is_live=True,
            has_audio=bool(self._container.streams.audio),
            uri=uri,
        )

    def _av_options(self) -> dict[str, str]:
        opts = {
            "timeout": str(int(self.options.read_timeout_s * 1_000_000)),
            "analyzeduration": "0",
            "probesize": "32",
        }
        if urlsplit(self.uri).scheme.lower() in ("rtsp", "rtsps"):
            opts["rtsp_transport"] = self.options.transport
        return opts

    def _connect_once(self) -> None:
        """Open the stream and decode up to its first frame (kept in ``_pending``)."""
        container = av.open(
            self.uri,
            options=self._av_options(),
            timeout=(self.options.open_timeout_s, self.options.read_timeout_s),
        )
        try:
            if not container.streams.video:
                raise SourceError(
                    f"stream {redact_url(self.uri)} has no video track",
                    hint="check the URL's path (the camera may serve several streams)",
                )
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            deadline = time.monotonic() + self.options.open_timeout_s + 1
            self._demux = container.demux(stream)
            pending: list[Any] = []
            for packet in self._demux:
                try:
                    pending.extend(packet.decode())
                except av.FFmpegError:
                    self.stats.decode_errors += 1
                if pending or time.monotonic() > deadline or self._stop.is_set():
                    break
            if not pending:
                raise OSError("no frame received after connecting")
        except BaseException:
            container.close()
            raise
        self._container, self._pending = container, pending

    def _connect_with_retries(self, first: bool) -> bool:
        """Connect, retrying with backoff. False if stopped; SourceError when attempts run out."""
        attempts = self.options.reconnect_max_attempts
        started, attempt, reason = time.monotonic(), 0, "no attempt made"
        while True:
            if self._stop.is_set():
                return False
            try:
                self._connect_once()
                return True
            except SourceError:
                raise
            except (av.FFmpegError, OSError) as exc:
                reason = _describe_av_error(exc)
                log.info("connecting to %s failed: %s", redact_url(self.uri), reason)
            attempt += 1
            if attempt > attempts:
                break
            self._stop.wait(self.options.backoff(attempt))
        waited = time.monotonic() - started
        what = "cannot connect to" if first else "lost"
        again = "" if first else " and could not reconnect"
        raise SourceError(
            f"{what} {redact_url(self.uri)}{again} ({reason}) after {attempt} attempt(s) "
            f"in {waited:.1f} s",
            hint="check the URL, that the camera or server is running and reachable, "
            "and source.transport (tcp or udp)",
        )

    def _frames(self) -> Iterator[Frame]:
        stats, tb = self.stats, self.info.time_base
        assert tb is not None
        step = max(1, round(1 / (self.info.fps * tb)))
        index, clock = 0, _LiveClock(step)
        origin: int | None = None  # first pts handed out, so timestamps start at 0
        last_time = time.monotonic()
        while not self._stop.is_set():
            try:
                for av_frame in self._drain():
                    if self._stop.is_set():
                        return
                    pts = av_frame.pts
                    frame_tb = av_frame.time_base or tb
                    if pts is not None and frame_tb != tb:
                        pts = round(pts * frame_tb / tb)
                    out_pts = clock.map(pts)
                    if origin is None:
                        origin = out_pts
                    if av_frame.is_corrupt:
                        stats.frames_corrupt += 1
                    if av_frame.width != self.info.width or av_frame.height != self.info.height:
                        log.info(
                            "%s changed size from %dx%d to %dx%d",
                            redact_url(self.uri),
                            self.info.width,
                            self.info.height,
                            av_frame.width,
                            av_frame.height,
                        )
                        self.info = replace(self.info, width=av_frame.width, height=av_frame.height)
                    image = av_frame.to_ndarray(format="rgb24", threads=1)
                    stats.frames_decoded += 1
                    last_time = time.monotonic()
                    yield Frame(
                        index, image, float((out_pts - origin) * tb), last_time, out_pts, tb
                    )
                    index += 1
            except (av.FFmpegError, OSError) as exc:
                log.warning("stream %s failed: %s", redact_url(self.uri), _describe_av_error(exc))
            if self._stop.is_set():
                return
            self._close_container()
            if self.options.reconnect_max_attempts == 0:
                log.info("stream %s ended (reconnection is off)", redact_url(self.uri))
                return
            log.warning("stream %s disconnected; reconnecting", redact_url(self.uri))
            if not self._connect_with_retries(first=False):
                return
            gap = time.monotonic() - last_time
            clock.resume(round(gap / tb))
            stats.reconnects += 1
            stats.gap_seconds += gap
            log.warning(
                "reconnected to %s after a %.2f s gap (reconnect #%d)",
                redact_url(self.uri),
                gap,
                stats.reconnects,
            )

    def _drain(self) -> Iterator[Any]:
        """Decoded PyAV frames of the current connection until it ends."""
        pending, self._pending = self._pending, []
        yield from pending
        for packet in self._demux:
            if packet.is_corrupt:
                self.stats.packets_corrupt += 1
            try:
                decoded = packet.decode()
            except av.error.EOFError:
                return
            except av.FFmpegError as exc:
                self.stats.decode_errors += 1
                log.debug("skipping undecodable packet from %s: %s", redact_url(self.uri), exc)
                continue
            yield from decoded
            if self._stop.is_set():
                return

    def _close_container(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass
            self._container = None

    def close(self) -> None:
        super().close()
        self._close_container()


class _LiveClock:
    """Maps each connection's pts onto one rising timeline across reconnects.

    After :meth:`resume`, the first real pts that would not move forward (a server that
    restarted its clock at 0) gets an offset so that it lands ``gap`` ticks after the last one.
    Without a reconnect, a pts that does not rise lands one ``step`` after the last, and so do
    the ones after it, at their own spacing.

    Example:
        >>> clock = _LiveClock(step=10)
        >>> [clock.map(p) for p in (None, 10, 20)]
        [0, 10, 20]
        >>> clock.resume(gap_ticks=100)
        >>> [clock.map(p) for p in (0, 10)]
        [120, 130]
        >>> [clock.map(p) for p in (10, 20)]  # a looping server repeats a timestamp
        [140, 150]
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.offset = 0
        self.last: int | None = None
        self._floor: int | None = None
        self._check = False

    def resume(self, gap_ticks: int) -> None:
        """Note a reconnect after ``gap_ticks`` without frames."""
        if self.last is not None:
            self._floor = self.last + max(self.step, gap_ticks)
            self._check = True

    def map(self, pts: int | None) -> int:
        """The output pts for a frame whose stream pts is ``pts`` (``None`` if unknown)."""
        last = self.last
        if pts is None:
            out = (
                self._floor if self._floor is not None else 0 if last is None else last + self.step
            )
        else:
            if self._check and last is not None:
                floor = self._floor if self._floor is not None else last + self.step
                if pts + self.offset < floor:
                    self.offset = floor - pts
                self._check = False
            out = pts + self.offset
        self._floor = None
        if last is not None and out <= last:
            # Time stood still or went back (a looping server repeats the last timestamp on
            # the first frame of each round): one frame on, and the rest follow at the
            # source's spacing rather than piling up one tick apart.
            self.offset += last + self.step - out
            out = last + self.step
        self.last = out
        return out


class WebcamSource(Source):
    """A local camera through OpenCV: an index (``0``) or a device path (``/dev/video0``).

    Frames are converted from OpenCV's BGR to RGB; ``pts`` is ``None`` and ``timestamp`` is
    seconds since the first frame. A camera that stops delivering ends the stream after
    ``read_timeout_s`` with a warning.

    Example:
        >>> with WebcamSource(0) as cam:
        ...     frame = next(iter(cam))
        >>> frame.image.shape
        (480, 640, 3)
    """

    def __init__(self, device: int | str, options: SourceOptions | None = None) -> None:
        import cv2

        super().__init__(str(device), options)
        self._no_start()
        self._cv2 = cv2
        if isinstance(device, str) and device.startswith("/dev/") and not os.path.exists(device):
            raise SourceError(
                f"webcam {device} not found",
                hint="list cameras with `ls /dev/video*` and pass an existing one",
            )
        target: int | str = int(device) if str(device).isdigit() else device
        if isinstance(target, int) and sys.platform.startswith("linux"):
            if not os.path.exists(f"/dev/video{target}"):
                raise SourceError(
                    f"webcam {target} not found (no /dev/video{target})",
                    hint="list cameras with `ls /dev/video*` and pass an existing index",
                )
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._cap = cv2.VideoCapture(target)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(
                f"cannot open webcam {device}",
                hint="check that it is connected, not used by another program, and the index",
            )
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
        self.info = VideoInfo(
            width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=fps if 0 < fps < 1000 else 30.0,
            is_live=True,
            uri=str(device),
        )

    def _frames(self) -> Iterator[Frame]:
        cv2, index, origin = self._cv2, 0, None
        failing_since: float | None = None
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            now = time.monotonic()
            if not ok or bgr is None:
                self.stats.decode_errors += 1
                failing_since = failing_since or now
                if now - failing_since > self.options.read_timeout_s:
                    log.warning("webcam %s stopped delivering frames", self.uri)
                    return
                self._stop.wait(0.01)
                continue
            failing_since = None
            origin = now if origin is None else origin
            self.stats.frames_decoded += 1
            yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), now - origin, now)
            index += 1

    def close(self) -> None:
        super().close()
        self._cap.release()


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageSource(Source):
    """One image file or a folder of images (sorted naturally: 2 before 10) as frames.

    Frames are spaced ``1 / options.image_fps`` seconds apart (``pts`` counts images). An image
    that cannot be read is skipped and counted in ``stats.decode_errors``.

    Example:
        >>> with ImageSource("photos/", SourceOptions(image_fps=2)) as source:
        ...     stamps = [f.timestamp for f in source]
        >>> stamps[:3]
        [0.0, 0.5, 1.0]
    """

    def __init__(self, uri: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        import cv2

        uri = os.fspath(uri)
        super().__init__(uri, options)
        self._cv2 = cv2
        path = Path(uri)
        if not path.exists():
            raise SourceError(f"image or folder not found: {path}", hint="check the path")
        if path.is_dir():
            files = [
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            ]
            self.files = sorted(files, key=_natural_key)
            if not self.files:
                raise SourceError(
                    f"folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                    hint="pass a folder of images or a video file",
                )
        else:
            self.files = [path]
        skip = math.ceil(self.options.start * self.options.image_fps - 1e-6)
        if skip:
            if skip >= len(self.files):
                raise SourceError(
                    f"--start {self.options.start:g} s is past the last of the "
                    f"{len(self.files)} image(s) in {path} (at {self.options.image_fps:g} per "
                    "second)", hint="give an earlier start")
            self.files = self.files[skip:]
        # The output is sized from the first image that reads: a damaged file first in the
        # folder is skipped (with a warning when frames are read), never taken as the size.
        first = next((image for image in map(self._read, self.files) if image is not None), None)
        if first is None:
            if len(self.files) == 1:
                raise SourceError(f"cannot read image {path}",
                                  hint="check that it is a valid image")
            raise SourceError(f"none of the {len(self.files)} images in {path} can be read",
                              hint="check that they are valid image files")
        height, width = first.shape[:2]
        fps = float(self.options.image_fps)
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=self._limited(len(self.files)),
            time_base=1 / Fraction(fps).limit_denominator(1001),
            is_live=False,
            uri=uri,
        )

    def _read(self, path: Path) -> np.ndarray | None:
        cv2 = self._cv2
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _frames(self) -> Iterator[Frame]:
        tb = self.info.time_base
        pacer = _Pacer(self._stop) if self.options.realtime else None
        index = 0
        for number, path in enumerate(self.files):
            if self._stop.is_set():
                return
            image = self._read(path)
            if image is None:
                self.stats.decode_errors += 1
                log.warning("skipping unreadable image %s", path)
                continue
            self.stats.frames_decoded += 1
            timestamp = float(number * tb) if tb else number / self.info.fps
            if pacer is not None:
                pacer.wait(timestamp)
            yield Frame(index, image, timestamp, time.monotonic(), number, tb, name=path.stem)
            index += 1


def open_source(uri: str | int | os.PathLike[str], options: SourceOptions | None = None) -> Source:
    """Open the right kind of source for ``uri``, decided by what the URI is.

    * an integer, a string of digits or ``/dev/videoN``: :class:`WebcamSource`
    * ``rtsp://``, ``rtsps://``, ``rtmp://``, ``srt://``, ``udp://``, ``rtp://``:
      :class:`RtspSource` (live, reconnecting)
    * a folder, or a file with an image suffix: :class:`ImageSource`
    * anything else (a path, ``file://`` or ``http(s)://``): :class:`FileSource`

    Example:
        >>> source = open_source("rtsp://cam.local/live", SourceOptions(transport="udp"))
        >>> type(source).__name__, source.is_live
        ('RtspSource', True)
    """
    options = options or SourceOptions()
    if isinstance(uri, int):
        return WebcamSource(uri, options)
    text = os.fspath(uri).strip()
    if text.isdigit() or text.startswith("/dev/video"):
        return WebcamSource(text, options)
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in LIVE_SCHEMES:
        return RtspSource(text, options)
    if scheme == "file":
        text = urlsplit(text).path
    elif scheme:
        return FileSource(text, options)
    path = Path(text)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path, options)
    return FileSource(path, options)
