"""Many live streams, one model: the parse scheduler, run_stream.py --output-dir, segments.

Real RTSP servers (tests/rtsp_server.py under Debian's GStreamer) on 127.0.0.1, the tiny
random-weight model, real threads, real files read back with PyAV.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason

from streamer.apps.inputs import SourceSpec
from streamer.apps.streams import StreamsRun, format_streams_table
from streamer.config import load_config
from streamer.core.errors import ConfigError
from streamer.core.types import Frame, VideoInfo
from streamer.io.segments import SegmentedVideoSink, list_segments
from streamer.parsing.parser import HumanParser
from streamer.parsing.scheduler import ParseScheduler, SchedulerOptions, SerialDetector

ROOT = Path(__file__).resolve().parents[1]
needs_rtsp = pytest.mark.skipif(rtsp_unavailable_reason() is not None,
                                reason=str(rtsp_unavailable_reason()))


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def stream_config(model: Path, *extra: str):
    return load_config(None, [
        f"parser.model='{model}'", "parser.engine=torch", "detector.type=full",
        "source.open_timeout_s=2", "source.read_timeout_s=2", "source.reconnect_base_s=0.2",
        "source.reconnect_cap_s=0.5", "source.reconnect_max_attempts=40", *extra])


@contextlib.contextmanager
def streams_on_servers(clip: Path, config, out: Path,
                       names: list[str]) -> Iterator[tuple[StreamsRun, list[RtspServer]]]:
    """A looping RTSP server per name, each served as that stream of one StreamsRun; the
    servers are killed afterwards whatever happened."""
    servers = [RtspServer(clip, loop=True).start() for _ in names]
    try:
        run = StreamsRun(config, out)
        for name, server in zip(names, servers, strict=True):
            run.add(SourceSpec(server.url, config, name))
        yield run, servers
    finally:
        for server in servers:
            server.kill()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("streams") / "clip.mp4", frames=50, fps=25)


# ------------------------------------------------------------------ the scheduler's policy
def _frame(index: int) -> Frame:
    return Frame(index, np.zeros((4, 4, 3), np.uint8), index / 25, time.monotonic())


def test_scheduler_weighs_priority_skips_stalled_and_isolates_failures(tiny_single_model):
    parser = HumanParser(load_config(None, [f"parser.model='{tiny_single_model}'",
                                            "parser.engine=torch"]).parser)
    done: list[str] = []
    errors: list[BaseException] = []

    def work(name: str):
        def run(frame: Frame) -> None:
            time.sleep(0.01)  # a stand-in for the parse time: this test is about the policy
            done.append(name)
        return run

    def broken(frame: Frame) -> None:
        raise RuntimeError("bad frame")

    with ParseScheduler(parser) as scheduler:
        low = scheduler.add("low", work("low"), priority=1)
        high = scheduler.add("high", work("high"), priority=3)
        scheduler.add("stalled", work("stalled"))  # never gets a frame
        bad = scheduler.add("bad", broken, on_error=errors.append)
        bad.put(_frame(0))
        stop = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < stop:  # both lanes always hold a new frame
            low.put(_frame(i))
            high.put(_frame(i))
            i += 1
            time.sleep(0.002)
        assert scheduler.parser is parser
    assert len(errors) == 1 and bad.error is errors[0] and bad.closed
    assert "bad" not in [lane.name for lane in scheduler.lanes]
    assert "stalled" not in done
    n_low, n_high = done.count("low"), done.count("high")
    assert n_low > 5 and n_high > 5
    assert 2.0 < n_high / n_low < 4.5  # age x priority: about three parses to one


def test_scheduler_shares_a_detector_only_between_streams_that_ask_for_the_same_model(
        tiny_single_model):
    import dataclasses

    from streamer.vision.detect import DetectorOptions

    parser = HumanParser(load_config(None, [f"parser.model='{tiny_single_model}'",
                                            "parser.engine=torch"]).parser)
    scheduler = ParseScheduler(parser)
    hog = DetectorOptions(type="hog")
    assert scheduler.detector(hog) is scheduler.detector(dataclasses.replace(hog, every=3))
    for change in ({"score_threshold": 0.9}, {"threads": 1}, {"engine": "onnxruntime"}):
        assert scheduler.detector(dataclasses.replace(hog, **change)) \
            is not scheduler.detector(hog), change


def feed_lanes(lanes: dict, images: dict[str, np.ndarray], results: dict[str, list], *,
               at_least: int, timeout: float, pause: float) -> None:
    """Put each lane's image into it, frame after frame, until every lane has ``at_least``
    results (or ``timeout`` seconds pass)."""
    deadline, i = time.monotonic() + timeout, 0
    while min(len(r) for r in results.values()) < at_least and time.monotonic() < deadline:
        for name, lane in lanes.items():
            lane.put(Frame(i, images[name], i / 25, time.monotonic()))
        i += 1
        time.sleep(pause)


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_slots_parse_each_lane_alone_and_correctly(tiny_single_model, tmp_path,
                                                            parallel):
    import torch

    torch_threads = torch.get_num_threads()  # the torch engine sets it for the process
    config = load_config(None, [f"parser.model='{tiny_single_model}'", "parser.engine=torch",
                                "parser.threads=1", "detector.type=hog",
                                f"scheduler.parallel={parallel}"])
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 255, (64, 48, 3), np.uint8) for name in ("a", "b", "c")}
    results: dict[str, list[np.ndarray]] = {name: [] for name in images}
    running: set[str] = set()
    overlapped: list[str] = []
    used: set[int] = set()
    try:
        built = HumanParser.built
        run = StreamsRun(config, tmp_path)  # what --output-dir builds for this config
        scheduler = run.scheduler
        assert len(scheduler.parsers) == parallel == HumanParser.built - built
        expected = {name: scheduler.parser.parse(image).labels for name, image in images.items()}
        detector = scheduler.detector(config.detector)  # one model, the slots take turns
        assert isinstance(detector, SerialDetector) == (parallel > 1)

        def work(name: str):
            def parse(frame: Frame) -> None:
                if name in running:
                    overlapped.append(name)
                running.add(name)
                parser = scheduler.current_parser()
                used.add(id(parser))
                detector.detect(frame.image)
                results[name].append(parser.parse(frame.image).labels)
                running.discard(name)
            return parse

        lanes = {name: scheduler.add(name, work(name)) for name in images}
        feed_lanes(lanes, images, results, at_least=2, timeout=20, pause=0.005)
        run.wait(timeout=30)
    finally:
        torch.set_num_threads(torch_threads)
    assert len(used) == parallel  # every slot parsed, each on its own parser
    assert not overlapped  # a lane's tracker and crop memory are never used by two slots
    for name, maps in results.items():  # each lane got the parse of its own frames
        assert len(maps) >= 2 and all(np.array_equal(m, expected[name]) for m in maps)


def test_parallel_slots_share_one_openvino_network(tiny_single_model, tmp_path):
    """With OpenVINO, two parse slots run on ONE compiled network (an infer request each):
    both slots parse at the same moment (a barrier only two concurrent parses pass), and every
    parse equals the one-at-a-time parse of the same image."""
    import threading

    config = load_config(None, [f"parser.model='{tiny_single_model}'", "detector.type=hog",
                                "scheduler.parallel=2",
                                f"parser.cache_dir='{tmp_path / 'engines'}'"])
    built, engines = HumanParser.built, HumanParser.engines_built
    run = StreamsRun(config, tmp_path)  # what --output-dir builds for this config
    scheduler = run.scheduler
    try:
        # What was constructed: one parser, one compiled network, serving both slots.
        assert HumanParser.built - built == 1 and HumanParser.engines_built - engines == 1
        assert scheduler.parsers == [scheduler.parser] and scheduler.parallel == 2
        assert scheduler.parser.options.perf_hint == "throughput"
        assert scheduler.parser.concurrency >= 2
        rng = np.random.default_rng(1)
        images = {name: rng.integers(0, 255, (96, 64, 3), np.uint8) for name in ("a", "b")}
        expected = {name: scheduler.parser.parse(image).labels for name, image in images.items()}
        together = threading.Barrier(2, timeout=20)  # broken unless two slots parse at once
        results: dict[str, list[np.ndarray]] = {name: [] for name in images}
        threads: set[str] = set()

        def work(name: str):
            def parse(frame: Frame) -> None:
                threads.add(threading.current_thread().name)
                if not results[name]:
                    together.wait()
                parser = scheduler.current_parser()
                assert parser is scheduler.parser
                results[name].append(parser.parse(frame.image).labels)
            return parse

        lanes = {name: scheduler.add(name, work(name)) for name in images}
        feed_lanes(lanes, images, results, at_least=3, timeout=30, pause=0.002)
    finally:
        run.wait(timeout=30)
    assert not together.broken and len(threads) == 2
    for name, maps in results.items():
        assert len(maps) >= 3 and all(np.array_equal(m, expected[name]) for m in maps)


def test_serve_and_batch_honour_scheduler_parallel(tiny_single_model, tmp_path):
    """serve's shared model and batch's StreamsWorker build their scheduler from the config's
    ``scheduler`` section too: two slots, one OpenVINO network between them."""
    from streamer.batch.workers import StreamsWorker
    from streamer.serve.model import SharedModel

    config = load_config(None, [f"parser.model='{tiny_single_model}'", "detector.type=hog",
                                "scheduler.parallel=2",
                                f"parser.cache_dir='{tmp_path / 'engines'}'"])
    built = HumanParser.built
    model = SharedModel(config.parser, config.detector, photos=False,
                        scheduler=config.scheduler).start()
    served = model.scheduler(timeout=120)
    worker = StreamsWorker(config.parser, 2, config.scheduler)
    try:
        assert HumanParser.built - built == 2  # one parser each, not one per slot
        for scheduler in (served, worker.scheduler):
            assert scheduler.parallel == 2 and scheduler.parsers == [scheduler.parser]
            assert scheduler.parser.options.perf_hint == "throughput"
    finally:
        served.stop()
        worker.scheduler.stop()


def _thread_nice() -> dict[int, int]:
    """The nice value of every thread of this process, by thread id (Linux)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = int(fields[16])
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_parse_runs_below_the_streams_priority(tiny_single_model, tmp_path):
    """scheduler.parse_nice: the slots and the threads the engine starts run that much lower
    than the streams' threads, so a busy CPU drops parses rather than shown frames."""
    import threading

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    config = load_config(None, [f"parser.model='{tiny_single_model}'", "detector.type=hog",
                                "scheduler.parse_nice=3",
                                f"parser.cache_dir='{tmp_path / 'engines'}'"])
    before = _thread_nice()
    scheduler = ParseScheduler.from_options(config.parser, config.scheduler).start()
    try:
        started = {tid: nice for tid, nice in _thread_nice().items() if tid not in before}
        # OpenVINO's worker threads (and the idle slot) were started at the parse's priority.
        assert started and all(nice == min(19, base + 3) for nice in started.values())
        seen: list[int] = []
        lane = scheduler.add("a", lambda frame: seen.append(
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        lane.put(Frame(0, np.zeros((64, 48, 3), np.uint8), 0.0, time.monotonic()))
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [min(19, base + 3)]
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # ours kept
    finally:
        scheduler.stop()
    with pytest.raises(ConfigError, match="scheduler.parse_nice"):
        load_config(None, ["scheduler.parse_nice=20"])


@pytest.mark.parametrize("value", ["0", "two", "1.5"])
def test_bad_scheduler_parallel_is_a_config_error(value):
    with pytest.raises(ConfigError, match="scheduler.parallel"):
        load_config(None, [f"scheduler.parallel={value}"])
    assert SchedulerOptions().slots(cores=2) >= 1


# ------------------------------------------------------------------ real streams, one process
@needs_rtsp
def test_three_streams_share_one_parser_and_each_records(clip, tiny_single_model, tmp_path):
    config = stream_config(tiny_single_model)
    built, engines = HumanParser.built, HumanParser.engines_built
    with streams_on_servers(clip, config, tmp_path, ["cam0", "cam1", "cam2"]) as (run, _):
        pipelines = [run.pipeline(f"cam{i}") for i in range(3)]
        time.sleep(4)
        run.stop()
        report = run.wait(timeout=30)
    # What was constructed, not a flag: one parser, one compiled network, one object for all.
    assert HumanParser.built - built == 1 and HumanParser.engines_built - engines == 1
    assert all(p.parser is run.parser is run.scheduler.parser for p in pipelines)
    assert set(report["streams"]) == {"cam0", "cam1", "cam2"}
    for name, row in report["streams"].items():
        assert row["error"] is None, row["error"]
        assert row["frames_parsed"] >= 1 and row["parse_fps"] > 0
        assert row["overlay_age_ms"]["p95"] >= row["overlay_age_ms"]["p50"] > 0
        assert row["frames_written"] >= 40  # about 4 s at 25 fps, less connecting
        out = tmp_path / f"{name}.mkv"
        assert decoded_frames(out) == row["frames_written"]
    # Every parse the scheduler ran was one stream's (a parse running when a stream ended
    # still finishes, after that stream's summary was taken).
    counted = sum(r["frames_parsed"] for r in report["streams"].values())
    assert counted <= report["parses"] <= counted + 3
    table = format_streams_table(report)
    assert "cam2" in table and "age p95" in table


@needs_rtsp
def test_killed_server_reconnects_while_the_others_keep_going(clip, tiny_single_model,
                                                              tmp_path):
    config = stream_config(tiny_single_model)
    with streams_on_servers(clip, config, tmp_path, ["cam0", "cam1", "cam2"]) as (run,
                                                                                 servers):
        time.sleep(2)
        servers[0].kill()
        before = {n: run.pipeline(n).metrics.frames_parsed for n in ("cam1", "cam2")}
        written = {n: run.pipeline(n).metrics.frames_written for n in ("cam1", "cam2")}
        time.sleep(2)
        during = {n: run.pipeline(n).metrics.frames_parsed - before[n] for n in before}
        grew = {n: run.pipeline(n).metrics.frames_written - written[n] for n in written}
        servers[0].restart()
        deadline = time.monotonic() + 15
        while run.pipeline("cam0").source.stats.reconnects == 0:
            assert time.monotonic() < deadline, "cam0 did not reconnect"
            time.sleep(0.1)
        time.sleep(1.5)
        run.stop()
        report = run.wait(timeout=30)
    rows = report["streams"]
    assert rows["cam0"]["reconnects"] == 1 and rows["cam0"]["error"] is None
    assert rows["cam0"]["gap_seconds"] > 1.5
    for name in ("cam1", "cam2"):
        assert rows[name]["reconnects"] == 0
        assert during[name] >= 1  # still parsed while cam0 was gone
        assert grew[name] >= 35  # and still written at about the source's 25 fps
        assert decoded_frames(tmp_path / f"{name}.mkv") == rows[name]["frames_written"]
    assert decoded_frames(tmp_path / "cam0.mkv") == rows["cam0"]["frames_written"]


@needs_rtsp
def test_stream_added_and_removed_while_others_run(clip, tiny_single_model, tmp_path):
    config = stream_config(tiny_single_model)
    servers = [RtspServer(clip, loop=True).start() for _ in range(3)]
    try:
        run = StreamsRun(config, tmp_path)
        run.add(SourceSpec(servers[0].url, config, "a"))
        run.add(SourceSpec(servers[1].url, config, "b"))
        time.sleep(1.5)
        run.add(SourceSpec(servers[2].url, config, "c"))
        time.sleep(1.5)
        removed = run.remove("b")
        written_a = run.pipeline("a").metrics.frames_written
        time.sleep(1.5)
        assert run.names == ["a", "c"]
        assert run.pipeline("a").metrics.frames_written - written_a >= 25
        run.stop()
        report = run.wait(timeout=30)
    finally:
        for server in servers:
            server.kill()
    assert removed["error"] is None and removed["frames_written"] > 0
    assert decoded_frames(tmp_path / "b.mkv") == removed["frames_written"]
    for name in ("a", "c"):
        assert report["streams"][name]["frames_parsed"] >= 1
        assert decoded_frames(tmp_path / f"{name}.mkv") == report["streams"][name][
            "frames_written"]


@needs_rtsp
def test_one_unreachable_stream_fails_alone(clip, tiny_single_model, tmp_path):
    config = stream_config(tiny_single_model, "source.reconnect_max_attempts=1")
    with RtspServer(clip, loop=True) as server:
        run = StreamsRun(config, tmp_path)
        run.add(SourceSpec(server.url, config, "good"))
        run.add(SourceSpec(server.url.replace("/stream", "/nothing"), config, "wrong"))
        time.sleep(3)
        run.stop()
        report = run.wait(timeout=30)
    rows = report["streams"]
    assert rows["wrong"]["error"] and "/nothing" in rows["wrong"]["error"]
    assert report["failed"] == ["wrong"]
    assert rows["good"]["error"] is None and rows["good"]["frames_parsed"] >= 1


# ------------------------------------------------------------------ the command line
@needs_rtsp
def test_cli_output_dir_segments_and_ctrl_c(clip, tiny_single_model, tmp_path):
    servers = [RtspServer(clip, loop=True).start() for _ in range(2)]
    cams = tmp_path / "cams.yaml"
    cams.write_text(
        "sources:\n"
        f"  - {{uri: '{servers[0].url}', name: door}}\n"
        f"  - {{uri: '{servers[1].url}', name: yard, priority: 2}}\n"
        f"parser: {{model: '{tiny_single_model}', engine: torch}}\n"
        "detector: {type: full}\n"
        "output: {segment_seconds: 1, keep_segments: 3}\n")
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream.py"), "--config", str(cams), "--output-dir",
         str(out), "--metrics", str(metrics)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # Until both streams have rotated past their retention limit.
        while not all(len(list_segments(out / n)) >= 3 for n in ("door", "yard")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no segments"
            time.sleep(0.2)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for server in servers:
            server.kill()
    assert proc.returncode == 130, stderr
    assert "door" in stdout and "age p95" in stdout
    report = json.loads(metrics.read_text())
    for name in ("door", "yard"):
        row = report["streams"][name]
        assert set(row["overlay_age_ms"]) == {"p50", "p95"} and row["parse_fps"] > 0
        assert "fps" in row and "frames_dropped" in row and row["reconnects"] == 0
        segments = list_segments(out / name)
        assert 1 <= len(segments) <= 3  # retention deleted the oldest
        assert row["segments"] == [p.name for p in segments]
        for segment in segments:  # every segment was finalised, Ctrl-C included
            assert decoded_frames(segment) >= 1
    assert report["parsers_built"] == 1 and report["engines_built"] == 1


# ------------------------------------------------------------------ segments
def _write_frames(sink: SegmentedVideoSink, count: int, fps: int = 25) -> None:
    tb = Fraction(1, 90000)
    for i in range(count):
        image = np.full((48, 64, 3), (i * 5) % 256, np.uint8)
        sink.write(image, i * 90000 // fps, tb)


def test_segments_rotate_play_and_retention_deletes_the_oldest(tmp_path):
    info = VideoInfo(width=64, height=48, fps=25.0, time_base=Fraction(1, 90000), is_live=True)
    clock = iter(range(1_000, 2_000)).__next__  # distinct, rising start times
    with SegmentedVideoSink(tmp_path / "cam", info, segment_seconds=1, keep_segments=3,
                            clock=clock, preset="ultrafast") as sink:
        _write_frames(sink, 25 * 5)  # five seconds of stream
    segments = list_segments(tmp_path / "cam")
    assert len(sink.deleted) == 2 and len(segments) == 3
    assert sink.deleted[0].name == "19700101-001640.000.mkv"  # the first, oldest, went first
    assert [p.name for p in segments] == [p.name for p in sink.segments]
    for segment in segments:
        assert decoded_frames(segment) == 25
        with av.open(str(segment)) as container:
            first = next(container.decode(video=0))
            assert first.pts == 0  # every segment starts at 0, on a keyframe
            assert first.key_frame
    (tmp_path / "cam" / "notes.txt").write_text("not a segment")
    with SegmentedVideoSink(tmp_path / "cam", info, segment_seconds=1, max_disk_mb=1e-6,
                            preset="ultrafast", clock=clock) as sink:
        _write_frames(sink, 50)
    # Over the size limit, everything but the segment being written goes; other files stay.
    assert len(list_segments(tmp_path / "cam")) == 1
    assert (tmp_path / "cam" / "notes.txt").exists()


@needs_rtsp
def test_sigkill_leaves_every_closed_segment_playable(clip, tiny_single_model, tmp_path):
    with RtspServer(clip, loop=True) as server:
        out = tmp_path / "rec.mkv"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_stream.py"), "--source", server.url, "--output",
             str(out), "--model", str(tiny_single_model), "--engine", "torch", "--detector",
             "full", "--set", "output.segment_seconds=1", "--no-progress"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(list_segments(tmp_path / "rec")) < 4:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stderr is not None:
                proc.stderr.close()
    segments = list_segments(tmp_path / "rec")
    closed = segments[:-1]  # the last one was being written when the process died
    assert len(closed) >= 3
    for segment in closed:
        assert 20 <= decoded_frames(segment) <= 30  # one second at 25 fps


# ------------------------------------------------------------------ single stream
def test_single_live_run_reports_overlay_age(tmp_path, tiny_single_model, clip):
    from streamer.pipeline import Pipeline

    config = stream_config(tiny_single_model, "source.realtime=true", "output.progress=false")
    summary = Pipeline(config, str(clip)).run()
    age = summary["overlay_age_ms"]
    assert summary["frames_written"] == 50 and summary["frames_parsed"] >= 1
    assert 0 < age["p50"] <= age["p95"]
    # An overlay is never younger than the frame it is written on.
    assert age["p50"] >= summary["latency_ms"]["p50"]


def test_scheduler_refuses_a_file_that_is_not_live(tmp_path, tiny_single_model, clip):
    from streamer.pipeline import Pipeline

    config = stream_config(tiny_single_model)
    parser = HumanParser(config.parser)
    with ParseScheduler(parser) as scheduler:
        pipeline = Pipeline(config, str(clip), scheduler=scheduler, name="file")
        with pytest.raises(ConfigError, match="live sources only"):
            pipeline.run()


# ------------------------------------------------------------------ bad input
def test_bad_priority_and_missing_config_are_one_line_errors(tmp_path, capsys):
    from streamer.apps.cli import main
    from streamer.apps.inputs import load_sources

    cams = tmp_path / "cams.yaml"
    cams.write_text("sources:\n  - {uri: 'rtsp://127.0.0.1:1/a', priority: 0}\n")
    with pytest.raises(ConfigError, match=r"sources\[0\]\.priority must be a number above 0"):
        load_sources(str(cams), [], [])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # main() installs its Ctrl-C handler: give pytest its own back afterwards
        assert main(["--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --output-dir needs --config") and err.count("\n") == 1
        assert main(["--config", str(cams), "--output-dir", str(tmp_path / "out")]) == 2
        assert "priority" in capsys.readouterr().err
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@needs_rtsp
def test_stream_changing_resolution_is_parsed_again_and_blocks_nobody(clip, tiny_single_model,
                                                                      tmp_path):
    bigger = make_clip(tmp_path / "bigger.mp4", frames=50, size=(320, 240), fps=25)
    config = stream_config(tiny_single_model)
    with streams_on_servers(clip, config, tmp_path, ["changes", "steady"]) as (run, servers):
        time.sleep(1.5)
        written, since = run.pipeline("steady").metrics.frames_written, time.monotonic()
        servers[0].kill()
        servers[0].clip = bigger  # the camera comes back at another resolution
        servers[0].restart()
        deadline = time.monotonic() + 20
        while True:  # until a parse of the new size is what cam "changes" shows
            latest = run.pipeline("changes").latest()
            if latest is not None and latest.frame.image.shape[:2] == (240, 320):
                break
            assert time.monotonic() < deadline, "no parse at the new resolution"
            time.sleep(0.1)
        time.sleep(max(0.0, since + 3.0 - time.monotonic()))  # a window long enough to rate
        steady_grew = run.pipeline("steady").metrics.frames_written - written
        steady_fps = steady_grew / (time.monotonic() - since)
        run.stop()
        report = run.wait(timeout=30)
    rows = report["streams"]
    assert rows["changes"]["reconnects"] == 1 and rows["changes"]["error"] is None
    # The other camera went on being written (its source runs at 25 fps; a loaded 2-core
    # machine may hold it back a little, a blocked stream would write nothing).
    assert rows["steady"]["reconnects"] == 0 and steady_fps >= 10, (steady_grew, steady_fps)
    for name in ("changes", "steady"):  # the recording keeps its first size, and plays
        assert decoded_frames(tmp_path / f"{name}.mkv") == rows[name]["frames_written"]
