"""The CPU work of ``POST /api/parse``, run off the event loop: a parse job (on a
:class:`~streamer.serve.pool.ParsePool` thread) and a render job (on the encode pool).

Example:
    >>> entry = pool.try_submit(lambda photo: parse_job(photo, data, max_pixels)).result()
    >>> png = render_job(data, entry, "png", OverlayStyle(), max_pixels)
"""

from __future__ import annotations

import time

import numpy as np

from streamer.serve.codec import pack, summarize, unpack
from streamer.serve.images import decode_image, encode_png
from streamer.serve.pool import PhotoParser
from streamer.vision.render import OverlayStyle, Renderer


def parse_job(photo: PhotoParser, data: bytes, max_pixels: int) -> bytes:
    """The cache entry (see :func:`~streamer.serve.codec.pack`) for an image's bytes."""
    image = decode_image(data, max_pixels)
    started = time.perf_counter()
    result, parse_s = photo.parse_timed(image)
    waited_s = max(0.0, time.perf_counter() - started - parse_s)
    meta = summarize(result, image.shape[1], image.shape[0])
    meta["parse_ms"] = round(parse_s * 1000.0, 1)
    meta["wait_ms"] = round(waited_s * 1000.0, 1)  # for the shared model's turn
    meta["engine"] = photo.parser.options.engine
    meta["model"] = photo.parser.model_dir.name
    return pack(result, meta)


def render_job(data: bytes, entry: bytes, fmt: str, style: OverlayStyle,
               max_pixels: int) -> bytes:
    """The overlay (``fmt`` png) or the label map (``labels``) of a cache entry, as PNG."""
    result, _ = unpack(entry)
    if fmt == "labels":
        return encode_png(np.ascontiguousarray(result.labels, dtype=np.uint8))
    image = decode_image(data, max_pixels)
    return encode_png(Renderer(style).render(image, result))
