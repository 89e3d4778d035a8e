"""TF.js graph models to ONNX, without TensorFlow: the detectors' ONNX Runtime route.

The same parsed graph (``modelTopology``) and weights (:func:`streamer.vision.tfjs.read_weights`)
that the OpenVINO route reads are translated node by node into ONNX with the ``onnx`` package's
helper API. Every tensor keeps TensorFlow's layout (NHWC); the layout-bound ops (convolutions,
pooling, resizing) are wrapped in transposes to ONNX's NCHW and back, which ONNX Runtime's
transpose optimiser folds between consecutive layers. Filters are re-laid at conversion time
(HWIO -> OIHW; depthwise HWCM -> (C*M)1HW with ``group = C``), TF.js's fused convolutions become
one ``Conv`` with its bias plus the activation.

While translating, each tensor carries a *representative value* computed with numpy at a probe
input shape (``-1`` dimensions of the input set to 256): exact for constants and for shape
arithmetic, zeros of the right shape for the data path. It gives every op its input ranks (a
``StridedSlice``'s masks need them), and subgraphs made of constants only are folded into one
initializer. Nothing computed from the input's shape is baked in, so a graph whose input has
free dimensions (MoveNet: any height and width) stays free in ONNX.

Only the ops that the two detector graphs use are known (:data:`OPS`); any other is a
:class:`~streamer.core.errors.ModelError` naming it.

Example:
    >>> model = convert(Path("models/nanodet.json"))        # an onnx.ModelProto
    >>> onnx.save(model, "nanodet.onnx")
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.errors import ModelError
from streamer.vision.tfjs import read_weights

__all__ = ["OPSET", "OPS", "convert"]

OPSET = 17
#: TensorFlow DataType names -> numpy dtypes (the ones these graphs use).
_TF_TYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64,
             "DT_BOOL": np.bool_}
#: The fused convolutions TF.js writes, and the plain op of their first stage.
_FUSED = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
          "_FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}
_BIG = np.iinfo(np.int64).max
_PROBE_SIDE = 256  # a free input dimension's size while converting (any multiple of 32)


@dataclass
class _T:
    """A translated tensor: its ONNX name, representative value, and whether it is constant."""

    name: str
    rep: np.ndarray
    const: bool = False


def _onnx_type(dtype: Any) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _decode(text: str) -> str:
    return base64.b64decode(text).decode()


def _attr(node: dict[str, Any], key: str, default: Any = None) -> Any:
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


class _Graph:
    """The ONNX graph under construction: nodes, initializers and fresh names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._count = 0

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}/_onnx{self._count}"

    def const(self, value: Any, dtype: Any = None, base: str = "const") -> _T:
        array = np.asarray(value, dtype)
        return _T(self.fresh(base), array, const=True)

    def ref(self, t: _T) -> str:
        """``t``'s name, its initializer added on first use (unused constants cost nothing)."""
        if t.const and t.name not in self.initializers:
            self.initializers[t.name] = t.rep
        return t.name

    def emit(self, op: str, inputs: Sequence[_T | None], rep: np.ndarray, name: str,
             **attrs: Any) -> _T:
        from onnx import helper

        out = self.fresh(name)
        names = ["" if t is None else self.ref(t) for t in inputs]
        self.nodes.append(helper.make_node(op, names, [out], name=out, **attrs))
        return _T(out, rep)

    def emit_many(self, op: str, inputs: Sequence[_T], reps: list[np.ndarray], name: str,
                  **attrs: Any) -> list[_T]:
        from onnx import helper

        outs = [self.fresh(name) for _ in reps]
        self.nodes.append(helper.make_node(op, [self.ref(t) for t in inputs], outs,
                                           name=outs[0], **attrs))
        return [_T(o, r) for o, r in zip(outs, reps, strict=True)]

    def cast(self, t: _T, dtype: Any, name: str) -> _T:
        if t.rep.dtype == np.dtype(dtype):
            return t
        rep = t.rep.astype(dtype)
        if t.const:
            return _T(self.fresh(name), rep, const=True)
        return self.emit("Cast", [t], rep, name, to=_onnx_type(dtype))

    def int64(self, t: _T, name: str) -> _T:
        return self.cast(t, np.int64, name)


# ----------------------------------------------------------------------------- op translators
_Op = Callable[[_Graph, dict[str, Any], list[_T]], list[_T]]


