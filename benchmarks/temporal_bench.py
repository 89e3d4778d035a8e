"""Propagation between parses: how close is what the pipeline shows to a parse of every frame?

Every frame of each clip is parsed (HOG boxes with the tracker, as the pipeline does; an M2FP
with RANDOM WEIGHTS, whose output is still a fixed function of the image). Then, for parse
intervals 3, 6 and 12, the frames in between are shown as the pipeline would show them
(:class:`streamer.temporal.Carrier`: ``none``, ``shift``, ``flow``) and compared with that
frame's own parse:

- ``agreement[method][skip]``: the fraction of person pixels (labelled in either map) whose
  labels agree, pooled over all skipped frames of all clips;
- ``ms_per_frame[method]``: median time to carry the parse to one skipped frame;
- ``flicker[stability]``: with a parse on every frame, the fraction of person pixels whose label
  changes between consecutive shown frames, without (``off``) and with stability; and
  ``stability_agreement[stability]``, how much of each parse stability still shows as is;
- ``proxy_agreement[method][skip]``: the same comparison for a content proxy (blurred grey
  levels inside each tracked box: labels that move exactly with the picture). With random
  weights the parse of a frame is not a stable picture of its people (it changes with the box
  from one frame to the next), so this is the better measure of how well a method follows the
  motion; the parse-based numbers are reported as asked, labelled RANDOM WEIGHTS.

HOG runs every ``--detector-every`` frames (default 6) and the tracker moves the boxes in
between, which keeps the random-weight parse from jumping with every detection.

Example:
    $ python benchmarks/temporal_bench.py --json temporal.json --quick --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.detect import DetectorOptions, PersonFinder  # noqa: E402
from streamer.parser import HumanParser, ParserOptions  # noqa: E402
from streamer.temporal import Carrier  # noqa: E402
from streamer.types import ParseResult  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media" / "videos"
CLIPS = ("sam2_juggle.mp4", "mmaction2_basketball.mp4", "sam2_bedroom_kids.mp4")
SKIPS = (3, 6, 12)
METHODS = ("none", "shift", "flow")
STABILITY = ("none", "majority", "blend")


def read_frames(path: Path, limit: int) -> list[np.ndarray]:
    """The first ``limit`` frames of a clip, RGB."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= limit:
                break
    return frames


def parse_all(frames: list[np.ndarray], parser: HumanParser, detector: str, every: int = 1,
              ) -> tuple[list[ParseResult], list[dict[int, np.ndarray]], float]:
    """The parse of every frame, the tracked people's box velocities, seconds spent."""
    finder = PersonFinder(DetectorOptions(type=detector, every=every))
    results, velocities = [], []
    started = time.perf_counter()
    for i, image in enumerate(frames):
        persons = None if detector == "full" else finder.find(image, i)
        results.append(parser.parse(image, persons or None))
        velocities.append({t.id: t.velocity.copy() for t in finder.tracker.tracks
                           if t.missed == 0} if persons else {})
    return results, velocities, time.perf_counter() - started


def make_carrier(spec: str, stability: str = "none") -> Carrier:
    """``flow``, or ``flow:PRESET:SIZE[:chain]`` to try other settings (``chain``: warp from
    the previous frame rather than from the parse)."""
    method, *rest = spec.split(":")
    kwargs: dict[str, Any] = {"chain": "chain" in rest}
    rest = [r for r in rest if r != "chain"]
    if rest:
        kwargs["flow_preset"] = rest[0]
    if len(rest) > 1:
        kwargs["flow_size"] = int(rest[1])
    return Carrier(method, stability, **kwargs)


def replay(frames: list[np.ndarray], results: list[ParseResult],
           velocities: list[dict[int, np.ndarray]], skip: int, carrier: Carrier,
           ) -> tuple[list[np.ndarray], list[float], list[bool]]:
    """What the pipeline shows with a parse every ``skip`` frames: the label maps, the time
    each took, and whether the frame was parsed."""
    shown, times, fresh = [], [], []
    current: ParseResult | None = None
    for i, image in enumerate(frames):
        parsed = i % skip == 0
        if parsed:
            current = results[i]
        started = time.perf_counter()
        out = carrier.carry(image, i, current, velocities=velocities[i] if parsed else None)
        times.append(time.perf_counter() - started)
        assert out is not None
        shown.append(out.labels)
        fresh.append(parsed)
    return shown, times, fresh


