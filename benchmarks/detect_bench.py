"""Person detectors against ground truth: recall, false boxes, pixel coverage, speed, counts.

For every available detector (``hog``, ``nanodet``, ``movenet``, ``torchvision`` when its COCO
weights are cached) and the ``auto`` default, on ``../shared/media``:

- ``parsing_gt`` (CIHP, LIP): pixel coverage, the share of person pixels (label > 0 and
  != 255) inside the boxes the parser would get (``postprocess_boxes`` with the default
  ``detector`` settings: pad 0.1, min size 24), pooled over each set's images; and the same
  with the photo rule (``photo_persons``: an upright crop with nobody found is parsed whole).
- ``person_boxes``: recall at IoU 0.5 with greedy matching by score, and false boxes per
  image outside the ignore regions (its README's rules), on the boxes before padding; and the
  hits on the same photos mirrored, scaled to 0.8 and to 1.25 (with 7 boxes one hit is 0.14
  of recall: the copies tell a solid hit from a borderline one).
- ms per 1280x720 frame (median and best wall time over frames of ``sam2_juggle.mp4``, one
  person, after a warm-up), and the CPU ms they cost (all threads), which a loaded machine
  changes less; the same on 1920x1080 frames with two people
  (``mmaction2_two_people_indoor.mp4``).
- persons per frame (boxes after post-processing, uncapped) on the first ``--frames``
  frames of three clips.

``--detectors`` also takes the candidates measured against ``auto`` on video
(:data:`CANDIDATES`: NanoDet + MoveNet merged, with and without the split, the split on 8
boxes, boxes from keypoints, a second pass on the halves of big frames).
``--variant NAME:key=value,key=value`` adds a detector built from ``detector`` settings (for
example ``--variant nosplit:type=auto,split=false``), to compare settings. The table's first
line gives the CPU and the load average before and after the run.

Example:
    $ python benchmarks/detect_bench.py --json detect.json --threads 2
    detector   runs  recall  false/img  mir/.8/1.25  CIHP cov  LIP cov  ...  ms/720p ...
    auto       NanoDet + split   7/7  ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import cpu_name  # noqa: E402
from bench_common import read_frames as clip_frames  # noqa: E402

from streamer.core.errors import StreamerError  # noqa: E402
from streamer.core.types import Box  # noqa: E402
from streamer.vision.detect import (  # noqa: E402
    Detector,
    DetectorOptions,
    box_array,
    iou_matrix,
    make_detector,
    nms,
    photo_persons,
    postprocess_boxes,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = ("chaplin_bw.mp4", "sam2_juggle.mp4", "mmtracking_crowd_street.mp4")
SPEED_CLIP = "sam2_juggle.mp4"  # 1280x720
TWO_CLIP = "mmaction2_two_people_indoor.mp4"  # 1920x1080, two people
VIEWS = ("as is", "mirrored", "x0.8", "x1.25")


def transformed(image: np.ndarray, boxes: np.ndarray, ignore: list,
                view: str) -> tuple[np.ndarray, np.ndarray, list]:
    """``image``, its ground-truth ``boxes`` and ``ignore`` polygons, mirrored or scaled."""
    h, w = image.shape[:2]
    if view == "as is":
        return image, boxes, ignore
    if view == "mirrored":
        flipped = boxes.copy()
        flipped[:, [0, 2]] = w - boxes[:, [2, 0]]
        return (np.ascontiguousarray(image[:, ::-1]), flipped,
                [[[w - x, y] for x, y in poly] for poly in ignore])
    f = float(view.removeprefix("x"))
    size = (round(w * f), round(h * f))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    return image, boxes * f, [[[x * f, y * f] for x, y in poly] for poly in ignore]


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"error: cannot read {path}")
    return np.ascontiguousarray(image[..., ::-1])


def inside_polygons(box: np.ndarray, polygons: list, w: int, h: int) -> float:
    """Share of ``box``'s area inside any of the ignore ``polygons``."""
    if not polygons:
        return 0.0
    mask = np.zeros((h, w), np.uint8)
    for poly in polygons:
        cv2.fillPoly(mask, [np.round(np.array(poly)).astype(np.int32)], 1)
    x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
    x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
    y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    area = max(1, (x1 - x0) * (y1 - y0))
    return float(mask[y0:y1, x0:x1].sum()) / area


def match(dets: np.ndarray, gts: np.ndarray, ignore: list, w: int,
          h: int) -> tuple[int, int]:
    """Hits and false boxes by the person_boxes README's greedy rules."""
    order = np.argsort(-dets[:, 4], kind="stable")
    matched = np.zeros(len(gts), bool)
    hits = false = 0
    for i in order:
        if len(gts):
            iou = iou_matrix(dets[i:i + 1, :4], gts)[0]
            iou[matched] = -1
            best = int(np.argmax(iou))
            if iou[best] >= 0.5:
                matched[best] = True
                hits += 1
                continue
        if inside_polygons(dets[i], ignore, w, h) > 0.5:
            continue
        false += 1
    return hits, false


