"""Faults and bad input, end to end: run_stream.py in a subprocess against a real RTSP server,
damaged files, signals, a full disk and unwritable outputs.

Unit-level cases live beside their code (test_sources, test_rtsp, test_sinks, test_pipeline);
these check what a user sees: exit codes, the one-line messages, the metrics JSON, and that
the output video plays (decoded with PyAV, frame count equal to ``frames_written``).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest
from media_helpers import RtspServer, is_fast_start, make_clip, rtsp_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "run_stream.py")]
# Reconnect fast in tests: the outage itself (3 s) dominates, not the backoff.
FAST_RECONNECT = [
    "--set", "source.open_timeout_s=2", "--set", "source.read_timeout_s=2",
    "--set", "source.reconnect_base_s=0.2", "--set", "source.reconnect_cap_s=0.5",
    "--set", "source.reconnect_max_attempts=30",
]


def needs_rtsp() -> None:
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)


def tiny_args(model: Path) -> list[str]:
    return ["--model", str(model), "--engine", "torch", "--detector", "full", "--no-progress"]


def probe(path: Path) -> dict:
    """Decode every frame of ``path``: count, sizes and timestamps (seconds)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return {
        "frames": len(frames),
        "sizes": {(f.width, f.height) for f in frames},
        "times": [float(f.pts * f.time_base) for f in frames],
    }


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               run: CliRun | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run is not None and run.proc.poll() is not None:
            time.sleep(0.2)  # let the reader threads collect the last lines
            raise AssertionError(f"run_stream.py exited ({run.proc.returncode}) waiting for "
                                 f"{what}:\n{run.stderr[-3000:]}")
        if time.monotonic() > deadline:
            tail = f":\n{run.stderr[-3000:]}" if run is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{tail}")
        time.sleep(0.05)


def lines_in(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


class CliRun:
    """run_stream.py in a subprocess; its stderr lines are collected, with arrival times."""

    def __init__(self, *args: str | Path, **popen: object) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*CLI, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, **popen)
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._readers = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def seen(self, needle: str) -> float | None:
        """When a stderr line containing ``needle`` arrived (``time.monotonic()``), if one did."""
        return next((t for t, line in list(self.lines) if needle in line), None)

    def wait_for_line(self, needle: str, timeout: float) -> float:
        wait_until(lambda: self.seen(needle) is not None, timeout, repr(needle), self)
        stamp = self.seen(needle)
        assert stamp is not None
        return stamp

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"run_stream.py did not end within {timeout} s:\n{self.stderr}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def faststart_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "faststart.mp4"
    return make_clip(path, frames=100, size=(160, 120), fps=25, faststart=True)


# ------------------------------------------------------------------------------------ live
def _live_through_outage(tmp_path: Path, model: Path, clip: Path,
                         outage: Callable[[RtspServer, CliRun], None], *, after: int,
                         what: str, stop: signal.Signals) -> tuple[CliRun, Path, Path, Path]:
    """run_stream.py on an RTSP stream of ``clip``: 25 frames written, ``outage(server, run)``,
    a reconnect, ``after`` more frames (``what``), then ``stop``: the run must end with
    128 + ``stop`` and no error line. Returns ``(run, out, metrics, stats)``."""
    out, metrics, stats = tmp_path / "live.mp4", tmp_path / "m.json", tmp_path / "s.jsonl"
    with RtspServer(clip, loop=True) as server:
        run = CliRun("--source", server.url, "--output", out, "--metrics", metrics,
                     "--stats-jsonl", stats, *tiny_args(model), *FAST_RECONNECT)
        try:
            wait_until(lambda: lines_in(stats) >= 25, 60, "frames written", run)
            outage(server, run)
            run.wait_for_line("reconnected to", 20)
            before = lines_in(stats)
            wait_until(lambda: lines_in(stats) >= before + after, 30, what, run)
            run.proc.send_signal(stop)
            code = run.finish(60)
        finally:
            run.kill()
    assert code == 128 + stop, run.stderr
    assert "Traceback" not in run.stderr and not error_lines(run.stderr)
    return run, out, metrics, stats


