"""Load on ``run_stream.py serve``: concurrent clients on 127.0.0.1, bounded in count and time.

Starts the real server as a subprocess (a tiny random-weight model unless ``--model``), then:

1. cache: the same photo uploaded ``--repeats`` times; the first is parsed (miss), the rest are
   answered from the cache (hit latency for JSON and for the overlay PNG);
2. saturation, twice: ``--clients`` threads each upload ``--requests`` different images at
   once, with a small pool (``--workers``, ``--queue``) so that most must be refused: the
   server answers 503 with Retry-After at once instead of letting clients time out;
3. memory: the server's VmRSS from ``/proc/PID/status`` sampled throughout; flat means the
   second round ends where the first did;
4. the server still answers /healthz afterwards.

Example:
    $ python benchmarks/serve_load.py --json serve_load.json
    phase                 sent   200   503  other  timeout   p50 ms   p95 ms
    cache miss (first)       1     1     0      0        0    812.4    812.4
    cache hit (json)        29    29     0      0        0      4.1      6.0
    ...
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "media" / "images" / "ultralytics_zidane.jpg"


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((round(time.monotonic() - self.t0, 2), round(value, 1)))
            self.stop.wait(self.every)

    def now(self) -> float:
        return rss_mb(self.pid) or float("nan")


def post(port: int, data: bytes, fmt: str = "json", timeout: float = 30.0
         ) -> tuple[int | str, float, dict[str, str]]:
    """(status or 'timeout'/'error', milliseconds, headers) of one upload."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", f"/api/parse?format={fmt}", body=data,
                     headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        resp.read()
        status: int | str = resp.status
        headers = {k.lower(): v for k, v in resp.getheaders()}
    except TimeoutError:
        status, headers = "timeout", {}
    except OSError:
        status, headers = "error", {}
    finally:
        conn.close()
    return status, (time.perf_counter() - started) * 1000.0, headers


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def variants(base: Image.Image, count: int, start: int) -> list[bytes]:
    """``count`` JPEGs of ``base``, each with a different corner pixel (distinct SHA-256)."""
    out = []
    pixels = np.asarray(base.convert("RGB")).copy()
    for i in range(start, start + count):
        pixels[0, 0] = (i % 256, (i // 256) % 256, 7)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 2),
            "p95": round(float(np.percentile(arr, 95)), 2), "max": round(float(arr.max()), 2)}


def phase_row(name: str, results: list[tuple[int | str, float, dict[str, str]]],
              wall_s: float | None = None) -> dict[str, Any]:
    counts = Counter(r[0] for r in results)
    ok = [ms for status, ms, _ in results if status == 200]
    refused = [ms for status, ms, _ in results if status == 503]
    retry = [int(h["retry-after"]) for status, _, h in results
             if status == 503 and "retry-after" in h]
    return {
        "phase": name, "sent": len(results), "ok": counts.get(200, 0),
        "refused_503": counts.get(503, 0), "timeouts": counts.get("timeout", 0),
        "other": len(results) - counts.get(200, 0) - counts.get(503, 0)
        - counts.get("timeout", 0),
        "ok_ms": quantiles(ok), "refused_ms": quantiles(refused),
        "retry_after_s": [min(retry), max(retry)] if retry else None,
        "wall_s": round(wall_s, 2) if wall_s is not None else None,
    }


def saturate(port: int, payloads: list[list[bytes]], deadline: float, timeout: float
             ) -> tuple[list[tuple[int | str, float, dict[str, str]]], float]:
    results: list[tuple[int | str, float, dict[str, str]]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(payloads))

    def client(mine: list[bytes]) -> None:
        barrier.wait()
        for data in mine:
            if time.monotonic() > deadline:
                return
            result = post(port, data, timeout=timeout)
            with lock:
                results.append(result)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(p,), daemon=True) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + timeout + 5)
    return results, time.monotonic() - started


