"""Accuracy against human-parsing ground truth: per-class IoU, mIoU and pixel accuracy.

``run_stream.py eval --images DIR --labels DIR`` parses every image in ``DIR`` and compares it
with the label map of the same file stem (CIHP / LIP format: a single-channel PNG whose pixel
values are class ids, 255 = not annotated). With real weights this is how to check that a speed
setting (engine, precision, canvas) did not cost accuracy.

The metric code needs no model: feed ``(prediction, truth)`` pairs to :class:`Confusion` (or
:func:`score_pairs`) and read the :class:`Scores`.

- One confusion matrix is accumulated over all pixels of all images (rows: truth, columns:
  prediction); pixels whose truth is ``255`` are ignored.
- IoU of class ``c`` = ``TP / (TP + FP + FN)`` from that matrix.
- mIoU is the mean IoU over the classes present in the truth *or* the prediction; classes
  absent from both have no IoU (0 / 0) and are excluded (and listed as such).
- ``miou_all_classes`` is the CIHP / LIP convention that published numbers use (as SCHP's
  ``utils/miou.py`` computes it from the confusion matrix): the mean over *all* classes, a
  class absent from both counting 0. It is lower than ``miou`` whenever a class is absent.
- Pixel accuracy = correctly labelled pixels / annotated pixels.
- A predicted id the classes do not cover (such as 255, "a person too small to parse") counts
  as wrong for the truth pixel, and as a false positive of no class.

Example:
    >>> truth = np.array([[0, 1], [1, 255]], np.uint8)
    >>> scores = score_pairs([(np.array([[0, 1], [0, 0]], np.uint8), truth)], ("bg", "hat"))
    >>> round(scores.miou, 3), round(scores.pixel_accuracy, 3)
    (0.5, 0.667)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer.apps.common import add_log_level, add_model_options, model_overrides, run_command
from streamer.core.errors import ConfigError, SourceError
from streamer.core.labels import IMAGE_SUFFIXES

__all__ = [
    "IGNORE",
    "Confusion",
    "ImageScore",
    "Scores",
    "find_pairs",
    "format_table",
    "load_image",
    "load_label",
    "main",
    "score_pairs",
]

#: Ground-truth value of pixels that are not annotated.
IGNORE = 255
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
EXCLUDED_NOTE = "classes absent from both prediction and truth are excluded from mIoU"
ALL_CLASSES_NOTE = ("CIHP/LIP convention (SCHP utils/miou.py): mean over all classes, a class "
                    "absent from both prediction and truth counts 0")


@dataclass
class Scores:
    """What :meth:`Confusion.scores` reports.

    ``iou[c]`` is ``None`` for a class absent from both prediction and truth (those classes
    are listed in ``excluded`` and left out of ``miou``). ``miou`` and ``pixel_accuracy`` are
    NaN when no pixel was annotated.

    Example:
        >>> s = Confusion(2).add(np.array([[1]]), np.array([[1]])).scores(("bg", "hat"))
        >>> s.iou, s.miou, s.excluded
        ([None, 1.0], 1.0, [0])
    """

    classes: tuple[str, ...]
    iou: list[float | None]
    truth_pixels: list[int]
    predicted_pixels: list[int]
    miou: float
    pixel_accuracy: float
    pixels: int
    ignored: int
    images: int = 0
    per_image: list[ImageScore] = field(default_factory=list)
    #: The CIHP / LIP convention: the mean over all classes, absent ones counting 0.
    miou_all_classes: float = math.nan
    #: Mean over all classes of the share of each class's truth pixels labelled right.
    mean_class_accuracy: float = math.nan

    @property
    def excluded(self) -> list[int]:
        """Class ids absent from both prediction and truth (not part of mIoU)."""
        return [c for c, v in enumerate(self.iou) if v is None]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``null``)."""

        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(float(x), 6)

        return {
            "images": self.images,
            "pixels": self.pixels,
            "ignored_pixels": self.ignored,
            "pixel_accuracy": num(self.pixel_accuracy),
            "miou": num(self.miou),
            "miou_classes": [c for c, v in enumerate(self.iou) if v is not None],
            "excluded_classes": self.excluded,
            "note": EXCLUDED_NOTE,
            "miou_all_classes": num(self.miou_all_classes),
            "miou_all_classes_note": ALL_CLASSES_NOTE,
            "mean_class_accuracy": num(self.mean_class_accuracy),
            "per_class_iou": {self.classes[c]: num(v) for c, v in enumerate(self.iou)},
            "classes": [
                {"id": c, "name": self.classes[c], "iou": num(v),
                 "truth_pixels": self.truth_pixels[c],
                 "predicted_pixels": self.predicted_pixels[c]}
                for c, v in enumerate(self.iou)
            ],
            "per_image": [
                {"name": s.name, "pixel_accuracy": num(s.pixel_accuracy), "miou": num(s.miou)}
                for s in self.per_image
            ],
        }


