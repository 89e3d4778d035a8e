"""What every source shares: its options, its counters, the :class:`Source` base, URL redaction.

Example:
    >>> opts = SourceOptions(reconnect_max_attempts=3)
    >>> redact_url("rtsp://admin:secret@10.0.0.5/live")
    'rtsp://admin:***@10.0.0.5/live'
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from streamer.core.errors import ConfigError, SourceError
from streamer.core.types import Frame, VideoInfo

__all__ = ["LIVE_SCHEMES", "TRANSPORTS", "Pacer", "Source", "SourceOptions", "SourceStats",
           "describe_av_error", "fps_of", "is_stream_uri", "redact_url"]

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


def is_stream_uri(uri: str) -> bool:
    """Whether ``uri`` names a live source (a camera URL, a webcam index or ``/dev/video*``).

    Example:
        >>> is_stream_uri("rtsp://cam/1"), is_stream_uri("0"), is_stream_uri("clip.mp4")
        (True, True, False)
    """
    text = str(uri).strip()
    if text.isdigit() or text.startswith("/dev/video"):
        return True
    return "://" in text and text.split("://", 1)[0].lower() in LIVE_SCHEMES


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


def fps_of(stream: Any, default: float = 25.0, live: bool = False) -> float:
    """A PyAV stream's frame rate, ``default`` when it gives none that is plausible."""
    # A live stream is probed for a few packets only, so its average rate is a rough guess.
    rates = (stream.average_rate, stream.guessed_rate, stream.base_rate)
    for rate in (rates[1], rates[0], rates[2]) if live else rates:
        if rate:
            value = float(rate)
            if 0 < value < 1000:
                return value
    return default


def describe_av_error(exc: BaseException) -> str:
    """A PyAV/OS error as one short line of text."""
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


class Pacer:
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

