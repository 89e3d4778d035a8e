"""Soak test: the live pipeline against a local RTSP server for minutes, with two outages.

A real GStreamer RTSP server (tests/rtsp_server.py) loops a 25 fps clip on 127.0.0.1
(../shared/media/videos/chaplin_bw.mp4 when present, else a generated clip); streamer.Pipeline
reads it with the real parser, writes every captured frame (output.frames=all) to a video, and
the server is killed and restarted twice, at 1/3 and 2/3 of the run, down 3 s each. The process's
resident memory is sampled every second and every written frame's end-to-end latency is kept
with the time it was written.

    python benchmarks/soak.py --minutes 10 --json soak.json [--model DIR | --tiny] [--output V]

By default the model is a full-size single-person M2FP with RANDOM weights, made with
streamer.testing.make_model in a temporary folder (timings are real, parses are not). Prints a
table and writes JSON with the keys ``rss_mb`` {start, after_first_minute, end, max},
``latency_ms`` {first_minute: {p50, p95}, last_minute: {p50, p95}}, ``reconnects``,
``frames_written`` and ``errors`` (a list of strings: a crash, a failed restart, an output that
does not hold every written frame...), among others. The exit status is 1 if ``errors`` is not
empty. Minutes are counted from the first written frame, so model loading is not part of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHAPLIN = ROOT.parent / "shared" / "media" / "videos" / "chaplin_bw.mp4"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from media_helpers import RtspServer, make_clip, rtsp_unavailable_reason  # noqa: E402

from streamer.core.metrics import RunMetrics, percentiles  # noqa: E402


class TimedMetrics(RunMetrics):
    """RunMetrics that also keeps, for every written frame, when it was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written_at = array("d")
        self.written_latency = array("d")

    def add_output(self, capture_time: float) -> None:
        super().add_output(capture_time)
        now = time.monotonic()
        self.written_at.append(now)
        self.written_latency.append((now - capture_time) * 1000.0)


