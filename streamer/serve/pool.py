"""The photo parse pool behind ``POST /api/parse``: worker threads that decode uploads and
parse them, either on the server's one shared model (``load=``, see
:mod:`streamer.serve.model`: the parse itself runs on the scheduler's thread) or each on a
model of its own (``serve.photo_parser: separate``).

Example:
    >>> pool = ParsePool(config.parser, config.detector, workers=2, queue_limit=8)
    >>> pool.start(); pool.ready.result()          # the model's cache key, once loaded
    >>> future = pool.try_submit(lambda photo: photo.parse(image))   # None: pool full (503)
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from streamer.core.errors import ModelError
from streamer.core.types import ParseResult
from streamer.m2fp.checkpoint import CHECKPOINT_FILE
from streamer.parsing.engines import file_digest
from streamer.parsing.parser import HumanParser, ParserOptions
from streamer.parsing.photo import parse_image, photo_detector
from streamer.serve.model import ScheduledPhotos
from streamer.vision.detect import (
    Detector,
    DetectorOptions,
)

log = logging.getLogger("streamer.serve")

#: Cache entries are tagged with this, so a change of layout never reads old entries.
CACHE_VERSION = "parse-v1"

T = TypeVar("T")


@dataclass
class PhotoParser:
    """Parses one photo: finds the people, then parses them.

    Without ``scheduled`` each pool thread owns one (its parser and detector are not
    thread-safe); with it, every pool thread shares one and the parse runs on the shared
    scheduler's thread (``parser`` and ``detector`` are then only read, never run here).

    Example:
        >>> result, seconds = photo.parse_timed(image)
    """

    parser: HumanParser
    detector: Detector | None
    detector_options: DetectorOptions
    scheduled: ScheduledPhotos | None = None

    def parse_timed(self, image: np.ndarray) -> tuple[ParseResult, float]:
        """The parse and the seconds it took (not counting any wait for the shared model)."""
        if self.scheduled is not None:
            return self.scheduled.parse_timed(image)
        started = time.perf_counter()
        result = parse_image(image, self.parser, self.detector, self.detector_options)
        return result, time.perf_counter() - started

    def parse(self, image: np.ndarray) -> ParseResult:
        return self.parse_timed(image)[0]


class ParsePool:
    """``workers`` threads and an admission limit; each thread loads its own parser, or gets
    the :class:`PhotoParser` that ``load()`` returns (one shared by all threads).

    :meth:`try_submit` admits a job while fewer than ``workers + queue`` are admitted and
    answers ``None`` otherwise (the caller then sends 503): the wait for a worker is bounded by
    the queue, never by how many clients there are.
    """

    def __init__(self, parser: ParserOptions, detector: DetectorOptions, workers: int,
                 queue_limit: int, *, load: Callable[[], PhotoParser] | None = None) -> None:
        self.load = load
        cores = os.cpu_count() or 1
        self.workers = max(1, workers or cores)
        self.capacity = self.workers + max(0, queue_limit)
        threads = parser.threads or max(1, cores // self.workers)
        self.parser_options = dataclasses.replace(parser, threads=threads)
        self.detector_options = detector
        self.ready: cf.Future[str] = cf.Future()  # the model's cache key, or the load error
        self._jobs: queue.SimpleQueue[tuple[Callable[[PhotoParser], Any], cf.Future[Any]]
                                      | None] = queue.SimpleQueue()  # any job's result
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

    def _load(self) -> PhotoParser:
        if self.load is not None:
            photo = self.load()
        else:
            parser = HumanParser(self.parser_options)
            parser.warm_up()
            detector = photo_detector(parser, self.detector_options)
            photo = PhotoParser(parser, detector, self.detector_options)
        parser = photo.parser
        with self._lock:
            if not self.ready.done():
                self.classes = tuple(parser.classes)
                self.ready.set_result(self._model_key(parser))
        return photo

    def _loop(self, index: int) -> None:
        worker: PhotoParser | None = None
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

    def try_submit(self, fn: Callable[[PhotoParser], T]) -> cf.Future[T] | None:
        """``fn(photo_parser)`` on a pool thread, or ``None`` when the pool is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                return None
            self._admitted += 1
        future: cf.Future[T] = cf.Future()
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
        # One shared model parses one photo at a time, however many threads decode them.
        parallel = 1 if self.load is not None else self.workers
        return int(min(120, max(1, math.ceil(mean * (ahead + 1) / parallel))))

    def close(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

