"""Video sources: files, RTSP streams, webcams and images, all iterables of :class:`Frame`.

Every source is a context manager and an iterable of RGB ``uint8`` frames, knows its
:class:`~streamer.core.types.VideoInfo` as ``.info`` once constructed, and counts what happened in
``.stats`` (:class:`SourceStats`). :func:`open_source` picks the type from the URI itself
(scheme, device path, image suffix or folder), never from a frame count.

One module per kind: :mod:`~streamer.io.sources.file`, :mod:`~streamer.io.sources.rtsp`,
:mod:`~streamer.io.sources.webcam`, :mod:`~streamer.io.sources.images`, and what they share in
:mod:`~streamer.io.sources.base`; every name is importable from here.

Example:
    >>> with open_source("clip.mp4", SourceOptions()) as source:
    ...     print(source.info.fps, source.info.frame_count)
    ...     for frame in source:
    ...         print(frame.index, frame.timestamp, frame.image.shape)
    >>> source.stats.frames_decoded
    241
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from streamer.core.labels import IMAGE_SUFFIXES
from streamer.io.sources.base import (
    LIVE_SCHEMES,
    TRANSPORTS,
    Source,
    SourceOptions,
    SourceStats,
    is_stream_uri,
    redact_url,
)
from streamer.io.sources.file import FileSource
from streamer.io.sources.images import ImageSource
from streamer.io.sources.rtsp import RtspSource
from streamer.io.sources.webcam import WebcamSource

__all__ = [
    "IMAGE_SUFFIXES",
    "LIVE_SCHEMES",
    "is_stream_uri",
    "TRANSPORTS",
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
