"""Batch workers as processes of this machine: :class:`LocalPool`.

Example:
    >>> pool = LocalPool()
    >>> pool.start(WorkerPlan(workers=2, threads=1, cpus=1.0), parser_options, jobs)
    >>> pool.try_submit(jobs[0], attempt=1)
    True
    >>> outcomes = pool.poll(timeout=1.0)     # finished attempts, possibly none yet
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

from streamer.batch.plan import Job, JobResult, Outcome, WorkerInfo, WorkerPlan, one_line
from streamer.batch.workers import PROGRESS_EVERY_S, JobWorker

_POOL_WORKER: JobWorker | None = None


def _pool_init(parser_options: Any, threads: int, progress: Any, stop: Any) -> None:
    """Runs once in each pool process: load the model, then report progress in a thread."""
    global _POOL_WORKER
    # Ctrl-C reaches the whole process group; the driver alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = JobWorker(parser_options, threads)
    _POOL_WORKER = worker

    def report() -> None:
        # Ends quietly when the pool shuts down under it (the queue or event goes away).
        with contextlib.suppress(Exception):
            while True:
                time.sleep(PROGRESS_EVERY_S)
                if stop.is_set():
                    worker.stop()
                state = worker.progress()
                if state is not None:
                    progress.put(state)

    threading.Thread(target=report, name="streamer-batch-progress", daemon=True).start()


def _pool_run(job: Job, attempt: int) -> JobResult:
    assert _POOL_WORKER is not None, "pool process without a worker"
    return _POOL_WORKER.run(job, attempt)


class LocalPool:
    """Workers as processes of this machine (``spawn``ed: torch does not survive ``fork``).

    ``workers + streams`` processes at most, each running one job at a time. A process that
    dies (killed, out of memory) breaks a ``ProcessPoolExecutor`` for good: every job in
    flight is then reported failed ("worker process died") and a new pool is started for
    the retries. Which of them killed it cannot be told, so each counts one attempt.
    """

    kind = "local"

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._progress: Any = None
        self._stop: Any = None
        self._executor: cf.ProcessPoolExecutor | None = None
        self._running: dict[cf.Future[JobResult], tuple[Job, int]] = {}
        self._frames: dict[str, int] = {}
        self.capacity = 0
        self.workers_seen: dict[str, WorkerInfo] = {}
        self.fatal: str | None = None  # set by RayCluster only; here it comes in a JobResult

    @staticmethod
    def cpu_count() -> int:
        return os.cpu_count() or 1

    def describe(self) -> str:
        return f"local process pool on {socket.gethostname()}"

    def start(self, plan: WorkerPlan, parser_options: Any, jobs: list[Job]) -> None:
        self._plan, self._parser_options = plan, parser_options
        self.capacity = plan.total_workers
        self._progress = self._ctx.Queue()
        self._stop = self._ctx.Event()

    def _pool(self) -> cf.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(
                max_workers=self.capacity, mp_context=self._ctx, initializer=_pool_init,
                initargs=(self._parser_options, self._plan.threads, self._progress, self._stop))
        return self._executor

    def can_run(self, job: Job) -> bool:
        return True

    def why_not(self, job: Job) -> str:
        return "no worker left to run it"

    def try_submit(self, job: Job, attempt: int) -> bool:
        if len(self._running) >= self.capacity:
            return False
        future = self._pool().submit(_pool_run, job, attempt)
        self._running[future] = (job, attempt)
        return True

    def running(self) -> int:
        return len(self._running)

    def poll(self, timeout: float) -> list[Outcome]:
        done, _ = cf.wait(list(self._running), timeout=timeout,
                          return_when=cf.FIRST_COMPLETED)
        outcomes: list[Outcome] = []
        broken = False
        for future in done:
            job, attempt = self._running.pop(future)
            try:
                result = future.result()
            except cf.process.BrokenProcessPool:
                broken = True
                result = JobResult(job.key, attempt, "failed",
                                   error="worker process died (killed, or out of memory?)")
            except Exception as exc:  # noqa: BLE001 - e.g. a job that cannot be pickled
                result = JobResult(job.key, attempt, "failed",
                                   error=f"internal error: {type(exc).__name__}: "
                                         f"{one_line(exc)}")
            self._frames.pop(job.key, None)
            if result.worker and result.worker not in self.workers_seen:
                host, _, pid = result.worker.rpartition(":")
                self.workers_seen[result.worker] = WorkerInfo(
                    host, int(pid), result.threads, parsers_built=result.parsers_built)
            outcomes.append(Outcome(job, result))
        if broken:
            # Every other job in flight died with the pool; collect them now.
            for future, (job, attempt) in list(self._running.items()):
                with contextlib.suppress(Exception):
                    future.result(timeout=5)
                self._running.pop(future)
                outcomes.append(Outcome(job, JobResult(
                    job.key, attempt, "failed",
                    error="worker process died (killed, or out of memory?)")))
            assert self._executor is not None
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        return outcomes

    def progress(self) -> dict[str, int]:
        """Frames written so far by each running job (from the workers' reports)."""
        if self._progress is not None:
            while True:
                try:
                    key, _attempt, frames = self._progress.get_nowait()
                except Exception:  # noqa: BLE001 - queue.Empty, or a queue being torn down
                    break
                self._frames[key] = frames
        running = {job.key for job, _ in self._running.values()}
        return {k: v for k, v in self._frames.items() if k in running}

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def close(self, force: bool = False) -> None:
        if self._executor is not None:
            if force:
                for child in multiprocessing.active_children():
                    child.kill()
            self._executor.shutdown(wait=not force, cancel_futures=True)
            self._executor = None
