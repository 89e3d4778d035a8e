"""run_stream.py against hostile inputs (issue 14): outputs that are the input, unreadable
images, odd sizes and aspect ratios, unwritable label folders, broken config files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from media_helpers import make_clip

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


def error_line(proc: subprocess.CompletedProcess | Ran, code: int) -> str:
    """The one ``error:`` line of a failed run (and no traceback)."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_main(capsys):
    """``run_stream.py`` in this process (no interpreter start-up: checks that must fail before
    any work are cheap to run this way); its signal handlers are put back afterwards."""
    from streamer.apps.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def call(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    yield call
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("inputs") / "clip.mp4", frames=12,
                     size=(160, 120), fps=25)


# ------------------------------------------------------------------ item 1: output == input
@pytest.mark.parametrize("how", ["same-string", "dot-path", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused_before_work(tmp_path, clip, how, cli_main):
    source = tmp_path / "c.mp4"
    shutil.copy(clip, source)
    before = digest(source)
    output = {"same-string": str(source), "dot-path": f"{tmp_path}/./c.mp4"}.get(how)
    if how == "symlink":
        os.symlink(source, tmp_path / "link.mp4")
        output = str(tmp_path / "link.mp4")
    elif how == "hardlink":
        os.link(source, tmp_path / "hard.mp4")
        output = str(tmp_path / "hard.mp4")
    # A model that does not exist: reaching the model would be a different error.
    args = ("--source", str(source), "--output", output, "--model",
            str(tmp_path / "no-model"), "--engine", "torch", "--no-progress")
    proc = run_cli(*args) if how == "same-string" else cli_main(*args)
    line = error_line(proc, 2)
    assert "--output" in line and "is the input" in line and "no-model" not in line
    assert digest(source) == before


@pytest.mark.parametrize("option", ["--stats-jsonl", "--metrics", "--labels-out"])
def test_side_outputs_that_are_the_input_are_refused(tmp_path, clip, option, cli_main):
    source = tmp_path / "c.mp4"
    shutil.copy(clip, source)
    before = digest(source)
    os.link(source, tmp_path / "hard.jsonl")
    target = str(tmp_path / "hard.jsonl") if option != "--labels-out" else str(source)
    proc = cli_main("--source", str(source), option, target, "--model",
                    str(tmp_path / "no-model"), "--engine", "torch", "--no-progress")
    line = error_line(proc, 2)
    assert option in line and "is the input" in line
    assert digest(source) == before


def test_labels_into_the_image_folder_being_read_are_refused(tmp_path, cli_main):
    folder = tmp_path / "frames"
    folder.mkdir()
    first = write_image(folder / "a.png", 64, 48)
    before = digest(first)
    proc = cli_main("--source", str(folder), "--labels-out", str(folder), "--model",
                    str(tmp_path / "no-model"), "--engine", "torch")
    assert "image folder being read" in error_line(proc, 2)
    # A photo's label map is named after it: its own folder would overwrite it.
    proc = cli_main("--source", str(first), "--labels-out", str(folder), "--model",
                    str(tmp_path / "no-model"), "--engine", "torch")
    assert "--labels-out" in error_line(proc, 2)
    assert digest(first) == before and sorted(p.name for p in folder.iterdir()) == ["a.png"]


# ------------------------------------------------------------- item 8: unwritable labels
def test_labels_out_under_proc_fails_before_work(tmp_path, clip, cli_main):
    proc = cli_main("--source", str(clip), "--labels-out", "/proc/streamer-test-labels",
                   "--model", str(tmp_path / "no-model"), "--engine", "torch")
    line = error_line(proc, 1)
    assert "/proc/streamer-test-labels" in line and "no-model" not in line


def test_labels_out_on_a_read_only_mount_fails_before_work(tmp_path, clip):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to make a read-only bind mount")
    ro = tmp_path / "ro"
    (ro / "labels").mkdir(parents=True)
    cli = " ".join(f"'{a}'" for a in (
        sys.executable, str(ROOT / "run_stream.py"), "--source", str(clip), "--labels-out",
        str(ro / "labels"), "--model", str(tmp_path / "no-model"), "--engine", "torch"))
    script = f"mount --bind '{ro}' '{ro}' && mount -o remount,bind,ro '{ro}' && exec {cli}"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode().strip()}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    line = error_line(proc, 1)
    assert str(ro / "labels") in line and "no-model" not in line


# ------------------------------------------------------- item 4: an unreadable first image
def test_unreadable_first_image_is_skipped_and_does_not_size_the_output(
        tmp_path, tiny_single_model):
    import av

    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "00_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    write_image(folder / "01.png", 96, 64, seed=1)
    write_image(folder / "02.png", 96, 64, seed=2)
    out = tmp_path / "out.mp4"
    proc = run_cli("--source", str(folder), "--output", str(out), "--model",
                   str(tiny_single_model), "--engine", "torch", "--detector", "full",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "skipping unreadable image" in proc.stderr and "00_broken.png" in proc.stderr
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 2 and (frames[0].width, frames[0].height) == (96, 64)


def test_a_folder_of_only_unreadable_images_fails(tmp_path, cli_main):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"garbage")
    proc = cli_main("--source", str(folder), "--output", str(tmp_path / "o.mp4"), "--model",
                    str(tmp_path / "no-model"), "--engine", "torch")
    assert "none of the 2 images" in error_line(proc, 1)
    assert not (tmp_path / "o.mp4").exists()


# ------------------------------------------- item 20: label maps named after their images
def test_labels_out_alone_names_maps_after_their_images(tmp_path, tiny_single_model):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(("img10.jpg", "img2.png", "zz.bmp")):
        write_image(folder / name, 64, 48, seed=i)
    labels = tmp_path / "labels"
    proc = run_cli("--source", str(folder), "--labels-out", str(labels), "--model",
                   str(tiny_single_model), "--engine", "torch", "--detector", "full",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in labels.iterdir()) == ["img10.png", "img2.png", "zz.png"]
    for p in labels.iterdir():
        label = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert label.shape == (48, 64) and label.dtype == np.uint8


def test_stats_jsonl_alone_is_something_to_do(tmp_path, clip, tiny_single_model):
    stats = tmp_path / "s.jsonl"
    proc = run_cli("--source", str(clip), "--stats-jsonl", str(stats), "--model",
                   str(tiny_single_model), "--engine", "torch", "--detector", "full",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    assert len(records) == 12


# ------------------------------------------------------------- items 9, 10: config files
@pytest.mark.parametrize("text", [b"parse:\n  every: 2  # \xe9\xff\n", b"detector:\n  pad: .nan\n"])
def test_bad_config_files_are_one_line(tmp_path, clip, cli_main, text):
    config = tmp_path / "c.yaml"
    config.write_bytes(text)
    proc = cli_main("--config", str(config), "--source", str(clip), "--output",
                    str(tmp_path / "o.mp4"), "--model", str(tmp_path / "no-model"))
    line = error_line(proc, 2)
    assert str(config) in line or "detector.pad" in line
    assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------- item 5: a model without its weights
@pytest.mark.parametrize("engine", ["openvino", "onnxruntime", "torchscript", "torch"])
def test_model_dir_without_checkpoint_is_one_line_on_every_engine(
        tmp_path, clip, tiny_single_model, cli_main, engine):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_single_model / "configuration.json", model)
    proc = cli_main("--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--model",
                    str(model), "--engine", engine, "--no-progress")
    line = error_line(proc, 1)
    assert "no pytorch_model.pt in model directory" in line and str(model) in line


# ------------------------------------- item 6: --parse-every over images of different sizes
@pytest.mark.parametrize("detector", ["full", "hog"])
def test_parse_every_over_images_of_different_sizes(tmp_path, tiny_single_model, detector):
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = [(120, 90), (90, 86), (90, 86), (120, 90), (64, 140)]
    for i, (w, h) in enumerate(sizes):
        write_image(folder / f"{i:02d}.png", w, h, seed=i)
    labels, out = tmp_path / "labels", tmp_path / "o.mp4"
    proc = run_cli("--source", str(folder), "--parse-every", "2", "--output", str(out),
                   "--labels-out", str(labels), "--model", str(tiny_single_model),
                   "--engine", "torch", "--detector", detector, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for i, (w, h) in enumerate(sizes):
        label = cv2.imread(str(labels / f"{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == (h, w)


# ------------------------------------------------ item 7: extreme aspect ratios, tiny frames
@pytest.fixture(scope="module")
def thin_inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("thin")
    return {
        "video-2x4000": make_clip(folder / "thin.mp4", frames=3, size=(2, 4000), fps=25),
        "png-1x40000": write_image(folder / "tall.png", 1, 40000),
        "png-40000x1": write_image(folder / "wide.png", 40000, 1),
        "png-6x6": write_image(folder / "tiny.png", 6, 6),
    }


@pytest.mark.parametrize("name", ["video-2x4000", "png-1x40000", "png-40000x1", "png-6x6"])
@pytest.mark.parametrize("detector", ["hog", "full"])
def test_a_frame_too_thin_to_parse_is_one_line_before_work(
        tmp_path, tiny_single_model, thin_inputs, cli_main, name, detector):
    source = thin_inputs[name]
    out = tmp_path / ("o.png" if name.startswith("png") else "o.mp4")
    proc = cli_main("--source", str(source), "--output", str(out), "--model",
                    str(tiny_single_model), "--engine", "torch", "--detector", detector)
    line = error_line(proc, 1)
    assert str(source) in line and "too small or too thin to parse" in line
    assert not out.exists()


def test_thin_images_in_a_folder_pass_through_unparsed(tmp_path, tiny_multi_model):
    folder = tmp_path / "frames"
    folder.mkdir()
    write_image(folder / "a.png", 96, 64, seed=1)
    write_image(folder / "b.png", 3, 300, seed=2)
    write_image(folder / "c.png", 96, 64, seed=3)
    labels = tmp_path / "labels"
    proc = run_cli("--source", str(folder), "--output", str(tmp_path / "o.mp4"),
                   "--labels-out", str(labels), "--model", str(tiny_multi_model),
                   "--engine", "torch", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "image b is passed through unparsed" in proc.stderr
    thin = cv2.imread(str(labels / "b.png"), cv2.IMREAD_UNCHANGED)
    assert thin.shape == (300, 3) and not thin.any()
    assert cv2.imread(str(labels / "c.png"), cv2.IMREAD_UNCHANGED).shape == (64, 96)


# --------------------------------------------- item 22: try a few frames, and say how long
def decoded(path: Path) -> list:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_start_and_max_frames_cut_a_video(tmp_path, clip, tiny_single_model):
    out, metrics = tmp_path / "o.mp4", tmp_path / "m.json"
    proc = run_cli("--source", str(clip), "--start", "0.2", "--max-frames", "4", "--output",
                   str(out), "--metrics", str(metrics), "--model", str(tiny_single_model),
                   "--engine", "torch", "--detector", "full", "--set", "render.alpha=0",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(metrics.read_text())["frames_read"] == 4
    got, source = decoded(out), decoded(clip)
    assert len(got) == 4
    # The output starts at 0.2 s, i.e. at source frame 5 (25 fps), not at frame 0.
    diffs = [np.abs(got[0].astype(int) - s.astype(int)).mean() for s in source]
    assert int(np.argmin(diffs)) == 5
    import av

    with av.open(str(out)) as container:
        assert next(container.decode(video=0)).time == pytest.approx(0.0, abs=1e-3)


def test_start_and_max_frames_on_an_image_folder(tmp_path, tiny_single_model, cli_main):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        write_image(folder / f"p{i}.png", 48, 64, seed=i)
    labels = tmp_path / "labels"
    proc = cli_main("--source", str(folder), "--start", "2", "--max-frames", "3",
                    "--labels-out", str(labels), "--model", str(tiny_single_model),
                    "--engine", "torch", "--detector", "full", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in labels.iterdir()) == ["p2.png", "p3.png", "p4.png"]


@pytest.mark.parametrize("args, needle", [
    (("--start", "5"), "past the end"),
    (("--start", "-1"), "source.start"),
    (("--max-frames", "0"), "source.max_frames"),
])
def test_bad_start_or_max_frames_is_one_line(tmp_path, clip, cli_main, args, needle):
    proc = cli_main("--source", str(clip), *args, "--output", str(tmp_path / "o.mp4"),
                    "--model", str(tmp_path / "no-model"), "--engine", "torch")
    assert needle in error_line(proc, 1 if needle == "past the end" else 2)


def test_start_is_refused_for_live_sources():
    from streamer.core.errors import ConfigError
    from streamer.io.sources import SourceOptions, open_source

    with pytest.raises(ConfigError, match="not to the live source"):
        open_source("rtsp://127.0.0.1:9/none", SourceOptions(start=3))


def test_first_run_says_it_compiles_and_prints_an_estimate(tmp_path, tiny_single_model):
    clip = make_clip(tmp_path / "c.mp4", frames=30, size=(96, 72), fps=25)
    env = {**os.environ, "STREAMER_CACHE": str(tmp_path / "cache")}  # a cold engine cache
    proc = run_cli("--source", str(clip), "--output", str(tmp_path / "o.mp4"), "--model",
                   str(tiny_single_model), "--engine", "openvino", "--detector", "full",
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("compiling the OpenVINO engine") for line in lines), lines
    estimates = [line for line in lines if line.startswith("estimate: 30 frames at ")]
    assert len(estimates) == 1 and "to go" in estimates[0], lines
    # A second run loads the cached engine: nothing to announce.
    again = run_cli("--source", str(clip), "--output", str(tmp_path / "o2.mp4"), "--model",
                    str(tiny_single_model), "--engine", "openvino", "--detector", "full",
                    "--no-progress", "--max-frames", "2", env=env)
    assert again.returncode == 0, again.stderr
    assert "compiling" not in again.stderr


@pytest.mark.parametrize("size", [(160, 8), (10, 200)])
def test_photos_at_the_size_limits_are_parsed(tmp_path, tiny_single_model, cli_main, size):
    photo = write_image(tmp_path / "edge.png", *size)
    out = tmp_path / "o.png"
    proc = cli_main("--source", str(photo), "--output", str(out), "--model",
                    str(tiny_single_model), "--engine", "torch", "--detector", "hog")
    assert proc.returncode == 0, proc.stderr
    assert cv2.imread(str(out)).shape[:2] == (size[1], size[0])
