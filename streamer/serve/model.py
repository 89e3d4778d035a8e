"""The server's one loaded model: a :class:`~streamer.parsing.parser.HumanParser` behind one
:class:`~streamer.parsing.scheduler.ParseScheduler`, shared by every served stream and (with
``serve.photo_parser: shared``, the default) by the photo uploads too.

Thread safety: an engine is not safe to run from two threads at once, so nothing but the
scheduler's own thread ever runs this parser. Streams are lanes of the scheduler; photo uploads
are one more lane (:class:`ScheduledPhotos`): a pool thread decodes the upload, queues the
parse, and waits while the scheduler runs it on its thread between the streams' parses.

Example:
    >>> model = SharedModel(config.parser, config.detector, photos=True).start()
    >>> scheduler = model.scheduler(timeout=60)      # waits for the model to load
    >>> result, seconds = model.photos().parse_timed(image)
    >>> model.close()
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from streamer.core.errors import ModelError
from streamer.core.types import Frame, ParseResult
from streamer.parsing.parser import HumanParser, ParserOptions
from streamer.parsing.photo import parse_image, photo_detector
from streamer.parsing.scheduler import ParseScheduler, SchedulerOptions
from streamer.vision.detect import Detector, DetectorOptions

__all__ = ["PHOTO_LANE", "ScheduledPhotos", "SharedModel"]

log = logging.getLogger("streamer.serve")

#: The scheduler lane of photo uploads (a space: no stream id can take this name).
PHOTO_LANE = "photo uploads"
#: Stands in for a frame in the photo lane: the lane only says "a photo waits".
_TOKEN_IMAGE = np.zeros((1, 1, 3), np.uint8)


@dataclass
class _PhotoJob:
    image: np.ndarray
    future: cf.Future[tuple[ParseResult, float]]


class ScheduledPhotos:
    """Photo parses as one lane of the shared scheduler, run on its thread.

    :meth:`parse_timed` may be called from any number of threads: each call queues its image
    and waits. The lane gets a turn like a stream does (its urgency is the time since its last
    photo x ``priority``), and runs one queued photo per turn, so a burst of uploads shares the
    model with the streams instead of stopping them.

    Example:
        >>> photos = ScheduledPhotos(scheduler, DetectorOptions(type="full"))
        >>> result, parse_seconds = photos.parse_timed(image)
    """

    def __init__(self, scheduler: ParseScheduler, detector_options: DetectorOptions,
                 priority: float = 1.0) -> None:
        self.parser = scheduler.parser
        self.detector_options = detector_options
        # Its own detector (still-photo settings), used on the scheduler's thread only.
        self.detector: Detector | None = photo_detector(self.parser, detector_options)
        self._jobs: collections.deque[_PhotoJob] = collections.deque()
        self._lock = threading.Lock()
        self._count = itertools.count()
        self._closed = False
        self.lane = scheduler.add(PHOTO_LANE, self._work, priority=priority)

    def parse_timed(self, image: np.ndarray,
                    timeout: float | None = None) -> tuple[ParseResult, float]:
        """``image``'s parse and the seconds the parse itself took (not the wait for it)."""
        job = _PhotoJob(image, cf.Future())
        with self._lock:
            if self._closed:
                raise ModelError("the server is shutting down: no more parses")
            self._jobs.append(job)
        if not self._wake():  # the lane was closed: the scheduler no longer runs it
            self.close()
        return job.future.result(timeout)

    def _wake(self) -> bool:
        # A newer token replaces an unparsed one: the queue, not the slot, holds the photos.
        return bool(self.lane.put(Frame(next(self._count), _TOKEN_IMAGE, 0.0,
                                        time.monotonic())))

    def _work(self, _token: Frame) -> None:
        """One queued photo, on the scheduler's thread; never raises (that would end the lane)."""
        with self._lock:
            job = self._jobs.popleft() if self._jobs else None
            more = bool(self._jobs)
        if job is not None and job.future.set_running_or_notify_cancel():
            started = time.perf_counter()
            try:
                result = parse_image(job.image, self.parser, self.detector,
                                     self.detector_options)
            except BaseException as exc:  # noqa: BLE001 - the caller's error, not the lane's
                job.future.set_exception(exc)
            else:
                job.future.set_result((result, time.perf_counter() - started))
        if more:
            self._wake()

    def close(self) -> None:
        """Refuse new photos and fail the queued ones."""
        with self._lock:
            self._closed = True
            left, self._jobs = list(self._jobs), collections.deque()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ModelError("the server is shutting down"))


class SharedModel:
    """The process's one parser and its scheduler, loaded in a background thread.

    ``photos``: also build the :class:`ScheduledPhotos` lane (``serve.photo_parser:
    shared``). :attr:`ready` is resolved with the parser once loaded (or with the error).

    Example:
        >>> model = SharedModel(options, detector_options, photos=False).start()
        >>> model.scheduler(timeout=60).parser is model.ready.result()
        True
    """

    def __init__(self, parser: ParserOptions, detector: DetectorOptions, *,
                 photos: bool, scheduler: SchedulerOptions | None = None) -> None:
        self.parser_options = parser
        self.scheduler_options = scheduler or SchedulerOptions()
        self.detector_options = detector
        self.with_photos = photos
        self.ready: cf.Future[HumanParser] = cf.Future()
        self._scheduler: ParseScheduler | None = None
        self._photos: ScheduledPhotos | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> SharedModel:
        """Start loading (once); returns at once."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="streamer-model",
                                                daemon=True)
                self._thread.start()
        return self

    def _load(self) -> None:
        try:
            scheduler = ParseScheduler.from_options(self.parser_options, self.scheduler_options,
                                                    name="streamer-serve-scheduler")
            parser = scheduler.parser
            parser.warm_up()
            scheduler.start()
            photos = (ScheduledPhotos(scheduler, self.detector_options) if self.with_photos
                      else None)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the model
            log.error("the model could not be loaded: %s", exc)
            self.ready.set_exception(exc)
            return
        self._scheduler, self._photos = scheduler, photos
        self.ready.set_result(parser)

    def scheduler(self, timeout: float | None = None) -> ParseScheduler:
        """The scheduler, once the model is loaded (starts loading if need be); raises the
        load error, or ``TimeoutError`` after ``timeout`` seconds."""
        self.start()
        self.ready.result(timeout)
        assert self._scheduler is not None
        return self._scheduler

    def photos(self, timeout: float | None = None) -> ScheduledPhotos:
        """The photo lane (``photos=True`` only), once the model is loaded."""
        self.scheduler(timeout)
        if self._photos is None:
            raise RuntimeError("this shared model was built without the photo lane")
        return self._photos

    @property
    def loaded(self) -> bool:
        return self.ready.done() and self.ready.exception() is None

    def stats(self) -> dict[str, dict[str, float]]:
        """The scheduler's per-lane stats (empty before the model is loaded)."""
        return self._scheduler.stats() if self._scheduler is not None else {}

    def close(self) -> None:
        if self._photos is not None:
            self._photos.close()
        if self._scheduler is not None:
            self._scheduler.stop(timeout=10)
