"""Many cameras, one model: N live RTSP streams through the parse scheduler vs separate pipelines.

For each N (``--streams 1,2,4,8``) the same N RTSP streams (a real clip from
../shared/media/videos served as-is and looped at its own fps by tests/rtsp_server.py, one
server per stream) run in a fresh child process, once per mode:

- ``scheduler``: ``run_stream.py --config cams.yaml --output-dir DIR``'s way: one
  :class:`~streamer.apps.streams.StreamsRun`, one parser, one detect+parse thread for all
  (``scheduler.parallel`` as configured: ``auto`` unless ``--set`` says otherwise);
- ``scheduler-pK`` (e.g. ``scheduler-p2``): the same with ``scheduler.parallel=K``: K parse
  slots, each a thread with its own parser on cores/K threads;
- ``separate``: today's design (what ``serve`` does per stream): one
  :class:`~streamer.pipeline.Pipeline` per stream, each building its own parser whose engine
  takes all the cores' threads.

Every stream renders and writes its recording (``DIR/NAME.mkv``). After a warm-up (every
stream parsed once) the child counts for ``--seconds``: per stream parse fps, written (shown)
fps vs the source's fps, overlay age p50/p95 (capture of the parsed frame -> a frame with that
parse written), the detect+parse time; for the process the total parse fps and peak RSS
(VmHWM). The table is printed and everything written to ``--json``, with the issue's goals
marked met or not.

    python benchmarks/streams_bench.py --json streams.json                # full-size model
    python benchmarks/streams_bench.py --json s.json --model tiny --seconds 5 --streams 1,2
    python benchmarks/streams_bench.py --json p.json --modes scheduler-p1,scheduler-p2 \
        --streams 1,2,4 --seconds 30                                      # item 1's choice

The default model is /tmp/bench_model_streams (full-size R101, random weights; made with
``python -m streamer.testing.make_model DIR --variant single`` when missing). Random weights
give real timings, not real parses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

MEDIA = ROOT.parent / "shared" / "media" / "videos"
FULL_MODEL = Path("/tmp/bench_model_streams")
MODES = ("scheduler", "separate")


def mode_sets(mode: str) -> list[str]:
    """Config overrides a mode name brings: ``scheduler-p2`` -> scheduler.parallel=2."""
    if mode in MODES:
        return []
    if mode.startswith("scheduler-p") and mode[len("scheduler-p"):].isdigit():
        return [f"scheduler.parallel={int(mode[len('scheduler-p'):])}"]
    raise SystemExit(f"error: unknown mode {mode!r} (scheduler, separate or scheduler-pK)")


def vm_hwm_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    if "amx_tile" in flags:
        isa += "+AMX"
    return f"{fields.get('Model name', 'unknown').strip()} ({isa}, {os.cpu_count()} cores)"


# ------------------------------------------------------------------ child: one mode, N streams
def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0}
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1)}


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, summed by thread name (the digits
    of numbered threads dropped: ``cam3-reader`` and ``cam1-reader`` count together). Threads
    that libraries start (the encoder's, the engine's) go by their OS name, ``native:...``."""
    import re

    tick = os.sysconf("SC_CLK_TCK")
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = re.sub(r"\d+", "N", python_names.get(int(tid), f"native:{comm}"))
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def child(mode: str, urls: list[str], seconds: float, sets: list[str], out: Path) -> dict:
    from streamer.apps.inputs import SourceSpec
    from streamer.apps.streams import StreamsRun
    from streamer.config import load_config
    from streamer.parsing.parser import HumanParser
    from streamer.pipeline import Pipeline

    names = [f"cam{i}" for i in range(len(urls))]

    def config(name: str):
        return load_config(None, [*sets, f"output.path='{out / name}.mkv'",
                                  "output.progress=false"])

    started = time.monotonic()
    run = None
    threads: list[threading.Thread] = []
    if mode.startswith("scheduler"):
        run = StreamsRun(config("base"), out)
        for name, url in zip(names, urls, strict=True):
            run.add(SourceSpec(url, config(name), name))
        pipelines = {name: run.pipeline(name) for name in names}
    else:
        pipelines = {name: Pipeline(config(name), url, name=name)
                     for name, url in zip(names, urls, strict=True)}
        for p in pipelines.values():
            threads.append(threading.Thread(target=p.run, kwargs={"show_progress": False},
                                            daemon=True))
            threads[-1].start()
    deadline = time.monotonic() + 600
    while not all(p.metrics.frames_parsed >= 1 for p in pipelines.values()):
        if time.monotonic() > deadline:
            raise SystemExit("streams did not all parse within 600 s")
        time.sleep(0.1)
    warm = time.monotonic() - started

    def snap() -> dict[str, dict[str, Any]]:
        return {n: {"parsed": p.metrics.frames_parsed, "written": p.metrics.frames_written,
                    "ages": len(p.metrics.overlay_age), "parse": len(p.metrics.stages["parse"]),
                    "detect": len(p.metrics.stages["detect"])} for n, p in pipelines.items()}

    busy0 = run.scheduler.busy_seconds if run is not None else 0.0
    t0, before, cpu0 = time.monotonic(), snap(), thread_cpu()
    time.sleep(seconds)
    t1, after, cpu1 = time.monotonic(), snap(), thread_cpu()
    # Cores each kind of thread used over the window: where the CPU went.
    cores = {name: round((cpu1[name] - cpu0.get(name, 0.0)) / (t1 - t0), 3) for name in cpu1}
    cores = dict(sorted(((k, v) for k, v in cores.items() if v >= 0.005),
                        key=lambda kv: -kv[1]))
    # The share of the window the scheduler's slots spent in detect + parse: 1.0 = no idle gap.
    busy = (round((run.scheduler.busy_seconds - busy0) / ((t1 - t0) * run.scheduler.parallel), 3)
            if run is not None else None)
    dt = t1 - t0
    streams = {}
    for name, p in pipelines.items():
        a, b = before[name], after[name]
        ages = list(p.metrics.overlay_age)[a["ages"]:b["ages"]]
        parse = list(p.metrics.stages["parse"])[a["parse"]:b["parse"]]
        detect = list(p.metrics.stages["detect"])[a["detect"]:b["detect"]]
        streams[name] = {
            "parse_fps": round((b["parsed"] - a["parsed"]) / dt, 3),
            "shown_fps": round((b["written"] - a["written"]) / dt, 2),
            "source_fps": round(p.source.info.fps, 2),
            "overlay_age_ms": _percentiles(ages),
            "detect_parse_ms": round(float(np.median(parse)) + (
                float(np.median(detect)) if detect else 0.0), 1) if parse else None,
            "detect_ms": round(float(np.median(detect)), 1) if detect else None,
            "reconnects": p.source.stats.reconnects,
        }
    for p in pipelines.values():
        p.stop()
    if run is not None:
        run.stop()
        run.wait(timeout=60)
    for thread in threads:
        thread.join(60)
    return {"mode": mode, "n": len(urls), "seconds": round(dt, 2), "warmup_s": round(warm, 1),
            "parsers_built": HumanParser.built, "engines_built": HumanParser.engines_built,
            "parse_slots": run.scheduler.parallel if run is not None else len(urls),
            "peak_rss_mb": vm_hwm_mb(), "streams": streams,
            "total_parse_fps": round(sum(s["parse_fps"] for s in streams.values()), 3),
            "scheduler_busy": busy, "cores_by_thread": cores,
            "load_after": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------ parent
def at_frame_rate(clip: Path, fps: float, out: Path) -> Path:
    """``clip`` with every k-th frame kept (k = its rate / ``fps``, at least 1), re-encoded as
    H.264 at ``fps``: the same pictures at a lower rate."""
    from fractions import Fraction

    import av

    with av.open(str(clip)) as src:
        stream = src.streams.video[0]
        step = max(1, round(float(stream.average_rate or 25) / fps))
        with av.open(str(out), "w") as dst:
            enc = dst.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            enc.width, enc.height, enc.pix_fmt = stream.width, stream.height, "yuv420p"
            enc.codec_context.options = {"crf": "18", "preset": "veryfast", "bf": "0"}
            for i, frame in enumerate(src.decode(stream)):
                if i % step == 0:
                    dst.mux(enc.encode(av.VideoFrame.from_ndarray(
                        frame.to_ndarray(format="rgb24"), format="rgb24")))
            dst.mux(enc.encode(None))
    return out


def _summarise(r: dict) -> dict:
    s = list(r["streams"].values())
    fps = [x["parse_fps"] for x in s]
    dp = [x["detect_parse_ms"] for x in s if x["detect_parse_ms"]]
    r["min_parse_fps"], r["max_parse_fps"] = min(fps), max(fps)
    r["fairness"] = round(min(fps) / max(fps), 3) if max(fps) > 0 else 0.0
    r["age_p50_ms"] = max(x["overlay_age_ms"]["p50"] for x in s)
    r["age_p95_ms"] = max(x["overlay_age_ms"]["p95"] for x in s)
    r["min_shown_ratio"] = round(min(x["shown_fps"] / x["source_fps"] for x in s), 3)
    r["detect_parse_ms"] = round(float(np.median(dp)), 1) if dp else None
    return r


def goals(results: dict[str, dict[int, dict]]) -> list[dict]:
    """The issue's goals, per mode, from the measured rows."""
    out = []
    for mode, rows in results.items():
        ns = sorted(rows)
        one = rows.get(1)
        for n in ns:
            r = rows[n]
            if one is not None and n > 1:
                ratio = r["total_parse_fps"] / one["total_parse_fps"] if one[
                    "total_parse_fps"] else 0.0
                out.append({"mode": mode, "n": n, "goal": "total parse fps >= 0.95 x N=1",
                            "value": round(ratio, 3), "met": ratio >= 0.95})
                extra = (r["peak_rss_mb"] - one["peak_rss_mb"]) / (n - 1)
                out.append({"mode": mode, "n": n, "goal": "RSS per extra stream <= 120 MB",
                            "value": round(extra, 1), "met": extra <= 120})
            if n > 1:
                out.append({"mode": mode, "n": n, "goal": "fairness min/max parse fps >= 0.8",
                            "value": r["fairness"], "met": r["fairness"] >= 0.8})
            out.append({"mode": mode, "n": n, "goal": "shown fps >= 0.95 x source fps",
                        "value": r["min_shown_ratio"], "met": r["min_shown_ratio"] >= 0.95})
            if r["detect_parse_ms"]:
                bound = (n + 1) * r["detect_parse_ms"]
                out.append({"mode": mode, "n": n,
                            "goal": "overlay age p95 <= (N+1) x detect+parse",
                            "value": f"{r['age_p95_ms']:.0f} <= {bound:.0f}",
                            "met": r["age_p95_ms"] <= bound})
    return out


def table(results: dict[str, dict[int, dict]]) -> str:
    head = (f"{'mode':<13}{'N':>3}{'parse/s':>9}{'min/s':>7}{'max/s':>7}{'fair':>6}"
            f"{'age p50':>9}{'age p95':>9}{'d+p ms':>8}{'shown/src':>10}{'RSS MB':>8}"
            f"{'nets':>5}{'load':>6}")
    lines = [head]
    for mode, rows in results.items():
        for n in sorted(rows):
            r = rows[n]
            lines.append(
                f"{mode:<13}{n:>3}{r['total_parse_fps']:>9.2f}{r['min_parse_fps']:>7.2f}"
                f"{r['max_parse_fps']:>7.2f}{r['fairness']:>6.2f}{r['age_p50_ms']:>9.0f}"
                f"{r['age_p95_ms']:>9.0f}{(r['detect_parse_ms'] or 0):>8.0f}"
                f"{r['min_shown_ratio']:>10.2f}{r['peak_rss_mb']:>8.0f}{r['engines_built']:>5}"
                f"{r['load_after'][0]:>6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--model", default=str(FULL_MODEL), help="model directory, or 'tiny'")
    ap.add_argument("--streams", default="1,2,4,8",
                    help="comma-separated N (default 1,2,4,8)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per run")
    ap.add_argument("--clip", default="chaplin_bw.mp4", help="clip in ../shared/media/videos")
    ap.add_argument("--source-fps", type=float, default=0.0,
                    help="serve the clip at this frame rate (every k-th frame, re-encoded): "
                    "N streams at fps/N carry the video work of one stream, which isolates "
                    "what the sharing itself costs (default: the clip's own rate)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="scheduler,separate (default) and/or scheduler-pK (K parse slots)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for every stream (e.g. detector.type=full)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    model = args.model
    if args.child:
        mode, out, *urls = args.child
        # Every parse a real one: a still scene would otherwise keep its crop's last parse
        # (parse.reuse_threshold) at 1 ms, and count as a parse.
        sets = [f"parser.model='{model}'", "parse.reuse_threshold=0", *args.sets,
                *mode_sets(mode)]
        if out == "-":  # only build (or load) the engine this mode runs, so no row compiles
            from streamer.config import load_config
            from streamer.parsing.parser import HumanParser

            config = load_config(None, sets)
            HumanParser(config.scheduler.parser_options(config.parser))
            os._exit(0)
        print("RESULT " + json.dumps(child(mode, urls, args.seconds, sets, Path(out))),
              flush=True)
        sys.stderr.flush()
        os._exit(0)  # the measurement is out; skip tearing down the engines' threads

    from media_helpers import RtspServer, rtsp_unavailable_reason

    reason = rtsp_unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    clip = MEDIA / args.clip
    if not clip.is_file():
        print(f"error: {clip} not found (../shared/media is needed)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    if args.source_fps:
        clip = at_frame_rate(clip, args.source_fps, tmp / f"{clip.stem}-{args.source_fps:g}fps.mp4")
    if model == "tiny":
        from streamer.testing.make_model import make_model

        model = str(make_model(tmp / "tiny", "single", tiny=True, seed=1))
    elif not Path(model).is_dir():
        print(f"error: model {model} not found; make it with python -m "
              f"streamer.testing.make_model {model} --variant single", file=sys.stderr)
        return 2
    counts = sorted({int(x) for x in args.streams.split(",")})
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        mode_sets(mode)  # an unknown mode is an error now, not after the first runs
    servers = [RtspServer(clip, loop=True).start() for _ in range(max(counts))]
    results: dict[str, dict[int, dict]] = {m: {} for m in modes}
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        for mode in modes:  # compile what is not in the engine cache yet, before any timing
            subprocess.run([sys.executable, __file__, "--json", "-", "--model", model,
                            *[f"--set={s}" for s in args.sets], "--child", mode, "-"],
                           check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        for n in counts:
            for mode in modes:
                out = tmp / f"{mode}-{n}"
                out.mkdir()
                cmd = [sys.executable, __file__, "--json", "-", "--model", model, "--seconds",
                       str(args.seconds), *[f"--set={s}" for s in args.sets],
                       "--child", mode, str(out), *[s.url for s in servers[:n]]]
                env = dict(os.environ, PYTHONPATH=str(ROOT))
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{mode} N={n} failed")
                row = _summarise(json.loads(line[-1][len("RESULT "):]))
                results[mode][n] = row
                print(f"{mode} N={n}: {row['total_parse_fps']:.2f} parses/s, "
                      f"RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        for server in servers:
            server.kill()
    checked = goals(results)
    report = {
        "cpu": cpu_name(), "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()], "clip": args.clip,
        "model": model, "seconds": args.seconds, "sets": args.sets,
        "source_fps": args.source_fps or None,
        "results": {m: {str(n): r for n, r in rows.items()} for m, rows in results.items()},
        "goals": checked,
    }
    print(table(results))
    for g in checked:
        print(f"{'met    ' if g['met'] else 'NOT met'}  {g['mode']:<13} N={g['n']}  "
              f"{g['goal']}: {g['value']}")
    print(f"CPU {report['cpu']}; load average {load_before} before, {report['load_after']} "
          "after (load column: 1-min load average at the end of each row; the machine is "
          "shared)")
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
