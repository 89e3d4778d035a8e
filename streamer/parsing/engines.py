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

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import json
import logging
import mmap
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from streamer.core.errors import ConfigError, ModelError
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
#: OpenVINO, latency hint: compile a static shape for every batch size and run n crops in one
#: call (True), or run them one by one through the batch-1 model (False). Measured on the
#: 2-core machine (full R101), one call of 2 crops saved about 3% per crop, while each extra
#: batch shape costs a compile (or a blob import at every start) and about 0.5 GB of memory.
OPENVINO_STATIC_BATCHES = False
#: OpenVINO bf16 runs in two compiled parts: the backbone and pixel decoder (nearly all the
#: FLOPs) in bf16, the masked-attention transformer decoder in fp32. Measured on 7 benchmark
#: crops (full R101, random weights, AMX): all bf16 0.239 s per crop at 98.92% label agreement
#: with fp32; this split 0.259 s at 99.11%; the backbone alone in bf16 0.363 s at 99.11%.
BF16_PARTS: tuple[tuple[str, str], ...] = (("encoder", "bf16"), ("decoder", "fp32"))
#: Label-pixel agreement with fp32 torch an engine needs to be a default (issue #2).
AGREEMENT_GATE = 0.995


NetSource = M2FP | Callable[[], M2FP]
"""The network, or a function that loads it: engines found in the cache never call it."""


def materialise(net: NetSource) -> M2FP:
    return net if isinstance(net, M2FP) else net()


class Engine(Protocol):
    name: str
    canvas_hw: tuple[int, int]

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


