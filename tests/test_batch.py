"""Batch runs on a real local Ray cluster and on a real process pool, against single runs.

Everything is real: clips cut from ../shared/media/videos (generated clips when it is absent),
the tiny random-weight M2FP, PyAV decoding and encoding, Ray actors in their own processes
(``ray.init(address="local", num_cpus=2)``) and spawned pool processes. Outputs are compared
with ``Pipeline.run`` of the same file in this process, frame by decoded frame.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import (
    SHARED_VIDEOS,
    RtspServer,
    first_frames,
    is_fast_start,
    make_clip,
    rtsp_unavailable_reason,
)

from streamer import Pipeline, load_config
from streamer.apps.inputs import stream_name
from streamer.batch.plan import stream_groups
from streamer.batch.pool import LocalPool
from streamer.batch.ray_cluster import RayCluster
from streamer.batch.runner import (
    BatchRunner,
    BatchSettings,
    format_table,
    plan_batch,
    plan_workers,
)
from streamer.core.errors import ConfigError
from streamer.core.metrics import RunMetrics
from streamer.parsing.parser import HumanParser, ParserOptions

try:
    import ray
except ImportError:  # the batch itself works without Ray; only these tests need it
    ray = None

ROOT = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed: pip install "
                               "'streamer[ray]' to run the Ray tests")
# (clip, frames kept, width): short cuts, small enough to parse in a few seconds.
REAL_CLIPS = [("mmaction2_basketball.mp4", 10, 426), ("chaplin_bw.mp4", 8, 480),
              ("mmaction2_two_people_indoor.mp4", 6, 480)]


def tiny_sets(model: Path) -> list[str]:
    # x264's lookahead (mb-tree, in the default veryfast preset) does not give the same bits
    # twice in this build, not even for two single-process runs of one file; ultrafast and
    # superfast do, so outputs can be compared decoded frame by frame.
    return [f"parser.model='{model}'", "parser.engine=torch", "output.preset=ultrafast"]


def decode(path: Path | str) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return ([f.to_ndarray(format="rgb24") for f in frames],
            [float(f.pts * f.time_base) for f in frames])


def assert_same_video(got: Path | str, want: Path | str) -> None:
    got_frames, got_times = decode(got)
    want_frames, want_times = decode(want)
    assert len(got_frames) == len(want_frames) > 0
    assert got_times == pytest.approx(want_times, abs=1e-6)
    for i, (a, b) in enumerate(zip(got_frames, want_frames, strict=True)):
        assert np.array_equal(a, b), f"{got}: frame {i} differs from the single-process run"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three short real clips (generated ones when ../shared/media is absent)."""
    folder = tmp_path_factory.mktemp("batch-in")
    if all((SHARED_VIDEOS / name).is_file() for name, _, _ in REAL_CLIPS):
        return [first_frames(SHARED_VIDEOS / name, folder / name, frames, width=width)
                for name, frames, width in REAL_CLIPS]
    return [make_clip(folder / f"gen{i}.mp4", frames=12 + 4 * i, size=(320, 240))
            for i in range(3)]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, clips: list[Path],
               tiny_single_model: Path) -> dict[str, tuple[Path, dict]]:
    """Each clip through ``Pipeline.run`` in this process, one thread (as a batch worker has)."""
    folder = tmp_path_factory.mktemp("batch-ref")
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch", threads=1))
    out = {}
    for clip in clips:
        video = folder / f"{clip.stem}.mp4"
        config = load_config(None, [*tiny_sets(tiny_single_model), f"output.path='{video}'",
                                    "output.progress=false"])
        out[clip.name] = (video, Pipeline(config, str(clip), parser=parser).run())
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    if ray is None:
        pytest.skip("ray is not installed: pip install 'streamer[ray]' to run the Ray tests")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def corrupt_file(folder: Path) -> Path:
    """An MP4 header followed by noise (the same noise every run)."""
    bad = folder / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(7).bytes(4096))
    return bad


