"""CPU per frame of one live stream's own work, outside the parse: carry, render, encode.

What a stream thread does for every frame it shows when the parse runs elsewhere (the shared
parse scheduler): the latest parse carried onto the frame (``render.propagate: shift``, boxes
moving), the overlay drawn, the picture converted to ``yuv420p`` and encoded by the recording
sink as a live stream (``VideoInfo.is_live``, the sink's own choice of encoder threads). The
frames are a real clip's, resized to each size; the parse is three standing people (about 20%
of the frame, with a person-id map), carried from a parse made every 10th frame.

``--baseline REV`` also runs the same measurement on the code of git revision ``REV``
(exported to a temporary folder, run in a child process) and prints both, so a change to the
stream path shows as before/after on the same machine in one command. The rows interleave
the two codes, ``--rounds`` times, and keep each one's lowest CPU (load from other processes
only ever adds).

Example (Intel Xeon Sapphire Rapids, AVX-512, 2 cores shared with other jobs):
    $ python benchmarks/stream_path_bench.py --baseline 74922d5 --threads default,1,2 \
          --frames 150 --rounds 2 --json stream_path.json
    stream path per frame, CPU Intel(R) Xeon(R) Processor, 2 cores, load 2.0; 150 frames ...
    code      size       enc.thr  cpu ms  thread ms  carry  render  encode  wall ms  keeps fps
    74922d5   640x360          2    5.51       1.90   0.66    0.66    0.57     3.54  yes
    working   640x360          1    4.78       4.48   0.28    0.54    3.51     4.48  yes
    ...
    working   1920x1080    1 set   36.99      36.10   2.22    4.23   28.35    36.10  yes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIP = ROOT.parent / "shared" / "media" / "videos" / "chaplin_bw.mp4"
SIZES = ("640x360", "1280x720", "1920x1080")


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def measure(code: Path, clip: Path, sizes: list[str], frames: int, fps: float,
            thread_choices: list[int | None]) -> list[dict]:
    """One pass of every size and encoder thread count (``None``: the sink's choice) with the
    ``streamer`` package found in ``code``."""
    sys.path.insert(0, str(code))
    import cv2

    from streamer.core.types import ParseResult
    from streamer.io.sinks.video import VideoFileSink, to_video_frame
    from streamer.vision.render import CIHP_CLASSES, OverlayStyle, Renderer
    from streamer.vision.temporal import Carrier

    # After streamer: render_bench puts this checkout first on sys.path when imported.
    sys.path.insert(1, str(HERE))
    from bench_common import read_frames
    from render_bench import make_people

    assert Path(sys.modules["streamer"].__file__ or "").resolve().is_relative_to(code.resolve())

    source = read_frames(clip, frames)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, asked in [(size, t) for size in sizes for t in thread_choices]:
            w, h = _size(size)
            images = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in source]
            labels, persons = make_people(w, h, count=3)
            ids = np.zeros((h, w), np.uint16)
            for p in persons:
                box = (slice(p.box.y0, p.box.y1), slice(p.box.x0, p.box.x1))
                ids[box][labels[box] != 0] = p.id
            result = ParseResult(labels, CIHP_CLASSES, ids, persons)
            speed = w / 640  # px per frame: people walking across the picture
            velocities = {p.id: np.array([speed, 0.3, speed, 0.3]) for p in persons}
            info = _live_info(w, h, fps)
            renderer, carrier = Renderer(OverlayStyle()), Carrier("shift")
            stage = {"carry": 0.0, "render": 0.0, "encode": 0.0}
            sink = VideoFileSink(Path(tmp) / f"{size}-{asked}.mkv", info, threads=asked)
            # (Code before encoder_threads had no ``threads`` and used min(4, cores).)
            threads = asked or int(getattr(sink, "threads", min(4, os.cpu_count() or 1)))
            # One frame outside the clock: the encoder's and OpenCV's first-call set-up.
            sink.write(renderer.render(images[0], result))
            cpu0, wall0, own0 = time.process_time(), time.perf_counter(), time.thread_time()
            with sink:
                for i, image in enumerate(images):
                    parsed = i - i % 10
                    t0 = time.thread_time()
                    shown = carrier.carry(image, i, result, source_image=images[parsed],
                                          source_index=parsed, velocities=velocities)
                    t1 = time.thread_time()
                    out = renderer.render(image, shown) if shown is not None else image
                    t2 = time.thread_time()
                    sink.write(out)
                    t3 = time.thread_time()
                    stage["carry"] += t1 - t0
                    stage["render"] += t2 - t1
                    stage["encode"] += t3 - t2
            # The encoder's threads and the flush at close count too.
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            own = time.thread_time() - own0
            n = len(images)
            convert = min(_time_convert(to_video_frame, images[0]) for _ in range(3))
            rows.append({
                "size": size, "frames": n, "encoder_threads": threads,
                "threads_asked": "default" if asked is None else asked,
                "cpu_ms": 1e3 * cpu / n, "stream_thread_ms": 1e3 * own / n,
                "carry_ms": 1e3 * stage["carry"] / n, "render_ms": 1e3 * stage["render"] / n,
                "encode_ms": 1e3 * stage["encode"] / n, "convert_ms": convert,
                "wall_ms": 1e3 * wall / n, "keeps_fps": 1e3 * wall / n < 1e3 / fps,
            })
    return rows


def _live_info(w: int, h: int, fps: float) -> Any:
    from fractions import Fraction

    from streamer.core.types import VideoInfo

    return VideoInfo(width=w, height=h, fps=fps, time_base=Fraction(1, 90000), is_live=True)


def _time_convert(to_video_frame: Any, image: np.ndarray, n: int = 20) -> float:
    """ms of CPU to make the ``yuv420p`` frame (inside the sink's ``encode`` share)."""
    t0 = time.process_time()
    for _ in range(n):
        to_video_frame(image, "yuv420p")
    return 1e3 * (time.process_time() - t0) / n


def export(rev: str, into: Path) -> Path:
    """The ``streamer`` package of git revision ``rev``, written under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "streamer"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def child(code: Path, args: argparse.Namespace) -> list[dict]:
    """:func:`measure` in a fresh interpreter (its own imports of the other code)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--code", str(code), "--rows", out.name,
                        "--clip", str(args.clip), "--frames", str(args.frames),
                        "--fps", str(args.fps), "--sizes", ",".join(args.sizes),
                        "--threads", ",".join(args.threads)], check=True)
        return list(json.loads(Path(out.name).read_text()))


