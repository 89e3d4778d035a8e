"""Inference engines for the M2FP network on a fixed canvas.

Each engine maps a float32 batch ``(N, 3, H, W)`` of RGB pixel values (0..255) on one fixed
canvas to ``(pred_logits, pred_masks)`` as float32 numpy arrays. Fixing the canvas is what makes
tracing and export valid. Compiled artefacts are cached on disk under a key made of the
checkpoint's hash, the canvas, the torch version and the engine options.

Engines and the precisions they run (``parser.precision``):

* ``torch``, ``torchscript``: fp32.
* ``onnxruntime``: fp32, or int8 from a model calibrated by ``python -m streamer.calibrate``.
* ``openvino``: fp32, bf16 (where the CPU has it), or int8 calibrated the same way, compiled
  once for a static input shape and kept on disk.

Example:
    >>> engine = create_engine("openvino", net, (512, 384), checkpoint, threads=2)
    >>> logits, masks = engine(np.zeros((1, 3, 512, 384), np.float32))
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.parsing.engines.base import (
    AGREEMENT_GATE,
    ENGINE_PRECISIONS,
    ENGINES,
    ONNX_OPSET,
    PERF_HINTS,
    PRECISIONS,
    Engine,
    NetSource,
    check_engine_options,
    materialise,
)
from streamer.parsing.engines.cache import (
    building,
    cache_key,
    calibration_record,
    code_fingerprint,
    default_cache_dir,
    file_digest,
    int8_model,
    int8_model_path,
    map_read_only,
    onnx_model,
    release_pages,
    torch_version,
    written_through,
)
from streamer.parsing.engines.onnxruntime_engine import OnnxRuntimeEngine
from streamer.parsing.engines.openvino_engine import (
    BF16_PARTS,
    ISA_CAPS_WITHOUT_BF16,
    OPENVINO_STATIC_BATCHES,
    OpenVinoEngine,
    cpu_has_bf16,
)

if TYPE_CHECKING:
    from streamer.parsing.engines.export import ONNX_PARTS, export_onnx
    from streamer.parsing.engines.torch_engine import TorchEngine
    from streamer.parsing.engines.torchscript_engine import TorchScriptEngine

#: Names that need torch, imported from their module on first use (PEP 562): importing this
#: package, and running a compiled engine from the cache, never imports torch.
_NEEDS_TORCH = {
    "ONNX_PARTS": "export", "export_onnx": "export", "TorchEngine": "torch_engine",
    "TorchScriptEngine": "torchscript_engine",
}


def __getattr__(name: str) -> object:
    module = _NEEDS_TORCH.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AGREEMENT_GATE", "BF16_PARTS", "ENGINES", "ENGINE_PRECISIONS", "ISA_CAPS_WITHOUT_BF16",
    "ONNX_OPSET", "ONNX_PARTS", "OPENVINO_STATIC_BATCHES", "PERF_HINTS", "PRECISIONS", "Engine",
    "NetSource", "OnnxRuntimeEngine", "OpenVinoEngine", "TorchEngine", "TorchScriptEngine",
    "building", "cache_key", "calibration_record", "check_engine_options", "code_fingerprint",
    "cpu_has_bf16", "create_engine", "default_cache_dir", "export_onnx", "file_digest",
    "int8_model", "int8_model_path", "map_read_only", "materialise", "onnx_model",
    "release_pages", "torch_version", "written_through",
]


def create_engine(
    name: str,
    net: NetSource,
    canvas_hw: tuple[int, int],
    checkpoint: Path,
    *,
    threads: int,
    cache_dir: Path | None = None,
    precision: str = "fp32",
    perf_hint: str = "latency",
) -> Engine:
    """The engine ``name`` for ``net`` on ``canvas_hw``, built or loaded from the cache.

    Example:
        >>> engine = create_engine("openvino", net, (512, 384), checkpoint, threads=2)
    """
    check_engine_options(name, precision, perf_hint)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if name == "torch":
        from streamer.parsing.engines.torch_engine import TorchEngine

        return TorchEngine(net, canvas_hw, threads)
    if name == "torchscript":
        from streamer.parsing.engines.torchscript_engine import TorchScriptEngine

        return TorchScriptEngine(net, canvas_hw, threads, checkpoint, cache)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(net, canvas_hw, threads, checkpoint, cache, precision)
    return OpenVinoEngine(net, canvas_hw, threads, checkpoint, cache, precision, perf_hint)
