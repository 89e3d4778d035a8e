"""Live streams: a :class:`~streamer.pipeline.Pipeline` per stream in its own thread
(:class:`StreamHandle`), a lane of the server's one parse scheduler, and its newest frame for
any number of viewers (:class:`LatestFrame`).

Example:
    >>> handle = StreamHandle("cam1", "rtsp://127.0.0.1:8554/stream", config, {}, 80,
    ...                       scheduler=scheduler)
    >>> handle.start(); handle.first_frame.wait(15); handle.info()["state"]
    'running'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from typing import Any, TypedDict

from streamer.config import Config
from streamer.core.errors import StreamerError
from streamer.core.metrics import RunMetrics
from streamer.io.sources import LIVE_SCHEMES, redact_url
from streamer.parsing.scheduler import ParseScheduler
from streamer.pipeline import Parsed, Pipeline
from streamer.serve.images import encode_jpeg
from streamer.vision.render import Renderer

log = logging.getLogger("streamer.serve")

STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
#: The multipart boundary of ``GET /api/streams/{id}/mjpeg``.
BOUNDARY = "frame"
#: URL schemes a caller may give as a stream source (FFmpeg knows many more, file:// among them).
STREAM_URL_SCHEMES = LIVE_SCHEMES | {"http", "https"}


class StreamInfo(TypedDict):
    """What ``GET /api/streams/{id}`` answers about a stream."""

    id: str
    source: str  # credentials redacted
    state: str  # starting, running, finished, stopped or failed
    error: str | None
    policy: str | None
    width: int | None
    height: int | None
    viewers: int
    created: float
    config: dict[str, Any]  # the caller's overrides, as given
    current_fps: float
    mjpeg: str
    metrics: str
    priority: float
    fps: float  # frames shown per second since the start
    parse_fps: float
    overlay_age_ms: dict[str, float]  # p50, p95: capture of the parsed frame -> shown
    frames_dropped: int
    reconnects: int


class LatestFrame:
    """The newest output of a stream, for any number of viewers.

    The pipeline's thread calls :meth:`publish` for every output frame: it stores a reference
    and wakes waiting viewers, nothing more, so viewers can never slow it down. A viewer awaits
    :meth:`wait_newer` and then asks for :meth:`jpeg`, which renders and encodes the newest
    frame once per version however many viewers ask.
    """

    def __init__(self, renderer: Renderer, quality: int,
                 metrics: RunMetrics | None = None) -> None:
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
            data = encode_jpeg(image, self.quality)
            if self.metrics is not None:
                self.metrics.add_stage("render", rendered - started)
                self.metrics.add_stage("encode", time.perf_counter() - rendered)
            self._jpeg = (version, item.frame.index, item.frame.timestamp, data)
            return self._jpeg


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StreamHandle:
    """One served stream: a :class:`Pipeline` iterated in its own thread, parsed as lane
    ``sid`` of ``scheduler`` (the server's one model) with ``priority``."""

    def __init__(self, sid: str, source: str, config: Config, overrides: dict[str, Any],
                 jpeg_quality: int, opened: str | None = None,
                 failure: str | None = None, *, scheduler: ParseScheduler,
                 priority: float = 1.0) -> None:
        """``source`` as the caller named it; ``opened`` what is read (a resolved path);
        ``failure`` the error text shown for any failure, in place of the real one."""
        self.id = sid
        self.source = source
        self.config = config
        self.overrides = overrides
        self.failure = failure
        self.priority = priority
        self.pipeline = Pipeline(config, opened or source, scheduler=scheduler, name=sid,
                                 priority=priority)
        self.slot = LatestFrame(Renderer(config.render), jpeg_quality, self.pipeline.metrics)
        self.state = "starting"
        self.error: str | None = None
        self.created = time.time()
        self.viewers = 0
        self.first_frame = threading.Event()
        self.size: tuple[int, int] | None = None
        self.latency_sum_s = 0.0  # capture to published, every frame (the summary's _sum)
        self.overlay_sum_s = 0.0  # age of the overlay shown, every frame with one
        self.overlay_count = 0
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
                if item.parse_capture is not None:
                    self.pipeline.metrics.add_overlay(item.parse_capture)
                    self.overlay_sum_s += time.monotonic() - item.parse_capture
                    self.overlay_count += 1
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

    def info(self, summary: dict[str, Any] | None = None) -> StreamInfo:
        """What the streams endpoints answer; ``summary`` if already taken (else taken now)."""
        policy = self.pipeline.policy
        summary = summary if summary is not None else self.summary()
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
            "priority": self.priority,
            "fps": summary["fps"],
            "parse_fps": summary["parse_fps"],
            "overlay_age_ms": summary["overlay_age_ms"],
            "frames_dropped": summary["frames_dropped"],
            "reconnects": summary["reconnects"],
        }
