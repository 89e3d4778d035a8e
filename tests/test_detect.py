"""Person detection and tracking: HOG on real footage, box clean-up, the IoU tracker."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.core.errors import ConfigError, ModelError, StreamerError
from streamer.core.types import Box
from streamer.vision.detect import (
    DetectorOptions,
    FullFrameDetector,
    HogDetector,
    IouTracker,
    PersonFinder,
    TorchvisionDetector,
    iou_matrix,
    make_detector,
    nms,
    postprocess_boxes,
)

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
PETS = MEDIA / "videos" / "vtest_pets_first200.avi"


@pytest.fixture(scope="module")
def pets_frames() -> list[np.ndarray]:
    """Every 5th of the 200 frames of the PETS pedestrian clip (768x576), as RGB."""
    if not PETS.is_file():
        pytest.skip(f"real media not found: {PETS} (clone with ../shared beside the repo)")
    import av

    with av.open(str(PETS)) as container:
        return [f.to_ndarray(format="rgb24")
                for i, f in enumerate(container.decode(video=0)) if i % 5 == 0]


def _inside(box: Box, w: int, h: int) -> bool:
    return 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h


@pytest.mark.media
def test_hog_finds_pedestrians(pets_frames: list[np.ndarray]) -> None:
    detector = HogDetector()
    h, w = pets_frames[0].shape[:2]
    assert (w, h) == (768, 576) and len(pets_frames) == 40
    counts = []
    for frame in pets_frames:
        boxes = detector.detect(frame)
        counts.append(len(boxes))
        assert all(_inside(b, w, h) for b in boxes)
        assert all(0.5 <= b.score < 1 for b in boxes)
        assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
        # NMS: no two boxes left overlapping heavily.
        arr = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes]).reshape(-1, 4)
        iou = iou_matrix(arr, arr)
        np.fill_diagonal(iou, 0)
        assert (iou <= 0.4).all()
    counts_arr = np.array(counts)
    assert (counts_arr >= 1).mean() >= 0.7, counts
    assert counts_arr.max() <= 15, counts


@pytest.mark.media
def test_hog_on_a_large_frame_returns_full_size_boxes(pets_frames: list[np.ndarray]) -> None:
    frame = pets_frames[0]
    big = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)  # 1536x1152
    small_boxes = HogDetector().detect(frame)
    big_boxes = HogDetector(max_side=960).detect(big)  # detected on a 0.625x copy
    assert big_boxes and all(_inside(b, 1536, 1152) for b in big_boxes)
    scaled = np.array([[b.x0, b.y0, b.x1, b.y1] for b in small_boxes]) * 2
    got = np.array([[b.x0, b.y0, b.x1, b.y1] for b in big_boxes])
    assert iou_matrix(got, scaled).max(axis=1).max() > 0.5


def test_hog_on_empty_image() -> None:
    assert HogDetector().detect(np.zeros((200, 160, 3), np.uint8)) == []


def test_iou_and_nms() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 40]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 100, 120]])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert iou[1].tolist() == [0.0, 0.0, 0.0]
    boxes = np.array([[0, 0, 10, 20], [1, 1, 11, 21], [50, 0, 60, 20], [52, 2, 58, 18]])
    # Box 3 lies inside box 2: suppressed although their IoU is only 0.48.
    assert nms(boxes, np.array([0.8, 0.9, 0.7, 0.75])).tolist() == [1, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_postprocess_pads_clamps_filters_exactly() -> None:
    opts = DetectorOptions(pad=0.1, min_size=24, max_persons=2, score_threshold=0.5)
    boxes = [
        Box(100, 100, 200, 300, 0.9),   # padded by 10 px left/right, 20 px up/down
        Box(-30, 400, 45, 520, 0.8),    # clamped to 0..45 x 400..480 before padding
        Box(300, 300, 320, 400, 0.95),  # 20 px wide: too small
        Box(400, 10, 500, 110, 0.4),    # under the score threshold
        Box(600, 0, 640, 100, 0.7),     # third best: over max_persons
    ]
    got = postprocess_boxes(boxes, 640, 480, opts)
    # Second box: round(4.5) = 4 px left/right, round(8.0) = 8 px up/down, then clamped.
    assert got == [Box(90, 80, 210, 320, 0.9), Box(0, 392, 49, 480, 0.8)]
    # Arrays work too; no padding; a box that is all outside the frame goes.
    arr = np.array([[10, 10, 50, 60, 0.6], [700, 10, 800, 100, 0.9]])
    got = postprocess_boxes(arr, 640, 480, DetectorOptions(pad=0, min_size=0))
    assert got == [Box(10, 10, 50, 60, 0.6)]
    # Rounding of the padding: 0.1 * 45 = 4.5 -> 4 (half to even), 0.1 * 35 = 3.5 -> 4.
    got = postprocess_boxes([Box(100, 100, 145, 135, 1.0)], 640, 480,
                            DetectorOptions(pad=0.1, min_size=0))
    assert got == [Box(96, 96, 149, 139, 1.0)]
    assert postprocess_boxes([], 640, 480, opts) == []


def test_tracker_keeps_ids_of_moving_boxes() -> None:
    tracker = IouTracker(iou_match=0.3, max_missed=2)
    ids_seen = []
    for f in range(6):
        a = Box(10 + 5 * f, 20, 60 + 5 * f, 120, 0.9)   # moving right
        b = Box(300, 50 + 4 * f, 350, 150 + 4 * f, 0.8)  # moving down
        persons = tracker.update([b, a], frame_index=f, frame_size=(640, 480))
        ids_seen.append({p.id: p.box for p in persons})
    assert all(set(s) == {1, 2} for s in ids_seen)
    assert ids_seen[-1][2] == Box(35, 20, 85, 120, 0.9)  # "a" was given id 2 (second box)
    assert ids_seen[-1][1] == Box(300, 70, 350, 170, 0.8)

    # A new person gets a new id; the others keep theirs.
    persons = tracker.update([Box(10 + 30, 20, 60 + 30, 120, 0.9),
                              Box(300, 74, 350, 174, 0.8), Box(500, 300, 560, 420, 0.7)],
                             frame_index=6)
    assert [p.id for p in persons] == [1, 2, 3]

    # predict(): boxes move on at their velocity (5 px/frame right, 4 px/frame down).
    moved = {p.id: p.box for p in tracker.predict(frame_index=8)}
    assert moved[2] == Box(50, 20, 100, 120, 0.9)
    assert moved[1] == Box(300, 82, 350, 182, 0.8)
    assert moved[3] == Box(500, 300, 560, 420, 0.7)  # one sighting: no velocity yet

    # Person 1 vanishes: kept (not reported) for max_missed runs, then dropped.
    for f in (9, 10, 11):
        persons = tracker.update([Box(10 + 5 * f, 20, 60 + 5 * f, 120, 0.9),
                                  Box(500, 300, 560, 420, 0.7)], frame_index=f)
        assert [p.id for p in persons] == [2, 3]
        alive = [t.id for t in tracker.tracks]
        assert alive == ([1, 2, 3] if f < 11 else [2, 3])
    # Once dropped, the same place gives a new id.
    persons = tracker.update([Box(300, 94, 350, 194, 0.8)], frame_index=12)
    assert [p.id for p in persons] == [4]


def test_tracker_rematches_after_a_miss_and_clamps_predictions() -> None:
    tracker = IouTracker(iou_match=0.3, max_missed=3)
    tracker.update([Box(0, 0, 40, 80)], frame_index=0, frame_size=(100, 100))
    tracker.update([Box(20, 0, 60, 80)], frame_index=1)  # 20 px/frame right
    assert tracker.update([], frame_index=2) == []
    # Matched against its predicted box (x0 = 60 by frame 3), not its last one (x0 = 20).
    persons = tracker.update([Box(60, 0, 100, 80)], frame_index=3)
    assert [p.id for p in persons] == [1]
    # Predictions are clamped to the frame, and vanish once carried out of it.
    assert tracker.predict(frame_index=4)[0].box == Box(80, 0, 100, 80, 1.0)
    assert tracker.predict(frame_index=6) == []
    # Without frame indices, each call is the next frame.
    t2 = IouTracker()
    t2.update([Box(0, 0, 10, 10)])
    t2.update([Box(2, 0, 12, 10)])
    assert t2.predict()[0].box == Box(4, 0, 14, 10, 1.0)


class _CountingDetector:
    """Returns one fixed box, counting the calls."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.calls: list[int] = []

    def detect(self, image: np.ndarray) -> list[Box]:
        self.calls.append(int(image[0, 0, 0]))
        return [self.box]