def _elementwise(onnx_op: str, fn: Callable[..., np.ndarray], **attrs: Any) -> _Op:
    def translate(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
        with np.errstate(all="ignore"):
            rep = np.asarray(fn(*[t.rep for t in ins]))
        return [g.emit(onnx_op, list(ins), rep, node["name"], **attrs)]
    return translate


def _relu6(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x = ins[0]
    lo, hi = g.const(0, x.rep.dtype), g.const(6, x.rep.dtype)
    return [g.emit("Clip", [x, lo, hi], np.clip(x.rep, 0, 6), node["name"])]


def _leaky(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    alpha = float(_attr(node, "alpha", 0.2))
    rep = np.where(ins[0].rep > 0, ins[0].rep, ins[0].rep * alpha).astype(ins[0].rep.dtype)
    return [g.emit("LeakyRelu", [ins[0]], rep, node["name"], alpha=alpha)]


def _squared_difference(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    diff = g.emit("Sub", ins, ins[0].rep - ins[1].rep, node["name"])
    return [g.emit("Mul", [diff, diff], diff.rep * diff.rep, node["name"])]


def _floor_div(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    a, b = ins
    with np.errstate(all="ignore"):
        rep = np.floor_divide(a.rep, np.where(b.rep == 0, 1, b.rep)).astype(a.rep.dtype)
    if a.rep.dtype.kind == "f":
        q = g.emit("Div", [a, b], rep, node["name"])
        return [g.emit("Floor", [q], rep, node["name"])]
    # ONNX's integer Div truncates toward zero; floor through float64 (exact below 2**53).
    fa, fb = g.cast(a, np.float64, node["name"]), g.cast(b, np.float64, node["name"])
    q = g.emit("Floor", [g.emit("Div", [fa, fb], rep.astype(np.float64), node["name"])],
               rep.astype(np.float64), node["name"])
    return [g.cast(q, a.rep.dtype, node["name"])]


def _cast(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    dtype = _TF_TYPES[_attr(node, "DstT")]
    return [g.cast(ins[0], dtype, node["name"])]


def _identity(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    return [ins[0]]


def _nchw(g: _Graph, x: _T, name: str) -> _T:
    return g.emit("Transpose", [x], x.rep.transpose(0, 3, 1, 2), name, perm=[0, 3, 1, 2])


def _nhwc(g: _Graph, x: _T, name: str) -> _T:
    return g.emit("Transpose", [x], x.rep.transpose(0, 2, 3, 1), name, perm=[0, 2, 3, 1])


def _check_nhwc(node: dict[str, Any]) -> None:
    if _attr(node, "data_format", "NHWC") != "NHWC":
        raise ModelError(f"{node['op']} {node['name']}: only NHWC layouts are supported, not "
                         f"{_attr(node, 'data_format')}")


def _window(node: dict[str, Any], kernel: tuple[int, int], size: tuple[int, int]
            ) -> tuple[dict[str, Any], tuple[int, int]]:
    """ONNX padding attributes and the output height, width of a TF convolution / pool."""
    strides = _attr(node, "strides", [1, 1, 1, 1])[1:3]
    dilations = (_attr(node, "dilations", [1, 1, 1, 1]) or [1, 1, 1, 1])[1:3]
    padding = _attr(node, "padding", "VALID")
    attrs: dict[str, Any] = {"strides": strides}
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if padding == "SAME":
        attrs["auto_pad"] = "SAME_UPPER"  # TF puts the odd pixel at the end, as SAME_UPPER
        out = tuple(-(-n // s) for n, s in zip(size, strides, strict=True))
    elif padding == "VALID":
        out = tuple((n - k) // s + 1 for n, k, s in zip(size, span, strides, strict=True))
    elif padding == "EXPLICIT":
        p = _attr(node, "explicit_paddings")  # NHWC pairs: n0 n1 h0 h1 w0 w1 c0 c1
        attrs["pads"] = [p[2], p[4], p[3], p[5]]
        out = ((size[0] + p[2] + p[3] - span[0]) // strides[0] + 1,
               (size[1] + p[4] + p[5] - span[1]) // strides[1] + 1)
    else:
        raise ModelError(f"{node['op']} {node['name']}: padding {padding!r} is not supported")
    return attrs, (int(out[0]), int(out[1]))


def _conv(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    _check_nhwc(node)
    op = _FUSED.get(node["op"], node["op"])
    x, w = ins[0], ins[1]
    if not w.const:
        raise ModelError(f"{node['op']} {node['name']}: a filter computed in the graph is not "
                         "supported (only constant filters)")
    kh, kw = w.rep.shape[:2]
    attrs, (oh, ow) = _window(node, (kh, kw), x.rep.shape[1:3])
    dilations = (_attr(node, "dilations") or [1, 1, 1, 1])[1:3]
    if op == "Conv2D":
        weight = w.rep.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        groups = x.rep.shape[3] // w.rep.shape[2]
    else:  # depthwise: HW C M -> (C*M) 1 H W, one group per input channel
        c, m = w.rep.shape[2:]
        weight = w.rep.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
        groups = c
    inputs = [_nchw(g, x, node["name"]), g.const(np.ascontiguousarray(weight),
                                                 base=node["name"] + "/weight")]
    stages = _attr(node, "fused_ops", []) if node["op"] in _FUSED else []
    if stages:
        if stages[0] != "BiasAdd" or len(stages) > 2 or len(ins) != 3 or not ins[2].const:
            raise ModelError(f"fused op {node['op']} with stages {stages} ({node['name']}) is "
                             "not supported")
        inputs.append(ins[2])
    rep = np.zeros((x.rep.shape[0], weight.shape[0], oh, ow), np.float32)
    y = g.emit("Conv", list(inputs), rep, node["name"], dilations=dilations, group=int(groups),
               kernel_shape=[int(kh), int(kw)], **attrs)
    for stage in stages[1:]:
        if stage not in _ACTIVATIONS:
            raise ModelError(f"fused op {node['op']} ({node['name']}) ends with {stage}, which "
                             "the ONNX converter (streamer.vision.tfjs_onnx) does not know")
        y = _ACTIVATIONS[stage](g, {"name": node["name"], "op": stage, "attr": {
            "alpha": node.get("attr", {}).get("leakyrelu_alpha", {"f": 0.2})}}, [y])[0]
    return [_nhwc(g, y, node["name"])]


def _max_pool(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    _check_nhwc(node)
    x = ins[0]
    kernel = _attr(node, "ksize")[1:3]
    attrs, (oh, ow) = _window(node, tuple(kernel), x.rep.shape[1:3])
    rep = np.zeros((x.rep.shape[0], x.rep.shape[3], oh, ow), x.rep.dtype)
    y = g.emit("MaxPool", [_nchw(g, x, node["name"])], rep, node["name"], kernel_shape=kernel,
               **attrs)
    return [_nhwc(g, y, node["name"])]


def _resize_bilinear(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, size = ins
    if _attr(node, "align_corners", False):
        mode = "align_corners"
    elif _attr(node, "half_pixel_centers", False):
        mode = "half_pixel"
    else:
        mode = "asymmetric"
    name = node["name"]
    xc = _nchw(g, x, name)
    n_c = np.array(xc.rep.shape[:2], np.int64)
    shape = g.emit("Shape", [xc], n_c, name, start=0, end=2)
    hw = g.int64(size, name)
    sizes = g.emit("Concat", [shape, hw], np.concatenate([n_c, hw.rep]), name, axis=0)
    rep = np.zeros((*xc.rep.shape[:2], *(int(v) for v in size.rep)), np.float32)
    y = g.emit("Resize", [xc, None, None, sizes], rep, name, mode="linear",
               coordinate_transformation_mode=mode)
    return [_nhwc(g, y, name)]


def _pad(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, paddings = ins[0], ins[1]
    if not paddings.const:
        raise ModelError(f"{node['op']} {node['name']}: paddings computed in the graph are not "
                         "supported")
    pads = g.const(paddings.rep.T.reshape(-1), np.int64, node["name"])
    value = ins[2] if len(ins) > 2 else g.const(0, x.rep.dtype)
    rep = np.pad(x.rep, paddings.rep.astype(np.int64), constant_values=value.rep.item())
    return [g.emit("Pad", [x, pads, value], rep, node["name"], mode="constant")]


def _need_const(node: dict[str, Any], t: _T, what: str) -> np.ndarray:
    if not t.const:
        raise ModelError(f"{node['op']} {node['name']}: a {what} computed in the graph is not "
                         "supported")
    return t.rep


def _transpose(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    perm = [int(p) for p in _need_const(node, ins[1], "permutation")]
    return [g.emit("Transpose", [ins[0]], ins[0].rep.transpose(perm), node["name"], perm=perm)]


def _reshape(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, shape = ins
    rep = x.rep.reshape([int(s) for s in shape.rep])
    return [g.emit("Reshape", [x, g.int64(shape, node["name"])], rep, node["name"])]


def _concat(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    axis = int(_need_const(node, ins[-1], "axis"))
    rep = np.concatenate([t.rep for t in ins[:-1]], axis)
    return [g.emit("Concat", ins[:-1], rep, node["name"], axis=axis)]


def _unsqueeze(g: _Graph, x: _T, axes: list[int], name: str) -> _T:
    rep = np.expand_dims(x.rep, tuple(axes)) if axes else x.rep
    return g.emit("Unsqueeze", [x, g.const(axes, np.int64, name)], rep, name) if axes else x


def _squeeze(g: _Graph, x: _T, axes: list[int], name: str) -> _T:
    if not axes:
        return x
    return g.emit("Squeeze", [x, g.const(axes, np.int64, name)], np.squeeze(x.rep, tuple(axes)),
                  name)


def _pack(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    axis = int(_attr(node, "axis", 0))
    if axis < 0:
        axis += ins[0].rep.ndim + 1
    parts = [_unsqueeze(g, t, [axis], node["name"]) for t in ins]
    rep = np.stack([t.rep for t in ins], axis)
    return [g.emit("Concat", parts, rep, node["name"], axis=axis)]


def _split_into(g: _Graph, x: _T, axis: int, sizes: list[int], name: str) -> list[_T]:
    cuts = np.cumsum(sizes)[:-1]
    reps = np.split(x.rep, cuts, axis)
    return g.emit_many("Split", [x, g.const(sizes, np.int64, name)], reps, name, axis=axis)


def _unpack(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x = ins[0]
    axis = int(_attr(node, "axis", 0)) % x.rep.ndim
    parts = _split_into(g, x, axis, [1] * x.rep.shape[axis], node["name"])
    return [_squeeze(g, p, [axis], node["name"]) for p in parts]


def _split(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    dim, x = ins
    axis = int(_need_const(node, dim, "split axis")) % x.rep.ndim
    n = int(_attr(node, "num_split"))
    return _split_into(g, x, axis, [x.rep.shape[axis] // n] * n, node["name"])


def _split_v(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, sizes, dim = ins
    axis = int(_need_const(node, dim, "split axis")) % x.rep.ndim
    lengths = [int(s) for s in _need_const(node, sizes, "split sizes")]
    if -1 in lengths:  # the rest of the axis
        lengths[lengths.index(-1)] = x.rep.shape[axis] - (sum(lengths) + 1)
    return _split_into(g, x, axis, lengths, node["name"])


def _squeeze_op(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x = ins[0]
    dims = _attr(node, "squeeze_dims", []) or [i for i, n in enumerate(x.rep.shape) if n == 1]
    return [_squeeze(g, x, sorted(d % x.rep.ndim for d in dims), node["name"])]


def _expand_dims(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, dim = ins
    axis = int(_need_const(node, dim, "axis"))
    if axis < 0:
        axis += x.rep.ndim + 1
    return [_unsqueeze(g, x, [axis], node["name"])]


def _shape(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    rep = np.array(ins[0].rep.shape, np.int64)
    shape = g.emit("Shape", [ins[0]], rep, node["name"])
    return [g.cast(shape, _TF_TYPES[_attr(node, "out_type", "DT_INT32")], node["name"])]


def _size(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    size = g.emit("Size", [ins[0]], np.array(ins[0].rep.size, np.int64), node["name"])
    return [g.cast(size, _TF_TYPES[_attr(node, "out_type", "DT_INT32")], node["name"])]


def _range(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    start, limit, delta = ins
    rep = np.arange(start.rep.item(), limit.rep.item(), delta.rep.item()).astype(start.rep.dtype)
    return [g.emit("Range", list(ins), rep, node["name"])]


def _fill(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    dims, value = ins
    rep = np.full([int(d) for d in dims.rep], value.rep.item(), value.rep.dtype)
    return [g.emit("Expand", [value, g.int64(dims, node["name"])], rep, node["name"])]


def _tile(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, reps = ins
    rep = np.tile(x.rep, [int(r) for r in reps.rep])
    return [g.emit("Tile", [x, g.int64(reps, node["name"])], rep, node["name"])]


def _strided_slice(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x = ins[0]
    begin, end, strides = (_need_const(node, t, "slice bound").astype(np.int64)
                           for t in ins[1:4])
    masks = {k: int(_attr(node, f"{k}_mask", 0)) for k in
             ("begin", "end", "ellipsis", "new_axis", "shrink_axis")}
    index: list[Any] = []  # TensorFlow's spec as a numpy index
    dense: list[slice] = [slice(None)] * x.rep.ndim  # the Slice part, per input dimension
    starts, ends, axes, steps, shrink, new_axes = [], [], [], [], [], []
    dim = out = 0  # the input dimension and the output position being read
    for i in range(len(begin)):
        bit = 1 << i
        if masks["ellipsis"] & bit:
            covered = x.rep.ndim - sum(1 for j in range(len(begin)) if j != i and not (
                masks["new_axis"] & (1 << j)))
            index.append(Ellipsis)
            dim, out = dim + covered, out + covered
            continue
        if masks["new_axis"] & bit:
            index.append(None)
            new_axes.append(out)
            out += 1
            continue
        b, e, s = int(begin[i]), int(end[i]), int(strides[i])
        if masks["shrink_axis"] & bit:
            index.append(b)
            stop = b + 1 if b != -1 else _BIG
            dense[dim] = slice(b, None if stop == _BIG else stop)
            starts.append(b)
            ends.append(stop)
            axes.append(dim)
            steps.append(1)
            shrink.append(dim)
            dim += 1
            continue
        lo = None if masks["begin"] & bit else b
        hi = None if masks["end"] & bit else e
        index.append(slice(lo, hi, s))
        if lo is not None or hi is not None or s != 1:
            dense[dim] = slice(lo, hi, s)
            starts.append(lo if lo is not None else (0 if s > 0 else _BIG))
            ends.append(hi if hi is not None else (_BIG if s > 0 else -_BIG))
            axes.append(dim)
            steps.append(s)
        dim, out = dim + 1, out + 1
    rep = np.asarray(x.rep[tuple(index)])
    name = node["name"]
    y = x
    if axes:
        y = g.emit("Slice", [x, g.const(starts, np.int64, name), g.const(ends, np.int64, name),
                             g.const(axes, np.int64, name), g.const(steps, np.int64, name)],
                   np.asarray(x.rep[tuple(dense)]), name)
    y = _unsqueeze(g, _squeeze(g, y, shrink, name), new_axes, name)
    if y.rep.shape != rep.shape:
        raise ModelError(f"StridedSlice {name}: translated to shape {y.rep.shape}, TensorFlow "
                         f"gives {rep.shape} (unsupported mask combination)")
    return [_T(y.name, rep, y.const)]


def _gather_nd(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    params, indices = ins
    k = indices.rep.shape[-1]
    # The representative indices of the data path are not real: keep them in range.
    idx = np.clip(indices.rep, 0, np.array(params.rep.shape[:k]) - 1).astype(np.int64)
    rep = params.rep[tuple(np.moveaxis(idx, -1, 0))]
    return [g.emit("GatherND", [params, g.int64(indices, node["name"])], rep, node["name"])]


def _top_k(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, k = ins
    n = int(k.rep)
    order = np.argsort(-x.rep, axis=-1, kind="stable")[..., :n]
    values = np.take_along_axis(x.rep, order, -1)
    k64 = g.const([n], np.int64, node["name"])
    vals, idx = g.emit_many("TopK", [x, k64], [values, order.astype(np.int64)], node["name"],
                            axis=-1, largest=1, sorted=1)
    return [vals, g.cast(idx, np.int32, node["name"])]


def _select(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    cond, a, b = ins
    if cond.rep.ndim == 1 and a.rep.ndim > 1:  # TF's Select picks rows by a vector
        cond = _unsqueeze(g, cond, list(range(1, a.rep.ndim)), node["name"])
    return [g.emit("Where", [cond, a, b], np.where(cond.rep, a.rep, b.rep), node["name"])]


def _reduce(onnx_op: str, fn: Callable[..., np.ndarray]) -> _Op:
    def translate(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
        x, axes_t = ins
        axes = [int(a) for a in np.atleast_1d(_need_const(node, axes_t, "reduction axis"))]
        keep = bool(_attr(node, "keep_dims", False))
        rep = np.asarray(fn(x.rep, axis=tuple(axes), keepdims=keep))
        if onnx_op == "ReduceSum":  # axes are an input from opset 13, ReduceMax's from 18
            return [g.emit(onnx_op, [x, g.const(axes, np.int64, node["name"])], rep,
                           node["name"], keepdims=int(keep))]
        return [g.emit(onnx_op, [x], rep, node["name"], axes=axes, keepdims=int(keep))]
    return translate


def _arg_max(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    x, dim = ins
    axis = int(_need_const(node, dim, "axis"))
    rep = np.argmax(x.rep, axis).astype(np.int64)
    y = g.emit("ArgMax", [x], rep, node["name"], axis=axis, keepdims=0)
    return [g.cast(y, _TF_TYPES[_attr(node, "output_type", "DT_INT64")], node["name"])]


def _add_n(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    rep = np.sum([t.rep for t in ins], axis=0).astype(ins[0].rep.dtype)
    return [g.emit("Sum", list(ins), rep, node["name"])]


def _sparse_to_dense(g: _Graph, node: dict[str, Any], ins: list[_T]) -> list[_T]:
    indices, shape, values, default = (_need_const(node, t, "input") for t in ins)
    out = np.full([int(s) for s in shape], default.item(), values.dtype)
    idx = indices.reshape(-1, 1) if indices.ndim < 2 else indices  # [N, rank] coordinates
    if len(idx):
        out[tuple(idx.astype(np.int64).T)] = values
    return [g.const(out, base=node["name"])]


_ACTIVATIONS: dict[str, _Op] = {
    "Relu": _elementwise("Relu", lambda x: np.maximum(x, 0)),
    "Relu6": _relu6,
    "LeakyRelu": _leaky,
    "Sigmoid": _elementwise("Sigmoid", lambda x: 1 / (1 + np.exp(-x))),
}

#: Every TensorFlow op the converter knows, by name.
OPS: dict[str, _Op] = {
    **_ACTIVATIONS,
    "Identity": _identity,
    "Add": _elementwise("Add", np.add), "AddV2": _elementwise("Add", np.add),
    "Sub": _elementwise("Sub", np.subtract), "Mul": _elementwise("Mul", np.multiply),
    "RealDiv": _elementwise("Div", np.divide), "Maximum": _elementwise("Max", np.maximum),
    "Minimum": _elementwise("Min", np.minimum), "Less": _elementwise("Less", np.less),
    "Greater": _elementwise("Greater", np.greater),
    "GreaterEqual": _elementwise("GreaterOrEqual", np.greater_equal),
    "Equal": _elementwise("Equal", np.equal), "LogicalAnd": _elementwise("And", np.logical_and),
    "Exp": _elementwise("Exp", np.exp), "Abs": _elementwise("Abs", np.abs),
    "Reciprocal": _elementwise("Reciprocal", np.reciprocal),
    "SquaredDifference": _squared_difference, "FloorDiv": _floor_div, "AddN": _add_n,
    "Cast": _cast,
    "Conv2D": _conv, "DepthwiseConv2dNative": _conv, **{op: _conv for op in _FUSED},
    "MaxPool": _max_pool, "ResizeBilinear": _resize_bilinear,
    "Pad": _pad, "PadV2": _pad, "Transpose": _transpose, "Reshape": _reshape,
    "ConcatV2": _concat, "Pack": _pack, "Unpack": _unpack, "Split": _split, "SplitV": _split_v,
    "Squeeze": _squeeze_op, "ExpandDims": _expand_dims, "Shape": _shape, "Size": _size,
    "Range": _range, "Fill": _fill, "Tile": _tile, "StridedSlice": _strided_slice,
    "GatherNd": _gather_nd, "TopKV2": _top_k, "Select": _select,
    "Sum": _reduce("ReduceSum", np.sum), "Max": _reduce("ReduceMax", np.max),
    "ArgMax": _arg_max, "SparseToDense": _sparse_to_dense,
}
#: Ops whose representative value is only a shape (never folded into a constant).
_SHAPE_ONLY = {"Conv2D", "DepthwiseConv2dNative", *_FUSED, "MaxPool", "ResizeBilinear"}


def _tensor_ref(text: str) -> tuple[str, int]:
    name, _, index = text.partition(":")
    return name, int(index or 0)


def _ordered(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The nodes with every node after its inputs (TF.js does not promise that order)."""
    by_name = {n["name"]: n for n in nodes}
    done: set[str] = set()
    out: list[dict[str, Any]] = []
    for root in nodes:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node["name"] in done:
                continue
            if expanded:
                done.add(node["name"])
                out.append(node)
                continue
            stack.append((node, True))
            for text in node.get("input", []):
                dep = by_name.get(_tensor_ref(text.lstrip("^"))[0])
                if dep is not None and dep["name"] not in done:
                    stack.append((dep, False))
    return out


def _check_ops(model_json: Path, nodes: list[dict[str, Any]]) -> None:
    for node in nodes:
        if node["op"] not in OPS and node["op"] not in ("Const", "Placeholder"):
            raise ModelError(f"{model_json.name}: op {node['op']} (node {node['name']}) is not "
                             "supported by the ONNX converter (streamer.vision.tfjs_onnx)",
                             hint="run this detector on OpenVINO (detector.engine: openvino)")


def convert(model_json: Path) -> Any:
    """An ``onnx.ModelProto`` (opset :data:`OPSET`) from a TF.js graph model.

    Example:
        >>> model = convert(Path("models/movenet-multipose.json"))
        >>> [i.name for i in model.graph.input], [o.name for o in model.graph.output]
        (['input'], ['Identity:0'])
    """
    from onnx import helper, numpy_helper

    model_json = Path(model_json)
    try:
        spec = json.loads(model_json.read_text())
        nodes = list(spec["modelTopology"].get("node", []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the TF.js model {model_json} ({exc})",
                         hint="fetch the detectors again: run_stream.py fetch detectors") from None
    _check_ops(model_json, nodes)
    weights = read_weights(model_json)
    g = _Graph()
    tensors: dict[str, list[_T]] = {}
    inputs = []
    for node in _ordered(nodes):
        name, op = node["name"], node["op"]
        if op == "Const":
            if name not in weights:
                raise ModelError(f"{model_json}: constant {name} has no weights in the manifest")
            dtype = _TF_TYPES.get(_attr(node, "dtype", "DT_FLOAT"))
            if dtype is None:
                raise ModelError(f"{model_json}: constant {name} has an unsupported dtype")
            tensors[name] = [_T(name, np.asarray(weights[name], dtype), const=True)]
            continue
        if op == "Placeholder":
            dtype = _TF_TYPES[_attr(node, "dtype", "DT_FLOAT")]
            dims = [int(d.get("size", -1)) for d in
                    node["attr"]["shape"]["shape"].get("dim", [])]
            onnx_dims: list[int | str] = [d if d >= 0 else f"{name}_{i}"
                                          for i, d in enumerate(dims)]
            inputs.append(helper.make_tensor_value_info(name, _onnx_type(dtype), onnx_dims))
            probe = [d if d >= 0 else _PROBE_SIDE for d in dims]
            tensors[name] = [_T(name, np.zeros(probe, dtype))]
            continue
        ins = []
        for text in node.get("input", []):
            if text.startswith("^"):
                continue
            source, index = _tensor_ref(text)
            ins.append(tensors[source][index])
        if op not in _SHAPE_ONLY and ins and all(t.const for t in ins):
            outs = OPS[op](_Graph(), node, ins)  # constants only: folded with numpy
            tensors[name] = [_T(f"{name}:{i}", t.rep, const=True) for i, t in enumerate(outs)]
        else:
            tensors[name] = OPS[op](g, node, ins)
    outputs = []
    signature = (spec.get("signature") or {}).get("outputs") or {}
    names = [v["name"] for v in signature.values()] or [f"{nodes[-1]['name']}:0"]
    for text in names:
        source, index = _tensor_ref(text)
        t = tensors[source][index]
        g.nodes.append(helper.make_node("Identity", [g.ref(t)], [text], name=f"{text}/_out"))
        free = [f"{text}_{i}" for i in range(t.rep.ndim)]  # the rank is known, not the sizes
        outputs.append(helper.make_tensor_value_info(text, _onnx_type(t.rep.dtype), free))
    graph = helper.make_graph(
        g.nodes, model_json.stem, inputs, outputs,
        initializer=[numpy_helper.from_array(np.array(v, order="C"), k)
                     for k, v in g.initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="streamer.vision.tfjs_onnx")
    model.ir_version = 8  # readable by every onnxruntime the project allows (>= 1.17)
    return model
