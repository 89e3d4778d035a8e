"""``run_stream.py batch --ray`` across three real Ray hosts on this machine.

The hosts are network namespaces joined by veth pairs and a bridge (tests/ray_hosts.py): a
head (10.213.0.1, no CPUs for workers: it runs the driver and Ray's control processes) and two
workers (10.213.0.2, 10.213.0.3, two CPUs each), each running its own ``ray start``, with its
own ModelScope cache. Worker w2 also has its own mount namespace in which ``hidden/`` is an
empty tmpfs, so it cannot see what the others see there. Every batch is the real command,
run inside the head's namespace against ``--ray 10.213.0.1:6379``; its ``--report`` JSON says
on which node every attempt ran. Everything is real: Ray nodes, actors in their own
processes, the tiny random-weight M2FP, PyAV, the GStreamer RTSP test server.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason
from ray_hosts import RayHosts, unavailable_reason
from test_batch import assert_same_video, decode

from streamer import Pipeline, load_config
from streamer.parsing.parser import HumanParser, ParserOptions

try:
    import ray
except ImportError:
    ray = None

ROOT = Path(__file__).resolve().parents[1]
RUN_STREAM = ROOT / "run_stream.py"
MODEL_ID = "streamer-test/m2fp-tiny"          # in the caches of w1 and w2
W1_ONLY_ID = "streamer-test/m2fp-tiny-w1"     # in w1's cache only
SETS = ["output.preset=ultrafast", "detector.type=full"]


def cache_model(cache: Path, model_id: str, model_dir: Path) -> None:
    """Lay ``model_dir`` out in ``cache`` as ModelScope's cache would hold ``model_id``."""
    snapshot = cache / "models" / model_id.replace("/", "--") / "snapshots" / "master"
    shutil.copytree(model_dir, snapshot)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, tiny_single_model: Path
          ) -> Iterator[RayHosts]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if ray is None:
        pytest.skip("ray is not installed: pip install 'streamer[ray]' to run the Ray tests")
    base = tmp_path_factory.mktemp("multihost")
    (base / "hidden").mkdir()
    cluster = RayHosts(base, head_cpus=0, worker_cpus=(2, 2), hide={"w2": [base / "hidden"]})
    try:
        for role in ("w1", "w2"):
            cache_model(base / role / "modelscope", MODEL_ID, tiny_single_model)
        cache_model(base / "w1" / "modelscope", W1_ONLY_ID, tiny_single_model)
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(hosts: RayHosts) -> RayHosts:
    """The three hosts, with any worker host an earlier test killed started again."""
    for worker in hosts.workers:
        if not any("raylet" in t for t in hosts.process_titles(worker.role)):
            hosts.restart(worker.role)
    return hosts


def reference(clip: Path, model: Path, folder: Path) -> tuple[Path, dict]:
    """The clip through ``Pipeline.run`` in this process, one thread, as a worker has."""
    parser = HumanParser(ParserOptions(model=str(model), engine="torch", threads=1))
    video = folder / f"{clip.stem}.ref.mp4"
    config = load_config(None, [f"parser.model='{model}'", "parser.engine=torch", *SETS,
                                f"output.path='{video}'", "output.progress=false"])
    return video, Pipeline(config, str(clip), parser=parser).run()


def batch_argv(*args: str | Path, report: Path, model: str = MODEL_ID) -> list[str]:
    argv = [sys.executable, str(RUN_STREAM), "batch", *map(str, args), "--model", model,
            "--engine", "torch", "--report", str(report), "--no-progress"]
    for item in SETS:
        argv += ["--set", item]
    return argv


def rows_by_name(report_path: Path) -> dict[str, dict]:
    report = json.loads(report_path.read_text())
    return {Path(row["label"]).name: row for row in report["files"]}


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the batch ended ({proc.returncode}) before {what}: "
                                 f"{out[-2000:]} {err[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class FileBatch:
    """Clips made for one test and the batch command over them."""

    folder: Path
    clips: list[Path]
    out: Path
    report: Path
    argv: list[str]


def file_batch(cluster: RayHosts, name: str, clips: list[tuple[str, int]], *,
               size: tuple[int, int], extra: tuple[str, ...] = ()) -> FileBatch:
    """``clips`` ((stem, frames) each) made in ``BASE/name/in``, and the batch over them on
    two workers of one thread each, writing ``BASE/name/out`` and ``BASE/name/report.json``.

    Example:
        >>> run = file_batch(cluster, "spread", [("a", 16)], size=(160, 120))
        >>> cluster.run("head", *run.argv).returncode
        0
    """
    folder = cluster.base / name
    inputs = folder / "in"
    inputs.mkdir(parents=True)
    made = [make_clip(inputs / f"{stem}.mp4", frames=frames, size=size) for stem, frames in clips]
    out, report = folder / "out", folder / "report.json"
    argv = batch_argv("--source", *made, "--output-dir", out, "--ray", cluster.address,
                      "--workers", "2", "--threads", "1", *extra, report=report)
    return FileBatch(folder, made, out, report, argv)


