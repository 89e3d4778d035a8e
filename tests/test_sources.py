"""Sources on real files: generated clips, damaged copies, images and ../shared/media clips."""

from __future__ import annotations

import random
import time
from fractions import Fraction
from itertools import islice, pairwise
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media_helpers import make_clip, shared_video

from streamer.core.errors import ConfigError, SourceError
from streamer.io.sources import (
    FileSource,
    ImageSource,
    RtspSource,
    SourceOptions,
    WebcamSource,
    open_source,
    redact_url,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("src") / "clip.mp4", frames=50, fps=25)


@pytest.fixture(scope="module")
def faststart_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "faststart.mp4"
    return make_clip(path, frames=100, fps=25, faststart=True)


def assert_one_line_error(exc: BaseException, *words: str) -> None:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and text
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"


def test_file_source_frames_and_timing(clip: Path) -> None:
    with open_source(str(clip)) as source:
        assert isinstance(source, FileSource)
        info = source.info
        assert (info.width, info.height, info.fps) == (160, 120, 25.0)
        assert info.frame_count == 50 and not info.is_live and not info.has_audio
        assert info.time_base == Fraction(1, 12800)
        frames = list(source)
    assert [f.index for f in frames] == list(range(50))
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8
    assert [f.pts for f in frames] == [i * 512 for i in range(50)]
    assert all(f.time_base == Fraction(1, 12800) for f in frames)
    assert frames[10].timestamp == pytest.approx(0.4)
    assert all(a.capture_time <= b.capture_time for a, b in pairwise(frames))
    assert source.stats.frames_decoded == 50
    assert source.stats.decode_errors == 0


def test_file_source_reports_audio(tmp_path: Path) -> None:
    with FileSource(make_clip(tmp_path / "a.mp4", frames=10, audio=True)) as source:
        assert source.info.has_audio


def test_realtime_paces_a_file(clip: Path) -> None:
    started = time.monotonic()
    with FileSource(clip, SourceOptions(realtime=True)) as source:
        frames = list(islice(source, 11))
    assert time.monotonic() - started >= 0.38  # 10 frame intervals of 40 ms
    spread = frames[-1].capture_time - frames[0].capture_time
    assert 0.38 <= spread < 1.0  # paced, never early (late only under heavy load)


def _text_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    return path


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100, layout="mono")
        samples = np.zeros((1, 1024), np.float32)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda tmp: tmp / "missing.mp4", ["not found", "missing.mp4"]),
        (lambda tmp: tmp, ["is a directory"]),
        (lambda tmp: (tmp / "empty.mp4").write_bytes(b"") or tmp / "empty.mp4", ["empty"]),
        (_text_mp4, ["notes.mp4", "cannot read"]),
        (_audio_only, ["no video stream", "audio"]),
    ],
    ids=["missing", "directory", "zero-byte", "text-named-mp4", "no-video-stream"],
)
def test_bad_file_inputs_are_one_line_source_errors(tmp_path: Path, make, words) -> None:
    path = make(tmp_path)
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        FileSource(path)
    assert time.monotonic() - started < 2
    assert_one_line_error(err.value, *words)


def test_open_source_on_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        open_source(str(tmp_path))
    assert_one_line_error(err.value, "has no images")


def test_truncated_file_decodes_what_it_can(tmp_path: Path, faststart_clip: Path) -> None:
    data = faststart_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    started = time.monotonic()
    with FileSource(cut) as source:
        frames = list(source)
    assert time.monotonic() - started < 10
    assert 20 <= len(frames) < 100
    assert source.stats.frames_decoded == len(frames)
    assert source.stats.decode_errors + source.stats.packets_corrupt >= 1


def test_truncated_file_without_index_is_a_source_error(tmp_path: Path, clip: Path) -> None:
    data = clip.read_bytes()  # moov atom at the end: a cut file has no index at all
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError) as err:
        FileSource(cut)
    assert_one_line_error(err.value, "cut.mp4")


