"""glibc's heap and video-sized buffers (streamer.core.heap)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from streamer.core.heap import return_large_buffers
if sys.argv[1] == "on":
    assert return_large_buffers()
big = np.ones(16 << 20, np.uint8)  # served by mmap and freed: glibc raises its threshold
del big
frame = np.ones(6 << 20, np.uint8)  # a 1080p RGB frame
address = frame.ctypes.data
for line in open("/proc/self/maps"):
    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    if lo <= address < hi:
        print("heap" if line.rstrip().endswith("[heap]") else "mapping")
"""


def where_a_frame_lives(setting: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the mmap threshold is a glibc setting")
def test_frames_are_mapped_and_so_returned_on_free():
    # Without the setting, a frame allocated after a large free lands in the heap, where glibc
    # keeps it after free; with it, the frame is its own mapping, unmapped on free.
    assert where_a_frame_lives("off") == "heap"
    assert where_a_frame_lives("on") == "mapping"
