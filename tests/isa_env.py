"""Run a check in a child Python process with the CPU's instruction set capped.

oneDNN (inside PyTorch and OpenVINO) honours ``ONEDNN_MAX_CPU_ISA``, ATen's vectorised
kernels ``ATEN_CPU_CAPABILITY`` and MKL ``MKL_ENABLE_INSTRUCTIONS``; all are read once, when
the library loads, so a different ISA needs a fresh process. ``ISAS`` names the two paths the
tests check on any machine: ``native`` (whatever this CPU has: AVX-512/AMX on the CI box) and
``avx2`` (the kernels an AVX2-only AMD machine runs). Tests parametrise over ``ISAS`` and
call ``run_with_isa``.

Example:
    >>> run_with_isa("avx2", "import json, torch; "
    ...              "print(json.dumps(torch.backends.cpu.get_cpu_capability()))")
    'AVX2'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

ISA_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
            "MKL_ENABLE_INSTRUCTIONS")
#: MKL (PyTorch's BLAS for fp32 matmuls) has its own switch: without it, its AVX-512 kernels
#: would still run under the oneDNN and ATen caps.
ISAS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def isa_environment(isa: str) -> dict[str, str]:
    """This process's environment with the ISA variables of ``isa`` (and only those) set."""
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARS}
    env.update(ISAS[isa])
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(TESTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_with_isa(isa: str, code: str, *args: str, timeout: float = 900):
    """Run ``code`` (``python -c``) under ``isa``; it must print one JSON value as its last
    stdout line, which is returned. A failing child fails the calling test with its stderr."""
    done = subprocess.run([sys.executable, "-c", code, *args], env=isa_environment(isa),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"child under {isa} exited {done.returncode}:\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise AssertionError(f"child under {isa} printed nothing:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])
