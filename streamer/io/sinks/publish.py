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
import os
import threading
from fractions import Fraction
from typing import Any

import av
import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output, VideoInfo
from streamer.io.sinks.base import FinalisingSink, video_item
from streamer.io.sinks.checks import check_publish_url
from streamer.io.sinks.video import fit_image, next_pts, to_video_frame
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
    many frames went out; :meth:`close` then only releases the connection.

    Example:
        >>> sink = RtspPublishSink("rtsp://127.0.0.1:9/x", info)
        Traceback (most recent call last):
        streamer.core.errors.SinkError: cannot publish to rtsp://127.0.0.1:9/x (Connection ...
    """

    def __init__(self, url: str, info: VideoInfo, *, codec: str = "libx264",
                 preset: str = "veryfast", crf: int = 23, keyframe_s: float = 1.0,
                 timeout_s: float = 5.0, pace: bool | None = None,
                 threads: int | None = None) -> None:
        self.url = check_publish_url(url)
        self.info = info
        self.frames_written = 0
        self._closed = False
        self._last_pts: int | None = None
        fps = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
        self.time_base = Fraction(info.time_base) if info.time_base else 1 / fps
        self._frame_ticks = max(1, round(1 / (fps * self.time_base)))
        self._pacer = Pacer(threading.Event()) if (
            not info.is_live if pace is None else pace) else None
        self.width = max(2, info.width - info.width % 2)
        self.height = max(2, info.height - info.height % 2)
        where = redact_url(url)
        try:
            self._out: Any = av.open(url, "w", format="rtsp", options={
                "rtsp_transport": "tcp", "timeout": str(int(timeout_s * 1_000_000))})
        except (av.FFmpegError, OSError) as exc:
            raise self._refused(exc) from None
        try:
            stream = self._out.add_stream(codec, rate=fps)
            if not isinstance(stream, av.VideoStream):
                raise ValueError("not a video codec")
        except (av.FFmpegError, ValueError) as exc:
            self._out.close()
            raise SinkError(f"video codec {codec!r} is not available ({exc})",
                            hint="use codec libx264") from None
        self._stream = stream
        cc = stream.codec_context
        cc.width, cc.height, cc.pix_fmt = self.width, self.height, "yuv420p"
        cc.time_base = self.time_base
        stream.time_base = self.time_base
        # A keyframe every keyframe_s: where a viewer who joins can start decoding.
        cc.gop_size = max(1, round(float(fps) * keyframe_s))
        # Frame threads, not x264's sliced threads (zerolatency's default): some RTSP
        # clients count every slice as a frame.
        cc.thread_type = "FRAME"
        cc.thread_count = threads if threads is not None else min(2, os.cpu_count() or 1)
        if codec in ("libx264", "libx265"):
            cc.options = {"preset": preset, "tune": "zerolatency", "crf": str(crf)}
        try:
            self._out.start_encoding()  # ANNOUNCE + SETUP + RECORD: fail now, not mid-run
        except (av.FFmpegError, OSError) as exc:
            self._release()
            raise self._refused(exc) from None
        log.info("publishing to %s", where)

    def _refused(self, exc: BaseException) -> SinkError:
        return SinkError(
            f"cannot publish to {redact_url(self.url)} ({describe_av_error(exc)})",
            hint="check that an RTSP server that accepts publishing (ANNOUNCE/RECORD) "
                 "runs there, and the URL's port and path")

    def _lost(self, exc: BaseException) -> SinkError:
        return SinkError(
            f"lost the RTSP server at {redact_url(self.url)} after {self.frames_written} "
            f"frame(s) ({describe_av_error(exc)})",
            hint="check that the server is running and reachable, then run again")

    def write(self, item: Output | np.ndarray, pts: int | None = None,
              time_base: Fraction | None = None) -> None:
        """Encode and send ``item.image`` at its frame's ``pts`` (or an RGB image given alone,
        at ``pts`` in ``time_base``; without one, 1/fps after the last)."""
        image, pts, time_base = video_item(item, pts, time_base)
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
            raise self._lost(exc) from None
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
