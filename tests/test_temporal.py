"""Carrying parses between frames: optical-flow propagation, its fallbacks, and stability."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from media_helpers import make_clip

from streamer import Pipeline, load_config
from streamer.core.errors import ConfigError
from streamer.core.types import Box, ParseResult, Person
from streamer.vision.detect import IouTracker
from streamer.vision.propagate import shift_persons
from streamer.vision.temporal import (
    Carrier,
    FlowPropagator,
    Motion,
    agreement,
    blend_votes,
    flicker,
    is_scene_cut,
    majority_labels,
    warp_result,
)

H, W = 180, 240
CLASSES = tuple(f"c{i}" for i in range(20))


def texture(h: int, w: int, seed: int, cell: int = 8) -> np.ndarray:
    """Smooth random colour texture: something for optical flow to hold on to."""
    rng = np.random.default_rng(seed)
    base = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32) * 255
    big = cv2.resize(base, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[cell:cell + h, cell:cell + w], 0, 255).astype(np.uint8)


BACKGROUND = texture(H, W, 1)
BODY = texture(100, 40, 2)


def person_at(x: int, y: int, pid: int = 1, image: np.ndarray | None = None,
              ) -> tuple[np.ndarray, ParseResult]:
    """A textured 40x100 'person' with face, upper clothes and pants at (x, y)."""
    img = (BACKGROUND if image is None else image).copy()
    labels = np.zeros((H, W), np.uint8)
    img[y:y + 100, x:x + 40] = BODY
    labels[y:y + 50, x:x + 40] = 5
    labels[y + 50:y + 100, x:x + 40] = 9
    labels[y:y + 14, x + 12:x + 28] = 13
    instances = np.where(labels != 0, pid, 0).astype(np.uint16)
    person = Person(pid, 0.9, Box(x - 4, y - 4, x + 44, y + 104))
    return img, ParseResult(labels, CLASSES, instances, [person])


def walk(steps: int, v: tuple[int, int] = (3, 1)) -> list[tuple[np.ndarray, ParseResult]]:
    return [person_at(60 + v[0] * t, 40 + v[1] * t) for t in range(steps)]


def carry_sequence(carrier: Carrier, frames, velocities=None) -> list[ParseResult]:
    """Show every frame with the parse of frame 0."""
    src_img, src = frames[0]
    return [carrier.carry(img, t, src, source_image=src_img, source_index=0,
                          velocities=velocities) for t, (img, _) in enumerate(frames)]


def test_flow_follows_a_moving_textured_person():
    frames = walk(5)
    flowed = carry_sequence(Carrier("flow"), frames)  # no box motion given: flow alone
    still = carry_sequence(Carrier("none"), frames)
    flow_agree = [agreement(r.labels, truth.labels) for r, (_, truth) in zip(flowed, frames,
                                                                             strict=True)]
    none_agree = [agreement(r.labels, truth.labels) for r, (_, truth) in zip(still, frames,
                                                                             strict=True)]
    assert flow_agree[0] == none_agree[0] == 1.0
    for f, n in zip(flow_agree[1:], none_agree[1:], strict=True):
        assert f > n + 0.08
    assert min(flow_agree) > 0.8 and none_agree[-1] < 0.6
    # The person's box moved along with its labels.
    assert flowed[-1].persons[0].box.x0 > frames[0][1].persons[0].box.x0 + 6


def test_box_motion_starts_the_flow_for_large_moves():
    frames = walk(3, v=(14, 3))
    velocities = {1: np.array([14.0, 3.0, 14.0, 3.0])}
    flowed = carry_sequence(Carrier("flow"), frames, velocities)
    still = carry_sequence(Carrier("none"), frames)
    assert agreement(flowed[-1].labels, frames[-1][1].labels) > 0.85
    assert agreement(still[-1].labels, frames[-1][1].labels) < 0.4


def test_labels_never_blend():
    rng = np.random.default_rng(5)
    frames = walk(4)
    img0, res0 = frames[0]
    noisy = res0.labels.copy()
    person = noisy != 0
    noisy[person] = rng.choice(np.array([3, 7, 11, 18], np.uint8), int(person.sum()))
    noisy[0:6, 0:6] = 2  # somebody else's, or nobody's: stays
    src = ParseResult(noisy, CLASSES, res0.instances, res0.persons)
    out = carry_sequence(Carrier("flow"), [(img0, src), *frames[1:]])
    for r in out:
        assert set(np.unique(r.labels)) <= set(np.unique(noisy))
        assert set(np.unique(r.instances)) <= {0, 1}
        assert (r.labels[0:6, 0:6] == 2).all()
        assert ((r.labels != 0) & (r.labels != 2) <= (r.instances == 1)).all()


def test_offsets_only_is_shift_persons():
    labels = np.zeros((60, 80), np.uint8)
    instances = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:20], instances[10:30, 10:20] = 5, 1
    labels[20:50, 50:70], instances[20:50, 50:70] = 9, 2
    labels[0:5, 0:5] = 3
    result = ParseResult(labels, CLASSES, instances,
                         [Person(1, 0.9, Box(8, 8, 22, 32)), Person(2, 0.8, Box(48, 18, 72, 52))])
    for offsets in ({1: (5, 2), 2: (-3, 0)}, {2: (15, 0)}, {2: (100, 0)}):
        ours = warp_result(result, {pid: Motion(off) for pid, off in offsets.items()})
        theirs = shift_persons(result, offsets)
        assert np.array_equal(ours.labels, theirs.labels)
        assert np.array_equal(ours.instances, theirs.instances)
        assert ours.persons == theirs.persons


def test_scene_cut_falls_back_to_shift():
    img0, res0 = person_at(60, 40)
    other = texture(H, W, 99)
    cut, _ = person_at(70, 40, image=255 - other)  # a different shot
    assert is_scene_cut(img0, cut) and not is_scene_cut(img0, person_at(63, 41)[0])
    flow = FlowPropagator()
    motions = flow.motions(res0, img0, cut, {1: (10, 0)})
    assert motions[1].field is None and motions[1].offset == (10, 0)
    velocities = {1: np.array([10.0, 0.0, 10.0, 0.0])}
    carrier = Carrier("flow")
    carrier.carry(img0, 0, res0, velocities=velocities)
    shown = carrier.carry(cut, 1, res0)
    expected = shift_persons(res0, {1: (10, 0)})
    assert np.array_equal(shown.labels, expected.labels)
    assert np.array_equal(shown.instances, expected.instances)


def test_shift_carrier_moves_by_the_box_centre_velocity():
    from streamer.vision.propagate import shift_persons

    img0, res0 = person_at(60, 40)
    v = {1: np.array([2.0, 1.0, 2.0, 0.0])}
    carrier = Carrier("shift")
    for index in (10, 11, 13, 17):
        steps = index - 10
        # The box centre moves by the mean of its edges' velocities, rounded to whole pixels
        # (halves up, as the tracker rounds its boxes).
        expected = shift_persons(res0, {1: (math.floor(2.0 * steps + 0.5),
                                            math.floor(0.5 * steps + 0.5))})
        ours = carrier.carry(img0, index, res0, source_image=img0, source_index=10,
                             velocities=v)
        assert np.array_equal(ours.labels, expected.labels)
    assert Carrier("none").carry(img0, 12, res0, source_index=10) is res0


def flickering_parses(n: int = 7, at: int = 3) -> tuple[np.ndarray, list[ParseResult]]:
    """A still person parsed on every frame; on frame ``at`` a patch of its torso flips."""
    img, res = person_at(60, 40)
    parses = []
    for t in range(n):
        labels = res.labels.copy()
        if t == at:
            labels[60:80, 70:90] = 14  # one parse calls part of the torso an arm
        parses.append(ParseResult(labels, CLASSES, res.instances.copy(), list(res.persons)))
    return img, parses


@pytest.mark.parametrize("stability", ["majority", "blend"])
@pytest.mark.parametrize("method", ["none", "flow"])
def test_stability_removes_a_single_frame_flicker(stability, method):
    img, parses = flickering_parses()
    plain, steady = Carrier(method), Carrier(method, stability)
    plain_shown = [plain.carry(img, t, p) for t, p in enumerate(parses)]
    steady_shown = [steady.carry(img, t, p) for t, p in enumerate(parses)]
    assert (plain_shown[3].labels == 14).sum() == 400
    assert all(not (s.labels == 14).any() for s in steady_shown)
    flick = [flicker(a.labels, b.labels) for a, b in zip(steady_shown, steady_shown[1:],
                                                         strict=False)]
    assert max(flick) == 0.0


@pytest.mark.parametrize("stability", ["majority", "blend"])
def test_stability_lets_a_lasting_change_through_on_the_next_parse(stability):
    img, res = person_at(60, 40)
    changed = res.labels.copy()
    changed[60:80, 70:90] = 14
    carrier = Carrier("none", stability, 3)
    parses = [res] * 3 + [ParseResult(changed, CLASSES, res.instances, res.persons)
                          for _ in range(3)]
    shown = [carrier.carry(img, t, ParseResult(p.labels.copy(), CLASSES, p.instances,
                                               p.persons)) for t, p in enumerate(parses)]
    assert not (shown[3].labels == 14).any()  # one parse says so: not yet
    assert (shown[4].labels == 14).sum() == 400  # the next agrees: shown


def test_a_new_person_is_shown_at_once_with_stability():
    img, res = person_at(60, 40)
    carrier = Carrier("flow", "majority")
    carrier.carry(img, 0, res)
    labels, instances = res.labels.copy(), res.instances.copy()
    labels[10:40, 150:170], instances[10:40, 150:170] = 2, 7
    two = ParseResult(labels, CLASSES, instances,
                      [*res.persons, Person(7, 0.95, Box(150, 10, 170, 40))])
    shown = carrier.carry(img, 1, two)
    assert (shown.labels[10:40, 150:170] == 2).all() and (shown.instances == 7).sum() == 600


def test_majority_and_blend_primitives():
    a, b, c = np.array([[1, 1, 1]]), np.array([[2, 1, 3]]), np.array([[1, 4, 5]])
    best, which = majority_labels([a, b, c])
    assert best.tolist() == [[1, 1, 5]] and which.tolist() == [[2, 1, 2]]
    labels, votes = blend_votes(np.array([[5, 5, 5]]), np.array([[5, 6, 6]]),
                                np.array([[1, 2, 1]], np.uint8), 3)
    assert labels.tolist() == [[5, 5, 6]] and votes.tolist() == [[2, 1, 1]]


def test_size_change_and_restart_reset_the_carrier():
    img, res = person_at(60, 40)
    carrier = Carrier("flow", "majority")
    carrier.carry(img, 5, res)
    small = np.zeros((90, 120, 3), np.uint8)
    other = ParseResult(np.zeros((90, 120), np.uint8), CLASSES, np.zeros((90, 120), np.uint16))
    assert carrier.carry(small, 6, other).labels.shape == (90, 120)
    assert carrier.carry(img, 0, res) is res  # the stream started again
    assert carrier.carry(img, 1, None) is None


@pytest.mark.parametrize("override, key", [
    ("render.propagate=optical", "render.propagate"),
    ("render.stability=vote", "render.stability"),
    ("render.stability_depth=1", "render.stability_depth"),
    ("render.stability_depth=three", "render.stability_depth"),
])
def test_config_keys_are_validated(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_config_keys_and_defaults():
    config = load_config(None, ["render.propagate=flow", "render.stability=blend",
                                "render.stability_depth=4"])
    assert (config.render.propagate, config.render.stability,
            config.render.stability_depth) == ("flow", "blend", 4)
    default = load_config(None).render
    assert (default.propagate, default.stability) == ("shift", "none")
    with pytest.raises(ConfigError, match="render.propagate"):
        Carrier("optical")


def test_pipeline_propagates_between_parses(tmp_path, tiny_single_model):
    from streamer.parsing.parser import HumanParser, ParserOptions

    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))
    clip = make_clip(tmp_path / "in.mp4", frames=9, size=(160, 120), fps=25)
    seen = {}
    for method in ("none", "flow"):
        config = load_config(None, [f"parser.model='{tiny_single_model}'", "parser.engine=torch",
                                    "output.progress=false", "detector.type=full",
                                    "parse.every=3", f"render.propagate={method}",
                                    "render.stability=majority"])
        seen[method] = [(item.frame.index, item.fresh, item.result)
                        for item in Pipeline(config, str(clip), parser=parser).items()]
    for (i, fresh, flowed), (_, _, still) in zip(seen["flow"], seen["none"], strict=True):
        assert flowed.labels.shape == (120, 160)
        assert set(np.unique(flowed.labels)) <= set(np.unique(still.labels)) | {0}
        if fresh and i == 0:
            assert np.array_equal(flowed.labels, still.labels)
    assert seen["none"][1][2] is seen["none"][0][2]  # none: the parse itself
    assert seen["flow"][1][2] is not seen["flow"][0][2]  # flow: a propagated copy


def test_live_pipeline_with_flow_and_stability(tmp_path, tiny_single_model):
    from streamer.parsing.parser import HumanParser, ParserOptions

    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch"))
    clip = make_clip(tmp_path / "in.mp4", frames=25, size=(160, 120), fps=25)
    config = load_config(None, [f"parser.model='{tiny_single_model}'", "parser.engine=torch",
                                "output.progress=false", "detector.type=full",
                                "source.realtime=true", "render.propagate=flow",
                                "render.stability=blend", f"output.path='{tmp_path / 'o.mp4'}'"])
    summary = Pipeline(config, str(clip), parser=parser).run()
    assert summary["frames_read"] == summary["frames_written"] == 25


def test_tracked_boxes_hold_their_size_and_move_with_the_shifted_parse():
    """The tracker moves a box at a steady size between detector runs and only half-follows a
    detection's size jitter: a crop between runs is the parsed crop moved, not rescaled, and
    moved by exactly what ``shift`` moves the parse by."""
    tracker = IouTracker()
    tracker.update([Box(100, 50, 160, 170, 0.9)], frame_index=0, frame_size=(640, 480))
    # Six frames on, the detector's box is a pyramid step (5%) bigger, centre 7.5 px right.
    seen = tracker.update([Box(106, 47, 169, 173, 0.9)], frame_index=6)[0].box
    assert (seen.x0, seen.y0, seen.width, seen.height) == (107, 49, 62, 123)  # size: halfway
    between = [tracker.predict(frame_index=f)[0].box for f in range(7, 12)]
    assert {(b.width, b.height) for b in between} == {(62, 123)}
    assert [b.x0 for b in between] == [108, 110, 111, 112, 113]  # 1.25 px per frame
    assert {b.y0 for b in between} == {49}
    # The parse of frame 6, shifted by the carrier, lands on each later box exactly.
    labels = np.zeros((480, 640), np.uint8)
    labels[seen.y0:seen.y1, seen.x0:seen.x1] = 5
    parse = ParseResult(labels, CLASSES, (labels != 0).astype(np.uint16),
                        [Person(1, 0.9, seen)])
    image = np.zeros((480, 640, 3), np.uint8)
    carrier = Carrier("shift")
    carrier.carry(image, 6, parse, velocities={1: tracker.tracks[0].velocity})
    assert [carrier.carry(image, f, parse).persons[0].box for f in range(7, 12)] == between
    # A lasting size change of more than a quarter (somebody stands up) is taken at once.
    tall = tracker.update([Box(114, 10, 176, 195, 0.9)], frame_index=12)[0].box
    assert tall == Box(114, 10, 176, 195, 0.9)


@pytest.mark.parametrize("propagate", ["none", "shift", "flow"])
def test_a_parse_of_another_frame_size_is_dropped_not_drawn(propagate):
    # issue 14 item 6: a parse carried onto a frame of another size used to reach the
    # renderer and fail there; it cannot be placed on another picture, so nothing is shown.
    carrier = Carrier(propagate=propagate, stability="majority" if propagate == "flow" else "none")
    labels = np.ones((40, 60), np.uint8)
    result = ParseResult(labels, CLASSES, None, [])
    small = np.zeros((40, 60, 3), np.uint8)
    assert carrier.carry(small, 0, result) is not None
    assert carrier.carry(np.zeros((50, 30, 3), np.uint8), 1, result) is None
    shown = carrier.carry(small, 2, result)
    assert shown is not None and shown.labels.shape == (40, 60)