def test_person_finder_schedule() -> None:
    detector = _CountingDetector(Box(10, 10, 60, 110, 0.9))
    finder = PersonFinder(DetectorOptions(every=3, pad=0), detector=detector)
    frames = {i: np.full((120, 160, 3), i, np.uint8) for i in range(20)}
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 11, 12):  # frames 8-10 dropped, as by a live source
        persons = finder.find(frames[i], i)
        assert [p.id for p in persons] == [1]
        assert persons[0].box == Box(10, 10, 60, 110, 0.9)
    assert detector.calls == [0, 3, 6, 11]
    # Going back (a seek, a restarted stream) runs the detector and starts ids again.
    assert [p.id for p in finder.find(frames[2], 2)] == [1]
    assert detector.calls[-1] == 2


def test_full_frame_detector_and_finder() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    assert FullFrameDetector().detect(image) == [Box(0, 0, 64, 48, 1.0)]
    finder = PersonFinder(DetectorOptions(type="full"))
    for i in range(3):
        persons = finder.find(image, i)
        assert [(p.id, p.box) for p in persons] == [(1, Box(0, 0, 64, 48, 1.0))]


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="detector.type"):
        DetectorOptions(type="yolo")
    with pytest.raises(ConfigError, match="detector.every"):
        DetectorOptions(every=0)
    with pytest.raises(ConfigError, match="detector.score_threshold"):
        DetectorOptions(score_threshold=1.5)
    with pytest.raises(ConfigError, match="torchvision_weights"):
        DetectorOptions(torchvision_weights="imagenet")
    assert isinstance(make_detector(DetectorOptions(type="hog")), HogDetector)
    assert isinstance(make_detector(DetectorOptions(type="full")), FullFrameDetector)


