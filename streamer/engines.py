"""Inference engines for the M2FP network on a fixed canvas.

Each engine maps a float32 batch ``(N, 3, H, W)`` of RGB pixel values (0..255) on one fixed
canvas to ``(pred_logits, pred_masks)`` as torch tensors. Fixing the canvas is what makes
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

import functools
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from streamer.errors import ConfigError, ModelError
from streamer.m2fp.model import M2FP

log = logging.getLogger("streamer.engines")

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
#: OpenVINO, latency hint: compile a static shape for every batch size and run n crops in one
#: call (True), or run them one by one through the batch-1 model (False). Measured on the
#: 2-core machine (full R101), one call of 2 crops saved about 3% per crop, while each extra
#: batch shape costs a compile (or a blob import at every start) and about 0.5 GB of memory.
OPENVINO_STATIC_BATCHES = False
#: Label-pixel agreement with fp32 torch an engine needs to be a default (issue #2).
AGREEMENT_GATE = 0.995


NetSource = M2FP | Callable[[], M2FP]
"""The network, or a function that loads it: engines found in the cache never call it."""


def materialise(net: NetSource) -> M2FP:
    return net if isinstance(net, torch.nn.Module) else net()


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

    def __init__(self, net: NetSource, canvas_hw: tuple[int, int], threads: int) -> None:
        self.net = materialise(net).eval()
        self.canvas_hw = canvas_hw
        torch.set_num_threads(threads)

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.net(torch.from_numpy(batch))


class TorchScriptEngine:
    """``torch.jit.trace`` at the canvas size, saved to the cache and reloaded next time."""

    name = "torchscript"

    def __init__(
        self, net: NetSource, canvas_hw: tuple[int, int], threads: int, checkpoint: Path,
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
                        torch.jit.trace(materialise(net).eval(), example, check_trace=False))
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


def export_onnx(net: NetSource, canvas_hw: tuple[int, int], path: Path) -> None:
    """Export with a dynamic batch axis through the TorchScript-based exporter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    example = torch.zeros(1, 3, *canvas_hw)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            materialise(net).eval(), (example,), str(tmp), opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=["images"], output_names=["pred_logits", "pred_masks"],
            dynamic_axes={"images": {0: "batch"}, "pred_logits": {0: "batch"},
                          "pred_masks": {0: "batch"}},
        )
    tmp.replace(path)


def onnx_model(
    net: NetSource, canvas_hw: tuple[int, int], checkpoint: Path, cache_dir: Path,
) -> Path:
    """The cached fp32 ONNX export (dynamic batch), exported on first use.

    Example:
        >>> onnx_model(net, (512, 384), model_dir / "pytorch_model.pt", default_cache_dir())
        PosixPath('.../onnxruntime-512x384-....onnx')
    """
    path = cache_dir / (cache_key(checkpoint, canvas_hw, "onnxruntime", opset=ONNX_OPSET)
                        + ".onnx")
    if not path.is_file():
        started = time.perf_counter()
        export_onnx(net, canvas_hw, path)
        log.info("exported M2FP to ONNX at %s in %.1f s -> %s", canvas_hw,
                 time.perf_counter() - started, path)
    return path


def int8_model_path(engine: str, checkpoint: Path, canvas_hw: tuple[int, int],
                    cache_dir: Path) -> Path:
    """Where ``streamer.calibrate`` writes, and the engine looks for, the int8 model.

    ONNX Runtime reads a quantised ``.onnx``, OpenVINO an IR ``.xml`` (+ ``.bin``). A ``.json``
    beside it records the calibration (footage, crops, agreement with fp32 torch).

    Example:
        >>> int8_model_path("openvino", checkpoint, (512, 384), default_cache_dir()).suffix
        '.xml'
    """
    suffix = {"onnxruntime": ".onnx", "openvino": ".xml"}[engine]
    key = cache_key(checkpoint, canvas_hw, engine, precision="int8", opset=ONNX_OPSET)
    return cache_dir / f"{key}{suffix}"


