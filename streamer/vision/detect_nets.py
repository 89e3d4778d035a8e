"""Trained person detectors on OpenVINO (or ONNX Runtime): NanoDet, MoveNet MultiPose, merged.

Both take RGB ``uint8`` frames of any size (a 2x4000 strip or a 1x40000 line gives no boxes,
never an error) and return :class:`~streamer.core.types.Box` lists in frame pixels, best first,
like every :class:`~streamer.vision.detect.Detector`.

- :class:`NanoDetDetector`: RangiLyu's NanoDet (COCO, 80 classes; person only is kept) on a
  square letterboxed canvas (416 px by default), BGR normalised with NanoDet's mean and std.
  Its generalised-focal-loss head gives, per cell of the stride 8, 16 and 32 grids, class
  scores and for each side of the box a distribution over 11 distance bins; the distance is
  that distribution's expectation times the stride, from the cell centre ``(i + 0.5) * stride``.
- :class:`MoveNetDetector`: Google's MoveNet MultiPose Lightning: int32 RGB with the long
  side at 256 px (both sides padded to a multiple of 32); up to 6 people, each 17 keypoints
  and a box, normalised to the input.
- :class:`MergedDetector`: several detectors' boxes pooled and cleaned with :func:`nms`.
- :class:`SkeletonSplitDetector`: MoveNet run again on each big box's crop; a box
  holding two or more distinct skeletons of its own scale becomes one box per skeleton
  (:func:`split_by_skeletons`), so two people that overlap so much that one box covers both
  (and NMS keeps one) are both parsed.

Example:
    >>> detector = NanoDetDetector(Path("nanodet.json"), threads=2)
    >>> [(b.x0, b.y0, b.x1, b.y1) for b in detector.detect(image)]
    [(412, 88, 640, 710)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from streamer.core.types import Box
from streamer.vision.detect import Detector, iou_matrix, nms
from streamer.vision.detector_models import compile_model

__all__ = ["MergedDetector", "MoveNetDetector", "NanoDetDetector", "SkeletonSplitDetector",
           "split_by_skeletons"]


def _clamped_box(xyxy: np.ndarray, score: float, w: int, h: int) -> Box | None:
    """Float corners as an integer box covering them inside the frame; None when empty."""
    x0 = min(max(math.floor(xyxy[0]), 0), w)
    y0 = min(max(math.floor(xyxy[1]), 0), h)
    x1 = min(max(math.ceil(xyxy[2]), 0), w)
    y1 = min(max(math.ceil(xyxy[3]), 0), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(int(x0), int(y0), int(x1), int(y1), float(score))


def _boxes(xyxy: np.ndarray, scores: np.ndarray, w: int, h: int) -> list[Box]:
    out = (_clamped_box(xyxy[i], float(scores[i]), w, h) for i in range(len(xyxy)))
    return [b for b in out if b is not None]


def _usable(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[0] >= 1 and image.shape[1] >= 1


class NanoDetDetector:
    """NanoDet (COCO) person boxes; see the module docstring for the decoding.

    ``input_size`` is the side of the square canvas: 416, which the published graph fixes (its
    reshapes are constants). A frame is scaled to fit it keeping its aspect (``letterbox``,
    measured better: docs/detectors.md) or stretched to the square. Boxes scoring under
    ``score_threshold`` are dropped before :func:`nms` at ``nms_iou``.

    Example:
        >>> NanoDetDetector(path, input_size=416, score_threshold=0.35).detect(image)
        [Box(x0=..., score=0.81), ...]
    """

    MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
    STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)
    STRIDES = (8, 16, 32)
    BINS = 11  # distance bins per side: 0..10 strides
    PERSON = 0  # COCO's first class

    def __init__(self, model_json: Path, input_size: int = 416, score_threshold: float = 0.3,
                 nms_iou: float = 0.5, threads: int = 0, letterbox: bool = True,
                 containment: float = 0.8, engine: str = "auto") -> None:
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, not {input_size}")
        self.input_size = int(input_size)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.letterbox = letterbox
        self.containment = float(containment)
        self.net = compile_model(Path(model_json), [1, 3, self.input_size, self.input_size],
                                 threads, engine)
        self.engine = getattr(self.net, "engine", "openvino")  # what it runs on
        cells = {(self.input_size // s) ** 2: s for s in self.STRIDES}
        # Outputs by shape: (1, cells, 80) scores and (1, cells, 44) bins, per stride.
        self._heads: dict[int, dict[str, int]] = {s: {} for s in self.STRIDES}
        for i, out in enumerate(self.net.outputs):
            _, n, c = (int(d) for d in out.get_shape())
            self._heads[cells[n]]["scores" if c == 80 else "bins"] = i
        self._request = self.net.create_infer_request()
        self._grid = {s: self._centres(s) for s in self.STRIDES}

    def _centres(self, stride: int) -> np.ndarray:
        side = self.input_size // stride
        ys, xs = np.mgrid[0:side, 0:side]
        return np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], 1)

    def canvas(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The normalised NCHW input and the x, y scale from frame to canvas pixels."""
        h, w = image.shape[:2]
        size = self.input_size
        if self.letterbox:
            sx = sy = size / max(h, w)
        else:
            sx, sy = size / w, size / h
        nw, nh = min(size, max(1, round(w * sx))), min(size, max(1, round(h * sy)))
        resized = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_AREA
                             if nw < w else cv2.INTER_LINEAR).reshape(nh, nw, -1)
        canvas = np.zeros((size, size, 3), np.float32)  # padding: the mean, i.e. 0 once normal
        canvas[:nh, :nw] = (resized[..., 2::-1].astype(np.float32) - self.MEAN_BGR) / self.STD_BGR
        return canvas.transpose(2, 0, 1)[None], nw / w, nh / h

    def raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Person scores and boxes (canvas pixels) of every cell, and the canvas scale."""
        blob, sx, sy = self.canvas(image)
        self._request.infer({0: blob})
        scores, boxes = [], []
        for stride in self.STRIDES:
            head = self._heads[stride]
            cls = self._request.get_output_tensor(head["scores"]).data[0]
            bins = self._request.get_output_tensor(head["bins"]).data[0]
            logits = bins.reshape(-1, 4, self.BINS)
            logits = logits - logits.max(axis=2, keepdims=True)
            prob = np.exp(logits)
            dist = (prob @ np.arange(self.BINS, dtype=np.float32)) / prob.sum(axis=2) * stride
            centre = self._grid[stride]
            boxes.append(np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], 1))
            scores.append(cls[:, self.PERSON])
        return np.concatenate(scores), np.concatenate(boxes), sx, sy

    def detect(self, image: np.ndarray) -> list[Box]:
        if not _usable(image):
            return []
        h, w = image.shape[:2]
        scores, boxes, sx, sy = self.raw(image)
        keep = scores >= self.score_threshold
        scores, boxes = scores[keep], boxes[keep] / np.array([sx, sy, sx, sy], np.float32)
        order = nms(boxes, scores, self.nms_iou, self.containment)
        return _boxes(boxes[order], scores[order], w, h)


class MoveNetDetector:
    """MoveNet MultiPose Lightning person boxes (and keypoints, :meth:`poses`).

    The frame is scaled so that its long side is ``long_side`` (a multiple of 32) and padded
    right and below to multiples of 32; each padded shape is compiled once (OpenVINO caches
    the blob). People scoring under ``score_threshold`` are dropped.

    Example:
        >>> MoveNetDetector(path, score_threshold=0.15).detect(image)
        [Box(x0=..., score=0.64)]
    """

    KEYPOINTS = 17

    def __init__(self, model_json: Path, long_side: int = 256, score_threshold: float = 0.15,
                 nms_iou: float = 0.5, threads: int = 0, engine: str = "auto") -> None:
        if long_side % 32:
            raise ValueError(f"long_side must be a multiple of 32, not {long_side}")
        self.model_json = Path(model_json)
        self.long_side = int(long_side)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.threads = threads
        self.engine = engine  # the one asked for; after the first compile, the one used
        self._requests: dict[tuple[int, int], object] = {}
        self._request(32 * math.ceil(self.long_side * 9 / 16 / 32), self.long_side)  # 16:9 now

    def _request(self, ph: int, pw: int):
        request = self._requests.get((ph, pw))
        if request is None:
            net = compile_model(self.model_json, [1, ph, pw, 3], self.threads, self.engine)
            self.engine = getattr(net, "engine", "openvino")  # later shapes: no retrying
            request = self._requests[(ph, pw)] = net.create_infer_request()
        return request

    def poses(self, image: np.ndarray) -> np.ndarray:
        """``(6, 56)``: per person 17 x (y, x, score) keypoints and (y0, x0, y1, x1, score), in
        frame pixels (an empty ``(0, 56)`` for an unusable image)."""
        if not _usable(image):
            return np.zeros((0, 56), np.float32)
        h, w = image.shape[:2]
        scale = self.long_side / max(h, w)
        nw, nh = min(self.long_side, max(1, round(w * scale))), min(
            self.long_side, max(1, round(h * scale)))
        pw, ph = 32 * math.ceil(nw / 32), 32 * math.ceil(nh / 32)
        resized = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_AREA
                             if nw < w else cv2.INTER_LINEAR).reshape(nh, nw, -1)
        canvas = np.zeros((1, ph, pw, 3), np.int32)
        canvas[0, :nh, :nw] = resized[..., :3]
        request = self._request(ph, pw)
        request.infer({0: canvas})
        out = np.array(request.get_output_tensor(0).data[0], np.float32)
        ys = np.r_[np.arange(0, 51, 3), 51, 53]
        xs = np.r_[np.arange(1, 51, 3), 52, 54]
        out[:, ys] *= ph * (h / nh)
        out[:, xs] *= pw * (w / nw)
        return out

    def detect(self, image: np.ndarray) -> list[Box]:
        poses = self.poses(image)
        if not len(poses):
            return []
        h, w = image.shape[:2]
        scores = poses[:, 55]
        boxes = poses[:, [52, 51, 54, 53]]  # y0, x0, y1, x1 -> x0, y0, x1, y1
        keep = scores >= self.score_threshold
        scores, boxes = scores[keep], boxes[keep]
        order = nms(boxes, scores, self.nms_iou)
        return _boxes(boxes[order], scores[order], w, h)


class MergedDetector:
    """The boxes of several detectors pooled, overlaps removed by :func:`nms` (best kept).

    Example:
        >>> MergedDetector([nanodet, movenet]).detect(image)
        [Box(...), ...]
    """

    def __init__(self, detectors: Sequence[Detector], nms_iou: float = 0.5,
                 containment: float = 0.8) -> None:
        self.detectors = list(detectors)
        self.nms_iou = float(nms_iou)
        self.containment = float(containment)

    def detect(self, image: np.ndarray) -> list[Box]:
        pooled = [b for d in self.detectors for b in d.detect(image)]
        if not pooled:
            return []
        xyxy = np.array([[b.x0, b.y0, b.x1, b.y1] for b in pooled], np.float64)
        scores = np.array([b.score for b in pooled])
        return [pooled[i] for i in nms(xyxy, scores, self.nms_iou, self.containment)]


def _anchor(keypoints: np.ndarray, min_score: float) -> np.ndarray | None:
    """Where a skeleton is: the mean of its confident head and shoulder keypoints (COCO 0-6),
    else of all its confident keypoints; None when none is confident. ``keypoints``: (17, 3)
    y, x, score."""
    for part in (keypoints[:7], keypoints):
        good = part[:, 2] > min_score
        if good.any():
            return part[good, 1::-1].mean(axis=0)  # x, y
    return None


def _taken(xyxy: np.ndarray, others: Sequence[Box], iou: float, containment: float) -> bool:
    """Whether the box ``xyxy`` is one of ``others``' person: IoU over ``iou`` with one, or
    more than ``containment`` of one inside it."""
    if not len(others):
        return False
    theirs = np.array([[b.x0, b.y0, b.x1, b.y1] for b in others], np.float64)
    iw = np.clip(np.minimum(theirs[:, 2], xyxy[2]) - np.maximum(theirs[:, 0], xyxy[0]), 0, None)
    ih = np.clip(np.minimum(theirs[:, 3], xyxy[3]) - np.maximum(theirs[:, 1], xyxy[1]), 0, None)
    area = np.maximum((theirs[:, 2] - theirs[:, 0]) * (theirs[:, 3] - theirs[:, 1]), 1e-9)
    return bool((iou_matrix(xyxy[None], theirs)[0] > iou).any()
                or (iw * ih / area > containment).any())


def split_by_skeletons(box: Box, poses: np.ndarray, others: Sequence[Box] = (),
                       min_score: float = 0.15, min_keypoints: int = 3,
                       keypoint_score: float = 0.3, inside: float = 0.7,
                       min_height: float = 0.5, distinct: float = 0.15,
                       taken_iou: float = 0.5, containment: float = 0.8,
                       within: tuple[int, int, int, int] | None = None) -> list[Box]:
    """``box`` as one box per distinct person whose skeleton it holds, or ``[box]``.

    ``poses``: MoveNet rows (:meth:`MoveNetDetector.poses`, frame pixels). A skeleton counts
    when it scores ``min_score`` or more, has ``min_keypoints`` keypoints over
    ``keypoint_score``, at least ``inside`` of its box lies in ``box`` and it is at least
    ``min_height`` of ``box``'s height (the same person's scale, not someone small behind).
    Two such skeletons are distinct people when their anchors (head and shoulders) are more
    than ``distinct`` times ``box``'s height apart; the better-scoring of a close pair is kept.
    A skeleton whose box overlaps one of ``others`` (the frame's other boxes) at IoU over
    ``taken_iou``, or holds more than ``containment`` of one, is that box's person, already
    found, and does not count.
    With two or more people, ``box`` is replaced by one box per person: their skeleton's box
    (kept inside ``within``, the crop MoveNet saw: ``x0, y0, x1, y1``; default ``box``),
    each scored ``box.score``, in the order of their skeletons' scores (so both keep the
    pair's rank among the frame's other people, and ``detector.max_persons`` keeps or drops
    them together: scaled by their skeletons' scores, the second dancer of a 1080p photo with
    eight spectators fell under the cap). Every person gets their own skeleton's box: the
    detector's box covers the pair, and which of them it "is" is not known.

    Example:
        >>> split_by_skeletons(Box(0, 0, 200, 400, 0.8), poses)   # two dancers, one box
        [Box(x0=0, y0=10, x1=150, y1=400, score=0.8), Box(x0=60, y0=0, ..., score=0.8)]
    """
    height = max(box.height, 1)
    people: list[tuple[float, np.ndarray, np.ndarray]] = []  # score, xyxy, anchor
    for row in sorted(poses, key=lambda r: -float(r[55])):
        score = float(row[55])
        keypoints = row[:51].reshape(17, 3)
        if score < min_score or int((keypoints[:, 2] > keypoint_score).sum()) < min_keypoints:
            continue
        xyxy = row[[52, 51, 54, 53]].astype(np.float64)
        area = max((xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]), 1e-9)
        iw = max(0.0, min(xyxy[2], box.x1) - max(xyxy[0], box.x0))
        ih = max(0.0, min(xyxy[3], box.y1) - max(xyxy[1], box.y0))
        if iw * ih / area < inside or xyxy[3] - xyxy[1] < min_height * height:
            continue
        anchor = _anchor(keypoints, keypoint_score)
        if anchor is None or _taken(xyxy, others, taken_iou, containment):
            continue
        if all(np.hypot(*(anchor - other)) > distinct * height for _, _, other in people):
            people.append((score, xyxy, anchor))
    if len(people) < 2:
        return [box]
    x0, y0, x1, y1 = within or (box.x0, box.y0, box.x1, box.y1)
    out = []
    for _, xyxy, _ in people:
        # the skeleton's box inside the crop (MoveNet's box can reach into the crop's padding)
        clipped = np.array([max(xyxy[0], x0), max(xyxy[1], y0),
                            min(xyxy[2], x1), min(xyxy[3], y1)])
        split = _clamped_box(clipped, box.score, x1, y1)
        if split is not None:
            out.append(split)
    return out if len(out) >= 2 else [box]


class SkeletonSplitDetector:
    """A detector's boxes, each big one checked for two people by MoveNet on its crop.

    The ``max_boxes`` tallest boxes at least ``min_side`` px tall are cropped with ``pad`` of
    their size around them and given to ``movenet``; :func:`split_by_skeletons` turns a box
    with two or more distinct skeletons into one box per person. Measured
    (docs/detectors.md): on the crop MoveNet tells apart two people that one box covers, which
    it does not on the whole frame at 256 px. It costs one MoveNet run per checked box: photos
    check up to 8, video (detector frames) up to 4.

    Example:
        >>> SkeletonSplitDetector(MergedDetector([nanodet, movenet]), movenet).detect(image)
        [Box(...), Box(...), ...]
    """

    def __init__(self, detector: Detector, movenet: MoveNetDetector, pad: float = 0.2,
                 min_side: int = 96, max_boxes: int = 8) -> None:
        self.detector = detector
        self.movenet = movenet
        self.pad = float(pad)
        self.min_side = int(min_side)
        self.max_boxes = int(max_boxes)

    @property
    def detectors(self) -> list[Detector]:
        parts = getattr(self.detector, "detectors", [self.detector])
        return list(parts)

    def detect(self, image: np.ndarray) -> list[Box]:
        boxes = self.detector.detect(image)
        if not boxes:
            return boxes
        h, w = image.shape[:2]
        # The tallest boxes are checked (ties: the better score): close-up people are the ones
        # that overlap into one box and whose parse shows; it bounds the cost per frame.
        by_height = sorted(range(len(boxes)), key=lambda i: (-boxes[i].height, i))
        checked = {i for i in by_height[:self.max_boxes] if boxes[i].height >= self.min_side}
        out: list[Box] = []
        for rank, box in enumerate(boxes):
            if rank not in checked:
                out.append(box)
                continue
            px, py = round(self.pad * box.width), round(self.pad * box.height)
            x0, y0 = max(box.x0 - px, 0), max(box.y0 - py, 0)
            x1, y1 = min(box.x1 + px, w), min(box.y1 + py, h)
            poses = self.movenet.poses(image[y0:y1, x0:x1])
            if len(poses):
                poses = poses.copy()
                poses[:, 0:51:3] += y0
                poses[:, 1:51:3] += x0
                poses[:, [51, 53]] += y0
                poses[:, [52, 54]] += x0
            out.extend(split_by_skeletons(box, poses, boxes[:rank] + boxes[rank + 1:],
                                          within=(x0, y0, x1, y1)))
        return sorted(out, key=lambda b: -b.score)
