"""One JSON object per frame, a line each: :class:`JsonlStatsSink`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.types import Output
from streamer.io.sinks.base import FinalisingSink
from streamer.io.sinks.checks import check_output_path, write_failed

__all__ = ["JsonlStatsSink"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Fraction, Path)):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return dict(value.__dict__)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonlStatsSink(FinalisingSink):
    """Appends one JSON object per line, flushed per line so ``tail -f`` shows progress.

    NumPy scalars and arrays, fractions, paths and dataclasses are converted.

    Example:
        >>> with JsonlStatsSink("out/stats.jsonl") as stats:
        ...     stats.write({"frame": 0, "persons": 2, "latency_ms": 81.5})
        >>> json.loads(Path("out/stats.jsonl").read_text().splitlines()[0])["persons"]
        2
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = check_output_path(path)
        self.lines_written = 0
        try:
            self._file = open(self.path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise write_failed(self.path, exc) from None

    def write(self, item: Output | Mapping[str, Any]) -> None:
        """Write ``item.record`` (or a record given alone) as one line of JSON."""
        record = item.record if isinstance(item, Output) else item
        if record is None:
            assert isinstance(item, Output)
            raise ValueError(f"frame {item.frame.index} has no stats record to write")
        line = json.dumps(dict(record), default=_jsonable, separators=(",", ":"))
        try:
            self._file.write(line + "\n")
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        self.lines_written += 1

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as exc:
                raise write_failed(self.path, exc) from None
