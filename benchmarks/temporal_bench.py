"""Propagation between parses: how close is what the pipeline shows to a parse of every frame?

Every frame of each clip is parsed as the pipeline would parse it if it had the time (HOG run
every ``--detector-every`` frames with the tracker carrying the boxes in between; nobody found,
nothing parsed), by an M2FP with RANDOM WEIGHTS, whose output is still a fixed function of the
frame and the boxes. Then, for parse intervals 3, 6 and 12, the frames in between are shown as
the pipeline would show them (:class:`streamer.vision.temporal.Carrier`: ``none``, ``shift``,
``flow``) and compared with that frame's own parse:

- ``agreement[method][skip]``: the fraction of person pixels (labelled in either map) whose
  labels agree, pooled over all skipped frames of all clips;
- ``gain[method][skip]``: ``agreement`` minus that of ``none``, with a 95% confidence interval
  from a paired bootstrap over parse intervals (``measurable`` when it excludes 0);
- ``ms_per_frame[method]``: median time to carry the parse to one skipped frame, over the
  clips; ``ms_per_frame_720p_3_people[method]``: median and p90 for three people of 450 px
  walking over the frames of the 720p clip (skip 6);
- ``flicker[stability]``: with a parse on every frame, the fraction of person pixels whose label
  changes between consecutive shown frames, without (``none``) and with stability; and
  ``stability_agreement[stability]``, how much of each parse stability still shows as is;
- ``box_jitter``: mean relative change of a tracked box's width and height from one frame to
  the next (a parse follows its crop, so a box that breathes makes the overlay flicker);
- ``proxy_agreement[method][skip]`` (and ``proxy_gain``): the same comparison for a content
  proxy (blurred grey levels inside each tracked box: labels that move exactly with the
  picture, as a trained parser's do).

Why both: a random-weight parse follows the crop box more than the picture (move the box by
16 px over a still frame and the full-size model's labels move with the box: 0.91 agreement,
against 0.75 with the labels left where the picture is), so the parse-based agreement rewards a
method that moves labels with the box (``shift``), and the proxy one that moves them with the
picture (``flow``). Real weights sit between the two, nearer the picture.

Per-frame parses are slow with the full-size model; ``--parses DIR`` keeps them (keyed by the
model, engine, detector settings, clip and the tracker's code), so a second run only replays,
which is also the quiet way to time the methods.

Example:
    $ python benchmarks/temporal_bench.py --json temporal.json --quick --tiny
    $ python benchmarks/temporal_bench.py --model /tmp/bench_model --engine onnxruntime \\
          --max-frames 60 --parses /tmp/parses --json temporal.json
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import read_frames  # noqa: E402

from streamer.core.types import Box, ParseResult, Person  # noqa: E402
from streamer.parsing.parser import HumanParser, ParserOptions  # noqa: E402
from streamer.vision import detect  # noqa: E402
from streamer.vision.detect import DetectorOptions, PersonFinder  # noqa: E402
from streamer.vision.temporal import Carrier  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media" / "videos"
CLIPS = ("sam2_juggle.mp4", "mmaction2_basketball.mp4", "sam2_bedroom_kids.mp4")
SKIPS = (3, 6, 12)
METHODS = ("none", "shift", "flow")
STABILITY = ("none", "majority", "blend")
BOOTSTRAP = 2000

Segments = list[tuple[int, int]]  # (agreeing, person) pixel counts per parse interval


def parse_all(frames: list[np.ndarray], parser: HumanParser, detector: str, every: int = 1,
              ) -> tuple[list[ParseResult], list[dict[int, np.ndarray]], float]:
    """The parse of every frame, the tracked people's box velocities, seconds spent."""
    finder = PersonFinder(DetectorOptions(type=detector, every=every))
    results, velocities = [], []
    started = time.perf_counter()
    for i, image in enumerate(frames):
        # As the pipeline does: nobody found, nothing parsed (not the whole frame).
        persons = None if detector == "full" else finder.find(image, i)
        results.append(parser.parse(image, persons))
        velocities.append({t.id: t.velocity.copy() for t in finder.tracker.tracks
                           if t.missed == 0} if persons else {})
    return results, velocities, time.perf_counter() - started


