"""Outputs: an H.264 video file (with the source's audio), a window, label maps, JSON lines.

Every sink is a context manager that finalises its output on exit, also when an exception
ends the ``with`` block, so a crash still leaves a playable video and complete JSON lines.
Every sink's ``write(item)`` takes the same :class:`~streamer.core.types.Output` (the frame,
the rendered image, the parse result, the stats record) and uses its part of it; the video,
window and label-map sinks also take their part alone (an image, a label map).
Problems the user can fix (a missing folder, a full disk, no GUI) are :class:`SinkError`
with one line of text; call :func:`check_output_path` before any work so they show up early.

Example:
    >>> check_output_path("out/parsed.mp4")
    >>> with open_source("in.mp4") as source, VideoFileSink(
    ...     "out/parsed.mp4", source.info, audio_from="in.mp4"
    ... ) as sink:
    ...     for frame in source:
    ...         sink.write(Output(frame, render(frame.image)))
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import struct
import time
from collections.abc import Collection, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output, VideoInfo

__all__ = [
    "VIDEO_SUFFIXES",
    "JsonlStatsSink",
    "LabelMapSink",
    "VideoFileSink",
    "WindowSink",
    "check_output_path",
    "load_label_maps",
]

log = logging.getLogger("streamer.sinks")

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".m4v"})


def check_output_path(
    path: str | os.PathLike[str], *, suffixes: Collection[str] | None = None
) -> Path:
    """Check that ``path`` can be created or overwritten; return it as a :class:`Path`.

    Raises :class:`SinkError` with one line if the folder is missing or not writable, the path
    is a folder, or (when ``suffixes`` is given) the suffix is not one of them. Call it before
    any slow work, so a typo in ``--output`` fails in milliseconds rather than after an hour.

    Example:
        >>> check_output_path("/tmp/out.mp4", suffixes=VIDEO_SUFFIXES)
        PosixPath('/tmp/out.mp4')
        >>> check_output_path("/no/such/dir/out.mp4")
        Traceback (most recent call last):
        streamer.core.errors.SinkError: output folder /no/such/dir does not exist; create it ...
    """
    path = Path(path)
    folder = path.parent
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise SinkError(
            f"cannot write {path}: unsupported file type {path.suffix or '(none)'!r}",
            hint=f"use one of {', '.join(sorted(suffixes))}",
        )
    if path.is_dir():
        raise SinkError(f"output {path} is a folder", hint="give a file name inside it")
    if not folder.exists():
        raise SinkError(
            f"output folder {folder} does not exist",
            hint="create it first (mkdir -p) or choose another output path",
        )
    if not folder.is_dir():
        raise SinkError(f"output folder {folder} is not a folder", hint="choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SinkError(f"no permission to write in {folder}", hint="choose a writable folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise SinkError(f"no permission to overwrite {path}", hint="choose another file name")
    _probe_write(path)
    return path


def prepare_labels_dir(directory: str | os.PathLike[str]) -> Path:
    """Create the label-map folder (parents too) and prove a file can be written in it.

    Raises :class:`SinkError` with one line on a read-only mount, under /proc or /sys, or
    when the path is a file. Call it before any slow work, as :func:`check_output_path`.

    Example:
        >>> prepare_labels_dir("/proc/labels")
        Traceback (most recent call last):
        streamer.core.errors.SinkError: cannot create the label folder /proc/labels (...); ...
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise SinkError(f"label folder {path} is a file", hint="give a folder for --labels-out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = " ".join(str(exc.strerror or exc).split())
        raise SinkError(f"cannot create the label folder {path} ({reason})",
                        hint="choose a writable folder for --labels-out") from None
    check_output_path(path / "000000.png")
    return path


def _probe_write(path: Path) -> None:
    """Create (then remove) ``path``, or open it for appending, to prove it can be written.

    ``os.access`` says yes to root almost everywhere, also where nothing can be created (/proc,
    /sys) or the file system is mounted read-only; only trying tells. Nothing is truncated.
    """
    try:
        if path.exists():
            if path.is_file():
                with open(path, "ab"):
                    pass
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        reason = " ".join(str(exc.strerror or exc).split())
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise _write_failed(path, exc) from None
        what = "no permission to write in" if exc.errno in (
            errno.EACCES, errno.EPERM, errno.EROFS) else "cannot create files in"
        raise SinkError(f"{what} {path.parent} ({reason})",
                        hint="choose a writable folder") from None


def _file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE, ``ulimit -f``), if limited."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def _write_failed(path: Path, exc: BaseException) -> SinkError:
    code = getattr(exc, "errno", None)
    reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some disk space or write to another disk"
    else:
        hint = "check the disk and the output path"
    return SinkError(f"cannot write {path}: {reason}", hint=hint)


