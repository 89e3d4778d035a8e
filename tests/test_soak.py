"""benchmarks/soak.py, one minute with a tiny model: two outages bridged, nothing lost or crashed.

The 10-minute run with the full-size model is the acceptance run for memory and latency; this
one only checks that the soak works end to end and that the pipeline survives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from media_helpers import rtsp_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    rtsp_unavailable_reason() is not None, reason=str(rtsp_unavailable_reason())
)


def test_one_minute_soak_with_two_outages(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "1", "--tiny",
         "--engine", "torch", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert set(result["rss_mb"]) >= {"start", "after_first_minute", "end", "max"}
    for name in ("first_minute", "last_minute"):
        assert {"p50", "p95"} <= set(result["latency_ms"][name])
    assert result["errors"] == []
    assert result["reconnects"] == 2, result
    assert result["frames_written"] > 0
    assert result["output_frames"] == result["frames_written"]
    assert "RSS" in proc.stdout and "reconnects" in proc.stdout  # the table