def cache_path(folder: Path, model: str, engine: str, detector: str, every: int, clip: str,
               frames: int) -> Path:
    """Where the per-frame parses of one clip are kept: a key of everything they depend on."""
    checkpoint = Path(model) / "pytorch_model.pt"
    stat = checkpoint.stat() if checkpoint.exists() else None
    tracker = inspect.getsource(detect.IouTracker) + inspect.getsource(detect.PersonFinder)
    key = "|".join(map(str, (Path(model).resolve(), stat and stat.st_size,
                             stat and stat.st_mtime_ns, engine, detector, every, clip, frames,
                             hashlib.sha256(tracker.encode()).hexdigest())))
    return folder / f"{Path(clip).stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl"


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


def box_jitter(results: list[ParseResult]) -> tuple[float, int]:
    """Summed relative change of each person's box width and height between consecutive
    frames (mean of the two), and the number of such changes."""
    total, n = 0.0, 0
    for before, after in zip(results, results[1:], strict=False):
        old = {p.id: p.box for p in before.persons}
        for p in after.persons:
            b = old.get(p.id)
            if b is not None and b.width > 0 and b.height > 0:
                total += (abs(p.box.width / b.width - 1) + abs(p.box.height / b.height - 1)) / 2
                n += 1
    return total, n


def three_people(frames: list[np.ndarray], seed: int = 0,
                 ) -> tuple[list[ParseResult], list[dict[int, np.ndarray]]]:
    """Three people of 450 px, 200 px wide, with blocky part labels, drawn on ``frames``
    (720p) and walking 2 px right and 0.5 px down per frame: the issue's timing case."""
    rng = np.random.default_rng(seed)
    h, w = frames[0].shape[:2]
    parts = [cv2.resize(rng.integers(1, 20, (9, 4), dtype=np.uint8), (200, 450),
                        interpolation=cv2.INTER_NEAREST) for _ in range(3)]
    results, velocities = [], []
    for i in range(len(frames)):
        labels = np.zeros((h, w), np.uint8)
        instances = np.zeros((h, w), np.uint16)
        persons = []
        for k, x in enumerate((150, 540, 930)):
            x0, y0 = x + 2 * i, 150 + i // 2
            x1, y1 = min(x0 + 200, w), min(y0 + 450, h)
            labels[y0:y1, x0:x1] = parts[k][:y1 - y0, :x1 - x0]
            instances[y0:y1, x0:x1] = k + 1
            persons.append(Person(k + 1, 0.9, Box(x0, y0, x1, y1, 0.9)))
        results.append(ParseResult(labels, tuple(f"c{c}" for c in range(20)), instances,
                                   persons))
        velocities.append({k + 1: np.array([2.0, 0.5, 2.0, 0.5]) for k in range(3)})
    return results, velocities


def run_clip(frames: list[np.ndarray], results: list[ParseResult],
             velocities: list[dict[int, np.ndarray]], methods: list[str],
             skips: list[int], stability: bool = True) -> dict[str, Any]:
    """Per method and skip, the (agreeing, person) counts of every parse interval; the times;
    and, with ``stability``, flicker and agreement for each stability mode."""
    truth = [r.labels for r in results]
    out: dict[str, Any] = {"segments": {}, "times": {}, "flicker": {}, "stability_agree": {}}
    for method in methods:
        out["times"][method] = []
        for skip in skips:
            shown, times, fresh = replay(frames, results, velocities, skip, make_carrier(method))
            segments: Segments = []
            for i in range(len(frames)):
                if fresh[i]:
                    segments.append((0, 0))
                    continue
                a, n = person_agreement(shown[i], truth[i])
                segments[-1] = (segments[-1][0] + a, segments[-1][1] + n)
                out["times"][method].append(times[i])
            out["segments"].setdefault(method, {})[skip] = segments
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


def pooled(segments: Segments) -> float:
    return ratio((sum(a for a, _ in segments), sum(n for _, n in segments)))


def gain(method: Segments, baseline: Segments, rng: np.random.Generator,
         rounds: int = BOOTSTRAP) -> dict[str, Any]:
    """Pooled agreement of ``method`` minus ``baseline`` over the same parse intervals, with a
    95% interval from a paired bootstrap over the intervals.

    Example:
        >>> gain([(9, 10), (8, 10)], [(5, 10), (6, 10)], np.random.default_rng(0))["mean"]
        0.3
    """
    m = np.array(method, np.float64).reshape(-1, 2)
    b = np.array(baseline, np.float64).reshape(-1, 2)
    diff = pooled(method) - pooled(baseline)
    picks = rng.integers(0, len(m), (rounds, len(m)))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (m[picks, 0].sum(1) / m[picks, 1].sum(1)
                - b[picks, 0].sum(1) / b[picks, 1].sum(1))
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"mean": round(diff, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "measurable": bool(lo > 0 or hi < 0), "intervals": len(m)}


