"""What every engine shares: the names of engines, precisions and hints, the ``Engine``
protocol, and the check of an engine/precision/hint choice.

Example:
    >>> check_engine_options("openvino", "bf16", "throughput")
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np

from streamer.core.errors import ConfigError

if TYPE_CHECKING:  # the network (and torch) are imported only where one is built or run
    from streamer.m2fp.model import M2FP

log = logging.getLogger("streamer.engines")
#: One-line notices of slow one-off steps (export, compile) that a user should see: the CLI
#: prints this logger at INFO even when the log level is WARNING.
notice = logging.getLogger("streamer.notice")

ENGINES = ("torch", "torchscript", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
PERF_HINTS = ("latency", "throughput")
#: What each engine can run; anything else is a ConfigError naming parser.precision.
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32",),
    "torchscript": ("fp32",),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
ONNX_OPSET = 17
#: Label-pixel agreement with fp32 torch an engine needs to be a default (issue #2).
AGREEMENT_GATE = 0.995


NetSource: TypeAlias = "M2FP | Callable[[], M2FP]"
"""The network, or a function that loads it: engines found in the cache never call it."""


def materialise(net: NetSource) -> M2FP:
    """The network itself: ``net``, or what calling it loads."""
    from streamer.m2fp.model import M2FP

    return net if isinstance(net, M2FP) else net()


class Engine(Protocol):
    """Maps a float32 batch ``(N, 3, H, W)`` (RGB, 0..255) on ``canvas_hw`` to float32
    ``(pred_logits, pred_masks)`` arrays: numpy from every engine, so that the run path after a
    compiled engine needs no torch (the torch engines hand over their tensors' memory)."""

    name: str
    canvas_hw: tuple[int, int]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...



def check_engine_options(engine: str, precision: str = "fp32", perf_hint: str = "latency") -> None:
    """ConfigError naming the key for an unknown engine, precision or hint, or a pair of
    engine and precision that does not exist.

    Example:
        >>> check_engine_options("torch", "int8")
        Traceback (most recent call last):
        streamer.core.errors.ConfigError: parser.precision int8 is not available with ...
    """
    if engine not in ENGINES:
        raise ConfigError(f"parser.engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"parser.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if perf_hint not in PERF_HINTS:
        raise ConfigError(
            f"parser.perf_hint must be one of {', '.join(PERF_HINTS)}, not {perf_hint!r}")
    if precision not in ENGINE_PRECISIONS[engine]:
        able = [e for e, p in ENGINE_PRECISIONS.items() if precision in p]
        raise ConfigError(
            f"parser.precision {precision} is not available with parser.engine {engine} "
            f"(it runs {', '.join(ENGINE_PRECISIONS[engine])})",
            hint=f"use parser.engine {' or '.join(able)} for {precision}")

