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
from typing import Any, TypeVar

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

#: Engines that start their worker threads when the model is compiled or loaded.
THREADS_AT_LOAD_ENGINES = ("openvino", "onnxruntime")

T = TypeVar("T")


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: a thread's own priority, which
    threads it starts from now on inherit). Where the OS refuses, the thread keeps its own.

    Example:
        >>> lower_priority(5)   # this thread now yields the CPU to the others at nice 0
    """
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except (AttributeError, OSError) as exc:
        log.debug("cannot lower the parse threads' priority: %s", exc)


def at_lower_priority(build: Callable[[], T], nice: int) -> T:
    """``build()`` run in a thread of priority ``nice`` lower, so that the threads it starts (an
    engine's or a detector's worker threads, created when the model is compiled or loaded)
    run at that priority; returns what it built or raises what it raised.

    Example:
        >>> parser = at_lower_priority(lambda: HumanParser(options), 5)
    """
    if nice <= 0:
        return build()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        lower_priority(nice)
        try:
            result.append(build())
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="streamer-model-build", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def build_nice(engine: str, nice: int) -> int:
    """How much lower to build a parser of ``engine`` at, for its threads to run ``nice``
    lower: ``nice`` for an engine whose worker threads start with the model (they inherit the
    building thread's priority), 0 for torch, whose threads start on the first parse (from a
    slot, already lower) and whose thread count is set per calling thread (so its parser is
    built in the caller's).

    Example:
        >>> build_nice("openvino", 5), build_nice("torch", 5)
        (5, 0)
    """
    return nice if engine in THREADS_AT_LOAD_ENGINES else 0


def resolve_parallel(parallel: int | str, cores: int | None = None) -> int:
    """The number of parse slots for ``parallel`` (``auto`` or a count) on ``cores`` cores.

    ``auto`` is one slot whose parser takes every core: see docs/live.md for the measurement
    behind it (on the idle 2-core machine two slots sharing one network parsed 0.96-1.12x as
    much in total with 1-4 streams, but each parse runs on one core, so the overlay a viewer
    sees was 1.3-1.6x as old, and the network with two requests takes 100-260 MB more).

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
    #: How much lower than the streams' threads the parse runs (added to the nice value of the
    #: parse slots, the engine's and the detector's threads). Each stream's reading, carrying
    #: and writing has a deadline every frame and the parse has none: with the parse yielding,
    #: a busy CPU drops parses (the overlay gets older), not shown frames. 0 keeps one priority.
    parse_nice: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.parallel, bool) or not (
                self.parallel == "auto" or (isinstance(self.parallel, int) and self.parallel >= 1)):
            raise ConfigError(f"scheduler.parallel must be auto or a whole number >= 1, not "
                              f"{self.parallel!r}", hint="e.g. --set scheduler.parallel=2")
        if isinstance(self.parse_nice, bool) or not isinstance(self.parse_nice, int) or not (
                0 <= self.parse_nice <= 19):
            raise ConfigError(f"scheduler.parse_nice must be a whole number from 0 to 19, not "
                              f"{self.parse_nice!r}", hint="e.g. --set scheduler.parse_nice=5")

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
    :meth:`from_options` builds the parser as config asks. With ``parse_nice`` the slots, and
    the worker threads of the models built for them, run that much below the streams' threads
    (:attr:`SchedulerOptions.parse_nice`).

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
                 make_parser: Callable[[], HumanParser] | None = None,
                 parse_nice: int = 0) -> None:
        self.parser = parser
        self.parallel = resolve_parallel(parallel)
        #: Priority the slots (and the detector models built here) run at, below the streams'.
        self.parse_nice = parse_nice
        if make_parser is None:
            options = dataclasses.replace(
                parser.options, threads=SchedulerOptions(self.parallel).slot_threads())
            make_parser = lambda: HumanParser(options)  # noqa: E731
        if self.parallel == 1 or parser.concurrency > 1:
            self._slot_parsers = [parser] * self.parallel  # one network, an infer request each
        else:
            # Built now, so that no stream waits for a network to load.
            nice = build_nice(parser.options.engine, parse_nice)
            self._slot_parsers = [parser] + [at_lower_priority(make_parser, nice)
                                             for _ in range(self.parallel - 1)]
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
                     *, parser: HumanParser | None = None,
                     name: str = "streamer-scheduler") -> ParseScheduler:
        """A scheduler (not started) with ``options``' slots, on ``parser`` or on a parser
        built as ``options`` asks (:meth:`SchedulerOptions.parser_options`), at the parse's
        priority (:func:`build_nice`).

        Example:
            >>> scheduler = ParseScheduler.from_options(config.parser, config.scheduler).start()
        """
        options = options or SchedulerOptions()
        slot_options = options.parser_options(parser_options)
        if parser is None:
            parser = at_lower_priority(lambda: HumanParser(slot_options),
                                       build_nice(slot_options.engine, options.parse_nice))
        return cls(parser, name=name, parallel=options.slots(),
                   make_parser=lambda: HumanParser(slot_options), parse_nice=options.parse_nice)

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
                found = at_lower_priority(lambda: make_detector(options), self.parse_nice)
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
        lower_priority(self.parse_nice)
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