@pytest.mark.parametrize("model", ["ssdlite320_mobilenet_v3_large",
                                   "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_torchvision_detector_random_weights(model: str) -> None:
    import torch

    torch.manual_seed(0)
    detector = TorchvisionDetector(model, weights="none", score_threshold=0.5)
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    boxes = detector.detect(image)  # random weights: any number of boxes
    assert all(0 <= b.x0 <= b.x1 <= 200 and 0 <= b.y0 <= b.y1 <= 150 for b in boxes)
    assert all(b.score >= 0.5 for b in boxes)


def test_torchvision_detector_keeps_people_only() -> None:
    import torch

    opts = DetectorOptions(type="torchvision", torchvision_weights="none",
                           torchvision_model="fasterrcnn_mobilenet_v3_large_320_fpn",
                           score_threshold=0.3)
    detector = make_detector(opts)
    assert isinstance(detector, TorchvisionDetector)
    seen: list[torch.Tensor] = []

    def net(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        seen.extend(images)
        return [{
            "boxes": torch.tensor([[10.2, 20.7, 50.5, 90.1], [0.0, 0.0, 30.0, 30.0],
                                   [-3.0, 5.0, 250.0, 149.5], [60.0, 60.0, 70.0, 70.0]]),
            "labels": torch.tensor([1, 3, 1, 1]),  # COCO: 1 person, 3 car
            "scores": torch.tensor([0.6, 0.99, 0.9, 0.2]),
        }]

    detector.net = net  # the network's own output format, with known values
    image = np.full((150, 200, 3), 255, np.uint8)
    boxes = detector.detect(image)
    # People only, over the threshold, best first, rounded outwards and clamped to the frame.
    assert boxes == [Box(0, 5, 200, 150, pytest.approx(0.9)),
                     Box(10, 20, 51, 91, pytest.approx(0.6))]
    assert seen[0].shape == (3, 150, 200) and float(seen[0].max()) == 1.0  # CHW, 0..1


def test_torchvision_weights_missing_is_one_line_user_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import detection

    def offline(self: object, *args: object, **kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(detection.SSDLite320_MobileNet_V3_Large_Weights, "get_state_dict",
                        offline)
    with pytest.raises(ModelError) as info:
        TorchvisionDetector("ssdlite320_mobilenet_v3_large", weights="default")
    message = str(info.value)
    assert isinstance(info.value, StreamerError) and "\n" not in message
    assert "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in message
    assert "detector.type=hog" in message


def test_hog_on_a_frame_smaller_than_its_window_finds_nobody():
    """OpenCV's detectMultiScale crashes the process on frames under 64x128; we never call it."""
    from streamer.vision.detect import HogDetector

    assert HogDetector().detect(np.zeros((64, 96, 3), np.uint8)) == []