@dataclass(frozen=True)
class ImageScore:
    """Pixel accuracy and mIoU of one image on its own."""

    name: str
    pixel_accuracy: float
    miou: float


class Confusion:
    """A confusion matrix accumulated over ``(prediction, truth)`` label-map pairs.

    Rows are truth classes ``0..n-1``, columns predicted classes ``0..n-1`` plus one last
    column for predicted ids ``>= n``. ``n`` grows when the truth holds a higher class id.

    Example:
        >>> c = Confusion(3)
        >>> c.add(np.array([[0, 2, 2]]), np.array([[0, 2, 1]])).matrix.tolist()
        [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    """

    def __init__(self, num_classes: int, ignore: int = IGNORE) -> None:
        self.num_classes = int(num_classes)
        self.ignore = ignore
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), np.int64)
        self.ignored = 0
        self.images = 0

    def _grow(self, n: int) -> None:
        grown = np.zeros((n, n + 1), np.int64)
        k = self.num_classes
        grown[:k, :k] = self.matrix[:, :k]
        grown[:k, n] = self.matrix[:, k]
        self.matrix, self.num_classes = grown, n

    @staticmethod
    def _check(prediction: np.ndarray, truth: np.ndarray) -> None:
        if prediction.shape != truth.shape or truth.ndim != 2:
            raise SourceError(f"prediction of shape {prediction.shape} does not match "
                              f"ground truth of shape {truth.shape}")

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> Confusion:
        """Count one pair of ``(H, W)`` integer label maps; returns ``self``."""
        prediction, truth = np.asarray(prediction), np.asarray(truth)
        self._check(prediction, truth)
        valid = truth != self.ignore
        t = truth[valid].astype(np.int64)
        p = prediction[valid].astype(np.int64)
        if t.size and (int(t.min()) < 0 or int(p.min()) < 0):
            raise SourceError("label maps must hold non-negative class ids")
        if t.size and int(t.max()) >= self.num_classes:
            self._grow(int(t.max()) + 1)
        n = self.num_classes
        p = np.minimum(p, n)  # ids the classes do not cover share the last column
        self.matrix += np.bincount(t * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
        self.ignored += int(truth.size - t.size)
        self.images += 1
        return self

    def scores(self, classes: Sequence[str] = ()) -> Scores:
        """Per-class IoU, mIoU and pixel accuracy of everything added so far."""
        m = self.matrix
        n = self.num_classes
        tp = np.diag(m[:, :n]).astype(np.float64)
        truth_px = m.sum(axis=1)
        pred_px = m[:, :n].sum(axis=0)
        union = truth_px + pred_px - tp
        iou: list[float | None] = [float(tp[c] / union[c]) if union[c] > 0 else None
                                   for c in range(n)]
        present = [v for v in iou if v is not None]
        pixels = int(m.sum())
        # CIHP / LIP: every class takes part, 0 / 0 counting 0 (denominators floored at 1).
        all_iou = tp / np.maximum(1.0, union)
        class_accuracy = tp / np.maximum(1.0, truth_px)
        names = tuple(classes[c] if c < len(classes) else f"class {c}" for c in range(n))
        return Scores(
            classes=names,
            iou=iou,
            truth_pixels=[int(x) for x in truth_px],
            predicted_pixels=[int(x) for x in pred_px],
            miou=float(np.mean(present)) if present else math.nan,
            pixel_accuracy=float(tp.sum() / pixels) if pixels else math.nan,
            pixels=pixels,
            ignored=self.ignored,
            images=self.images,
            miou_all_classes=float(all_iou.mean()) if n and pixels else math.nan,
            mean_class_accuracy=float(class_accuracy.mean()) if n and pixels else math.nan,
        )


def score_pairs(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                classes: Sequence[str] = (), *, ignore: int = IGNORE) -> Scores:
    """Scores of ``(prediction, truth)`` label maps, accumulated over all of them.

    Example:
        >>> truth = np.array([[0, 1, 1, 2]], np.uint8)
        >>> score_pairs([(truth, truth)], ("bg", "hat", "hair")).miou
        1.0
    """
    total = Confusion(len(classes), ignore)
    per_image = []
    for i, (prediction, truth) in enumerate(pairs):
        total.add(prediction, truth)
        one = Confusion(len(classes), ignore).add(prediction, truth).scores(classes)
        per_image.append(ImageScore(str(i), one.pixel_accuracy, one.miou))
    scores = total.scores(classes)
    scores.per_image = per_image
    return scores


# ------------------------------------------------------------------------------- files
def find_pairs(images: str | Path, labels: str | Path) -> tuple[list[tuple[Path, Path]],
                                                                 list[Path]]:
    """``(image, label)`` paths matched by file stem, sorted; and the images with no label.

    Raises :class:`ConfigError` for a missing folder, :class:`SourceError` when nothing pairs.

    Example:
        >>> pairs, unlabelled = find_pairs("../shared/media/parsing_gt/lip/images",
        ...                                  "../shared/media/parsing_gt/lip/labels")
        >>> [(i.name, l.name) for i, l in pairs][:1]
        [('684_2150041.jpg', '684_2150041.png')]
    """
    images, labels = Path(images), Path(labels)
    for what, folder in (("--images", images), ("--labels", labels)):
        if not folder.is_dir():
            raise ConfigError(f"{what} folder {folder} does not exist",
                              hint="give a folder of images and a folder of label PNGs")
    image_files = sorted(p for p in images.iterdir()
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    label_by_stem: dict[str, Path] = {}
    for p in sorted(labels.iterdir()):
        if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES:
            label_by_stem.setdefault(p.stem, p)
    pairs = [(p, label_by_stem[p.stem]) for p in image_files if p.stem in label_by_stem]
    unlabelled = [p for p in image_files if p.stem not in label_by_stem]
    if not pairs:
        raise SourceError(
            f"no image in {images} has a label in {labels} with the same file stem "
            f"({len(image_files)} image(s), {len(label_by_stem)} label file(s))",
            hint="name them alike, e.g. images/0001.jpg and labels/0001.png")
    return pairs, unlabelled


def load_image(path: str | Path) -> np.ndarray:
    """An image file as RGB ``uint8 (H, W, 3)`` (greyscale is expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceError(f"cannot read image {path} ({exc})") from None


def load_label(path: str | Path) -> np.ndarray:
    """A single-channel label PNG as ``(H, W)`` class ids (a palette PNG gives its indices)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise SourceError(
                    f"label {path} is not single-channel (mode {mode})",
                    hint="labels must hold one class id per pixel, not colours")
            return np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceError(f"cannot read label {path} ({exc})") from None


# ------------------------------------------------------------------------------- output
def format_table(scores: Scores) -> str:
    """The per-class table and the summary lines, as printed by ``run_stream.py eval``.

    Example:
        >>> print(format_table(score_pairs([(truth, truth)], ("bg", "hat"))))  # doctest: +SKIP
        id  class         IoU   truth px    pred px
         0  bg          1.000          2          2
        ...
    """
    lines = [f"{'id':>3}  {'class':<14}{'IoU':>7}{'truth px':>11}{'pred px':>11}"]
    for c, v in enumerate(scores.iou):
        shown = "-" if v is None else f"{v:.3f}"
        lines.append(f"{c:>3}  {scores.classes[c][:14]:<14}{shown:>7}"
                     f"{scores.truth_pixels[c]:>11}{scores.predicted_pixels[c]:>11}")
    used = len(scores.iou) - len(scores.excluded)
    lines.append(f"mIoU            {scores.miou:.4f}  (mean over {used} classes; "
                 f"{len(scores.excluded)} absent from both prediction and truth, shown as -, "
                 "are excluded)")
    lines.append(f"mIoU CIHP/LIP   {scores.miou_all_classes:.4f}  (mean over all "
                 f"{len(scores.iou)} classes, absent ones counting 0, as published numbers "
                 "are computed)")
    lines.append(f"pixel accuracy  {scores.pixel_accuracy:.4f}  ({scores.pixels} annotated "
                 f"pixels in {scores.images} image(s), {scores.ignored} ignored (255))")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_stream.py eval",
        description="Parse every image in --images and score it against the label map of the "
        "same file stem in --labels (CIHP/LIP format: single-channel PNG, pixel = class id, "
        "255 ignored): per-class IoU, mIoU and pixel accuracy.")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--labels", required=True, help="folder of ground-truth label PNGs")
    add_model_options(
        p, config_help="YAML config file (parser and detector sections are used)",
        set_help="override a config key, e.g. parser.batch_size=1",
        detector_help="single-person model: how people are found (detector.type, default "
        "auto; full: the whole image is one person); the multi-person model always parses "
        "the whole image")
    p.add_argument("--threads", type=int, help="inference threads (parser.threads)")
    p.add_argument("--json", help="also write the scores as JSON to this file")
    p.add_argument("--labels-out", help="also write each predicted label map to this folder, "
                   "named after its image (photo.jpg -> photo.png), as scored")
    add_log_level(p)
    return p


def _predict(parser: Any, detector: Any, options: Any, image: np.ndarray) -> np.ndarray:
    from streamer.parsing.photo import parse_image

    return parse_image(image, parser, detector, options).labels


def _score_one(parser: Any, detector: Any, options: Any, image_path: Path, label_path: Path,
               total: Confusion, per_image: list[ImageScore]) -> np.ndarray:
    """Parse one image, add it to ``total`` and ``per_image``; return the prediction."""
    image = load_image(image_path)
    truth = load_label(label_path)
    if truth.shape != image.shape[:2]:
        raise SourceError(
            f"size mismatch: image {image_path.name} is {image.shape[1]}x{image.shape[0]} "
            f"but label {label_path.name} is {truth.shape[1]}x{truth.shape[0]}")
    prediction = _predict(parser, detector, options, image)
    total.add(prediction, truth)
    one = Confusion(len(parser.classes)).add(prediction, truth).scores(parser.classes)
    per_image.append(ImageScore(image_path.stem, one.pixel_accuracy, one.miou))
    return prediction


def run(args: argparse.Namespace) -> tuple[Scores, dict[str, Any]]:
    """Parse and score; what :func:`main` does before printing. Also returns the settings."""
    from streamer.config import load_config
    from streamer.io.paths import check_not_input, same_file
    from streamer.io.sinks import LabelMapSink, check_output_path, prepare_labels_dir

    pairs, unlabelled = find_pairs(args.images, args.labels)
    inputs = [path for pair in pairs for path in pair]
    if args.json:
        check_not_input(args.json, inputs, "--json")
        check_output_path(args.json)
    labels_out = getattr(args, "labels_out", None)
    if labels_out:
        for option, folder in (("--images", args.images), ("--labels", args.labels)):
            if Path(labels_out) == Path(folder) or same_file(labels_out, folder):
                raise ConfigError(f"--labels-out {labels_out} is the {option} folder; the "
                                  "predictions would overwrite or mix with it",
                                  hint="choose another --labels-out folder")
        check_not_input(labels_out, inputs, "--labels-out")
        prepare_labels_dir(labels_out)
    overrides = model_overrides(args)
    if args.threads is not None:
        overrides.append(f"parser.threads={args.threads}")
    config = load_config(args.config, overrides)
    if unlabelled:
        print(f"note: {len(unlabelled)} image(s) without a label skipped", file=sys.stderr)

    from streamer.parsing.parser import HumanParser
    from streamer.parsing.photo import photo_detector

    parser = HumanParser(config.parser)
    options = config.detector
    detector = photo_detector(parser, options)
    total = Confusion(len(parser.classes))
    per_image: list[ImageScore] = []
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(LabelMapSink(labels_out)) if labels_out else None
        for image_path, label_path in pairs:
            prediction = _score_one(parser, detector, options, image_path, label_path, total,
                                    per_image)
            if sink is not None:
                sink.write(prediction, len(per_image) - 1, name=image_path.stem)
    scores = total.scores(parser.classes)
    scores.per_image = per_image
    settings = {"images_dir": str(args.images), "labels_dir": str(args.labels),
                "model": str(config.parser.model), "engine": config.parser.engine,
                "model_kind": "single-person" if parser.single_person else "multi-person",
                "detector": options.type if detector is not None else "none (whole image)"}
    return scores, settings


def main(argv: list[str] | None = None) -> int:
    """``run_stream.py eval ...``; returns the exit code (0 ok, 1 bad data, 2 usage)."""
    return run_command(build_parser(), argv, _run_and_print)


def _run_and_print(args: argparse.Namespace) -> int:
    scores, settings = run(args)
    print(format_table(scores))
    if args.json:
        data = {**settings, **scores.to_dict()}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.labels_out:
        print(f"wrote {scores.images} predicted label map(s) to {args.labels_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