def calibration_record(model_path: Path) -> dict:
    """The ``.json`` written beside an int8 model by ``streamer.calibrate`` ({} if none)."""
    try:
        return json.loads(model_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _int8_model(engine: str, checkpoint: Path, canvas_hw: tuple[int, int],
                cache_dir: Path) -> Path:
    path = int8_model_path(engine, checkpoint, canvas_hw, cache_dir)
    if not path.is_file():
        raise ConfigError(
            f"parser.precision int8 with parser.engine {engine} needs a calibrated model for "
            f"{checkpoint.parent}, and there is none in {cache_dir}",
            hint=f"calibrate it once on your own footage: python -m streamer.calibrate "
                 f"--model {checkpoint.parent} --source VIDEO_OR_FOLDER --engine {engine}")
    agreement = calibration_record(path).get("agreement_vs_torch")
    if agreement is not None and agreement < AGREEMENT_GATE:
        log.warning("the int8 %s model agrees with fp32 torch on %.2f%% of held-out label "
                    "pixels, under the %.1f%% gate for a default: check it on your footage",
                    engine, 100 * agreement, 100 * AGREEMENT_GATE)
    return path


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
            path = _int8_model(self.name, checkpoint, canvas_hw, cache_dir)
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

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, masks = self.session.run(None, {"images": np.ascontiguousarray(batch)})
        return torch.from_numpy(logits), torch.from_numpy(masks)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ModelError("parser.engine openvino needs the openvino package",
                         hint="pip install openvino") from None
    return openvino


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO reports native bf16 for this CPU (AVX512-BF16 or AMX)."""
    ov = _openvino()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@functools.cache
def _warn_no_bf16() -> None:
    log.warning("this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16): "
                "parser.precision bf16 runs as fp32")


class OpenVinoEngine:
    """OpenVINO on the CPU: fp32, bf16 or calibrated int8, compiled for static input shapes.

    The network is read from the cached ONNX export (or the int8 IR written by
    ``streamer.calibrate``), reshaped to a static ``(n, 3, H, W)``, compiled with the precision,
    performance hint and thread count, and the compiled blob is cached on disk: the next start
    imports it instead of compiling. Batch 1 is built at construction. Several crops run one by
    one through it with the latency hint (or, with ``static_batches``, through a shape compiled
    for their number on first use), and on parallel infer requests with the throughput hint.
    Each compiled shape keeps its infer requests and reuses them call after call.

    Example:
        >>> engine = OpenVinoEngine(net, (512, 384), 2, checkpoint, cache_dir, "fp32", "latency")
        >>> logits, masks = engine(batch)       # (n, 3, 512, 384) float32, 0..255
    """

    name = "openvino"

    def __init__(
        self, net: NetSource, canvas_hw: tuple[int, int], threads: int, checkpoint: Path,
        cache_dir: Path, precision: str = "fp32", perf_hint: str = "latency",
        static_batches: bool | None = None,
    ) -> None:
        ov = _openvino()
        self.canvas_hw = canvas_hw
        if precision == "bf16" and not cpu_has_bf16():
            _warn_no_bf16()
            precision = "fp32"
        self.precision = precision
        self.perf_hint = perf_hint
        self.threads = threads
        self.core = ov.Core()
        self._net = net
        self._checkpoint = checkpoint
        self._cache_dir = cache_dir
        self._key_options: dict[str, object] = {
            "precision": precision, "hint": perf_hint, "threads": threads,
            "openvino": ov.get_version().split("-")[0],
        }
        # fp32 and bf16 compile the ONNX export, which the cache key already identifies; it is
        # only read (or exported) when a batch size has no compiled blob yet.
        self.source: Path | None = None
        if precision == "int8":
            self.source = _int8_model(self.name, checkpoint, canvas_hw, cache_dir)
            stat = self.source.stat()
            # A recalibrated int8 model is a new source: its old blobs must not be reused.
            self._key_options["source"] = f"{self.source.name}:{stat.st_size}:{stat.st_mtime_ns}"
        self._compiled: dict[int, object] = {}
        self._requests: dict[int, list] = {}
        self.compiled_now: list[int] = []  # batch sizes compiled (not loaded) by this engine
        self.static_batches = OPENVINO_STATIC_BATCHES if static_batches is None else static_batches
        self.compiled(1)  # every use needs batch 1: build or load it now, not on the first frame

    def _config(self) -> dict[str, object]:
        # Inference precision is always explicit: on a CPU with bf16, OpenVINO's default is bf16
        # even for an fp32 model, and int8 models keep their unquantised layers in fp32.
        return {
            "PERFORMANCE_HINT": self.perf_hint.upper(),
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
        }

    def blob_path(self, batch: int) -> Path:
        key = cache_key(self._checkpoint, self.canvas_hw, self.name, batch=batch,
                        **self._key_options)
        return self._cache_dir / f"{key}.blob"

    def compiled(self, batch: int):
        """The model compiled for ``batch`` crops: imported from the cache, or compiled once."""
        compiled = self._compiled.get(batch)
        if compiled is not None:
            return compiled
        path = self.blob_path(batch)
        if path.is_file():
            try:
                compiled = self.core.import_model(path.read_bytes(), "CPU", self._config())
            except RuntimeError as exc:  # written by another OpenVINO build, or damaged
                log.warning("recompiling: cannot import %s (%s)", path.name,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else "error")
        if compiled is None:
            started = time.perf_counter()
            if self.source is None:
                self.source = onnx_model(self._net, self.canvas_hw, self._checkpoint,
                                         self._cache_dir)
            # Read afresh for each compile and dropped after: once compiled, holding the source
            # graph would only keep another copy of the weights in memory.
            model = self.core.read_model(str(self.source))
            model.reshape([batch, 3, *self.canvas_hw])
            compiled = self.core.compile_model(model, "CPU", self._config())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(compiled.export_model().getbuffer())
            tmp.replace(path)
            self.compiled_now.append(batch)
            log.info("compiled M2FP for OpenVINO (%s, batch %d) in %.1f s -> %s",
                     self.precision, batch, time.perf_counter() - started, path)
        self._compiled[batch] = compiled
        return compiled

    def _requests_for(self, batch: int) -> list:
        requests = self._requests.get(batch)
        if requests is None:
            compiled = self.compiled(batch)
            count = 1
            if self.perf_hint == "throughput":
                count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            requests = [compiled.create_infer_request() for _ in range(count)]
            self._requests[batch] = requests
        return requests

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = np.ascontiguousarray(batch, np.float32)
        n = batch.shape[0]
        if n > 1 and self.perf_hint == "throughput":
            return self._parallel(batch)
        if n > 1 and not self.static_batches:
            return self._one_by_one(batch)
        request = self._requests_for(n)[0]
        # share_inputs avoids a copy of the batch; outputs are copied, because the request's
        # own output buffers are overwritten by its next call.
        out = request.infer({0: batch}, share_inputs=True)
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])

    def _one_by_one(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Latency hint: crops through the batch-1 model in turn (see OPENVINO_STATIC_BATCHES)."""
        request = self._requests_for(1)[0]
        outs = [request.infer({0: batch[i:i + 1]}, share_inputs=True)
                for i in range(batch.shape[0])]
        return (torch.from_numpy(np.concatenate([o[0] for o in outs])),
                torch.from_numpy(np.concatenate([o[1] for o in outs])))

    def _parallel(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Throughput hint: one crop per request, the requests running on parallel streams."""
        requests = self._requests_for(1)
        logits: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        for start in range(0, batch.shape[0], len(requests)):
            busy = []
            for request, crop in zip(requests, batch[start:start + len(requests)], strict=False):
                request.start_async({0: crop[None]}, share_inputs=True)
                busy.append(request)
            for request in busy:
                request.wait()
                logits.append(request.get_output_tensor(0).data.copy())
                masks.append(request.get_output_tensor(1).data.copy())
        return torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(masks))


def check_engine_options(engine: str, precision: str = "fp32", perf_hint: str = "latency") -> None:
    """ConfigError naming the key for an unknown engine, precision or hint, or a pair of
    engine and precision that does not exist.

    Example:
        >>> check_engine_options("torch", "int8")
        Traceback (most recent call last):
        streamer.errors.ConfigError: parser.precision int8 is not available with ...
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
        return TorchEngine(net, canvas_hw, threads)
    if name == "torchscript":
        return TorchScriptEngine(net, canvas_hw, threads, checkpoint, cache)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(net, canvas_hw, threads, checkpoint, cache, precision)
    return OpenVinoEngine(net, canvas_hw, threads, checkpoint, cache, precision, perf_hint)
