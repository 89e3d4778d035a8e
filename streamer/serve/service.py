"""``run_stream.py serve``: REST API, live MJPEG, Prometheus metrics and a web page.

Framework: **FastAPI on uvicorn** (one process, asyncio), not Flask behind gunicorn.

* Everything worth serving is in-process state: the loaded model in a pool of parse workers,
  the running :class:`~streamer.pipeline.Pipeline` threads and the latest frame of each
  stream. gunicorn's pre-fork workers would each load their own model and only see the streams
  they started themselves; with one worker they would need a thread per connection.
* MJPEG to slow viewers: a viewer here is a coroutine that sleeps on a future which the
  pipeline's thread resolves with ``call_soon_threadsafe`` when a new frame is published; that
  costs the pipeline one list swap, never a wait. A viewer that reads slowly is paused by
  uvicorn's flow control (its write buffer's high-water mark) and, when it drains, jumps
  straight to the newest frame: nothing is queued per viewer beyond one JPEG and the socket
  buffers. Under a sync WSGI server every viewer would pin a worker thread for as long as it
  watches.
* CPU work (decoding, parsing, rendering, encoding) runs in bounded thread pools, never on the
  event loop. FastAPI also writes the OpenAPI spec (``/openapi.json``, ``/docs``) from the
  handlers.

Endpoints:

=========================================  ================================================
``POST /api/parse[?format=json|png|labels]``  an image (multipart field ``image`` or the raw
                                               body) -> JSON persons, boxes, scores, pixels
                                               per class; or the overlay / label-map PNG
``GET /api/classes``                           class ids, names and palette colours
``GET /api/streams``                           the streams and their state
``POST /api/streams``                          ``{"source": URL, "config": {...}}`` starts one
``GET /api/streams/{id}``                      one stream
``DELETE /api/streams/{id}``                   stops it and returns its final summary
``GET /api/streams/{id}/mjpeg[?fps=N]``        the annotated stream, live
``GET /api/streams/{id}/frame.jpg``            its latest annotated frame
``GET /api/streams/{id}/metrics``              the CLI's summary (``RunMetrics.summary()``)
``GET /metrics``                               Prometheus text: fps, latency, drops, ...
``GET /healthz``                               liveness and model readiness
``GET /``                                      the web page (``streamer/web``)
=========================================  ================================================

Limits: uploads over ``serve.max_upload_mb`` get 413 (from ``Content-Length`` before reading,
or as soon as a chunked body passes it); images whose header declares more than
``serve.max_pixels`` pixels get 413 before any pixel is decoded; bodies that are not an image
get 415, broken ones 400, and images with a side under 8 px or a shape past 20:1 (a 1x40000
strip) 422. An unexpected failure answers 500 with the same ``{"error": ...}`` shape. At
most ``serve.workers`` parses run at once (default: one per core) and ``serve.queue`` more
wait; past that the answer is 503 with ``Retry-After``. With
``serve.token`` (or ``$STREAMER_TOKEN``) set, POST and DELETE need ``Authorization: Bearer``.

Stream sources from a request: URLs of :data:`STREAM_URL_SCHEMES`, or, with
``serve.media_root`` set, files below it (resolved, symlinks too; every failure to open one gets
the same answer). The server's own ``serve.streams`` and ``source.uri`` may open anything.

Parse results are cached under the SHA-256 of the image bytes plus the model's checkpoint
digest and the parser and detector settings: in an LRU bounded by ``serve.cache_mb`` in this
process, or in Redis when ``serve.redis_url`` is set. Identical uploads arriving together are
parsed once.

Configuration: the ``serve:`` section of ``--config`` and ``--set serve.key=value``
(:class:`ServeConfig`); every other section is the pipeline's.

Example:
    $ python run_stream.py serve --model DIR --set parser.engine=torch
    streamer: serving on http://127.0.0.1:8080 (web page /, API /docs, metrics /metrics)
    $ curl -F image=@photo.jpg http://127.0.0.1:8080/api/parse
    $ curl -o overlay.png --data-binary @photo.jpg 'http://127.0.0.1:8080/api/parse?format=png'
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import math
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamer.apps.common import SignalStop, yaml_quote
from streamer.config import (
    Config,
    build_section,
    config_from_dict,
    merge,
    parse_override,
    read_yaml,
)
from streamer.core.errors import ConfigError, ModelError, StreamerError
from streamer.core.heap import return_large_buffers
from streamer.core.metrics import percentiles
from streamer.core.types import Box, ParseResult, Person
from streamer.io.sources import LIVE_SCHEMES, redact_url
from streamer.m2fp.checkpoint import CHECKPOINT_FILE
from streamer.parsing.engines import file_digest
from streamer.parsing.parser import HumanParser, ParserOptions
from streamer.parsing.photo import parse_image, photo_detector
from streamer.pipeline import Parsed, Pipeline
from streamer.vision.detect import (
    Detector,
    DetectorOptions,
)
from streamer.vision.render import PALETTE, PERSON_ONLY, OverlayStyle, Renderer, class_name

__all__ = [
    "BackgroundServer",
    "LatestFrame",
    "MemoryCache",
    "ParsePool",
    "RedisCache",
    "ServeConfig",
    "Service",
    "StreamHandle",
    "create_app",
    "load_settings",
    "main",
]

log = logging.getLogger("streamer.serve")

WEB_DIR = Path(__file__).resolve().parent / "web"
#: Formats accepted by POST /api/parse (what Pillow reports as ``Image.format``).
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
#: The smallest side and the most elongated shape POST /api/parse accepts: below 8 px nobody
#: can be parsed, and past 20:1 (a 1x40000 strip) the detector's downscale rounds a side to 0.
MIN_IMAGE_SIDE = 8
MAX_ASPECT_RATIO = 20
#: Body limit for everything but uploads (JSON requests).
SMALL_BODY = 1 << 20
#: Room for the multipart envelope around an upload of the maximum size.
MULTIPART_SLACK = 64 << 10
#: Cache entries are tagged with this, so a change of layout never reads old entries.
CACHE_VERSION = "parse-v1"
STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
#: What a client may override when it starts a stream; outputs and model paths stay the
#: server's (a request must not make the server write files or load other weights).
STREAM_OVERRIDABLE: dict[str, frozenset[str] | None] = {
    "source": frozenset({"transport", "open_timeout_s", "read_timeout_s", "reconnect_base_s",
                         "reconnect_cap_s", "reconnect_max_attempts", "image_fps", "realtime"}),
    "buffer": None,
    "detector": None,
    "parser": frozenset({"engine", "threads", "batch_size"}),
    "parse": None,
    "render": None,
    "output": frozenset({"frames"}),
}
BOUNDARY = "frame"
#: URL schemes a caller may give as a stream source (FFmpeg knows many more, file:// among them).
STREAM_URL_SCHEMES = LIVE_SCHEMES | {"http", "https"}


# --------------------------------------------------------------------------- configuration
@dataclass
class ServeConfig:
    """The ``serve:`` section: where to listen and the service's limits.

    Example:
        >>> config, serve = load_settings(None, ["serve.queue=4", "parser.engine=torch"])
        >>> serve.queue, serve.host
        (4, '127.0.0.1')
    """

    host: str = "127.0.0.1"          # --host opens it beyond this machine
    port: int = 8080
    token: str | None = None         # bearer token for POST/DELETE; else $STREAMER_TOKEN
    max_upload_mb: float = 20.0      # larger uploads get 413
    max_pixels: int = 50_000_000     # images declaring more pixels get 413, before decoding
    workers: int = 0                 # parses at once; 0 = one per core
    queue: int = 8                   # parses waiting beyond the workers; more get 503
    cache_mb: float = 128.0          # in-process LRU of parse results
    redis_url: str | None = None     # redis://127.0.0.1:6379/0 shares the cache instead
    cache_ttl_s: int = 86_400        # Redis entries expire after this
    max_streams: int = 4             # streams running at once
    max_viewers: int = 32            # MJPEG viewers per stream
    max_connections: int = 256       # open connections; more get 503 from uvicorn
    jpeg_quality: int = 80           # MJPEG frames
    mjpeg_sndbuf_kb: int = 256       # kernel send buffer of an MJPEG connection (0: the OS's)
    media_root: str | None = None    # callers' streams may open video files below this folder
    allow_files: bool | None = None  # deprecated: files need media_root (false: none at all)
    start_wait_s: float = 15.0       # POST /api/streams waits this long for the first frame
    streams: list[Any] = field(default_factory=list)  # started with the server: URLs or
    #                                  {source: URL, name: ID, config: {section.key: value}}

    def __post_init__(self) -> None:
        positive = ("max_upload_mb", "max_pixels", "max_streams", "max_viewers",
                    "max_connections", "cache_ttl_s", "start_wait_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve.{name} must be > 0, not {getattr(self, name)!r}")
        for name in ("workers", "queue", "cache_mb", "mjpeg_sndbuf_kb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"serve.{name} must be >= 0, not {getattr(self, name)!r}")
        if not 1 <= self.port <= 65535 and self.port != 0:
            raise ConfigError(f"serve.port must be between 1 and 65535 (or 0), not {self.port}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"serve.jpeg_quality must be between 1 and 100, not "
                              f"{self.jpeg_quality}")
        if self.token is not None and not str(self.token).strip():
            self.token = None
        if self.allow_files and self.media_root is None:
            raise ConfigError("serve.allow_files no longer opens every local path: set "
                              "serve.media_root to the folder streams may read files from")
        if self.allow_files is False and self.media_root is not None:
            raise ConfigError("serve.allow_files=false contradicts serve.media_root: drop one")
        if self.media_root is not None:
            root = Path(str(self.media_root)).expanduser()
            if not root.is_dir():
                raise ConfigError(f"serve.media_root {str(root)!r} is not an existing folder")
            self.media_root = os.path.realpath(root)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))


def load_settings(path: str | Path | None = None,
                  overrides: list[str] | None = None) -> tuple[Config, ServeConfig]:
    """The pipeline's :class:`Config` and the :class:`ServeConfig`, from one YAML file and
    ``section.key=value`` overrides (``serve.*`` ones go to the latter).

    Example:
        >>> config, serve = load_settings("configs/default.yaml", ["serve.port=9000"])
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    serve_raw = data.pop("serve", None) or {}
    if not isinstance(serve_raw, dict):
        raise ConfigError(f"config section serve must be a mapping, got {serve_raw!r}")
    for text in overrides or []:
        item = parse_override(text)
        if "serve" in item:
            serve_raw = {**serve_raw, **item["serve"]}
        else:
            data = merge(data, item)
    config = config_from_dict(data)
    settings: ServeConfig = build_section("serve", ServeConfig, serve_raw)
    if settings.token is None and os.environ.get("STREAMER_TOKEN", "").strip():
        settings.token = os.environ["STREAMER_TOKEN"].strip()
    return config, settings


