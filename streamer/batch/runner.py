"""``run_stream.py batch``: parse many files (and several live streams) on a process pool or Ray.

Every input is one job. A file is parsed to the end and gives the same annotated video and
metrics JSON as ``run_stream.py --source FILE --output OUT --metrics M``; a live stream (an
``rtsp://`` URL, a webcam, or a file with ``source.realtime: true``) runs until it ends. The
jobs run on workers that each load the model once and keep it for every job they take:

- without ``--ray``: a process pool on this machine (:class:`~streamer.batch.workers.LocalPool`);
- with ``--ray [ADDRESS|auto|local]``: Ray actors across a cluster
  (:class:`~streamer.batch.workers.RayCluster`), one per file worker and one per stream, which
  Ray restarts when they die. Ray is optional (``pip install 'streamer[ray]'``).

With N workers on C cores each worker's engine gets C/N intra-op threads. A failed job is
retried ``--retries`` times and never stops the others; the batch shows files done, frames per
second and ETA while it runs, and ends with one table row per input.

Outputs: ``videos/a.mp4`` -> ``OUT/a.mp4`` + ``OUT/a.metrics.json``. Inputs from several
folders keep their paths below the folder they have in common (``x/a.mp4``, ``y/a.mp4`` ->
``OUT/x/a.mp4``, ``OUT/y/a.mp4``). A stream is named by ``name:`` in the config, or after its
URL (``rtsp://cam1:8554/live`` -> ``OUT/cam1_8554_live.mp4``); when it is restarted the next
part goes to ``OUT/NAME.restart1.mp4``, and so on.

Example:
    >>> jobs, base = plan_batch(["videos/*.mp4"], "out", config_path=None, overrides=[])
    >>> report = BatchRunner(jobs, base, BatchSettings(workers=2)).run()
    >>> print(format_table(report))

Config with several sources (``sources:`` is read here; the other sections are the usual ones,
and each source may override any of them except ``parser``)::

    sources:
      - rtsp://10.0.0.5:8554/door
      - uri: rtsp://10.0.0.6:8554/yard
        name: yard
        parse: {every: 2}
    parser: {model: /models/m2fp-single}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from streamer.apps.common import SignalStop, yaml_quote
from streamer.apps.inputs import is_stream_uri, load_sources, stream_name
from streamer.batch.workers import (
    ClusterError,
    HostCheckError,
    Job,
    JobResult,
    LocalPool,
    RayCluster,
    WorkerInfo,
    WorkerPlan,
)
from streamer.config import Config
from streamer.core.errors import ConfigError, StreamerError
from streamer.core.heap import return_large_buffers

__all__ = [
    "BatchReport",
    "BatchRunner",
    "BatchSettings",
    "ClusterError",
    "Job",
    "JobResult",
    "format_table",
    "main",
    "plan_batch",
    "plan_workers",
]

log = logging.getLogger("streamer.batch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OUTPUT_FORMATS = ("mp4", "mkv")


# ------------------------------------------------------------------------ jobs and outputs
def plan_batch(patterns: list[str], output_dir: str | Path, *, config_path: str | None,
               overrides: list[str], fmt: str = "mp4") -> tuple[list[Job], Config]:
    """The jobs of a batch (sources, outputs, per-source config) and its base configuration.

    Raises :class:`ConfigError` before any work when two inputs would write the same output,
    or an output would overwrite an input.

    Example:
        >>> jobs, base = plan_batch(["a/x.mp4", "b/x.mp4"], "out", config_path=None,
        ...                         overrides=[])
        >>> [str(j.output) for j in jobs]
        ['/abs/out/a/x.mp4', '/abs/out/b/x.mp4']
    """
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    base, specs = load_sources(config_path, overrides, patterns)
    out_dir = Path(os.path.abspath(os.path.expanduser(output_dir)))
    live_flags = [is_stream_uri(s.uri) or s.config.source.realtime for s in specs]
    local = [not live and "://" not in s.uri for s, live in zip(specs, live_flags, strict=True)]
    common = _common_folder([Path(s.uri) for s, ok in zip(specs, local, strict=True) if ok])
    jobs: list[Job] = []
    owners: dict[Path, str] = {}
    inputs = {Path(s.uri) for s, ok in zip(specs, local, strict=True) if ok}
    for i, (spec, live) in enumerate(zip(specs, live_flags, strict=True)):
        if live:
            label = spec.name or stream_name(spec.uri)
            rel = Path(label)
        else:
            if local[i] and common is not None:
                rel = Path(spec.uri).relative_to(common)
            else:  # a file by URL (http://...): named after its last path part
                rel = Path(Path(spec.uri.split("?", 1)[0]).name or stream_name(spec.uri))
            label = spec.name or str(rel)
            rel = rel.with_suffix("")
        output = out_dir / f"{rel}.{fmt}"
        if output in owners:
            raise ConfigError(
                f"{owners[output]} and {spec.uri} would both write {output}",
                hint="give the streams different name: values, or run such files in "
                     "separate batches")
        if output in inputs:
            raise ConfigError(f"output {output} would overwrite an input",
                              hint="choose another --output-dir")
        owners[output] = spec.uri
        cfg = spec.config
        labels = out_dir / f"{rel}.labels" if cfg.output.labels_dir else None
        stats = out_dir / f"{rel}.stats.jsonl" if cfg.output.stats_jsonl else None
        jobs.append(Job(
            key=f"{i:05d}", source=spec.uri, label=label, output=output,
            metrics=out_dir / f"{rel}.metrics.json", config=cfg, live=live,
            frames_expected=probe_frames(spec.uri) if local[i] else None,
            labels_dir=labels, stats_jsonl=stats))
    return jobs, base


def _common_folder(paths: list[Path]) -> Path | None:
    if not paths:
        return None
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def probe_frames(path: str) -> int | None:
    """The number of video frames in a file (from its header; ``None`` if unknown)."""
    try:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            if stream.duration and stream.time_base and stream.average_rate:
                return int(float(stream.duration * stream.time_base * stream.average_rate))
    except Exception:  # noqa: BLE001 - a bad file is reported when it is run
        return None
    return None


def plan_workers(cpus: int, files: int, streams: int, *, workers: int | None = None,
                 threads: int | None = None, retries: int = 1) -> WorkerPlan:
    """Split ``cpus`` cores: N workers (one per stream, the rest for files), C/N threads each.

    By default there is one file worker per core left after the streams (at most one per
    file), each with ``cpus // N`` intra-op threads, at least one. ``workers`` and ``threads``
    override either side. A Ray actor reserves ``min(threads, cpus / N)`` CPUs, so N actors
    always fit on the cluster even when they outnumber its cores.

    Example:
        >>> plan_workers(8, files=3, streams=0)
        WorkerPlan(workers=3, threads=2, cpus=2, streams=0, total_cpus=8, retries=1)
        >>> plan_workers(2, files=10, streams=0, workers=1).threads
        2
    """
    if workers is None:
        per = threads or 1
        workers = max(1, cpus // per - streams)
    workers = min(max(1, workers), files) if files else 0
    total = max(1, workers + streams)
    if not threads:
        threads = max(1, cpus // total)
    cpus_each = min(float(threads), cpus / total)
    if cpus_each.is_integer():
        cpus_each = int(cpus_each)
    return WorkerPlan(workers=workers, threads=threads, cpus=cpus_each, streams=streams,
                      total_cpus=cpus, retries=retries)


# ------------------------------------------------------------------------ running
@dataclass
class BatchSettings:
    """How a batch runs. ``ray``: ``None`` for the local pool, else an address for ``ray.init``
    (``""`` joins ``RAY_ADDRESS`` or this machine's cluster, else starts one; ``auto``,
    ``local``, ``HOST:PORT``; ``ray://`` is refused)."""

    workers: int | None = None
    threads: int | None = None
    retries: int = 1
    ray: str | None = None
    skip_existing: bool = False
    progress: bool = True


@dataclass
class FileRow:
    """The final state of one input, as the table shows it, and every attempt at it.

    ``history`` holds one :class:`JobResult` per finished attempt, in order: on Ray each says
    on which node it ran (``node_id``, ``node_ip``) and whether its worker died there.
    """

    job: Job
    status: str = "not run"
    attempts: int = 0
    result: JobResult | None = None
    errors: list[str] = field(default_factory=list)
    history: list[JobResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "input": self.job.source, "label": self.job.label, "live": self.job.live,
            "status": self.status, "attempts": self.attempts,
            "frames": r.frames if r else 0, "seconds": r.seconds if r else 0.0,
            "cpu_seconds": r.cpu_seconds if r else 0.0,
            "output": r.output if r else None, "metrics": r.metrics if r else None,
            "worker": r.worker if r else None, "threads": r.threads if r else None,
            "error": self.errors[-1] if self.errors and self.status != "ok" else None,
            "errors": self.errors, "warning": r.warning if r else None,
            "restarts": [str(p) for p in self._restart_outputs()],
            "node_id": r.node_id if r else None, "node_ip": r.node_ip if r else None,
            "history": [{
                "attempt": h.attempt, "status": h.status, "node_id": h.node_id,
                "node_ip": h.node_ip, "worker": h.worker or None, "died": h.died,
                "frames": h.frames, "seconds": h.seconds, "output": h.output,
                "error": h.error} for h in self.history],
        }

    def _restart_outputs(self) -> list[Path]:
        if not self.job.live:
            return []
        return [p for a in range(2, self.attempts + 1) if (p := self.job.paths(a)[0]).exists()]


@dataclass
class BatchReport:
    """What a batch did: one :class:`FileRow` per input, the plan, the time it took."""

    rows: list[FileRow]
    plan: WorkerPlan
    backend: str
    seconds: float
    stopped_by: int | None = None
    fatal: str | None = None
    workers: list[WorkerInfo] = field(default_factory=list)

    @property
    def failed(self) -> list[FileRow]:
        return [r for r in self.rows if r.status == "failed"]

    @property
    def frames(self) -> int:
        return sum(r.result.frames for r in self.rows if r.result and r.status == "ok")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "workers": self.plan.workers, "streams": self.plan.streams,
            "threads_per_worker": self.plan.threads, "cpus_per_worker": self.plan.cpus,
            "cpus": self.plan.total_cpus, "seconds": round(self.seconds, 3),
            "frames": self.frames,
            "fps": round(self.frames / self.seconds, 3) if self.seconds > 0 else 0.0,
            "ok": sum(r.status == "ok" for r in self.rows), "failed": len(self.failed),
            "fatal": self.fatal, "stopped_by_signal": self.stopped_by,
            "worker_processes": [dataclasses.asdict(w) for w in self.workers],
            "files": [r.to_dict() for r in self.rows],
        }


