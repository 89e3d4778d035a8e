"""Whole frames, end to end: ModelScope's multi-person pipeline against streamer's default run.

For each clip in ../shared/media/videos with 1-8 people, in one run:

- ``stock``: ModelScope's own multi-person M2FP pipeline on frames of the clip at its default
  size (short side 640), median seconds per frame (it takes seconds per frame, so a few frames
  spread over the clip);
- ``streamer``: the default configuration (HOG person finder + tracker, single-person M2FP on
  each person's crop, overlay, H.264 encode) over the first ``--frames`` frames, in a child
  process; per-frame time is its wall time over the frames written (the median interval
  between written frames is reported too), and the child's peak RSS is recorded.

Both sides load checkpoints built with ModelScope's own M2FP class and RANDOM WEIGHTS: timings
are real, parse quality is not. Also measured, side by side in the same run:

- ``overlap``: detector thread ahead of the parser (default) against detect-then-parse;
- ``reuse``: skipping the parse of people whose crop barely changed (default threshold) vs off;
- ``overlay_1080p_ms``: drawing a three-person parse over a 1080p frame;
- ``codec_overhead_ratio``: streamer's decode + encode (no parsing) over ``ffmpeg -i clip -c:v
  libx264 -preset veryfast`` on the same clip (needs the ffmpeg command).

    python benchmarks/pipeline_bench.py --json pipeline.json [--quick] [--frames 24]

JSON keys: ``clips`` ({name: {people, resolution, stock_frame_s, streamer_frame_s,
ratio_vs_stock, peak_rss_mb, ...}}), ``ratio_vs_stock`` (median over clips),
``overlay_1080p_ms``, ``peak_rss_mb`` (largest streamer child), ``codec_overhead_ratio``,
``overlap``, ``reuse``. Needs the test-only ModelScope requirements: pip install -e '.[test]'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media" / "videos"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from media_helpers import first_frames  # noqa: E402

# name -> people in view (MANIFEST.tsv); the crowd clip (~40 people) is outside 1-8.
CLIPS = {
    "sam2_juggle.mp4": "1",
    "chaplin_bw.mp4": "2",
    "mmaction2_basketball.mp4": "2",
    "sam2_bedroom_kids.mp4": "2",
    "mmaction2_two_people_indoor.mp4": "2",
    "vtest_pets_first200.avi": "3-8",
}


# ----------------------------------------------------------------------------- helpers
def spread_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` RGB frames spread evenly over the clip."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in sorted(set(picks))]


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_streamer(clip: str, model: str, out_dir: str, overlap: str, reuse: str,
                   engine: str, threads: str = "0") -> None:
    """One default-config run in this (child) process, set up as ``run_stream.py`` sets up
    its own; prints a JSON line."""
    from streamer.config import load_config
    from streamer.core.heap import return_large_buffers
    from streamer.pipeline import Pipeline

    return_large_buffers()

    overrides = [f"parser.model={model}", f"output.path={out_dir}/out.mp4",
                 "output.progress=false"]
    if reuse != "default":
        overrides.append(f"parse.reuse_threshold={reuse}")
    if engine != "default":
        overrides.append(f"parser.engine={engine}")
    if threads != "0":
        overrides.append(f"parser.threads={threads}")
    config = load_config(None, overrides)
    pipeline = Pipeline(config, clip, overlap_detection=overlap == "on")
    pipeline.parser.warm_up()
    started = time.perf_counter()
    summary = pipeline.run(show_progress=False)
    wall = time.perf_counter() - started
    times = [t for t, _ in pipeline.metrics.recent]
    gaps = np.diff(times) if len(times) > 1 else np.array([wall])
    print(json.dumps({
        "frames": summary["frames_written"],
        "frame_s": round(wall / max(1, summary["frames_written"]), 4),
        "median_interval_s": round(float(np.median(gaps)), 4),
        "detect_ms_p50": summary["stages_ms"]["detect"]["p50"],
        "parse_ms_p50": summary["stages_ms"]["parse"]["p50"],
        "crops_parsed": summary["crops_parsed"],
        "crops_reused": summary["crops_reused"],
        "engine": config.parser.engine,
        "peak_rss_mb": peak_rss_mb(),
    }))


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage: its ru_maxrss survives fork and exec, so a child
    would report its parent's peak; VmHWM belongs to the address space exec made."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_warm(model: str, engine: str) -> None:
    """Build the default parser once, filling the engine cache; prints a JSON line."""
    from streamer.config import load_config
    from streamer.parsing.parser import HumanParser

    overrides = [f"parser.model={model}"]
    if engine != "default":
        overrides.append(f"parser.engine={engine}")
    started = time.perf_counter()
    HumanParser(load_config(None, overrides).parser)
    print(json.dumps({"note": f"engine ready in {time.perf_counter() - started:.1f} s"}))


def child_codec(clip: str, out_dir: str) -> None:
    """Decode and encode only (no parse, no overlay), through streamer's source and sink."""
    from streamer.io.sinks import VideoFileSink
    from streamer.io.sources import SourceOptions, open_source

    started = time.perf_counter()
    source = open_source(clip, SourceOptions())
    with VideoFileSink(f"{out_dir}/codec.mp4", source.info, preset="veryfast") as sink:
        for frame in source:
            sink.write(frame.image, frame.pts, frame.time_base)
    source.close()
    print(json.dumps({"seconds": round(time.perf_counter() - started, 3)}))


