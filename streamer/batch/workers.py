"""Where batch jobs run: a worker that holds one loaded model, in a local process pool or on Ray.

A :class:`ParseWorker` loads the M2FP model once and then runs jobs (one file, or one live
stream) one after another through :class:`~streamer.pipeline.Pipeline`, reusing the model. Two
backends run several of them:

- :class:`LocalPool`: a ``concurrent.futures`` process pool; each process builds its worker in
  the pool's initializer. A process that dies breaks the pool, so every job in flight counts a
  failed attempt and a fresh pool takes the retries.
- :class:`RayCluster`: one Ray actor per worker (``ray.remote(ParseWorker)``), spread over the
  cluster. File workers are a shared pool; every live stream gets an actor of its own. Ray
  restarts an actor that dies (``max_restarts``), and the job it was running is retried on a
  live worker (a stream reopens, that is, reconnects, in its restarted actor).

Both answer the same four calls, driven by :class:`streamer.batch.runner.BatchRunner`:
``try_submit(job, attempt)``, ``poll(timeout) -> [Outcome]``, ``stop()`` and ``close()``.
Ray is imported only by :class:`RayCluster`, so the rest works without it.

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
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.core.errors import ConfigError, StreamerError
from streamer.core.heap import return_large_buffers

log = logging.getLogger("streamer.batch")

# A file worker that keeps dying is given up after this many restarts (its jobs go to others).
FILE_WORKER_RESTARTS = 4
PROGRESS_EVERY_S = 0.5
RAY_INSTALL_HINT = "pip install 'streamer[ray]' (or pip install 'ray>=2.9')"


@dataclass
class Job:
    """One input of a batch: a file (parsed to the end) or a live stream (run until it ends).

    ``output`` and ``metrics`` are absolute paths for the first attempt; a stream's later
    attempts (after its worker died or it lost its source) write ``name.restartN.mp4`` beside
    them, so an earlier recording is never overwritten. ``config`` is the whole configuration
    for this input (per-source settings applied); the worker fills in the output keys.

    Example:
        >>> job = Job("0", "/data/a.mp4", "a.mp4", Path("/out/a.mp4"), Path("/out/a.metrics.json"),
        ...           load_config(None))
        >>> job.paths(1)
        (PosixPath('/out/a.mp4'), PosixPath('/out/a.metrics.json'))
    """

    key: str
    source: str
    label: str
    output: Path
    metrics: Path
    config: Any
    live: bool = False
    frames_expected: int | None = None
    labels_dir: Path | None = None
    stats_jsonl: Path | None = None
    driver_host: str = field(default_factory=socket.gethostname)

    def partial_paths(self, attempt: int) -> tuple[Path, Path]:
        """Where attempt ``attempt`` at a file writes before renaming to :meth:`paths`.

        ``NAME.partial.mp4`` for the first attempt, ``NAME.partial2.mp4`` for the second...:
        a worker cut off from the cluster (not dead) may still be writing its attempt while
        another node retries the job, so no two attempts share a file.
        """
        video, metrics = self.paths(attempt)
        tag = ".partial" if attempt <= 1 else f".partial{attempt}"
        return (video.with_name(video.stem + tag + video.suffix),
                metrics.with_name(metrics.name.replace(".json", f"{tag}.json")))

    def paths(self, attempt: int) -> tuple[Path, Path]:
        """The video and metrics paths an attempt writes to."""
        if not self.live or attempt <= 1:
            return self.output, self.metrics
        tag = f".restart{attempt - 1}"
        return (self.output.with_name(self.output.stem + tag + self.output.suffix),
                self.metrics.with_name(self.metrics.name.replace(".metrics.json",
                                                                 f"{tag}.metrics.json")))


@dataclass
class JobResult:
    """How one attempt at a job ended. ``status``: ok, failed or stopped (by the user).

    ``fatal`` marks a failure of the worker itself (it could not load the model), which no
    retry can fix: the batch stops. ``warning`` notes damaged input that was skipped.
    """

    key: str
    attempt: int
    status: str
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    warning: str | None = None
    worker: str = ""
    threads: int = 0
    output: str | None = None
    metrics: str | None = None
    summary: dict[str, Any] | None = None
    fatal: bool = False
    cpu_seconds: float = 0.0  # CPU time of the worker process (all its threads) in the job
    # Where the attempt ran (Ray only): the node's id and address. ``died``: the worker (or
    # its whole node) was lost during the attempt, as opposed to the job itself failing.
    node_id: str | None = None
    node_ip: str | None = None
    died: bool = False


@dataclass
class WorkerInfo:
    """What a worker reports once it is up: where it runs and whether the model loaded.

    On Ray, ``node_id`` and ``node_ip`` name the worker's node; machines (or network
    namespaces) may share a host name, so the name is then ``node_ip:pid``.
    """

    host: str
    pid: int
    threads: int
    error: str | None = None
    node_id: str | None = None
    node_ip: str | None = None

    @property
    def name(self) -> str:
        return f"{self.node_ip or self.host}:{self.pid}"


@dataclass
class WorkerPlan:
    """How many workers to start, and the intra-op threads and cores each one gets.

    ``workers`` is the number of file workers; each live stream gets one more worker.
    ``cpus`` is what a Ray actor reserves (may be fractional when workers outnumber cores).
    """

    workers: int
    threads: int
    cpus: float
    streams: int = 0
    total_cpus: int = 0
    retries: int = 1

    @property
    def total_workers(self) -> int:
        return self.workers + self.streams


@dataclass
class Outcome:
    """A finished attempt handed back by a backend."""

    job: Job
    result: JobResult


def one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def limit_threads(threads: int) -> None:
    """Keep every thread pool in this process to ``threads`` (set before the model loads)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