def coverage(boxes, labels: np.ndarray) -> tuple[int, int]:
    person = (labels > 0) & (labels != 255)
    covered = np.zeros_like(person)
    for b in boxes:
        covered[b.y0:b.y1, b.x0:b.x1] = True
    return int((person & covered).sum()), int(person.sum())


def evaluate(detector: Detector, options: DetectorOptions, media: Path, frames: int,
             speed: list[np.ndarray], two: list[np.ndarray]) -> dict[str, Any]:
    raw_opts = dataclasses.replace(options, pad=0.0, max_persons=1000)
    count_opts = dataclasses.replace(options, max_persons=1000)
    out: dict[str, Any] = {}
    # person_boxes, as published and mirrored / scaled (7 boxes: one hit is 0.14 of recall, so
    # the three copies show whether a hit is solid or borderline)
    gt = json.loads((media / "person_boxes" / "boxes.json").read_text())
    for view in VIEWS:
        hits = total = false = 0
        for rel, entry in gt.items():
            image, gts, ignore = transformed(read_rgb(media / "person_boxes" / rel),
                                             np.array(entry["boxes"], np.float64).reshape(-1, 4),
                                             entry.get("ignore_regions", []), view)
            h, w = image.shape[:2]
            dets = box_array(postprocess_boxes(detector.detect(image), w, h, raw_opts))
            hit, bad = match(dets, gts, ignore, w, h)
            hits, false, total = hits + hit, false + bad, total + len(gts)
        key = "" if view == "as is" else f"_{view.replace(' ', '_')}"
        out[f"recall{key}"] = hits / total
        out[f"hits{key}"], out[f"false_per_image{key}"] = hits, false / len(gt)
        if view == "as is":
            out["gt_boxes"] = total
    # parsing_gt
    for name in ("cihp", "lip"):
        inside = person = inside_photo = 0
        found_none = 0
        folder = media / "parsing_gt" / name
        for image_path in sorted((folder / "images").iterdir()):
            labels = cv2.imread(str(folder / "labels" / f"{image_path.stem}.png"),
                                cv2.IMREAD_UNCHANGED)
            image = read_rgb(image_path)
            h, w = image.shape[:2]
            boxes = postprocess_boxes(detector.detect(image), w, h, options)
            found_none += not boxes
            a, b = coverage(boxes, labels)
            inside, person = inside + a, person + b
            if photo_persons(boxes, w, h) is None:  # parsed whole: every pixel is inside
                a = b
            inside_photo += a
        out[f"{name}_coverage"] = inside / max(person, 1)
        out[f"{name}_coverage_photo_rule"] = inside_photo / max(person, 1)
        out[f"{name}_images_without_box"] = found_none
    # speed at 720p (one person), and on 1080p frames with two people (the split's cost
    # grows with the big boxes it checks)
    for key, timed in (("720p", speed), ("two_people", two)):
        detector.detect(timed[0])
        times, cpu = [], []
        for image in timed:
            started, cpu_started = time.perf_counter(), time.process_time()
            detector.detect(image)
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - cpu_started) * 1000)
        out[f"ms_{key}"] = statistics.median(times)
        out[f"ms_{key}_min"] = min(times)
        # CPU time of all the process's threads: what the frame costs whatever else runs; on
        # an idle machine the wall time is about this over the threads that share the work.
        out[f"cpu_ms_{key}"] = statistics.median(cpu)
    # persons per frame
    for clip in CLIPS:
        counts = []
        for image in clip_frames(media / "videos" / clip, frames):
            h, w = image.shape[:2]
            counts.append(len(postprocess_boxes(detector.detect(image), w, h, count_opts)))
        out[f"persons_{Path(clip).stem}"] = sum(counts) / max(len(counts), 1)
        out[f"frames_{Path(clip).stem}"] = len(counts)
    return out


