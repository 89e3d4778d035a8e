"""run_stream.py as users run it: a subprocess, exit codes, one-line errors, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("cli") / "clip.mp4", frames=40, size=(160, 120),
                     fps=25, audio=True)


def test_help_documents_every_option():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for option in ("--source", "--output", "--show", "--model", "--config", "--set",
                   "--metrics", "--realtime", "--engine", "--detector", "--labels-out"):
        assert option in proc.stdout


def test_video_run_writes_output_metrics_and_summary(tmp_path, clip, tiny_single_model):
    out, metrics, labels = tmp_path / "out.mp4", tmp_path / "m.json", tmp_path / "labels"
    proc = run_cli("--source", str(clip), "--output", str(out), "--model", str(tiny_single_model),
                   "--metrics", str(metrics), "--labels-out", str(labels), "--engine", "torch",
                   "--detector", "full")
    assert proc.returncode == 0, proc.stderr
    assert "end-to-end" in proc.stdout and "written 40" in proc.stdout
    assert frame_count(out) == 40
    summary = json.loads(metrics.read_text())
    assert summary["frames_written"] == summary["frames_read"] == 40
    for key in ("frames_parsed", "frames_dropped", "latency_ms", "stages_ms", "fps"):
        assert key in summary
    assert {"p50", "p95"} <= set(summary["latency_ms"])
    assert len(list(labels.glob("*.png"))) == 40


def test_photo_to_png(tmp_path, tiny_single_model, media):
    photo = media / "images" / "opencv_messi5.jpg"
    out = tmp_path / "parsed.png"
    proc = run_cli("--source", str(photo), "--output", str(out), "--model",
                   str(tiny_single_model), "--engine", "torch")
    assert proc.returncode == 0, proc.stderr
    parsed, original = Image.open(out), Image.open(photo)
    assert parsed.size == original.size
    assert not np.array_equal(np.asarray(parsed.convert("RGB")),
                              np.asarray(original.convert("RGB")))


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make_bad, needle", [
    (lambda d: d / "missing.mp4", "not found"),
    (lambda d: d, "has no images"),
    (lambda d: written(d / "empty.mp4", b""), "empty"),
    (lambda d: written(d / "text.mp4", b"hello\n" * 50), "text.mp4"),
])
def test_bad_inputs_are_one_line(tmp_path, tiny_single_model, make_bad, needle):
    bad = make_bad(tmp_path)
    proc = run_cli("--source", str(bad), "--output", str(tmp_path / "o.mp4"), "--model",
                   str(tiny_single_model), "--engine", "torch", timeout=60)
    assert_one_line_error(proc, 1, needle)


def test_missing_output_directory_fails_before_work(tmp_path, clip, tiny_single_model):
    started = time.monotonic()
    proc = run_cli("--source", str(clip), "--output", str(tmp_path / "nope" / "o.mp4"),
                   "--model", str(tiny_single_model), timeout=60)
    assert_one_line_error(proc, 1, "nope")
    assert time.monotonic() - started < 20


def test_bad_config_value_names_the_key(tmp_path, clip):
    proc = run_cli("--source", str(clip), "--output", str(tmp_path / "o.mp4"),
                   "--set", "detector.every=often", timeout=60)
    assert_one_line_error(proc, 2, "detector.every")


def test_missing_model_directory(tmp_path, clip):
    proc = run_cli("--source", str(clip), "--output", str(tmp_path / "o.mp4"),
                   "--model", str(tmp_path / "no-model"), timeout=60)
    assert_one_line_error(proc, 1, "no-model")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finalises_a_playable_output(tmp_path, tiny_single_model, sig, code):
    clip = make_clip(tmp_path / "long.mp4", frames=400, size=(160, 120), fps=25)
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream.py"), "--source", str(clip), "--output", str(out),
         "--model", str(tiny_single_model), "--engine", "torch", "--detector", "full",
         "--metrics", str(metrics), "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() or out.stat().st_size < 2000:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    written = json.loads(metrics.read_text())["frames_written"]
    assert 0 < written < 400
    assert frame_count(out) == written


def test_rtsp_source_runs_live(tmp_path, tiny_single_model):
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    clip = make_clip(tmp_path / "cam.mp4", frames=100, size=(320, 240), fps=25)
    out, metrics = tmp_path / "live.mp4", tmp_path / "m.json"
    with RtspServer(clip, loop=False) as server:
        proc = run_cli("--source", server.url, "--output", str(out), "--model",
                       str(tiny_single_model), "--engine", "torch", "--detector", "full",
                       "--metrics", str(metrics), "--set", "source.reconnect_max_attempts=0",
                       timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(metrics.read_text())
    assert summary["frames_written"] > 50
    assert summary["frames_parsed"] < summary["frames_written"]  # latest: parse the newest
    assert frame_count(out) == summary["frames_written"]


def test_run_command_maps_errors_to_one_line_and_exit_codes(capsys):
    # The shape every command's main shares (apps.common.run_command): argparse's codes, one
    # "error:" line and 2 for a ConfigError, 1 (or the signal's code) for other user errors.
    import argparse

    from streamer.apps.common import ENGINE_CHOICES, SignalStop, add_log_level, run_command
    from streamer.core.errors import ConfigError, SinkError
    from streamer.parsing.engines import ENGINES

    assert ENGINE_CHOICES == ENGINES  # --engine's choices, written out to keep torch out of --help
    parser = argparse.ArgumentParser(prog="demo")
    add_log_level(parser)

    def raising(exc: BaseException):
        def body(args: argparse.Namespace) -> int:
            raise exc
        return body

    assert run_command(parser, [], lambda args: 7) == 7
    assert run_command(parser, ["--bogus"], lambda args: 0) == 2
    assert run_command(parser, ["--help"], lambda args: 1) == 0
    capsys.readouterr()
    assert run_command(parser, [], raising(ConfigError("bad key", hint="fix it"))) == 2
    assert capsys.readouterr().err == "error: bad key; fix it\n"
    assert run_command(parser, [], raising(SinkError("disk full")), failed="out: ") == 1
    assert capsys.readouterr().err == "error: out: disk full\n"
    stopper = SignalStop()
    assert run_command(parser, [], raising(KeyboardInterrupt()), signals=stopper) == 130
    stopper(signal.SIGTERM, None)
    assert run_command(parser, [], raising(SinkError("cut")), signals=stopper) == 143
    assert run_command(parser, [], raising(ConfigError("bad")), signals=stopper) == 2
    with pytest.raises(ZeroDivisionError):  # a bug is no user error: it goes on up
        run_command(parser, [], raising(ZeroDivisionError()))