def default_cache_dir() -> Path:
    """``$STREAMER_CACHE``, else ``$XDG_CACHE_HOME/streamer``, else ``~/.cache/streamer``."""
    if os.environ.get("STREAMER_CACHE"):
        return Path(os.environ["STREAMER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamer"


#: torch.onnx.export keeps process-wide state: two exports at once in one process fail.
_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """The exclusive right to build the cache entry ``path``, across threads and processes.

    ``fcntl.flock`` on ``<path>.lock`` next to it: workers of one ``serve`` (threads, each its
    own open file, so they exclude each other too) and ``batch`` worker processes sharing the
    cache build an entry once; the others wait here and then find it built. The kernel drops
    the lock if its holder dies. Callers check again for the entry once they hold the lock.

    Example:
        >>> with building(blob):
        ...     if not blob.is_file():
        ...         compile_into(blob)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "ab") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another worker building %s", path.name)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def written_through(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary name next to ``path`` to write; moved onto ``path`` (``os.replace``,
    atomic) when the block ends, removed if it raises. Readers never see a partial file.

    Example:
        >>> with written_through(blob) as tmp:
        ...     tmp.write_bytes(data)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    for path in sorted((Path(__file__).parent.parent / "m2fp").glob("*.py")):
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
        with written_through(memo) as tmp:  # a reader at the same time sees all or nothing
            tmp.write_text(digest)
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
            traced = None
            if not path.is_file():
                with building(path):
                    if not path.is_file():  # not traced by another worker while this waited
                        traced = self._trace(net, canvas_hw, path)
            self.module = traced or torch.jit.load(str(path), map_location="cpu")
        self.module.eval()

    @staticmethod
    def _trace(net: NetSource, canvas_hw: tuple[int, int], path: Path) -> torch.jit.ScriptModule:
        notice.info("tracing the TorchScript engine at %dx%d (once; later runs load it from the "
                    "cache)...", canvas_hw[1], canvas_hw[0])
        started = time.perf_counter()
        example = torch.zeros(1, 3, *canvas_hw)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(
                torch.jit.trace(materialise(net).eval(), example, check_trace=False))
        with written_through(path) as tmp:
            torch.jit.save(traced, str(tmp))
        log.info("traced M2FP at %s in %.1f s -> %s", canvas_hw,
                 time.perf_counter() - started, path)
        return traced

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch))


class _Encoder(torch.nn.Module):
    """The backbone and pixel decoder: images -> (mask features, *levels)."""

    def __init__(self, net: M2FP) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        features = net.backbone((images - net.pixel_mean) / net.pixel_std)
        mask_features, levels = net.sem_seg_head.pixel_decoder(features)
        return (mask_features, *levels)


class _Decoder(torch.nn.Module):
    """The masked-attention transformer decoder: (mask features, *levels) -> its predictions."""

    def __init__(self, net: M2FP) -> None:
        super().__init__()
        self.net = net

    def forward(self, mask_features: torch.Tensor, *levels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.sem_seg_head.predictor(list(levels), mask_features)


#: The parts ``export_onnx`` can write: the whole network, or it cut in two where the pixel
#: decoder hands its feature levels to the transformer decoder.
ONNX_PARTS = ("whole", "encoder", "decoder")


def export_onnx(net: NetSource, canvas_hw: tuple[int, int], path: Path,
                part: str = "whole") -> None:
    """Export ``part`` of the network with a dynamic batch axis (TorchScript-based exporter)."""
    if part not in ONNX_PARTS:
        raise ValueError(f"part must be one of {', '.join(ONNX_PARTS)}, not {part!r}")
    network = materialise(net).eval()
    images = torch.zeros(1, 3, *canvas_hw)
    if part == "whole":
        module: torch.nn.Module = network
        example: tuple[torch.Tensor, ...] = (images,)
        inputs, outputs = ["images"], ["pred_logits", "pred_masks"]
    else:
        with torch.no_grad():
            encoded = _Encoder(network)(images)
        levels = [f"level{i}" for i in range(len(encoded) - 1)]
        if part == "encoder":
            module, example = _Encoder(network), (images,)
            inputs, outputs = ["images"], ["mask_features", *levels]
        else:
            module, example = _Decoder(network), encoded
            inputs, outputs = ["mask_features", *levels], ["pred_logits", "pred_masks"]
    with (written_through(path, ".tmp.onnx") as tmp, _EXPORT_LOCK, torch.no_grad(),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(tmp), opset_version=ONNX_OPSET, dynamo=False,
            input_names=inputs, output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
        )


def onnx_model(
    net: NetSource, canvas_hw: tuple[int, int], checkpoint: Path, cache_dir: Path,
    part: str = "whole",
) -> Path:
    """The cached fp32 ONNX export of ``part`` (dynamic batch), exported on first use.

    Example:
        >>> onnx_model(net, (512, 384), model_dir / "pytorch_model.pt", default_cache_dir())
        PosixPath('.../onnxruntime-512x384-....onnx')
    """
    parts = {} if part == "whole" else {"part": part}
    path = cache_dir / (cache_key(checkpoint, canvas_hw, "onnxruntime", opset=ONNX_OPSET,
                                  **parts) + ".onnx")
    if not path.is_file():
        with building(path):
            if not path.is_file():  # not exported by another worker while this one waited
                notice.info("exporting the model to ONNX at %dx%d (once; later runs load it "
                            "from the cache)...", canvas_hw[1], canvas_hw[0])
                started = time.perf_counter()
                export_onnx(net, canvas_hw, path, part)
                log.info("exported M2FP (%s) to ONNX at %s in %.1f s -> %s", part, canvas_hw,
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


def map_read_only(path: Path) -> tuple[mmap.mmap, np.ndarray]:
    """``path`` mapped read-only, and a uint8 array over the mapping for ``ov.Tensor``.

    Importing a compiled blob from a mapping instead of bytes read into memory means it is
    never in memory twice: the CPU plugin reads some weights straight from the mapped pages
    (peak RSS while importing the full R101 in fp32: 1.46 GB from bytes, 1.17 GB mapped). The
    array claims to be writeable because ``ov.Tensor`` will not share a read-only one; the pages
    are not, so a write would fault at once instead of silently changing the model.
    """
    with open(path, "rb") as f:
        blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    address = np.frombuffer(blob, np.uint8).ctypes.data
    view = np.ctypeslib.as_array((ctypes.c_uint8 * len(blob)).from_address(address))
    return blob, view


def release_pages(blob: mmap.mmap) -> None:
    """Drop a read-only mapping's resident pages: those the model still reads come back from
    the page cache on first touch (about 130 of 300 MB for the full R101 in fp32), the rest
    were only read while importing. Steady RSS 1.24 GB -> 1.08 GB."""
    if hasattr(mmap, "MADV_DONTNEED"):
        blob.madvise(mmap.MADV_DONTNEED)


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``, older name ``DNNL_MAX_CPU_ISA``) without native
#: bf16. OpenVINO still lists BF16 under them (it reads CPUID), yet with the cap at AVX2 it
#: cannot compile a bf16 model ("object is not initialized"), so bf16 must fall back to fp32.
ISA_CAPS_WITHOUT_BF16 = frozenset({
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO reports native bf16 for this CPU (AVX512-BF16 or AMX), and no oneDNN
    ISA cap in the environment takes it away (read once per process, as oneDNN does).

    Example:
        >>> cpu_has_bf16()  # Sapphire Rapids; False with ONEDNN_MAX_CPU_ISA=AVX2
        True
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if cap.strip().upper() in ISA_CAPS_WITHOUT_BF16:
        return False
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
    imports it instead of compiling. bf16 runs the network as two compiled parts (see
    ``BF16_PARTS``). Batch 1 is built at construction. Several crops run one by one through it
    with the latency hint (or, with ``static_batches``, through a shape compiled for their
    number on first use), and on parallel infer requests with the throughput hint. Each
    compiled shape keeps its infer requests and reuses them call after call.

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
        #: (part, inference precision) run in turn; each part's output feeds the next.
        self.parts: tuple[tuple[str, str], ...] = (
            BF16_PARTS if precision == "bf16" else (("whole", precision),))
        # fp32 and bf16 compile the ONNX exports, which the cache key already identifies; they
        # are only read (or exported) when a batch size has no compiled blob yet.
        self.sources: dict[str, Path] = {}
        if precision == "int8":
            source = _int8_model(self.name, checkpoint, canvas_hw, cache_dir)
            self.sources["whole"] = source
            stat = source.stat()
            # A recalibrated int8 model is a new source: its old blobs must not be reused.
            self._key_options["source"] = f"{source.name}:{stat.st_size}:{stat.st_mtime_ns}"
        self._compiled: dict[int, list] = {}
        self._blobs: list[mmap.mmap] = []  # mapped compiled blobs, alive with the model
        self._requests: dict[int, list[list]] = {}
        self.compiled_now: list[int] = []  # batch sizes compiled (not loaded) by this engine
        self.static_batches = OPENVINO_STATIC_BATCHES if static_batches is None else static_batches
        self.compiled(1)  # every use needs batch 1: build or load it now, not on the first frame

    def _config(self, precision: str) -> dict[str, object]:
        # Inference precision is always explicit: on a CPU with bf16, OpenVINO's default is bf16
        # even for an fp32 model, and int8 models keep their unquantised layers in fp32.
        return {
            "PERFORMANCE_HINT": self.perf_hint.upper(),
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }

    def blob_path(self, batch: int, part: str | None = None) -> Path:
        """Where the compiled ``part`` (default: the first) for ``batch`` crops is cached."""
        part = part or self.parts[0][0]
        parts = {} if part == "whole" else {"part": part}
        key = cache_key(self._checkpoint, self.canvas_hw, self.name, batch=batch,
                        **self._key_options, **parts)
        return self._cache_dir / f"{key}.blob"

    def compiled(self, batch: int) -> list:
        """The parts compiled for ``batch`` crops: imported from the cache, or compiled once."""
        compiled = self._compiled.get(batch)
        if compiled is None:
            compiled = [self._compile(batch, part, precision) for part, precision in self.parts]
            self._compiled[batch] = compiled
        return compiled

    def _import(self, path: Path, precision: str, warn: bool):
        """The compiled model from the blob at ``path``, or ``None`` if there is none (or it
        is from another OpenVINO build, or damaged: then it is compiled again)."""
        if not path.is_file():
            return None
        try:
            blob, view = map_read_only(path)
            compiled = self.core.import_model(
                _openvino().Tensor(view, shared_memory=True), "CPU", self._config(precision)
            )
        except (RuntimeError, ValueError, OSError) as exc:
            if warn:
                log.warning("recompiling: cannot import %s (%s)", path.name,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else "error")
            return None
        release_pages(blob)
        self._blobs.append(blob)
        return compiled

    def _compile(self, batch: int, part: str, precision: str):
        path = self.blob_path(batch, part)
        compiled = self._import(path, precision, warn=False)
        if compiled is not None:
            return compiled
        # One worker compiles; the others wait for the lock and then import its blob.
        with building(path):
            compiled = self._import(path, precision, warn=True)
            if compiled is None:
                compiled = self._compile_into(path, batch, part, precision)
        return compiled

    def _compile_into(self, path: Path, batch: int, part: str, precision: str):
        notice.info("compiling the OpenVINO engine (%s, %s, batch %d; once, later runs load "
                    "it from the cache)...", part, precision, batch)
        started = time.perf_counter()
        source = self.sources.get(part)
        if source is None:
            source = onnx_model(self._net, self.canvas_hw, self._checkpoint, self._cache_dir,
                                part)
            self.sources[part] = source
        # Read afresh for each compile and dropped after: once compiled, holding the source
        # graph would only keep another copy of the weights in memory.
        model = self.core.read_model(str(source))
        model.reshape({port: [batch, *port.get_partial_shape()[1:]] for port in model.inputs})
        compiled = self.core.compile_model(model, "CPU", self._config(precision))
        with written_through(path) as tmp:
            tmp.write_bytes(compiled.export_model().getbuffer())
        if batch not in self.compiled_now:
            self.compiled_now.append(batch)
        log.info("compiled M2FP (%s) for OpenVINO (%s, batch %d) in %.1f s -> %s",
                 part, precision, batch, time.perf_counter() - started, path)
        return compiled

    def _requests_for(self, batch: int) -> list[list]:
        """Infer requests for ``batch`` crops, each a chain with one request per part."""
        chains = self._requests.get(batch)
        if chains is None:
            compiled = self.compiled(batch)
            count = 1
            if self.perf_hint == "throughput":
                count = max(1, int(compiled[0].get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            chains = [[part.create_infer_request() for part in compiled] for _ in range(count)]
            self._requests[batch] = chains
        return chains

    @staticmethod
    def _infer(chain: list, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # share_inputs avoids a copy of the batch; a part's outputs feed the next part from
        # the request's own buffers, and the last part's outputs are copied, because a
        # request's buffers are overwritten by its next call.
        inputs: dict[int, np.ndarray] = {0: batch}
        for request in chain[:-1]:
            out = request.infer(inputs, share_inputs=True, share_outputs=True)
            inputs = {i: out[i] for i in range(len(out))}
        out = chain[-1].infer(inputs, share_inputs=True)
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = np.ascontiguousarray(batch, np.float32)
        n = batch.shape[0]
        if n > 1 and self.perf_hint == "throughput":
            return self._parallel(batch)
        if n > 1 and not self.static_batches:
            return self._one_by_one(batch)
        return self._infer(self._requests_for(n)[0], batch)

    def _one_by_one(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Latency hint: crops through the batch-1 model in turn (see OPENVINO_STATIC_BATCHES)."""
        chain = self._requests_for(1)[0]
        outs = [self._infer(chain, batch[i:i + 1]) for i in range(batch.shape[0])]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _parallel(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Throughput hint: one crop per request chain, the chains running on parallel streams."""
        chains = self._requests_for(1)
        logits: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        for start in range(0, batch.shape[0], len(chains)):
            group = batch[start:start + len(chains)]
            busy = chains[:len(group)]
            inputs: list[dict[int, np.ndarray]] = [{0: crop[None]} for crop in group]
            for step in range(len(self.parts)):
                for chain, values in zip(busy, inputs, strict=True):
                    chain[step].start_async(values, share_inputs=True)
                for chain in busy:
                    chain[step].wait()
                inputs = [{i: t.data for i, t in enumerate(chain[step].output_tensors)}
                          for chain in busy]
            for values in inputs:
                logits.append(values[0].copy())
                masks.append(values[1].copy())
        return torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(masks))


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
