"""What ``run_stream.py serve`` serves: the parse pool, the result cache, the live streams and
the counters, in one :class:`Service` that the HTTP layer (``streamer.serve.http``) reads.

Framework: **FastAPI on uvicorn** (one process, asyncio), not Flask behind gunicorn.

* Everything worth serving is in-process state: the one loaded model (a
  :class:`~streamer.parsing.scheduler.ParseScheduler` that every stream and, by default, the
  photo uploads share: :mod:`streamer.serve.model`), the running
  :class:`~streamer.pipeline.Pipeline` threads and the latest frame of each stream.
  gunicorn's pre-fork workers would each load their own model and only see the streams they
  started themselves; with one worker they would need a thread per connection.
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

Endpoints (one router module each under ``streamer/serve/http/``):

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
``GET /``                                      the web page (``streamer/serve/web``)
=========================================  ================================================

Limits: uploads over ``serve.max_upload_mb`` get 413 (from ``Content-Length`` before reading,
or as soon as a chunked body passes it); images whose header declares more than
``serve.max_pixels`` pixels get 413 before any pixel is decoded; bodies that are not an image
get 415, broken ones 400, and images with a side under 8 px or a shape past 20:1 (a 1x40000
strip) 422. An unexpected failure answers 500 with the same ``{"error": ...}`` shape. At
most ``serve.workers`` uploads are decoded and parsed at once (default: one per core) and
``serve.queue`` more wait; past that the answer is 503 with ``Retry-After``. With
``serve.photo_parser: shared`` (the default) the parses themselves take turns with the streams'
on the one model; ``separate`` gives each worker a model of its own. With
``serve.token`` (or ``$STREAMER_TOKEN``) set, POST and DELETE need ``Authorization: Bearer``.

Stream sources from a request: URLs of :data:`~streamer.serve.streams.STREAM_URL_SCHEMES`, or,
with ``serve.media_root`` set, files below it (resolved, symlinks too; every failure to open one
gets the same answer). The server's own ``serve.streams`` and ``source.uri`` may open anything.

Parse results are cached under the SHA-256 of the image bytes plus the model's checkpoint
digest and the parser and detector settings: in an LRU bounded by ``serve.cache_mb`` in this
process, or in Redis when ``serve.redis_url`` is set. Identical uploads arriving together are
parsed once.

Configuration: the ``serve:`` section of ``--config`` and ``--set serve.key=value``
(:class:`~streamer.serve.settings.ServeConfig`); every other section is the pipeline's.

Example:
    >>> config, settings = load_settings(None, ["parser.engine=torch"])
    >>> service = Service(config, settings)
    >>> service.start()                    # loads the model in the parse pool's threads
    >>> entry, cache = await service.parse_entry(data, hashlib.sha256(data).hexdigest())
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from streamer.config import Config
from streamer.core.errors import ConfigError
from streamer.io.sources import redact_url
from streamer.parsing.parser import HumanParser
from streamer.parsing.scheduler import ParseScheduler
from streamer.serve.cache import MemoryCache, ParseCache, RedisCache
from streamer.serve.errors import ApiError
from streamer.serve.jobs import parse_job, render_job
from streamer.serve.model import SharedModel
from streamer.serve.pool import ParsePool, PhotoParser
from streamer.serve.settings import ServeConfig, stream_config
from streamer.serve.streams import BOUNDARY, STREAM_NAME, STREAM_URL_SCHEMES, StreamHandle

log = logging.getLogger("streamer.serve")


class Service:
    """Everything the app serves: parse pool, cache, streams and counters."""

    def __init__(self, config: Config, settings: ServeConfig) -> None:
        self.config = config
        self.settings = settings
        self.token = settings.token
        shared = settings.photo_parser == "shared"
        # The one model of the streams (and of the photos too, unless "separate").
        self.model = SharedModel(config.parser, config.detector, photos=shared,
                                 scheduler=config.scheduler)
        self.pool = ParsePool(config.parser, config.detector, settings.workers, settings.queue,
                              load=self._shared_photo_parser if shared else None)
        self.cache: ParseCache = (
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
        if self.settings.photo_parser == "shared":
            self.model.start()
        self.pool.start()

    def _shared_photo_parser(self) -> PhotoParser:
        """What every parse pool thread gets with ``serve.photo_parser: shared``."""
        photos = self.model.photos()
        return PhotoParser(photos.parser, photos.detector, photos.detector_options,
                           scheduled=photos)

    def start_configured_streams(self) -> None:
        specs: list[str | dict[str, Any]] = list(self.settings.streams)
        if self.config.source.uri:
            specs.insert(0, {"source": str(self.config.source.uri), "name": "default"})
        for spec in specs:
            if isinstance(spec, str):
                spec = {"source": spec}
            if not isinstance(spec, dict) or "source" not in spec:
                log.error("serve.streams entry %r needs a source", spec)
                continue
            try:
                priority = float(spec.get("priority", 1.0))
            except (ValueError, TypeError):
                log.error("serve.streams entry %s: priority must be a number > 0, not %r",
                          redact_url(str(spec["source"])), spec.get("priority"))
                continue
            try:
                self.add_stream(str(spec["source"]), spec.get("name"), spec.get("config"),
                                trusted=True, priority=priority)
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
        self.model.close()
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
        future = self.pool.try_submit(lambda photo: parse_job(photo, data, max_pixels))
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
            self.encode_pool, render_job, data, entry, fmt, style, self.settings.max_pixels)

    # ------------------------------------------------------------- streams
    def get_stream(self, sid: str) -> StreamHandle:
        handle = self.streams.get(sid)
        if handle is None:
            raise ApiError(404, f"no stream {sid!r}")
        return handle

    def add_stream(self, source: str, name: str | None, overrides: dict[str, Any] | None,
                   trusted: bool = False, priority: float = 1.0) -> StreamHandle:
        """Starts a stream, as one more lane of the shared scheduler (blocks while the model
        loads). A caller's source (``trusted`` false) is a stream URL or a file below
        ``serve.media_root``; the server's own configuration may open anything."""
        source = source.strip()
        if not source:
            raise ApiError(400, "source must not be empty")
        opened, failure = source, None
        if not trusted:
            opened, failure = self._confined(source)
        if name is not None and not STREAM_NAME.match(name):
            raise ApiError(400, "name must be 1-40 letters, digits, '-' or '_'")
        if not 0 < priority <= 100:
            raise ApiError(400, f"priority must be > 0 and <= 100, not {priority}")
        try:
            config = stream_config(self.config, overrides)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        scheduler = self._scheduler()
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
                                  self.settings.jpeg_quality, opened=opened, failure=failure,
                                  scheduler=scheduler, priority=priority)
            self.streams[sid] = handle
        handle.start()
        return handle

    def model_info(self) -> dict[str, Any]:
        """The shared model: how many parsers and engines this process built, and its lanes
        (one per running stream, and the photo uploads' with ``photo_parser: shared``)."""
        return {
            "photo_parser": self.settings.photo_parser,
            "loaded": self.model.loaded,
            "parsers_built": HumanParser.built,
            "engines_built": HumanParser.engines_built,
            "lanes": self.model.stats(),
        }

    def _scheduler(self, timeout: float = 60.0) -> ParseScheduler:
        """The shared scheduler, once the model has loaded (a 503 while it cannot be had)."""
        try:
            return self.model.scheduler(timeout)
        except (TimeoutError, cf.TimeoutError):
            raise ApiError(503, "the model is still loading; retry shortly",
                           {"Retry-After": "5"}) from None
        except Exception as exc:
            raise ApiError(503, f"the model could not be loaded: {exc}") from None

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


if __name__ == "__main__":  # `python -m streamer.serve.service`, the entry before the split
    import sys

    from streamer.serve.runner import main

    sys.exit(main())
