"""The batch worker: one process that holds one loaded model and runs jobs with it.

A :class:`JobWorker` loads the M2FP model once and then runs jobs (one file, or one live
stream) one after another through :class:`~streamer.pipeline.Pipeline`, reusing the model. Two
backends run several of them:

- :class:`~streamer.batch.pool.LocalPool`: a ``concurrent.futures`` process pool; each process
  builds its worker in the pool's initializer. A process that dies breaks the pool, so every
  job in flight counts a failed attempt and a fresh pool takes the retries.
- :class:`~streamer.batch.ray_cluster.RayCluster`: one Ray actor per worker, spread over the
  cluster. File workers are a shared pool; every live stream gets an actor of its own. Ray
  restarts an actor that dies (``max_restarts``), and the job it was running is retried on a
  live worker (a stream reopens, that is, reconnects, in its restarted actor).

Both answer the same four calls, driven by :class:`streamer.batch.runner.BatchRunner`:
``try_submit(job, attempt)``, ``poll(timeout) -> [Outcome]``, ``stop()`` and ``close()``.
Ray is imported only by ``RayCluster``, so the rest works without it.

Example:
    >>> worker = JobWorker(config.parser, threads=2)    # loads the model once
    >>> [worker.run(job, attempt=1).status for job in jobs]
    ['ok', 'ok']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from streamer.batch.plan import Job, JobResult, WorkerInfo, one_line
from streamer.core.errors import StreamerError
from streamer.core.heap import return_large_buffers

log = logging.getLogger("streamer.batch")

PROGRESS_EVERY_S = 0.5


def limit_threads(threads: int) -> None:
    """Keep every thread pool in this process to ``threads`` (set before the model loads)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


class JobWorker:
    """Holds one loaded model and runs batch jobs with it, one at a time.

    Built once per pool process or Ray actor: the model is loaded here, in ``__init__``, and
    reused by every job. ``progress`` and ``stop`` may be called from another thread while
    ``run`` works (a Ray actor runs with two threads for that). A model that cannot be loaded
    is not raised here (that would only say "the actor died"): :meth:`ready` reports it, and
    every :meth:`run` returns it as a fatal failure.

    Example:
        >>> worker = JobWorker(ParserOptions(model="models/single"), threads=1)
        >>> worker.ready().error is None
        True
        >>> worker.run(job, attempt=1).status
        'ok'
    """

    def __init__(self, parser_options: Any, threads: int) -> None:
        limit_threads(threads)
        return_large_buffers()
        self.info = WorkerInfo(socket.gethostname(), os.getpid(), threads)
        self._parser: Any = None
        try:
            from streamer.parsing.parser import HumanParser

            self._parser = HumanParser(dataclasses.replace(parser_options, threads=threads))
        except StreamerError as exc:
            self.info.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported, not raised: see the docstring
            log.exception("worker could not load the model")
            self.info.error = f"cannot load the model ({type(exc).__name__}: {one_line(exc)})"
        self._lock = threading.Lock()
        self._running: dict[str, tuple[int, Any]] = {}  # job key -> (attempt, its Pipeline)
        self._stop_requested = False

    def ready(self) -> WorkerInfo:
        self.info.parsers_built = parsers_built()[0]
        return self.info

    def progress(self, key: str | None = None) -> tuple[str, int, int] | None:
        """``(job key, attempt, frames written so far)`` of the running job (job ``key``, if
        given), if any."""
        with self._lock:
            if key is None:
                key = next(iter(self._running), None)
            if key is None or key not in self._running:
                return None
            attempt, pipeline = self._running[key]
            return key, attempt, pipeline.metrics.frames_written

    def stop(self) -> None:
        """Stop the running job(s) (outputs are finalised) and do not start another."""
        with self._lock:
            self._stop_requested = True
            for _attempt, pipeline in self._running.values():
                pipeline.stop()

    def run(self, job: Job, attempt: int) -> JobResult:
        """Run one attempt at ``job``; never raises for a problem with the input."""
        import torch

        started, cpu_started = time.monotonic(), time.process_time()
        result = JobResult(job.key, attempt, "failed", worker=self.info.name,
                           threads=torch.get_num_threads(), node_id=self.info.node_id,
                           node_ip=self.info.node_ip)
        if self.info.error is not None:
            result.error, result.fatal = self.info.error, True
            return result
        video, metrics = job.paths(attempt)
        # A file is written under a temporary name and renamed when complete, so a video that
        # exists under its final name is always a finished one (--skip-existing relies on it).
        write_video, write_metrics = (video, metrics) if job.live else job.partial_paths(attempt)
        try:
            self._check_input(job)
            video.parent.mkdir(parents=True, exist_ok=True)
            if job.labels_dir is not None:
                job.labels_dir.mkdir(parents=True, exist_ok=True)
            config = dataclasses.replace(job.config, output=dataclasses.replace(
                job.config.output, path=str(write_video), metrics=str(write_metrics),
                show=False, progress=False,
                labels_dir=str(job.labels_dir) if job.labels_dir else None,
                stats_jsonl=str(job.stats_jsonl) if job.stats_jsonl else None))
            summary = self._run_pipeline(job, attempt, config)
        except StreamerError as exc:
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad input must not end the batch
            log.exception("job %s failed", job.label)
            result.error = f"internal error: {type(exc).__name__}: {one_line(exc)}"
        else:
            result.summary = summary
            result.frames = int(summary["frames_written"])
            result.warning = _damage_note(summary)
            if result.frames == 0 and not self._stop_requested:
                result.error = "no frames could be decoded"
            elif self._stop_requested and not job.live:
                result.status = "stopped"
            else:
                result.status = "ok"
        if not job.live and result.status == "ok":
            try:
                os.replace(write_video, video)
                os.replace(write_metrics, metrics)
            except OSError as exc:
                result.status = "failed"
                result.error = f"cannot rename {write_video.name} to {video.name} ({exc})"
            else:
                # What an earlier attempt left when its worker (or node) was killed.
                for earlier in range(1, attempt):
                    for path in job.partial_paths(earlier):
                        with contextlib.suppress(OSError):
                            path.unlink()
        if not job.live and result.status == "failed":
            for path in (write_video, write_metrics):
                with contextlib.suppress(OSError):
                    path.unlink()
        if result.status == "stopped":  # kept as NAME.partial.mp4, finalised and playable
            result.output, result.metrics = str(write_video), str(write_metrics)
        elif result.status == "ok" or (job.live and video.exists()):
            result.output, result.metrics = str(video), str(metrics)
        result.seconds = round(time.monotonic() - started, 3)
        result.cpu_seconds = round(time.process_time() - cpu_started, 3)
        result.parsers_built, result.engines_built = parsers_built()
        return result

    def _pipeline_for(self, job: Job, config: Any) -> Any:
        """The job's pipeline, on this worker's model."""
        from streamer.pipeline import Pipeline

        return Pipeline(config, job.source, parser=self._parser)

    def _run_pipeline(self, job: Job, attempt: int, config: Any) -> dict[str, Any]:
        pipeline = self._pipeline_for(job, config)
        with self._lock:
            self._running[job.key] = (attempt, pipeline)
            if self._stop_requested:
                pipeline.stop()
        try:
            return pipeline.run(show_progress=False)
        finally:
            with self._lock:
                self._running.pop(job.key, None)

    def _check_input(self, job: Job) -> None:
        if job.live or "://" in job.source or Path(job.source).exists():
            return
        if self.info.node_ip is not None or self.info.host != job.driver_host:
            from streamer.core.errors import SourceError

            raise SourceError(
                f"{job.source} not found on worker node {self.info.node_ip or self.info.host}",
                hint="batch workers read inputs and write outputs by path: put them on "
                     "storage that every node mounts at the same path")