def test_rtsp_outage_is_bridged_and_sigint_finalises(tmp_path: Path, tiny_single_model: Path):
    """Server killed mid-stream, back 3 s later on the same port: the run reconnects, keeps
    writing, counts the gap; SIGINT then ends it with 130 and a playable output."""
    needs_rtsp()
    clip = make_clip(tmp_path / "cam.mp4", frames=50, size=(160, 120), fps=25)

    marks: dict[str, float] = {}

    def outage(server: RtspServer, run: CliRun) -> None:
        marks["killed"] = time.monotonic()
        server.kill()
        time.sleep(3)
        server.restart()
        marks["detected"] = run.wait_for_line("disconnected; reconnecting", 10)

    run, out, metrics, stats = _live_through_outage(
        tmp_path, tiny_single_model, clip, outage, after=25, what="frames after the gap",
        stop=signal.SIGINT)
    # Within the read timeout (2 s), with some slack.
    assert marks["detected"] - marks["killed"] < 2 + 1.5
    assert "gap" in run.stderr  # the gap is logged
    summary = json.loads(metrics.read_text())
    assert summary["reconnects"] == 1
    assert summary["gap_seconds"] >= 2.5
    video = probe(out)
    assert video["frames"] == summary["frames_written"] == lines_in(stats)
    times = video["times"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    big = max(range(len(gaps)), key=gaps.__getitem__)
    assert 2.5 < gaps[big] < 10  # the outage shows in the timeline...
    assert len(times) - big - 1 >= 25  # ...and writing went on after it


def test_rtsp_new_resolution_after_reconnect_and_sigterm(tmp_path: Path,
                                                         tiny_single_model: Path):
    """The camera comes back at another size: the run goes on, the file keeps its size."""
    needs_rtsp()
    small = make_clip(tmp_path / "small.mp4", frames=50, size=(160, 120), fps=25)
    large = make_clip(tmp_path / "large.mp4", frames=50, size=(320, 240), fps=25)

    def outage(server: RtspServer, run: CliRun) -> None:
        server.kill()
        server.clip = large
        server.restart()

    run, out, metrics, stats = _live_through_outage(
        tmp_path, tiny_single_model, small, outage, after=40, what="frames at the new size",
        stop=signal.SIGTERM)
    assert "rescaling to the output's 160x120" in run.stderr
    summary = json.loads(metrics.read_text())
    assert summary["reconnects"] == 1
    video = probe(out)
    assert video["sizes"] == {(160, 120)}
    assert video["frames"] == summary["frames_written"] == lines_in(stats)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["closed-port", "wrong-path", "missing-webcam"])
def test_unreachable_source_is_one_line_in_bounded_time(tmp_path: Path, tiny_single_model: Path,
                                                        kind: str):
    settings = ["--set", "source.reconnect_max_attempts=2", "--set", "source.open_timeout_s=1",
                "--set", "source.read_timeout_s=1", "--set", "source.reconnect_base_s=0.1",
                "--set", "source.reconnect_cap_s=0.2"]
    server = None
    if kind == "closed-port":
        url, needles = f"rtsp://127.0.0.1:{_closed_port()}/stream", ["cannot connect", "3 attempt"]
    elif kind == "wrong-path":
        needs_rtsp()
        server = RtspServer(make_clip(tmp_path / "c.mp4", frames=25), loop=True).start()
        url, needles = server.url.replace("/stream", "/nothing"), []
    else:
        url, needles = "/dev/video99", ["webcam", "not found"]
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [*CLI, "--source", url, "--output", str(tmp_path / "o.mp4"),
             *tiny_args(tiny_single_model), *settings],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if server is not None:
            server.kill()
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert url in errors[0]
    for needle in needles:
        assert needle in errors[0]
    assert elapsed < 20
    assert not (tmp_path / "o.mp4").exists()


