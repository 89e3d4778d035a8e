"""The stream pipeline with real clips, a real (tiny, random-weight) M2FP and real threads."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import make_clip

from streamer import Pipeline, load_config
from streamer.parsing.parser import HumanParser, ParserOptions


def config_for(model: Path, *sets: str):
    return load_config(None, [f"parser.model='{model}'", "parser.engine=torch",
                              "output.progress=false", *sets])


def probe(path: Path) -> dict:
    """Decode a video to the end: frame count, video pts (seconds), duration, audio present."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
        has_audio = bool(container.streams.audio)
    return {"frames": len(times), "times": times, "has_audio": has_audio,
            "duration": times[-1] - times[0] if times else 0.0}


@pytest.fixture(scope="module")
def parser(tiny_single_model):
    return HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))


class SleepyParser:
    """The real parser, made slower than the source (or failing) on purpose."""

    def __init__(self, inner: HumanParser, delay: float, fail_at: int | None = None) -> None:
        self.inner, self.delay, self.fail_at = inner, delay, fail_at
        self.calls = 0
        self.single_person = inner.single_person
        self.classes = inner.classes

    def warm_up(self, frame_hw=None) -> None:
        self.inner.warm_up(frame_hw)

    def parse(self, image, persons=None, memory=None):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("parser exploded")
        time.sleep(self.delay)
        return self.inner.parse(image, persons, memory=memory)


def test_file_every_frame_written_with_timestamps_and_audio(tmp_path, tiny_single_model, parser):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(160, 120), fps=25, audio=True)
    out = tmp_path / "out.mp4"
    config = config_for(tiny_single_model, "detector.type=full", f"output.path='{out}'",
                        f"output.metrics='{tmp_path / 'm.json'}'")
    summary = Pipeline(config, str(clip), parser=parser).run()
    src, dst = probe(clip), probe(out)
    assert summary["frames_read"] == summary["frames_written"] == summary["frames_parsed"] == 30
    assert summary["frames_dropped"] == 0
    assert dst["frames"] == src["frames"] == 30
    assert dst["times"] == pytest.approx(src["times"], abs=1e-3)
    assert dst["has_audio"]
    for key in ("frames_read", "frames_written", "frames_parsed", "frames_dropped",
                "latency_ms", "stages_ms", "fps"):
        assert key in summary
    assert set(summary["stages_ms"]) == {"decode", "detect", "parse", "render", "encode"}
    assert (tmp_path / "m.json").is_file()


@pytest.mark.parametrize("name", ["chaplin_bw.mp4", "mmaction2_basketball.mp4"])
def test_real_clips_keep_frame_count_and_duration(tmp_path, media, tiny_single_model, parser,
                                                   name):
    clip = media / "videos" / name
    out = tmp_path / "out.mp4"
    config = config_for(tiny_single_model, "detector.type=full", "parse.every=10",
                        f"output.path='{out}'")
    summary = Pipeline(config, str(clip), parser=parser).run()
    src, dst = probe(clip), probe(out)
    assert dst["frames"] == src["frames"] == summary["frames_written"]
    assert dst["times"] == pytest.approx(src["times"], abs=2e-3)
    assert dst["duration"] == pytest.approx(src["duration"], abs=2e-3)
    assert summary["frames_parsed"] == -(-src["frames"] // 10)


def test_parse_every_reuses_results(tmp_path, tiny_single_model, parser):
    clip = make_clip(tmp_path / "in.mp4", frames=20, size=(160, 120), fps=25)
    config = config_for(tiny_single_model, "detector.type=full", "parse.every=4")
    seen = [(frame.index, result) for frame, result in Pipeline(config, str(clip),
                                                                 parser=parser)]
    assert [i for i, _ in seen] == list(range(20))
    assert all(r is not None and r.labels.shape == (120, 160) for _, r in seen)
    assert seen[1][1] is seen[0][1] and seen[4][1] is not seen[0][1]


def test_wait_policy_drops_nothing_with_a_slow_parser(tmp_path, tiny_single_model, parser):
    clip = make_clip(tmp_path / "in.mp4", frames=15, size=(160, 120), fps=25)
    config = config_for(tiny_single_model, "detector.type=full", "buffer.policy=wait")
    pipeline = Pipeline(config, str(clip), parser=SleepyParser(parser, 0.05))
    frames = [frame.index for frame, _ in pipeline]
    assert frames == list(range(15))
    assert pipeline.metrics.summary()["frames_dropped"] == 0
    assert pipeline.metrics.frames_parsed == 15


@pytest.mark.parametrize("frames_mode", ["parsed", "all"])
def test_latest_policy_holds_latency_when_parsing_is_slow(tmp_path, tiny_single_model, parser,
                                                          frames_mode):
    # A 25 fps live-paced source and a parser that takes 0.2 s on top of its own work.
    clip = make_clip(tmp_path / "in.mp4", frames=75, size=(160, 120), fps=25)
    out = tmp_path / "out.mp4"
    config = config_for(tiny_single_model, "detector.type=full", "source.realtime=true",
                        f"output.frames={frames_mode}", f"output.path='{out}'")
    summary = Pipeline(config, str(clip), parser=SleepyParser(parser, 0.2)).run()
    assert summary["frames_read"] == 75
    assert summary["frames_dropped"] > 20
    assert summary["frames_parsed"] < 30
    if frames_mode == "parsed":
        assert summary["frames_written"] == summary["frames_parsed"]
        # Each written frame waited for at most one parse in progress plus its own.
        assert summary["latency_ms"]["p95"] < 1500
    else:
        assert summary["frames_written"] == 75
        assert summary["latency_ms"]["p95"] < 500
    assert probe(out)["frames"] == summary["frames_written"]


def test_worker_error_stops_cleanly_and_keeps_the_output(tmp_path, tiny_single_model, parser):
    clip = make_clip(tmp_path / "in.mp4", frames=40, size=(160, 120), fps=25)
    out = tmp_path / "out.mp4"
    config = config_for(tiny_single_model, "detector.type=full", f"output.path='{out}'")
    pipeline = Pipeline(config, str(clip), parser=SleepyParser(parser, 0.0, fail_at=6))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="parser exploded"):
        pipeline.run()
    assert time.monotonic() - started < 30
    written = pipeline.metrics.frames_written
    assert written == 5
    assert probe(out)["frames"] == written
    assert not [t for t in threading.enumerate() if t.name.startswith("streamer-")]


