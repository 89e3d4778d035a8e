"""The person detectors on ONNX Runtime: the fallback to (or replacement for) OpenVINO.

:func:`onnx_model` converts a TF.js detector once (:mod:`streamer.vision.tfjs_onnx`) and keeps
the ``.onnx`` in the detector cache (``onnx/`` under
:func:`~streamer.vision.detector_models.detectors_dir`), named by the weights, the converter's
code and the ``onnx`` version. :func:`onnxruntime_net` loads it into one
``onnxruntime.InferenceSession`` per model and thread count (as the parser's engine does: the
intra-op threads given, one inter-op thread, all graph optimisations), shared by every input
shape: the converted graphs keep TensorFlow's free input dimensions (MoveNet's height and
width), so MoveNet's padded shapes need no session each.

:class:`OnnxRuntimeNet` offers the part of OpenVINO's ``CompiledModel`` API that the detector
classes use (``outputs[i].get_shape()``, ``create_infer_request()``, ``infer({0: blob})``,
``get_output_tensor(i).data``), so they do not know which backend produced their raw outputs.

Example:
    >>> net = onnxruntime_net(Path(".../nanodet.json"), [1, 3, 416, 416], threads=2)
    >>> request = net.create_infer_request()
    >>> request.infer({0: blob})
    >>> scores = request.get_output_tensor(0).data
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.errors import ModelError

log = logging.getLogger("streamer.detector_ort")

__all__ = ["OnnxRuntimeNet", "onnx_model", "onnxruntime_net"]

_LOCK = threading.Lock()
_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


@functools.cache
def _converter_tag() -> str:
    import onnx

    from streamer.vision import onnx_build, tfjs, tfjs_onnx, tfjs_onnx_ops

    h = hashlib.sha256(onnx.__version__.encode())
    for module in (tfjs, tfjs_onnx, tfjs_onnx_ops, onnx_build):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()[:12]


def _weights_tag(model_json: Path) -> str:
    """Which weights: the model files' resolved paths, sizes and modification times."""
    parts = []
    for path in (model_json, model_json.with_suffix(".bin")):
        stat = path.stat()
        parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def onnx_model(model_json: Path) -> Path:
    """The ONNX file of a TF.js detector model: converted once, then read from the cache.

    Example:
        >>> onnx_model(Path(".../nanodet.json")).name
        'nanodet-3f0c2a9d41b7e2c4.onnx'
    """
    import onnx

    from streamer.vision.detector_models import detectors_dir
    from streamer.vision.tfjs_onnx import convert

    model_json = Path(model_json)
    try:
        tag = hashlib.sha256(f"{_weights_tag(model_json)}|{_converter_tag()}".encode())
    except OSError as exc:
        raise ModelError(f"cannot read the detector model {model_json} ({exc.strerror})",
                         hint="fetch the detectors again: run_stream.py fetch detectors") from None
    path = detectors_dir() / "onnx" / f"{model_json.stem}-{tag.hexdigest()[:16]}.onnx"
    with _LOCK:
        if path.is_file():
            return path
        model = convert(model_json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
            onnx.save(model, str(tmp))
            tmp.replace(path)  # whole or not at all, for a process reading it meanwhile
        except OSError as exc:
            raise ModelError(f"cannot write the converted detector {path} ({exc.strerror})",
                             hint="free disk space or set STREAMER_DETECTORS_DIR") from None
    log.info("converted %s to ONNX %s", model_json.name, path)
    return path


@functools.lru_cache(maxsize=8)
def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Port:
    """An input or output of :class:`OnnxRuntimeNet`: its name and shape."""

    name: str
    shape: tuple[int, ...]

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def get_any_name(self) -> str:
        return self.name


@dataclass
class Tensor:
    """One output of the last :meth:`InferRequest.infer`."""

    data: np.ndarray


class InferRequest:
    """Runs the session; its outputs stay until the next :meth:`infer` (as OpenVINO's)."""

    def __init__(self, net: OnnxRuntimeNet) -> None:
        self.net = net
        self._outputs: list[np.ndarray] = []

    def infer(self, inputs: Any) -> list[np.ndarray]:
        """``inputs``: ``{0: array}``, ``{name: array}``, ``[array]`` or the array itself."""
        if isinstance(inputs, dict):
            (blob,) = inputs.values()
        elif isinstance(inputs, (list, tuple)):
            (blob,) = inputs
        else:
            blob = inputs
        self._outputs = self.net.run(blob)
        return self._outputs

    def get_output_tensor(self, index: int = 0) -> Tensor:
        return Tensor(self._outputs[index])


class OnnxRuntimeNet:
    """A detector graph on ONNX Runtime at ``input_shape``, OpenVINO-compiled-model style.

    The output shapes are read from one run on zeros at ``input_shape`` (which also warms the
    session up for that shape).

    Example:
        >>> net = OnnxRuntimeNet(session, [1, 256, 160, 3])
        >>> [o.get_shape() for o in net.outputs]
        [[1, 6, 56]]
    """

    engine = "onnxruntime"

    def __init__(self, session: Any, input_shape: list[int]) -> None:
        self.session = session
        meta = session.get_inputs()[0]
        if meta.type not in _DTYPES:
            raise ModelError(f"detector input {meta.name} of type {meta.type} is not supported")
        self.input_name = meta.name
        self.dtype = _DTYPES[meta.type]
        self.inputs = [Port(meta.name, tuple(int(d) for d in input_shape))]
        probe = self.run(np.zeros(input_shape, self.dtype))
        self.outputs = [Port(o.name, tuple(int(d) for d in p.shape))
                        for o, p in zip(session.get_outputs(), probe, strict=True)]

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(blob, self.dtype)}
        try:
            return list(self.session.run(None, feed))
        except Exception as exc:  # onnxruntime's own error classes
            raise ModelError(f"ONNX Runtime failed on a detector input of shape "
                             f"{list(np.shape(blob))} ({str(exc).splitlines()[0][:200]})"
                             ) from None

    def __call__(self, inputs: Any) -> list[np.ndarray]:
        return self.create_infer_request().infer(inputs)

    def create_infer_request(self) -> InferRequest:
        return InferRequest(self)


def onnxruntime_net(model_json: Path, input_shape: list[int], threads: int = 0
                    ) -> OnnxRuntimeNet:
    """The detector ``model_json`` on ONNX Runtime, for inputs of ``input_shape``.

    Example:
        >>> net = onnxruntime_net(path, [1, 256, 256, 3], threads=2)
        >>> net([canvas])[0].shape
        (1, 6, 56)
    """
    try:
        import onnxruntime  # noqa: F401  (a clear error before converting anything)
    except ImportError:
        raise ModelError("the detectors' ONNX Runtime backend needs the onnxruntime package",
                         hint="pip install onnxruntime onnx") from None
    path = onnx_model(Path(model_json))
    try:
        session = _session(str(path), int(threads))
    except Exception as exc:  # onnxruntime's own error classes
        raise ModelError(f"ONNX Runtime could not load {path.name} "
                         f"({str(exc).splitlines()[0][:200]})",
                         hint=f"delete {path} to convert it again") from None
    return OnnxRuntimeNet(session, list(input_shape))