class VideoFileSink:
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
        self._size_limit = _file_size_limit()
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
            raise _write_failed(self.path, exc) from None
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
        # Frame threads: better compression than slice threads, and one frame per packet.
        cc.thread_type = "FRAME"
        cc.thread_count = threads if threads is not None else min(4, os.cpu_count() or 1)
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
            template = _matroska_template(stream, first) or stream
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
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
            )
        h, w = image.shape[:2]
        if (h, w) == (self.height, self.width):
            return image
        if h - self.height in (0, 1) and w - self.width in (0, 1):
            return image[: self.height, : self.width]  # odd source size, even output size
        import cv2

        if not self._warned_resize:
            log.warning(
                "frame size changed to %dx%d; rescaling to the output's %dx%d",
                w, h, self.width, self.height,
            )  # fmt: skip
            self._warned_resize = True
        shrink = w * h > self.width * self.height
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(image, (self.width, self.height), interpolation=interp)

    def write(
        self, item: Output | np.ndarray, pts: int | None = None,
        time_base: Fraction | None = None
    ) -> None:
        """Encode ``item.image`` at its frame's ``pts`` (in its ``time_base``), or 1/fps after
        the last; or an RGB ``uint8`` image given alone, at ``pts`` in ``time_base``.

        Raises :class:`SinkError` if the file cannot be written (the partial file is closed).
        """
        if isinstance(item, Output):
            image, pts, time_base = item.image, item.frame.pts, item.frame.time_base
        else:
            image = item
        if self._closed:
            raise SinkError(f"video {self.path} is already closed")
        if pts is None:
            out_pts = 0 if self._last_pts is None else self._last_pts + self._frame_ticks
        else:
            tb_in = Fraction(time_base or self.info.time_base or self.time_base)
            out_pts = round(pts * tb_in / self.time_base)
        if self._last_pts is not None and out_pts <= self._last_pts:
            # One frame after the last, not one tick: a tick can round to a duplicate
            # timestamp in the container (Matroska keeps milliseconds).
            out_pts = self._last_pts + self._frame_ticks
        full = self._out_of_room()
        if full is not None:
            # Stop while the encoder's last frames and the index still fit: the file plays.
            self.close()
            raise full
        frame = self._to_frame(self._fit(image))
        frame.pts = out_pts
        frame.time_base = self.time_base
        try:
            self._mux_video(self._stream.encode(frame))
            self._copy_audio_until(out_pts * self.time_base)
        except (av.FFmpegError, OSError) as exc:
            self._abort()
            raise _write_failed(self.path, exc) from None
        self._last_pts = out_pts
        self.frames_written += 1

    def _to_frame(self, image: np.ndarray) -> av.VideoFrame:
        if self._stream.codec_context.pix_fmt == "yuv420p":
            # OpenCV's BT.601 limited-range conversion is what swscale does by default for an
            # untagged RGB frame (mean difference 0.2 levels), at a fifth of the time and
            # without the encoder-side reformat; it was half the codec overhead at 720p.
            import cv2

            planes: np.ndarray = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)
            return av.VideoFrame.from_ndarray(planes, format="yuv420p")
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")

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
            raise _write_failed(self.path, exc) from None
        finally:
            if self._audio_in is not None:
                self._audio_in.close()

    def __enter__(self) -> VideoFileSink:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # finalise the partial output, but let the original exception win
            self.close()
        except SinkError as err:
            log.warning("%s", err)


