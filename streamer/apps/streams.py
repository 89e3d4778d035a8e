"""Many live streams in one process on one model: ``run_stream.py --config C --output-dir DIR``.

Every entry of the config's ``sources:`` list (the schema ``run_stream.py batch`` reads, see
streamer.batch.runner; an entry may add ``priority:``) runs as its own
:class:`~streamer.pipeline.Pipeline` (reader, tracker, carrier, renderer, sinks) and all of them
share one :class:`~streamer.parsing.scheduler.ParseScheduler`, so one network is loaded whatever the
number of cameras. Each stream writes ``DIR/NAME.mkv`` (or, with ``output.segment_seconds``,
``DIR/NAME/START-TIME.mkv`` segments). A stream that fails (unreachable, reconnects exhausted,
a disk error) ends alone, with its error in its row; the others go on. Ctrl-C stops and
finalises every recording.

Example:
    >>> base, specs = load_sources("cams.yaml", [], [])
    >>> run = StreamsRun(base, "out/")
    >>> for spec in specs:
    ...     run.add(spec)
    >>> run.stop()                      # from another thread, or after a while
    >>> report = run.wait()             # {"streams": {"door": {...summary...}, ...}, ...}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from streamer.apps.inputs import SourceSpec, stream_name
from streamer.config import Config
from streamer.core.errors import ConfigError, StreamerError
from streamer.parsing.parser import HumanParser
from streamer.parsing.scheduler import ParseScheduler
from streamer.pipeline import Pipeline

__all__ = ["StreamsRun", "format_streams_table", "run_streams"]

log = logging.getLogger("streamer.streams")


@dataclasses.dataclass
class _Running:
    name: str
    spec: SourceSpec
    pipeline: Pipeline
    thread: threading.Thread
    output: Path
    summary: dict[str, Any] | None = None
    error: str | None = None


class StreamsRun:
    """Live streams run side by side through one shared parse scheduler.

    ``base`` supplies the ``parser`` section (one model for all) and the ``scheduler`` section
    (``scheduler.parallel`` parse slots, each with its own parser and its share of the cores);
    each added stream brings its own configuration. :meth:`add` and :meth:`remove` work while
    others run.

    Example:
        >>> run = StreamsRun(base, "out")
        >>> run.add(SourceSpec("rtsp://127.0.0.1:8554/door", config, "door"))
        >>> run.remove("door")
        {'frames_written': 250, ...}
    """

    def __init__(self, base: Config, output_dir: str | os.PathLike[str], *,
                 parser: HumanParser | None = None) -> None:
        self.base = base
        self.output_dir = Path(output_dir)
        self.scheduler = ParseScheduler.from_options(base.parser, base.scheduler,
                                                     parser=parser).start()
        self.parser = self.scheduler.parser
        self.started = time.monotonic()
        self._streams: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def _output_for(self, name: str, config: Config) -> Path:
        suffix = Path(config.output.path).suffix if config.output.path else ".mkv"
        return self.output_dir / f"{name}{suffix or '.mkv'}"

    def add(self, spec: SourceSpec) -> str:
        """Start one stream; returns its name. A bad name or a clash is a ConfigError."""
        name = spec.name or stream_name(spec.uri)
        if spec.config.parser != self.base.parser:
            raise ConfigError(f"stream {name} sets parser: all streams share one model",
                              hint="set parser: at the top level of the config")
        if spec.config.scheduler != self.base.scheduler:
            raise ConfigError(f"stream {name} sets scheduler: all streams share one scheduler",
                              hint="set scheduler: at the top level of the config")
        with self._lock:
            if self._stopping:
                raise ConfigError(f"cannot add stream {name}: the run is stopping")
            if name in self._streams and self._streams[name].thread.is_alive():
                raise ConfigError(f"a stream named {name} is already running",
                                  hint="give each source its own name:")
            output = self._output_for(name, spec.config)
            config = dataclasses.replace(spec.config, output=dataclasses.replace(
                spec.config.output, path=str(output), metrics=None, progress=False,
                show=False))
            pipeline = Pipeline(config, spec.uri, scheduler=self.scheduler, name=name,
                                priority=spec.priority)
            thread = threading.Thread(target=self._run_one, args=(name,),
                                      name=f"streamer-stream-{name}", daemon=True)
            self._streams[name] = _Running(name, spec, pipeline, thread, output)
        thread.start()
        return name

    def _run_one(self, name: str) -> None:
        running = self._streams[name]
        try:
            running.summary = running.pipeline.run(show_progress=False)
        except StreamerError as exc:
            running.error = str(exc)
            log.warning("stream %s stopped: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - one stream's bug must not end the others
            running.error = f"{type(exc).__name__}: {exc}"
            log.exception("stream %s failed", name)
        if running.summary is None:
            running.summary = running.pipeline.metrics.summary()

    def remove(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Stop stream ``name`` (finalising its recording) and return its summary."""
        with self._lock:
            running = self._streams.get(name)
        if running is None:
            raise ConfigError(f"no stream named {name}",
                              hint=f"running: {', '.join(self.names) or 'none'}")
        running.pipeline.stop()
        running.thread.join(timeout)
        return self._row(running)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [n for n, r in self._streams.items() if r.thread.is_alive()]

    def pipeline(self, name: str) -> Pipeline:
        """The running pipeline of stream ``name`` (for live views)."""
        return self._streams[name].pipeline

    def stop(self) -> None:
        """Stop every stream; recordings are finalised by their threads. Thread-safe."""
        with self._lock:
            self._stopping = True
            running = list(self._streams.values())
        for r in running:
            r.pipeline.stop()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for every stream to end (after :meth:`stop`, or as they fail) -> the report."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in list(self._streams.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r.thread.join(left)
        self.scheduler.stop()
        return self.report()

    def _row(self, running: _Running) -> dict[str, Any]:
        summary = dict(running.summary or running.pipeline.metrics.summary())
        summary["uri"] = running.spec.uri
        if running.pipeline.config.output.segment_seconds:
            from streamer.io.segments import list_segments

            folder = running.output.with_suffix("")
            summary["output"] = str(folder)
            summary["segments"] = [p.name for p in list_segments(folder, running.output.suffix)]
        else:
            summary["output"] = str(running.output)
        summary["priority"] = running.spec.priority
        summary["error"] = running.error
        return summary

    def report(self) -> dict[str, Any]:
        """``streams``: name -> that stream's summary; totals for the process."""
        elapsed = time.monotonic() - self.started
        streams = {name: self._row(r) for name, r in self._streams.items()}
        return {
            "streams": streams,
            "parsers_built": HumanParser.built,
            "engines_built": HumanParser.engines_built,
            "parse_fps": round(self.scheduler.parses / elapsed, 3) if elapsed > 0 else 0.0,
            "parses": self.scheduler.parses,
            "elapsed_s": round(elapsed, 3),
            "failed": sorted(n for n, s in streams.items() if s["error"]),
        }


