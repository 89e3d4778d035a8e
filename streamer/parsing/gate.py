"""The agreement gate: which engine and precision may be the default.

Faster precisions (bf16, int8) change the network's arithmetic, and a label map can change with
it. A pair of engine and precision counts only when its label maps agree with fp32 ``torch``
on at least 99.5% of the label pixels of real person crops; among those, the fastest median
time per crop wins. A user may opt in to 99% (``min_agreement=0.99``); nothing lower counts.

The gate is run by tools, never at start-up: ``benchmarks/parse_bench.py`` (which set the
static defaults in ``ParserOptions``) and ``python -m streamer.calibrate`` (which prints the
setting to use on the user's own machine and footage).

Example:
    >>> results = measure(model_dir, [Candidate("openvino"), Candidate("onnxruntime", "int8")],
    ...                   crops)
    >>> best = choose(results)
    >>> best.setting
    'parser.engine=openvino parser.precision=fp32'
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.core.errors import ConfigError, StreamerError
from streamer.parsing.engines import AGREEMENT_GATE

#: The lowest agreement a user may opt in to.
OPT_IN_FLOOR = 0.99
REFERENCE = ("torch", "fp32")


@dataclass(frozen=True)
class Candidate:
    """One way to run the network.

    Example:
        >>> Candidate.parse("openvino:bf16")
        Candidate(engine='openvino', precision='bf16')
    """

    engine: str
    precision: str = "fp32"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        engine, _, precision = text.strip().partition(":")
        return cls(engine, precision or "fp32")

    def __str__(self) -> str:
        return f"{self.engine}:{self.precision}"


@dataclass
class Measurement:
    """Median and p90 seconds per crop (one crop per call) and label-pixel agreement with fp32
    torch; ``error`` says why a candidate could not run (e.g. int8 not calibrated)."""

    engine: str
    precision: str
    median_s: float | None = None
    p90_s: float | None = None
    agreement_vs_torch: float | None = None
    error: str | None = None

    @property
    def setting(self) -> str:
        return f"parser.engine={self.engine} parser.precision={self.precision}"

    def passes(self, min_agreement: float = AGREEMENT_GATE) -> bool:
        return (self.error is None and self.agreement_vs_torch is not None
                and self.agreement_vs_torch >= min_agreement)


def check_min_agreement(value: float) -> float:
    """``value`` if it is an allowed gate (0.99 to 1), else a ConfigError.

    Example:
        >>> check_min_agreement(0.99)
        0.99
    """
    if not OPT_IN_FLOOR <= value <= 1:
        raise ConfigError(f"min_agreement must be between {OPT_IN_FLOOR} and 1, not {value}",
                          hint=f"the default gate is {AGREEMENT_GATE}; {OPT_IN_FLOOR} is the "
                               "lowest you may opt in to")
    return value


def label_agreement(maps: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """The fraction of label pixels, over all crops, where ``maps`` equal ``reference``.

    Example:
        >>> label_agreement([np.zeros((2, 2))], [np.eye(2)])
        0.5
    """
    pixels = sum(m.size for m in reference)
    same = sum(int((a == b).sum()) for a, b in zip(maps, reference, strict=True))
    return same / max(1, pixels)


def choose(results: Sequence[Measurement],
           min_agreement: float = AGREEMENT_GATE) -> Measurement | None:
    """The fastest measurement that passes the gate, or None.

    Example:
        >>> choose([Measurement("torch", "fp32", 0.8, 0.9, 1.0),
        ...         Measurement("openvino", "bf16", 0.4, 0.5, 0.97)]).engine
        'torch'
    """
    check_min_agreement(min_agreement)
    passing = [(m.median_s, m) for m in results
               if m.passes(min_agreement) and m.median_s is not None]
    return min(passing, key=lambda timed: timed[0])[1] if passing else None


def measure(
    model: str | os.PathLike[str],
    candidates: Sequence[Candidate],
    crops: Sequence[np.ndarray],
    *,
    threads: int = 0,
    reps: int = 1,
    cache_dir: str | Path | None = None,
) -> list[Measurement]:
    """Time every candidate on ``crops`` (one crop per call, ``reps`` times each, after one
    warm-up call) and compare its label maps with fp32 torch's. fp32 torch is always measured
    first, as the reference; a candidate that cannot be built is returned with its ``error``.

    Example:
        >>> [m.engine for m in measure(model_dir, [Candidate("openvino")], crops)]
        ['torch', 'openvino']
    """
    from streamer.parsing.parser import HumanParser, ParserOptions

    order = [Candidate(*REFERENCE)] + [c for c in candidates if (c.engine, c.precision)
                                       != REFERENCE]
    reference: list[np.ndarray] = []
    results: list[Measurement] = []
    for candidate in order:
        try:
            parser = HumanParser(ParserOptions(
                model=str(model), engine=candidate.engine, precision=candidate.precision,
                threads=threads, batch_size=1,
                cache_dir=str(cache_dir) if cache_dir else None))
            parser.parse_crops([crops[0]])  # builds or loads the engine
        except StreamerError as exc:
            results.append(Measurement(candidate.engine, candidate.precision, error=str(exc)))
            continue
        times: list[float] = []
        maps: list[np.ndarray] = []
        for crop in crops:
            for _ in range(reps):
                started = time.perf_counter()
                out = parser.parse_crops([crop])[0]
                times.append(time.perf_counter() - started)
            maps.append(out)
        if not reference:
            reference = maps
        results.append(Measurement(
            candidate.engine, candidate.precision,
            median_s=round(statistics.median(times), 4),
            p90_s=round(float(np.percentile(times, 90)), 4),
            agreement_vs_torch=round(label_agreement(maps, reference), 5)))
        del parser
        gc.collect()
    return results


def format_table(results: Sequence[Measurement], min_agreement: float = AGREEMENT_GATE) -> str:
    """A plain-text table of ``results`` with the gate's verdict on each line."""
    lines = [f"{'engine:precision':<20}{'median s':>10}{'p90 s':>9}{'vs torch':>10}  gate"]
    for m in results:
        name = f"{m.engine}:{m.precision}"
        if m.error:
            lines.append(f"{name:<20}{'-':>10}{'-':>9}{'-':>10}  not run: {m.error}")
            continue
        verdict = "pass" if m.passes(min_agreement) else f"fail (< {min_agreement})"
        lines.append(f"{name:<20}{m.median_s:>10.3f}{m.p90_s:>9.3f}"
                     f"{m.agreement_vs_torch:>10.4f}  {verdict}")
    return "\n".join(lines)