def stream_config(base: Config, raw: dict[str, Any] | None) -> Config:
    """``base`` with a client's overrides (``{"detector.every": 3}`` or ``{"detector":
    {"every": 3}}``), validated like ``--set``; outputs are always off for a served stream."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in (raw or {}).items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        elif isinstance(value, dict):
            nested.setdefault(key, {}).update(value)
        else:
            raise ConfigError(f"override {key!r} must be section.key or a section mapping")
    for section, values in nested.items():
        if section not in STREAM_OVERRIDABLE:
            raise ConfigError(f"config section {section} cannot be set for a stream (allowed: "
                              f"{', '.join(STREAM_OVERRIDABLE)})")
        allowed = STREAM_OVERRIDABLE[section]
        for name in values:
            if allowed is not None and name not in allowed:
                raise ConfigError(f"config key {section}.{name} cannot be set for a stream "
                                  f"(allowed in {section}: {', '.join(sorted(allowed))})")
    config = config_from_dict(merge(base.to_dict(), nested))
    config.output = dataclasses.replace(
        config.output, path=None, show=False, labels_dir=None, stats_jsonl=None, metrics=None,
        progress=False)
    return config


# --------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An answer other than 200 with a one-line reason: ``{"error": reason}``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def _error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


# --------------------------------------------------------------------------- images
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
    short, long = min(width, height), max(width, height)
    if short < MIN_IMAGE_SIDE or long > MAX_ASPECT_RATIO * short:
        raise ApiError(422, f"the image is {width}x{height} pixels: its shorter side must be at "
                            f"least {MIN_IMAGE_SIDE} px and its longer side at most "
                            f"{MAX_ASPECT_RATIO} times the shorter; crop or pad it")
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


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def color_hex(class_id: int) -> str:
    r, g, b = (int(c) for c in PALETTE[class_id])
    return f"#{r:02x}{g:02x}{b:02x}"


# --------------------------------------------------------------------------- parse results
def summarize(result: ParseResult, width: int, height: int) -> dict[str, Any]:
    """The JSON answer of a parse: persons with boxes, scores and pixels per class."""
    classes = tuple(result.classes)
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8).ravel()
    counts = np.bincount(labels, minlength=256)
    persons: list[dict[str, Any]] = []
    per_person: np.ndarray | None = None
    if result.instances is not None and result.persons:
        inst = np.asarray(result.instances).ravel().astype(np.int64)
        top = max(int(inst.max(initial=0)), max(p.id for p in result.persons)) + 1
        per_person = np.bincount(inst * 256 + labels, minlength=top * 256).reshape(top, 256)
    for p in result.persons:
        row = per_person[p.id] if per_person is not None else np.zeros(256, np.int64)
        persons.append({
            "id": int(p.id),
            "score": round(float(p.score), 4),
            "box": [int(p.box.x0), int(p.box.y0), int(p.box.x1), int(p.box.y1)],
            "pixels": int(row[1:].sum()),
            "classes": {class_name(int(k), classes): int(row[k])
                        for k in np.flatnonzero(row) if k != 0},
        })
    return {
        "width": int(width),
        "height": int(height),
        "persons": persons,
        "classes": {class_name(int(k), classes): int(counts[k]) for k in np.flatnonzero(counts)},
        "class_ids": {class_name(int(k), classes): int(k) for k in np.flatnonzero(counts)},
        "class_names": list(classes),
    }


def pack(result: ParseResult, meta: dict[str, Any]) -> bytes:
    """A cache entry: label and person maps (compressed) and the JSON answer."""
    arrays: dict[str, np.ndarray] = {
        "labels": np.ascontiguousarray(result.labels, dtype=np.uint8),
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
    }
    if result.instances is not None:
        arrays["instances"] = np.ascontiguousarray(result.instances)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def unpack_meta(entry: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(entry), allow_pickle=False) as z:
        return dict(json.loads(z["meta"].tobytes()))


def unpack(entry: bytes) -> tuple[ParseResult, dict[str, Any]]:
    with np.load(io.BytesIO(entry), allow_pickle=False) as z:
        meta = dict(json.loads(z["meta"].tobytes()))
        labels = z["labels"]
        instances = z["instances"] if "instances" in z.files else None
    persons = [Person(p["id"], p["score"], Box(*p["box"])) for p in meta["persons"]]
    return ParseResult(labels, tuple(meta["class_names"]), instances, persons), meta


# --------------------------------------------------------------------------- caches
class MemoryCache:
    """An LRU of cache entries bounded by their total size in bytes."""

    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
                self.evictions += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "entries": len(self._items), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "evictions": self.evictions}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisCache:
    """Entries in Redis under ``streamer:parse:<key>`` with a TTL; a Redis failure is a miss."""

    kind = "redis"
    prefix = "streamer:parse:"

    def __init__(self, url: str, ttl_s: int) -> None:
        import redis.asyncio as aioredis

        self.url = redact_url(url)
        self.ttl_s = int(ttl_s)
        self.client = aioredis.Redis.from_url(url, socket_timeout=2.0,
                                              socket_connect_timeout=2.0)
        self.errors = 0

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(self.prefix + key)
        except Exception as exc:
            self._failed("read", exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self.client.set(self.prefix + key, value, ex=self.ttl_s)
        except Exception as exc:
            self._failed("write", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        log.warning("redis cache %s failed at %s: %s", what, self.url, exc)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "errors": self.errors,
                "ttl_s": self.ttl_s}

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


# --------------------------------------------------------------------------- parse pool
@dataclass
class ParseWorker:
    """What one pool thread owns: its parser and detector (neither is thread-safe)."""

    parser: HumanParser
    detector: Detector | None
    detector_options: DetectorOptions

    def parse(self, image: np.ndarray) -> ParseResult:
        return parse_image(image, self.parser, self.detector, self.detector_options)


class ParsePool:
    """``workers`` threads, each with its own parser, and an admission limit.

    :meth:`try_submit` admits a job while fewer than ``workers + queue`` are admitted and
    answers ``None`` otherwise (the caller then sends 503): the wait for a worker is bounded by
    the queue, never by how many clients there are.
    """

    def __init__(self, parser: ParserOptions, detector: DetectorOptions, workers: int,
                 queue_limit: int) -> None:
        cores = os.cpu_count() or 1
        self.workers = max(1, workers or cores)
        self.capacity = self.workers + max(0, queue_limit)
        threads = parser.threads or max(1, cores // self.workers)
        self.parser_options = dataclasses.replace(parser, threads=threads)
        self.detector_options = detector
        self.ready: cf.Future[str] = cf.Future()  # the model's cache key, or the load error
        self._jobs: queue.SimpleQueue[tuple[Callable[[ParseWorker], Any], cf.Future[Any]]
                                      | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._busy = 0
        self._threads: list[threading.Thread] = []
        self.durations: collections.deque[float] = collections.deque(maxlen=256)
        self.duration_sum = 0.0  # every job since start (the summary's _sum and _count)
        self.duration_count = 0
        self.classes: tuple[str, ...] = ()

    def start(self) -> None:
        if self._threads:
            return
        for i in range(self.workers):
            thread = threading.Thread(target=self._loop, args=(i,), name=f"streamer-parse-{i}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _model_key(self, parser: HumanParser) -> str:
        checkpoint = parser.model_dir / CHECKPOINT_FILE
        digest = file_digest(checkpoint) if checkpoint.is_file() else str(parser.model_dir)
        opts = dataclasses.asdict(self.parser_options)
        settings = {
            "engine": opts["engine"],
            "precision": opts["precision"],  # bf16 and int8 label maps differ from fp32
            "detector": dataclasses.asdict(self.detector_options),
            "model": digest,
            "version": CACHE_VERSION,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]

    def _load(self) -> ParseWorker:
        parser = HumanParser(self.parser_options)
        parser.warm_up()
        detector = photo_detector(parser, self.detector_options)
        worker = ParseWorker(parser, detector, self.detector_options)
        with self._lock:
            if not self.ready.done():
                self.classes = tuple(parser.classes)
                self.ready.set_result(self._model_key(parser))
        return worker

    def _loop(self, index: int) -> None:
        worker: ParseWorker | None = None
        error: BaseException | None = None
        try:
            worker = self._load()
        except BaseException as exc:
            error = exc
            log.error("parse worker %d could not load the model: %s", index, exc)
            with self._lock:
                if not self.ready.done():
                    self.ready.set_exception(exc)
        while (job := self._jobs.get()) is not None:
            fn, future = job
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                if worker is None:
                    future.set_exception(ModelError(f"the model could not be loaded: {error}"))
                    continue
                with self._lock:
                    self._busy += 1
                started = time.perf_counter()
                try:
                    future.set_result(fn(worker))
                except BaseException as exc:
                    future.set_exception(exc)
                finally:
                    took = time.perf_counter() - started
                    self.durations.append(took)
                    with self._lock:
                        self._busy -= 1
                        self.duration_sum += took
                        self.duration_count += 1
            finally:
                with self._lock:
                    self._admitted -= 1

    def try_submit(self, fn: Callable[[ParseWorker], Any]) -> cf.Future[Any] | None:
        with self._lock:
            if self._admitted >= self.capacity:
                return None
            self._admitted += 1
        future: cf.Future[Any] = cf.Future()
        self._jobs.put((fn, future))
        return future

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"workers": self.workers, "busy": self._busy,
                    "queued": self._admitted - self._busy, "capacity": self.capacity}

    def duration_totals(self) -> tuple[float, int]:
        """Seconds spent in jobs and jobs run, since start."""
        with self._lock:
            return self.duration_sum, self.duration_count

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead of it at the recent pace."""
        mean = sum(self.durations) / len(self.durations) if self.durations else 1.0
        with self._lock:
            ahead = self._admitted
        return int(min(120, max(1, math.ceil(mean * (ahead + 1) / self.workers))))

    def close(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- live frames
class LatestFrame:
    """The newest output of a stream, for any number of viewers.

    The pipeline's thread calls :meth:`publish` for every output frame: it stores a reference
    and wakes waiting viewers, nothing more, so viewers can never slow it down. A viewer awaits
    :meth:`wait_newer` and then asks for :meth:`jpeg`, which renders and encodes the newest
    frame once per version however many viewers ask.
    """

    def __init__(self, renderer: Renderer, quality: int, metrics: Any | None = None) -> None:
        self.renderer = renderer
        self.quality = quality
        self.metrics = metrics
        self.version = 0
        self.closed = False
        self._item: Parsed | None = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._jpeg: tuple[int, int, float, bytes] | None = None

    def publish(self, item: Parsed) -> None:
        with self._lock:
            self._item = item
            self.version += 1
            waiters, self._waiters = self._waiters, []
        self._wake(waiters)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            waiters, self._waiters = self._waiters, []
        self._wake(waiters)

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_newer(self, seen: int, timeout: float) -> int | None:
        """The current version once it is newer than ``seen`` (or the stream closed);
        ``None`` after ``timeout`` seconds without one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.version > seen or self.closed:
                return self.version
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            return None
        return self.version

    def jpeg(self) -> tuple[int, int, float, bytes] | None:
        """``(version, frame index, timestamp, JPEG)`` of the newest frame, or ``None``."""
        with self._encode_lock:
            with self._lock:
                item, version = self._item, self.version
            if item is None:
                return None
            if self._jpeg is not None and self._jpeg[0] == version:
                return self._jpeg
            started = time.perf_counter()
            image = (self.renderer.render(item.frame.image, item.result)
                     if item.result is not None else item.frame.image)
            rendered = time.perf_counter()
            data = _jpeg(image, self.quality)
            if self.metrics is not None:
                self.metrics.add_stage("render", rendered - started)
                self.metrics.add_stage("encode", time.perf_counter() - rendered)
            self._jpeg = (version, item.frame.index, item.frame.timestamp, data)
            return self._jpeg


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StreamHandle:
    """One served stream: a :class:`Pipeline` iterated in its own thread."""

    def __init__(self, sid: str, source: str, config: Config, overrides: dict[str, Any],
                 jpeg_quality: int, opened: str | None = None,
                 failure: str | None = None) -> None:
        """``source`` as the caller named it; ``opened`` what is read (a resolved path);
        ``failure`` the error text shown for any failure, in place of the real one."""
        self.id = sid
        self.source = source
        self.config = config
        self.overrides = overrides
        self.failure = failure
        self.pipeline = Pipeline(config, opened or source)
        self.slot = LatestFrame(Renderer(config.render), jpeg_quality, self.pipeline.metrics)
        self.state = "starting"
        self.error: str | None = None
        self.created = time.time()
        self.viewers = 0
        self.first_frame = threading.Event()
        self.size: tuple[int, int] | None = None
        self.latency_sum_s = 0.0  # capture to published, every frame (the summary's _sum)
        self._stop_requested = False
        self._thread = threading.Thread(target=self._run, name=f"streamer-stream-{sid}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self.pipeline.items():
                if self.state == "starting":
                    self.size = (item.frame.width, item.frame.height)
                    self.state = "running"
                    self.first_frame.set()
                self.pipeline.metrics.add_output(item.frame.capture_time)
                self.latency_sum_s += time.monotonic() - item.frame.capture_time
                self.slot.publish(item)
            self.state = "stopped" if self._stop_requested else "finished"
        except StreamerError as exc:
            if self.failure is not None:
                log.info("stream %s failed: %s", self.id, exc)
            self.state, self.error = "failed", self.failure or str(exc)
        except Exception as exc:
            log.exception("stream %s failed", self.id)
            self.state, self.error = "failed", self.failure or f"{type(exc).__name__}: {exc}"
        finally:
            self.slot.close()
            self.first_frame.set()

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    def stop(self, timeout: float = 15.0) -> None:
        self._stop_requested = True
        self.pipeline.stop()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.warning("stream %s did not stop within %.0f s", self.id, timeout)

    def summary(self) -> dict[str, Any]:
        """The CLI's summary, with the live counters filled in while the stream runs."""
        return self.pipeline.live_summary()

    def info(self) -> dict[str, Any]:
        policy = self.pipeline.policy
        return {
            "id": self.id,
            "source": redact_url(self.source),
            "state": self.state,
            "error": self.error,
            "policy": policy.value if policy is not None else None,
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "viewers": self.viewers,
            "created": round(self.created, 3),
            "config": self.overrides,
            "current_fps": round(self.pipeline.metrics.current_fps(), 3),
            "mjpeg": f"/api/streams/{self.id}/mjpeg",
            "metrics": f"/api/streams/{self.id}/metrics",
        }


# --------------------------------------------------------------------------- the service
class Service:
    """Everything the app serves: parse pool, cache, streams and counters."""

    def __init__(self, config: Config, settings: ServeConfig) -> None:
        self.config = config
        self.settings = settings
        self.token = settings.token
        self.pool = ParsePool(config.parser, config.detector, settings.workers, settings.queue)
        self.cache: MemoryCache | RedisCache = (
            RedisCache(settings.redis_url, settings.cache_ttl_s) if settings.redis_url
            else MemoryCache(int(settings.cache_mb * (1 << 20))))
        self.encode_pool = cf.ThreadPoolExecutor(max_workers=2,
                                                 thread_name_prefix="streamer-encode")
        self.streams: dict[str, StreamHandle] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.responses: collections.Counter[int] = collections.Counter()
        self.started = time.time()
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # cache writes in flight
        self._streams_lock = threading.Lock()
        self._closing = False

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.pool.start()

    def start_configured_streams(self) -> None:
        specs: list[Any] = list(self.settings.streams)
        if self.config.source.uri:
            specs.insert(0, {"source": str(self.config.source.uri), "name": "default"})
        for spec in specs:
            if isinstance(spec, str):
                spec = {"source": spec}
            if not isinstance(spec, dict) or "source" not in spec:
                log.error("serve.streams entry %r needs a source", spec)
                continue
            try:
                self.add_stream(str(spec["source"]), spec.get("name"), spec.get("config"),
                                trusted=True)
            except (ApiError, ConfigError) as exc:
                log.error("cannot start configured stream %s: %s",
                          redact_url(str(spec["source"])), exc)

    def close_viewers(self) -> None:
        """End every MJPEG response (the pipelines go on); called first on shutdown."""
        self._closing = True
        for handle in list(self.streams.values()):
            handle.slot.close()

    def close(self) -> None:
        self.close_viewers()
        for handle in list(self.streams.values()):
            handle.stop(timeout=10)
        self.pool.close()
        self.encode_pool.shutdown(wait=False, cancel_futures=True)

    async def model_key(self, timeout: float = 30.0) -> str:
        """The model part of cache keys, once the first worker has loaded the model."""
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.pool.ready)),
                                          timeout)
        except asyncio.TimeoutError:
            raise ApiError(503, "the model is still loading; retry shortly",
                           {"Retry-After": "5"}) from None
        except Exception as exc:
            raise ApiError(503, f"the model could not be loaded: {exc}") from None

    # ------------------------------------------------------------- parsing
    async def parse_entry(self, data: bytes, digest: str) -> tuple[bytes, str]:
        """The cache entry for an image and whether it was a ``hit``, ``miss`` or ``shared``
        (an identical upload was already being parsed)."""
        model_key = await self.model_key()
        key = hashlib.sha256(f"{digest}|{model_key}".encode()).hexdigest()
        cached = await self.cache.get(key)
        if cached is not None:
            self.counters["cache_hits"] += 1
            return cached, "hit"
        pending = self._inflight.get(key)
        if pending is not None:
            self.counters["cache_shared"] += 1
            return await asyncio.shield(pending), "shared"
        max_pixels = self.settings.max_pixels
        future = self.pool.try_submit(lambda worker: _parse_job(worker, data, max_pixels))
        if future is None:
            self.counters["rejected"] += 1
            stats = self.pool.stats()
            raise ApiError(
                503, f"server busy: {stats['busy']} parse(s) running and {stats['queued']} "
                f"waiting (serve.workers={self.pool.workers}, serve.queue="
                f"{self.settings.queue}); retry later",
                {"Retry-After": str(self.pool.retry_after())})
        self.counters["cache_misses"] += 1
        wrapped = asyncio.wrap_future(future)
        self._inflight[key] = wrapped
        # Stored even if the client that asked has gone away; others may be waiting on it.
        wrapped.add_done_callback(lambda done: self._finish(key, done))
        return await asyncio.shield(wrapped), "miss"

    def _finish(self, key: str, done: asyncio.Future[bytes]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            task = asyncio.ensure_future(self.cache.put(key, done.result()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def render(self, data: bytes, entry: bytes, fmt: str, boxes: bool) -> bytes:
        style = self.config.render
        if boxes:
            style = dataclasses.replace(style, boxes=True)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.encode_pool, _render_job, data, entry, fmt, style, self.settings.max_pixels)

    # ------------------------------------------------------------- streams
    def get_stream(self, sid: str) -> StreamHandle:
        handle = self.streams.get(sid)
        if handle is None:
            raise ApiError(404, f"no stream {sid!r}")
        return handle

    def add_stream(self, source: str, name: str | None, overrides: dict[str, Any] | None,
                   trusted: bool = False) -> StreamHandle:
        """Starts a stream. A caller's source (``trusted`` false) is a stream URL or a file
        below ``serve.media_root``; the server's own configuration may open anything."""
        source = source.strip()
        if not source:
            raise ApiError(400, "source must not be empty")
        opened, failure = source, None
        if not trusted:
            opened, failure = self._confined(source)
        if name is not None and not STREAM_NAME.match(name):
            raise ApiError(400, "name must be 1-40 letters, digits, '-' or '_'")
        try:
            config = stream_config(self.config, overrides)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        with self._streams_lock:
            active = sum(1 for h in self.streams.values() if h.active)
            if active >= self.settings.max_streams:
                raise ApiError(429, f"{active} streams are running, the limit "
                                    f"(serve.max_streams); stop one first")
            sid = name or uuid.uuid4().hex[:8]
            if sid in self.streams:
                raise ApiError(409, f"a stream named {sid!r} exists; delete it first")
            self._forget_old_streams()
            handle = StreamHandle(sid, source, config, dict(overrides or {}),
                                  self.settings.jpeg_quality, opened=opened, failure=failure)
            self.streams[sid] = handle
        handle.start()
        return handle

    def _confined(self, source: str) -> tuple[str, str | None]:
        """What to open for a caller's ``source``, and the one text any failure to open a
        local file gets (``None`` for URLs).

        Missing, unreadable, not a video, or outside the root (symlinks resolved): all get
        the same answer, so that a caller learns nothing about files it may not read.
        """
        root = self.settings.media_root
        if source.isdigit() or source.startswith("/dev/"):
            raise ApiError(400, "webcams and devices are opened only from the server's own "
                                "configuration (serve.streams), not by a request")
        scheme = urlsplit(source).scheme.lower() if "://" in source else ""
        if scheme:
            if scheme not in STREAM_URL_SCHEMES:
                raise ApiError(400, f"{scheme}:// sources are not opened by this server (send "
                                    f"{', '.join(sorted(STREAM_URL_SCHEMES))} URLs"
                                    + (", or a path below serve.media_root)" if root else ")"))
            return source, None
        if root is None:
            raise ApiError(400, "this server opens no local files, only stream URLs (its "
                                "operator can allow files below a folder with "
                                "serve.media_root)")
        failure = f"no readable video at {source!r} below serve.media_root"
        real = os.path.realpath(os.path.join(root, source))
        inside = os.path.commonpath([root, real]) == root and real != root
        if not inside or not os.path.isfile(real) or not os.access(real, os.R_OK):
            raise ApiError(422, f"cannot start the stream: {failure}")
        return real, failure

    def _forget_old_streams(self) -> None:
        ended = [h for h in self.streams.values() if not h.active]
        for handle in sorted(ended, key=lambda h: h.created)[:max(0, len(ended) - 16)]:
            self.streams.pop(handle.id, None)

    async def remove_stream(self, sid: str) -> dict[str, Any]:
        handle = self.get_stream(sid)
        await asyncio.to_thread(handle.stop)
        with self._streams_lock:
            self.streams.pop(sid, None)
        return {**handle.info(), "summary": handle.summary()}

    async def mjpeg(self, handle: StreamHandle, max_fps: float | None) -> AsyncIterator[bytes]:
        """multipart/x-mixed-replace parts, each the newest frame when the viewer is ready."""
        handle.viewers += 1
        loop = asyncio.get_running_loop()
        interval = 1.0 / max_fps if max_fps else 0.0
        seen = 0
        try:
            while not self._closing:
                version = await handle.slot.wait_newer(seen, timeout=5.0)
                if version is None:
                    if not handle.active:
                        break
                    continue
                if version == seen:  # closed, nothing new
                    break
                seen = version
                frame = await loop.run_in_executor(self.encode_pool, handle.slot.jpeg)
                if frame is None:
                    continue
                _, index, timestamp, data = frame
                head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(data)}\r\nX-Frame-Index: {index}\r\n"
                        f"X-Timestamp: {timestamp:.6f}\r\n\r\n").encode()
                yield head + data + b"\r\n"
                if interval:
                    await asyncio.sleep(interval)
        finally:
            handle.viewers -= 1

    # ------------------------------------------------------------- metrics
    def prometheus(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str,
                   samples: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")

        def summary(name: str, help_text: str,
                    rows: list[tuple[dict[str, str], dict[str, float], float, int]]) -> None:
            """A Prometheus summary: p50/p95 (milliseconds in) as quantiles, _sum, _count."""
            samples: list[tuple[str, dict[str, str], float]] = []
            for labels, ms, total, count in rows:
                samples += [(name, {**labels, "quantile": q}, ms[p] / 1000.0)
                            for q, p in (("0.5", "p50"), ("0.95", "p95"))]
                samples += [(f"{name}_sum", labels, total), (f"{name}_count", labels, count)]
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} summary")
            for sample, labels, value in samples:
                text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                lines.append(f"{sample}{{{text}}} {_num(value)}" if text
                             else f"{sample} {_num(value)}")

        handles = list(self.streams.values())
        summaries = {h.id: h.summary() for h in handles}
        per = [({"stream": h.id}, h) for h in handles]
        metric("streamer_stream_info", "gauge", "Served streams (value 1) with source and state.",
               [({"stream": h.id, "source": redact_url(h.source), "state": h.state}, 1)
                for h in handles])
        metric("streamer_stream_running", "gauge", "1 while the stream runs.",
               [(lab, 1.0 if h.active else 0.0) for lab, h in per])
        metric("streamer_stream_fps", "gauge", "Output frames per second over the last frames.",
               [(lab, h.pipeline.metrics.current_fps()) for lab, h in per])
        metric("streamer_stream_fps_average", "gauge", "Output frames per second since start.",
               [(lab, summaries[h.id]["fps"]) for lab, h in per])
        summary(
            "streamer_stream_latency_seconds",
            "End-to-end latency (capture to published): quantiles over recent frames, sum and "
            "count over all.",
            [(lab, summaries[h.id]["latency_ms"], h.latency_sum_s,
              summaries[h.id]["frames_written"]) for lab, h in per])
        counters = (("frames_read", "Frames decoded."), ("frames_parsed", "Frames parsed."),
                    ("frames_written", "Frames published to viewers."),
                    ("frames_dropped", "Frames skipped to hold latency."),
                    ("reconnects", "Successful reconnections of the source."),
                    ("decode_errors", "Packets or frames that could not be decoded."))
        for key, help_text in counters:
            metric(f"streamer_stream_{key}_total", "counter", help_text,
                   [(lab, summaries[h.id][key]) for lab, h in per])
        metric("streamer_stream_viewers", "gauge", "MJPEG viewers connected.",
               [(lab, h.viewers) for lab, h in per])
        pool = self.pool.stats()
        metric("streamer_parse_workers", "gauge", "Parse worker threads.",
               [({}, pool["workers"])])
        metric("streamer_parse_busy", "gauge", "Parses running now.", [({}, pool["busy"])])
        metric("streamer_parse_queued", "gauge", "Parses waiting for a worker.",
               [({}, pool["queued"])])
        parse_sum, parse_count = self.pool.duration_totals()
        summary("streamer_parse_seconds",
                "Parse job duration: quantiles over recent jobs, sum and count over all.",
                [({}, percentiles([d * 1000.0 for d in list(self.pool.durations)]), parse_sum,
                  parse_count)])
        metric("streamer_parse_requests_total", "counter", "POST /api/parse answers by status.",
               [({"code": str(code)}, n) for code, n in sorted(self.responses.items())])
        for key, help_text in (("cache_hits", "Parses answered from the cache."),
                               ("cache_misses", "Parses computed."),
                               ("cache_shared", "Parses that joined an identical one running."),
                               ("rejected", "Parses refused with 503 (pool full).")):
            metric(f"streamer_parse_{key}_total", "counter", help_text,
                   [({}, self.counters[key])])
        rss = _rss_bytes()
        if rss is not None:
            metric("process_resident_memory_bytes", "gauge", "Resident memory of the server.",
                   [({}, rss)])
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return repr(round(value, 6))


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _parse_job(worker: ParseWorker, data: bytes, max_pixels: int) -> bytes:
    image = decode_image(data, max_pixels)
    started = time.perf_counter()
    result = worker.parser.parse(image) if worker.detector is None else worker.parse(image)
    parse_ms = (time.perf_counter() - started) * 1000.0
    meta = summarize(result, image.shape[1], image.shape[0])
    meta["parse_ms"] = round(parse_ms, 1)
    meta["engine"] = worker.parser.options.engine
    meta["model"] = worker.parser.model_dir.name
    return pack(result, meta)