# Matroska codec ids of audio that MP4 files carry with priming samples to skip.
_MATROSKA_AUDIO = {"aac": "A_AAC", "mp3": "A_MPEG/L3", "mp2": "A_MPEG/L2", "ac3": "A_AC3",
                   "eac3": "A_EAC3"}


def _ebml(element_id: str, payload: bytes) -> bytes:
    return bytes.fromhex(element_id) + (1 << 56 | len(payload)).to_bytes(8, "big") + payload


def _ebml_uint(element_id: str, value: int) -> bytes:
    return _ebml(element_id, value.to_bytes(8, "big"))


def _matroska_template(stream: Any, first: Any) -> Any:
    """An audio stream like ``stream`` that also carries the source's priming as its codec
    delay, to copy into a Matroska output; ``None`` when there is nothing to carry over.

    An MP4 skips an AAC/MP3 encoder's priming samples with its edit list, which FFmpeg hands
    on as "skip samples" on the first packet. Matroska keeps them as the track's CodecDelay,
    which FFmpeg writes from the stream's ``initial_padding``; PyAV cannot set that, but it
    copies it from a Matroska input. So this builds the smallest such input: a header with one
    audio track (the source's codec, its private data and the delay) and its first packet.
    """
    if not first.has_sidedata("skip_samples"):
        return None
    skip = int.from_bytes(bytes(first.get_sidedata("skip_samples"))[:4], "little")
    cc = stream.codec_context
    codec_id = _MATROSKA_AUDIO.get(cc.codec.canonical_name)
    if skip <= 0 or codec_id is None or not cc.sample_rate or not cc.channels:
        return None
    header = _ebml("1A45DFA3", _ebml_uint("4286", 1) + _ebml_uint("42F7", 1)
                   + _ebml_uint("42F2", 4) + _ebml_uint("42F3", 8) + _ebml("4282", b"matroska")
                   + _ebml_uint("4287", 4) + _ebml_uint("4285", 2))
    track = (_ebml_uint("D7", 1) + _ebml_uint("73C5", 1) + _ebml_uint("83", 2)
             + _ebml("86", codec_id.encode())
             + (_ebml("63A2", bytes(cc.extradata)) if cc.extradata else b"")
             + _ebml_uint("56AA", round(skip * 1_000_000_000 / cc.sample_rate))  # CodecDelay, ns
             + _ebml("E1", _ebml("B5", struct.pack(">d", float(cc.sample_rate)))
                     + _ebml_uint("9F", cc.channels)))
    block = b"\x81\x00\x00\x80" + bytes(first)  # track 1, time 0, keyframe
    segment = (_ebml("1549A966", _ebml_uint("2AD7B1", 1_000_000))
               + _ebml("1654AE6B", _ebml("AE", track))
               + _ebml("1F43B675", _ebml_uint("E7", 0) + _ebml("A3", block)))
    try:
        made = av.open(io.BytesIO(header + _ebml("18538067", segment)), format="matroska")
    except av.FFmpegError as exc:
        log.warning("audio priming not carried over: %s", exc)
        return None
    if not made.streams.audio:
        made.close()
        return None
    return made.streams.audio[0]


def _gui_support(cv2: Any) -> bool:
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return not (match and match.group(1).upper() == "NONE")


