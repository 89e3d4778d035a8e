"""Outputs: an H.264 video file (with the source's audio), rotating segments, an RTSP publish,
a window, label maps, JSON lines; :func:`open_video_sink` picks the video one from the path.

Every sink is a context manager that finalises its output on exit, also when an exception
ends the ``with`` block, so a crash still leaves a playable video and complete JSON lines.
Every sink's ``write(item)`` takes the same :class:`~streamer.core.types.Output` (the frame,
the rendered image, the parse result, the stats record) and uses its part of it; the video,
window and label-map sinks also take their part alone (an image, a label map).
Problems the user can fix (a missing folder, a full disk, no GUI) are :class:`SinkError`
with one line of text; call :func:`check_output_path` before any work so they show up early.

One module per kind: :mod:`~streamer.io.sinks.video`, :mod:`~streamer.io.sinks.segments`,
:mod:`~streamer.io.sinks.publish`, :mod:`~streamer.io.sinks.window`,
:mod:`~streamer.io.sinks.labels`, :mod:`~streamer.io.sinks.stats`; the contract they share in
:mod:`~streamer.io.sinks.base` and the checks in :mod:`~streamer.io.sinks.checks`; every name
is importable from here.

Example:
    >>> check_output_path("out/parsed.mp4")
    >>> with open_source("in.mp4") as source, VideoFileSink(
    ...     "out/parsed.mp4", source.info, audio_from="in.mp4"
    ... ) as sink:
    ...     for frame in source:
    ...         sink.write(Output(frame, render(frame.image)))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from streamer.core.errors import ConfigError
from streamer.core.types import VideoInfo
from streamer.io.sinks.base import FinalisingSink
from streamer.io.sinks.checks import (
    PUBLISH_SCHEMES,
    VIDEO_SUFFIXES,
    check_output_path,
    check_publish_url,
    prepare_labels_dir,
    url_scheme,
)
from streamer.io.sinks.labels import LabelMapSink, load_label_maps
from streamer.io.sinks.publish import RtspPublishSink
from streamer.io.sinks.segments import SegmentedVideoSink, list_segments
from streamer.io.sinks.stats import JsonlStatsSink
from streamer.io.sinks.video import VideoFileSink
from streamer.io.sinks.window import WindowSink
from streamer.io.sources.base import redact_url

__all__ = [
    "PUBLISH_RECONNECT_S",
    "PUBLISH_SCHEMES",
    "VIDEO_SUFFIXES",
    "FinalisingSink",
    "JsonlStatsSink",
    "LabelMapSink",
    "RtspPublishSink",
    "SegmentedVideoSink",
    "VideoFileSink",
    "VideoSink",
    "WindowSink",
    "check_output_path",
    "check_publish_url",
    "list_segments",
    "load_label_maps",
    "open_video_sink",
    "prepare_labels_dir",
    "url_scheme",
]

log = logging.getLogger("streamer.sinks")

#: What :func:`open_video_sink` returns: every one writes ``Output`` items and is a context
#: manager that finalises on exit.
VideoSink = VideoFileSink | SegmentedVideoSink | RtspPublishSink

#: How long a live run's RTSP publish keeps trying to reach a server that went away.
PUBLISH_RECONNECT_S = 30.0


def open_video_sink(path: str | os.PathLike[str], info: VideoInfo, *,
                    audio_from: str | os.PathLike[str] | None = None, codec: str = "libx264",
                    crf: int = 23, preset: str = "veryfast", segment_seconds: float = 0.0,
                    keep_segments: int = 0, max_disk_mb: float = 0.0) -> VideoSink:
    """The video output that ``path`` names, opened (the caller enters it in a ``with``).

    * ``rtsp://HOST:PORT/PATH``: :class:`RtspPublishSink`, publishing to that server; from a
      live source it reconnects for up to ``PUBLISH_RECONNECT_S`` seconds. The
      audio is not published (``audio_from`` is ignored with a warning); segments do not
      apply to a stream (``segment_seconds`` is a :class:`ConfigError`).
    * with ``segment_seconds``: :class:`SegmentedVideoSink`, rotating files in ``path``
      without its suffix (``rec/door.mkv`` -> ``rec/door/START-TIME.mkv``), with retention;
      segments carry no audio.
    * anything else: :class:`VideoFileSink`, one file with ``audio_from``'s audio copied.

    Example:
        >>> with open_video_sink("rtsp://127.0.0.1:8554/parsed", source.info) as video:
        ...     for frame in source:
        ...         video.write(Output(frame, render(frame.image)))
        >>> type(video).__name__
        'RtspPublishSink'
    """
    if url_scheme(path) is not None:
        url = check_publish_url(os.fspath(path))
        if segment_seconds:
            raise ConfigError(f"output.segment_seconds does not apply to the stream "
                              f"{redact_url(url)}", hint="leave segment_seconds at 0 when "
                              "publishing to rtsp://, or record to a file")
        if audio_from is not None:
            log.warning("the audio is not published to %s (video only)", redact_url(url))
        return RtspPublishSink(url, info, codec=codec, crf=crf, preset=preset,
                               reconnect_s=PUBLISH_RECONNECT_S if info.is_live else 0.0)
    if segment_seconds:
        folder = Path(path)
        return SegmentedVideoSink(folder.with_suffix(""), info,
                                  segment_seconds=segment_seconds, keep_segments=keep_segments,
                                  max_disk_mb=max_disk_mb, suffix=folder.suffix or ".mkv",
                                  codec=codec, crf=crf, preset=preset)
    return VideoFileSink(path, info, audio_from=audio_from, codec=codec, crf=crf, preset=preset)