def rss_mb() -> float:
    """This process's resident set size in MiB, from /proc/self/status (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class RssSampler(threading.Thread):
    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), rss_mb()))
            if self._halt.wait(self.every_s):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def at(self, when: float) -> float:
        """The first sample taken at or after ``when`` (the last one if none)."""
        for stamp, value in self.samples:
            if stamp >= when:
                return value
        return self.samples[-1][1]


def window(metrics: TimedMetrics, start: float, end: float) -> dict[str, float]:
    values = [lat for t, lat in zip(metrics.written_at, metrics.written_latency, strict=True)
              if start <= t <= end]
    return {**percentiles(values), "frames": len(values)}


def count_video_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def schedule(pipeline: Any, metrics: TimedMetrics, server: RtspServer, seconds: float,
             outage_s: float, errors: list[str], events: list[dict[str, float]],
             ended: threading.Event, started: list[float]) -> None:
    """Wait for the first written frame, then two outages at 1/3 and 2/3, then stop."""
    deadline = time.monotonic() + 900
    while metrics.frames_written == 0:
        if ended.wait(0.05):
            return
        if time.monotonic() > deadline:
            errors.append("no frame was written within 900 s")
            pipeline.stop()
            return
    t0 = time.monotonic()
    started.append(t0)
    try:
        for k in (1, 2):
            if ended.wait(max(0.0, t0 + seconds * k / 3 - time.monotonic())):
                return
            killed = time.monotonic()
            server.kill()
            if ended.wait(outage_s):
                return
            server.restart()
            events.append({"killed_at_s": round(killed - t0, 2),
                           "restarted_at_s": round(time.monotonic() - t0, 2)})
            print(f"  outage {k}: server killed at {killed - t0:.1f} s, back at "
                  f"{time.monotonic() - t0:.1f} s", flush=True)
        ended.wait(max(0.0, t0 + seconds - time.monotonic()))
    except Exception as exc:  # a server that does not come back is a soak failure
        errors.append(f"outage schedule failed: {type(exc).__name__}: {exc}")
    finally:
        pipeline.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--model", help="M2FP model directory (default: a full-size random one)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (for CI)")
    ap.add_argument("--engine", choices=("torch", "torchscript", "onnxruntime"),
                    help="parser.engine (default: the config's)")
    ap.add_argument("--clip", help="H.264 MP4 to serve (default: chaplin_bw.mp4 or generated)")
    ap.add_argument("--output", help="annotated video (default: a temporary file)")
    ap.add_argument("--outage-s", type=float, default=3.0, help="server down time (default 3)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="any other config override")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error("--minutes must be > 0")
    if args.model and args.tiny:
        ap.error("--model and --tiny exclude each other")
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reason = rtsp_unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2

    from streamer import Pipeline, load_config
    from streamer.parsing.parser import HumanParser

    seconds = args.minutes * 60
    tmp = tempfile.TemporaryDirectory(prefix="streamer-soak-")
    work = Path(tmp.name)
    os.environ.setdefault("STREAMER_CACHE", str(work / "cache"))
    errors: list[str] = []

    if args.clip:
        clip = Path(args.clip)
    elif CHAPLIN.is_file():
        clip = CHAPLIN
    else:
        clip = make_clip(work / "clip.mp4", frames=250, size=(640, 360), fps=25)
    if args.model:
        model, model_kind = Path(args.model), "given"
    else:
        from streamer.testing.make_model import make_model

        model_kind = "tiny" if args.tiny else "full-size"
        began = time.monotonic()
        model = make_model(work / "model", "single", tiny=args.tiny, seed=0)
        print(f"made a {model_kind} random-weight model in {time.monotonic() - began:.0f} s",
              flush=True)
    output = Path(args.output) if args.output else work / "soak.mp4"
    overrides = [f"parser.model='{model}'", f"output.path='{output}'", "output.frames=all",
                 "output.progress=false"]
    if args.engine:
        overrides.append(f"parser.engine={args.engine}")
    config = load_config(None, overrides + args.overrides)

    began = time.monotonic()
    parser = HumanParser(config.parser)
    parser.warm_up()  # load (and export) the engine before the clock starts
    print(f"loaded the {config.parser.engine} engine in {time.monotonic() - began:.0f} s",
          flush=True)

    sampler = RssSampler()
    sampler.start()
    server = RtspServer(clip, loop=True).start()
    pipeline = Pipeline(config, server.url, parser=parser)
    metrics = TimedMetrics()
    pipeline.metrics = metrics
    events: list[dict[str, float]] = []
    ended, started = threading.Event(), []
    controller = threading.Thread(
        target=schedule, name="soak-schedule",
        args=(pipeline, metrics, server, seconds, args.outage_s, errors, events, ended, started),
        daemon=True)
    print(f"soak: {args.minutes:g} min of {clip.name} over {server.url}, "
          f"{model_kind} model, {config.parser.engine}", flush=True)
    controller.start()
    summary: dict[str, Any] = {}
    try:
        summary = pipeline.run(show_progress=False)
    except BaseException as exc:  # a crash is the soak's main finding
        errors.append(f"pipeline crashed: {type(exc).__name__}: {exc}")
        summary = pipeline.metrics.summary()
    finally:
        finished = time.monotonic()
        ended.set()
        controller.join(30)
        server.kill()
        sampler.stop()

    t0 = started[0] if started else finished
    ran = finished - t0
    if started and ran < seconds - 5:
        errors.append(f"the pipeline ended after {ran:.1f} s of {seconds:.0f} s")
    written = summary.get("frames_written", metrics.frames_written)
    output_frames = None
    if output.exists():
        try:
            output_frames = count_video_frames(output)
        except Exception as exc:
            errors.append(f"output {output} does not play: {type(exc).__name__}: {exc}")
        else:
            if output_frames != written:
                errors.append(f"output holds {output_frames} frames, {written} were written")
    elif started:
        errors.append(f"no output written to {output}")

    rss_all = [mb for stamp, mb in sampler.samples if stamp >= t0] or [
        mb for _, mb in sampler.samples]
    minute = min(60.0, ran) if ran > 0 else 60.0
    result: dict[str, Any] = {
        "minutes": args.minutes,
        "ran_s": round(ran, 1),
        "clip": str(clip),
        "model": model_kind,
        "engine": config.parser.engine,
        "detector": config.detector.type,
        "rss_mb": {
            "start": round(sampler.at(t0), 1),
            "after_first_minute": round(sampler.at(t0 + 60), 1),
            "end": round(sampler.samples[-1][1], 1),
            "max": round(max(rss_all), 1),
            "every_10s": [round(sampler.at(t0 + k), 1) for k in range(0, int(ran) + 1, 10)],
        },
        "latency_ms": {
            "first_minute": window(metrics, t0, t0 + minute),
            "last_minute": window(metrics, finished - minute, finished),
        },
        "reconnects": summary.get("reconnects", 0),
        "gap_seconds": summary.get("gap_seconds", 0.0),
        "outages": events,
        "frames_read": summary.get("frames_read", metrics.frames_read),
        "frames_parsed": summary.get("frames_parsed", metrics.frames_parsed),
        "frames_written": written,
        "frames_dropped": summary.get("frames_dropped", 0),
        "output_frames": output_frames,
        "fps": round(written / ran, 2) if ran > 0 else 0.0,
        "parse_fps": round(summary.get("frames_parsed", 0) / ran, 2) if ran > 0 else 0.0,
        "errors": errors,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()

    rss, lat = result["rss_mb"], result["latency_ms"]
    rows = [
        ("run", f"{ran / 60:.1f} min, {model_kind} model, {result['engine']}, "
                f"{result['detector']} detector"),
        ("RSS MiB", f"start {rss['start']}  after 1 min {rss['after_first_minute']}  "
                    f"end {rss['end']}  max {rss['max']}"),
        ("latency ms", f"first minute p50 {lat['first_minute']['p50']} "
                       f"p95 {lat['first_minute']['p95']}   last minute p50 "
                       f"{lat['last_minute']['p50']} p95 {lat['last_minute']['p95']}"),
        ("frames", f"read {result['frames_read']}  parsed {result['frames_parsed']}  "
                   f"written {written}  in file {output_frames}  ({result['fps']} fps)"),
        ("reconnects", f"{result['reconnects']}  (gap {result['gap_seconds']} s)"),
        ("errors", "; ".join(errors) or "none"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
