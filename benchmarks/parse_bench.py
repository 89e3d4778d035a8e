"""Per-crop parse time: ModelScope's stock pipeline against streamer's engines, in one process.

Person crops come from the photos in ../shared/media/images (HOG detections, padded). A
full-size R101 single-person checkpoint with RANDOM weights is built with ModelScope's own M2FP
class, and both sides load that same checkpoint, so timings are real while the parses are not.

    python benchmarks/parse_bench.py --json parse.json [--quick] [--threads N]

Prints a table and writes JSON with the keys ``stock_pipeline_s`` (median seconds per crop),
``engines`` ({name: {median_s, p90_s, agreement_vs_torch, ...}}) and ``ratio_best_vs_stock``
(stock median over the fastest engine agreeing with torch on >= 99.5% of label pixels).
Needs the test-only ModelScope requirements: pip install -e '.[test]'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from streamer.detect import DetectorOptions, PersonFinder  # noqa: E402
from streamer.parser import HumanParser, ParserOptions  # noqa: E402

ENGINES = ("torch", "torchscript", "onnxruntime")
AGREEMENT_GATE = 0.995


def person_crops(limit: int) -> list[tuple[str, np.ndarray]]:
    if not (MEDIA / "images").is_dir():
        sys.exit(f"error: photos not found in {MEDIA / 'images'} (needs ../shared beside the repo)")
    finder = PersonFinder(DetectorOptions(type="hog", pad=0.1, min_size=64, max_persons=4))
    crops = []
    for path in sorted((MEDIA / "images").glob("*")):
        image = np.asarray(Image.open(path).convert("RGB"))
        persons = finder.find(image, 0)
        finder = PersonFinder(finder.options)  # a fresh tracker for every photo
        boxes = [p.box for p in persons] or []
        for i, box in enumerate(boxes):
            crops.append((f"{path.stem}#{i}", image[box.y0:box.y1, box.x0:box.x1].copy()))
    crops.sort(key=lambda c: -c[1].shape[0] * c[1].shape[1])
    # Spread the choice over sizes: largest and smallest crops both matter.
    if len(crops) > limit:
        picks = np.linspace(0, len(crops) - 1, limit).round().astype(int)
        crops = [crops[i] for i in sorted(set(picks))]
    return crops


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="write results here")
    ap.add_argument("--quick", action="store_true", help="about two minutes: fewer crops")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--model-dir", help="reuse (or create) the random-weight model here")
    args = ap.parse_args()

    import modelscope_ref as ref

    if not ref.modelscope_available():
        sys.exit("error: ModelScope is not installed: "
                 "pip install -e '.[test]'")
    torch.set_num_threads(args.threads)
    crops = person_crops(3 if args.quick else 10)
    reps = 1 if args.quick else 3
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="parse-bench-"))
    if not (model_dir / "pytorch_model.pt").is_file():
        print(f"building a full-size single-person M2FP (random weights) in {model_dir}")
        model_dir.mkdir(parents=True, exist_ok=True)
        ref.make_reference_model_dir(model_dir, "single", tiny=False, seed=3)
    print(f"{len(crops)} person crops, {reps} run(s) each, {args.threads} thread(s)")

    stock = ref.stock_pipeline(model_dir)
    classes = list(stock.model.classes)
    stock(crops[0][1])  # warm-up
    stock_times: list[float] = []
    stock_maps = []
    for _, crop in crops:
        stock_times += timed(lambda c=crop, run=stock: run(c), reps)
        stock_maps.append(ref.stock_label_map(stock(crop), classes, crop.shape[:2]))
    stock = None  # free its model before loading ours

    results: dict[str, dict] = {}
    reference: list[np.ndarray] | None = None
    for name in args.engines.split(","):
        parser = HumanParser(ParserOptions(model=str(model_dir), engine=name,
                                           threads=args.threads, batch_size=1))
        started = time.perf_counter()
        parser.warm_up()
        parser.parse_crops([crops[0][1]])
        build_s = time.perf_counter() - started
        times: list[float] = []
        maps = []
        for _, crop in crops:
            times += timed(lambda c=crop, p=parser: p.parse_crops([c]), reps)
            maps.append(parser.parse_crops([crop])[0])
        parser.options.batch_size = 4
        batched = timed(lambda p=parser: p.parse_crops([c for _, c in crops]), reps)
        if reference is None:
            reference = maps
        pixels = sum(m.size for m in maps)
        agree = sum(int((a == b).sum()) for a, b in zip(maps, reference, strict=True)) / pixels
        agree_stock = sum(
            int((a == b).sum()) for a, b in zip(maps, stock_maps, strict=True)) / pixels
        results[name] = {
            "median_s": round(statistics.median(times), 4),
            "p90_s": round(p90(times), 4),
            "agreement_vs_torch": round(agree, 5),
            "agreement_vs_stock": round(agree_stock, 5),
            "batched_per_crop_s": round(statistics.median(batched) / len(crops), 4),
            "first_use_s": round(build_s, 2),
        }

    stock_s = statistics.median(stock_times)
    eligible = {k: v for k, v in results.items() if v["agreement_vs_torch"] >= AGREEMENT_GATE}
    best = min(eligible, key=lambda k: eligible[k]["median_s"])
    out = {
        "stock_pipeline_s": round(stock_s, 4),
        "stock_pipeline_p90_s": round(p90(stock_times), 4),
        "engines": results,
        "best_engine": best,
        "ratio_best_vs_stock": round(stock_s / eligible[best]["median_s"], 3),
        "crops": [{"name": n, "height": int(c.shape[0]), "width": int(c.shape[1])}
                  for n, c in crops],
        "runs_per_crop": reps,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "weights": "random (timings are real; parse quality is not)",
    }
    print(f"\n{'':<14}{'median s':>10}{'p90 s':>9}{'batch4/crop':>13}{'vs torch':>10}"
          f"{'vs stock':>10}")
    print(f"{'stock':<14}{stock_s:>10.3f}{p90(stock_times):>9.3f}")
    for name, r in results.items():
        print(f"{name:<14}{r['median_s']:>10.3f}{r['p90_s']:>9.3f}{r['batched_per_crop_s']:>13.3f}"
              f"{r['agreement_vs_torch']:>10.4f}{r['agreement_vs_stock']:>10.4f}")
    print(f"\nbest: {best}, {out['ratio_best_vs_stock']:.2f}x faster than ModelScope's pipeline")
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
