"""The on-disk engine cache under concurrency (issue 14 item 16): parse workers (threads of
``serve``) and ``batch`` workers (processes) starting together on a cold cache compile the
OpenVINO blob once, under a lock, and the others wait and load it. Tiny random-weight model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamer.parsing.parser import HumanParser, ParserOptions

pytest.importorskip("openvino", reason="the openvino engine needs pip install openvino")

ROOT = Path(__file__).resolve().parents[1]

# One worker process: loads everything first, waits for the common start signal, then builds
# its engine and prints which batch sizes it compiled (rather than loaded from the cache).
WORKER = """
import json, os, sys, time
from pathlib import Path
from streamer.parsing.parser import HumanParser, ParserOptions
model, cache, go = sys.argv[1:4]
parser = HumanParser(ParserOptions(model=model, engine="openvino", threads=1, cache_dir=cache))
while not os.path.exists(go):
    time.sleep(0.005)
engine = parser.engine_for(parser.cfg.canvas_hw)
print(json.dumps({"compiled": engine.compiled_now, "blob": str(engine.blob_path(1))}))
"""


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if ".tmp" in p.name)


def test_two_threads_on_a_cold_cache_compile_once(tiny_single_model, tmp_path):
    # As serve's parse pool does: each worker thread makes its parser and warms it up.
    cache = tmp_path / "cache"
    start = threading.Barrier(2)
    engines: list[object] = []
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                               threads=1, cache_dir=str(cache)))
            parser.warm_up()
            engines.append(parser.engine_for(parser.cfg.canvas_hw))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [], errors
    assert sorted(len(e.compiled_now) for e in engines) == [0, 1]  # one compiled, one loaded
    assert engines[0].blob_path(1).is_file() and leftovers(cache) == []


def test_two_processes_on_a_cold_cache_compile_once(tiny_single_model, tmp_path):
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMER_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tiny_single_model), str(cache),
                               str(go)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        time.sleep(1.0)
        deadline = time.monotonic() + 120
        # Both have loaded the model (their CPU time stops growing) before the start signal.
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            ready = all(_waiting(p.pid) for p in procs)
            if ready:
                break
            time.sleep(0.2)
        go.touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(len(r["compiled"]) for r in results) == [0, 1], results
    assert results[0]["blob"] == results[1]["blob"] and Path(results[0]["blob"]).is_file()
    assert leftovers(cache) == []


def _waiting(pid: int) -> bool:
    """True once process ``pid`` sleeps in its start-signal loop (state S, little CPU)."""
    try:
        first = _cpu_ticks(pid)
        time.sleep(0.3)
        return _cpu_ticks(pid) - first <= 3
    except OSError:
        return True


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