class BatchProgress:
    """The batch's progress line: files done of total, frames per second, ETA.

    On a terminal the line is redrawn in place twice a second; otherwise (logs, CI) a full
    line is printed every 15 seconds. Finished files are printed as they finish.
    """

    def __init__(self, jobs: list[Job], stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.files = [j for j in jobs if not j.live]
        self.streams = [j for j in jobs if j.live]
        known = [j.frames_expected for j in self.files if j.frames_expected]
        guess = sum(known) / len(known) if known else 0
        self.expected = {j.key: j.frames_expected or guess for j in self.files}
        self.started = time.monotonic()
        self.done_frames: dict[str, int] = {}
        self.live_frames: dict[str, int] = {}
        self.finished: set[str] = set()
        self.failed = 0
        self.samples: deque[tuple[float, int]] = deque(maxlen=240)
        self._last_print = 0.0
        self._shown = False

    def total_frames(self) -> int:
        return sum(self.done_frames.values()) + sum(self.live_frames.values())

    def update(self, running: dict[str, int]) -> None:
        self.live_frames = dict(running)
        now = time.monotonic()
        self.samples.append((now, self.total_frames()))
        period = 0.5 if self.tty else 15.0
        if self.enabled and now - self._last_print >= period:
            self._last_print = now
            self._emit(self.line())

    def finish(self, row: FileRow, final: bool) -> None:
        if not final:
            if self.enabled:
                error = row.errors[-1] if row.errors else ""
                self._emit(f"retrying {row.job.label} (attempt {row.attempts} failed: {error})",
                           keep=True)
            return
        self.finished.add(row.job.key)
        self.live_frames.pop(row.job.key, None)
        if row.result is not None:
            self.done_frames[row.job.key] = row.result.frames
            if row.job.key in self.expected and row.status == "ok":
                self.expected[row.job.key] = row.result.frames
        if row.status == "failed":
            self.failed += 1
        if self.enabled:
            self._emit(_row_line(row), keep=True)
            self._emit(self.line())

    def fps(self) -> float:
        """Frames per second over the last minute (since the start before that)."""
        if len(self.samples) < 2:
            return 0.0
        now, frames = self.samples[-1]
        old = next(((t, f) for t, f in self.samples if now - t <= 60), self.samples[0])
        if now - old[0] < 1e-3:
            return 0.0
        return (frames - old[1]) / (now - old[0])

    def line(self) -> str:
        done = sum(1 for j in self.files if j.key in self.finished)
        frames = self.total_frames()
        fps = self.fps()
        parts = [f"batch: {done}/{len(self.files)} files done"]
        if self.failed:
            parts[0] += f" ({self.failed} failed)"
        if self.streams:
            live = sum(1 for j in self.streams if j.key not in self.finished)
            parts.append(f"{live} stream(s) running")
        parts.append(f"{frames} frames")
        parts.append(f"{fps:.1f} fps")
        file_frames = sum(v for k, v in self.done_frames.items() if k in self.expected) + sum(
            v for k, v in self.live_frames.items() if k in self.expected)
        left = sum(self.expected.values()) - file_frames
        if self.files and done < len(self.files):
            parts.append(f"ETA {_duration(left / fps)}" if fps > 0 and left > 0 else "ETA ?")
        parts.append(f"elapsed {_duration(time.monotonic() - self.started)}")
        return "  ".join(parts)

    def _emit(self, text: str, keep: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if keep else ""))
            self._shown = not keep
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _row_line(row: FileRow) -> str:
    r = row.result
    text = f"{row.status:<7} {row.job.label}"
    if r is not None:
        text += f"  {r.frames} frames  {r.seconds:.1f} s"
    if row.status != "ok" and row.errors:
        text += f"  {row.errors[-1]}"
    return text


