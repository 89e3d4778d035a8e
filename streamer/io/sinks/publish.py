"""Publishing the annotated video to an RTSP server (ANNOUNCE/RECORD): :class:`RtspPublishSink`.

``output.path: rtsp://HOST:PORT/PATH`` pushes the video to a server that accepts publishing
(MediaMTX, GStreamer's RTSP server in RECORD mode, an NVR's ingest), where VLC or an NVR
watches it. The video is H.264 tuned for low latency (``tune=zerolatency``: no B-frames, no
look-ahead) with a keyframe every second, so a viewer that joins sees a picture within a
second; RTP travels over the RTSP connection (TCP), which passes firewalls and loses nothing.

Example:
    >>> with RtspPublishSink("rtsp://127.0.0.1:8554/parsed", source.info) as sink:
    ...     for frame in source:
    ...         sink.write(Output(frame, render(frame.image)))
    >>> sink.frames_written
    250
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output, VideoInfo
from streamer.io.sinks.base import FinalisingSink, video_item
from streamer.io.sinks.checks import check_publish_url
from streamer.io.sinks.video import encoder_threads, fit_image, next_pts, to_video_frame
from streamer.io.sources.base import Pacer, describe_av_error, redact_url

__all__ = ["RtspPublishSink"]

log = logging.getLogger("streamer.sinks")


class RtspPublishSink(FinalisingSink):
    """Encodes frames to H.264 and pushes them to ``url`` with FFmpeg's RTSP muxer.

    It connects (ANNOUNCE, SETUP, RECORD) when constructed, so a server that is not running
    or refuses the path fails at once with a :class:`SinkError` of one line. Timing is the
    source's, as in :class:`~streamer.io.sinks.video.VideoFileSink`. A live source's frames
    go out as they come; the frames of a file (``pace=None`` and ``info.is_live`` false, or
    ``pace=True``) are sent at the pace of their timestamps, as a camera would send them, so
    viewers see real time. A frame of another size is rescaled to the first frame's size.
    The source's audio is not published.

    If the server goes away, :meth:`write` raises a :class:`SinkError` naming the URL and how
    many frames went out; with ``reconnect_s`` above 0 it first tries to connect again, once a
    second for that many seconds, dropping the frames meanwhile (``frames_dropped``;
    ``reconnects`` counts the successes), and the stream goes on from a new keyframe.

    Example:
        >>> sink = RtspPublishSink("rtsp://127.0.0.1:9/x", info)
        Traceback (most recent call last):
        streamer.core.errors.SinkError: cannot publish to rtsp://127.0.0.1:9/x (Connection ...
    """

    def __init__(self, url: str, info: VideoInfo, *, codec: str = "libx264",
                 preset: str = "veryfast", crf: int = 23, keyframe_s: float = 1.0,
                 timeout_s: float = 5.0, pace: bool | None = None, reconnect_s: float = 0.0,
                 threads: int | None = None) -> None:
        self.url = check_publish_url(url)
        self.info = info
        self.frames_written = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self._closed = False
        self._last_pts: int | None = None
        self._codec, self._preset, self._crf, self._threads = codec, preset, crf, threads
        self._timeout_s, self._reconnect_s = timeout_s, reconnect_s
        self._down: tuple[float, float, BaseException] | None = None  # since, next try, why
        self._fps = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
        self.time_base = Fraction(info.time_base) if info.time_base else 1 / self._fps
        self._frame_ticks = max(1, round(1 / (self._fps * self.time_base)))
        self._gop = max(1, round(float(self._fps) * keyframe_s))
        self._pacer = Pacer(threading.Event()) if (
            not info.is_live if pace is None else pace) else None
        self.width = max(2, info.width - info.width % 2)
        self.height = max(2, info.height - info.height % 2)
        self._connect()
        log.info("publishing to %s", redact_url(url))

    def _connect(self) -> None:
        """Open the RTSP session and a fresh encoder. Raises :class:`SinkError`."""
        try:
            self._out: Any = av.open(self.url, "w", format="rtsp", options={
                "rtsp_transport": "tcp", "timeout": str(int(self._timeout_s * 1_000_000))})
        except (av.FFmpegError, OSError) as exc:
            raise self._refused(exc) from None
        try:
            stream = self._out.add_stream(self._codec, rate=self._fps)
            if not isinstance(stream, av.VideoStream):
                raise ValueError("not a video codec")
        except (av.FFmpegError, ValueError) as exc:
            self._out.close()
            raise SinkError(f"video codec {self._codec!r} is not available ({exc})",
                            hint="use codec libx264") from None
        self._stream = stream
        cc = stream.codec_context
        cc.width, cc.height, cc.pix_fmt = self.width, self.height, "yuv420p"
        cc.time_base = self.time_base
        stream.time_base = self.time_base
        cc.gop_size = self._gop  # a keyframe every keyframe_s: where a viewer who joins starts
        # Frame threads, not x264's sliced threads (zerolatency's default): some RTSP
        # clients count every slice as a frame. A publish is always real time (a file is
        # paced), so up to 720p30 one thread (encoder_threads): no frame of latency per
        # extra thread, no CPU taken from the parse; above it, at most 2.
        cc.thread_type = "FRAME"
        cc.thread_count = (self._threads if self._threads is not None
                           else min(2, encoder_threads(self.info, realtime=True)))
        self.threads = cc.thread_count
        if self._codec in ("libx264", "libx265"):
            cc.options = {"preset": self._preset, "tune": "zerolatency", "crf": str(self._crf)}
        try:
            self._out.start_encoding()  # ANNOUNCE + SETUP + RECORD: fail now, not mid-run
        except (av.FFmpegError, OSError) as exc:
            self._release()
            raise self._refused(exc) from None
        self._closed = False

    def _refused(self, exc: BaseException) -> SinkError:
        return SinkError(
            f"cannot publish to {redact_url(self.url)} ({describe_av_error(exc)})",
            hint="check that an RTSP server that accepts publishing (ANNOUNCE/RECORD) "
                 "runs there, and the URL's port and path")

    def _lost(self, exc: BaseException) -> SinkError:
        again = (f" and could not reconnect in {self._reconnect_s:g} s"
                 if self._reconnect_s > 0 else "")
        return SinkError(
            f"lost the RTSP server at {redact_url(self.url)}{again} after "
            f"{self.frames_written} frame(s) ({describe_av_error(exc)})",
            hint="check that the server is running and reachable, then run again")

    def _reconnected(self) -> bool:
        """While the server is away: whether a new session is up (tried once a second);
        :class:`SinkError` once ``reconnect_s`` have passed without one."""
        assert self._down is not None
        since, next_try, reason = self._down
        now = time.monotonic()
        if now < next_try:
            return False
        try:
            self._connect()
        except SinkError:
            if now - since > self._reconnect_s:
                self._down = None
                raise self._lost(reason) from None
            self._down = (since, now + 1.0, reason)
            return False
        self._down = None
        self.reconnects += 1
        log.warning("reconnected to %s after %.1f s (%d frame(s) not sent)",
                    redact_url(self.url), now - since, self.frames_dropped)
        return True

    def write(self, item: Output | np.ndarray, pts: int | None = None,
              time_base: Fraction | None = None) -> None:
        """Encode and send ``item.image`` at its frame's ``pts`` (or an RGB image given alone,
        at ``pts`` in ``time_base``; without one, 1/fps after the last)."""
        image, pts, time_base = video_item(item, pts, time_base)
        if self._down is not None and not self._reconnected():
            self.frames_dropped += 1
            return
        if self._closed:
            raise SinkError(f"the publishing to {redact_url(self.url)} has already ended")
        out_pts = next_pts(self._last_pts, pts, time_base or self.info.time_base
                           or self.time_base, self.time_base, self._frame_ticks)
        frame = to_video_frame(fit_image(image, self.width, self.height)[0], "yuv420p")
        frame.pts = out_pts
        frame.time_base = self.time_base
        if self._pacer is not None:
            self._pacer.wait(float(out_pts * self.time_base))
        try:
            self._mux(self._stream.encode(frame))
        except (av.FFmpegError, OSError) as exc:
            self._release()
            if self._reconnect_s <= 0:
                raise self._lost(exc) from None
            log.warning("lost the RTSP server at %s (%s); reconnecting for up to %g s",
                        redact_url(self.url), describe_av_error(exc), self._reconnect_s)
            now = time.monotonic()
            self._down = (now, now + 0.5, exc)
            self.frames_dropped += 1
            return
        self._last_pts = out_pts
        self.frames_written += 1

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            if not packet.duration:
                packet.duration = self._frame_ticks
            self._out.mux(packet)

    def _release(self) -> None:
        """Drop the connection after an error, without raising."""
        self._closed = True
        try:
            self._out.close()
        except (av.FFmpegError, OSError):
            pass

    def close(self) -> None:
        """Send what the encoder still holds, then end the session (TEARDOWN)."""
        if self._down is not None:
            log.warning("the run ended while reconnecting to %s: %d frame(s) were not sent",
                        redact_url(self.url), self.frames_dropped)
            self._down = None
            self._closed = True
        if self._closed:
            return
        self._closed = True
        try:
            self._mux(self._stream.encode(None))
            self._out.close()
        except (av.FFmpegError, OSError) as exc:
            self._release()
            raise self._lost(exc) from None
        log.info("published %d frame(s) to %s", self.frames_written, redact_url(self.url))
