"""Sinks writing real files, decoded back with PyAV."""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media_helpers import is_fast_start, make_clip, mp4_atoms, shared_video

from streamer.core.errors import SinkError
from streamer.core.types import VideoInfo
from streamer.io.sinks import (
    JsonlStatsSink,
    LabelMapSink,
    VideoFileSink,
    WindowSink,
    check_output_path,
    load_label_maps,
)
from streamer.io.sinks.video import encoder_threads
from streamer.io.sources import FileSource


def probe(path: Path) -> dict:
    """Frame times, images and stream facts of a video file, decoded with PyAV."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        facts = {
            "duration": container.duration / 1e6 if container.duration else None,
            "audio": audio.codec_context.name if audio else None,
            "size": (video.codec_context.width, video.codec_context.height),
        }
        frames = list(container.decode(video))
    facts["times"] = [float(f.pts * f.time_base) for f in frames]
    picks = {0, len(frames) // 2, len(frames) - 1} if len(frames) > 8 else range(len(frames))
    facts["images"] = {i: frames[i].to_ndarray(format="rgb24") for i in picks}
    if audio is not None:
        with av.open(str(path)) as container:
            packets = [p for p in container.demux(audio=0) if p.size]
            end = packets[-1].pts + packets[-1].duration
            facts["audio_span"] = float((end - packets[0].pts) * packets[0].time_base)
    return facts


def copy_video(src: Path, dst: Path, audio: bool = True) -> list:
    """Decode ``src`` and write every frame with its pts into ``dst``; return the source frames."""
    with FileSource(src) as source:
        audio_from = str(src) if audio and source.info.has_audio else None
        sink = VideoFileSink(dst, source.info, audio_from=audio_from, crf=18, preset="ultrafast")
        with sink:
            frames = []
            for frame in source:
                sink.write(frame.image, frame.pts, frame.time_base)
                frames.append(frame)
    assert sink.frames_written == len(frames)
    return frames


def assert_same_video(src: Path, dst: Path, frames: list, tol: float) -> None:
    original, written = probe(src), probe(dst)
    assert len(written["times"]) == len(frames) == len(original["times"])
    assert written["times"] == pytest.approx([f.timestamp for f in frames], abs=tol)
    assert written["times"] == pytest.approx(original["times"], abs=tol)
    assert written["duration"] == pytest.approx(original["duration"], abs=max(tol, 0.03))
    for i in (0, len(frames) // 2, len(frames) - 1):
        diff = np.abs(written["images"][i].astype(int) - frames[i].image.astype(int)).mean()
        assert diff < 6, f"frame {i} differs by {diff:.1f} on average"


@pytest.mark.parametrize(("suffix", "tol"), [(".mp4", 1e-9), (".mkv", 1e-3)])
def test_round_trip_keeps_frames_and_timestamps(tmp_path: Path, suffix: str, tol: float) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=40, size=(160, 120), fps=25)
    frames = copy_video(src, tmp_path / f"out{suffix}")
    assert_same_video(src, tmp_path / f"out{suffix}", frames, tol)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_is_copied(tmp_path: Path, suffix: str) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=50, size=(96, 64), fps=25, audio=True)
    dst = tmp_path / f"out{suffix}"
    frames = copy_video(src, dst)
    assert_same_video(src, dst, frames, 1e-3)
    original, written = probe(src), probe(dst)
    assert written["audio"] == original["audio"] == "aac"
    assert written["audio_span"] == pytest.approx(original["audio_span"], abs=0.03)


def decoded_audio(path: Path) -> tuple[int, float, int]:
    """Samples decoded from the first audio stream, the first frame's time, the frame size."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    return (sum(f.samples for f in frames), float(frames[0].pts * frames[0].time_base),
            max(f.samples for f in frames))


