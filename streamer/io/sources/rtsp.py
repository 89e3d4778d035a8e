"""Live network streams (RTSP, RTMP, SRT, UDP, RTP) that reconnect: :class:`RtspSource`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av

from streamer.core.errors import SourceError
from streamer.core.types import Frame, VideoInfo
from streamer.io.sources.base import Source, SourceOptions, describe_av_error, fps_of, redact_url

__all__ = ["RtspSource"]

log = logging.getLogger("streamer.sources")


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
            fps=fps_of(stream, live=True),
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
                reason = describe_av_error(exc)
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
                log.warning("stream %s failed: %s", redact_url(self.uri), describe_av_error(exc))
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