class BatchRunner:
    """Runs the jobs of a batch on a backend, retrying failures, until all are done.

    ``backend`` defaults to :class:`LocalPool`, or :class:`RayCluster` when
    ``settings.ray`` is set. :meth:`stop` (Ctrl-C) lets running files finish writing what they
    have (then they count as stopped) and starts nothing new.

    Example:
        >>> jobs, base = plan_batch(["clips/*.mp4"], "out", config_path=None, overrides=[])
        >>> report = BatchRunner(jobs, base, BatchSettings(workers=2, retries=1)).run()
        >>> [row.status for row in report.rows]
        ['ok', 'ok', 'failed']
    """

    def __init__(self, jobs: list[Job], base: Config, settings: BatchSettings,
                 backend: Any = None, *, stream: TextIO | None = None) -> None:
        self.jobs = jobs
        self.base = base
        self.settings = settings
        if settings.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, not {settings.retries}")
        if settings.workers is not None and settings.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {settings.workers}")
        if settings.threads is not None and settings.threads < 1:
            raise ConfigError(f"--threads must be at least 1, not {settings.threads}")
        if backend is None:
            backend = RayCluster(settings.ray) if settings.ray is not None else LocalPool()
        self.backend = backend
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self.stopped_by: int | None = None
        self.rows = {job.key: FileRow(job) for job in jobs}
        self.progress: BatchProgress | None = None

    def stop(self, signum: int | None = None) -> None:
        """Start nothing new; ask running jobs to stop and finalise their outputs."""
        if signum is not None and self.stopped_by is None:
            self.stopped_by = signum
        if not self._stop.is_set():
            self._stop.set()
            self.backend.stop()

    def frames_done(self, key: str) -> int:
        """Frames written so far by job ``key`` (running or finished)."""
        if self.progress is None:
            return 0
        return self.progress.live_frames.get(key, self.progress.done_frames.get(key, 0))

    def run(self) -> BatchReport:
        started = time.monotonic()
        files = [j for j in self.jobs if not j.live]
        streams = [j for j in self.jobs if j.live]
        threads = self.settings.threads or self.base.parser.threads or None
        plan = plan_workers(self.backend.cpu_count(), len(files), len(streams),
                            workers=self.settings.workers, threads=threads,
                            retries=self.settings.retries)
        pending: deque[Job] = deque(streams)
        for job in files:
            row = self.rows[job.key]
            if self.settings.skip_existing and job.output.is_file() and job.metrics.is_file():
                row.status = "skipped"
            else:
                pending.append(job)
        self.progress = BatchProgress(
            [j for j in self.jobs if self.rows[j.key].status != "skipped"], self.stream,
            self.settings.progress)
        fatal: str | None = None
        where = self.backend.describe()
        try:
            if pending:
                self.backend.start(plan, self.base.parser, self.jobs)
            fatal = self._loop(pending)
        finally:
            self.progress.close()
            self.backend.close()
        workers = list(getattr(self.backend, "workers_seen", {}).values())
        return BatchReport(list(self.rows.values()), plan, where,
                           time.monotonic() - started, self.stopped_by, fatal, workers)

    def _loop(self, pending: deque[Job]) -> str | None:
        backend, progress = self.backend, self.progress
        assert progress is not None
        fatal: str | None = None
        while True:
            if not self._stop.is_set():
                self._dispatch(pending)
            if backend.running() == 0 and (not pending or self._stop.is_set()):
                break
            outcomes = backend.poll(0.25)
            if backend.fatal and not fatal:
                fatal = backend.fatal
                self.stop()
            for outcome in outcomes:
                job, result = outcome.job, outcome.result
                row = self.rows[job.key]
                row.result = result
                row.history.append(result)
                if result.status == "ok" or result.status == "stopped":
                    row.status = result.status
                    progress.finish(row, final=True)
                    continue
                row.errors.append(result.error or "failed")
                if result.fatal:
                    fatal = fatal or result.error
                    self.stop()
                retry = (row.attempts <= self.settings.retries and not self._stop.is_set()
                         and backend.can_run(job))
                if retry:
                    pending.appendleft(job)  # before the files not started yet
                    progress.finish(row, final=False)
                else:
                    row.status = "failed"
                    progress.finish(row, final=True)
            progress.update(backend.progress())
        return fatal

    def _dispatch(self, pending: deque[Job]) -> None:
        """Hand pending jobs to free workers, in order; a stream waits only for its own."""
        backend = self.backend
        assert self.progress is not None
        held: list[Job] = []
        files_full = False
        for _ in range(len(pending)):
            job = pending.popleft()
            row = self.rows[job.key]
            if not backend.can_run(job):
                row.status = "failed"
                row.errors.append(backend.why_not(job))
                self.progress.finish(row, final=True)
                continue
            if job.live or not files_full:
                if backend.try_submit(job, row.attempts + 1):
                    row.attempts += 1
                    continue
                files_full = files_full or not job.live
            held.append(job)
        pending.extendleft(reversed(held))