# ------------------------------------------------------------------------------ bad files
def _truncated(clip: Path, target: Path) -> Path:
    data = clip.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _bit_flipped(clip: Path, target: Path) -> Path:
    data = bytearray(clip.read_bytes())
    rng = random.Random(11)
    middle = len(data) // 2
    for _ in range(200):  # damage packets in the middle third, leave the index alone
        data[rng.randrange(middle - len(data) // 6, middle + len(data) // 6)] ^= (
            1 << rng.randrange(8))
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("damage, at_least", [(_truncated, 20), (_bit_flipped, 50)])
def test_damaged_file_is_decoded_as_far_as_possible(tmp_path: Path, faststart_clip: Path,
                                                    tiny_single_model: Path, damage, at_least):
    bad = damage(faststart_clip, tmp_path / "bad.mp4")
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "--source", str(bad), "--output", str(out), "--metrics", str(metrics),
         *tiny_args(tiny_single_model), "--parse-every", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and not error_lines(proc.stderr)
    summary = json.loads(metrics.read_text())
    assert at_least <= summary["frames_written"] <= 100
    assert probe(out)["frames"] == summary["frames_written"]
    damaged = summary["decode_errors"] + summary["packets_corrupt"] + summary["frames_corrupt"]
    assert damaged > 0, summary  # the damage is counted...
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "damaged" in warnings[0], proc.stderr  # ...and reported


# -------------------------------------------------------------------------------- signals
def _last_sigint(run: CliRun) -> float:
    """One more SIGINT: the run must end with 130 and no traceback. Returns how long (s) it
    took to end after the signal."""
    started = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(60)
    took = time.monotonic() - started
    assert code == 130, run.stderr
    assert "Traceback" not in run.stderr
    return took


def test_second_sigint_exits_at_once(tmp_path: Path, tiny_single_model: Path):
    """After a first SIGINT the run still writes out every frame already parsed, which takes
    seconds here (the whole clip is parsed at once: one parse reused for all frames, a large
    buffer, a slow lossless encoder); a second SIGINT ends the process at once."""
    clip = make_clip(tmp_path / "big.mp4", frames=200, size=(960, 540), fps=25)
    out, stats = tmp_path / "out.mp4", tmp_path / "s.jsonl"
    run = CliRun("--source", clip, "--output", out, "--stats-jsonl", stats,
                 *tiny_args(tiny_single_model), "--parse-every", "1000",
                 "--set", "buffer.size=1000", "--set", "output.preset=veryslow",
                 "--set", "output.crf=0")
    try:
        wait_until(lambda: lines_in(stats) >= 3, 90, "frames written", run)
        time.sleep(0.5)
        run.proc.send_signal(signal.SIGINT)
        run.wait_for_line("press Ctrl-C again", 10)
        time.sleep(1.0)
        assert run.proc.poll() is None, "the first SIGINT finished too fast to test the second"
        pending = 200 - lines_in(stats)
        took = _last_sigint(run)
    finally:
        run.kill()
    assert pending >= 25  # the first SIGINT still had that many frames to write...
    assert took < 1.5, f"the second SIGINT took {took:.2f} s"  # ...the second one did not
    assert lines_in(stats) < 200
    # What was written still plays: the container was finalised, index first.
    assert is_fast_start(out)
    assert 0 < probe(out)["frames"] <= lines_in(stats)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_two_quick_sigints_keep_a_playable_output(tmp_path: Path, tiny_single_model: Path,
                                                  suffix: str):
    """Ctrl-C twice, 20 ms apart, seconds into a run: the run ends at once with 130 and the
    output holds every frame handed to it, finalised (duration, decodes to the end)."""
    clip = make_clip(tmp_path / "in.mp4", frames=400, size=(320, 240), fps=25)
    out, stats = tmp_path / f"out{suffix}", tmp_path / "s.jsonl"
    run = CliRun("--source", clip, "--output", out, "--stats-jsonl", stats,
                 *tiny_args(tiny_single_model))
    try:
        wait_until(lambda: lines_in(stats) >= 30, 90, "frames written", run)
        run.proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        took = _last_sigint(run)
    finally:
        run.kill()
    assert took < 3, f"the second SIGINT took {took:.2f} s to end the run"
    written = lines_in(stats)
    assert written < 400
    with av.open(str(out)) as container:
        assert container.duration, "no duration: the container was not finalised"
        duration = container.duration / 1e6
    with av.logging.Capture() as logs:
        video = probe(out)
    assert not [m for level, _, m in logs if level <= av.logging.ERROR], logs
    # Every frame handed to the sink plays (one may have been in flight at the signal).
    assert written - 1 <= video["frames"] <= written
    assert video["times"] == pytest.approx([i * 0.04 for i in range(video["frames"])])
    assert video["times"][-1] == pytest.approx(duration - 0.04, abs=0.05)
    if suffix == ".mp4":
        assert is_fast_start(out)


class FailingParser:
    """The real parser, raising on its ``fail_at``-th call."""

    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.single_person = inner.single_person

    def warm_up(self, frame_hw=None) -> None:
        self.inner.warm_up(frame_hw)

    def parse(self, image, persons=None, memory=None):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("parser exploded")
        return self.inner.parse(image, persons, memory=memory)


def test_worker_error_on_a_live_run_stops_cleanly(tmp_path: Path, tiny_single_model: Path):
    """The live path (latest policy, every frame written): the worker's error ends the run,
    the output is finalised, no thread is left behind. (test_pipeline covers files.)"""
    from streamer import Pipeline, load_config
    from streamer.parsing.parser import HumanParser, ParserOptions

    clip = make_clip(tmp_path / "in.mp4", frames=200, size=(160, 120), fps=25)
    out = tmp_path / "out.mp4"
    config = load_config(None, [f"parser.model='{tiny_single_model}'", "parser.engine=torch",
                                "detector.type=full", "source.realtime=true", "buffer.size=2",
                                "output.progress=false", f"output.path='{out}'"])
    inner = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))
    pipeline = Pipeline(config, str(clip), parser=FailingParser(inner, fail_at=5))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="parser exploded"):
        pipeline.run()
    assert time.monotonic() - started < 20
    assert pipeline.policy is not None and pipeline.policy.value == "latest"
    written = pipeline.metrics.frames_written
    assert 0 < written < 200
    assert probe(out)["frames"] == written
    assert not [t for t in threading.enumerate() if t.name.startswith("streamer-")]