def overlay_1080p_ms(reps: int = 60) -> float:
    from streamer.core.types import Box, ParseResult, Person
    from streamer.vision.render import OverlayStyle, Renderer

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1080, 1920, 3), np.uint8)
    labels = np.zeros((1080, 1920), np.uint8)
    persons = []
    for i, x in enumerate((200, 800, 1400)):
        labels[150:1000, x:x + 320] = rng.integers(0, 20, (850, 320), np.uint8)
        persons.append(Person(i + 1, 0.9, Box(x, 150, x + 320, 1000)))
    result = ParseResult(labels, tuple(str(i) for i in range(20)), None, persons)
    renderer = Renderer(OverlayStyle())
    renderer.render(image, result)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        renderer.render(image, result)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="two clips, fewer frames")
    ap.add_argument("--frames", type=int, default=24, help="streamer frames per clip")
    ap.add_argument("--stock-frames", type=int, default=3, help="stock frames per clip")
    ap.add_argument("--clips", help="comma-separated clip names (default: all 1-8 people)")
    ap.add_argument("--model-dir", help="reuse (or create) the random-weight models here")
    ap.add_argument("--engine", default="default", help="streamer engine (default: config's)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        {"streamer": child_streamer, "codec": child_codec, "warm": child_warm}[kind](*rest)
        return 0
    if not args.json:
        ap.error("--json is required")
    if not MEDIA.is_dir():
        sys.exit(f"error: clips not found in {MEDIA} (needs ../shared beside the repo)")

    import modelscope_ref as ref

    if not ref.modelscope_available():
        sys.exit("error: ModelScope is not installed: pip install -e '.[test]'")
    clips = (args.clips.split(",") if args.clips
             else ["sam2_juggle.mp4", "mmaction2_two_people_indoor.mp4"] if args.quick
             else list(CLIPS))
    frames = min(args.frames, 12) if args.quick else args.frames
    stock_frames = min(args.stock_frames, 2) if args.quick else args.stock_frames
    models = Path(args.model_dir or tempfile.mkdtemp(prefix="pipeline-bench-"))
    for variant in ("single", "multi"):
        if not (models / variant / "pytorch_model.pt").is_file():
            print(f"building a full-size {variant}-person M2FP (random weights) in {models}")
            ref.make_reference_model_dir(models / variant, variant, tiny=False, seed=3)
    # Compile (or find) the engine first, so that no timed child pays for it.
    print(run_child("warm", str(models / "single"), args.engine)["note"], flush=True)
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-run-"))
    results: dict[str, Any] = {}
    try:
        stock = ref.stock_pipeline(models / "multi")
        for name in clips:
            path = MEDIA / name
            trimmed = work / f"{Path(name).stem}.mp4"
            first_frames(path, trimmed, frames, crf=12)
            sample = spread_frames(path, stock_frames)
            stock(sample[0])  # warm-up
            stock_times = []
            for image in sample:
                started = time.perf_counter()
                stock(image)
                stock_times.append(time.perf_counter() - started)
            ours = run_child("streamer", str(trimmed), str(models / "single"), str(work),
                             "on", "default", args.engine)
            h, w = sample[0].shape[:2]
            stock_s = statistics.median(stock_times)
            results[name] = {
                "people": CLIPS.get(name, "?"),
                "resolution": f"{w}x{h}",
                "frames": ours["frames"],
                "stock_frame_s": round(stock_s, 3),
                "stock_frames": len(stock_times),
                "streamer_frame_s": ours["frame_s"],
                "ratio_vs_stock": round(stock_s / ours["frame_s"], 2),
                **{k: v for k, v in ours.items() if k not in ("frame_s", "frames")},
            }
            print(f"{name:<34}{w}x{h:<6} stock {stock_s:6.2f} s  streamer "
                  f"{ours['frame_s']:6.3f} s  x{results[name]['ratio_vs_stock']:.1f}  "
                  f"reused {ours['crops_reused']}/{ours['crops_reused'] + ours['crops_parsed']}"
                  f"  rss {ours['peak_rss_mb']:.0f} MB", flush=True)
        stock_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stock = None

        # Side by side on one clip with two people: detector overlap and crop reuse.
        probe = work / f"{Path(clips[-1] if args.quick else 'chaplin_bw.mp4').stem}.mp4"
        if not probe.is_file():
            probe = work / f"{Path(clips[0]).stem}.mp4"
        variants = {
            "overlap_on": ("on", "default"), "overlap_off": ("off", "default"),
            "reuse_off": ("on", "0"),
            "threads_1": ("on", "default", "1"), "threads_1_no_overlap": ("off", "default", "1"),
        }
        side: dict[str, dict] = {}
        for key, (overlap, reuse, *threads) in variants.items():
            side[key] = run_child("streamer", str(probe), str(models / "single"), str(work),
                                  overlap, reuse, args.engine, *threads)

        codec: dict[str, Any] = {"clip": None}
        ffmpeg = shutil.which("ffmpeg")
        codec_clip = MEDIA / "sam2_juggle.mp4"
        ours_codec = [run_child("codec", str(codec_clip), str(work))["seconds"]
                      for _ in range(3)]
        codec.update(clip=codec_clip.name, streamer_s=statistics.median(ours_codec))
        if ffmpeg:
            ff = []
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(codec_clip), "-c:v",
                                "libx264", "-preset", "veryfast", "-an",
                                str(work / "ffmpeg.mp4")], check=True)
                ff.append(time.perf_counter() - started)
            codec["ffmpeg_s"] = round(statistics.median(ff), 3)
            codec["ratio"] = round(codec["streamer_s"] / codec["ffmpeg_s"], 3)
        else:
            codec["ffmpeg_s"] = None
            codec["ratio"] = None
            codec["note"] = "ffmpeg command not found (apt-get install ffmpeg)"
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios = [r["ratio_vs_stock"] for r in results.values()]
    out = {
        "clips": results,
        "ratio_vs_stock": round(statistics.median(ratios), 2),
        "ratio_vs_stock_720p_le3": {k: r["ratio_vs_stock"] for k, r in results.items()
                                    if r["resolution"] == "1280x720"},
        "overlay_1080p_ms": overlay_1080p_ms(),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results.values()),
        "stock_peak_rss_mb": round(stock_rss, 1),
        "codec_overhead_ratio": codec["ratio"],
        "codec": codec,
        "overlap": {
            "on_frame_s": side["overlap_on"]["frame_s"],
            "off_frame_s": side["overlap_off"]["frame_s"],
            "on_detect_ms_p50": side["overlap_on"]["detect_ms_p50"],
            "off_detect_ms_p50": side["overlap_off"]["detect_ms_p50"],
        },
        "engine_threads": {
            "note": "seconds per frame with the parser's intra-op threads at 1 and at all cores",
            "1": side["threads_1"]["frame_s"],
            "1_no_overlap": side["threads_1_no_overlap"]["frame_s"],
            str(os.cpu_count()): side["overlap_on"]["frame_s"],
        },
        "reuse": {
            "default_frame_s": side["overlap_on"]["frame_s"],
            "off_frame_s": side["reuse_off"]["frame_s"],
            "default_crops_reused": side["overlap_on"]["crops_reused"],
            "default_crops_parsed": side["overlap_on"]["crops_parsed"],
            "off_crops_parsed": side["reuse_off"]["crops_parsed"],
        },
        "frames_per_clip": frames,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "weights": "random (timings are real; parse quality is not)",
    }
    print(f"\nmedian ratio vs stock: {out['ratio_vs_stock']}x   overlay 1080p "
          f"{out['overlay_1080p_ms']} ms   peak RSS {out['peak_rss_mb']} MB   "
          f"codec overhead {out['codec_overhead_ratio']}")
    print(f"overlap on/off: {out['overlap']['on_frame_s']} / {out['overlap']['off_frame_s']} s "
          f"per frame;  reuse default/off: {out['reuse']['default_frame_s']} / "
          f"{out['reuse']['off_frame_s']} s per frame;  engine threads 1 / all: "
          f"{out['engine_threads']['1']} / {out['overlap']['on_frame_s']} s per frame")
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
