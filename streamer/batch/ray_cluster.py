"""Batch workers as Ray actors across a cluster: :class:`RayCluster`.

One actor per file worker (a shared pool) and one per live stream, spread over the nodes and
restarted by Ray when they die; the job an actor was running is retried on a live worker.
Ray is imported here only when a :class:`RayCluster` is made.

Example:
    >>> cluster = RayCluster("local")
    >>> cluster.cpu_count()
    2
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.batch.hosts import HostCheckError, HostNeeds, check_host, is_local_file
from streamer.batch.plan import (
    Job,
    JobResult,
    Outcome,
    WorkerInfo,
    WorkerPlan,
    one_line,
    stream_groups,
)
from streamer.batch.workers import PROGRESS_EVERY_S, JobWorker, StreamsWorker
from streamer.core.errors import ConfigError, StreamerError

log = logging.getLogger("streamer.batch")

# A file worker that keeps dying is given up after this many restarts (its jobs go to others).
FILE_WORKER_RESTARTS = 4
RAY_INSTALL_HINT = "pip install 'streamer[ray]' (or pip install 'ray>=2.9')"


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


RAY_CLIENT_REFUSED = (
    "--ray ray://... (Ray Client) is not supported: the batch's driver must run on a node of "
    "the cluster")
RAY_CLIENT_HINT = ("run the same command on the head node (or any node) with --ray HEAD_IP:6379, "
                   "or --ray auto there")


def _on_node(info: WorkerInfo) -> None:
    """Fill in the node (id and address) that this actor's process runs on."""
    import ray

    info.node_id = ray.get_runtime_context().get_node_id()
    info.node_ip = ray.util.get_node_ip_address()


class RayJobWorker(JobWorker):
    """A :class:`JobWorker` as a Ray actor: it also knows its node (id and address)."""

    def __init__(self, parser_options: Any, threads: int) -> None:
        super().__init__(parser_options, threads)
        _on_node(self.info)


class RayStreamsWorker(StreamsWorker):
    """A :class:`StreamsWorker` (several live streams, one model) as a Ray actor."""

    def __init__(self, parser_options: Any, threads: int, scheduler_options: Any = None) -> None:
        super().__init__(parser_options, threads, scheduler_options)
        _on_node(self.info)


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
    """Workers as Ray actors: a shared pool for files, one dedicated actor per live stream
    (or per group of up to ``WorkerPlan.streams_per_worker`` streams, on one model).

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
                         if is_local_file(j.source) and os.path.isfile(j.source)})
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
        remote = self.ray.remote(RayJobWorker)
        common = {"num_cpus": plan.cpus, "max_concurrency": 2, "max_task_retries": 0}
        place = self._spreader(plan.cpus)
        for i in range(plan.workers):
            actor = remote.options(**common, max_restarts=FILE_WORKER_RESTARTS,
                                   scheduling_strategy=place()).remote(
                parser_options, plan.threads)
            self._slots.append(_Slot(actor, f"worker-{i}"))
        for group in stream_groups(jobs, plan.streams_per_worker):
            # Each death of a stream's actor is one of the stream's retries. With
            # --streams-per-worker K > 1 one actor runs its group's streams side by side on
            # one model: one slot per stream, all on that actor, each run in its own thread.
            if plan.streams_per_worker > 1:
                options = {**common, "max_concurrency": plan.streams_per_worker + 1}
                kind = self.ray.remote(RayStreamsWorker)
            else:
                options, kind = common, remote
            extra = (group[0].config.scheduler,) if plan.streams_per_worker > 1 else ()
            actor = kind.options(**options, max_restarts=plan.retries,
                                 scheduling_strategy=place()).remote(
                parser_options, plan.threads, *extra)
            for job in group:
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
                    assert slot.job is not None
                    self._progress_refs[slot.actor.progress.remote(slot.job[0].key)] = slot
        running = {s.job[0].key for s in self._slots if s.job is not None}
        return {k: v for k, v in self._frames.items() if k in running}

    def stop(self) -> None:
        asked: list[Any] = []
        for slot in self._slots:
            if slot.ref is not None and not any(slot.actor is a for a in asked):
                slot.actor.stop.remote()  # once per actor: it stops all of its streams
                asked.append(slot.actor)

    def close(self, force: bool = False) -> None:
        for slot in self._slots:  # an actor of several streams is killed once per stream
            with contextlib.suppress(Exception):
                self.ray.kill(slot.actor)
        self._slots.clear()
        if self.owned:
            self.ray.shutdown()


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
