"""The ONNX Runtime engine: fp32 from the cached ONNX export, or a calibrated int8 model.

Example:
    >>> engine = OnnxRuntimeEngine(net, (512, 384), 2, checkpoint, default_cache_dir())
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamer.parsing.engines.base import NetSource
from streamer.parsing.engines.cache import int8_model, onnx_model


class OnnxRuntimeEngine:
    """ONNX Runtime on the CPU with an exported graph cached on disk; fp32 or calibrated int8."""

    name = "onnxruntime"

    def __init__(
        self, net: NetSource, canvas_hw: tuple[int, int], threads: int, checkpoint: Path,
        cache_dir: Path, precision: str = "fp32",
    ) -> None:
        import onnxruntime as ort

        self.canvas_hw = canvas_hw
        self.precision = precision
        if precision == "int8":
            path = int8_model(self.name, checkpoint, canvas_hw, cache_dir)
        else:
            path = onnx_model(net, canvas_hw, checkpoint, cache_dir)
        self.model_path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, masks = self.session.run(None, {"images": np.ascontiguousarray(batch)})
        return logits, masks
