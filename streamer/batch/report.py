"""What a batch did: one :class:`FileRow` per input, the :class:`BatchReport`, the end table.

Example:
    >>> print(format_table(report))
    status   frames  seconds  tries  input
    ok          241     52.1      1  chaplin_bw.mp4
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.batch.plan import Job, JobResult, WorkerInfo, WorkerPlan


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
            "streams_per_worker": self.plan.streams_per_worker,
            "threads_per_worker": self.plan.threads, "cpus_per_worker": self.plan.cpus,
            "cpus": self.plan.total_cpus, "seconds": round(self.seconds, 3),
            "frames": self.frames,
            "fps": round(self.frames / self.seconds, 3) if self.seconds > 0 else 0.0,
            "ok": sum(r.status == "ok" for r in self.rows), "failed": len(self.failed),
            "fatal": self.fatal, "stopped_by_signal": self.stopped_by,
            "worker_processes": [dataclasses.asdict(w) for w in self.workers],
            "files": [r.to_dict() for r in self.rows],
        }


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