def _damage_note(summary: dict[str, Any]) -> str | None:
    skipped = summary.get("decode_errors", 0)
    damaged = summary.get("packets_corrupt", 0) + summary.get("frames_corrupt", 0)
    parts = []
    if skipped:
        parts.append(f"{skipped} damaged packet(s) skipped")
    if damaged:
        parts.append(f"{damaged} damaged packet(s) decoded as far as possible")
    return "; ".join(parts) or None


class StreamsWorker(JobWorker):
    """Holds one loaded model and runs several live streams on it at once.

    What ``run_stream.py batch --ray --streams-per-worker K`` gives each group of up to K
    streams: the streams' :meth:`run` calls come in at the same time (a Ray actor with K + 1
    threads), and each stream is its own :class:`~streamer.pipeline.Pipeline` (reader,
    tracker, carrier, renderer, sinks: the same outputs and metrics as on a worker of its
    own) whose detect + parse run on this worker's one model through a
    :class:`~streamer.parsing.scheduler.ParseScheduler`, the oldest overlay first. A stream
    that fails ends alone; the others keep running. ``scheduler_options`` (config
    ``scheduler``) sets its parse slots.

    Example:
        >>> worker = StreamsWorker(config.parser, threads=2, scheduler_options=config.scheduler)
        >>> # worker.run(door, 1) and worker.run(yard, 1), each from its own thread
    """

    def __init__(self, parser_options: Any, threads: int, scheduler_options: Any = None) -> None:
        from streamer.parsing.scheduler import (
            ParseScheduler,
            SchedulerOptions,
            at_lower_priority,
            build_nice,
        )

        options = scheduler_options or SchedulerOptions()
        # Built at the parse's priority, so that the engine's threads have it too.
        at_lower_priority(lambda: JobWorker.__init__(
            self, options.parser_options(parser_options), threads),
            build_nice(parser_options.engine, options.parse_nice))
        self.scheduler: Any = None
        if self._parser is not None:
            self.scheduler = ParseScheduler(self._parser, name="streamer-batch-scheduler",
                                             parallel=options.slots(),
                                             parse_nice=options.parse_nice)
            self.scheduler.start()

    def _pipeline_for(self, job: Job, config: Any) -> Any:
        from streamer.pipeline import Pipeline

        return Pipeline(config, job.source, scheduler=self.scheduler, name=job.label)


def parsers_built() -> tuple[int, int]:
    """``(parsers, engines)`` constructed in this process so far (``HumanParser``'s counts)."""
    from streamer.parsing.parser import HumanParser

    return HumanParser.built, HumanParser.engines_built