def person_agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(agreeing, person) pixel counts: person = labelled in either map."""
    person = (a != 0) | (b != 0)
    return int((a[person] == b[person]).sum()), int(person.sum())


def content_proxy(image: np.ndarray, result: ParseResult, levels: int = 12) -> ParseResult:
    """Labels that move exactly with the picture: the blurred grey level (``levels`` bands)
    inside each person's box. A stand-in for a real parse, which random weights are not."""
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (0, 0), 3)
    bands = (grey.astype(np.int32) * levels // 256 + 1).astype(np.uint8)
    instances = np.zeros(grey.shape, np.uint16)
    for person in sorted(result.persons, key=lambda p: p.score):
        b = person.box
        instances[b.y0:b.y1, b.x0:b.x1] = person.id
    return ParseResult(np.where(instances > 0, bands, 0).astype(np.uint8), result.classes,
                       instances, list(result.persons))


def run_clip(name: str, frames: list[np.ndarray], results: list[ParseResult],
             velocities: list[dict[int, np.ndarray]], methods: list[str],
             skips: list[int], stability: bool = True) -> dict[str, Any]:
    truth = [r.labels for r in results]
    out: dict[str, Any] = {"agree": {}, "times": {}, "flicker": {}, "stability_agree": {}}
    for method in methods:
        out["times"][method] = []
        for skip in skips:
            shown, times, fresh = replay(frames, results, velocities, skip, make_carrier(method))
            agree = total = 0
            for i in range(len(frames)):
                if not fresh[i]:
                    a, n = person_agreement(shown[i], truth[i])
                    agree, total = agree + a, total + n
                    out["times"][method].append(times[i])
            out["agree"].setdefault(method, {})[skip] = (agree, total)
    for mode in STABILITY if stability else ():
        shown, times, _ = replay(frames, results, velocities, 1, make_carrier("flow", mode))
        changed = person = 0
        for prev, cur in zip(shown, shown[1:], strict=False):
            a, n = person_agreement(prev, cur)
            changed, person = changed + n - a, person + n
        out["flicker"][mode] = (changed, person)
        agree = total = 0
        for s, t in zip(shown, truth, strict=True):
            a, n = person_agreement(s, t)
            agree, total = agree + a, total + n
        out["stability_agree"][mode] = (agree, total)
        out["times"][f"flow+{mode}"] = times
    return out


def ratio(pair: tuple[int, int]) -> float:
    return pair[0] / pair[1] if pair[1] else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="36 frames per clip")
    p.add_argument("--max-frames", type=int, default=None, help="frames per clip (default 120)")
    p.add_argument("--tiny", action="store_true", help="tiny random-weight model (fast)")
    p.add_argument("--model", help="an M2FP model directory instead of a random one")
    p.add_argument("--detector", default="hog", choices=("hog", "full"))
    p.add_argument("--detector-every", type=int, default=6,
                   help="run HOG every N frames, the tracker moves the boxes between (default "
                   "6: random weights are far more sensitive to box jitter than real ones)")
    p.add_argument("--clips", nargs="+", default=list(CLIPS))
    p.add_argument("--skips", nargs="+", type=int, default=list(SKIPS))
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help="none, shift, flow, or flow:PRESET:SIZE[:chain] (e.g. flow:fast:384)")
    args = p.parse_args(argv)
    limit = args.max_frames or (36 if args.quick else 120)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from streamer.testing.make_model import make_model

            model = str(make_model(Path(tmp) / "model", "single", tiny=args.tiny, seed=1))
        parser = HumanParser(ParserOptions(model=model, engine="torch"))
        per_clip: dict[str, Any] = {}
        proxy: dict[str, Any] = {}
        sizes: dict[str, Any] = {}
        for name in args.clips:
            frames = read_frames(MEDIA / name, limit)
            results, velocities, spent = parse_all(frames, parser, args.detector,
                                                  args.detector_every)
            people = [len(r.persons) for r in results]
            sizes[name] = {"frames": len(frames), "width": frames[0].shape[1],
                           "height": frames[0].shape[0], "parse_s": round(spent, 1),
                           "people_mean": round(float(np.mean(people)), 2)}
            print(f"{name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
                  f"{np.mean(people):.1f} people/frame, parsed in {spent:.0f} s", flush=True)
            per_clip[name] = run_clip(name, frames, results, velocities, args.methods,
                                      args.skips)
            proxies = [content_proxy(f, r) for f, r in zip(frames, results, strict=True)]
            proxy[name] = run_clip(name, frames, proxies, velocities, args.methods, args.skips,
                                   stability=False)
    def pooled(clips: dict[str, Any]) -> dict[str, dict[int, tuple[int, int]]]:
        return {m: {s: tuple(map(sum, zip(*(c["agree"][m][s] for c in clips.values()),
                                          strict=True)))
                    for s in args.skips} for m in args.methods}

    pooled_agree, pooled_proxy = pooled(per_clip), pooled(proxy)
    times = {k: [t for c in per_clip.values() for t in c["times"][k]]
             for k in next(iter(per_clip.values()))["times"]}
    report = {
        "note": "RANDOM WEIGHTS: agreement with a per-frame parse of a random-weight M2FP, "
                "not accuracy",
        "model": args.model or ("tiny" if args.tiny else "full-size") + " random weights",
        "detector": args.detector,
        "detector_every": args.detector_every,
        "clips": sizes,
        "skips": args.skips,
        "agreement": {m: {str(s): round(ratio(pooled_agree[m][s]), 4) for s in args.skips}
                      for m in args.methods},
        "proxy_agreement": {m: {str(s): round(ratio(pooled_proxy[m][s]), 4)
                                for s in args.skips} for m in args.methods},
        "proxy_note": "content proxy: blurred grey level in 12 bands inside each tracked box, "
                      "labels that move exactly with the picture",
        "ms_per_frame": {m: round(float(np.median(times[m])) * 1000, 3) for m in args.methods},
        "ms_per_frame_p90": {k: round(float(np.percentile(v, 90)) * 1000, 3)
                             for k, v in times.items()},
        "ms_per_frame_by_clip": {
            name: {m: round(float(np.median(c["times"][m])) * 1000, 3) for m in args.methods}
            for name, c in per_clip.items()},
        "agreement_by_clip": {
            name: {m: {str(s): round(ratio(c["agree"][m][s]), 4) for s in args.skips}
                   for m in args.methods} for name, c in per_clip.items()},
        "flicker": {s: round(ratio(tuple(map(sum, zip(*(c["flicker"][s]
                                                       for c in per_clip.values()),
                                                     strict=True)))), 4)
                    for s in STABILITY},
        "stability_agreement": {
            s: round(ratio(tuple(map(sum, zip(*(c["stability_agree"][s]
                                               for c in per_clip.values()), strict=True)))), 4)
            for s in STABILITY},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print()
    print("agreement with the per-frame parse on skipped frames (person pixels)")
    print(f"{'method':<22}" + "".join(f"{'skip ' + str(s):>10}" for s in args.skips)
          + f"{'ms/frame':>10}{'p90 ms':>9}")
    for m in args.methods:
        print(f"{m:<22}" + "".join(f"{report['agreement'][m][str(s)]:>10.4f}"
                                   for s in args.skips)
              + f"{report['ms_per_frame'][m]:>10.2f}{report['ms_per_frame_p90'][m]:>9.2f}")
    print()
    print("the same against a content proxy (labels that move with the picture)")
    for m in args.methods:
        print(f"{m:<22}" + "".join(f"{report['proxy_agreement'][m][str(s)]:>10.4f}"
                                   for s in args.skips))
    print()
    print("parse on every frame, propagate=flow: flicker = person pixels whose label changes "
          "between consecutive frames")
    print(f"{'stability':<22}{'flicker':>10}{'agreement':>11}{'p90 ms':>9}")
    for s in STABILITY:
        print(f"{s:<22}{report['flicker'][s]:>10.4f}{report['stability_agreement'][s]:>11.4f}"
              f"{report['ms_per_frame_p90']['flow+' + s]:>9.2f}")
    print(report["note"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
