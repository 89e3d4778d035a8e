"""Skipping the parse of a person whose crop barely changed (streamer.vision.reuse.CropMemory)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import Pipeline, load_config
from streamer.core.types import Box, Person
from streamer.parsing.parser import HumanParser, ParserOptions
from streamer.vision.reuse import CropMemory, mean_abs_difference, thumbnail


def textured(h: int = 200, w: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 10, w // 10, 3), np.uint8)
    return np.kron(small, np.ones((10, 10, 1), np.uint8))


PERSON = Person(7, 0.9, Box(0, 0, 100, 200))


def test_first_sight_parses_then_same_crop_is_reused():
    memory = CropMemory(threshold=2.0)
    crop = textured()
    assert memory.recall(PERSON, crop) is None
    labels = np.full(crop.shape[:2], 5, np.uint8)
    memory.remember(PERSON, crop, labels)
    noisy = np.clip(crop.astype(int) + np.random.default_rng(1).integers(-3, 4, crop.shape),
                    0, 255).astype(np.uint8)
    assert mean_abs_difference(thumbnail(noisy), thumbnail(crop)) < 2.0
    again = memory.recall(PERSON, noisy)
    assert again is labels
    assert (memory.parsed, memory.reused) == (1, 1)


def test_changed_crop_or_new_framing_is_parsed_again():
    memory = CropMemory(threshold=2.0)
    crop = textured()
    memory.remember(PERSON, crop, np.ones(crop.shape[:2], np.uint8))
    moved = np.roll(crop, 15, axis=0)
    assert mean_abs_difference(thumbnail(moved), thumbnail(crop)) > 2.0
    assert memory.recall(PERSON, moved) is None
    assert memory.recall(PERSON, textured(260, 100)) is None  # 30% taller box
    other = Person(8, 0.9, PERSON.box)
    assert memory.recall(other, crop) is None  # another track id


def test_slightly_resized_box_gets_the_labels_resized_nearest():
    memory = CropMemory(threshold=20.0)  # the texture's blocks shift when resized
    crop = textured()
    labels = np.zeros(crop.shape[:2], np.uint8)
    labels[:100] = 2
    labels[100:] = 9
    memory.remember(PERSON, crop, labels)
    import cv2

    bigger = cv2.resize(crop, (104, 208), interpolation=cv2.INTER_NEAREST)
    out = memory.recall(PERSON, bigger)
    assert out is not None and out.shape == (208, 104)
    assert set(np.unique(out)) == {2, 9}  # nearest: no blended class ids


def test_threshold_zero_turns_reuse_off_and_old_people_are_forgotten():
    off = CropMemory(threshold=0)
    crop = textured()
    off.remember(PERSON, crop, np.ones(crop.shape[:2], np.uint8))
    assert off.recall(PERSON, crop) is None
    memory = CropMemory(threshold=2.0, forget_after=3)
    memory.remember(PERSON, crop, np.ones(crop.shape[:2], np.uint8))
    for _ in range(4):
        memory.tick()
    assert memory.recall(PERSON, crop) is None


def still_clip(path: Path, frames: int, image: np.ndarray) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def parser(tiny_single_model):
    return HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))


def test_pipeline_parses_a_still_scene_once_and_shows_the_same_labels(
        tmp_path, tiny_single_model, parser):
    clip = still_clip(tmp_path / "still.mp4", 10, textured(120, 160))
    base = [f"parser.model='{tiny_single_model}'", "parser.engine=torch",
            "output.progress=false", "detector.type=full"]
    reused = Pipeline(load_config(None, base), str(clip), parser=parser)
    shown = [result.labels for _, result in reused]
    every = Pipeline(load_config(None, [*base, "parse.reuse_threshold=0"]), str(clip),
                     parser=parser)
    fresh = [result.labels for _, result in every]
    assert (reused.metrics.crops_parsed, reused.metrics.crops_reused) == (1, 9)
    assert (every.metrics.crops_parsed, every.metrics.crops_reused) == (10, 0)
    assert reused.metrics.frames_parsed == every.metrics.frames_parsed == 10
    agreement = np.mean([np.mean(a == b) for a, b in zip(shown, fresh, strict=True)])
    assert agreement > 0.99
    summary = reused.metrics.summary()
    assert summary["crops_reused"] == 9 and summary["crops_parsed"] == 1
