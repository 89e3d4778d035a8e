"""Images in and out: header checks before decoding, decoding upright, PNG and JPEG encoding.

Example:
    >>> probe_image(open("photo.jpg", "rb").read(), max_pixels=50_000_000)
    ('JPEG', 640, 480)
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from streamer.core.types import MAX_PARSE_ASPECT, MIN_PARSE_SIDE, unparseable_size
from streamer.serve.errors import ApiError
from streamer.vision.render import PALETTE

#: Formats accepted by POST /api/parse (what Pillow reports as ``Image.format``).
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})


def probe_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header alone; refuses what must not be decoded.

    Pillow reads only the header here, so a decompression bomb (a small file that declares a
    huge picture) is refused before a single pixel is allocated.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = str(im.format), im.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image refused before decoding: {exc}") from None
    except UnidentifiedImageError:
        raise ApiError(415, "the body is not an image this server reads (send JPEG, PNG, "
                            "WebP, BMP, GIF or TIFF)") from None
    except Exception as exc:  # Pillow raises many types for a broken header
        raise ApiError(400, f"the image header cannot be read: {exc}") from None
    if fmt not in IMAGE_FORMATS:
        raise ApiError(415, f"{fmt} images are not accepted (send JPEG, PNG, WebP, BMP, GIF or "
                            "TIFF)")
    if width <= 0 or height <= 0:
        raise ApiError(400, f"the image declares an empty size {width}x{height}")
    # The same limits as every other entry point (core.types): 8 px a side, 20:1.
    if unparseable_size(height, width) is not None:
        raise ApiError(422, f"the image is {width}x{height} pixels: its shorter side must be at "
                            f"least {MIN_PARSE_SIDE} px and its longer side at most "
                            f"{MAX_PARSE_ASPECT} times the shorter; crop or pad it")
    if width * height > max_pixels:
        raise ApiError(413, f"the image declares {width}x{height} = {width * height} pixels, "
                            f"over the limit of {max_pixels} (serve.max_pixels); refused "
                            "before decoding")
    return fmt, width, height


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """An RGB ``uint8`` array, upright (EXIF orientation applied); see :func:`probe_image`."""
    probe_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                upright = ImageOps.exif_transpose(im) or im
                rgb = upright.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image refused: {exc}") from None
    except Exception as exc:
        raise ApiError(400, f"the image is truncated or corrupt: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def encode_png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def color_hex(class_id: int) -> str:
    r, g, b = (int(c) for c in PALETTE[class_id])
    return f"#{r:02x}{g:02x}{b:02x}"