def summarise(clips: dict[str, Any], methods: list[str], skips: list[int],
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Pooled agreement, gain over ``none`` and agreement per clip."""
    rng = np.random.default_rng(0)
    every = {m: {s: [seg for c in clips.values() for seg in c["segments"][m][s]]
                 for s in skips} for m in methods}
    agreement = {m: {str(s): round(pooled(every[m][s]), 4) for s in skips} for m in methods}
    gains = {m: {str(s): gain(every[m][s], every["none"][s], rng) for s in skips}
             for m in methods if m != "none" and "none" in methods}
    by_clip = {name: {m: {str(s): round(pooled(c["segments"][m][s]), 4) for s in skips}
                      for m in methods} for name, c in clips.items()}
    return agreement, gains, by_clip


def load_parses(args: argparse.Namespace, model: str, name: str, frames: list[np.ndarray],
                parser_box: list[HumanParser | None],
                ) -> tuple[list[ParseResult], list[dict[int, np.ndarray]], float]:
    """The per-frame parses of one clip, from ``--parses`` when kept there."""
    path = None
    if args.parses:
        folder = Path(args.parses)
        folder.mkdir(parents=True, exist_ok=True)
        path = cache_path(folder, model, args.engine, args.detector, args.detector_every,
                          name, len(frames))
        if path.is_file():
            results, velocities, spent = pickle.loads(path.read_bytes())
            return results, velocities, spent
    if parser_box[0] is None:
        parser_box[0] = HumanParser(ParserOptions(model=model, engine=args.engine))
    results, velocities, spent = parse_all(frames, parser_box[0], args.detector,
                                           args.detector_every)
    if path is not None:
        path.write_bytes(pickle.dumps((results, velocities, spent)))
    return results, velocities, spent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="36 frames per clip")
    p.add_argument("--max-frames", type=int, default=None, help="frames per clip (default 120)")
    p.add_argument("--tiny", action="store_true", help="tiny random-weight model (fast)")
    p.add_argument("--model", help="an M2FP model directory instead of a random one")
    p.add_argument("--engine", default="torch", help="parser engine (default torch)")
    p.add_argument("--detector", default="hog", choices=("hog", "full"))
    p.add_argument("--detector-every", type=int, default=6,
                   help="run HOG every N frames, the tracker moves the boxes between (default "
                   "6, so that skips of 3 and 6 parse on detector frames)")
    p.add_argument("--parses", help="keep the per-frame parses in this folder, and reuse them")
    p.add_argument("--clips", nargs="+", default=list(CLIPS))
    p.add_argument("--skips", nargs="+", type=int, default=list(SKIPS))
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help="none, shift, flow, or flow:PRESET:SIZE[:chain] (e.g. flow:fast:384)")
    p.add_argument("--no-stability", action="store_true", help="skip the flicker measure")
    args = p.parse_args(argv)
    limit = args.max_frames or (36 if args.quick else 120)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from streamer.testing.make_model import make_model

            kept = (Path(args.parses) if args.parses else Path(tmp)) / (
                "tiny" if args.tiny else "full")
            if not (kept / "pytorch_model.pt").is_file():  # kept: the parses' key holds
                make_model(kept, "single", tiny=args.tiny, seed=1)
            model = str(kept)
        parser_box: list[HumanParser | None] = [None]
        per_clip: dict[str, Any] = {}
        proxy: dict[str, Any] = {}
        sizes: dict[str, Any] = {}
        jitter = [0.0, 0]
        for name in args.clips:
            frames = read_frames(MEDIA / name, limit)
            results, velocities, spent = load_parses(args, model, name, frames, parser_box)
            people = [len(r.persons) for r in results]
            total, n = box_jitter(results)
            jitter = [jitter[0] + total, jitter[1] + n]
            sizes[name] = {"frames": len(frames), "width": frames[0].shape[1],
                           "height": frames[0].shape[0], "parse_s": round(spent, 1),
                           "people_mean": round(float(np.mean(people)), 2),
                           "frames_with_people": sum(1 for k in people if k)}
            print(f"{name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
                  f"{np.mean(people):.1f} people/frame, parsed in {spent:.0f} s", flush=True)
            per_clip[name] = run_clip(frames, results, velocities, args.methods, args.skips,
                                      stability=not args.no_stability)
            proxies = [content_proxy(f, r) for f, r in zip(frames, results, strict=True)]
            proxy[name] = run_clip(frames, proxies, velocities, args.methods, args.skips,
                                   stability=False)
        # The timing case: 720p, three people (on a real clip's frames).
        hd = read_frames(MEDIA / "sam2_juggle.mp4", min(limit, 60))
        hd_results, hd_velocities = three_people(hd)
        hd_times = {m: [t for t, fresh in zip(*replay(hd, hd_results, hd_velocities, 6,
                                                      make_carrier(m))[1:], strict=True)
                        if not fresh] for m in args.methods}
    agreement, gains, by_clip = summarise(per_clip, args.methods, args.skips)
    proxy_agreement, proxy_gains, _ = summarise(proxy, args.methods, args.skips)
    times = {k: [t for c in per_clip.values() for t in c["times"][k]]
             for k in next(iter(per_clip.values()))["times"]}
    stabilities = () if args.no_stability else STABILITY

    def pooled_pair(key: str, mode: str) -> float:
        pairs = [c[key][mode] for c in per_clip.values()]
        return round(ratio((sum(a for a, _ in pairs), sum(n for _, n in pairs))), 4)

    report = {
        "note": "RANDOM WEIGHTS: agreement with a per-frame parse of a random-weight M2FP, "
                "not accuracy",
        "model": args.model or ("tiny" if args.tiny else "full-size") + " random weights",
        "engine": args.engine,
        "detector": args.detector,
        "detector_every": args.detector_every,
        "clips": sizes,
        "skips": args.skips,
        "agreement": agreement,
        "gain": gains,
        "proxy_agreement": proxy_agreement,
        "proxy_gain": proxy_gains,
        "proxy_note": "content proxy: blurred grey level in 12 bands inside each tracked box, "
                      "labels that move exactly with the picture",
        "ms_per_frame": {m: round(float(np.median(times[m])) * 1000, 3) for m in args.methods},
        "ms_per_frame_p90": {k: round(float(np.percentile(v, 90)) * 1000, 3)
                             for k, v in times.items()},
        "ms_per_frame_720p_3_people": {
            m: {"median": round(float(np.median(v)) * 1000, 3),
                "p90": round(float(np.percentile(v, 90)) * 1000, 3)}
            for m, v in hd_times.items()},
        "ms_per_frame_by_clip": {
            name: {m: round(float(np.median(c["times"][m])) * 1000, 3) for m in args.methods}
            for name, c in per_clip.items()},
        "agreement_by_clip": by_clip,
        "box_jitter": round(jitter[0] / jitter[1], 4) if jitter[1] else None,
        "flicker": {s: pooled_pair("flicker", s) for s in stabilities},
        "stability_agreement": {s: pooled_pair("stability_agree", s) for s in stabilities},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
    }
    print()
    print("agreement with the per-frame parse on skipped frames (person pixels)")
    print(f"{'method':<22}" + "".join(f"{'skip ' + str(s):>10}" for s in args.skips)
          + f"{'ms/frame':>10}{'p90 ms':>9}")
    for m in args.methods:
        print(f"{m:<22}" + "".join(f"{agreement[m][str(s)]:>10.4f}" for s in args.skips)
              + f"{report['ms_per_frame'][m]:>10.2f}{report['ms_per_frame_p90'][m]:>9.2f}")
    print("\n720p, 3 people of 450 px: ms per skipped frame, median / p90")
    for m, t in report["ms_per_frame_720p_3_people"].items():
        print(f"{m:<22}{t['median']:>10.2f}{t['p90']:>9.2f}")
    for label, table in (("parse", gains), ("proxy", proxy_gains)):
        print(f"\ngain over none ({label}), 95% interval (paired bootstrap over parse intervals)")
        for m, row in table.items():
            print(f"{m:<22}" + "".join(
                f"  {g['mean']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]"
                for g in row.values()))
    print()
    print("the same against a content proxy (labels that move with the picture)")
    for m in args.methods:
        print(f"{m:<22}" + "".join(f"{proxy_agreement[m][str(s)]:>10.4f}" for s in args.skips))
    if stabilities:
        print()
        print("parse on every frame, propagate=flow: flicker = person pixels whose label "
              "changes between consecutive frames")
        print(f"{'stability':<22}{'flicker':>10}{'agreement':>11}{'p90 ms':>9}")
        for s in stabilities:
            print(f"{s:<22}{report['flicker'][s]:>10.4f}"
                  f"{report['stability_agreement'][s]:>11.4f}"
                  f"{report['ms_per_frame_p90']['flow+' + s]:>9.2f}")
    print(f"\nbox jitter (mean relative size change per frame): {report['box_jitter']}")
    print(report["note"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