# ----------------------------------------------------------------------------- candidates
# Ways to find more people on video's detector frames that were measured against the
# ``auto`` choice (docs/detectors.md) and lost; kept here so that the numbers can be remade.
class KeypointBoxDetector:
    """A detector's boxes, each one that is loose around its person replaced by the box of
    their keypoints: the whole-frame MoveNet skeleton that overlaps the box most (IoU at least
    ``min_iou``, ``min_keypoints`` keypoints over ``keypoint_score``) gives the extent of its
    confident keypoints, grown by ``pad`` (1.5 ``pad`` above: the keypoints stop at the eyes);
    it replaces the box when their IoU is under ``loose``."""

    def __init__(self, detector: Detector, movenet, keypoint_score: float = 0.3,
                 min_keypoints: int = 5, pad: float = 0.1, min_iou: float = 0.3,
                 loose: float = 0.8) -> None:
        self.detector, self.movenet = detector, movenet
        self.keypoint_score, self.min_keypoints = keypoint_score, min_keypoints
        self.pad, self.min_iou, self.loose = pad, min_iou, loose
        self.detectors = [*getattr(detector, "detectors", [detector]), movenet]

    def extents(self, image: np.ndarray) -> np.ndarray:
        rows = []
        for pose in self.movenet.poses(image):
            keypoints = pose[:51].reshape(17, 3)
            good = keypoints[:, 2] > self.keypoint_score
            if pose[55] < self.movenet.score_threshold or good.sum() < self.min_keypoints:
                continue
            ys, xs = keypoints[good, 0], keypoints[good, 1]
            bw, bh = xs.max() - xs.min(), ys.max() - ys.min()
            rows.append([xs.min() - self.pad * bw, ys.min() - 1.5 * self.pad * bh,
                         xs.max() + self.pad * bw, ys.max() + self.pad * bh])
        return np.array(rows, np.float64).reshape(-1, 4)

    def detect(self, image: np.ndarray) -> list[Box]:
        boxes = self.detector.detect(image)
        if not boxes:
            return boxes
        h, w = image.shape[:2]
        extents = self.extents(image)
        if not len(extents):
            return boxes
        iou = iou_matrix(box_array(boxes)[:, :4], extents)
        out = []
        for i, box in enumerate(boxes):
            j = int(np.argmax(iou[i]))
            if self.min_iou <= iou[i, j] < self.loose:
                x0, y0, x1, y1 = extents[j]
                box = Box(max(int(x0), 0), max(int(y0), 0), min(int(np.ceil(x1)), w),
                          min(int(np.ceil(y1)), h), box.score)
            out.append(box)
        return out


class HalvesDetector:
    """A second pass for big frames: on frames at least ``min_width`` wide the detector also
    runs on the left and right ``share`` of the frame (each seen at about twice the scale),
    all boxes merged by NMS."""

    def __init__(self, detector: Detector, min_width: int = 1600, share: float = 0.55) -> None:
        self.detector, self.min_width, self.share = detector, min_width, share
        self.detectors = [detector]

    def detect(self, image: np.ndarray) -> list[Box]:
        boxes = self.detector.detect(image)
        h, w = image.shape[:2]
        if w < self.min_width:
            return boxes
        half = int(w * self.share)
        for x0 in (0, w - half):
            boxes += [Box(b.x0 + x0, b.y0, b.x1 + x0, b.y1, b.score)
                      for b in self.detector.detect(image[:, x0:x0 + half])]
        if not boxes:
            return []
        arr = box_array(boxes)
        return [boxes[i] for i in nms(arr[:, :4], arr[:, 4], 0.5, 0.8)]


#: name -> what it runs (each built from NanoDet and MoveNet as ``auto`` configures them):
#: the merge on the whole frame, with and without the split on the 4 tallest boxes; the split
#: on the 8 best-scoring boxes (the photo's count); a loose box replaced by its person's
#: keypoint box (``KeypointBoxDetector``), after NanoDet or after video's auto; a second
#: NanoDet pass on the two halves of frames 1600+ px wide (``HalvesDetector``).
CANDIDATES = {
    "merge": "NanoDet + MoveNet (merged)",
    "merge-split": "NanoDet + MoveNet + split (4)",
    "split-8": "NanoDet + split (8 boxes)",
    "keypoint-box": "NanoDet + keypoint boxes",
    "auto-keypoint-box": "NanoDet + split + keypoint boxes",
    "halves": "NanoDet + a pass on each half",
}


def candidate(name: str, options: DetectorOptions) -> Detector:
    """The candidate ``name`` (:data:`CANDIDATES`)."""
    from streamer.vision.detect_nets import MergedDetector, SkeletonSplitDetector

    nanodet = make_detector(dataclasses.replace(options, type="nanodet"))
    movenet = make_detector(dataclasses.replace(options, type="movenet"))
    if name == "merge":
        return MergedDetector([nanodet, movenet])
    if name == "merge-split":
        return SkeletonSplitDetector(MergedDetector([nanodet, movenet]), movenet, max_boxes=4)
    if name == "split-8":
        return SkeletonSplitDetector(nanodet, movenet, max_boxes=8)
    if name == "keypoint-box":
        return KeypointBoxDetector(nanodet, movenet)
    if name == "auto-keypoint-box":
        return KeypointBoxDetector(SkeletonSplitDetector(nanodet, movenet, max_boxes=4), movenet)
    if name == "halves":
        return HalvesDetector(nanodet)
    raise SystemExit(f"error: no candidate {name!r}; known: {', '.join(CANDIDATES)}")


