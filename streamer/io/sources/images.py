"""One image or a folder of images as frames: :class:`ImageSource`."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.errors import SourceError
from streamer.core.labels import IMAGE_SUFFIXES
from streamer.core.types import Frame, VideoInfo
from streamer.io.sources.base import Pacer, Source, SourceOptions

__all__ = ["ImageSource"]

log = logging.getLogger("streamer.sources")


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageSource(Source):
    """One image file or a folder of images (sorted naturally: 2 before 10) as frames.

    Frames are spaced ``1 / options.image_fps`` seconds apart (``pts`` counts images). An image
    that cannot be read is skipped and counted in ``stats.decode_errors``.

    Example:
        >>> with ImageSource("photos/", SourceOptions(image_fps=2)) as source:
        ...     stamps = [f.timestamp for f in source]
        >>> stamps[:3]
        [0.0, 0.5, 1.0]
    """

    def __init__(self, uri: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        import cv2

        uri = os.fspath(uri)
        super().__init__(uri, options)
        self._cv2 = cv2
        path = Path(uri)
        if not path.exists():
            raise SourceError(f"image or folder not found: {path}", hint="check the path")
        if path.is_dir():
            files = [
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            ]
            self.files = sorted(files, key=_natural_key)
            if not self.files:
                raise SourceError(
                    f"folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                    hint="pass a folder of images or a video file",
                )
        else:
            self.files = [path]
        skip = math.ceil(self.options.start * self.options.image_fps - 1e-6)
        if skip:
            if skip >= len(self.files):
                raise SourceError(
                    f"--start {self.options.start:g} s is past the last of the "
                    f"{len(self.files)} image(s) in {path} (at {self.options.image_fps:g} per "
                    "second)", hint="give an earlier start")
            self.files = self.files[skip:]
        # The output is sized from the first image that reads: a damaged file first in the
        # folder is skipped (with a warning when frames are read), never taken as the size.
        first = next((image for image in map(self._read, self.files) if image is not None), None)
        if first is None:
            if len(self.files) == 1:
                raise SourceError(f"cannot read image {path}",
                                  hint="check that it is a valid image")
            raise SourceError(f"none of the {len(self.files)} images in {path} can be read",
                              hint="check that they are valid image files")
        height, width = first.shape[:2]
        fps = float(self.options.image_fps)
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frame_count=self._limited(len(self.files)),
            time_base=1 / Fraction(fps).limit_denominator(1001),
            is_live=False,
            uri=uri,
        )

    def _read(self, path: Path) -> np.ndarray | None:
        cv2 = self._cv2
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _frames(self) -> Iterator[Frame]:
        tb = self.info.time_base
        pacer = Pacer(self._stop) if self.options.realtime else None
        index = 0
        for number, path in enumerate(self.files):
            if self._stop.is_set():
                return
            image = self._read(path)
            if image is None:
                self.stats.decode_errors += 1
                log.warning("skipping unreadable image %s", path)
                continue
            self.stats.frames_decoded += 1
            timestamp = float(number * tb) if tb else number / self.info.fps
            if pacer is not None:
                pacer.wait(timestamp)
            yield Frame(index, image, timestamp, time.monotonic(), number, tb, name=path.stem)
            index += 1
