"""The detectors that are not NanoDet / MoveNet: OpenCV's HOG, torchvision's COCO models, and
the full frame.

``streamer.vision.detect`` re-exports them (``from streamer.vision.detect import
HogDetector`` keeps working) and :func:`streamer.vision.detect.make_detector` builds them
from ``detector`` settings.

Example:
    >>> HogDetector().detect(np.zeros((480, 640, 3), np.uint8))
    []
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from streamer.core.errors import ConfigError, ModelError
from streamer.core.types import Box
from streamer.vision.boxes import nms

__all__ = ["COCO_PERSON", "TORCHVISION_MODELS", "TORCHVISION_WEIGHTS", "FullFrameDetector",
           "HogDetector", "TorchvisionDetector"]

TORCHVISION_MODELS = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")
TORCHVISION_WEIGHTS = ("default", "none")
COCO_PERSON = 1  # the person label in torchvision's COCO detection models


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

