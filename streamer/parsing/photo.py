"""One photo in, one ParseResult out: find the people, then parse them.

Every photo is a scene of its own: a fresh tracker for each (ids restart at 1, nothing carries
over), the detector shared. With no detector (``detector.type: full``) or the multi-person
model, the parser takes the whole image. When the detector finds nobody, the photo rule of
``streamer.vision.detect.photo_persons`` decides (a one-person crop is parsed whole).
Used by the CLI photo mode, ``run_stream.py eval`` and the web service's photo parse; the
pipeline's video path tracks people across frames instead (``PersonFinder`` per stream).

Example:
    >>> parser = HumanParser(ParserOptions(model="models/single"))
    >>> options = DetectorOptions(type="hog")
    >>> result = parse_image(image, parser, make_detector(options, still=True), options)
    >>> result.labels.shape == image.shape[:2]
    True
"""

from __future__ import annotations

import numpy as np

from streamer.core.types import ParseResult
from streamer.parsing.parser import HumanParser
from streamer.vision.detect import (
    Detector,
    DetectorOptions,
    PersonFinder,
    make_detector,
    photo_persons,
)

__all__ = ["parse_image", "photo_detector"]


def photo_detector(parser: HumanParser, options: DetectorOptions) -> Detector | None:
    """The detector to share between photos, or None when the parser takes the whole image.

    Example:
        >>> photo_detector(parser, DetectorOptions(type="full")) is None
        True
    """
    if options.type == "full" or not parser.single_person:
        return None
    return make_detector(options, still=True)


def parse_image(image: np.ndarray, parser: HumanParser, detector: Detector | None,
                options: DetectorOptions) -> ParseResult:
    """Find the people in one RGB photo with ``detector`` (None: the whole image), then parse.

    ``options`` are the detector's (tracking, padding, ``max_persons``) for the fresh
    ``PersonFinder``.
    """
    if detector is None or not parser.single_person:
        return parser.parse(image)
    persons = PersonFinder(options, detector=detector).find(image, 0)
    h, w = image.shape[:2]
    # Nobody found: the whole image is one person if it looks like a crop of one.
    return parser.parse(image, photo_persons(persons, w, h))
