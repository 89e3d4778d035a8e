"""What several benchmarks share: the CPU's name for their tables, and a clip's first frames.

The benchmarks run as scripts (``python benchmarks/x.py``), so their folder is on
``sys.path`` and they import this as ``bench_common``.

Example:
    >>> from bench_common import cpu_name, read_frames
    >>> cpu_name()
    'Intel(R) Xeon(R) Processor'
    >>> len(read_frames(Path("../shared/media/videos/sam2_juggle.mp4"), 8))
    8
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_frames(path: Path, limit: int) -> list[np.ndarray]:
    """The first ``limit`` frames of a clip, RGB ``uint8``."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= limit:
                break
    return frames