def test_stop_flushes_what_is_parsed(tmp_path, tiny_single_model, parser):
    clip = make_clip(tmp_path / "in.mp4", frames=60, size=(160, 120), fps=25)
    out = tmp_path / "out.mp4"
    config = config_for(tiny_single_model, "detector.type=full", f"output.path='{out}'")
    pipeline = Pipeline(config, str(clip), parser=SleepyParser(parser, 0.05))
    threading.Timer(1.0, pipeline.stop).start()
    summary = pipeline.run()
    assert 0 < summary["frames_written"] < 60
    assert probe(out)["frames"] == summary["frames_written"]


def test_hog_rois_are_parsed_and_pasted(tmp_path, media, tiny_single_model, parser):
    clip = media / "videos" / "vtest_pets_first200.avi"
    config = config_for(tiny_single_model, "detector.type=hog")
    pipeline = Pipeline(config, str(clip), parser=parser)
    for frame, result in pipeline:
        if frame.index == 3:
            pipeline.stop()
        assert result.labels.shape == frame.image.shape[:2]
        assert result.instances is not None
        ids = {p.id for p in result.persons}
        assert set(np.unique(result.instances)) <= ids | {0}
        for person in result.persons:
            outside = np.ones(result.labels.shape, bool)
            outside[person.box.y0:person.box.y1, person.box.x0:person.box.x1] = False
            assert not (result.instances[outside] == person.id).any()


def test_timestamps_survive_a_variable_frame_rate_container(tmp_path, tiny_single_model,
                                                            parser):
    clip = make_clip(tmp_path / "in.mkv", frames=12, size=(160, 120), fps=Fraction(30000, 1001))
    out = tmp_path / "out.mkv"
    config = config_for(tiny_single_model, "detector.type=full", f"output.path='{out}'")
    Pipeline(config, str(clip), parser=parser).run()
    assert probe(out)["times"] == pytest.approx(probe(clip)["times"], abs=2e-3)


def test_detector_thread_ahead_of_the_parser_changes_nothing(tmp_path, media, tiny_single_model,
                                                             parser):
    """Files detect frame t+1 on their own thread while frame t is parsed: same output."""
    clip = media / "videos" / "mmaction2_basketball.mp4"
    config = config_for(tiny_single_model, "parse.every=6")
    runs = {}
    for overlap in (True, False):
        pipeline = Pipeline(config, str(clip), parser=parser, overlap_detection=overlap)
        runs[overlap] = [(f.index, [p.box for p in r.persons], r.labels.copy())
                         for f, r in pipeline]
        assert {t.name for t in pipeline._threads} >= (
            {"streamer-detector"} if overlap else {"streamer-parser"})
    assert len(runs[True]) == len(runs[False]) == 300
    assert any(boxes for _, boxes, _ in runs[True])  # HOG finds the players
    for (i, boxes_a, labels_a), (j, boxes_b, labels_b) in zip(runs[True], runs[False],
                                                              strict=True):
        assert i == j and boxes_a == boxes_b
        assert np.array_equal(labels_a, labels_b)


def test_live_summary_counts_drops_while_the_run_goes_on(tmp_path, tiny_single_model, parser):
    # RunMetrics learns the drop count at the end; live_summary() (the web service's /streams
    # view) reads it while the frames still come.
    clip = make_clip(tmp_path / "in.mp4", frames=40, size=(160, 120), fps=25)
    config = config_for(tiny_single_model, "detector.type=full", "source.realtime=true")
    pipeline = Pipeline(config, str(clip), parser=SleepyParser(parser, 0.2))
    assert pipeline.live_summary()["frames_dropped"] == 0  # not started: nothing to read yet
    live, final_so_far = [], []
    for _ in pipeline:
        live.append(pipeline.live_summary()["frames_dropped"])
        final_so_far.append(pipeline.metrics.summary()["frames_dropped"])
    assert max(live) > 0 and max(final_so_far) == 0
    assert live == sorted(live)
    assert pipeline.live_summary()["frames_dropped"] == pipeline.metrics.summary()["frames_dropped"]