def start_server(args: argparse.Namespace, model: str, log: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(ROOT / "run_stream.py"), "serve", "--port", "0", "--model", model,
           "--set", f"parser.engine={args.engine}", "--set", f"serve.workers={args.workers}",
           "--set", f"serve.queue={args.queue}", "--set", f"serve.cache_mb={args.cache_mb}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"),
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{log.read_text()[-2000:]}")
    return proc, int(match.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: a tiny random-weight model)")
    ap.add_argument("--engine", default=None, help="parser.engine (default: torch for the tiny "
                    "model, the config default otherwise)")
    ap.add_argument("--image", type=Path, default=PHOTO if PHOTO.is_file() else None,
                    help="photo to upload (default: ../shared/media/images/"
                    "ultralytics_zidane.jpg, else a generated picture)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (max 64)")
    ap.add_argument("--requests", type=int, default=4, help="uploads per client per round")
    ap.add_argument("--repeats", type=int, default=30, help="uploads of the same photo")
    ap.add_argument("--workers", type=int, default=1, help="serve.workers")
    ap.add_argument("--queue", type=int, default=2, help="serve.queue")
    ap.add_argument("--cache-mb", type=float, default=8.0,
                    help="serve.cache_mb: small, so the cache is full after round 1 and any "
                    "growth after it is not the cache")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s")
    ap.add_argument("--duration", type=float, default=90.0,
                    help="stop sending after this many seconds per round")
    ap.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    args = ap.parse_args()
    args.clients = max(1, min(64, args.clients))
    args.requests = max(1, min(50, args.requests))

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmpdir = Path(tmp)
        model = args.model
        label = model
        if model is None:
            from streamer.testing.make_model import make_model

            model = str(make_model(tmpdir / "tiny", "single", tiny=True, seed=1))
            label = "tiny single-person M2FP, RANDOM WEIGHTS"
            args.engine = args.engine or "torch"
        args.engine = args.engine or "onnxruntime"
        os.environ.setdefault("STREAMER_CACHE", str(tmpdir / "cache"))
        if args.image is not None:
            base = Image.open(args.image)
        else:
            rng = np.random.default_rng(0)
            small = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
            base = Image.fromarray(small).resize((1280, 720), Image.BILINEAR)
        base = base.convert("RGB")
        per_round = args.clients * args.requests
        rounds = [variants(base, per_round, 1000 + r * per_round) for r in range(2)]
        photo = variants(base, 1, 0)[0]

        proc, port = start_server(args, model, tmpdir / "server.log")
        sampler = RssSampler(proc.pid)
        sampler.start()
        rows: list[dict[str, Any]] = []
        memory: dict[str, Any] = {}
        try:
            memory["start_mb"] = sampler.now()
            first = post(port, photo, timeout=args.timeout)
            rows.append(phase_row("cache miss (first)", [first]))
            hits = [post(port, photo, timeout=args.timeout) for _ in range(args.repeats - 1)]
            rows.append(phase_row("cache hit (json)", hits))
            png_hits = [post(port, photo, "png", timeout=args.timeout)
                        for _ in range(args.repeats - 1)]
            rows.append(phase_row("cache hit (png)", png_hits))
            memory["after_warmup_mb"] = sampler.now()
            for r, round_payloads in enumerate(rounds, start=1):
                per_client = [round_payloads[i::args.clients] for i in range(args.clients)]
                results, wall = saturate(port, per_client, time.monotonic() + args.duration,
                                         args.timeout)
                rows.append(phase_row(f"saturation round {r}", results, wall))
                time.sleep(1.0)  # let the accepted parses finish
                memory[f"after_round_{r}_mb"] = sampler.now()
                _, health = get(port, "/healthz")
                cache = json.loads(health)["cache"]
                memory[f"cache_after_round_{r}_mb"] = round(cache.get("bytes", 0) / 2**20, 1)
            health_status, _ = get(port, "/healthz")
        finally:
            sampler.stop.set()
            sampler.join(timeout=2)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        rss = [mb for _, mb in sampler.samples]
        memory["peak_mb"] = max(rss) if rss else None
        memory["growth_round_2_mb"] = round(memory["after_round_2_mb"]
                                            - memory["after_round_1_mb"], 1)

    print(f"serve load: {args.clients} clients x {args.requests} uploads x 2 rounds, "
          f"serve.workers {args.workers}, serve.queue {args.queue}; {label}; engine "
          f"{args.engine}; image {base.width}x{base.height}; {os.cpu_count()} cores")
    print(f"{'phase':<22}{'sent':>6}{'200':>6}{'503':>6}{'other':>7}{'timeout':>9}"
          f"{'200 p50 ms':>12}{'200 p95 ms':>12}{'503 p95 ms':>12}")
    for row in rows:
        def ms(v: float | None) -> str:
            return f"{v:.1f}" if v is not None else "-"

        print(f"{row['phase']:<22}{row['sent']:>6}{row['ok']:>6}{row['refused_503']:>6}"
              f"{row['other']:>7}{row['timeouts']:>9}{ms(row['ok_ms']['p50']):>12}"
              f"{ms(row['ok_ms']['p95']):>12}{ms(row['refused_ms']['p95']):>12}")
    print(f"memory VmRSS MB: start {memory['start_mb']:.1f}, after warm-up "
          f"{memory['after_warmup_mb']:.1f}, after round 1 {memory['after_round_1_mb']:.1f}, "
          f"after round 2 {memory['after_round_2_mb']:.1f} (growth "
          f"{memory['growth_round_2_mb']:+.1f}), peak {memory['peak_mb']:.1f}; parse cache "
          f"{memory['cache_after_round_1_mb']:.1f} / {memory['cache_after_round_2_mb']:.1f} MB "
          f"of {args.cache_mb:g} after rounds 1 / 2")
    print(f"server up after load: {'yes' if health_status == 200 else 'NO'} "
          f"(healthz {health_status}); server exit {proc.returncode}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": {"clients": args.clients, "requests": args.requests,
                       "repeats": args.repeats, "workers": args.workers, "queue": args.queue,
                       "engine": args.engine, "model": label,
                       "image": [base.width, base.height], "timeout_s": args.timeout},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "phases": rows,
            "cache_hit_ms": {"json": rows[1]["ok_ms"], "png": rows[2]["ok_ms"]},
            "memory_mb": memory,
            "rss_samples": sampler.samples,
            "healthz_after": health_status,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if health_status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