# ------------------------------------------------------------------------------ disk full
def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: writes past `limit` fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_mid_run_is_an_error_and_keeps_a_playable_output(tmp_path: Path,
                                                                   tiny_single_model: Path):
    clip = make_clip(tmp_path / "in.mp4", frames=100, size=(320, 240), fps=25)
    out = tmp_path / "out.mp4"
    limit = 1_200_000  # lossless, this clip makes a 2 MB output: the limit is hit mid-run
    proc = subprocess.run(
        [*CLI, "--source", str(clip), "--output", str(out), *tiny_args(tiny_single_model),
         "--set", "output.crf=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        preexec_fn=_file_size_limit(limit))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and str(out) in errors[0], proc.stderr
    assert out.stat().st_size <= limit
    video = probe(out)  # the partial output was finalised: it opens and decodes
    assert 0 < video["frames"] < 100
    assert video["sizes"] == {(320, 240)}
    assert is_fast_start(out)  # the index moved to the front at the limit, too


def _small_disk_command(size_kib: int, mount: Path, keep: Path, *command: str) -> list[str]:
    """``command`` in a private mount namespace with a ``size_kib`` tmpfs at ``mount``: a real
    file system that fills up. The tmpfs dies with the namespace, so what ``mount`` holds is
    copied to ``keep`` after the command; the command's exit status is kept."""
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 97; shift 3; "$@"; rc=$?; '
              f'cp -p "{mount}"/* "{keep}"/ 2>/dev/null; exit $rc')
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "sh", "-c", script,
            "sh", str(size_kib), str(mount), str(keep), *command]


def small_disk_unavailable_reason(tmp_path: Path) -> str | None:
    mount = tmp_path / "probe"
    mount.mkdir()
    try:
        proc = subprocess.run(_small_disk_command(64, mount, tmp_path, "true"),
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare for a small tmpfs: {exc}"
    if proc.returncode != 0:
        return ("cannot mount a small tmpfs in a private mount namespace (unshare --mount: "
                f"{proc.stderr.strip()[-200:] or proc.returncode})")
    return None


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_full_disk_mid_run_finalises_the_output(tmp_path: Path, tiny_single_model: Path,
                                                suffix: str):
    """A real file system that fills up (a 1.2 MB tmpfs): the run ends with one error line and
    the partial MKV or MP4 is finalised: it has its duration and decodes to its last frame."""
    reason = small_disk_unavailable_reason(tmp_path)
    if reason:
        pytest.skip(reason)
    clip = make_clip(tmp_path / "in.mp4", frames=100, size=(320, 240), fps=25)
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    kept.mkdir()
    out = disk / f"out{suffix}"
    proc = subprocess.run(
        _small_disk_command(1200, disk, kept, *CLI, "--source", str(clip), "--output", str(out),
                            *tiny_args(tiny_single_model), "--set", "output.crf=0"),
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and str(out) in errors[0] and "space" in errors[0], proc.stderr
    saved = kept / out.name
    with av.open(str(saved)) as container:
        assert container.duration, "the container has no duration: it was not finalised"
        duration = container.duration / 1e6
    with av.logging.Capture() as logs:
        video = probe(saved)
    assert not [m for _, _, m in logs if "premature" in m.lower()], logs
    assert 5 < video["frames"] < 100
    assert video["sizes"] == {(320, 240)}
    # Decoded to the end: the last frame is where the container's duration says it ends.
    assert video["times"][-1] == pytest.approx(duration - 0.04, abs=0.05)
    assert video["times"] == pytest.approx([i * 0.04 for i in range(video["frames"])])
    if suffix == ".mp4":
        assert is_fast_start(saved)


# ------------------------------------------------------------------------ unwritable output
@pytest.mark.parametrize("where", ["proc", "file-parent", "metrics-in-proc"])
def test_unwritable_output_fails_before_any_work(tmp_path: Path, faststart_clip: Path,
                                                 where: str):
    # root may write in any folder, so the unwritable place is one no one can write in:
    # /proc, or a "folder" that is a regular file.
    out, extra = tmp_path / "o.mp4", []
    if where == "proc":
        out = Path("/proc/streamer-test-out.mp4")
    elif where == "file-parent":
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "o.mp4"
    else:
        extra = ["--metrics", "/proc/streamer-test-metrics.json"]
    bad = str(out) if not extra else extra[1]
    started = time.monotonic()
    # A model directory that does not exist: reaching the model would be a different error.
    proc = subprocess.run(
        [*CLI, "--source", str(faststart_clip), "--output", str(out), *extra,
         "--model", str(tmp_path / "no-model"), "--engine", "torch", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 10
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert str(Path(bad).parent) in errors[0] and "no-model" not in errors[0]
    assert not Path(bad).exists()
