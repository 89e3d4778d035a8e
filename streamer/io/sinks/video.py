"""An H.264 video file with the source's timing and audio: :class:`VideoFileSink`."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output, VideoInfo
from streamer.io.sinks.base import FinalisingSink, video_item
from streamer.io.sinks.checks import (
    VIDEO_SUFFIXES,
    check_output_path,
    file_size_limit,
    write_failed,
)
from streamer.io.sinks.matroska import matroska_template

__all__ = [
    "REALTIME_ONE_THREAD_PIXEL_RATE",
    "VideoFileSink",
    "encoder_threads",
    "fit_image",
    "next_pts",
    "to_video_frame",
]

log = logging.getLogger("streamer.sinks")

#: Pixels per second (width x height x fps) up to which a real-time output is encoded on one
#: thread: 720p at 30 fps. One libx264 ``veryfast`` thread takes about 3.5 ms for a 640x360
#: frame, 13 ms for 1280x720 and 29 ms for 1920x1080 on a Sapphire Rapids core
#: (``benchmarks/stream_path_bench.py``), so up to here the encode takes at most ~40% of the
#: frame interval, with room for the render on the same thread; 1080p25 would take ~75% and
#: a busy machine pushes it past the interval.
REALTIME_ONE_THREAD_PIXEL_RATE = 1280 * 720 * 30


def encoder_threads(info: VideoInfo, *, realtime: bool | None = None) -> int:
    """How many frame threads the encoder of an output shaped like ``info`` gets.

    A real-time output (``realtime``, by default ``info.is_live``) that one thread keeps up
    with (at most :data:`REALTIME_ONE_THREAD_PIXEL_RATE` pixels per second) gets 1: a live run
    already has parallelism across streams and the parse, and x264's frame threads cost CPU
    that the parse needs (2 threads: +8% CPU per frame of a stream's whole path at 640x360,
    +22% at 1280x720, ``benchmarks/stream_path_bench.py``) and add a frame of latency each.
    Anything else (a file, a larger real-time picture) gets up to 4, one per core.

    Example:
        >>> encoder_threads(VideoInfo(640, 360, 25.0, is_live=True))
        1
        >>> encoder_threads(VideoInfo(640, 360, 25.0)) == min(4, os.cpu_count() or 1)
        True
    """
    cores = min(4, os.cpu_count() or 1)
    live = info.is_live if realtime is None else realtime
    fps = info.fps if info.fps > 0 else 25.0
    if live and info.width * info.height * fps <= REALTIME_ONE_THREAD_PIXEL_RATE:
        return 1
    return cores


class VideoFileSink(FinalisingSink):
    """Writes RGB frames to an MP4/MKV/MOV file with PyAV, keeping timing and audio.

    Timing: ``write(image, pts, time_base)`` places each frame at the source's timestamp
    (rescaled to the output time base, which is the source's ``info.time_base`` when known);
    without ``pts`` frames are spaced ``1 / info.fps`` apart. A timestamp that does not rise
    is moved to one frame (``1 / info.fps``) after the last. ``audio_from`` names a media
    file whose first audio stream is stream-copied (not re-encoded), interleaved as the video
    advances and trimmed to the video's end; nothing is buffered beyond one packet. An MP4
    source's audio priming (encoder delay) stays skipped in Matroska outputs too.

    MP4/MOV/M4V files are written fast-start (index before the media data) unless
    ``faststart=False``; the room to move the index is part of the room kept to finalise.

    Threads: ``threads`` encoder frame threads, by default :func:`encoder_threads` (one for
    a live stream up to 720p30, else one per core up to 4).

    Size: the output keeps ``info``'s size (rounded down to even numbers for ``yuv420p``).
    A frame of another size (a stream that reconnected at a new resolution) is rescaled to the
    output size, because a video file cannot change size mid-stream and players handle a
    single size best.

    Example:
        >>> info = VideoInfo(width=640, height=360, fps=25.0, time_base=Fraction(1, 12800))
        >>> with VideoFileSink("out.mkv", info, audio_from="in.mp4", crf=20) as sink:
        ...     sink.write(image_rgb, pts=512, time_base=Fraction(1, 12800))
        ...     sink.write(image_rgb)  # next frame, 1/25 s later
        >>> sink.frames_written
        2
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        info: VideoInfo,
        *,
        audio_from: str | os.PathLike[str] | None = None,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        crf: int = 23,
        preset: str = "veryfast",
        threads: int | None = None,
        faststart: bool = True,
    ) -> None:
        self.path = check_output_path(path, suffixes=VIDEO_SUFFIXES)
        self.info = info
        self.frames_written = 0
        self.audio_packets = 0
        self._closed = False
        self._warned_resize = False
        self._last_pts: int | None = None
        # Room to finalise: bytes muxed so far, video packets out of the encoder, their
        # largest size, and the limits (RLIMIT_FSIZE, free disk space) checked before a frame.
        self._bytes_out = 0
        self._video_packets = 0
        self._max_packet = 0
        self._size_limit = file_size_limit()
        self._free: tuple[int, int] | None = None  # (free bytes, self._bytes_out) when measured
        self._deadline: float | None = None  # set by hurry(): stop draining the encoder then
        fps = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
        self.time_base = Fraction(info.time_base) if info.time_base else 1 / fps
        self._frame_ticks = max(1, round(1 / (fps * self.time_base)))
        even = 2 if pix_fmt.startswith(("yuv420", "yuv422", "nv12")) else 1
        self.width = max(even, info.width - info.width % even)
        self.height = max(even, info.height - info.height % even)
        try:
            # Matroska would shift every stream to make an audio priming delay non-negative,
            # moving the video off the source's timestamps; it can store the delay as is.
            mkv = self.path.suffix.lower() == ".mkv"
            options = {"avoid_negative_ts": "disabled"} if mkv else {}
            # MP4/MOV: the index (moov) first, so a browser plays the file while it downloads.
            # FFmpeg moves it there at close by shifting the media data up by the index's size
            # in place: it needs no more room than an index at the end, which _reserve counts.
            self.faststart = faststart and not mkv
            if self.faststart:
                options["movflags"] = "+faststart"
            self._out = av.open(str(self.path), "w", options=options)
        except (av.FFmpegError, OSError) as exc:
            raise write_failed(self.path, exc) from None
        try:
            stream = self._out.add_stream(codec, rate=fps)
            if not isinstance(stream, av.VideoStream):
                raise ValueError("not a video codec")
            self._stream = stream
        except (av.FFmpegError, ValueError) as exc:
            self._out.close()
            raise SinkError(
                f"video codec {codec!r} is not available ({exc})", hint="use codec libx264"
            ) from None
        cc = self._stream.codec_context
        cc.width, cc.height, cc.pix_fmt = self.width, self.height, pix_fmt
        cc.time_base = self.time_base
        self._stream.time_base = self.time_base
        # Frame threads: better compression than slice threads, and one frame per packet;
        # a live stream up to 720p30 encodes on one (encoder_threads says why).
        cc.thread_type = "FRAME"
        cc.thread_count = threads if threads is not None else encoder_threads(info)
        self.threads = cc.thread_count
        if codec in ("libx264", "libx265"):
            cc.options = {"crf": str(crf), "preset": preset}
        self._audio_in: Any = None
        self._audio_out: Any = None
        self._audio_packets: Iterator[Any] | None = None
        self._audio_next: Any = None
        if audio_from is not None:
            self._open_audio(str(audio_from))

    def _open_audio(self, source: str) -> None:
        try:
            container = av.open(source)
        except (av.FFmpegError, OSError) as exc:
            log.warning("not copying audio: cannot open %s (%s)", source, exc)
            return
        if not container.streams.audio:
            container.close()
            return
        stream = container.streams.audio[0]
        name = stream.codec_context.name
        if name not in self._out.supported_codecs:
            log.warning("not copying %s audio: %s cannot hold it", name, self.path.suffix)
            container.close()
            return
        packets = container.demux(stream)
        first = next((p for p in packets if p.dts is not None and p.size), None)
        template: Any = stream
        if first is not None and self.path.suffix.lower() == ".mkv":
            template = matroska_template(stream, first) or stream
        try:
            self._audio_out = self._out.add_stream_from_template(template)
        except (av.FFmpegError, ValueError) as exc:
            log.warning("not copying audio from %s: %s", source, exc)
            container.close()
            return
        finally:
            if template is not stream:
                template.container.close()
        self._audio_in = container
        self._audio_packets = packets
        self._audio_next = first

    @property
    def has_audio(self) -> bool:
        """Whether an audio stream is being copied into the output."""
        return self._audio_out is not None

    def _fit(self, image: np.ndarray) -> np.ndarray:
        fitted, rescaled = fit_image(image, self.width, self.height)
        if rescaled and not self._warned_resize:
            h, w = image.shape[:2]
            log.warning(
                "frame size changed to %dx%d; rescaling to the output's %dx%d",
                w, h, self.width, self.height,
            )  # fmt: skip
            self._warned_resize = True
        return fitted

    def write(
        self, item: Output | np.ndarray, pts: int | None = None,
        time_base: Fraction | None = None
    ) -> None:
        """Encode ``item.image`` at its frame's ``pts`` (in its ``time_base``), or 1/fps after
        the last; or an RGB ``uint8`` image given alone, at ``pts`` in ``time_base``.

        Raises :class:`SinkError` if the file cannot be written (the partial file is closed).
        """
        image, pts, time_base = video_item(item, pts, time_base)
        if self._closed:
            raise SinkError(f"video {self.path} is already closed")
        out_pts = next_pts(self._last_pts, pts, time_base or self.info.time_base or self.time_base,
                           self.time_base, self._frame_ticks)
        full = self._out_of_room()
        if full is not None:
            # Stop while the encoder's last frames and the index still fit: the file plays.
            self.close()
            raise full
        frame = to_video_frame(self._fit(image), self._stream.codec_context.pix_fmt or "")
        frame.pts = out_pts
        frame.time_base = self.time_base
        try:
            self._mux_video(self._stream.encode(frame))
            self._copy_audio_until(out_pts * self.time_base)
        except (av.FFmpegError, OSError) as exc:
            self._abort()
            raise write_failed(self.path, exc) from None
        self._last_pts = out_pts
        self.frames_written += 1

    def _mux_video(self, packets: list[Any]) -> None:
        for packet in packets:
            if not packet.duration:
                packet.duration = self._frame_ticks
            size = packet.size
            self._out.mux(packet)
            self._bytes_out += size
            self._video_packets += 1
            self._max_packet = max(self._max_packet, size)

    def _reserve(self) -> int:
        """Bytes that finalising may still need: the frame about to be written, the frames
        inside the encoder (each counted at the largest packet so far), the index (moov) and
        the muxer's buffer."""
        in_flight = self.frames_written - self._video_packets + 1
        per_frame = self._max_packet or self.width * self.height // 4
        index = 48 * (self.frames_written + 1) + 24 * self.audio_packets
        return in_flight * per_frame + index + 256 * 1024

    def _out_of_room(self) -> SinkError | None:
        """A :class:`SinkError` if writing another frame could leave no room to finalise."""
        reserve = self._reserve()
        kept = "the frames written so far are finalised and play"
        if self._size_limit is not None and self._bytes_out + reserve > self._size_limit:
            return SinkError(
                f"cannot write {self.path}: {os.strerror(errno.EFBIG)} (files may not exceed "
                f"{self._size_limit} bytes here, ulimit -f)",
                hint=f"raise the limit or write a shorter video; {kept}")
        measured = self._free
        if measured is None or measured[0] - (self._bytes_out - measured[1]) < 4 * reserve:
            try:  # measured again only when the estimate gets low: statvfs can be slow (NFS)
                st = os.statvfs(self.path.parent)
            except OSError:
                return None
            # Muxed but not yet on disk (a Matroska cluster is held in memory until it ends,
            # up to 5 s of video) still needs room: count it as taken.
            free = st.f_bavail * st.f_frsize - self._pending_bytes()
            measured = self._free = (free, self._bytes_out)
            if free < reserve:
                return SinkError(
                    f"cannot write {self.path}: {os.strerror(errno.ENOSPC)} "
                    f"({max(0, free) // 1024} KiB free)",
                    hint=f"free some disk space or write to another disk; {kept}")
        return None

    def _pending_bytes(self) -> int:
        """Bytes handed to the muxer that are not in the file yet (buffered by the muxer)."""
        try:
            return max(0, self._bytes_out - os.stat(self.path).st_size)
        except OSError:
            return self._bytes_out

    def _copy_audio_until(self, seconds: Fraction | None) -> None:
        """Stream-copy audio packets that start before ``seconds`` (all if ``None``)."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._audio_next
            self._audio_next = None
            if packet is None:
                packet = next(self._audio_packets, None)
                if packet is None:
                    self._audio_packets = None
                    return
            if packet.dts is None or packet.size == 0:
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and start * packet.time_base >= seconds:
                self._audio_next = packet
                return
            packet.stream = self._audio_out
            size = packet.size
            self._out.mux(packet)
            self._bytes_out += size
            self.audio_packets += 1

    def _abort(self) -> None:
        """Close what can be closed after a write error, keeping the partial file."""
        self._closed = True
        for closer in (self._out.close, getattr(self._audio_in, "close", None)):
            try:
                if closer is not None:
                    closer()
            except (av.FFmpegError, OSError):
                pass

    def hurry(self, budget_s: float = 0.5) -> None:
        """Finish soon (a second Ctrl-C): :meth:`close` drains the encoder for at most
        ``budget_s`` more seconds, then writes the index; frames still inside the encoder
        then are left out, every frame before them plays. Safe to call from a signal handler.

        Example:
            >>> sink.hurry()   # from the handler; the with block's exit then closes quickly
        """
        deadline = time.monotonic() + budget_s
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline

    def _drain_encoder(self) -> None:
        """Mux what the encoder still holds, packet by packet, until :meth:`hurry`'s deadline."""
        for packet in self._stream.codec_context.encode_lazy(None):
            packet.stream = self._stream
            self._mux_video([packet])
            if self._deadline is not None and time.monotonic() > self._deadline:
                left = self.frames_written - self._video_packets
                if left > 0:
                    log.warning("stopping at once: the last %d frame(s) inside the encoder are "
                                "left out of %s", left, self.path)
                return

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio up to the video's end, write the index."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain_encoder()
            if self._last_pts is not None:
                self._copy_audio_until((self._last_pts + self._frame_ticks) * self.time_base)
            self._out.close()
        except (av.FFmpegError, OSError) as exc:
            self._abort()
            raise write_failed(self.path, exc) from None
        finally:
            if self._audio_in is not None:
                self._audio_in.close()