def has_worker(cluster: RayHosts, role: str) -> bool:
    """Whether a batch worker (a ``RayJobWorker`` actor process) lives on host ``role``."""
    return any(t.startswith("ray::RayJobWorker") for t in cluster.process_titles(role))


# ------------------------------------------------------------------------ placement
@pytest.mark.multihost
@pytest.mark.slow
def test_batch_spreads_over_hosts_and_matches_a_single_process(cluster: RayHosts,
                                                               tiny_single_model: Path):
    run = file_batch(cluster, "spread", [("a", 16), ("b", 12), ("c", 14)], size=(160, 120))
    folder, clips, out, report = run.folder, run.clips, run.out, run.report
    result = cluster.run("head", *run.argv)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = rows_by_name(report)
    workers = {cluster.hosts[r].ip: cluster.node_ids[r] for r in ("w1", "w2")}
    for clip in clips:
        row = rows[clip.name]
        assert row["status"] == "ok" and row["attempts"] == 1, row
        (attempt,) = row["history"]
        # Placed on a worker host (the head has no CPUs for workers), recorded exactly.
        assert attempt["node_ip"] in workers, attempt
        assert attempt["node_id"] == workers[attempt["node_ip"]] == row["node_id"]
        assert attempt["worker"].startswith(attempt["node_ip"] + ":") and not attempt["died"]
        want, summary = reference(clip, tiny_single_model, folder)
        assert_same_video(out / clip.name, want)
        metrics = json.loads((out / f"{clip.stem}.metrics.json").read_text())
        assert metrics["frames_written"] == summary["frames_written"] == len(decode(want)[0])
    assert {rows[c.name]["node_ip"] for c in clips} == set(workers), "jobs on one host only"
    processes = json.loads(report.read_text())["worker_processes"]
    assert {p["node_ip"] for p in processes} == set(workers)
    assert "Ray cluster of 3 node(s), 4 CPUs" in result.stdout
    assert not list(out.glob("*.partial*")) and not list(out.glob(".streamer-check-*"))


