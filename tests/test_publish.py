"""RTSP publish (output.path: rtsp://...) against a real GStreamer RTSP server in RECORD mode.

The server (tests/rtsp_server.py --record, on 127.0.0.1) receives what the pipeline publishes
(ANNOUNCE/RECORD, RTP over TCP) and writes the H.264 it depayloads to a file, which PyAV then
decodes: the frames that arrived must be the annotated ones (RANDOM WEIGHTS tiny model, the
whole frame parsed), the same as the same run written to a file.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason

from streamer import Pipeline, load_config
from streamer.core.errors import ConfigError, SinkError
from streamer.io.sinks import RtspPublishSink, open_video_sink
from streamer.parsing.parser import HumanParser, ParserOptions

ROOT = Path(__file__).resolve().parents[1]

needs_server = pytest.mark.skipif(rtsp_unavailable_reason() is not None,
                                  reason=str(rtsp_unavailable_reason()))


def decode(path: Path, fmt: str | None = None) -> list[np.ndarray]:
    with av.open(str(path), format=fmt) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_for(model: Path, output: str, *sets: str):
    return load_config(None, [f"parser.model='{model}'", "parser.engine=torch",
                              "detector.type=full", "output.progress=false",
                              f"output.path='{output}'", *sets])


@needs_server
def test_published_frames_carry_the_overlay(tmp_path: Path, tiny_single_model: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=25, size=(160, 120), fps=25)
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))
    got = tmp_path / "got.h264"
    with RtspServer(None, record=got, mount="/out") as server:
        url = f"rtsp://127.0.0.1:{server.port}/out"
        started = time.monotonic()
        summary = Pipeline(config_for(tiny_single_model, url, "parse.every=5"), str(clip),
                           parser=parser).run()
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # the server writes what it still holds once the session ends
    assert summary["frames_written"] == 25
    assert elapsed > 0.8  # a file is published at its own pace (1 s), not as fast as it decodes
    local = tmp_path / "local.mkv"
    Pipeline(config_for(tiny_single_model, str(local), "parse.every=5"), str(clip),
             parser=parser).run()
    published, written, source = decode(got, "h264"), decode(local), decode(clip)
    # Whatever reached the server decodes; the session's last frames may still be in flight.
    assert 20 <= len(published) <= 25
    assert published[0].shape == (120, 160, 3)
    for index in (0, len(published) // 2, len(published) - 1):
        overlay = np.abs(written[index].astype(int) - source[index]).mean()
        off = np.abs(published[index].astype(int) - written[index]).mean()
        assert overlay > 8, "the random-weight overlay should change the picture"
        assert off < overlay / 4, (index, off, overlay)  # the overlay frames, not the source


@needs_server
def test_the_cli_fails_in_one_line_when_the_server_goes_away(tmp_path: Path,
                                                             tiny_single_model: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=150, size=(160, 120), fps=25)
    stats, labels = tmp_path / "stats.jsonl", tmp_path / "labels"
    with RtspServer(None, record=tmp_path / "got.h264", mount="/out") as server:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_stream.py"), "--source", str(clip), "--output",
             f"rtsp://127.0.0.1:{server.port}/out", "--model", str(tiny_single_model),
             "--engine", "torch", "--detector", "full", "--labels-out", str(labels),
             "--set", f"output.stats_jsonl='{stats}'"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and (
                not stats.exists() or len(stats.read_text().splitlines()) < 10):
            time.sleep(0.05)
        server.kill()  # the server vanishes mid-run (6 s of video)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode not in (0, None), err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the RTSP server at rtsp://127.0.0.1" in errors[0], err
    lines = stats.read_text().splitlines()  # the other outputs are complete up to the error
    assert 10 <= len(lines) < 150
    assert all(json.loads(line)["index"] == n for n, line in enumerate(lines))
    assert len(list(labels.glob("*.png"))) >= len(lines)


@needs_server
def test_a_live_run_reconnects_to_a_restarted_server(tmp_path: Path,
                                                     tiny_single_model: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=50, size=(160, 120), fps=25)
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))
    first, second = tmp_path / "first.h264", tmp_path / "second.h264"
    with RtspServer(clip, loop=True) as camera, \
            RtspServer(None, record=first, mount="/out") as server:
        url = f"rtsp://127.0.0.1:{server.port}/out"
        config = config_for(tiny_single_model, url, "parse.every=5", "source.max_frames=150")
        pipeline = Pipeline(config, camera.url, parser=parser)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(pipeline.run()))
        runner.start()
        deadline = time.monotonic() + 60
        while pipeline.metrics.frames_written < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # the server vanishes mid-run and comes back on the same port
        time.sleep(0.5)
        server.record = second
        server.start()
        runner.join(timeout=60)
        time.sleep(0.3)
    assert not runner.is_alive() and result["frames_written"] == 150
    before, after = decode(first, "h264"), decode(second, "h264")
    assert len(before) >= 20, len(before)
    # A new session from a new keyframe: every frame after the reconnect decodes.
    assert 20 <= len(after) < 120, len(after)


def test_a_server_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    from streamer.core.types import VideoInfo

    url = f"rtsp://127.0.0.1:{free_port()}/out"
    with pytest.raises(SinkError, match=r"cannot publish to rtsp://127\.0\.0\.1:\d+/out \("):
        RtspPublishSink(url, VideoInfo(width=160, height=120, fps=25.0))
    with pytest.raises(ConfigError, match="segment_seconds does not apply"):
        open_video_sink(url, VideoInfo(width=160, height=120, fps=25.0), segment_seconds=60)


@pytest.mark.parametrize("path, needle", [
    ("rtsps://127.0.0.1:8322/out", "only rtsp:// outputs are supported, not rtsps://"),
    ("rtmp://127.0.0.1/live", "only rtsp:// outputs are supported, not rtmp://"),
    ("rtsp://127.0.0.1:8554", "no path"),
    ("rtsp://127.0.0.1:99999/out", "out of range"),
])
def test_the_config_refuses_what_cannot_be_published(path: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [f"output.path='{path}'"])


def test_the_config_accepts_rtsp_and_refuses_segments_with_it() -> None:
    url = "rtsp://user:secret@127.0.0.1:8554/out"
    assert load_config(None, [f"output.path='{url}'"]).output.path == url
    with pytest.raises(ConfigError, match="segment_seconds does not apply") as caught:
        load_config(None, [f"output.path='{url}'", "output.segment_seconds=60"])
    assert "secret" not in str(caught.value)
