"""What a batch will do: its jobs (one per input), their outputs, and the worker plan.

:func:`plan_batch` turns the command line's sources (and a config's ``sources:`` list) into
:class:`Job` s with their output paths and per-source configuration; :func:`plan_workers`
splits the cores between file workers and stream workers. :class:`JobResult`,
:class:`WorkerInfo` and :class:`Outcome` are what workers hand back.

Example:
    >>> jobs, base = plan_batch(["videos/*.mp4"], "out", config_path=None, overrides=[])
    >>> plan_workers(8, files=len(jobs), streams=0).threads
    2
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.apps.inputs import is_stream_uri, load_sources, stream_name
from streamer.config import Config
from streamer.core.errors import ConfigError

OUTPUT_FORMATS = ("mp4", "mkv")


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

    @property
    def shares_a_model(self) -> bool:
        """Whether this stream can run beside others on one model (``--streams-per-worker``):
        a live stream that shows every captured frame (``output.frames: all``) with the
        newest-frame buffer, which is what the shared parse scheduler serves."""
        return (self.live and self.config.output.frames == "all"
                and self.config.buffer.policy in ("auto", "latest"))

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
    # HumanParser.built / .engines_built of the worker's process when the attempt ended:
    # how many models that process really constructed.
    parsers_built: int = 0
    engines_built: int = 0


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
    parsers_built: int = 0  # models this process has constructed so far

    @property
    def name(self) -> str:
        return f"{self.node_ip or self.host}:{self.pid}"


@dataclass
class WorkerPlan:
    """How many workers to start, and the intra-op threads and cores each one gets.

    ``workers`` is the number of file workers; the ``streams`` live streams get
    ``stream_workers`` more (one each, or one per ``streams_per_worker`` of them, see
    :func:`stream_groups`). ``cpus`` is what a Ray actor reserves (may be fractional when
    workers outnumber cores).
    """

    workers: int
    threads: int
    cpus: float
    streams: int = 0
    total_cpus: int = 0
    retries: int = 1
    streams_per_worker: int = 1
    stream_workers: int = -1  # -1: one per stream

    def __post_init__(self) -> None:
        if self.stream_workers < 0:
            self.stream_workers = self.streams

    @property
    def total_workers(self) -> int:
        return self.workers + self.stream_workers


@dataclass
class Outcome:
    """A finished attempt handed back by a backend."""

    job: Job
    result: JobResult


def one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
                 threads: int | None = None, retries: int = 1, streams_per_worker: int = 1,
                 stream_workers: int | None = None) -> WorkerPlan:
    """Split ``cpus`` cores: N workers (the stream workers, the rest for files), C/N threads
    each.

    The ``streams`` live streams need ``stream_workers`` workers (default: one each; see
    :func:`stream_groups` for ``streams_per_worker`` > 1). By default there is one file
    worker per core left after them (at most one per file), each with ``cpus // N``
    intra-op threads, at least one. ``workers`` and ``threads`` override either side. A Ray
    actor reserves ``min(threads, cpus / N)`` CPUs, so N actors always fit on the cluster
    even when they outnumber its cores.

    Example:
        >>> plan_workers(8, files=3, streams=0)
        WorkerPlan(workers=3, threads=2, cpus=2, streams=0, total_cpus=8, retries=1, \
streams_per_worker=1, stream_workers=0)
        >>> plan_workers(2, files=10, streams=0, workers=1).threads
        2
    """
    if stream_workers is None:
        stream_workers = streams
    if workers is None:
        per = threads or 1
        workers = max(1, cpus // per - stream_workers)
    workers = min(max(1, workers), files) if files else 0
    total = max(1, workers + stream_workers)
    if not threads:
        threads = max(1, cpus // total)
    cpus_each = min(float(threads), cpus / total)
    if cpus_each.is_integer():
        cpus_each = int(cpus_each)
    return WorkerPlan(workers=workers, threads=threads, cpus=cpus_each, streams=streams,
                      total_cpus=cpus, retries=retries, streams_per_worker=streams_per_worker,
                      stream_workers=stream_workers)


def stream_groups(jobs: list[Job], streams_per_worker: int = 1) -> list[list[Job]]:
    """The live jobs of a batch, grouped by the worker that runs them.

    With ``streams_per_worker`` K > 1, up to K streams that can share a model
    (:attr:`Job.shares_a_model`) go to one worker, in the order given; every other stream
    (and every stream when K is 1) has a worker of its own.

    Example:
        >>> [[j.label for j in g] for g in stream_groups(cams, 2)]
        [['door', 'yard'], ['gate']]
    """
    live = [j for j in jobs if j.live]
    if streams_per_worker <= 1:
        return [[j] for j in live]
    shared = [j for j in live if j.shares_a_model]
    groups = [shared[i:i + streams_per_worker] for i in range(0, len(shared), streams_per_worker)]
    return groups + [[j] for j in live if not j.shares_a_model]


def parse_streams_per_worker(value: object) -> int:
    """``--streams-per-worker``'s value as a whole number >= 1, or a :class:`ConfigError`.

    Example:
        >>> parse_streams_per_worker("4")
        4
    """
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--streams-per-worker must be a whole number of 1 or more, "
                          f"not {value!r}",
                          hint="give how many live streams one Ray worker runs on its one "
                               "model, e.g. --streams-per-worker 4")
    return int(text)