# ------------------------------------------------------------------------ node loss
@pytest.mark.multihost
@pytest.mark.slow
def test_worker_host_lost_mid_batch_costs_only_its_jobs_retries(cluster: RayHosts,
                                                               tiny_single_model: Path):
    # Long enough that the host dies mid-file even on a fast machine.
    run = file_batch(cluster, "loss", [(f"long{i}", 60) for i in range(2)], size=(128, 96),
                     extra=("--retries", "1"))
    folder, clips, out, report = run.folder, run.clips, run.out, run.report
    lost_ip, kept_ip = cluster.hosts["w2"].ip, cluster.hosts["w1"].ip
    lost_node = cluster.node_ids["w2"]
    proc = cluster.popen("head", *run.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Two workers, one per host, each writing its file: w2 is mid-file.
        wait_until(lambda: has_worker(cluster, "w2") and len(list(out.glob("*.partial.mp4")))
                   >= 2, 150, "both workers writing", proc)
        assert has_worker(cluster, "w1")
        time.sleep(0.5)
        cluster.kill("w2")  # raylet, workers, agents: the whole host
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    rows = rows_by_name(report)
    died = [(name, h) for name, row in rows.items() for h in row["history"] if h["died"]]
    assert died, f"no attempt died with w2: {rows}"
    for name, attempt in died:
        # The report says which attempt died, and on which node.
        assert (attempt["node_ip"], attempt["node_id"]) == (lost_ip, lost_node), attempt
        assert attempt["status"] == "failed" and lost_ip in attempt["error"]
        row = rows[name]
        assert row["attempts"] == attempt["attempt"] + 1
        assert row["history"][-1]["node_ip"] == kept_ip  # retried on the surviving host
    for clip in clips:
        row = rows[clip.name]
        assert row["status"] == "ok", row
        if clip.name not in {name for name, _ in died}:
            assert row["attempts"] == 1, row  # jobs elsewhere were not touched
        want, _ = reference(clip, tiny_single_model, folder)
        assert_same_video(out / clip.name, want)  # complete under its final name
    assert not list(out.glob("*.partial*")), "a partial output was left behind"


# ------------------------------------------------------------------------ streams
@pytest.mark.multihost
@pytest.mark.slow
def test_streams_run_on_worker_hosts_and_a_lost_one_restarts_elsewhere(cluster: RayHosts):
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    folder = cluster.base / "streams"
    folder.mkdir()
    head = cluster.hosts["head"]
    clip = make_clip(folder / "cam.mp4", frames=250, size=(160, 120), fps=25)
    # The RTSP servers run on the head, bound to its address; the workers pull from there.
    servers = [RtspServer(clip, loop=True, address=head.ip, prefix=cluster.cmd("head"),
                          mount=f"/cam{i}") for i in (1, 2)]
    config = folder / "cameras.yaml"
    out, report = folder / "rec", folder / "report.json"
    try:
        for server in servers:
            server.start()
        config.write_text("sources:\n" + "".join(
            f"  - uri: {s.url}\n    name: cam{i}\n"
            "    source: {open_timeout_s: 5, reconnect_max_attempts: 3}\n"
            for i, s in enumerate(servers, 1)))
        proc = cluster.popen("head", *batch_argv("--config", config, "--output-dir", out,
                                                 "--ray", cluster.address, "--format", "mkv",
                                                 "--retries", "2", "--threads", "1",
                                                 report=report),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            def recording(path: Path) -> bool:
                return path.is_file() and path.stat().st_size > 20_000

            wait_until(lambda: all(recording(out / f"cam{i}.mkv") for i in (1, 2)), 150,
                       "both streams recording", proc)
            assert has_worker(cluster, "w1") and has_worker(cluster, "w2")
            cluster.kill("w2")
            wait_until(lambda: any(recording(p) for p in out.glob("cam?.restart1.mkv")), 150,
                       "the lost stream recording again", proc)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        for server in servers:
            server.kill()
    assert proc.returncode == 130, stdout + stderr
    rows = rows_by_name(report)
    w1, w2 = cluster.hosts["w1"].ip, cluster.hosts["w2"].ip
    # Spread over the two worker hosts, one stream each.
    assert {rows[f"cam{i}"]["history"][0]["node_ip"] for i in (1, 2)} == {w1, w2}, rows
    lost = next(r for r in rows.values() if r["history"][0]["node_ip"] == w2)
    kept = next(r for r in rows.values() if r["history"][0]["node_ip"] == w1)
    assert lost["attempts"] == 2 and lost["history"][0]["died"], lost
    assert lost["history"][1]["node_ip"] == w1 and lost["status"] == "ok", lost
    assert kept["attempts"] == 1 and kept["status"] == "ok", kept
    name = lost["label"]
    restarted = out / f"{name}.restart1.mkv"
    assert lost["restarts"] == [str(restarted)]
    resumed = json.loads((out / f"{name}.restart1.metrics.json").read_text())
    assert len(decode(restarted)[0]) == resumed["frames_written"] >= 10
    # Each recorded: the lost host's first file keeps what reached the disk before it died.
    for i in (1, 2):
        assert len(decode(out / f"cam{i}.mkv")[0]) > 0


# ------------------------------------------------------------------------ host checks
@pytest.mark.multihost
@pytest.mark.slow
def test_a_host_that_cannot_see_inputs_output_or_model_says_so_before_any_job(
        cluster: RayHosts, tiny_single_model: Path):
    base = cluster.base
    hidden = base / "hidden"  # an empty tmpfs on w2, the real folder everywhere else
    (hidden / "in").mkdir(parents=True)
    seen = make_clip(base / "seen.mp4", frames=4, size=(64, 48))
    unseen = make_clip(hidden / "in" / "unseen.mp4", frames=4, size=(64, 48))
    model = hidden / "model"
    shutil.copytree(tiny_single_model, model)
    out, report = hidden / "out", base / "check-report.json"
    w2 = cluster.hosts["w2"].ip
    started = time.monotonic()
    result = cluster.run("head", *batch_argv("--source", seen, unseen, "--output-dir", out,
                                             "--ray", cluster.address, report=report,
                                             model=str(model)))
    took = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert lines == [
        f"error: host {w2} cannot see input {unseen}; every node reads inputs and writes "
        "outputs by path: mount them at the same path on every node",
        f"error: host {w2} cannot see the output folder {out}; every node reads inputs and "
        "writes outputs by path: mount them at the same path on every node",
        f"error: host {w2} cannot see the model {model}; every node reads inputs and writes "
        "outputs by path: mount them at the same path on every node, or give --model as a "
        "ModelScope id (each node caches it)"], result.stderr
    # Before the batch started its jobs: no worker ran, nothing was written, no report.
    assert sorted(p.name for p in out.iterdir()) == [] and not report.exists()
    assert took < 90, f"the check took {took:.0f} s"

    # A ModelScope id: each node resolves it in its own cache; w2's lacks this one.
    result = cluster.run("head", *batch_argv("--source", seen, "--output-dir", base / "out2",
                                             "--ray", cluster.address, report=report,
                                             model=W1_ONLY_ID))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    cache = cluster.hosts["w2"].modelscope_cache
    assert line.startswith(f"error: host {w2}: model {W1_ONLY_ID} is not in the ModelScope "
                           f"cache ({cache})"), line


# ------------------------------------------------------------------------ Ray Client
def test_ray_client_addresses_are_refused_with_one_line(tmp_path: Path,
                                                        tiny_single_model: Path):
    clip = make_clip(tmp_path / "c.mp4", frames=2, size=(64, 48))
    result = subprocess.run(
        [sys.executable, str(RUN_STREAM), "batch", "--source", str(clip), "--output-dir",
         str(tmp_path / "out"), "--model", str(tiny_single_model), "--ray",
         "ray://10.213.0.1:10001"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --ray ray://... (Ray Client) is not supported: the batch's driver must run on "
        "a node of the cluster; run the same command on the head node (or any node) with "
        "--ray HEAD_IP:6379, or --ray auto there"]
