"""Local cameras through OpenCV, by index or device path: :class:`WebcamSource`."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator

from streamer.core.errors import SourceError
from streamer.core.types import Frame, VideoInfo
from streamer.io.sources.base import Source, SourceOptions

__all__ = ["WebcamSource"]

log = logging.getLogger("streamer.sources")


class WebcamSource(Source):
    """A local camera through OpenCV: an index (``0``) or a device path (``/dev/video0``).

    Frames are converted from OpenCV's BGR to RGB; ``pts`` is ``None`` and ``timestamp`` is
    seconds since the first frame. A camera that stops delivering ends the stream after
    ``read_timeout_s`` with a warning.

    Example:
        >>> with WebcamSource(0) as cam:
        ...     frame = next(iter(cam))
        >>> frame.image.shape
        (480, 640, 3)
    """

    def __init__(self, device: int | str, options: SourceOptions | None = None) -> None:
        import cv2

        super().__init__(str(device), options)
        self._no_start()
        self._cv2 = cv2
        if isinstance(device, str) and device.startswith("/dev/") and not os.path.exists(device):
            raise SourceError(
                f"webcam {device} not found",
                hint="list cameras with `ls /dev/video*` and pass an existing one",
            )
        target: int | str = int(device) if str(device).isdigit() else device
        if isinstance(target, int) and sys.platform.startswith("linux"):
            if not os.path.exists(f"/dev/video{target}"):
                raise SourceError(
                    f"webcam {target} not found (no /dev/video{target})",
                    hint="list cameras with `ls /dev/video*` and pass an existing index",
                )
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._cap = cv2.VideoCapture(target)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(
                f"cannot open webcam {device}",
                hint="check that it is connected, not used by another program, and the index",
            )
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
        self.info = VideoInfo(
            width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=fps if 0 < fps < 1000 else 30.0,
            is_live=True,
            uri=str(device),
        )

    def _frames(self) -> Iterator[Frame]:
        cv2, index, origin = self._cv2, 0, None
        failing_since: float | None = None
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            now = time.monotonic()
            if not ok or bgr is None:
                self.stats.decode_errors += 1
                failing_since = failing_since or now
                if now - failing_since > self.options.read_timeout_s:
                    log.warning("webcam %s stopped delivering frames", self.uri)
                    return
                self._stop.wait(0.01)
                continue
            failing_since = None
            origin = now if origin is None else origin
            self.stats.frames_decoded += 1
            yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), now - origin, now)
            index += 1

    def close(self) -> None:
        super().close()
        self._cap.release()