def describe(detector: Detector) -> str:
    parts = getattr(detector, "detectors", None)
    if parts:
        split = " + split" if type(detector).__name__ == "SkeletonSplitDetector" else ""
        return " + ".join(type(d).__name__.removesuffix("Detector") for d in parts) + split
    return type(detector).__name__


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    import yaml

    name, _, spec = text.partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        settings[key.strip()] = yaml.safe_load(value)
    return name, settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--media", default=str(MEDIA), help="../shared/media")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    p.add_argument("--detectors", default="auto,auto-photo,nanodet,movenet,hog,torchvision",
                   help="comma-separated detector.type values; auto-photo is auto as photos "
                   "(the CLI's photo mode, serve and eval) get it; also the candidates "
                   f"measured against auto on video: {', '.join(CANDIDATES)}")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,...")
    args = p.parse_args(argv)
    media = Path(args.media)
    if not (media / "person_boxes").is_dir():
        print(f"error: {media} has no person_boxes (clone with ../shared beside the repo)",
              file=sys.stderr)
        return 2
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    cv2.setNumThreads(args.threads)
    speed = clip_frames(media / "videos" / SPEED_CLIP, 12)
    two = clip_frames(media / "videos" / TWO_CLIP, 24)[::3]
    load_before = os.getloadavg()[0]
    specs = [(name, {"type": name.removesuffix("-photo")})
             for name in args.detectors.split(",") if name]
    specs += [parse_variant(v) for v in args.variant]
    rows: dict[str, Any] = {}
    for name, settings in specs:
        if settings.get("type") == "torchvision":
            import torch

            cached = Path(torch.hub.get_dir()) / "checkpoints"
            if not any(cached.glob("ssdlite320_mobilenet_v3_large*")):
                rows[name] = {"skipped": f"torchvision COCO weights not cached in {cached}"}
                print(f"{name}: skipped ({rows[name]['skipped']})", flush=True)
                continue
        is_candidate = settings.get("type") in CANDIDATES
        options = DetectorOptions(**{"threads": args.threads, "fetch": False, **settings,
                                     **({"type": "auto"} if is_candidate else {})})
        try:
            detector = (candidate(name, options) if is_candidate
                        else make_detector(options, still=name.endswith("-photo")))
        except StreamerError as exc:
            rows[name] = {"skipped": str(exc)}
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        started = time.perf_counter()
        row = evaluate(detector, options, media, args.frames, speed, two)
        row["runs"] = describe(detector)
        if is_candidate:
            row["runs"], row["candidate"] = CANDIDATES[name], True
        row["settings"] = settings
        rows[name] = row
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    load = (load_before, os.getloadavg()[0])
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} inference threads"
    head = (f"{'detector':<18}{'runs':<34}{'recall':>8}{'false/img':>10}{'mir/.8/1.25':>12}"
            f"{'CIHP cov':>9}{'LIP cov':>8}{'(photo)':>8}{'ms/720p':>8}{'best':>7}{'CPU ms':>7}"
            f"{'ms 2ppl':>8}{'CPU':>6}{'chaplin':>8}{'juggle':>7}{'crowd':>6}")
    print(f"{machine}; load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(head)
    for name, r in rows.items():
        if "skipped" in r:
            print(f"{name:<18}skipped: {r['skipped']}")
            continue
        views = "/".join(str(r[f"hits_{v}"]) for v in ("mirrored", "x0.8", "x1.25"))
        print(f"{name:<18}{r['runs'][:33]:<34}{r['hits']:>4}/{r['gt_boxes']:<3}"
              f"{r['false_per_image']:>10.2f}{views:>12}{r['cihp_coverage']:>9.3f}"
              f"{r['lip_coverage']:>8.3f}{r['lip_coverage_photo_rule']:>8.3f}{r['ms_720p']:>8.1f}"
              f"{r['ms_720p_min']:>7.1f}{r['cpu_ms_720p']:>7.1f}{r['ms_two_people']:>8.1f}"
              f"{r['cpu_ms_two_people']:>6.0f}"
              f"{r['persons_chaplin_bw']:>8.2f}{r['persons_sam2_juggle']:>7.2f}"
              f"{r['persons_mmtracking_crowd_street']:>6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine, "load_average": list(load), "frames_per_clip": args.frames,
             "results": rows},
            indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