class ParseWorker:
    """Holds one loaded model and runs batch jobs with it, one at a time.

    Built once per pool process or Ray actor: the model is loaded here, in ``__init__``, and
    reused by every job. ``progress`` and ``stop`` may be called from another thread while
    ``run`` works (a Ray actor runs with two threads for that). A model that cannot be loaded
    is not raised here (that would only say "the actor died"): :meth:`ready` reports it, and
    every :meth:`run` returns it as a fatal failure.

    Example:
        >>> worker = ParseWorker(ParserOptions(model="models/single"), threads=1)
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
        self._pipeline: Any = None
        self._current: tuple[str, int] | None = None
        self._stop_requested = False

    def ready(self) -> WorkerInfo:
        return self.info

    def progress(self) -> tuple[str, int, int] | None:
        """``(job key, attempt, frames written so far)`` of the running job, if any."""
        with self._lock:
            if self._pipeline is None or self._current is None:
                return None
            return (*self._current, self._pipeline.metrics.frames_written)

    def stop(self) -> None:
        """Stop the running job (its output is finalised) and do not start another."""
        with self._lock:
            self._stop_requested = True
            if self._pipeline is not None:
                self._pipeline.stop()

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
        return result

    def _run_pipeline(self, job: Job, attempt: int, config: Any) -> dict[str, Any]:
        from streamer.pipeline import Pipeline

        pipeline = Pipeline(config, job.source, parser=self._parser)
        with self._lock:
            self._pipeline, self._current = pipeline, (job.key, attempt)
            if self._stop_requested:
                pipeline.stop()
        try:
            return pipeline.run(show_progress=False)
        finally:
            with self._lock:
                self._pipeline, self._current = None, None

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


# ------------------------------------------------------------------------ local process pool
_POOL_WORKER: ParseWorker | None = None


def _pool_init(parser_options: Any, threads: int, progress: Any, stop: Any) -> None:
    """Runs once in each pool process: load the model, then report progress in a thread."""
    global _POOL_WORKER
    # Ctrl-C reaches the whole process group; the driver alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = ParseWorker(parser_options, threads)
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
                self.workers_seen[result.worker] = WorkerInfo(host, int(pid), result.threads)
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


# ------------------------------------------------------------------------ Ray
def import_ray() -> Any:
    """Ray, or one clear error line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, which is not installed",
                          hint=RAY_INSTALL_HINT) from None
    return ray


class ClusterError(StreamerError):
    """The Ray cluster cannot be reached or used."""