def next_pts(last: int | None, pts: int | None, time_base: Fraction, out_base: Fraction,
             frame_ticks: int) -> int:
    """The output pts (in ``out_base``) of a frame at ``pts`` in ``time_base``, after one at
    ``last``: rescaled, or one frame (``frame_ticks``) after the last when it is missing or
    does not rise.

    Example:
        >>> next_pts(None, 512, Fraction(1, 12800), Fraction(1, 12800), 512)
        512
        >>> next_pts(512, 512, Fraction(1, 12800), Fraction(1, 12800), 512)
        1024
    """
    if pts is None:
        out = 0 if last is None else last + frame_ticks
    else:
        out = round(pts * Fraction(time_base) / out_base)
    if last is not None and out <= last:
        # One frame after the last, not one tick: a tick can round to a duplicate
        # timestamp in the container (Matroska keeps milliseconds).
        out = last + frame_ticks
    return out


def fit_image(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, bool]:
    """``image`` (RGB ``uint8``) at ``width`` x ``height``, and whether it had to be rescaled
    (an odd size is cropped by one pixel instead). Raises ``ValueError`` for other images.

    Example:
        >>> fit_image(np.zeros((361, 640, 3), np.uint8), 640, 360)[0].shape
        (360, 640, 3)
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
        )
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image, False
    if h - height in (0, 1) and w - width in (0, 1):
        return image[:height, :width], False  # odd source size, even output size
    import cv2

    interp = cv2.INTER_AREA if w * h > width * height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp), True


def to_video_frame(image: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """An RGB image as a PyAV frame for an encoder that takes ``pix_fmt``.

    Example:
        >>> to_video_frame(np.zeros((360, 640, 3), np.uint8), "yuv420p").format.name
        'yuv420p'
    """
    if pix_fmt == "yuv420p":
        # OpenCV's BT.601 limited-range conversion is what swscale does by default for an
        # untagged RGB frame (mean difference 0.2 levels), at a fifth of the time and
        # without the encoder-side reformat; it was half the codec overhead at 720p.
        import cv2

        planes: np.ndarray = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)
        return av.VideoFrame.from_ndarray(planes, format="yuv420p")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
