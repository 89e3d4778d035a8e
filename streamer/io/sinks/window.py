"""An OpenCV window to watch the output live: :class:`WindowSink`."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from streamer.core.errors import SinkError
from streamer.core.types import Output
from streamer.io.sinks.base import FinalisingSink

__all__ = ["WindowSink"]


def _gui_support(cv2: Any) -> bool:
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return not (match and match.group(1).upper() == "NONE")


class WindowSink(FinalisingSink):
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