class HostCheckError(ConfigError):
    """Nodes of the cluster cannot see what the batch needs; ``problems``: one line each.

    Example:
        >>> err.problems
        ['host 10.0.0.7 cannot see input /data/a.mp4; ...']
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] + (f" (and {len(problems) - 1} more problem(s))"
                                        if len(problems) > 1 else ""))
        self.problems = problems


RAY_CLIENT_REFUSED = (
    "--ray ray://... (Ray Client) is not supported: the batch's driver must run on a node of "
    "the cluster")
RAY_CLIENT_HINT = ("run the same command on the head node (or any node) with --ray HEAD_IP:6379, "
                   "or --ray auto there")
SHARED_STORAGE_HINT = ("every node reads inputs and writes outputs by path: mount them at the "
                       "same path on every node")


@dataclass
class HostNeeds:
    """What every node that may run a worker must see, as the driver sees it.

    ``inputs``: (path, size in bytes) of each input file; ``folder``: the batch's output
    folder and ``marker``, the name of a file the driver wrote there (so a node with a folder
    of the same name on its own disk is caught too); ``model``: an absolute model directory
    or a ModelScope id, which the node resolves into its own cache (``MODELSCOPE_CACHE``).

    Example:
        >>> check_host(HostNeeds([("/data/a.mp4", 1234)], "/out", ".check", "/models/m"))
        []
    """

    inputs: list[tuple[str, int]]
    folder: str
    marker: str
    model: str


def _more(items: list[str], what: str) -> str:
    return f" (and {len(items) - 1} more {what})" if len(items) > 1 else ""


def check_host(needs: HostNeeds, host: str) -> list[str]:
    """Runs on one node: one line per kind of thing that node cannot see (none: ``[]``).

    Fast and light: it stats paths and imports torch only to resolve a ModelScope id.
    """
    problems: list[str] = []
    missing = [path for path, size in needs.inputs
               if not (os.path.isfile(path) and os.access(path, os.R_OK))]
    if missing:
        problems.append(f"host {host} cannot see input {missing[0]}{_more(missing, 'inputs')}"
                        f"; {SHARED_STORAGE_HINT}")
    different = [path for path, size in needs.inputs
                 if path not in missing and os.path.getsize(path) != size]
    if different:
        problems.append(f"host {host} sees a different file at {different[0]} (not the size "
                        f"the driver sees){_more(different, 'inputs')}; {SHARED_STORAGE_HINT}")
    folder = Path(needs.folder)
    if not (folder / needs.marker).is_file():
        what = "a different folder at" if folder.is_dir() else "the output folder"
        problems.append(f"host {host} cannot see {what} {folder}; {SHARED_STORAGE_HINT}")
    elif not os.access(folder, os.W_OK | os.X_OK):
        problems.append(f"host {host} cannot write in the output folder {folder}; make it "
                        "writable for the user Ray runs as on every node")
    if needs.model.startswith("/"):
        model = Path(needs.model)
        if not (model / "configuration.json").is_file():
            problems.append(f"host {host} cannot see the model {model}; {SHARED_STORAGE_HINT}, "
                            "or give --model as a ModelScope id (each node caches it)")
    else:
        from streamer.m2fp.checkpoint import resolve_model_dir

        try:
            resolve_model_dir(needs.model)
        except StreamerError as exc:
            problems.append(f"host {host}: {exc}")
    return problems


class RayParseWorker(ParseWorker):
    """A :class:`ParseWorker` as a Ray actor: it also knows its node (id and address)."""

    def __init__(self, parser_options: Any, threads: int) -> None:
        super().__init__(parser_options, threads)
        import ray

        self.info.node_id = ray.get_runtime_context().get_node_id()
        self.info.node_ip = ray.util.get_node_ip_address()


@dataclass
class _Slot:
    """One Ray actor and what it is doing: starting (probe pending), idle, busy or dead."""

    actor: Any
    name: str
    dedicated_to: str | None = None
    probe: Any = None
    job: tuple[Job, int] | None = None
    ref: Any = None
    info: WorkerInfo | None = None
    dead: bool = False
    last_error: str | None = None
    ran_on: WorkerInfo | None = None  # the incarnation the current job was handed to
    lost_at: float | None = None  # when its worker died (until it is back)

    @property
    def idle(self) -> bool:
        return not self.dead and self.probe is None and self.ref is None


class RayCluster:
    """Workers as Ray actors: a shared pool for files, one dedicated actor per live stream.

    ``address`` is what ``ray.init`` takes: ``None`` joins the cluster named by
    ``RAY_ADDRESS`` or started on this machine by ``ray start``, or starts a private one;
    ``"auto"`` joins an existing cluster only; ``"local"`` always starts a private one;
    ``"HOST:PORT"`` joins that cluster (``ray://`` Ray Client addresses are refused with one
    line: the driver must run on a node of the cluster). If Ray is already
    initialised in this process (tests, notebooks) that connection is used and left open.

    Example:
        >>> cluster = RayCluster("local")
        >>> cluster.cpu_count()
        2
    """

    kind = "ray"

    def __init__(self, address: str | None = None) -> None:
        given = address or os.environ.get("RAY_ADDRESS", "")
        if given.strip().lower().startswith("ray://"):
            raise ConfigError(RAY_CLIENT_REFUSED, hint=RAY_CLIENT_HINT)
        ray = import_ray()
        self.ray = ray
        self.owned = False
        if not ray.is_initialized():
            _check_reachable(address)
            # Ray logs its own start-up at INFO; the batch's own lines are enough here.
            logging.getLogger("ray").setLevel(logging.ERROR)
            try:
                ray.init(address=address or None, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "RAY_ADDRESS / this machine"
                raise ClusterError(
                    f"cannot connect to a Ray cluster at {where} ({one_line(exc, 160)})",
                    hint="start one with `ray start --head` and pass its address to --ray "
                         "(with RAY_AUTH_MODE=token set if the cluster uses token "
                         "authentication), or use --ray local for a private one") from None
            self.owned = True
        self.address = address
        self._described: str | None = None
        self._slots: list[_Slot] = []
        self._by_ref: dict[Any, _Slot] = {}
        self._progress_refs: dict[Any, _Slot] = {}
        self._frames: dict[str, int] = {}
        self._last_progress = 0.0
        self.workers_seen: dict[str, WorkerInfo] = {}
        # A worker that cannot load the model: no retry helps, the batch stops with this.
        self.fatal: str | None = None

    def cpu_count(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def describe(self) -> str:
        if self._described is None:
            nodes = [n for n in self.ray.nodes() if n.get("Alive")]
            self._described = (f"Ray cluster of {len(nodes)} node(s), {self.cpu_count()} CPUs "
                               f"({self.ray.get_runtime_context().gcs_address})")
        return self._described

    def check_hosts(self, jobs: list[Job], model: str, timeout: float = 180.0) -> None:
        """Ask every node that can run a worker whether it sees the inputs, the output
        folder and the model; raise :class:`HostCheckError` (one line per problem) if not.

        Runs one zero-CPU task pinned to each such node, before any worker starts.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        inputs = sorted({(j.source, os.path.getsize(j.source)) for j in jobs
                         if _is_local_file(j.source) and os.path.isfile(j.source)})
        nodes = self._worker_nodes()
        if not nodes:
            return  # nowhere to run a worker: poll() says so after a minute
        folder = Path(os.path.commonpath([str(j.output.parent) for j in jobs]))
        marker = folder / f".streamer-check-{os.getpid()}-{time.monotonic_ns()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_text("written by the batch's driver to check that every node sees "
                              "this folder\n")
        except OSError as exc:
            from streamer.core.errors import SinkError

            raise SinkError(f"cannot write in the output folder {folder} "
                            f"({exc.strerror or exc})",
                            hint="choose a writable --output-dir") from None
        task = ray.remote(check_host)
        refs = {}
        try:
            needs = HostNeeds(inputs, str(folder), marker.name, model)
            for node in nodes:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ref = task.options(num_cpus=0, scheduling_strategy=strategy,
                                   max_retries=0).remote(needs, node["NodeManagerAddress"])
                refs[ref] = node
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
            problems: list[str] = []
            for ref, node in refs.items():  # in the nodes' order, by address
                where = node["NodeManagerAddress"]
                if ref not in ready:
                    log.warning("host %s did not answer the check within %.0f s", where,
                                timeout)
                    continue
                try:
                    problems += ray.get(ref)
                except ray.exceptions.RayError as exc:
                    log.warning("host %s did not answer the check (%s)", where,
                                _ray_reason(exc))
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()
        if problems:
            raise HostCheckError(problems)

    def start(self, plan: WorkerPlan, parser_options: Any, jobs: list[Job]) -> None:
        self.describe()  # while connected: close() may shut Ray down
        self.check_hosts(jobs, str(parser_options.model))
        self._plan_cpus = plan.cpus
        remote = self.ray.remote(RayParseWorker)
        common = {"num_cpus": plan.cpus, "max_concurrency": 2, "max_task_retries": 0}
        place = self._spreader(plan.cpus)
        for i in range(plan.workers):
            actor = remote.options(**common, max_restarts=FILE_WORKER_RESTARTS,
                                   scheduling_strategy=place()).remote(
                parser_options, plan.threads)
            self._slots.append(_Slot(actor, f"worker-{i}"))
        for job in jobs:
            if job.live:
                # Each death of a stream's actor is one of the stream's retries.
                actor = remote.options(**common, max_restarts=plan.retries,
                                       scheduling_strategy=place()).remote(
                    parser_options, plan.threads)
                self._slots.append(_Slot(actor, f"stream-{job.label}", dedicated_to=job.key))
        for slot in self._slots:
            self._probe(slot)
        self._started = time.monotonic()
        self._warned_pending = False

    def _worker_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes with CPUs for workers, by address."""
        nodes = [n for n in self.ray.nodes()
                 if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        return sorted(nodes, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))

    def _spreader(self, cpus: float) -> Any:
        """Where each next actor goes: the node with the most CPUs not yet given out.

        Ray's own ``SPREAD`` is best effort (each raylet a request passes through re-picks
        with its own round robin): two actors on two free nodes were seen to land on one.
        So the actors are spread here, each pinned softly to its node: an actor restarted
        after its node died is placed wherever Ray finds room.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        free = {n["NodeID"]: float(n["Resources"]["CPU"]) for n in self._worker_nodes()}

        def place() -> Any:
            if not free:
                return "SPREAD"
            node = max(free, key=lambda n: free[n])  # the first of the freest, by address
            free[node] -= cpus
            return NodeAffinitySchedulingStrategy(node, soft=True)

        return place

    def _probe(self, slot: _Slot) -> None:
        slot.probe = slot.actor.ready.remote()
        self._by_ref[slot.probe] = slot

    def actor_for(self, key: str) -> Any:
        """The actor handle running (or dedicated to) job ``key``, or ``None``."""
        for slot in self._slots:
            if slot.dedicated_to == key or (slot.job is not None and slot.job[0].key == key):
                return slot.actor
        return None

    def can_run(self, job: Job) -> bool:
        if job.live:
            return any(s.dedicated_to == job.key and not s.dead for s in self._slots)
        return any(s.dedicated_to is None and not s.dead for s in self._slots)

    def why_not(self, job: Job) -> str:
        slots = [s for s in self._slots if s.dedicated_to == (job.key if job.live else None)]
        reasons = [s.last_error for s in slots if s.last_error]
        return reasons[-1] if reasons else "no worker left to run it"

    def try_submit(self, job: Job, attempt: int) -> bool:
        for slot in self._slots:
            if slot.idle and slot.dedicated_to == (job.key if job.live else None):
                slot.job, slot.ran_on = (job, attempt), slot.info
                slot.ref = slot.actor.run.remote(job, attempt)
                self._by_ref[slot.ref] = slot
                return True
        return False

    def running(self) -> int:
        return sum(1 for s in self._slots if s.ref is not None)

    def poll(self, timeout: float) -> list[Outcome]:
        ray = self.ray
        refs = list(self._by_ref)
        if not refs:
            time.sleep(timeout)
            return []
        if (not self._warned_pending and time.monotonic() - self._started > 60
                and all(s.info is None for s in self._slots)):
            self._warned_pending = True
            log.warning("no worker has started after 60 s: Ray may have no room for %s CPUs "
                        "per worker (free now: %s); see `ray status`",
                        self._plan_cpus, ray.available_resources().get("CPU", 0))
        for slot in self._slots:
            if slot.lost_at is not None and time.monotonic() - slot.lost_at > 60:
                slot.lost_at = None  # once
                log.warning("%s died and has not been restarted after 60 s: Ray may have no "
                            "room for %s CPUs on the nodes left (free now: %s); run with "
                            "--threads 1 so that each worker reserves one CPU, or add a node",
                            slot.name, self._plan_cpus,
                            ray.available_resources().get("CPU", 0))
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        outcomes: list[Outcome] = []
        for ref in ready:
            slot = self._by_ref.pop(ref)
            if ref is slot.probe:
                self._probed(slot, ref)
            else:
                outcomes.append(self._finished(slot, ref))
        return outcomes

    def _probed(self, slot: _Slot, ref: Any) -> None:
        ray = self.ray
        slot.probe = None
        try:
            info = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.2)  # restarting: ask again
            self._probe(slot)
            return
        except ray.exceptions.RayActorError as exc:
            slot.dead, slot.lost_at = True, None
            slot.last_error = f"worker gone ({_ray_reason(exc)})"
            return
        slot.info, slot.lost_at = info, None
        self.workers_seen[info.name] = info
        if info.error is not None:
            slot.dead = True
            slot.last_error = info.error
            self.fatal = self.fatal or info.error

    def _finished(self, slot: _Slot, ref: Any) -> Outcome:
        ray = self.ray
        assert slot.job is not None
        job, attempt = slot.job
        slot.job, slot.ref = None, None
        self._frames.pop(job.key, None)
        try:
            result: JobResult = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            where = slot.ran_on
            lost = f" on {where.node_ip}" if where and where.node_ip else ""
            result = JobResult(job.key, attempt, "failed",
                               error=f"worker died{lost} ({_ray_reason(exc)})",
                               worker=where.name if where else slot.name, died=True,
                               node_id=where.node_id if where else None,
                               node_ip=where.node_ip if where else None)
            slot.lost_at = time.monotonic()
            self._probe(slot)  # answers once Ray has restarted it, or says it is gone
        except ray.exceptions.RayError as exc:
            result = JobResult(job.key, attempt, "failed",
                               error=f"Ray error: {_ray_reason(exc)}")
        return Outcome(job, result)

    def progress(self) -> dict[str, int]:
        """Frames written so far by each running job (asked of the actors twice a second)."""
        ray = self.ray
        if self._progress_refs:
            ready, _ = ray.wait(list(self._progress_refs), num_returns=len(self._progress_refs),
                                timeout=0)
            for ref in ready:
                self._progress_refs.pop(ref)
                with contextlib.suppress(ray.exceptions.RayError):
                    state = ray.get(ref)
                    if state is not None:
                        self._frames[state[0]] = state[2]
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S and not self._progress_refs:
            self._last_progress = now
            for slot in self._slots:
                if slot.ref is not None:
                    self._progress_refs[slot.actor.progress.remote()] = slot
        running = {s.job[0].key for s in self._slots if s.job is not None}
        return {k: v for k, v in self._frames.items() if k in running}

    def stop(self) -> None:
        for slot in self._slots:
            if slot.ref is not None:
                slot.actor.stop.remote()

    def close(self, force: bool = False) -> None:
        for slot in self._slots:
            with contextlib.suppress(Exception):
                self.ray.kill(slot.actor)
        self._slots.clear()
        if self.owned:
            self.ray.shutdown()


def _is_local_file(source: str) -> bool:
    return "://" not in source and not source.isdigit() and not source.startswith("/dev/video")


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (``ray.init`` would retry for minutes)."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray expects HOST:PORT, auto or local, "
                          f"not {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})",
            hint="check the head node's address and port (`ray start --head` prints them)"
        ) from None


def _ray_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        # Ray's messages open with a class name line, then the reason.
        if "actor" in line.lower() or "worker" in line.lower():
            return one_line(line, 160)
    return one_line(text.splitlines()[0] if text else type(exc).__name__, 160)