def best(runs: list[list[dict]]) -> list[dict]:
    """Per size, the round with the lowest CPU per frame."""
    return [min((run[i] for run in runs), key=lambda r: r["cpu_ms"]) for i in range(len(runs[0]))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    ap.add_argument("--baseline", metavar="REV", help="also measure git revision REV's code")
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=lambda s: s.split(","), default=list(SIZES))
    ap.add_argument("--threads", type=lambda s: s.split(","), default=["default"],
                    help="encoder thread counts to measure, e.g. default,1,2 (default: the "
                         "sink's own choice for a live stream)")
    ap.add_argument("--quick", action="store_true", help="1 round of 50 frames")
    ap.add_argument("--code", type=Path, help=argparse.SUPPRESS)  # child: whose streamer
    ap.add_argument("--rows", type=Path, help=argparse.SUPPRESS)  # child: where to write
    args = ap.parse_args(argv)
    if not args.clip.is_file():
        print(f"error: no clip at {args.clip} (give one with --clip)", file=sys.stderr)
        return 2
    if args.code is not None:
        choices = [None if t == "default" else int(t) for t in args.threads]
        args.rows.write_text(json.dumps(measure(args.code, args.clip, args.sizes, args.frames,
                                                args.fps, choices)))
        return 0
    if args.quick:
        args.rounds, args.frames = 1, 50
    codes: dict[str, list[list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = export(args.baseline, Path(tmp)) if args.baseline else None
        for _ in range(args.rounds):
            if baseline is not None:
                codes.setdefault(args.baseline, []).append(child(baseline, args))
            codes.setdefault("working", []).append(child(ROOT, args))
    results = {name: best(runs) for name, runs in codes.items()}
    load = os.getloadavg()[0]
    sys.path.insert(0, str(HERE))
    from bench_common import cpu_name

    print(f"stream path per frame, CPU {cpu_name()}, {os.cpu_count()} cores, load {load:.1f}; "
          f"{args.frames} frames at {args.fps:g} fps, lowest of {args.rounds} round(s)")
    print(f"{'code':10}{'size':11}{'enc.thr':>7}{'cpu ms':>8}{'thread ms':>11}{'carry':>7}"
          f"{'render':>8}{'encode':>8}{'wall ms':>9}  keeps fps")
    for i in range(len(next(iter(results.values())))):
        for name, rows in results.items():
            r = rows[i]
            thr = f"{r['encoder_threads']}{'' if r['threads_asked'] == 'default' else ' set'}"
            print(f"{name[:9]:10}{r['size']:11}{thr:>7}{r['cpu_ms']:8.2f}"
                  f"{r['stream_thread_ms']:11.2f}{r['carry_ms']:7.2f}{r['render_ms']:8.2f}"
                  f"{r['encode_ms']:8.2f}{r['wall_ms']:9.2f}  {'yes' if r['keeps_fps'] else 'NO'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "results": {name: [{k: round(v, 3) if isinstance(v, float) else v
                                for k, v in r.items()} for r in rows]
                        for name, rows in results.items()},
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_1min": round(load, 2), "frames": args.frames, "fps": args.fps,
            "rounds": args.rounds, "clip": args.clip.name, "baseline": args.baseline,
            "note": "cpu_ms: the whole process's CPU per frame (stream thread + encoder "
                    "threads + flush); stream_thread_ms: the calling thread only; encode_ms "
                    "includes the yuv420p conversion (convert_ms); threads_asked: default = the "
                    "sink's own choice for a live stream",
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