@pytest.mark.parametrize("codec", ["aac", "libmp3lame"])
@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_audio_priming_is_carried_over(tmp_path: Path, suffix: str, codec: str) -> None:
    """An MP4's AAC/MP3 priming (the encoder delay its edit list skips) stays skipped: the
    output's audio starts where the source's does and decodes to as many samples."""
    try:
        av.codec.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip(f"this FFmpeg has no {codec} encoder")
    src = make_clip(tmp_path / "in.mp4", frames=50, size=(96, 64), fps=25, audio=True,
                    audio_codec=codec)
    with av.open(str(src)) as container:  # the source does have priming to skip
        first = next(p for p in container.demux(audio=0) if p.size)
        assert first.pts < 0 and first.has_sidedata("skip_samples")
    dst = tmp_path / f"out{suffix}"
    copy_video(src, dst)
    samples, start, frame = decoded_audio(src)
    got_samples, got_start, _ = decoded_audio(dst)
    assert got_start == pytest.approx(start, abs=1e-3)
    assert abs(got_samples - samples) < frame, (got_samples, samples)


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".m4v"])
def test_mp4_is_written_fast_start(tmp_path: Path, suffix: str) -> None:
    """The index (moov) comes first, so a browser can play the file while it downloads."""
    src = make_clip(tmp_path / "in.mp4", frames=30, size=(96, 64), fps=25, audio=True)
    assert not is_fast_start(src)  # PyAV's default: the index at the end
    dst = tmp_path / f"out{suffix}"
    frames = copy_video(src, dst)
    kinds = [kind for kind, _ in mp4_atoms(dst)]
    assert kinds[0] == "ftyp" and is_fast_start(dst), kinds
    assert_same_video(src, dst, frames, 1e-3)
    assert probe(dst)["audio"] == "aac"


def test_fast_start_output_is_finalised_when_the_block_raises(tmp_path: Path) -> None:
    info = VideoInfo(width=64, height=48, fps=25.0)
    with pytest.raises(RuntimeError, match="model crashed"):
        with VideoFileSink(tmp_path / "out.mp4", info) as sink:
            for i in range(5):
                sink.write(np.full((48, 64, 3), i * 40, np.uint8))
            raise RuntimeError("model crashed")
    assert is_fast_start(tmp_path / "out.mp4")
    assert len(probe(tmp_path / "out.mp4")["times"]) == 5


@pytest.mark.media
@pytest.mark.parametrize("name", ["chaplin_bw.mp4", "mmaction2_basketball.mp4"])
def test_shared_clips_round_trip(tmp_path: Path, name: str) -> None:
    src = shared_video(name)
    if src is None:
        pytest.skip(f"../shared/media/videos/{name} is absent (shared media not checked out)")
    dst = tmp_path / "out.mp4"
    frames = copy_video(src, dst)
    assert_same_video(src, dst, frames, 1e-9)
    assert probe(dst)["audio"] == probe(src)["audio"]  # chaplin has MP3, basketball none


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_avi_with_b_frames_keeps_its_timing(tmp_path: Path, codec: str) -> None:
    """AVI stores no presentation times; with B-frames FFmpeg's guesses are a frame late or
    out of order. The outputs must last as long as the source, one frame per step. (The
    issue's clip was 1080p; the size plays no part, so a smaller one keeps the test quick.)"""
    src = make_clip(tmp_path / "in.avi", frames=86, size=(640, 360), fps=25, gop=12,
                    bframes=2, video_codec=codec)
    with av.open(str(src)) as container:
        duration = container.duration / 1e6
    assert duration == pytest.approx(3.44)
    outputs = [tmp_path / "out.mp4", tmp_path / "out.mkv"]
    with FileSource(src) as source, contextlib.ExitStack() as stack:
        small = replace(source.info, width=160, height=90)  # the timing is what is tested
        sinks = [stack.enter_context(VideoFileSink(out, small, crf=40, preset="ultrafast"))
                 for out in outputs]
        stamps = []
        for frame in source:
            for sink in sinks:
                sink.write(frame.image[::4, ::4], frame.pts, frame.time_base)
            stamps.append(frame.timestamp)
    assert stamps == pytest.approx([i * 0.04 for i in range(86)])
    for out in outputs:
        written = probe(out)
        assert written["times"] == pytest.approx([i * 0.04 for i in range(86)], abs=1e-3), out
        assert written["duration"] == pytest.approx(duration, abs=1e-3), out


