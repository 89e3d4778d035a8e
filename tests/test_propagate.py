"""Moving a parse result along with its people's tracked boxes."""

from __future__ import annotations

import numpy as np

from streamer.core.types import Box, Frame, ParseResult, Person
from streamer.pipeline import Parsed
from streamer.vision.propagate import shift_persons
from streamer.vision.temporal import Carrier


def two_people() -> ParseResult:
    labels = np.zeros((60, 80), np.uint8)
    instances = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:20], instances[10:30, 10:20] = 5, 1
    labels[20:50, 50:70], instances[20:50, 50:70] = 9, 2
    labels[0:5, 0:5] = 3  # labelled, but nobody's: stays put
    persons = [Person(1, 0.9, Box(8, 8, 22, 32)), Person(2, 0.8, Box(48, 18, 72, 52))]
    return ParseResult(labels, ("bg",) * 10, instances, persons)


def test_each_person_moves_by_its_own_offset():
    result = two_people()
    moved = shift_persons(result, {1: (5, 2), 2: (-3, 0)})
    assert (moved.labels[12:32, 15:25] == 5).all() and (moved.instances[12:32, 15:25] == 1).all()
    assert (moved.labels[20:50, 47:67] == 9).all()
    assert (moved.labels[0:5, 0:5] == 3).all()
    assert int((moved.labels == 5).sum()) == 200 and int((moved.labels == 9).sum()) == 600
    assert {p.id: p.box for p in moved.persons} == {1: Box(13, 10, 27, 34, 0.9),
                                                     2: Box(45, 18, 69, 52, 0.8)}


def test_people_leaving_the_frame_are_clipped_then_dropped():
    result = two_people()
    clipped = shift_persons(result, {2: (15, 0)})
    assert int((clipped.labels == 9).sum()) == 30 * 15  # 15 of its 20 columns stay in view
    gone = shift_persons(result, {2: (100, 0)})
    assert not (gone.labels == 9).any() and [p.id for p in gone.persons] == [1]


def test_no_motion_returns_the_same_result():
    result = two_people()
    assert shift_persons(result, {1: (0, 0)}) is result


def test_parsed_result_follows_velocity_to_a_later_frame():
    # What the live view does with the last parse: the shift carrier moves it by velocity.
    result = two_people()
    frame = Frame(index=10, image=np.zeros((60, 80, 3), np.uint8), timestamp=0.4,
                  capture_time=0.0)
    parsed = Parsed(frame, result, True, {1: np.array([2.0, 0.0, 2.0, 0.0])})
    carrier = Carrier(propagate="shift")

    def carry(index: int) -> ParseResult | None:
        return carrier.carry(frame.image, index, parsed.result, source_image=frame.image,
                             source_index=parsed.frame.index, velocities=parsed.velocities)

    assert carry(10) is result
    later = carry(13)
    assert (later.instances[10:30, 16:26] == 1).all()


def test_opencv_and_numpy_paths_move_the_same_pixels():
    # uint16/int32 id maps take OpenCV's path, int64 numpy's: same maps, overlaps included,
    # and a person's pixels outside its box (dropped by both).
    rng = np.random.default_rng(3)
    base = two_people()
    labels = base.labels.copy()
    labels[25:40, 15:60] = rng.integers(1, 20, (15, 45), dtype=np.uint8)
    ids = base.instances.astype(np.int64)
    ids[25:40, 15:35], ids[25:40, 35:60] = 1, 2  # partly outside both boxes
    ids[55:58, 0:4] = 2
    maps = {}
    for dtype in (np.uint16, np.int32, np.int64):
        moved = shift_persons(ParseResult(labels, base.classes, ids.astype(dtype), base.persons),
                              {1: (4, 3), 2: (-9, -6)})
        assert moved.instances.dtype == dtype and moved.labels.dtype == np.uint8
        maps[dtype] = moved
    ref = maps[np.int64]
    for moved in maps.values():
        assert np.array_equal(moved.labels, ref.labels)
        assert np.array_equal(moved.instances, ref.instances)
        assert moved.persons == ref.persons
