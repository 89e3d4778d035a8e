"""Person detectors against ground truth: recall, false boxes, pixel coverage, speed, counts.

For every available detector (``hog``, ``nanodet``, ``movenet``, ``torchvision`` when its COCO
weights are cached) and the ``auto`` default, on ``../shared/media``:

- ``parsing_gt`` (CIHP, LIP): pixel coverage, the share of person pixels (label > 0 and
  != 255) inside the boxes the parser would get (``postprocess_boxes`` with the default
  ``detector`` settings: pad 0.1, min size 24), pooled over each set's images; and the same
  with the photo rule (``photo_persons``: an upright crop with nobody found is parsed whole).
- ``person_boxes``: recall at IoU 0.5 with greedy matching by score, and false boxes per
  image outside the ignore regions (its README's rules), on the boxes before padding.
- ms per 1280x720 frame (median and best wall time over frames of ``sam2_juggle.mp4``, after a
  warm-up), and the CPU ms they cost (all threads), which a loaded machine changes less.
- persons per frame (boxes after post-processing, uncapped) on the first ``--frames``
  frames of three clips.

``--variant NAME:key=value,key=value`` adds a detector built from ``detector`` settings (for
example ``--variant nd320:type=nanodet,input_size=320``), to compare settings.

Example:
    $ python benchmarks/detect_bench.py --json detect.json --threads 2
    detector   recall  false/img  CIHP cov  LIP cov  ms/720p  chaplin  juggle  crowd
    auto         ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.core.errors import StreamerError  # noqa: E402
from streamer.vision.detect import (  # noqa: E402
    Detector,
    DetectorOptions,
    iou_matrix,
    make_detector,
    photo_persons,
    postprocess_boxes,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = ("chaplin_bw.mp4", "sam2_juggle.mp4", "mmtracking_crowd_street.mp4")
SPEED_CLIP = "sam2_juggle.mp4"  # 1280x720


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"error: cannot read {path}")
    return np.ascontiguousarray(image[..., ::-1])


def clip_frames(path: Path, count: int) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= count:
                break
    return frames


def box_array(boxes) -> np.ndarray:
    return np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in boxes],
                    np.float64).reshape(-1, 5)


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
             speed: list[np.ndarray]) -> dict[str, Any]:
    raw_opts = dataclasses.replace(options, pad=0.0, max_persons=1000)
    count_opts = dataclasses.replace(options, max_persons=1000)
    out: dict[str, Any] = {}
    # person_boxes
    gt = json.loads((media / "person_boxes" / "boxes.json").read_text())
    hits = total = false = 0
    images = 0
    for rel, entry in gt.items():
        image = read_rgb(media / "person_boxes" / rel)
        h, w = image.shape[:2]
        dets = box_array(postprocess_boxes(detector.detect(image), w, h, raw_opts))
        gts = np.array(entry["boxes"], np.float64).reshape(-1, 4)
        hit, bad = match(dets, gts, entry.get("ignore_regions", []), w, h)
        hits, false, total, images = hits + hit, false + bad, total + len(gts), images + 1
    out["recall"] = hits / total
    out["hits"], out["gt_boxes"] = hits, total
    out["false_per_image"] = false / images
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
    # speed at 720p
    detector.detect(speed[0])
    times, cpu = [], []
    for image in speed:
        started, cpu_started = time.perf_counter(), time.process_time()
        detector.detect(image)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    out["ms_720p"] = statistics.median(times)
    out["ms_720p_min"] = min(times)
    # CPU time of all the process's threads: what the frame costs whatever else runs; on an
    # idle machine the wall time is about this over the threads that share the work.
    out["cpu_ms_720p"] = statistics.median(cpu)
    # persons per frame
    for clip in CLIPS:
        counts = []
        for image in clip_frames(media / "videos" / clip, frames):
            h, w = image.shape[:2]
            counts.append(len(postprocess_boxes(detector.detect(image), w, h, count_opts)))
        out[f"persons_{Path(clip).stem}"] = sum(counts) / max(len(counts), 1)
        out[f"frames_{Path(clip).stem}"] = len(counts)
    return out


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
                   "(the CLI's photo mode, serve and eval) get it")
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
        options = DetectorOptions(**{"threads": args.threads, "fetch": False, **settings})
        try:
            detector = make_detector(options, still=name.endswith("-photo"))
        except StreamerError as exc:
            rows[name] = {"skipped": str(exc)}
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        started = time.perf_counter()
        row = evaluate(detector, options, media, args.frames, speed)
        row["runs"] = describe(detector)
        row["settings"] = settings
        rows[name] = row
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} inference threads"
    head = (f"{'detector':<12}{'runs':<34}{'recall':>8}{'false/img':>10}{'CIHP cov':>9}"
            f"{'LIP cov':>8}{'(photo)':>8}{'ms/720p':>8}{'best':>7}{'CPU ms':>7}"
            f"{'chaplin':>8}{'juggle':>7}{'crowd':>6}")
    print(machine)
    print(head)
    for name, r in rows.items():
        if "skipped" in r:
            print(f"{name:<12}skipped: {r['skipped']}")
            continue
        print(f"{name:<12}{r['runs'][:33]:<34}{r['hits']:>4}/{r['gt_boxes']:<3}"
              f"{r['false_per_image']:>10.2f}{r['cihp_coverage']:>9.3f}"
              f"{r['lip_coverage']:>8.3f}{r['lip_coverage_photo_rule']:>8.3f}{r['ms_720p']:>8.1f}"
              f"{r['ms_720p_min']:>7.1f}{r['cpu_ms_720p']:>7.1f}"
              f"{r['persons_chaplin_bw']:>8.2f}{r['persons_sam2_juggle']:>7.2f}"
              f"{r['persons_mmtracking_crowd_street']:>6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine, "frames_per_clip": args.frames, "results": rows},
            indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