def test_colours_match_ffmpegs_own_rgb_to_yuv_conversion(tmp_path: Path) -> None:
    """The sink converts RGB to yuv420p itself (OpenCV), which must look like swscale's."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (9, 16, 3), np.uint8)
    image = cv2.resize(blocks, (320, 180), interpolation=cv2.INTER_LINEAR)
    info = VideoInfo(width=320, height=180, fps=25.0, time_base=Fraction(1, 25))
    with VideoFileSink(tmp_path / "c.mkv", info, crf=0, preset="ultrafast") as sink:
        sink.write(image)
    got = probe(tmp_path / "c.mkv")["images"][0].astype(int)  # crf 0: lossless after yuv
    swscale = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    via_swscale = swscale.to_ndarray(format="rgb24").astype(int)
    # Saturated random colours are the hard case for 4:2:0; OpenCV averages each 2x2 block's
    # chroma where swscale filters, so the error may be a little larger, never a colour cast.
    assert np.abs(got - image).mean() < np.abs(via_swscale - image).mean() + 1.0
    cast = (got - image).mean(axis=(0, 1)) - (via_swscale - image).mean(axis=(0, 1))
    assert np.abs(cast).max() < 0.5


def test_frame_counter_timing_without_pts(tmp_path: Path) -> None:
    info = VideoInfo(width=64, height=48, fps=30000 / 1001)
    with VideoFileSink(tmp_path / "out.mp4", info) as sink:
        for i in range(10):
            sink.write(np.full((48, 64, 3), i * 20, np.uint8))
    assert sink.time_base == Fraction(1001, 30000)
    times = probe(tmp_path / "out.mp4")["times"]
    assert times == pytest.approx([i * 1001 / 30000 for i in range(10)])


def test_pts_in_another_time_base_are_rescaled(tmp_path: Path) -> None:
    info = VideoInfo(width=64, height=48, fps=25.0, time_base=Fraction(1, 12800))
    with VideoFileSink(tmp_path / "out.mp4", info) as sink:
        for i in range(5):
            sink.write(np.zeros((48, 64, 3), np.uint8), pts=i * 3600, time_base=Fraction(1, 90000))
    assert probe(tmp_path / "out.mp4")["times"] == pytest.approx([i * 0.04 for i in range(5)])


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_timestamps_that_do_not_rise_move_a_frame_on(tmp_path: Path, suffix: str) -> None:
    """Not one tick on: in Matroska (milliseconds) that would be a duplicate timestamp."""
    info = VideoInfo(width=64, height=48, fps=25.0, time_base=Fraction(1, 90000))
    with VideoFileSink(tmp_path / f"out{suffix}", info) as sink:
        for pts in (0, 3600, 3600, 7200, 3600):
            sink.write(np.zeros((48, 64, 3), np.uint8), pts=pts, time_base=Fraction(1, 90000))
    times = probe(tmp_path / f"out{suffix}")["times"]
    assert times == pytest.approx([0, 0.04, 0.08, 0.12, 0.16], abs=1e-3)


def test_size_change_is_rescaled_to_output_size(tmp_path: Path) -> None:
    info = VideoInfo(width=64, height=48, fps=25.0)
    with VideoFileSink(tmp_path / "out.mkv", info) as sink:
        sink.write(np.full((48, 64, 3), 50, np.uint8))
        sink.write(np.full((96, 128, 3), 200, np.uint8))  # a stream came back larger
        sink.write(np.full((47, 63, 3), 100, np.uint8))
    facts = probe(tmp_path / "out.mkv")
    assert facts["size"] == (64, 48)
    assert [int(img.mean()) // 10 for img in facts["images"].values()] == [5, 20, 10]


def test_odd_size_is_cropped_to_even(tmp_path: Path) -> None:
    info = VideoInfo(width=65, height=49, fps=25.0)
    with VideoFileSink(tmp_path / "out.mp4", info) as sink:
        sink.write(np.zeros((49, 65, 3), np.uint8))
    assert probe(tmp_path / "out.mp4")["size"] == (64, 48)


def test_output_is_finalised_when_the_block_raises(tmp_path: Path) -> None:
    info = VideoInfo(width=64, height=48, fps=25.0)
    with pytest.raises(RuntimeError, match="model crashed"):
        with VideoFileSink(tmp_path / "out.mp4", info) as sink:
            for i in range(5):
                sink.write(np.full((48, 64, 3), i, np.uint8))
            raise RuntimeError("model crashed")
    assert len(probe(tmp_path / "out.mp4")["times"]) == 5


def test_missing_output_folder_fails_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "out.mp4"
    with pytest.raises(SinkError) as err:
        check_output_path(target)
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SinkError):
        VideoFileSink(target, VideoInfo(width=64, height=48, fps=25.0))
    with pytest.raises(SinkError):
        JsonlStatsSink(tmp_path / "nope" / "stats.jsonl")
    assert not (tmp_path / "nope").exists()


def test_bad_output_paths(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="unsupported file type"):
        VideoFileSink(tmp_path / "out.gif", VideoInfo(width=64, height=48, fps=25.0))
    with pytest.raises(SinkError, match="is a folder"):
        check_output_path(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_disk_full_is_a_sink_error(tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC
    info = VideoInfo(width=64, height=48, fps=25.0)
    with pytest.raises(SinkError) as err:
        with VideoFileSink(full, info) as sink:
            for _ in range(300):
                sink.write(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    assert "No space left" in str(err.value) and "\n" not in str(err.value)


def test_window_sink_needs_gui() -> None:
    if not re.search(r"GUI:\s*NONE", cv2.getBuildInformation()):
        pytest.skip("this OpenCV has GUI support; only the headless error path is tested")
    with pytest.raises(SinkError) as err:
        WindowSink("test")
    assert str(err.value) == (
        "--show needs OpenCV with GUI support: pip install opencv-python (not -headless)"
    )


@pytest.mark.parametrize(("fmt", "files"), [("png", 7), ("npz", 3)])
def test_label_maps_round_trip(tmp_path: Path, fmt: str, files: int) -> None:
    rng = np.random.default_rng(1)
    maps = {i * 2: rng.integers(0, 20, (12 + i, 16), dtype=np.int64) for i in range(7)}
    with LabelMapSink(tmp_path / "labels", fmt=fmt, chunk=3) as sink:
        for index, labels in maps.items():
            sink.write(labels, index)
    assert sink.files_written == files
    if fmt == "png":
        assert (tmp_path / "labels" / "000012.png").is_file()
    loaded = list(load_label_maps(tmp_path / "labels"))
    assert [i for i, _ in loaded] == sorted(maps)
    for index, labels in loaded:
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, maps[index])


def test_label_map_sink_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SinkError):
        LabelMapSink(tmp_path / "x", fmt="jpg")
    with LabelMapSink(tmp_path / "labels") as sink, pytest.raises(ValueError):
        sink.write(np.full((4, 4), 300), 0)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    records = [
        {"frame": np.int64(0), "latency_ms": np.float32(81.5), "persons": 2},
        {"frame": 1, "fps": Fraction(25, 1), "classes": np.array([1, 2])},
    ]
    with JsonlStatsSink(tmp_path / "stats.jsonl") as sink:
        for record in records:
            sink.write(record)
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"frame": 0, "latency_ms": 81.5, "persons": 2},
        {"frame": 1, "fps": "25", "classes": [1, 2]},
    ]


def test_every_sink_takes_the_same_output_item(tmp_path: Path) -> None:
    """One contract: the video, segment, label-map and stats sinks each write one Output."""
    from streamer.core.types import Frame, Output, ParseResult
    from streamer.io.segments import SegmentedVideoSink

    info = VideoInfo(width=64, height=48, fps=25.0, time_base=Fraction(1, 90000))
    labels = np.zeros((48, 64), np.uint8)
    labels[10:20, 10:30] = 5
    result = ParseResult(labels, ("Background",) + tuple(f"c{i}" for i in range(1, 20)))
    items = [Output(Frame(i, np.full((48, 64, 3), 40 * i, np.uint8), i / 25, 0.0, i * 3600,
                          Fraction(1, 90000), name=f"img{i}"),
                    np.full((48, 64, 3), 40 * i, np.uint8), result if i % 2 else None,
                    {"index": i, "parsed": bool(i % 2)}) for i in range(4)]
    with contextlib.ExitStack() as stack:
        sinks = [stack.enter_context(VideoFileSink(tmp_path / "out.mkv", info)),
                 stack.enter_context(SegmentedVideoSink(tmp_path / "seg", info,
                                                        segment_seconds=60)),
                 stack.enter_context(LabelMapSink(tmp_path / "labels")),
                 stack.enter_context(JsonlStatsSink(tmp_path / "stats.jsonl"))]
        for item in items:
            for sink in sinks:
                sink.write(item)
    assert probe(tmp_path / "out.mkv")["times"] == pytest.approx([0.0, 0.04, 0.08, 0.12])
    assert sinks[1].frames_written == 4 and len(sinks[1].segments) == 1
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
        f"img{i}.png" for i in range(4)]
    maps = [cv2.imread(str(tmp_path / "labels" / f"img{i}.png"), cv2.IMREAD_UNCHANGED)
            for i in range(2)]
    assert not maps[0].any() and (maps[1] == labels).all()  # no result: all background
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [item.record for item in items]


def test_live_streams_up_to_720p30_encode_on_one_thread(tmp_path: Path) -> None:
    cores = min(4, os.cpu_count() or 1)
    live = VideoInfo(width=640, height=360, fps=25.0, is_live=True)
    assert encoder_threads(live) == 1
    assert encoder_threads(replace(live, width=1280, height=720, fps=30.0)) == 1
    assert encoder_threads(replace(live, width=1920, height=1080)) == cores  # 1 falls behind
    assert encoder_threads(replace(live, is_live=False)) == cores  # a file: all the cores
    assert encoder_threads(replace(live, is_live=False), realtime=True) == 1  # a paced publish
    image = np.full((360, 640, 3), 90, np.uint8)
    for info, threads, expected in ((live, None, 1), (live, 2, 2)):
        path = tmp_path / f"{expected}.mkv"
        with VideoFileSink(path, info, threads=threads) as sink:
            for _ in range(5):
                sink.write(image)
        assert sink.threads == expected
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 5
