"""How this process's C heap treats video-sized buffers.

glibc serves large allocations with ``mmap`` and gives them back on ``free``, but after freeing
one it raises that threshold to the freed size (up to 32 MB). From then on every decoded frame,
overlay and label map comes from a per-thread heap, and each thread's heap keeps what it freed.
With a decoder, a detector, a parser and an encoder thread passing 1080p frames around, that
kept about 170 MB more at peak (full pipeline, 24 frames of a 1080p clip: 1.77 GB -> 1.60 GB).

Example:
    >>> from streamer.core.heap import return_large_buffers
    >>> return_large_buffers()      # once, early in a process that runs pipelines
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger("streamer.heap")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_BYTES = 1 << 20


@functools.cache
def return_large_buffers(threshold: int = LARGE_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes or more with ``mmap`` always, so that freeing
    them returns them to the system. Fixing the threshold also stops glibc from raising it.
    False where the C library is not glibc (nothing changes there)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
    return ok