def _render_job(data: bytes, entry: bytes, fmt: str, style: OverlayStyle,
                max_pixels: int) -> bytes:
    result, _ = unpack(entry)
    if fmt == "labels":
        return _png(np.ascontiguousarray(result.labels, dtype=np.uint8))
    image = decode_image(data, max_pixels)
    return _png(Renderer(style).render(image, result))


# --------------------------------------------------------------------------- HTTP layer
class BodyLimit:
    """Refuses request bodies over a per-path limit with 413, before or while reading them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], tuple[int, int]]) -> None:
        self.app = app
        self.limit_for = limit_for  # path -> (bytes allowed, limit to name in the answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, named = self.limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_error(send, 400, "Content-Length is not a number")
                return
            if declared > limit:
                await _send_error(send, 413, _too_large(named))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, _too_large(named))
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> str:
    return (f"the upload is larger than the limit of {limit / (1 << 20):g} MB "
            f"({limit} bytes, serve.max_upload_mb)")


async def _send_error(send: Send, status: int, reason: str) -> None:
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class SendBuffer:
    """Caps the kernel send buffer of MJPEG connections at ``size`` bytes.

    The OS grows a socket's send buffer up to megabytes (``net.ipv4.tcp_wmem``); for a viewer
    that stalls, that would be seconds of stale frames delivered before the live ones. With the
    cap, a stalled viewer holds at most ``size`` bytes in the kernel plus uvicorn's 64 KB write
    buffer, and then skips to the newest frame. The socket is reached through uvicorn's
    ``receive`` (its request cycle holds the transport); on another server this does nothing.
    """

    def __init__(self, app: ASGIApp, size: int) -> None:
        self.app = app
        self.size = size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.size > 0 and scope["type"] == "http" and scope["path"].endswith("/mjpeg"):
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.size)
        await self.app(scope, receive, send)


class StreamCreate(BaseModel):
    """Body of POST /api/streams."""

    source: str = Field(min_length=1,
                        description="a stream URL (rtsp, rtsps, rtmp, rtmps, srt, udp, rtp, "
                                    "http, https), or a video file below serve.media_root "
                                    "(relative to it, or absolute) when the server sets one",
                        examples=["rtsp://127.0.0.1:8554/stream"])
    name: str | None = Field(default=None, pattern=STREAM_NAME.pattern,
                             description="stream id (letters, digits, - and _); default: a "
                                         "random one")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="config overrides, as {'detector.every': 3} or {'detector': {'every': 3}}; "
                    "source (except uri), buffer, detector, parse, render, parser.engine/"
                    "threads/batch_size and output.frames may be set",
        examples=[{"source.realtime": True, "detector.type": "full"}])


class PersonOut(BaseModel):
    id: int
    score: float
    box: list[int] = Field(description="x0, y0, x1, y1 in pixels; x1 and y1 exclusive")
    pixels: int
    classes: dict[str, int] = Field(description="pixels of each class on this person")


class ParseOut(BaseModel):
    width: int
    height: int
    persons: list[PersonOut]
    classes: dict[str, int] = Field(description="pixels of each class present, background too")
    class_ids: dict[str, int]
    class_names: list[str]
    parse_ms: float
    engine: str
    model: str
    cache: str = Field(description="hit, miss, or shared (an identical upload was running)")
    sha256: str


class ErrorOut(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad request (the reason says what)"},
    401: {"model": ErrorOut, "description": "serve.token is set and the bearer token is "
                                            "missing or wrong"},
}

_bearer = HTTPBearer(auto_error=False, description="serve.token, when configured")


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = request.app.state.service.token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), str(token).encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                       {"WWW-Authenticate": 'Bearer realm="streamer"'})


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes: multipart field ``image``, or the raw body."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "the multipart body has no file field named `image`")
            data = await upload.read()
        finally:
            await form.close()
    else:
        data = await request.body()
    if len(data) > limit:
        raise ApiError(413, _too_large(limit))
    if not data:
        raise ApiError(400, "empty body: send an image (multipart field `image`, or the raw "
                            "bytes with Content-Type image/...)")
    return data


def validation_reason(errors: Sequence[Any]) -> str:
    """One line from FastAPI's validation errors: ``body.name: String should match ...``.

    Example:
        >>> validation_reason([{"loc": ("body", "source"), "msg": "Field required"}])
        'invalid request: body.source: Field required'
    """
    parts = []
    for error in list(errors)[:3]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(parts) + more


def create_app(service: Service) -> FastAPI:
    """The ASGI app over ``service`` (``app.state.service``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        await asyncio.to_thread(service.start_configured_streams)
        try:
            yield
        finally:
            await asyncio.to_thread(service.close)
            await service.cache.close()

    app = FastAPI(
        title="streamer",
        version="0.1.0",
        summary="Live human parsing (M2FP) on a CPU: photos, streams, metrics.",
        lifespan=lifespan,
    )
    app.state.service = service
    settings = service.settings
    upload_limit = settings.max_upload_bytes

    def limit_for(path: str) -> tuple[int, int]:
        if path == "/api/parse":
            return upload_limit + MULTIPART_SLACK, upload_limit
        return SMALL_BODY, SMALL_BODY

    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(SendBuffer, size=settings.mjpeg_sndbuf_kb * 1024)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc.status, exc.reason, exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # A bug, not a user mistake: the client gets the one error shape instead of a
        # plain-text 500; Starlette re-raises it afterwards, so uvicorn logs the traceback.
        return _error_response(500, f"internal error ({type(exc).__name__}); the server log "
                                    "has the details")

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        # Normal on the web (a closed tab, a lost connection): one line, no traceback; the
        # answer goes nowhere.
        client = request.client.host if request.client else "a client"
        log.info("%s disconnected during %s %s", client, request.method, request.url.path)
        return _error_response(400, "the client disconnected before the request was read")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(422, validation_reason(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error_response(exc.status_code, str(exc.detail),
                               dict(exc.headers) if exc.headers else None)

    write = [Depends(require_token)]

    def openapi() -> dict[str, Any]:
        """FastAPI's spec, with its ``{"detail": [...]}`` 422 replaced by the one error shape
        every answer has (see :func:`validation_reason`)."""
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, summary=app.summary,
                               routes=app.routes)
            for path in spec.get("paths", {}).values():
                for operation in path.values():
                    answer = operation.get("responses", {}).get("422")
                    if answer is None:
                        continue
                    answer["content"] = {"application/json": {"schema": {
                        "$ref": "#/components/schemas/ErrorOut"}}}
                    if answer.get("description") == "Validation Error":
                        answer["description"] = "the request does not match this spec (the " \
                                                "reason names the field)"
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.post(
        "/api/parse", dependencies=write, tags=["parse"],
        summary="Parse the people in one image",
        response_model=ParseOut,
        responses={
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "JSON, or with format=png the overlay, with format=labels "
                                 "the label map (one class id per pixel, grayscale PNG)"},
            **ERRORS,
            413: {"model": ErrorOut, "description": "upload over serve.max_upload_mb, or an "
                                                    "image over serve.max_pixels"},
            415: {"model": ErrorOut, "description": "the body is not an image"},
            422: {"model": ErrorOut, "description": "a side under 8 px or a shape past 20:1, "
                                                    "or a query parameter out of range"},
            503: {"model": ErrorOut, "description": "all workers busy and the queue full "
                                                    "(see Retry-After), or the model not ready"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }}},
    )
    async def parse_image(
        request: Request,
        fmt: Annotated[str, Query(alias="format", description="json, png or labels",
                                  json_schema_extra={"enum": ["json", "png", "labels"]})
                       ] = "json",
        boxes: Annotated[bool, Query(description="draw person boxes on the overlay")] = False,
    ) -> Response:
        status = 500
        try:
            if fmt not in ("json", "png", "labels"):
                raise ApiError(400, f"format must be json, png or labels, not {fmt!r}")
            data = await read_upload(request, upload_limit)
            probe_image(data, settings.max_pixels)
            digest = (hashlib.sha256(data).hexdigest() if len(data) < (1 << 20)
                      else await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()))
            entry, cache = await service.parse_entry(data, digest)
            headers = {"X-Cache": cache, "X-Image-SHA256": digest}
            if fmt == "json":
                meta = unpack_meta(entry)
                meta.update(cache=cache, sha256=digest)
                response: Response = JSONResponse(meta, headers=headers)
            else:
                body = await service.render(data, entry, fmt, boxes)
                response = Response(body, media_type="image/png", headers=headers)
            status = 200
            return response
        except ApiError as exc:
            status = exc.status
            raise
        except StarletteHTTPException as exc:
            status = exc.status_code
            raise
        except ClientDisconnect:
            status = 499  # as nginx counts a client that closed the request
            raise
        finally:
            service.responses[status] += 1

    @app.get("/api/classes", tags=["parse"], summary="Class ids, names and palette colours")
    async def classes() -> JSONResponse:
        with contextlib.suppress(ApiError):
            await service.model_key(timeout=10.0)
        names = service.pool.classes or ()
        entries = [{"id": i, "name": name, "color": color_hex(i)}
                   for i, name in enumerate(names) if i != 0]
        entries.append({"id": PERSON_ONLY, "name": class_name(PERSON_ONLY, names),
                        "color": color_hex(PERSON_ONLY)})
        return JSONResponse({"classes": entries, "alpha": service.config.render.alpha})

    @app.get("/api/streams", tags=["streams"], summary="The streams and their state")
    async def list_streams() -> JSONResponse:
        return JSONResponse({"streams": [h.info() for h in service.streams.values()]})

    @app.post(
        "/api/streams", dependencies=write, tags=["streams"], status_code=201,
        summary="Start a stream from a source URL",
        responses={**ERRORS, 202: {"description": "started, no frame yet"},
                   404: {"model": ErrorOut}, 409: {"model": ErrorOut},
                   422: {"model": ErrorOut, "description": "the source could not be opened, or "
                                                           "the body does not match this spec"},
                   429: {"model": ErrorOut, "description": "serve.max_streams are running"}},
    )
    async def create_stream(body: StreamCreate) -> JSONResponse:
        handle = await asyncio.to_thread(service.add_stream, body.source, body.name,
                                         body.config)
        deadline = time.monotonic() + settings.start_wait_s
        while not handle.first_frame.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if handle.state == "failed":
            service.streams.pop(handle.id, None)
            raise ApiError(422, f"cannot start the stream: {handle.error}")
        status = 201 if handle.state in ("running", "finished") else 202
        return JSONResponse(handle.info(), status_code=status,
                            headers={"Location": f"/api/streams/{handle.id}"})

    @app.get("/api/streams/{sid}", tags=["streams"], summary="One stream",
             responses={404: {"model": ErrorOut}})
    async def get_stream(sid: str) -> JSONResponse:
        return JSONResponse(service.get_stream(sid).info())

    @app.delete("/api/streams/{sid}", dependencies=write, tags=["streams"],
                summary="Stop a stream; returns its final summary",
                responses={**ERRORS, 404: {"model": ErrorOut}})
    async def delete_stream(sid: str) -> JSONResponse:
        return JSONResponse(await service.remove_stream(sid))

    @app.get("/api/streams/{sid}/metrics", tags=["streams"],
             summary="The run summary, as the CLI prints it (RunMetrics.summary())",
             responses={404: {"model": ErrorOut}})
    async def stream_metrics(sid: str) -> JSONResponse:
        handle = service.get_stream(sid)
        summary = handle.summary()
        summary.update(stream=handle.id, state=handle.state,
                       current_fps=round(handle.pipeline.metrics.current_fps(), 3))
        return JSONResponse(summary)

    @app.get(
        "/api/streams/{sid}/mjpeg", tags=["streams"],
        summary="Live annotated stream (multipart/x-mixed-replace JPEG)",
        response_class=StreamingResponse,
        responses={200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}},
                   404: {"model": ErrorOut},
                   503: {"model": ErrorOut, "description": "serve.max_viewers reached"}},
    )
    async def mjpeg(
        sid: str,
        fps: Annotated[float | None, Query(gt=0, le=60, description="cap frames per second "
                                                                    "for this viewer")] = None,
    ) -> StreamingResponse:
        handle = service.get_stream(sid)
        if handle.viewers >= settings.max_viewers:
            raise ApiError(503, f"stream {sid} has {handle.viewers} viewers, the limit "
                                "(serve.max_viewers)", {"Retry-After": "10"})
        return StreamingResponse(
            service.mjpeg(handle, fps),
            media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/streams/{sid}/frame.jpg", tags=["streams"],
             summary="The latest annotated frame", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorOut}})
    async def frame_jpg(sid: str) -> Response:
        handle = service.get_stream(sid)
        frame = await asyncio.get_running_loop().run_in_executor(service.encode_pool,
                                                                 handle.slot.jpeg)
        if frame is None:
            raise ApiError(404, f"stream {sid} has no frame yet")
        return Response(frame[3], media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Index": str(frame[1])})

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics",
             response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        text = await asyncio.to_thread(service.prometheus)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", tags=["service"], summary="Liveness and model readiness",
             responses={503: {"description": "the model could not be loaded"}})
    async def healthz() -> JSONResponse:
        ready = service.pool.ready
        loaded = ready.done() and ready.exception() is None
        body: dict[str, Any] = {
            "status": "ok" if loaded else "loading",
            "model_loaded": loaded,
            "parse": service.pool.stats(),
            "streams": sum(1 for h in service.streams.values() if h.active),
            "cache": {**service.cache.stats(), "reachable": await service.cache.ping()},
            "uptime_s": round(time.time() - service.started, 1),
        }
        if ready.done() and ready.exception() is not None:
            body.update(status="error", error=str(ready.exception()))
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


