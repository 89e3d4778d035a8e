"""``run_stream.py batch``: parse many files (and several live streams) on a process pool or Ray.

Every input is one job. A file is parsed to the end and gives the same annotated video and
metrics JSON as ``run_stream.py --source FILE --output OUT --metrics M``; a live stream (an
``rtsp://`` URL, a webcam, or a file with ``source.realtime: true``) runs until it ends. The
jobs run on workers that each load the model once and keep it for every job they take:

- without ``--ray``: a process pool on this machine (:class:`~streamer.batch.pool.LocalPool`);
- with ``--ray [ADDRESS|auto|local]``: Ray actors across a cluster
  (:class:`~streamer.batch.ray_cluster.RayCluster`), one per file worker and one per stream,
  which Ray restarts when they die. Ray is optional (``pip install 'streamer[ray]'``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from streamer.apps.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SignalStop,
    add_log_level,
    add_model_options,
    model_overrides,
    run_command,
)
from streamer.batch.hosts import HostCheckError
from streamer.batch.plan import (
    OUTPUT_FORMATS,
    Job,
    JobResult,
    parse_streams_per_worker,
    plan_batch,
    plan_workers,
    stream_groups,
)
from streamer.batch.pool import LocalPool
from streamer.batch.progress import BatchProgress
from streamer.batch.ray_cluster import ClusterError, RayCluster
from streamer.batch.report import BatchReport, FileRow, format_table
from streamer.config import Config
from streamer.core.errors import ConfigError
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
    streams_per_worker: int = 1  # live streams per Ray worker, on its one model


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
        parse_streams_per_worker(settings.streams_per_worker)
        if settings.streams_per_worker > 1 and (
                settings.ray is None if backend is None
                else getattr(backend, "kind", None) != "ray"):
            raise ConfigError(
                "--streams-per-worker needs --ray",
                hint="on this machine alone, run_stream.py --config FILE --output-dir DIR runs "
                     "every live stream of a config in one process on one model")
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
        per_worker = self.settings.streams_per_worker
        plan = plan_workers(self.backend.cpu_count(), len(files), len(streams),
                            workers=self.settings.workers, threads=threads,
                            retries=self.settings.retries, streams_per_worker=per_worker,
                            stream_workers=len(stream_groups(streams, per_worker)))
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


# ------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--streams-per-worker", default="1", metavar="K",
                   help="with --ray: live streams one worker runs side by side on its one "
                   "model (default 1: a worker each)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed input "
                   "(default 1); a stream restarted after its worker died counts one")
    add_model_options(p, config_help="YAML config; may list sources: (see "
                      "streamer/batch/runner.py)", set_help="override a config key for every "
                      "input", detector_help="person detector (detector.type)")
    p.add_argument("--format", default="mp4", choices=OUTPUT_FORMATS,
                   help="output container; mkv keeps what reached the disk when a worker is "
                   "killed, mp4 needs its index written at the end")
    p.add_argument("--skip-existing", action="store_true", help="skip files whose output and "
                   "metrics already exist (resume an interrupted batch)")
    p.add_argument("--report", help="write the whole batch report as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    add_log_level(p)
    return p


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
    actions = _BatchStop()
    signals = SignalStop(actions.stop, actions.exit)
    return run_command(build_parser(), argv, lambda args: _run(args, actions, signals),
                       signals=signals)


def _run(args: argparse.Namespace, actions: _BatchStop, signals: SignalStop) -> int:
    signals.install()
    try:
        settings = BatchSettings(workers=args.workers, threads=args.threads,
                                 retries=args.retries, ray=args.ray,
                                 skip_existing=args.skip_existing,
                                 progress=not args.no_progress,
                                 streams_per_worker=parse_streams_per_worker(
                                     args.streams_per_worker))
        if args.report:
            from streamer.io.sinks import check_output_path

            check_output_path(args.report)
        out_dir = Path(args.output_dir)
        jobs, base = plan_batch(args.sources, out_dir, config_path=args.config,
                                overrides=model_overrides(args), fmt=args.format)
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
