"""Video files (any container FFmpeg reads), decoded with PyAV: :class:`FileSource`."""

from __future__ import annotations

import heapq
import logging
import math
import os
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

from streamer.core.errors import SourceError
from streamer.core.types import Frame, VideoInfo
from streamer.io.sources.base import Pacer, Source, SourceOptions, describe_av_error, fps_of

__all__ = ["FileSource"]

log = logging.getLogger("streamer.sources")


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
                f"cannot read {uri} as a video ({describe_av_error(exc)})",
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
        fps = fps_of(self._stream)
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
        pacer = Pacer(self._stop) if self.options.realtime else None
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
            log.warning("stopped reading %s early: %s", self.uri, describe_av_error(exc))

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
                     describe_av_error(exc), seconds)

    def close(self) -> None:
        super().close()
        self._container.close()