def check_batch_against_references(report, clips, references, out: Path) -> None:
    rows = {Path(row.job.source).name: row for row in report.rows}
    for clip in clips:
        row = rows[clip.name]
        assert row.status == "ok", row.errors
        assert row.job.output == out / f"{clip.stem}.mp4"
        want_video, want_summary = references[clip.name]
        assert_same_video(row.job.output, want_video)
        metrics = json.loads(row.job.metrics.read_text())
        assert metrics["frames_written"] == want_summary["frames_written"]
        assert metrics["frames_parsed"] == want_summary["frames_parsed"]
        assert row.result.threads == 1  # 2 workers on 2 cores: one intra-op thread each
    assert not list(out.glob("*.partial*")), "temporary outputs left behind"


# ------------------------------------------------------------------------ planning
def test_outputs_mirror_input_folders_and_refuse_collisions(tmp_path: Path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        make_clip(tmp_path / sub / "x.mp4", frames=2, size=(64, 48))
    jobs, _ = plan_batch([str(tmp_path / "*" / "x.mp4")], tmp_path / "out", config_path=None,
                         overrides=[])
    assert [j.output for j in jobs] == [tmp_path / "out/a/x.mp4", tmp_path / "out/b/x.mp4"]
    assert [j.metrics.name for j in jobs] == ["x.metrics.json"] * 2
    assert [j.frames_expected for j in jobs] == [2, 2]
    (tmp_path / "a" / "x.mkv").write_bytes(b"")
    with pytest.raises(ConfigError, match="would both write"):
        plan_batch([str(tmp_path / "a")], tmp_path / "out", config_path=None, overrides=[],
                   fmt="mkv")
    with pytest.raises(ConfigError, match="would overwrite an input"):
        plan_batch([str(tmp_path / "a" / "x.mp4")], tmp_path / "a", config_path=None,
                   overrides=[])
    with pytest.raises(ConfigError, match="no files match"):
        plan_batch([str(tmp_path / "*.avi")], tmp_path / "out", config_path=None, overrides=[])
    assert stream_name("rtsp://user:pw@cam1:8554/live/main") == "cam1_8554_live_main"


def test_thread_budget_is_cores_over_workers():
    assert plan_workers(2, files=3, streams=0) == plan_workers(2, 3, 0, workers=2)
    plan = plan_workers(2, files=3, streams=0)
    assert (plan.workers, plan.threads, plan.cpus) == (2, 1, 1)
    plan = plan_workers(2, files=3, streams=0, workers=1)
    assert (plan.workers, plan.threads, plan.cpus) == (1, 2, 2)
    plan = plan_workers(16, files=3, streams=0)  # never more workers than files
    assert (plan.workers, plan.threads) == (3, 5)
    plan = plan_workers(8, files=10, streams=2)  # each stream has its own worker
    assert (plan.workers, plan.streams, plan.threads) == (6, 2, 1)
    plan = plan_workers(8, files=10, streams=4, streams_per_worker=2, stream_workers=2)
    assert (plan.workers, plan.stream_workers, plan.total_workers, plan.threads) == (6, 2, 8, 1)
    plan = plan_workers(2, files=5, streams=0, workers=3)  # more workers than cores
    assert plan.threads == 1 and plan.cpus == pytest.approx(2 / 3)


def test_sources_from_config_carry_their_own_settings(tmp_path: Path):
    clip = make_clip(tmp_path / "c.mp4", frames=2, size=(64, 48))
    config = tmp_path / "streams.yaml"
    config.write_text(
        "sources:\n"
        "  - rtsp://cam1:8554/live\n"
        f"  - uri: {clip}\n    name: paced\n    source: {{realtime: true}}\n"
        "    output: {frames: parsed}\n"
        "detector: {type: full}\n")
    jobs, base = plan_batch([], tmp_path / "out", config_path=str(config),
                            overrides=["detector.every=2"])
    assert [(j.label, j.live) for j in jobs] == [("cam1_8554_live", True), ("paced", True)]
    assert jobs[1].config.output.frames == "parsed" and jobs[0].config.output.frames == "all"
    assert all(j.config.detector.every == 2 and j.config.detector.type == "full" for j in jobs)
    assert jobs[1].paths(2)[0] == tmp_path / "out" / "paced.restart1.mp4"
    # --streams-per-worker: a stream that writes only parsed frames keeps a worker of its own.
    assert [[j.label for j in g] for g in stream_groups(jobs + jobs[:1], 2)] == [
        ["cam1_8554_live", "cam1_8554_live"], ["paced"]]
    assert [len(g) for g in stream_groups(jobs, 1)] == [1, 1]
    config.write_text("sources:\n  - uri: a.mp4\n    parser: {threads: 3}\n")
    with pytest.raises(ConfigError, match="parser settings apply to all sources"):
        plan_batch([], tmp_path / "out", config_path=str(config), overrides=[])


# ------------------------------------------------------------------------ Ray
@needs_ray
def test_ray_batch_matches_single_process_and_reports_a_corrupt_file(
        ray_cluster, tmp_path: Path, clips, references, tiny_single_model: Path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = corrupt_file(bad_dir)
    out = tmp_path / "out"
    jobs, base = plan_batch([str(c) for c in clips] + [str(bad)], out, config_path=None,
                            overrides=tiny_sets(tiny_single_model))
    cluster = RayCluster()
    report = BatchRunner(jobs, base, BatchSettings(retries=1, progress=False),
                         backend=cluster).run()
    assert not cluster.owned  # the test's own ray.init was used, and left running
    assert (report.plan.workers, report.plan.threads, report.plan.cpus) == (2, 1, 1)
    # Inputs from two folders: outputs keep their path below the common folder.
    common = Path(os.path.commonpath([str(clips[0].parent), str(bad_dir)]))
    check_batch_against_references(report, clips, references,
                                   out / clips[0].parent.relative_to(common))
    row = next(r for r in report.rows if r.job.source == str(bad))
    assert row.status == "failed" and row.attempts == 2
    assert "cannot read" in row.errors[-1] and "\n" not in row.errors[-1]
    # Two actors took the four files: each loaded the model once and kept it for the next.
    assert len({r.result.worker for r in report.rows}) <= 2
    table = format_table(report)
    assert "failed" in table and "4 inputs: 3 ok, 1 failed" in table


@needs_ray
def test_killed_actor_is_restarted_and_its_file_completes(ray_cluster, tmp_path: Path,
                                                          tiny_single_model: Path):
    # Long enough that the kill lands mid-file on a fast machine too.
    clip = make_clip(tmp_path / "long.mp4", frames=120, size=(160, 120))
    sets = [*tiny_sets(tiny_single_model), "detector.type=full"]
    want = tmp_path / "want.mp4"
    config = load_config(None, [*sets, f"output.path='{want}'", "output.progress=false",
                                "parser.threads=1"])
    Pipeline(config, str(clip)).run()
    jobs, base = plan_batch([str(clip)], tmp_path / "out", config_path=None, overrides=sets)
    runner = BatchRunner(jobs, base, BatchSettings(workers=1, threads=1, retries=1,
                                                   progress=False), backend=RayCluster())
    reports = []
    thread = threading.Thread(target=lambda: reports.append(runner.run()))
    thread.start()
    deadline = time.monotonic() + 60
    while runner.frames_done(jobs[0].key) < 3:
        assert time.monotonic() < deadline and thread.is_alive(), "the file never started"
        time.sleep(0.05)
    actor = runner.backend.actor_for(jobs[0].key)
    first_worker = ray.get(actor.ready.remote()).name
    ray.kill(actor, no_restart=False)
    thread.join(timeout=120)
    assert not thread.is_alive()
    row = reports[0].rows[0]
    assert row.status == "ok" and row.attempts == 2
    assert row.errors[0].startswith("worker died")
    assert row.result.worker != first_worker  # a new process, with the model loaded again
    assert_same_video(tmp_path / "out" / "long.mp4", want)


@needs_ray
def test_live_streams_get_an_actor_each_and_a_killed_one_reconnects(
        ray_cluster, tmp_path: Path, tiny_single_model: Path):
    looping = make_clip(tmp_path / "cam.mp4", frames=250, size=(160, 120), fps=25)
    # Paced at 500 fps: far faster than any parser, so this stream must skip frames.
    fast = make_clip(tmp_path / "fast.mp4", frames=200, size=(160, 120), fps=500)
    server = None
    if rtsp_unavailable_reason() is None:
        server = RtspServer(looping, loop=True).start()
        first = (f"  - uri: {server.url}\n    name: cam\n"
                 "    source: {open_timeout_s: 5, reconnect_max_attempts: 3}\n")
    else:  # no GStreamer here: a file paced as live stands in for the camera
        first = f"  - uri: {looping}\n    name: cam\n    source: {{realtime: true}}\n"
    config = tmp_path / "streams.yaml"
    config.write_text(
        "sources:\n" + first
        + f"  - uri: {fast}\n    name: fast\n    source: {{realtime: true}}\n"
        "    output: {frames: parsed}\n"
        "detector: {type: full}\n")
    out = tmp_path / "out"
    jobs, base = plan_batch([], out, config_path=str(config),
                            overrides=tiny_sets(tiny_single_model), fmt="mkv")
    runner = BatchRunner(jobs, base, BatchSettings(retries=2, progress=False),
                         backend=RayCluster())
    reports = []
    thread = threading.Thread(target=lambda: reports.append(runner.run()))
    thread.start()
    try:
        cam = jobs[0].key
        deadline = time.monotonic() + 60
        while runner.frames_done(cam) < 10:
            assert time.monotonic() < deadline and thread.is_alive(), "the stream never started"
            time.sleep(0.05)
        ray.kill(runner.backend.actor_for(cam), no_restart=False)
        while runner.rows[cam].attempts < 2 or runner.frames_done(cam) < 10:
            assert time.monotonic() < deadline + 60 and thread.is_alive(), "no restart"
            time.sleep(0.05)
        runner.stop()
        thread.join(timeout=60)
    finally:
        if server is not None:
            server.kill()
    assert not thread.is_alive()
    report = reports[0]
    assert report.plan.streams == 2 and report.plan.workers == 0
    rows = {row.job.label: row for row in report.rows}
    cam_row, fast_row = rows["cam"], rows["fast"]
    assert cam_row.status == "ok" and cam_row.attempts == 2
    assert cam_row.errors[0].startswith("worker died")
    # The killed attempt's file is kept (with what reached the disk before the kill); the
    # restarted one went to a file of its own.
    assert (out / "cam.mkv").is_file()
    resumed = json.loads((out / "cam.restart1.metrics.json").read_text())
    assert len(decode(out / "cam.restart1.mkv")[0]) == resumed["frames_written"] >= 10
    # Each stream kept its own policy: cam writes every captured frame, fast only parsed ones.
    assert resumed["frames_written"] == resumed["frames_read"]
    fast_summary = fast_row.result.summary
    assert fast_row.status == "ok" and fast_row.attempts == 1
    assert fast_summary["frames_written"] == fast_summary["frames_parsed"]
    assert fast_summary["frames_parsed"] < fast_summary["frames_read"]
    assert fast_row.result.worker != cam_row.result.worker


@needs_ray
def test_streams_per_worker_runs_a_group_of_streams_on_one_model(
        ray_cluster, tmp_path: Path, tiny_single_model: Path):
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    clip = make_clip(tmp_path / "cam.mp4", frames=250, size=(160, 120), fps=25)
    names = ("cam1", "cam2", "gone")
    servers = {name: RtspServer(clip, loop=True, mount=f"/{name}") for name in names}
    out = tmp_path / "out"
    try:
        for server in servers.values():
            server.start()
        config = tmp_path / "cams.yaml"
        config.write_text("sources:\n" + "".join(
            f"  - uri: {servers[name].url}\n    name: {name}\n    source: "
            f"{{open_timeout_s: 5, reconnect_max_attempts: {0 if name == 'gone' else 3}}}\n"
            for name in names) + "detector: {type: full}\n")
        jobs, base = plan_batch([], out, config_path=str(config),
                                overrides=tiny_sets(tiny_single_model), fmt="mkv")
        keys = {job.label: job.key for job in jobs}
        runner = BatchRunner(jobs, base, BatchSettings(retries=1, progress=False,
                                                       streams_per_worker=3),
                             backend=RayCluster())
        reports = []
        thread = threading.Thread(target=lambda: reports.append(runner.run()))
        thread.start()

        def wait(condition, what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline and thread.is_alive(), f"never {what}"
                time.sleep(0.05)

        try:
            wait(lambda: all(runner.frames_done(k) >= 5 for k in keys.values()),
                 "all three recording")
            (actor,) = {id(runner.backend.actor_for(k)): runner.backend.actor_for(k)
                        for k in keys.values()}.values()  # one actor runs the three
            first = ray.get(actor.ready.remote())
            # One stream's camera goes away for good: it ends alone, the others go on.
            servers["gone"].kill()
            wait(lambda: runner.rows[keys["gone"]].status in ("ok", "failed"), "gone ended")
            alive = {k: runner.frames_done(keys[k]) for k in ("cam1", "cam2")}
            wait(lambda: all(runner.frames_done(keys[k]) >= alive[k] + 10 for k in alive),
                 "the other two recording on")
            assert runner.rows[keys["cam1"]].attempts == runner.rows[keys["cam2"]].attempts == 1
            # The actor dies: Ray restarts it and each of its streams goes on in a new file.
            ray.kill(actor, no_restart=False)
            wait(lambda: all(runner.rows[keys[k]].attempts == 2
                             and runner.frames_done(keys[k]) >= 5 for k in alive),
                 "both streams restarted", timeout=90)
            runner.stop()
            thread.join(timeout=60)
        finally:
            runner.stop()
            thread.join(timeout=60)
    finally:
        for server in servers.values():
            server.kill()
    assert not thread.is_alive()
    report = reports[0]
    assert (report.plan.streams, report.plan.stream_workers, report.plan.workers) == (3, 1, 0)
    assert report.to_dict()["streams_per_worker"] == 3
    rows = {row.job.label: row for row in report.rows}
    # One process ran the three streams, and it built one model: counted, not assumed.
    ran = [h for row in rows.values() for h in row.history if not h.died]
    assert {row.history[0].worker for row in rows.values()} == {first.name}
    assert {(h.parsers_built, h.engines_built) for h in ran} == {(1, 1)}
    assert [w.parsers_built for w in report.workers] == [1, 1]  # the actor, then its restart
    assert rows["gone"].attempts <= 2 and not any(h.died for h in rows["gone"].history)
    for name in ("cam1", "cam2"):
        row = rows[name]
        assert row.status == "ok" and row.attempts == 2, row.errors
        assert row.errors[0].startswith("worker died") and row.history[0].died
        assert row.history[1].worker != first.name  # the restarted actor, a new process
        # The same files and metrics as a worker of their own writes: NAME.mkv (kept, with
        # what reached the disk before the kill), then NAME.restart1.mkv with its metrics.
        assert (out / f"{name}.mkv").is_file()
        metrics = json.loads((out / f"{name}.restart1.metrics.json").read_text())
        fresh = RunMetrics().summary()  # the keys every run's metrics have
        assert set(metrics) == set(fresh) and set(metrics["stages_ms"]) == set(fresh["stages_ms"])
        assert len(decode(out / f"{name}.restart1.mkv")[0]) == metrics["frames_written"] >= 5
        assert metrics["frames_written"] == metrics["frames_read"]
        assert row.result.summary["frames_written"] == metrics["frames_written"]


def test_streams_per_worker_must_be_a_whole_number_and_needs_ray(
        tmp_path: Path, tiny_single_model: Path, capsys):
    from streamer.batch.runner import main

    clip = make_clip(tmp_path / "c.mp4", frames=2, size=(64, 48))
    argv = ["--source", str(clip), "--output-dir", str(tmp_path / "out"), "--model",
            str(tiny_single_model), "--no-progress"]
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for value in ("0", "-1", "two", "1.5"):
            assert main([*argv, "--ray", "local", "--streams-per-worker", value]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"error: --streams-per-worker must be a whole number of 1 or more, "
                           f"not {value!r}; give how many live streams one Ray worker runs on "
                           "its one model, e.g. --streams-per-worker 4"], err
        assert main([*argv, "--streams-per-worker", "2"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: --streams-per-worker needs --ray; "), line
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert not (tmp_path / "out" / "c.mp4").exists()


# ------------------------------------------------------------------------ local pool
def test_local_pool_matches_single_process(tmp_path: Path, clips, references,
                                           tiny_single_model: Path):
    out = tmp_path / "out"
    jobs, base = plan_batch([str(clips[0].parent / "*.mp4")], out, config_path=None,
                            overrides=tiny_sets(tiny_single_model))
    report = BatchRunner(jobs, base, BatchSettings(workers=2, progress=False),
                         backend=LocalPool()).run()
    check_batch_against_references(report, clips, references, out)
    assert 1 <= len(report.workers) <= 2 and all(w.threads == 1 for w in report.workers)
    assert all(w.parsers_built == 1 for w in report.workers)  # one model per process


def test_cli_corrupt_input_fails_alone_and_exit_code_says_so(tmp_path: Path,
                                                             tiny_single_model: Path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    make_clip(inputs / "good.mp4", frames=6, size=(176, 144))
    corrupt_file(inputs)
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_stream.py"), "batch", "--source", str(inputs / "*.mp4"),
         "--output-dir", str(tmp_path / "out"), "--model", str(tiny_single_model),
         "--engine", "torch", "--retries", "0", "--workers", "1",
         "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    assert "Traceback" not in result.stderr, said
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["status", "frames", "seconds", "tries", "input"], said
    bad_line = next(line for line in lines if "corrupt.mp4" in line)
    assert bad_line.startswith("failed") and "cannot read" in bad_line, said
    assert next(line for line in lines if "good.mp4" in line).split()[:2] == ["ok", "6"], said
    assert "files done" in result.stderr and "fps" in result.stderr, said
    assert len(decode(tmp_path / "out" / "good.mp4")[0]) == 6
    assert is_fast_start(tmp_path / "out" / "good.mp4")  # batch writes MP4s index first too
    assert not (tmp_path / "out" / "corrupt.mp4").exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["ok"], report["failed"]) == (1, 1)
    # Run again to resume: the finished file is skipped, only the failed one is tried.
    again = subprocess.run(
        [sys.executable, str(ROOT / "run_stream.py"), "batch", "--source", str(inputs),
         "--output-dir", str(tmp_path / "out"), "--model", str(tiny_single_model),
         "--retries", "0", "--skip-existing", "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert again.returncode == 1, again.stdout + again.stderr
    rows = {line.split()[4]: line.split()[0] for line in again.stdout.splitlines()[1:-1]}
    assert rows == {"good.mp4": "skipped", "corrupt.mp4": "failed"}, again.stdout


def test_ray_is_optional(tmp_path: Path, tiny_single_model: Path):
    clip = make_clip(tmp_path / "c.mp4", frames=2, size=(64, 48))
    argv = ["--source", str(clip), "--output-dir", str(tmp_path / "out"),
            "--model", str(tiny_single_model), "--ray"]
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            f"import streamer.batch.runner as b\nsys.exit(b.main({argv!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --ray needs Ray, which is not installed; pip install 'streamer[ray]' "
        "(or pip install 'ray>=2.9')"]