def test_bit_flipped_file_decodes_and_counts_damage(tmp_path: Path, faststart_clip: Path) -> None:
    data = bytearray(faststart_clip.read_bytes())
    rng = random.Random(7)
    for _ in range(300):  # leave the header (first 2 kB) alone, damage the frames
        data[rng.randrange(2000, len(data))] ^= 1 << rng.randrange(8)
    flipped = tmp_path / "flipped.mp4"
    flipped.write_bytes(bytes(data))
    started = time.monotonic()
    with FileSource(flipped) as source:
        frames = list(source)
    assert time.monotonic() - started < 10
    stats = source.stats
    assert len(frames) >= 50
    assert stats.frames_corrupt + stats.decode_errors + stats.packets_corrupt > 0


def test_image_folder_in_natural_order(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        img = np.full((24, 32, 3), n, np.uint8)
        img[..., 0] = 200  # red in RGB
        cv2.imwrite(str(tmp_path / f"img{n}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "readme.txt").write_text("ignored")
    with open_source(tmp_path, SourceOptions(image_fps=2)) as source:
        assert isinstance(source, ImageSource) and not source.is_live
        assert source.info.fps == 2 and source.info.frame_count == 4
        frames = list(source)
    assert [int(f.image[0, 0, 1]) for f in frames] == [1, 2, 10]
    assert all(f.image[0, 0, 0] == 200 for f in frames)  # converted to RGB
    assert [f.index for f in frames] == [0, 1, 2]
    assert source.stats.decode_errors == 1


def test_single_image(tmp_path: Path) -> None:
    path = tmp_path / "one.jpg"
    cv2.imwrite(str(path), np.zeros((20, 30, 3), np.uint8))
    with open_source(str(path)) as source:
        frames = list(source)
    assert len(frames) == 1 and frames[0].image.shape == (20, 30, 3)
    assert frames[0].timestamp == 0.0


@pytest.mark.parametrize("device", [99, "99", "/dev/video99"])
def test_missing_webcam_fails_fast(device: int | str) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        open_source(device)
    assert time.monotonic() - started < 2
    assert_one_line_error(err.value, "webcam", "99")


def test_webcam_class_directly() -> None:
    with pytest.raises(SourceError):
        WebcamSource(99)


def test_rtsp_url_routes_to_rtsp_source_and_fails_bounded() -> None:
    options = SourceOptions(reconnect_max_attempts=1, reconnect_base_s=0.05, open_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        open_source("rtsp://user:secret@127.0.0.1:9/nothing", options)
    assert time.monotonic() - started < 5
    assert_one_line_error(err.value, "rtsp://user:***@127.0.0.1:9/nothing", "2 attempt")
    assert "secret" not in str(err.value)
    assert RtspSource.__name__ == "RtspSource"


def test_redact_url() -> None:
    assert redact_url("rtsp://a:b@h:554/x") == "rtsp://a:***@h:554/x"
    assert redact_url("rtsp://h/x") == "rtsp://h/x"


@pytest.mark.parametrize(
    "kwargs",
    [{"transport": "http"}, {"open_timeout_s": 0}, {"reconnect_max_attempts": -1},
     {"reconnect_base_s": 5, "reconnect_cap_s": 1}],
)  # fmt: skip
def test_bad_options_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SourceOptions(**kwargs)


def test_backoff_doubles_up_to_cap() -> None:
    opts = SourceOptions(reconnect_base_s=0.5, reconnect_cap_s=3)
    assert [opts.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.media
@pytest.mark.parametrize(
    ("name", "count", "fps"),
    [("chaplin_bw.mp4", 241, 25.0), ("mmaction2_basketball.mp4", 300, 30000 / 1001)],
)
def test_shared_clips(name: str, count: int, fps: float) -> None:
    path = shared_video(name)
    if path is None:
        pytest.skip(f"../shared/media/videos/{name} is absent (shared media not checked out)")
    with open_source(str(path)) as source:
        assert source.info.fps == pytest.approx(fps)
        n = sum(1 for _ in source)
    assert n == count == source.stats.frames_decoded
