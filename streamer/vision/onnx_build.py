"""Building an ONNX graph from a TensorFlow graph: the tensors and the graph under way.

:class:`Value` is a translated tensor: its ONNX name and a *representative value* computed with
numpy (exact for constants and shape arithmetic, zeros of the right shape on the data path;
:mod:`streamer.vision.tfjs_onnx` explains why). :class:`OnnxGraph` collects the ONNX nodes and
initializers; :func:`attr` reads a TensorFlow node attribute from its JSON form.

Example:
    >>> g = OnnxGraph()
    >>> y = g.emit("Relu", [x], np.maximum(x.rep, 0), "relu")
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FUSED", "TF_TYPES", "OnnxGraph", "Value", "attr", "onnx_type"]

#: TensorFlow DataType names -> numpy dtypes (the ones these graphs use).
TF_TYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64,
            "DT_BOOL": np.bool_}
#: The fused convolutions TF.js writes, and the plain op of their first stage.
FUSED = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
         "_FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}


@dataclass
class Value:
    """A translated tensor: its ONNX name, representative value, and whether it is constant."""

    name: str
    rep: np.ndarray
    const: bool = False


def onnx_type(dtype: Any) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _decode(text: str) -> str:
    return base64.b64decode(text).decode()


def attr(node: dict[str, Any], key: str, default: Any = None) -> Any:
    """A node attribute as plain Python (int, float, bool, str, list, or a dtype name)."""
    value = node.get("attr", {}).get(key)
    if value is None:
        return default
    if "list" in value:
        items = value["list"]
        if "i" in items:
            return [int(i) for i in items["i"]]
        if "s" in items:
            return [_decode(s) for s in items["s"]]
        return [float(f) for f in items.get("f", [])]
    for kind, cast in (("i", int), ("f", float), ("b", bool), ("type", str)):
        if kind in value:
            return cast(value[kind])
    if "s" in value:
        return _decode(value["s"])
    return default


class OnnxGraph:
    """The ONNX graph under construction: nodes, initializers and fresh names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._count = 0

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}/_onnx{self._count}"

    def const(self, value: Any, dtype: Any = None, base: str = "const") -> Value:
        array = np.asarray(value, dtype)
        return Value(self.fresh(base), array, const=True)

    def ref(self, t: Value) -> str:
        """``t``'s name, its initializer added on first use (unused constants cost nothing)."""
        if t.const and t.name not in self.initializers:
            self.initializers[t.name] = t.rep
        return t.name

    def emit(self, op: str, inputs: Sequence[Value | None], rep: np.ndarray, name: str,
             **attrs: Any) -> Value:
        from onnx import helper

        out = self.fresh(name)
        names = ["" if t is None else self.ref(t) for t in inputs]
        self.nodes.append(helper.make_node(op, names, [out], name=out, **attrs))
        return Value(out, rep)

    def emit_many(self, op: str, inputs: Sequence[Value], reps: list[np.ndarray], name: str,
                  **attrs: Any) -> list[Value]:
        from onnx import helper

        outs = [self.fresh(name) for _ in reps]
        self.nodes.append(helper.make_node(op, [self.ref(t) for t in inputs], outs,
                                           name=outs[0], **attrs))
        return [Value(o, r) for o, r in zip(outs, reps, strict=True)]

    def cast(self, t: Value, dtype: Any, name: str) -> Value:
        if t.rep.dtype == np.dtype(dtype):
            return t
        rep = t.rep.astype(dtype)
        if t.const:
            return Value(self.fresh(name), rep, const=True)
        return self.emit("Cast", [t], rep, name, to=onnx_type(dtype))

    def int64(self, t: Value, name: str) -> Value:
        return self.cast(t, np.int64, name)
