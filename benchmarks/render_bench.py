"""Overlay speed at 1080p: a per-class mask loop against :class:`streamer.vision.render.Renderer`.

The loop is the usual first version of a parsing overlay (one boolean mask and one blend per
class present); the renderer does one table lookup and one blend for the whole frame. Both run
in the same process on the same frame and label map: six people drawn from ellipses of 16 part
classes, about 40% of the frame in all.

Example:
    $ python benchmarks/render_bench.py --json render.json --quick
    overlay 1920x1080, 16 classes, 41% foreground, alpha 0.5, 2 cores
                                       median ms   p90 ms
    per-class mask loop                   159.58   160.35
    Renderer (LUT)                          2.89     3.08
    Renderer + outlines/boxes/legend        8.60     9.43
    speed-up 55.2x; largest difference between the two: 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.core.types import Box, ParseResult, Person  # noqa: E402
from streamer.vision.render import CIHP_CLASSES, PALETTE, OverlayStyle, Renderer  # noqa: E402

WIDTH, HEIGHT = 1920, 1080


def make_frame(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """A textured RGB frame: gradients plus noise, so no pixel value is special."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255 // (width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // (height - 1)).astype(np.uint8)
    img[..., 2] = ((xx + yy) % 256).astype(np.uint8)
    noise = rng.integers(-20, 21, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_people(width: int = WIDTH, height: int = HEIGHT,
                count: int = 6) -> tuple[np.ndarray, list[Person]]:
    """A label map of ``count`` standing people made of CIHP parts, and their boxes."""
    labels = np.zeros((height, width), np.uint8)
    persons: list[Person] = []
    ph = int(height * 0.8)  # person height
    for i in range(count):
        cx = int(width * (i + 0.5) / count)
        top = int(height * 0.1) + (i % 2) * int(height * 0.05)
        u = ph / 16  # body unit

        def ell(label: int, dx: float, dy: float, ax: float, ay: float,
                cx: int = cx, top: int = top, u: float = u) -> None:
            cv2.ellipse(labels, (int(cx + dx * u), int(top + dy * u)),
                        (max(1, int(ax * u)), max(1, int(ay * u))), 0, 0, 360, label, -1)

        ell(9, -0.7, 11.0, 0.8, 3.2)    # pants, left leg
        ell(9, 0.7, 11.0, 0.8, 3.2)     # pants, right leg
        ell(16, -0.7, 13.8, 0.5, 1.2)   # left leg (skin)
        ell(17, 0.7, 13.8, 0.5, 1.2)    # right leg
        ell(18, -0.8, 15.4, 0.7, 0.4)   # left shoe
        ell(19, 0.8, 15.4, 0.7, 0.4)    # right shoe
        ell(14, -2.2, 6.5, 0.5, 2.6)    # left arm
        ell(15, 2.2, 6.5, 0.5, 2.6)     # right arm
        ell(3, -2.3, 9.2, 0.4, 0.4)     # gloves
        ell(7 if i % 2 else 5, 0, 6.0, 1.9, 3.0)  # coat / upper clothes
        ell(11, 0, 3.3, 1.0, 0.4)       # scarf
        ell(2, 0, 1.4, 1.0, 1.2)        # hair
        ell(13, 0, 1.8, 0.8, 0.9)       # face
        ell(4, 0, 1.6, 0.6, 0.15)       # sunglasses
        ell(1, 0, 0.4, 1.1, 0.4)        # hat
        if i % 3 == 0:
            ell(12, 0, 8.6, 1.7, 1.0)   # skirt
        x0, x1 = int(cx - 3 * u), int(cx + 3 * u)
        persons.append(Person(i + 1, 0.9, Box(max(0, x0), top, min(width, x1),
                                               min(height, int(top + 16 * u)))))
    return labels, persons


def naive_overlay(image: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """The per-class loop: one boolean mask and one float blend per class present."""
    out = image.copy()
    for k in np.unique(labels):
        if k == 0:
            continue
        mask = labels == k
        color = PALETTE[k].astype(np.float32)
        out[mask] = (out[mask] * (1 - alpha) + color * alpha).round().astype(np.uint8)
    return out


def time_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: first-touch allocations, OpenCV's thread pool
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def stats(times: list[float]) -> tuple[float, float]:
    return float(np.median(times)), float(np.percentile(times, 90))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a few seconds)")
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args(argv)

    image = make_frame()
    labels, persons = make_people()
    result = ParseResult(labels, CIHP_CLASSES, None, persons)
    renderer = Renderer(OverlayStyle(alpha=args.alpha))
    extras = Renderer(OverlayStyle(alpha=args.alpha, outlines=True, boxes=True, legend=True))
    loop_n, lut_n = (8, 40) if args.quick else (30, 200)

    diff = np.abs(naive_overlay(image, labels, args.alpha).astype(np.int16)
                  - renderer.render(image, result).astype(np.int16)).max()
    # Interleave the two, so that load from other processes hits both alike.
    loop_t: list[float] = []
    lut_t: list[float] = []
    rounds = 4
    for _ in range(rounds):
        loop_t += time_ms(lambda: naive_overlay(image, labels, args.alpha), loop_n // rounds)
        lut_t += time_ms(lambda: renderer.render(image, result), lut_n // rounds)
    extras_t = time_ms(lambda: extras.render(image, result), lut_n // 2)

    loop_med, loop_p90 = stats(loop_t)
    lut_med, lut_p90 = stats(lut_t)
    ext_med, ext_p90 = stats(extras_t)
    fg = float((labels != 0).mean())
    classes = int(len(np.unique(labels)) - 1)
    print(f"overlay {WIDTH}x{HEIGHT}, {classes} classes, {fg:.0%} foreground, "
          f"alpha {args.alpha}, {os.cpu_count()} cores")
    print(f"{'':34}{'median ms':>10}{'p90 ms':>9}")
    print(f"{'per-class mask loop':34}{loop_med:10.2f}{loop_p90:9.2f}")
    print(f"{'Renderer (LUT)':34}{lut_med:10.2f}{lut_p90:9.2f}")
    print(f"{'Renderer + outlines/boxes/legend':34}{ext_med:10.2f}{ext_p90:9.2f}")
    print(f"speed-up {loop_med / lut_med:.1f}x; largest difference between the two: {diff}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "loop_ms": round(loop_med, 3),
            "loop_p90_ms": round(loop_p90, 3),
            "lut_ms": round(lut_med, 3),
            "lut_p90_ms": round(lut_p90, 3),
            "speedup": round(loop_med / lut_med, 2),
            "overlay_1080p_ms": round(lut_med, 3),
            "overlay_extras_1080p_ms": round(ext_med, 3),
            "max_abs_difference": int(diff),
            "foreground_fraction": round(fg, 4),
            "classes": classes,
            "alpha": args.alpha,
            "repeats": {"loop": len(loop_t), "lut": len(lut_t)},
            "cpu_count": os.cpu_count(),
            "opencv_threads": cv2.getNumThreads(),
            "machine": platform.machine(),
            "quick": args.quick,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