# ------------------------------------------------------------------------ output
def format_table(report: BatchReport) -> str:
    """The end-of-batch table: one row per input, then a summary line.

    Example:
        >>> print(format_table(report))
        status   frames  seconds  tries  input
        ok          241     52.1      1  chaplin_bw.mp4
        failed        0      0.0      2  bad.mp4  cannot read /data/bad.mp4 as a video (...)
        3 inputs: 2 ok, 1 failed; 482 frames in 61.2 s (7.9 fps) ...
    """
    lines = [f"{'status':<8}{'frames':>7}{'seconds':>9}{'tries':>7}  input"]
    for row in report.rows:
        r = row.result
        frames = r.frames if r else 0
        seconds = r.seconds if r else 0.0
        line = f"{row.status:<8}{frames:>7}{seconds:>9.1f}{row.attempts:>7}  {row.job.label}"
        if row.status in ("failed", "not run") and row.errors:
            line += f"  {row.errors[-1]}"
        elif row.status == "ok" and row.attempts > 1:
            line += f"  (after: {row.errors[-1]})" if row.errors else ""
        if r is not None and r.warning and row.status == "ok":
            line += f"  warning: {r.warning}"
        lines.append(line)
    counts: dict[str, int] = {}
    for row in report.rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    order = ("ok", "failed", "stopped", "skipped", "not run")
    summary = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
    fps = report.frames / report.seconds if report.seconds > 0 else 0.0
    plan = report.plan
    lines.append(
        f"{len(report.rows)} inputs: {summary}; {report.frames} frames in {report.seconds:.1f} s "
        f"({fps:.2f} fps); {plan.total_workers} worker(s) x {plan.threads} thread(s) on "
        f"{report.backend}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    from streamer.vision.detect import DETECTOR_TYPES

    p = argparse.ArgumentParser(
        prog="run_stream.py batch",
        description="Parse many video files (and run several live streams) with one model "
        "per worker, on this machine's cores or on a Ray cluster.",
        epilog="examples:\n"
        "  run_stream.py batch --source 'videos/*.mp4' --output-dir out/ --model DIR\n"
        "  run_stream.py batch --source 'videos/**/*.mp4' --output-dir out/ --ray auto\n"
        "  run_stream.py batch --config cameras.yaml --output-dir rec/ --ray 10.0.0.1:6379\n\n"
        "Each input writes OUT/NAME.mp4 and OUT/NAME.metrics.json (as run_stream.py --output\n"
        "--metrics would). Exit code 0 when every input succeeded, 1 if any failed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", dest="sources", nargs="+", action="extend", default=[],
                   metavar="SOURCE", help="files, folders, glob patterns (quote them: "
                   "'videos/*.mp4', '**' for subfolders) or stream URLs; repeatable")
    p.add_argument("--output-dir", "-o", required=True, help="folder for the outputs "
                   "(created if missing)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: auto (a cluster started with `ray start`), local (a "
                   "private one on this machine) or HOST:PORT (not ray://: run on a node of "
                   "the cluster); alone: "
                   "RAY_ADDRESS or this machine's cluster, else a private one")
    p.add_argument("--workers", type=int, help="file workers (default: one per core, at most "
                   "one per file; live streams get one each on top)")
    p.add_argument("--threads", type=int, help="inference threads per worker (default: "
                   "cores / workers)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed input "
                   "(default 1); a stream restarted after its worker died counts one")
    p.add_argument("--config", help="YAML config; may list sources: (see streamer/batch/runner.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key for every input")
    p.add_argument("--model", help="M2FP model directory or ModelScope id (parser.model)")
    p.add_argument("--engine", choices=("torch", "torchscript", "onnxruntime", "openvino"),
                   help="inference engine (parser.engine)")
    p.add_argument("--detector", choices=DETECTOR_TYPES,
                   help="person detector (detector.type)")
    p.add_argument("--format", default="mp4", choices=OUTPUT_FORMATS,
                   help="output container; mkv keeps what reached the disk when a worker is "
                   "killed, mp4 needs its index written at the end")
    p.add_argument("--skip-existing", action="store_true", help="skip files whose output and "
                   "metrics already exist (resume an interrupted batch)")
    p.add_argument("--report", help="write the whole batch report as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for key, value in (("parser.model", args.model), ("parser.engine", args.engine),
                       ("detector.type", args.detector)):
        if value is not None:
            out.append(f"{key}={yaml_quote(value)}")
    return out


class _BatchStop:
    """The batch's signal actions. First SIGINT/SIGTERM: stop the batch gracefully. Second:
    exit at once."""

    def __init__(self) -> None:
        self.runner: BatchRunner | None = None

    def stop(self, signum: int) -> None:
        print(f"\nstopping ({signal.Signals(signum).name}): running files keep what they "
              "wrote as NAME.partial.mp4, nothing new starts; press Ctrl-C again to quit at "
              "once", file=sys.stderr, flush=True)
        if self.runner is not None:
            self.runner.stop(signum)

    def exit(self, signum: int) -> None:
        if self.runner is not None:
            self.runner.backend.close(force=True)
        os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """``run_stream.py batch ...``; returns the exit code (0 all ok, 1 any failed, 2 usage)."""
    return_large_buffers()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    actions = _BatchStop()
    signals = SignalStop(actions.stop, actions.exit)
    signals.install()
    try:
        settings = BatchSettings(workers=args.workers, threads=args.threads,
                                 retries=args.retries, ray=args.ray,
                                 skip_existing=args.skip_existing,
                                 progress=not args.no_progress)
        if args.report:
            from streamer.io.sinks import check_output_path

            check_output_path(args.report)
        out_dir = Path(args.output_dir)
        jobs, base = plan_batch(args.sources, out_dir, config_path=args.config,
                                overrides=_overrides(args), fmt=args.format)
        _check_output_dir(out_dir)
        from streamer.m2fp.checkpoint import is_model_id, resolve_model_dir

        model = str(base.parser.model)
        if not is_model_id(model):  # a worker's working folder is not ours (Ray's own)
            model = os.path.abspath(os.path.expanduser(model))
            base = dataclasses.replace(base, parser=dataclasses.replace(base.parser,
                                                                        model=model))
        if settings.ray in (None, "local"):
            # Here, once: a wrong --model fails in a second, and a ModelScope id is
            # downloaded once rather than by every worker at the same time. On a cluster
            # each node checks (and caches) the model itself before any work starts.
            resolve_model_dir(model)
        runner = BatchRunner(jobs, base, settings)
        actions.runner = runner
        signals.install()  # again: ray.init installs its own SIGTERM handler, which aborts
        if signals.code is not None:
            runner.stop(signals.code - 128)
        report = runner.run()
    except HostCheckError as exc:  # one line per node and kind of problem
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return signals.code or EXIT_FAILED
    print(format_table(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.report}")
    if report.fatal:
        print(f"error: {report.fatal}", file=sys.stderr)
        return EXIT_FAILED
    if report.stopped_by is not None:
        return 128 + report.stopped_by
    return EXIT_FAILED if report.failed else EXIT_OK


def _check_output_dir(out_dir: Path) -> None:
    from streamer.core.errors import SinkError

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"cannot create output folder {out_dir} ({exc.strerror or exc})",
                        hint="choose a writable --output-dir") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise SinkError(f"no permission to write in {out_dir}",
                        hint="choose a writable --output-dir")


if __name__ == "__main__":
    sys.exit(main())