# --------------------------------------------------------------------------- running it
class _Server(uvicorn.Server):
    """uvicorn, ending the endless MJPEG responses first so that shutdown does not wait."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.close_viewers()
        await super().shutdown(sockets)


def _uvicorn_config(app: FastAPI, settings: ServeConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app, log_level=log_level.lower(), access_log=log_level.upper() == "DEBUG",
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=5,
        lifespan="on", server_header=False)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """The app served by uvicorn in a thread, on ``host`` and a free port (tests, benchmarks).

    Example:
        >>> config, settings = load_settings(None, ["parser.engine=torch"])
        >>> with BackgroundServer(Service(config, settings)) as server:
        ...     urllib.request.urlopen(server.url + "/healthz")
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self.service = service
        self.app = create_app(service)
        self.host = host
        self._sock = bind(host, port)
        self.port = int(self._sock.getsockname()[1])
        self._server = _Server(_uvicorn_config(self.app, service.settings, log_level), service)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="streamer-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        """Starts serving and returns once the model is loaded (its error is raised)."""
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        try:
            self.service.pool.ready.result(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_stream.py serve",
        description="Serve the parser over HTTP: REST API, live MJPEG of streams, Prometheus "
        "metrics and a web page.",
        epilog="Settings of the service are the serve section of --config (or --set "
        "serve.key=value): token, max_upload_mb, max_pixels, workers, queue, cache_mb, "
        "redis_url, max_streams, media_root (the folder requests may open video files from; "
        "none by default), ... See streamer/serve/service.py (ServeConfig).",
    )
    p.add_argument("--host", help="address to listen on (serve.host, default 127.0.0.1; "
                   "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, help="port (serve.port, default 8080; 0 picks a free "
                   "one)")
    p.add_argument("--model", help="M2FP model directory or ModelScope id (parser.model)")
    p.add_argument("--config", help="YAML config file; its serve section configures the service")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. serve.workers=1 or parser.engine=torch")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """``run_stream.py serve``: 0 on a clean stop, 1 on a run-time problem, 2 on bad
    configuration, 130 / 143 when stopped by SIGINT / SIGTERM (after a graceful shutdown)."""
    return_large_buffers()
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.host is not None:
        overrides.append(f"serve.host={yaml_quote(args.host)}")
    if args.port is not None:
        overrides.append(f"serve.port={args.port}")
    if args.model is not None:
        overrides.append(f"parser.model={yaml_quote(args.model)}")
    try:
        config, settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc})",
              file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    service = Service(config, settings)
    service.start()
    try:
        service.pool.ready.result()
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        sock.close()
        service.close()
        return 1
    if settings.token is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {settings.host} without serve.token: anyone who reaches "
              "this port can parse images and start streams", file=sys.stderr)
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"streamer: serving on http://{shown}:{port} (web page /, API /docs, metrics "
          "/metrics)", flush=True)
    server = _Server(_uvicorn_config(create_app(service), settings, args.log_level), service)
    # Records SIGINT/SIGTERM that uvicorn re-raises after its graceful shutdown.
    with SignalStop() as signals:
        server.run(sockets=[sock])
    return signals.last_code or 0


if __name__ == "__main__":
    sys.exit(main())
