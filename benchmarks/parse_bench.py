"""Per-crop parse time: ModelScope's stock pipeline against streamer's engines, in one process.

Person crops come from the photos in ../shared/media/images (HOG detections, padded). A
full-size R101 single-person checkpoint with RANDOM weights is built with ModelScope's own M2FP
class, and both sides load that same checkpoint, so timings are real while the parses are not.

    python benchmarks/parse_bench.py --json parse.json [--quick] [--threads N]
        [--engines torch,onnxruntime,openvino,openvino:bf16,...] [--calibrate N]
        [--min-agreement 0.99]

Every engine and precision (``engine`` or ``engine:precision``) is timed one crop per call and
its label maps compared with fp32 torch's. int8 models are calibrated on person crops from
../shared/media/videos (never the benchmark's photos) when the engine cache has none yet
(``--calibrate N`` crops; ``--quick`` only uses int8 models already calibrated). For the fastest
engine passing the agreement gate it also measures one call for 2-4 crops against one crop per
call, 1 against 2 intra-op threads, and for OpenVINO the throughput hint.

Prints a table and writes JSON with the keys ``stock_pipeline_s`` (median seconds per crop),
``engines`` ({name: {median_s, p90_s, agreement_vs_torch, precision, ...}}) and
``ratio_best_vs_stock`` (stock median over the fastest engine agreeing with torch on >= 99.5%
of label pixels), plus ``best_engine``, ``recommended``, ``batching`` and ``threads_scaling``.
Needs the test-only ModelScope requirements: pip install -e '.[test]'
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
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

from bench_common import cpu_name  # noqa: E402

from streamer.m2fp.checkpoint import CHECKPOINT_FILE  # noqa: E402
from streamer.parsing import calibrate as cal  # noqa: E402
from streamer.parsing.engines import (  # noqa: E402
    AGREEMENT_GATE,
    cpu_has_bf16,
    default_cache_dir,
    int8_model_path,
    onnx_model,
)
from streamer.parsing.gate import Measurement, check_min_agreement, choose, label_agreement  # noqa: E402
from streamer.parsing.parser import HumanParser, ParserOptions  # noqa: E402
from streamer.vision.detect import DetectorOptions, PersonFinder  # noqa: E402

FULL = ("torch,torchscript,onnxruntime,onnxruntime:int8,openvino,openvino:bf16,openvino:int8")
QUICK = "torch,onnxruntime,openvino,openvino:bf16,onnxruntime:int8,openvino:int8"


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


def spec_name(spec: str) -> tuple[str, str, str]:
    """``openvino:bf16`` -> ("openvino-bf16", "openvino", "bf16"); fp32 keeps the bare name."""
    engine, _, precision = spec.partition(":")
    precision = precision or "fp32"
    return (engine if precision == "fp32" else f"{engine}-{precision}"), engine, precision


def ensure_int8(engine: str, model_dir: Path, crops: int, cache: Path) -> str | None:
    """Calibrate ``engine``'s int8 model on video crops unless the cache has one; None if it
    is there (or was made), else why not."""
    parser = HumanParser(ParserOptions(model=str(model_dir), engine="torch"))
    checkpoint = parser.model_dir / CHECKPOINT_FILE
    canvas = parser.cfg.canvas_hw
    if int8_model_path(engine, checkpoint, canvas, cache).is_file():
        return None
    if crops <= 0:
        return "not calibrated (run without --quick, or python -m streamer.calibrate)"
    if not (MEDIA / "videos").is_dir():
        return f"no calibration footage in {MEDIA / 'videos'}"
    started = time.perf_counter()
    found = cal.find_person_crops([MEDIA / "videos"], crops)
    inputs = [cal.canvas_input(c, canvas) for _, c in found]
    fp32 = onnx_model(parser.net, canvas, checkpoint, cache)
    del parser
    gc.collect()
    out = int8_model_path(engine, checkpoint, canvas, cache)
    try:
        (cal.quantize_onnxruntime if engine == "onnxruntime" else cal.quantize_openvino)(
            fp32, out, inputs)
    except Exception as exc:  # a benchmark reports a failed quantiser and goes on
        return f"calibration failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    print(f"calibrated {engine} int8 on {len(inputs)} video crops in "
          f"{time.perf_counter() - started:.0f} s")
    return None


def bench_engine(model_dir: Path, engine: str, precision: str, crops: list[np.ndarray],
                 reps: int, threads: int, cache: Path, batch: bool) -> tuple[dict, list]:
    parser = HumanParser(ParserOptions(model=str(model_dir), engine=engine, precision=precision,
                                       threads=threads, batch_size=1, cache_dir=str(cache)))
    started = time.perf_counter()
    parser.warm_up()
    parser.parse_crops([crops[0]])
    build_s = time.perf_counter() - started
    times: list[float] = []
    maps = []
    for crop in crops:
        times += timed(lambda c=crop, p=parser: p.parse_crops([c]), reps)
        maps.append(parser.parse_crops([crop])[0])
    out = {
        "engine": engine,
        "precision": precision,
        "median_s": round(statistics.median(times), 4),
        "p90_s": round(p90(times), 4),
        "first_use_s": round(build_s, 2),
    }
    if batch:
        parser.options.batch_size = 4
        parser.parse_crops(crops[:4])  # compiles the batch shape where the engine needs one
        batched = timed(lambda p=parser: p.parse_crops(crops), reps)
        out["batched_per_crop_s"] = round(statistics.median(batched) / len(crops), 4)
    del parser
    gc.collect()
    return out, maps


def batching(model_dir: Path, engine: str, precision: str, crops: list[np.ndarray], reps: int,
             threads: int, cache: Path) -> dict:
    """Per-crop seconds for one call of n = 2..4 crops against n calls of one crop.

    OpenVINO's "one call" compiles a static shape for n crops (``static_batches``); by default
    it runs a call of n crops one by one through its batch-1 model, which is the other column.
    """
    parser = HumanParser(ParserOptions(model=str(model_dir), engine=engine, precision=precision,
                                       threads=threads, batch_size=4, cache_dir=str(cache)))
    net_engine = parser.engine_for(parser.cfg.canvas_hw)
    out: dict = {"engine": engine, "precision": precision}
    for n in range(2, min(4, len(crops)) + 1):
        group = crops[:n]
        parser.options.batch_size = n
        if engine == "openvino":
            net_engine.static_batches = True
        parser.parse_crops(group)  # compiles the batch shape where the engine needs one
        together = statistics.median(timed(lambda p=parser, g=group: p.parse_crops(g), reps))
        if engine == "openvino":
            net_engine.static_batches = False
        parser.options.batch_size = 1
        apart = statistics.median(timed(lambda p=parser, g=group: p.parse_crops(g), reps))
        out[str(n)] = {"one_call_per_crop_s": round(together / n, 4),
                       "one_by_one_per_crop_s": round(apart / n, 4)}
    del parser, net_engine
    if engine == "openvino" and len(crops) >= 2:
        parser = HumanParser(ParserOptions(
            model=str(model_dir), engine=engine, precision=precision, threads=threads,
            perf_hint="throughput", batch_size=4, cache_dir=str(cache)))
        group = crops[:min(4, len(crops))]
        parser.parse_crops(group)
        spent = statistics.median(timed(lambda p=parser, g=group: p.parse_crops(g), reps))
        out["throughput_hint"] = {"crops": len(group), "per_crop_s": round(spent / len(group), 4)}
        del parser
    gc.collect()
    return out


def thread_scaling(model_dir: Path, engine: str, precision: str, crops: list[np.ndarray],
                   reps: int, cache: Path, most: int) -> dict:
    out = {}
    for threads in sorted({1, min(2, most)}):
        parser = HumanParser(ParserOptions(model=str(model_dir), engine=engine,
                                           precision=precision, threads=threads, batch_size=1,
                                           cache_dir=str(cache)))
        parser.parse_crops([crops[0]])
        times = []
        for crop in crops:
            times += timed(lambda c=crop, p=parser: p.parse_crops([c]), reps)
        out[str(threads)] = round(statistics.median(times), 4)
        del parser
        gc.collect()
    torch.set_num_threads(most)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="write results here")
    ap.add_argument("--quick", action="store_true",
                    help="about two minutes: fewer crops, int8 only if already calibrated")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--engines", help=f"engine[:precision] list (default {FULL}; "
                                      f"--quick: {QUICK})")
    ap.add_argument("--calibrate", type=int, default=None,
                    help="video crops to calibrate missing int8 models on (default 48; "
                         "--quick: 0, use only what is calibrated)")
    ap.add_argument("--min-agreement", type=float, default=AGREEMENT_GATE,
                    help="agreement gate for the best engine (0.99 is the lowest opt-in)")
    ap.add_argument("--cache-dir", help="engine cache (default ~/.cache/streamer)")
    ap.add_argument("--no-stock", action="store_true",
                    help="skip ModelScope's pipeline (no ratio; for trying engines quickly)")
    ap.add_argument("--model-dir", help="reuse (or create) the random-weight model here")
    args = ap.parse_args()
    check_min_agreement(args.min_agreement)
    logging.getLogger("nncf").setLevel(logging.WARNING)

    import modelscope_ref as ref

    if not args.no_stock and not ref.modelscope_available():
        sys.exit("error: ModelScope is not installed: "
                 "pip install -e '.[test]'")
    torch.set_num_threads(args.threads)
    crops = person_crops(3 if args.quick else 10)
    reps = 1 if args.quick else 3
    calibrate_crops = args.calibrate if args.calibrate is not None else (0 if args.quick else 48)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    specs = (args.engines or (QUICK if args.quick else FULL)).split(",")
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="parse-bench-"))
    if not (model_dir / "pytorch_model.pt").is_file():
        print(f"building a full-size single-person M2FP (random weights) in {model_dir}")
        model_dir.mkdir(parents=True, exist_ok=True)
        ref.make_reference_model_dir(model_dir, "single", tiny=False, seed=3)
    print(f"{len(crops)} person crops, {reps} run(s) each, {args.threads} thread(s)")

    stock_times: list[float] = []
    stock_maps = []
    if not args.no_stock:
        stock = ref.stock_pipeline(model_dir)
        classes = list(stock.model.classes)
        stock(crops[0][1])  # warm-up
        for _, crop in crops:
            stock_times += timed(lambda c=crop, run=stock: run(c), reps)
            stock_maps.append(ref.stock_label_map(stock(crop), classes, crop.shape[:2]))
        stock = None  # free its model before loading ours
        gc.collect()

    images = [c for _, c in crops]
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    reference: list[np.ndarray] | None = None
    for spec in ["torch"] + [s for s in specs if s.strip() and spec_name(s)[0] != "torch"]:
        name, engine, precision = spec_name(spec.strip())
        if precision == "bf16" and not cpu_has_bf16():
            skipped[name] = "this CPU has no native bf16"
            continue
        if precision == "int8":
            why = ensure_int8(engine, model_dir, calibrate_crops, cache)
            if why:
                skipped[name] = why
                continue
        result, maps = bench_engine(model_dir, engine, precision, images, reps, args.threads,
                                    cache, batch=not args.quick)
        if reference is None:
            reference = maps
        result["agreement_vs_torch"] = round(label_agreement(maps, reference), 5)
        if stock_maps:
            result["agreement_vs_stock"] = round(label_agreement(maps, stock_maps), 5)
        results[name] = result
        print(f"  {name}: {result['median_s']:.3f} s/crop, agreement "
              f"{result['agreement_vs_torch']:.4f}", flush=True)

    measured = [Measurement(r["engine"], r["precision"], r["median_s"], r["p90_s"],
                            r["agreement_vs_torch"]) for r in results.values()]
    best = choose(measured, args.min_agreement)
    best_name = next(k for k, r in results.items()
                     if (r["engine"], r["precision"]) == (best.engine, best.precision))
    batch_report = batching(model_dir, best.engine, best.precision, images, reps, args.threads,
                            cache)
    scaling = thread_scaling(model_dir, best.engine, best.precision, images, reps, cache,
                             args.threads)

    out = {
        "stock_pipeline_s": round(statistics.median(stock_times), 4) if stock_times else None,
        "stock_pipeline_p90_s": round(p90(stock_times), 4) if stock_times else None,
        "engines": results,
        "best_engine": best_name,
        "recommended": best.setting,
        "min_agreement": args.min_agreement,
        "ratio_best_vs_stock": (round(statistics.median(stock_times) / best.median_s, 3)
                                if stock_times else None),
        "batching": batch_report,
        "threads_scaling": scaling,
        "skipped": skipped,
        "crops": [{"name": n, "height": int(c.shape[0]), "width": int(c.shape[1])}
                  for n, c in crops],
        "runs_per_crop": reps,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "bf16": cpu_has_bf16(),
        "weights": "random (timings are real; parse quality is not)",
    }
    print(f"\n{'':<18}{'median s':>10}{'p90 s':>9}{'batch4/crop':>13}{'vs torch':>10}"
          f"{'vs stock':>10}")
    if stock_times:
        print(f"{'stock':<18}{out['stock_pipeline_s']:>10.3f}{out['stock_pipeline_p90_s']:>9.3f}")
    for name, r in results.items():
        batched = f"{r['batched_per_crop_s']:.3f}" if "batched_per_crop_s" in r else "-"
        vs_stock = f"{r['agreement_vs_stock']:.4f}" if "agreement_vs_stock" in r else "-"
        print(f"{name:<18}{r['median_s']:>10.3f}{r['p90_s']:>9.3f}{batched:>13}"
              f"{r['agreement_vs_torch']:>10.4f}{vs_stock:>10}")
    for name, why in skipped.items():
        print(f"{name:<18}skipped: {why}")
    print(f"\nbatching ({best_name}), seconds per crop"
          + (" (one call: a static shape per batch size)" if best.engine == "openvino" else "")
          + ":")
    for n in ("2", "3", "4"):
        if n in batch_report:
            b = batch_report[n]
            print(f"  {n} crops: one call {b['one_call_per_crop_s']:.3f}, "
                  f"one by one {b['one_by_one_per_crop_s']:.3f}")
    if "throughput_hint" in batch_report:
        print(f"  throughput hint, {batch_report['throughput_hint']['crops']} crops: "
              f"{batch_report['throughput_hint']['per_crop_s']:.3f}")
    print("threads: " + ", ".join(f"{k}: {v:.3f} s" for k, v in scaling.items()))
    ratio = out["ratio_best_vs_stock"]
    print(f"\nbest at >= {args.min_agreement} agreement: {best_name}"
          + (f", {ratio:.2f}x faster than ModelScope's pipeline" if ratio else ""))
    print(f"recommended on this machine: --set {best.setting.replace(' ', ' --set ')}")
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
