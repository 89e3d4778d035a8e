"""Outputs: an H.264 video file (with the source's audio), a window, label maps, JSON lines.

Every sink is a context manager that finalises its output on exit, also when an exception
ends the ``with`` block, so a crash still leaves a playable video and complete JSON lines.
Every sink's ``write(item)`` takes the same :class:`~streamer.core.types.Output` (the frame,
the rendered image, the parse result, the stats record) and uses its part of it; the video,
window and label-map sinks also take their part alone (an image, a label map).
Problems the user can fix (a missing folder, a full disk, no GUI) are :class:`SinkError`
with one line of text; call :func:`check_output_path` before any work so they show up early.

One module per kind: :mod:`~streamer.io.sinks.video`, :mod:`~streamer.io.sinks.segments`,
:mod:`~streamer.io.sinks.window`, :mod:`~streamer.io.sinks.labels`,
:mod:`~streamer.io.sinks.stats`; the contract they share in :mod:`~streamer.io.sinks.base` and
the checks in :mod:`~streamer.io.sinks.checks`; every name is importable from here.

Example:
    >>> check_output_path("out/parsed.mp4")
    >>> with open_source("in.mp4") as source, VideoFileSink(
    ...     "out/parsed.mp4", source.info, audio_from="in.mp4"
    ... ) as sink:
    ...     for frame in source:
    ...         sink.write(Output(frame, render(frame.image)))
"""

from __future__ import annotations

from streamer.io.sinks.base import FinalisingSink
from streamer.io.sinks.checks import VIDEO_SUFFIXES, check_output_path, prepare_labels_dir
from streamer.io.sinks.labels import LabelMapSink, load_label_maps
from streamer.io.sinks.segments import SegmentedVideoSink, list_segments
from streamer.io.sinks.stats import JsonlStatsSink
from streamer.io.sinks.video import VideoFileSink
from streamer.io.sinks.window import WindowSink

__all__ = [
    "VIDEO_SUFFIXES",
    "FinalisingSink",
    "JsonlStatsSink",
    "LabelMapSink",
    "SegmentedVideoSink",
    "VideoFileSink",
    "WindowSink",
    "check_output_path",
    "list_segments",
    "load_label_maps",
    "prepare_labels_dir",
]