def format_streams_table(report: dict[str, Any]) -> str:
    """One row per stream: frames, parse and shown fps, overlay age, drops, reconnects."""
    head = (f"{'stream':<16}{'written':>8}{'parsed':>8}{'parse/s':>8}{'shown/s':>8}"
            f"{'src/s':>7}{'age p50':>9}{'age p95':>9}{'dropped':>8}{'unshown':>8}"
            f"{'reconn':>7}  status")
    lines = [head]
    for name, s in report["streams"].items():
        age = s.get("overlay_age_ms") or {"p50": 0.0, "p95": 0.0}
        src = s.get("source_fps")
        lines.append(
            f"{name[:15]:<16}{s['frames_written']:>8}{s['frames_parsed']:>8}"
            f"{s['parse_fps']:>8.2f}{s['fps']:>8.2f}{(f'{src:.1f}' if src else '-'):>7}"
            f"{age['p50']:>8.0f} {age['p95']:>8.0f} {s['frames_dropped']:>7}"
            f"{s.get('display_dropped', 0):>8}{s['reconnects']:>7}  "
            f"{('failed: ' + s['error']) if s['error'] else 'ok'}")
    lines.append(f"one model, {report['parses']} parses in {report['elapsed_s']:.1f} s "
                 f"({report['parse_fps']:.2f} parses/s in total); overlay age in ms = capture "
                 "of the parsed frame -> a frame with that parse written")
    return "\n".join(lines)


def run_streams(config_path: str, overrides: list[str], output_dir: str,
                metrics: str | None, stopper: Any = None) -> dict[str, Any]:
    """The ``--config cams.yaml --output-dir DIR`` run: every ``sources:`` entry until Ctrl-C
    (or until every stream has ended); prints the table, writes ``metrics`` JSON."""
    from streamer.apps.inputs import load_sources
    from streamer.io.sinks import check_output_path

    base, specs = load_sources(config_path, overrides, [])
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output-dir {out_dir} is a file", hint="give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [s.name or stream_name(s.uri) for s in specs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"several sources would be named {', '.join(clash)}",
                          hint="give each a name: in sources:")
    if metrics:
        check_output_path(metrics)
    run = StreamsRun(base, out_dir)
    if stopper is not None:
        stopper.target = run
    try:
        for spec in specs:
            if run.stopping:  # Ctrl-C while starting: finalise what already runs
                break
            run.add(spec)
        while run.names:  # until Ctrl-C (stopper -> run.stop()) or every stream has ended
            time.sleep(0.2)
    except BaseException:
        run.stop()
        run.wait(timeout=60)
        raise
    report = run.wait()
    print(format_streams_table(report))
    for name, row in report["streams"].items():
        if not row["error"]:
            print(f"wrote {row['output']}" if name else "")
    if metrics:
        Path(metrics).write_text(json.dumps(report, indent=2) + "\n")
    return report
