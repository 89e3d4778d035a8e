"""The OpenVINO engine: fp32, bf16 or calibrated int8, compiled once and cached as a blob.

Example:
    >>> engine = OpenVinoEngine(net, (512, 384), 2, checkpoint, default_cache_dir())
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamer.core.errors import ModelError
from streamer.parsing.engines.base import NetSource, log, notice
from streamer.parsing.engines.cache import (
    building,
    cache_key,
    int8_model,
    map_read_only,
    onnx_model,
    release_pages,
    written_through,
)

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


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ModelError("parser.engine openvino needs the openvino package",
                         hint="pip install openvino") from None
    return openvino


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``, older name ``DNNL_MAX_CPU_ISA``) without native
#: bf16. OpenVINO still lists BF16 under them (it reads CPUID), yet with the cap at AVX2 it
#: cannot compile a bf16 model ("object is not initialized"), so bf16 must fall back to fp32.
ISA_CAPS_WITHOUT_BF16 = frozenset({
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def isa_cap() -> str:
    """The oneDNN ISA cap in the environment, upper-case ('' when there is none).

    Example:
        >>> isa_cap()  # with ONEDNN_MAX_CPU_ISA=avx2
        'AVX2'
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO reports native bf16 for this CPU (AVX512-BF16 or AMX), and no oneDNN
    ISA cap in the environment takes it away (read once per process, as oneDNN does).

    Example:
        >>> cpu_has_bf16()  # Sapphire Rapids; False with ONEDNN_MAX_CPU_ISA=AVX2
        True
    """
    if isa_cap() in ISA_CAPS_WITHOUT_BF16:
        return False
    ov = _openvino()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@functools.cache
def _warn_no_bf16() -> None:
    log.warning("this CPU has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16): "
                "parser.precision bf16 runs as fp32")


class RequestPool:
    """A compiled shape's infer request chains (one request per part each), handed out to
    callers in any thread: :meth:`take` gives up to ``wanted`` free chains, at least one
    (waiting for it while other calls hold them all), and takes them back afterwards.

    Example:
        >>> with pool.take(wanted=2) as chains:
        ...     ...   # run one crop on each chain
    """

    def __init__(self, chains: list[list]) -> None:
        self.size = len(chains)
        self._free: queue.SimpleQueue[list] = queue.SimpleQueue()
        for chain in chains:
            self._free.put(chain)

    @contextlib.contextmanager
    def take(self, wanted: int = 1) -> Iterator[list[list]]:
        taken = [self._free.get()]
        try:
            while len(taken) < wanted:
                try:
                    taken.append(self._free.get_nowait())
                except queue.Empty:
                    break
            yield taken
        finally:
            for chain in taken:
                self._free.put(chain)


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

    Thread safety: calls may come from several threads at once. Each call takes a free infer
    request chain from the shape's :class:`RequestPool` (and returns it after), so with the
    throughput hint :attr:`concurrency` calls run side by side on one compiled network (the
    parse slots of :class:`~streamer.parsing.scheduler.ParseScheduler` share it this way);
    with the latency hint there is one chain and calls take turns.

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
        if isa_cap():
            # A blob compiled under an ISA cap holds other kernels: OpenVINO cannot import a
            # native blob under the cap (it recompiles), so each keeps its own cache entry.
            self._key_options["isa_cap"] = isa_cap()
        #: (part, inference precision) run in turn; each part's output feeds the next.
        self.parts: tuple[tuple[str, str], ...] = (
            BF16_PARTS if precision == "bf16" else (("whole", precision),))
        # fp32 and bf16 compile the ONNX exports, which the cache key already identifies; they
        # are only read (or exported) when a batch size has no compiled blob yet.
        self.sources: dict[str, Path] = {}
        if precision == "int8":
            source = int8_model(self.name, checkpoint, canvas_hw, cache_dir)
            self.sources["whole"] = source
            stat = source.stat()
            # A recalibrated int8 model is a new source: its old blobs must not be reused.
            self._key_options["source"] = f"{source.name}:{stat.st_size}:{stat.st_mtime_ns}"
        self._compiled: dict[int, list] = {}
        self._blobs: list[mmap.mmap] = []  # mapped compiled blobs, alive with the model
        self._pools: dict[int, RequestPool] = {}  # each compiled shape's infer requests
        self._build_lock = threading.RLock()  # compiling a shape, creating its requests
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
            with self._build_lock:
                compiled = self._compiled.get(batch)
                if compiled is None:
                    compiled = [self._compile(batch, part, precision)
                                for part, precision in self.parts]
                    self._compiled[batch] = compiled
        return compiled

    @property
    def concurrency(self) -> int:
        """How many calls can run at once on parallel infer requests (1 with the latency
        hint; OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS with the throughput hint)."""
        return self._pool(1).size

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

    def _pool(self, batch: int) -> RequestPool:
        """The infer requests for ``batch`` crops, created on first use."""
        pool = self._pools.get(batch)
        if pool is None:
            with self._build_lock:
                pool = self._pools.get(batch)
                if pool is None:
                    compiled = self.compiled(batch)
                    count = 1
                    if self.perf_hint == "throughput":
                        count = max(1, int(compiled[0].get_property(
                            "OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
                    pool = RequestPool([[part.create_infer_request() for part in compiled]
                                        for _ in range(count)])
                    self._pools[batch] = pool
        return pool

    @staticmethod
    def _infer(chain: list, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # share_inputs avoids a copy of the batch; a part's outputs feed the next part from
        # the request's own buffers, and the last part's outputs are copied, because a
        # request's buffers are overwritten by its next call.
        inputs: dict[int, np.ndarray] = {0: batch}
        for request in chain[:-1]:
            out = request.infer(inputs, share_inputs=True, share_outputs=True)
            inputs = {i: out[i] for i in range(len(out))}
        out = chain[-1].infer(inputs, share_inputs=True)
        return out[0], out[1]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(batch, np.float32)
        n = batch.shape[0]
        if n > 1 and self.perf_hint == "throughput":
            return self._parallel(batch)
        if n > 1 and not self.static_batches:
            return self._one_by_one(batch)
        with self._pool(n).take() as (chain,):
            return self._infer(chain, batch)

    def _one_by_one(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latency hint: crops through the batch-1 model in turn (see OPENVINO_STATIC_BATCHES)."""
        with self._pool(1).take() as (chain,):
            outs = [self._infer(chain, batch[i:i + 1]) for i in range(batch.shape[0])]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def _parallel(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Throughput hint: one crop per request chain, the chains running on parallel streams
        (as many chains as are free: other threads' calls may hold some)."""
        with self._pool(1).take(wanted=batch.shape[0]) as chains:
            return self._run_parallel(chains, batch)

    def _run_parallel(self, chains: list[list], batch: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
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
        return np.concatenate(logits), np.concatenate(masks)
