"""The stream pipeline: source -> person finder -> parser -> renderer -> sinks.

Threads overlap the work: a reader decodes frames ahead, a detector finds the people in frame
t+1 while the parser parses frame t, and the caller's thread renders and encodes frame t-1
(live sources detect and parse the newest frame in one thread, to keep latency down). Bounded
buffers join them, and the buffer policy decides what happens when parsing is slower than the
source:

- ``wait`` (files): the reader blocks; every frame is parsed (or one in ``parse.every``) and
  written, in order. Nothing is dropped.
- ``latest`` (live sources): the worker always takes the newest frame. With
  ``output.frames: all`` every captured frame is still written or shown, with the most recent
  parse result; with ``output.frames: parsed`` only parsed frames are. Latency stays bounded.

Example:
    >>> config = load_config("configs/file.yaml")
    >>> pipeline = Pipeline(config, source="clip.mp4")
    >>> summary = pipeline.run()           # writes config.output.path, returns the metrics
    >>> for frame, result in Pipeline(config, source="clip.mp4"):
    ...     print(frame.index, result.class_pixel_counts())
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from streamer.config import Config
from streamer.core.errors import ConfigError, SourceError
from streamer.core.estimate import Estimate
from streamer.core.metrics import RunMetrics
from streamer.core.types import Frame, Output, ParseResult, VideoInfo, unparseable_size
from streamer.io.buffers import BufferPolicy, DropOldestBuffer, FrameBuffer, make_buffer
from streamer.io.sinks import (
    JsonlStatsSink,
    LabelMapSink,
    VideoFileSink,
    VideoSink,
    WindowSink,
    open_video_sink,
)
from streamer.io.sources import ImageSource, Source, is_stream_uri, open_source
from streamer.parsing.frames import Parsed, find_people, parse_detected
from streamer.parsing.parser import HumanParser
from streamer.vision.detect import PersonFinder
from streamer.vision.render import Renderer
from streamer.vision.reuse import CropMemory
from streamer.vision.temporal import Carrier

if TYPE_CHECKING:
    from streamer.parsing.scheduler import ParseScheduler

log = logging.getLogger("streamer.pipeline")

POLL_S = 0.2


class Pipeline:
    """A configured run over one source. Iterate for ``(frame, result)`` or call :meth:`run`.

    ``parser`` may be passed in to share one loaded model between runs (tests, services).
    With ``overlap_detection`` (files), a detector thread finds the people in frame t+1 while
    the parser works on frame t. With a ``scheduler`` (live sources only), the stream's
    detect + parse run on the scheduler's shared model and thread, as lane ``name`` with
    ``priority`` (see streamer.parsing.scheduler).
    """

    def __init__(
        self,
        config: Config,
        source: str | None = None,
        *,
        parser: HumanParser | None = None,
        overlap_detection: bool = True,
        scheduler: ParseScheduler | None = None,
        name: str | None = None,
        priority: float = 1.0,
    ) -> None:
        self.config = config
        self.overlap_detection = overlap_detection
        uri = source if source is not None else config.source.uri
        if uri is None or str(uri) == "":
            raise ConfigError("no source given: pass --source or set source.uri")
        self.uri: str = uri
        self.metrics = RunMetrics()
        self.scheduler = scheduler
        self.name = name or str(self.uri)
        self.priority = priority
        self._parser = scheduler.parser if scheduler is not None and parser is None else parser
        self._stop = threading.Event()
        self._source: Source | None = None
        self._threads: list[threading.Thread] = []
        self._buffers: list[FrameBuffer] = []
        self._latest: Parsed | None = None
        self._lane: FrameBuffer | None = None
        self._latest_lock = threading.Lock()
        self._warned_sizes: set[tuple[int, int]] = set()
        self._worker_error: BaseException | None = None
        self._hurry = False
        self._video: VideoFileSink | None = None
        self.policy: BufferPolicy | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def parser(self) -> HumanParser:
        if self._parser is None:
            self._parser = HumanParser(self.config.parser)
        return self._parser

    @property
    def source(self) -> Source:
        if self._source is None:
            raise RuntimeError("the pipeline is not running")
        return self._source

    def stop(self) -> None:
        """Stop reading; frames already parsed are still delivered, then iteration ends."""
        self._stop.set()
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.interrupt()
        for buffer in self._buffers[:1]:
            buffer.close()

    def abort(self) -> None:
        """Stop at once (a second Ctrl-C): skip the frames still queued, wait for no thread,
        and finalise the outputs with what they already hold. Safe from a signal handler."""
        self._hurry = True
        self.stop()
        for buffer in list(self._buffers):
            buffer.close()
        if self._video is not None:
            self._video.hurry()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def latest(self) -> Parsed | None:
        """The most recent parsed frame (for live views)."""
        with self._latest_lock:
            return self._latest

    def live_summary(self) -> dict[str, Any]:
        """The run's summary so far, safe to call from another thread while it runs.

        :class:`RunMetrics` gets the drop and source counters only when the run ends; here
        they are read live (frames dropped by the buffers, reconnects, decode errors, gaps).

        Example:
            >>> pipeline.live_summary()["frames_dropped"]
            0
        """
        summary = self.metrics.summary()
        summary["frames_dropped"] = max(summary["frames_dropped"],
                                        sum(int(b.dropped) for b in self._buffers))
        with contextlib.suppress(RuntimeError):
            stats = self.source.stats
            summary["reconnects"] = max(summary["reconnects"], int(stats.reconnects))
            summary["decode_errors"] = max(summary["decode_errors"], int(stats.decode_errors))
            summary["gap_seconds"] = max(summary["gap_seconds"], round(stats.gap_seconds, 3))
        return summary

    # ----------------------------------------------------------------- threads
    def _timed_frames(self, source: Source) -> Iterator[Frame]:
        frames = iter(source)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                return
            self.metrics.add_stage("decode", time.perf_counter() - started)
            self.metrics.frames_read += 1
            yield frame

    def _read(self, source: Source, outputs: list[FrameBuffer]) -> None:
        error: BaseException | None = None
        try:
            for frame in self._timed_frames(source):
                if not all([out.put(frame) for out in outputs]):
                    break
        except BaseException as exc:  # handed to the consumer, which raises it
            error = exc
        finally:
            for out in outputs:
                out.finish(error)

    @staticmethod
    def _many_images(source: Source) -> bool:
        return isinstance(source, ImageSource) and len(source.files) > 1

    def _unparseable(self, frame: Frame) -> bool:
        """A frame too small or too thin to parse (folders of mixed images, a stream that
        changed size): it goes out as it came in, with one warning per size."""
        reason = unparseable_size(frame.height, frame.width)
        if reason is None:
            return False
        size = (frame.height, frame.width)
        if size not in self._warned_sizes:
            self._warned_sizes.add(size)
            what = f"image {frame.name}" if frame.name else f"frame {frame.index}"
            log.warning("%s is passed through unparsed: %s", what, reason)
        return True

    def _whole_frame(self) -> bool:
        return self.config.detector.type == "full" or not self.parser.single_person

    def _finder(self, finder: PersonFinder | None) -> PersonFinder | None:
        """``finder``, or None where the parser takes whole frames (nobody to look for)."""
        return None if self._whole_frame() else finder

    def _detect(self, inbox: FrameBuffer, outbox: FrameBuffer) -> None:
        """Files: detects frame t+1 while the parser thread works on frame t."""
        error: BaseException | None = None
        try:  # _finder may load the parser: its error goes down the line like any other
            finder = self._finder(PersonFinder(self.config.detector))
            while (frame := inbox.get()) is not None:
                if not outbox.put(find_people(finder, frame, self.metrics)):
                    break
        except BaseException as exc:  # handed down the line, raised by the consumer
            error = exc
            inbox.close()
        finally:
            outbox.finish(error)

    def _work(self, inbox: FrameBuffer, outbox: FrameBuffer | None, every: int,
              detect: bool, errors: FrameBuffer | None = None) -> None:
        """Parses one frame in ``every``; with ``detect``, finds the people first (live).

        Results go to ``outbox``; with none (live: the consumer takes ``latest()``), an error
        goes to ``errors``, whose consumer raises it."""
        memory = CropMemory(self.config.parse.reuse_threshold)
        error: BaseException | None = None
        last: ParseResult | None = None
        last_capture: float | None = None
        seen = 0
        try:
            finder = self._finder(PersonFinder(self.config.detector)) if detect else None
            while True:
                got = inbox.get()
                if got is None:
                    break
                detected = find_people(finder, got, self.metrics) if detect else got
                if self._unparseable(detected.frame):
                    if outbox is not None and not outbox.put(Parsed(detected.frame, None, False)):
                        break
                    continue
                # A frame of another size than the last parse (a folder of photos of mixed
                # sizes, a stream that changed resolution) is a new scene: parse it, since a
                # parse of another picture cannot be carried onto it.
                resized = last is not None and last.labels.shape != detected.frame.image.shape[:2]
                parse_now = seen % every == 0 or resized
                if resized:
                    seen = 0
                seen += 1
                if parse_now:
                    last = parse_detected(self.parser, detected, memory, self.metrics)
                    last_capture = detected.frame.capture_time
                item = Parsed(detected.frame, last, parse_now, parse_capture=last_capture)
                if parse_now and detected.persons:
                    item.velocities = detected.velocities
                if parse_now:
                    with self._latest_lock:
                        self._latest = item
                if outbox is not None and not outbox.put(item):
                    break
        except BaseException as exc:
            error = exc
            inbox.close()
        finally:
            if outbox is not None:
                outbox.finish(error)
            elif error is not None and errors is not None:
                errors.fail(error)

    def _start(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ----------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[Frame, ParseResult | None]]:
        for item in self.items():
            yield item.frame, item.result

    def items(self) -> Iterator[Parsed]:
        """Every output frame with its parse result, in order."""
        yield from self._items_of(self._open())

    def _open(self) -> Source:
        """Open the source, pick the buffer policy, check the frame size, warm the parser."""
        cfg = self.config
        if self.scheduler is None and is_stream_uri(str(self.uri)):
            # Load the model before connecting: a camera sends from the moment it is opened,
            # and what it sends while the model loads arrives late as one burst.
            self.parser  # noqa: B018
        source = open_source(self.uri, cfg.source)
        self._source = source
        try:
            live = source.is_live or cfg.source.realtime
            policy = BufferPolicy.parse(
                ("latest" if live else "wait") if cfg.buffer.policy == "auto"
                else cfg.buffer.policy)
            self.policy = policy
            info = source.info
            reason = unparseable_size(info.height, info.width)
            if reason is not None:
                if not self._many_images(source):
                    raise SourceError(f"{source.uri}: frames of {reason}",
                                      hint="pass a larger video or image")
            elif self.scheduler is None:  # a shared parser is warmed by whoever built it
                self.parser.warm_up((info.height, info.width))
            if self.scheduler is not None and not self._live_items(policy):
                raise ConfigError(
                    f"stream {self.name}: a shared parse scheduler serves live sources only "
                    f"(with output.frames: all), and {self.uri} is not one",
                    hint="set source.realtime: true to pace a file as a live stream, or run "
                         "files with run_stream.py batch")
        except BaseException:
            self._stop.set()
            source.close()
            raise
        return source

    def _live_items(self, policy: BufferPolicy) -> bool:
        return policy is BufferPolicy.LATEST and self.config.output.frames == "all"

    def _items_of(self, source: Source) -> Generator[Parsed, None, None]:
        """The frames of the opened ``source``; stops the threads and closes it at the end."""
        assert self.policy is not None
        try:
            if self._live_items(self.policy):
                yield from self._items_live(source)
            else:
                yield from self._items_ordered(source, self.policy)
        finally:
            self._stop.set()
            if self._lane is not None and self.scheduler is not None:
                self.scheduler.remove(self._lane)  # type: ignore[arg-type]
            for buffer in self._buffers:
                buffer.close()
            deadline = time.monotonic() + 10
            for thread in self._threads:  # in slices, so that abort() can cut the wait short
                while thread.is_alive() and not self._hurry and time.monotonic() < deadline:
                    thread.join(timeout=0.1)
                thread.join(timeout=0.2 if self._hurry else 0)
            if not (self._hurry and any(t.is_alive() for t in self._threads)):
                source.close()  # never under a reader thread that is still decoding
            stats = source.stats
            self.metrics.reconnects = stats.reconnects
            self.metrics.gap_seconds = stats.gap_seconds
            self.metrics.decode_errors = stats.decode_errors
            self.metrics.packets_corrupt = stats.packets_corrupt
            self.metrics.frames_corrupt = stats.frames_corrupt
            self.metrics.frames_dropped = sum(b.dropped for b in self._buffers)
            if self._buffers and isinstance(self._buffers[-1], DropOldestBuffer):
                self.metrics.display_dropped = self._buffers[-1].dropped
            self.metrics.source_fps = source.info.fps if source.is_live else None
            self.metrics.finished = time.monotonic()

    def _items_ordered(self, source: Source, policy: BufferPolicy) -> Iterator[Parsed]:
        cfg = self.config
        inbox = make_buffer(policy, cfg.buffer.size)
        outbox = make_buffer(BufferPolicy.WAIT, cfg.buffer.size)
        self._buffers = [inbox, outbox]
        every = 1 if policy is BufferPolicy.LATEST else cfg.parse.every
        self._start(self._read, source, [inbox], name="streamer-reader")
        if self.overlap_detection and policy is BufferPolicy.WAIT:
            detected = make_buffer(BufferPolicy.WAIT, 2)
            self._buffers.insert(1, detected)
            self._start(self._detect, inbox, detected, name="streamer-detector")
            self._start(self._work, detected, outbox, every, False, name="streamer-parser")
        else:
            self._start(self._work, inbox, outbox, every, True, name="streamer-parser")
        only_parsed = cfg.output.frames == "parsed"
        carrier = Carrier.from_config(cfg.render)  # render.propagate / render.stability
        while (item := outbox.get()) is not None:
            if only_parsed and not item.fresh:
                continue
            item.result = carrier.carry(item.frame.image, item.frame.index, item.result,
                                        velocities=item.velocities)
            yield item

    def _items_live(self, source: Source) -> Iterator[Parsed]:
        cfg = self.config
        display: DropOldestBuffer[Frame] = DropOldestBuffer(cfg.buffer.size)
        if self.scheduler is not None:
            parse_slot: FrameBuffer = self._join_scheduler(self.scheduler, display)
        else:
            parse_slot = make_buffer(BufferPolicy.LATEST)
        self._buffers = [parse_slot, display]
        self._start(self._read, source, [parse_slot, display], name="streamer-reader")
        if self.scheduler is None:
            # Live: detect and parse the newest frame back to back; detecting ahead would add
            # a whole parse time to the latency of what is shown.
            self._start(self._work, parse_slot, None, 1, True, display, name="streamer-parser")
        carrier = Carrier.from_config(cfg.render)  # render.propagate / render.stability
        while (frame := display.get()) is not None:
            latest = self.latest()
            if latest is None or latest.frame.image.shape != frame.image.shape:
                # Nothing parsed yet, or a parse from before the stream changed size
                # (reconnected at another resolution): no overlay until a new one.
                yield Parsed(frame, None, False)
                continue
            # Shown on a later frame, the last parse follows its people's tracked boxes.
            fresh = latest.frame.index == frame.index
            yield Parsed(frame, carrier.carry(
                frame.image, frame.index, latest.result, source_image=latest.frame.image,
                source_index=latest.frame.index, velocities=latest.velocities), fresh,
                parse_capture=latest.frame.capture_time)

    def _join_scheduler(self, scheduler: ParseScheduler, display: FrameBuffer) -> FrameBuffer:
        """This stream's lane in the shared scheduler: its own tracker and crop memory, the
        scheduler's model and detector, run on the scheduler's thread."""
        cfg = self.config
        finder = None if self._whole_frame() else PersonFinder(
            cfg.detector, detector=scheduler.detector(cfg.detector))
        memory = CropMemory(cfg.parse.reuse_threshold)

        def parse_newest(frame: Frame) -> None:
            detected = find_people(finder, frame, self.metrics)
            item = Parsed(frame, parse_detected(scheduler.current_parser(), detected, memory,
                                                self.metrics), True,
                          detected.velocities if detected.persons else {},
                          parse_capture=frame.capture_time)
            with self._latest_lock:
                self._latest = item

        lane = scheduler.add(self.name, parse_newest, priority=self.priority,
                             on_error=display.fail)
        self._lane = lane
        return lane

    # ----------------------------------------------------------------- running to sinks
    def run(self, *, show_progress: bool | None = None,
            on_estimate: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Run to the configured sinks and return the summary (also written to --metrics).

        ``on_estimate`` is called once with a one-line time estimate for the whole input, as
        soon as the first frames are timed (files and folders of known length only).
        """
        cfg = self.config.output
        renderer = Renderer(self.config.render)
        progress = None
        estimate = Estimate(self.config.parse.every) if on_estimate is not None else None
        source = self._open()
        items = self._items_of(source)
        with contextlib.ExitStack() as stack:
            stack.callback(items.close)  # a failing sink: stop the threads, close the source
            try:
                video, window, labels, stats = self._open_sinks(stack, source.info)
            except BaseException:
                self._stop.set()  # no frame asked for yet: items.close() has nothing to end
                source.close()
                raise
            if show_progress is None:
                show_progress = cfg.progress and not source.info.is_live
            if show_progress:
                from tqdm import tqdm

                progress = stack.enter_context(tqdm(
                    total=source.info.frame_count, unit="frame", dynamic_ncols=True,
                    desc="parsing", leave=True))
            for item in items:
                frame, result = item.frame, item.result
                started = time.perf_counter()
                image = renderer.render(frame.image, result) if result is not None else frame.image
                self.metrics.add_stage("render", time.perf_counter() - started)
                started = time.perf_counter()
                out = Output(frame, image, result)
                if video is not None:
                    video.write(out)
                if window is not None and not window.write(out):
                    self.stop()
                if labels is not None:
                    labels.write(out)
                self.metrics.add_stage("encode", time.perf_counter() - started)
                self.metrics.add_output(frame.capture_time)
                if item.parse_capture is not None:
                    self.metrics.add_overlay(item.parse_capture)
                if stats is not None:
                    out.record = self._frame_record(item)
                    stats.write(out)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(parsed=self.metrics.frames_parsed, refresh=False)
                if estimate is not None and on_estimate is not None:
                    info = self.source.info
                    text = estimate.tick(None if info.is_live else info.frame_count)
                    if text is not None:
                        on_estimate(text)
                        estimate = None
        summary = self.metrics.summary()
        if cfg.metrics:
            self.metrics.write_json(cfg.metrics)
        return summary

    def _open_sinks(self, stack: contextlib.ExitStack, info: VideoInfo) -> tuple[
            VideoSink | None, WindowSink | None, LabelMapSink | None, JsonlStatsSink | None]:
        """The configured sinks (a video file, segments or an RTSP publish; window, label
        maps, stats), opened in ``stack``; ``None`` for each one not asked for."""
        cfg = self.config.output
        video: VideoSink | None = None
        if cfg.path:
            # From a start time the video begins at 0 and the audio, copied
            # from the source's beginning, would not match it.
            audio = (str(self.uri) if info.has_audio and not info.is_live
                     and not self.config.source.start and not cfg.segment_seconds else None)
            if info.has_audio and self.config.source.start and not cfg.segment_seconds:
                log.warning("the audio is not copied when starting at %g s",
                            self.config.source.start)
            video = open_video_sink(
                cfg.path, info, audio_from=audio, codec=cfg.codec, crf=cfg.crf,
                preset=cfg.preset, segment_seconds=cfg.segment_seconds,
                keep_segments=cfg.keep_segments, max_disk_mb=cfg.max_disk_mb)
            stack.enter_context(video)
            if isinstance(video, VideoFileSink):
                self._video = video
                if self._hurry:
                    video.hurry()
        window = stack.enter_context(WindowSink(f"streamer: {self.uri}")) if cfg.show else None
        labels = stack.enter_context(
            LabelMapSink(cfg.labels_dir, fmt=cfg.labels_format,
                         instances=cfg.labels_instances)) if cfg.labels_dir else None
        stats = stack.enter_context(JsonlStatsSink(cfg.stats_jsonl)) if cfg.stats_jsonl else None
        return video, window, labels, stats

    def _frame_record(self, item: Parsed) -> dict[str, Any]:
        record: dict[str, Any] = {
            "index": item.frame.index,
            "timestamp": round(item.frame.timestamp, 6),
            "parsed": item.fresh,
            "latency_ms": round(self.metrics.latency[-1], 2) if self.metrics.latency else None,
        }
        if item.result is not None:
            record["persons"] = [p.to_json() for p in item.result.persons]
            if item.fresh:
                record["class_pixels"] = item.result.class_pixel_counts()
        return record
