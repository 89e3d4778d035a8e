"""One loaded model for many live streams: the parse scheduler.

A :class:`ParseScheduler` owns the process's one :class:`~streamer.parsing.parser.HumanParser`
(and one detector model of each kind asked for) and a single worker thread that runs every
detect + parse. Each live stream keeps its own reader, tracker, temporal carrier, renderer and
sinks (a :class:`~streamer.pipeline.Pipeline` given ``scheduler=``); towards the scheduler it
is a :class:`Lane`: a newest-frame slot that the stream's reader fills, and a ``work``
callable that detects and parses one frame with that stream's own state.

Which stream is parsed next: among the lanes holding a frame, the one whose shown overlay is
oldest, weighted by its ``priority`` (age x priority, so priority 2 gets a parse when its
overlay is half as old as the others'); a lane never parsed comes first. A stream that stalls,
reconnects or dies has no frame in its slot and is simply not picked, so it never blocks the
others; its ``work`` raising an error ends that lane alone. Lanes can be added and removed at
any time.

Parallel slots (``parallel=k``, config ``scheduler.parallel``): k worker threads parse k lanes
at once; a lane is never parsed by two slots at once, since its tracker and crop memory are its
own. With OpenVINO the slots share the one compiled network, each parse on its own infer
request (the throughput hint: :meth:`SchedulerOptions.parser_options`); with an engine that
runs one call at a time each slot has its own parser (slot 0 the one given, the others built
alike with their share of the cores). Work running in a slot reaches that slot's parser
through :meth:`ParseScheduler.current_parser`. Measured in docs/live.md; ``auto`` follows
:func:`resolve_parallel`.

Example:
    >>> scheduler = ParseScheduler(HumanParser(config.parser)).start()
    >>> a = Pipeline(config_a, scheduler=scheduler)   # both share scheduler.parser
    >>> b = Pipeline(config_b, scheduler=scheduler)
    >>> ...                                            # run a.run() and b.run() in threads
    >>> scheduler.stop()
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.core.errors import ConfigError
from streamer.core.types import Box, Frame
from streamer.io.buffers import LatestBuffer
from streamer.parsing.parser import HumanParser, ParserOptions
from streamer.vision.detect import Detector, DetectorOptions, make_detector

__all__ = ["Lane", "ParseScheduler", "SchedulerOptions", "SerialDetector", "resolve_parallel"]

log = logging.getLogger("streamer.scheduler")

#: Engines whose one compiled network runs several parses at once (parallel infer requests).
SHARED_NETWORK_ENGINES = ("openvino",)


def resolve_parallel(parallel: int | str, cores: int | None = None) -> int:
    """The number of parse slots for ``parallel`` (``auto`` or a count) on ``cores`` cores.

    ``auto`` is one slot whose parser takes every core: see docs/live.md for the measurement
    behind it (two 1-thread slots parsed 1.4-3.4x as much in total with 4 streams on a loaded
    2-core machine, but a single stream then waits about twice as long for its parse, and
    every slot is one more network in memory).

    Example:
        >>> resolve_parallel("auto", 2), resolve_parallel(2, 2)
        (1, 2)
    """
    if parallel == "auto":
        return 1
    count = int(parallel)
    if count < 1:
        raise ConfigError(f"scheduler.parallel must be auto or at least 1, not {parallel!r}")
    return count


@dataclass
class SchedulerOptions:
    """How the shared parse scheduler runs (config section ``scheduler``).

    ``parallel``: parse slots, each a worker thread: ``auto`` (see :func:`resolve_parallel`)
    or a count >= 1. The slots share one network where the engine runs parallel infer
    requests (OpenVINO), else each has its own with cores/slots threads.

    Example:
        >>> SchedulerOptions(parallel=2).slots(cores=2)
        2
        >>> SchedulerOptions(parallel=2).parser_options(ParserOptions()).perf_hint
        'throughput'
    """

    parallel: int | str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.parallel, bool) or not (
                self.parallel == "auto" or (isinstance(self.parallel, int) and self.parallel >= 1)):
            raise ConfigError(f"scheduler.parallel must be auto or a whole number >= 1, not "
                              f"{self.parallel!r}", hint="e.g. --set scheduler.parallel=2")

    def slots(self, cores: int | None = None) -> int:
        """The number of parse slots on ``cores`` cores (default: this machine's)."""
        return resolve_parallel(self.parallel, cores)

    def slot_threads(self, cores: int | None = None) -> int:
        """Threads for each slot's parser: the cores shared out, at least one."""
        cores = cores or os.cpu_count() or 1
        return max(1, cores // self.slots(cores))

    def parser_options(self, options: ParserOptions) -> ParserOptions:
        """The options of the parser the slots run. One slot: ``options``. Several: with
        OpenVINO the throughput hint, so that one compiled network serves every slot (an
        infer request each, OpenVINO sharing out the cores); with another engine each slot's
        parser takes its share of the cores (unless ``parser.threads`` says otherwise)."""
        if self.slots() == 1:
            return options
        if options.engine in SHARED_NETWORK_ENGINES:
            return dataclasses.replace(options, perf_hint="throughput")
        if not options.threads:
            return dataclasses.replace(options, threads=self.slot_threads())
        return options


class Lane(LatestBuffer):
    """One stream's newest-frame slot in a :class:`ParseScheduler` (``latest`` policy).

    The stream's reader calls :meth:`put` (a newer frame replaces an unparsed one, counted in
    ``dropped``), :meth:`finish` at the end, and anyone may :meth:`close` it; the scheduler
    takes the frame and calls ``work(frame)`` in its own thread. ``on_error`` is called (in the
    scheduler's thread) with any exception ``work`` raised; the lane is closed then.

    Example:
        >>> lane = scheduler.add("door", parse_one, priority=2.0)
        >>> lane.put(frame)        # from the stream's reader thread
        True
        >>> scheduler.remove(lane)
    """

    def __init__(self, scheduler: ParseScheduler, name: str, work: Callable[[Frame], Any],
                 priority: float = 1.0,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        super().__init__()
        if not priority > 0:
            raise ValueError(f"stream priority must be > 0, not {priority!r}")
        self._cond = scheduler.condition  # one condition: any lane's frame wakes the worker
        self.name = name
        self.work = work
        self.priority = float(priority)
        self.on_error = on_error
        self.added = time.monotonic()
        self.order = 0
        self.busy = False  # a slot is parsing this lane's frame (condition held to change)
        self.parses = 0
        self.parse_seconds = 0.0
        self.last_capture: float | None = None  # capture time of the frame last parsed
        self.error: BaseException | None = None

    @property
    def pending(self) -> bool:
        """Whether a frame waits to be parsed (call with the scheduler's condition held)."""
        return bool(self._items) and not self._closed and not self.busy

    def take(self) -> Frame | None:
        """The waiting frame, if any (call with the scheduler's condition held)."""
        return self._items.popleft() if self._items and not self._closed else None

    def urgency(self, now: float) -> float:
        """How much this lane needs a parse: the age of its shown overlay x its priority."""
        if self.last_capture is None:
            return float("inf")
        return (now - self.last_capture) * self.priority

    @property
    def parse_fps(self) -> float:
        """Parses per second since the lane was added."""
        elapsed = time.monotonic() - self.added
        return self.parses / elapsed if elapsed > 0 else 0.0


class SerialDetector:
    """A detector model shared by parallel slots: one ``detect`` at a time (its infer request,
    like most engines', serves one call at a time), while the slots' parses run side by side.

    Example:
        >>> shared = SerialDetector(make_detector(options))
        >>> boxes = shared.detect(image)        # from any slot's thread
    """

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Box]:
        with self._lock:
            return self.detector.detect(image)


class ParseScheduler:
    """Runs detect + parse for every live stream in the process on one model and one thread.

    ``parser`` is the one loaded network every stream shares (:attr:`parser`); detector models
    are shared too, one per kind (:meth:`detector`), while each stream keeps its own tracker.
    Use as a context manager, or :meth:`start` / :meth:`stop`. With ``parallel`` > 1 there are
    that many slots, each a thread. They all run ``parser`` when it can run that many parses
    at once (:attr:`HumanParser.concurrency`: OpenVINO with the throughput hint); otherwise
    each slot has its own parser (slot 0 is ``parser``, the others come from ``make_parser``
    or are built with ``parser``'s options). :attr:`parsers` lists the distinct parsers.
    :meth:`from_options` builds the parser as config asks.

    Example:
        >>> with ParseScheduler(parser) as scheduler:
        ...     lane = scheduler.add("cam1", work=lambda frame: parse(frame))
        ...     lane.put(frame)
        >>> scheduler.stats()["cam1"]["parses"]
        1
        >>> len(ParseScheduler.from_options(ParserOptions(), SchedulerOptions(2)).parsers)
        1
    """

    def __init__(self, parser: HumanParser, *, name: str = "streamer-scheduler",
                 parallel: int | str = 1,
                 make_parser: Callable[[], HumanParser] | None = None) -> None:
        self.parser = parser
        self.parallel = resolve_parallel(parallel)
        if make_parser is None:
            options = dataclasses.replace(
                parser.options, threads=SchedulerOptions(self.parallel).slot_threads())
            make_parser = lambda: HumanParser(options)  # noqa: E731
        if self.parallel == 1 or parser.concurrency > 1:
            self._slot_parsers = [parser] * self.parallel  # one network, an infer request each
        else:
            # Built now, so that no stream waits for a network to load.
            self._slot_parsers = [parser] + [make_parser() for _ in range(self.parallel - 1)]
        #: The distinct parsers (networks) the slots run.
        self.parsers = list({id(p): p for p in self._slot_parsers}.values())
        self._local = threading.local()
        self.condition = threading.Condition()
        self._lanes: list[Lane] = []
        self._detectors: dict[tuple[object, ...], Detector] = {}
        self._detector_lock = threading.Lock()
        self._stop = False
        self._order = itertools.count()
        self._threads = [threading.Thread(target=self._run, args=(slot,), daemon=True,
                                          name=name if slot == 0 else f"{name}-{slot}")
                         for slot in range(self.parallel)]
        self.parses = 0
        self.busy_seconds = 0.0
        self.started = time.monotonic()

    @classmethod
    def from_options(cls, parser_options: ParserOptions, options: SchedulerOptions | None = None,
                     *, name: str = "streamer-scheduler") -> ParseScheduler:
        """A scheduler (not started) on a parser built as ``options`` asks
        (:meth:`SchedulerOptions.parser_options`), with that many slots.

        Example:
            >>> scheduler = ParseScheduler.from_options(config.parser, config.scheduler).start()
        """
        options = options or SchedulerOptions()
        slot_options = options.parser_options(parser_options)
        return cls(HumanParser(slot_options), name=name, parallel=options.slots(),
                   make_parser=lambda: HumanParser(slot_options))

    # ----------------------------------------------------------------- lanes
    def add(self, name: str, work: Callable[[Frame], Any], *, priority: float = 1.0,
            on_error: Callable[[BaseException], None] | None = None) -> Lane:
        """A new lane for stream ``name``; ``work(frame)`` detects and parses one frame."""
        lane = Lane(self, name, work, priority, on_error)
        with self.condition:
            lane.order = next(self._order)
            self._lanes.append(lane)
            self.condition.notify_all()
        return lane

    def remove(self, lane: Lane) -> None:
        """Take ``lane`` out of the schedule (a parse already running on it still finishes)."""
        lane.close()
        with self.condition:
            if lane in self._lanes:
                self._lanes.remove(lane)

    @property
    def lanes(self) -> list[Lane]:
        with self.condition:
            return list(self._lanes)

    def detector(self, options: DetectorOptions) -> Detector:
        """The shared detector model for ``options``' kind, built on first use (with parallel
        slots, a :class:`SerialDetector`: the slots take turns to detect)."""
        # Every option the detector model is built from (the tracker's options are the lane's).
        key = (options.type, options.torchvision_model, options.torchvision_weights,
               options.score_threshold, options.weights, options.fetch, options.threads,
               options.engine, options.split)
        with self._detector_lock:
            found = self._detectors.get(key)
            if found is None:
                found = make_detector(options)
                if self.parallel > 1:
                    found = SerialDetector(found)
                self._detectors[key] = found
            return found

    # ----------------------------------------------------------------- running
    def start(self) -> ParseScheduler:
        """Start the worker threads (once)."""
        for thread in self._threads:
            if thread.ident is None:
                thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers after the parses they are running."""
        with self.condition:
            self._stop = True
            self.condition.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def current_parser(self) -> HumanParser:
        """The parser of the slot running the calling thread's work (``parser`` elsewhere)."""
        return getattr(self._local, "parser", self.parser)

    def __enter__(self) -> ParseScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self) -> tuple[Lane, Frame] | None:
        """Wait for the lane most in need of a parse and take its newest frame."""
        with self.condition:
            while True:
                if self._stop:
                    return None
                ready = [lane for lane in self._lanes if lane.pending]
                if ready:
                    now = time.monotonic()
                    lane = max(ready, key=lambda la: (la.urgency(now), -la.order))
                    frame = lane.take()
                    assert frame is not None
                    lane.busy = True
                    return lane, frame
                self.condition.wait(1.0)

    def _run(self, slot: int) -> None:
        self._local.parser = self._slot_parsers[slot]
        while (picked := self._next()) is not None:
            lane, frame = picked
            started = time.perf_counter()
            try:
                lane.work(frame)
            except BaseException as exc:  # one stream's failure ends that stream alone
                with self.condition:
                    lane.busy = False
                log.warning("stream %s: parsing failed: %s", lane.name, exc)
                lane.error = exc
                self.remove(lane)
                if lane.on_error is not None:
                    try:
                        lane.on_error(exc)
                    except Exception:  # noqa: BLE001 - never let one stream stop the worker
                        log.exception("stream %s: error handler failed", lane.name)
                continue
            spent = time.perf_counter() - started
            with self.condition:
                lane.parses += 1
                lane.parse_seconds += spent
                lane.last_capture = frame.capture_time
                self.parses += 1
                self.busy_seconds += spent
                lane.busy = False
                self.condition.notify_all()  # its next frame may go to another slot now

    def stats(self) -> dict[str, dict[str, float]]:
        """Per lane: parses, parse fps, mean seconds per parse, frames replaced unparsed."""
        return {lane.name: {
            "parses": lane.parses,
            "parse_fps": round(lane.parse_fps, 3),
            "parse_ms": round(1000 * lane.parse_seconds / lane.parses, 2) if lane.parses else 0.0,
            "priority": lane.priority,
            "dropped": lane.dropped,
        } for lane in self.lanes}