class WindowSink:
    """Shows frames in an OpenCV window: ``q`` or Esc quits, space pauses and resumes.

    After the user quits, ``closed_by_user`` is ``True`` and :meth:`write` returns ``False``.
    Needs OpenCV with GUI support (``opencv-python``, not ``-headless``) and a display.

    Example:
        >>> with WindowSink("streamer") as window:
        ...     for frame in source:
        ...         if not window.write(frame.image):
        ...             break
    """

    QUIT_KEYS = frozenset({ord("q"), ord("Q"), 27})
    PAUSE_KEY = ord(" ")

    def __init__(self, title: str = "streamer") -> None:
        import cv2

        if not _gui_support(cv2):
            raise SinkError(
                "--show needs OpenCV with GUI support: pip install opencv-python (not -headless)"
            )
        self._cv2 = cv2
        self.title = title
        self.closed_by_user = False
        self.paused = False
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(
                f"cannot open a window ({' '.join(str(exc).split())[:120]})",
                hint="run --show on a desktop session (is DISPLAY set?)",
            ) from None

    def write(self, item: Output | np.ndarray) -> bool:
        """Show ``item.image`` (or an RGB image given alone); ``False`` once the user has quit."""
        image = item.image if isinstance(item, Output) else item
        if self.closed_by_user:
            return False
        cv2 = self._cv2
        cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        while True:
            if key in self.QUIT_KEYS:
                self.closed_by_user = True
                return False
            if key == self.PAUSE_KEY:
                self.paused = not self.paused
            if not self.paused:
                return True
            key = cv2.waitKey(50) & 0xFF

    def close(self) -> None:
        """Close the window."""
        try:
            self._cv2.destroyWindow(self.title)
        except self._cv2.error:
            pass

    def __enter__(self) -> WindowSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LabelMapSink:
    """Saves per-pixel label maps: one PNG per frame, or NPZ files of ``chunk`` frames.

    The folder is created if missing (its parent must exist).
    PNGs are 8-bit grey images named by frame index (``000042.png``), or after the source
    image when :meth:`write` is given its ``name`` (``photo_0007.png``); each NPZ holds arrays
    keyed by 6-digit frame index (``labels_000000-000099.npz``). :func:`load_label_maps`
    reads either back. With ``instances``, the person-id map (0 = nobody, else the person's
    track id, as in the stats JSONL) is written too: ``000042_instances.png`` (16-bit) or
    ``instances_000000-000099.npz``; ``load_label_maps(folder, instances=True)`` reads it.

    Example:
        >>> with LabelMapSink("out/labels", fmt="npz", chunk=50) as sink:
        ...     sink.write(result.labels, frame.index)
        >>> dict(load_label_maps("out/labels"))[frame.index].dtype
        dtype('uint8')
    """

    FORMATS = ("png", "npz")

    def __init__(self, directory: str | os.PathLike[str], fmt: str = "png", chunk: int = 100,
                 instances: bool = False):
        if fmt not in self.FORMATS:
            raise SinkError(f"label map format must be png or npz, not {fmt!r}")
        if chunk < 1:
            raise SinkError(f"label map chunk must be at least 1, not {chunk}")
        self.directory = Path(directory)
        if self.directory.is_dir():
            check_output_path(self.directory / "000000.png")
        else:  # create the folder itself; its parent must exist, as for any output
            check_output_path(self.directory)
            try:
                self.directory.mkdir()
            except OSError as exc:
                raise _write_failed(self.directory, exc) from None
        self.fmt = fmt
        self.chunk = chunk
        self.instances = instances
        self.files_written = 0
        self._pending: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        self._pending_instances: dict[str, np.ndarray] = {}
        self._closed = False

    @staticmethod
    def _as_uint8(labels: np.ndarray) -> np.ndarray:
        if labels.ndim != 2:
            raise ValueError(f"a label map must be 2-D, got shape {labels.shape}")
        if labels.dtype == np.uint8:
            return labels
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("label ids must lie in 0..255 to be saved as uint8")
        return labels.astype(np.uint8)

    def write(self, item: Output | np.ndarray, index: int | None = None,
              instances: np.ndarray | None = None, name: str | None = None) -> None:
        """Save the label map of ``item.result`` (no result: all background) under its frame's
        index and name; or a label map given alone, of frame ``index``, with ``instances``
        and ``name``.

        A label map is 2-D, ids 0..255; with ``instances`` on, its person-id map is saved too
        (``None``: nobody, all zeros). A PNG is named ``name`` (the source image's stem, so
        maps pair with their images) when given, else after the index.
        """
        if isinstance(item, Output):
            result, frame = item.result, item.frame
            labels = (result.labels if result is not None
                      else np.zeros(frame.image.shape[:2], np.uint8))
            index, name = frame.index, frame.name
            instances = result.instances if result is not None else None
        elif index is None:
            raise TypeError("LabelMapSink.write(labels) needs the frame index")
        else:
            labels = item
        labels = self._as_uint8(labels)
        ids = None
        if self.instances:
            ids = (np.zeros(labels.shape, np.uint16) if instances is None
                   else np.asarray(instances).astype(np.uint16))
        if self.fmt == "png":
            if name and name in self._names:  # a.jpg and a.png in one folder
                name = f"{name}_{index:06d}"
            if name:
                self._names.add(name)
            stem = name if name else f"{index:06d}"
            self._png(self.directory / f"{stem}.png", labels)
            if ids is not None:
                self._png(self.directory / f"{stem}_instances.png", ids)
            return
        self._pending[f"{index:06d}"] = labels
        if ids is not None:
            self._pending_instances[f"{index:06d}"] = ids
        if len(self._pending) >= self.chunk:
            self._flush()

    def _png(self, path: Path, image: np.ndarray) -> None:
        import cv2

        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error as exc:
            raise _write_failed(path, exc) from None
        if not ok:
            raise SinkError(f"cannot write {path}", hint="check free disk space")
        self.files_written += 1

    def _flush(self) -> None:
        for prefix, pending in (("labels", self._pending),
                                ("instances", self._pending_instances)):
            if not pending:
                continue
            keys = sorted(pending)
            path = self.directory / f"{prefix}_{keys[0]}-{keys[-1]}.npz"
            try:
                np.savez_compressed(path, **pending)  # type: ignore[arg-type]  # keys: indices
            except OSError as exc:
                raise _write_failed(path, exc) from None
            finally:
                pending.clear()
            self.files_written += 1

    def close(self) -> None:
        """Write the last, partial NPZ chunk."""
        if not self._closed:
            self._closed = True
            self._flush()

    def __enter__(self) -> LabelMapSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_label_maps(directory: str | os.PathLike[str],
                    instances: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, labels)`` from a :class:`LabelMapSink` folder, in index order
    (with ``instances``, the person-id maps instead).

    Example:
        >>> for index, labels in load_label_maps("out/labels"):
        ...     print(index, labels.shape)
    """
    import cv2

    directory = Path(directory)
    suffix, prefix = ("_instances", "instances") if instances else ("", "labels")
    found: list[tuple[int, Path, str | None]] = []
    for path in directory.glob("*.png"):
        stem = path.stem[:len(path.stem) - len(suffix)] if suffix else path.stem
        if (not suffix or path.stem.endswith(suffix)) and stem.isdigit():
            found.append((int(stem), path, None))
    for path in directory.glob(f"{prefix}_*.npz"):
        with np.load(path) as data:
            found.extend((int(key), path, key) for key in data.files)
    for index, path, key in sorted(found, key=lambda item: item[0]):
        if key is None:
            labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if labels is None:
                raise SinkError(f"cannot read the label map {path}")
            yield index, labels
        else:
            with np.load(path) as data:
                yield index, data[key]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Fraction, Path)):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return dict(value.__dict__)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonlStatsSink:
    """Appends one JSON object per line, flushed per line so ``tail -f`` shows progress.

    NumPy scalars and arrays, fractions, paths and dataclasses are converted.

    Example:
        >>> with JsonlStatsSink("out/stats.jsonl") as stats:
        ...     stats.write({"frame": 0, "persons": 2, "latency_ms": 81.5})
        >>> json.loads(Path("out/stats.jsonl").read_text().splitlines()[0])["persons"]
        2
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = check_output_path(path)
        self.lines_written = 0
        try:
            self._file = open(self.path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise _write_failed(self.path, exc) from None

    def write(self, item: Output | Mapping[str, Any]) -> None:
        """Write ``item.record`` (or a record given alone) as one line of JSON."""
        record = item.record if isinstance(item, Output) else item
        if record is None:
            assert isinstance(item, Output)
            raise ValueError(f"frame {item.frame.index} has no stats record to write")
        line = json.dumps(dict(record), default=_jsonable, separators=(",", ":"))
        try:
            self._file.write(line + "\n")
        except OSError as exc:
            raise _write_failed(self.path, exc) from None
        self.lines_written += 1

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as exc:
                raise _write_failed(self.path, exc) from None

    def __enter__(self) -> JsonlStatsSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
