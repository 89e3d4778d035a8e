"""Inference engines for the M2FP network on a fixed canvas.

Each engine maps a float32 batch ``(N, 3, H, W)`` of RGB pixel values (0..255) on one fixed
canvas to ``(pred_logits, pred_masks)`` as torch tensors. Fixing the canvas is what makes
tracing and export valid. Compiled artefacts are cached on disk under a key made of the
checkpoint's hash, the canvas, the torch version and the engine options.

Example:
    >>> engine = create_engine("onnxruntime", net, (512, 384), checkpoint, threads=2)
    >>> logits, masks = engine(np.zeros((1, 3, 512, 384), np.float32))
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from streamer.errors import ConfigError
from streamer.m2fp.model import M2FP

log = logging.getLogger("streamer.engines")

ENGINES = ("torch", "torchscript", "onnxruntime")
ONNX_OPSET = 17


class Engine(Protocol):
    name: str
    canvas_hw: tuple[int, int]

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


def default_cache_dir() -> Path:
    """``$STREAMER_CACHE``, else ``$XDG_CACHE_HOME/streamer``, else ``~/.cache/streamer``."""
    if os.environ.get("STREAMER_CACHE"):
        return Path(os.environ["STREAMER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamer"


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """Hash of the network's source: a compiled artefact is stale once the code changes."""
    h = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "m2fp").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def cache_key(checkpoint: Path, canvas_hw: tuple[int, int], engine: str, **options) -> str:
    stat = checkpoint.stat()
    memo = default_cache_dir() / "digests" / (
        hashlib.sha256(f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        .hexdigest()[:16])
    if memo.is_file():
        digest = memo.read_text().strip()
    else:
        digest = file_digest(checkpoint)
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest)
    opts = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    raw = (f"{digest}|{canvas_hw[0]}x{canvas_hw[1]}|torch={torch.__version__}|"
           f"code={code_fingerprint()}|{engine}|{opts}")
    return f"{engine}-{canvas_hw[0]}x{canvas_hw[1]}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


class TorchEngine:
    """Eager PyTorch in ``inference_mode``."""

    name = "torch"

    def __init__(self, net: M2FP, canvas_hw: tuple[int, int], threads: int) -> None:
        self.net = net.eval()
        self.canvas_hw = canvas_hw
        torch.set_num_threads(threads)

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.net(torch.from_numpy(batch))


class TorchScriptEngine:
    """``torch.jit.trace`` at the canvas size, saved to the cache and reloaded next time."""

    name = "torchscript"

    def __init__(
        self, net: M2FP, canvas_hw: tuple[int, int], threads: int, checkpoint: Path,
        cache_dir: Path,
    ) -> None:
        self.canvas_hw = canvas_hw
        torch.set_num_threads(threads)
        path = cache_dir / (cache_key(checkpoint, canvas_hw, self.name) + ".pt")
        # TorchScript is deprecated upstream in favour of torch.export, but it is still the
        # fastest traced path on CPU here; the per-call warnings say nothing to our users.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if path.is_file():
                self.module = torch.jit.load(str(path), map_location="cpu")
            else:
                started = time.perf_counter()
                example = torch.zeros(1, 3, *canvas_hw)
                with torch.no_grad():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.freeze(
                        torch.jit.trace(net.eval(), example, check_trace=False))
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.jit.save(traced, str(tmp))
                tmp.replace(path)
                log.info("traced M2FP at %s in %.1f s -> %s", canvas_hw,
                         time.perf_counter() - started, path)
                self.module = traced
        self.module.eval()

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch))


def export_onnx(net: M2FP, canvas_hw: tuple[int, int], path: Path) -> None:
    """Export with a dynamic batch axis through the TorchScript-based exporter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    example = torch.zeros(1, 3, *canvas_hw)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(), (example,), str(tmp), opset_version=ONNX_OPSET, dynamo=False,
            input_names=["images"], output_names=["pred_logits", "pred_masks"],
            dynamic_axes={"images": {0: "batch"}, "pred_logits": {0: "batch"},
                          "pred_masks": {0: "batch"}},
        )
    tmp.replace(path)


class OnnxRuntimeEngine:
    """ONNX Runtime on the CPU with an exported graph cached on disk."""

    name = "onnxruntime"

    def __init__(
        self, net: M2FP, canvas_hw: tuple[int, int], threads: int, checkpoint: Path,
        cache_dir: Path,
    ) -> None:
        import onnxruntime as ort

        self.canvas_hw = canvas_hw
        path = cache_dir / (cache_key(checkpoint, canvas_hw, self.name, opset=ONNX_OPSET) + ".onnx")
        if not path.is_file():
            started = time.perf_counter()
            export_onnx(net, canvas_hw, path)
            log.info("exported M2FP to ONNX at %s in %.1f s -> %s", canvas_hw,
                     time.perf_counter() - started, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, masks = self.session.run(None, {"images": np.ascontiguousarray(batch)})
        return torch.from_numpy(logits), torch.from_numpy(masks)


def create_engine(
    name: str,
    net: M2FP,
    canvas_hw: tuple[int, int],
    checkpoint: Path,
    *,
    threads: int,
    cache_dir: Path | None = None,
) -> Engine:
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if name == "torch":
        return TorchEngine(net, canvas_hw, threads)
    if name == "torchscript":
        return TorchScriptEngine(net, canvas_hw, threads, checkpoint, cache)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(net, canvas_hw, threads, checkpoint, cache)
    raise ConfigError(f"parser.engine must be one of {', '.join(ENGINES)}, not {name!r}")
