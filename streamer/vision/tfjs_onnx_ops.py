"""The TensorFlow ops of the detector graphs, each translated to ONNX (:data:`OPS`).

Every translator takes the graph under way, the TensorFlow node (JSON) and its input
:class:`~streamer.vision.onnx_build.Value` s, emits ONNX nodes and returns the outputs with their
representative values. Tensors stay NHWC; convolutions, pooling and resizing are wrapped in
transposes to NCHW and back, filters re-laid at conversion time (HWIO -> OIHW; depthwise
HWCM -> (C*M)1HW with ``group = C``), and TF.js's fused convolutions become one ``Conv`` with
its bias plus the activation.

Example:
    >>> outputs = OPS["Conv2D"](graph, node, [x, filter_])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from streamer.core.errors import ModelError
from streamer.vision.onnx_build import FUSED, TF_TYPES, OnnxGraph, Value, attr

__all__ = ["OPS", "SHAPE_ONLY"]

_BIG = np.iinfo(np.int64).max


# ----------------------------------------------------------------------------- op translators
_Op = Callable[[OnnxGraph, dict[str, Any], list[Value]], list[Value]]


def _elementwise(onnx_op: str, fn: Callable[..., np.ndarray], **attrs: Any) -> _Op:
    def translate(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
        with np.errstate(all="ignore"):
            rep = np.asarray(fn(*[t.rep for t in ins]))
        return [g.emit(onnx_op, list(ins), rep, node["name"], **attrs)]
    return translate


def _relu6(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x = ins[0]
    lo, hi = g.const(0, x.rep.dtype), g.const(6, x.rep.dtype)
    return [g.emit("Clip", [x, lo, hi], np.clip(x.rep, 0, 6), node["name"])]


def _leaky(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    alpha = float(attr(node, "alpha", 0.2))
    rep = np.where(ins[0].rep > 0, ins[0].rep, ins[0].rep * alpha).astype(ins[0].rep.dtype)
    return [g.emit("LeakyRelu", [ins[0]], rep, node["name"], alpha=alpha)]


def _squared_difference(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    diff = g.emit("Sub", ins, ins[0].rep - ins[1].rep, node["name"])
    return [g.emit("Mul", [diff, diff], diff.rep * diff.rep, node["name"])]


def _floor_div(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
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


def _cast(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    dtype = TF_TYPES[attr(node, "DstT")]
    return [g.cast(ins[0], dtype, node["name"])]


def _identity(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    return [ins[0]]


def _nchw(g: OnnxGraph, x: Value, name: str) -> Value:
    return g.emit("Transpose", [x], x.rep.transpose(0, 3, 1, 2), name, perm=[0, 3, 1, 2])


def _nhwc(g: OnnxGraph, x: Value, name: str) -> Value:
    return g.emit("Transpose", [x], x.rep.transpose(0, 2, 3, 1), name, perm=[0, 2, 3, 1])


def _check_nhwc(node: dict[str, Any]) -> None:
    if attr(node, "data_format", "NHWC") != "NHWC":
        raise ModelError(f"{node['op']} {node['name']}: only NHWC layouts are supported, not "
                         f"{attr(node, 'data_format')}")


def _window(node: dict[str, Any], kernel: tuple[int, int], size: tuple[int, int]
            ) -> tuple[dict[str, Any], tuple[int, int]]:
    """ONNX padding attributes and the output height, width of a TF convolution / pool."""
    strides = attr(node, "strides", [1, 1, 1, 1])[1:3]
    dilations = (attr(node, "dilations", [1, 1, 1, 1]) or [1, 1, 1, 1])[1:3]
    padding = attr(node, "padding", "VALID")
    attrs: dict[str, Any] = {"strides": strides}
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if padding == "SAME":
        attrs["auto_pad"] = "SAME_UPPER"  # TF puts the odd pixel at the end, as SAME_UPPER
        out = tuple(-(-n // s) for n, s in zip(size, strides, strict=True))
    elif padding == "VALID":
        out = tuple((n - k) // s + 1 for n, k, s in zip(size, span, strides, strict=True))
    elif padding == "EXPLICIT":
        p = attr(node, "explicit_paddings")  # NHWC pairs: n0 n1 h0 h1 w0 w1 c0 c1
        attrs["pads"] = [p[2], p[4], p[3], p[5]]
        out = ((size[0] + p[2] + p[3] - span[0]) // strides[0] + 1,
               (size[1] + p[4] + p[5] - span[1]) // strides[1] + 1)
    else:
        raise ModelError(f"{node['op']} {node['name']}: padding {padding!r} is not supported")
    return attrs, (int(out[0]), int(out[1]))


def _conv(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    _check_nhwc(node)
    op = FUSED.get(node["op"], node["op"])
    x, w = ins[0], ins[1]
    if not w.const:
        raise ModelError(f"{node['op']} {node['name']}: a filter computed in the graph is not "
                         "supported (only constant filters)")
    kh, kw = w.rep.shape[:2]
    attrs, (oh, ow) = _window(node, (kh, kw), x.rep.shape[1:3])
    dilations = (attr(node, "dilations") or [1, 1, 1, 1])[1:3]
    if op == "Conv2D":
        weight = w.rep.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        groups = x.rep.shape[3] // w.rep.shape[2]
    else:  # depthwise: HW C M -> (C*M) 1 H W, one group per input channel
        c, m = w.rep.shape[2:]
        weight = w.rep.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
        groups = c
    inputs = [_nchw(g, x, node["name"]), g.const(np.ascontiguousarray(weight),
                                                 base=node["name"] + "/weight")]
    stages = attr(node, "fused_ops", []) if node["op"] in FUSED else []
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


def _max_pool(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    _check_nhwc(node)
    x = ins[0]
    kernel = attr(node, "ksize")[1:3]
    attrs, (oh, ow) = _window(node, tuple(kernel), x.rep.shape[1:3])
    rep = np.zeros((x.rep.shape[0], x.rep.shape[3], oh, ow), x.rep.dtype)
    y = g.emit("MaxPool", [_nchw(g, x, node["name"])], rep, node["name"], kernel_shape=kernel,
               **attrs)
    return [_nhwc(g, y, node["name"])]


def _resize_bilinear(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, size = ins
    if attr(node, "align_corners", False):
        mode = "align_corners"
    elif attr(node, "half_pixel_centers", False):
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


def _pad(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, paddings = ins[0], ins[1]
    if not paddings.const:
        raise ModelError(f"{node['op']} {node['name']}: paddings computed in the graph are not "
                         "supported")
    pads = g.const(paddings.rep.T.reshape(-1), np.int64, node["name"])
    value = ins[2] if len(ins) > 2 else g.const(0, x.rep.dtype)
    rep = np.pad(x.rep, paddings.rep.astype(np.int64), constant_values=value.rep.item())
    return [g.emit("Pad", [x, pads, value], rep, node["name"], mode="constant")]


def _need_const(node: dict[str, Any], t: Value, what: str) -> np.ndarray:
    if not t.const:
        raise ModelError(f"{node['op']} {node['name']}: a {what} computed in the graph is not "
                         "supported")
    return t.rep


def _transpose(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    perm = [int(p) for p in _need_const(node, ins[1], "permutation")]
    return [g.emit("Transpose", [ins[0]], ins[0].rep.transpose(perm), node["name"], perm=perm)]


def _reshape(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, shape = ins
    rep = x.rep.reshape([int(s) for s in shape.rep])
    return [g.emit("Reshape", [x, g.int64(shape, node["name"])], rep, node["name"])]


def _concat(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    axis = int(_need_const(node, ins[-1], "axis"))
    rep = np.concatenate([t.rep for t in ins[:-1]], axis)
    return [g.emit("Concat", ins[:-1], rep, node["name"], axis=axis)]


def _unsqueeze(g: OnnxGraph, x: Value, axes: list[int], name: str) -> Value:
    rep = np.expand_dims(x.rep, tuple(axes)) if axes else x.rep
    return g.emit("Unsqueeze", [x, g.const(axes, np.int64, name)], rep, name) if axes else x


def _squeeze(g: OnnxGraph, x: Value, axes: list[int], name: str) -> Value:
    if not axes:
        return x
    return g.emit("Squeeze", [x, g.const(axes, np.int64, name)], np.squeeze(x.rep, tuple(axes)),
                  name)


def _pack(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    axis = int(attr(node, "axis", 0))
    if axis < 0:
        axis += ins[0].rep.ndim + 1
    parts = [_unsqueeze(g, t, [axis], node["name"]) for t in ins]
    rep = np.stack([t.rep for t in ins], axis)
    return [g.emit("Concat", parts, rep, node["name"], axis=axis)]


def _split_into(g: OnnxGraph, x: Value, axis: int, sizes: list[int], name: str) -> list[Value]:
    cuts = np.cumsum(sizes)[:-1]
    reps = np.split(x.rep, cuts, axis)
    return g.emit_many("Split", [x, g.const(sizes, np.int64, name)], reps, name, axis=axis)


def _unpack(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x = ins[0]
    axis = int(attr(node, "axis", 0)) % x.rep.ndim
    parts = _split_into(g, x, axis, [1] * x.rep.shape[axis], node["name"])
    return [_squeeze(g, p, [axis], node["name"]) for p in parts]


def _split(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    dim, x = ins
    axis = int(_need_const(node, dim, "split axis")) % x.rep.ndim
    n = int(attr(node, "num_split"))
    return _split_into(g, x, axis, [x.rep.shape[axis] // n] * n, node["name"])


def _split_v(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, sizes, dim = ins
    axis = int(_need_const(node, dim, "split axis")) % x.rep.ndim
    lengths = [int(s) for s in _need_const(node, sizes, "split sizes")]
    if -1 in lengths:  # the rest of the axis
        lengths[lengths.index(-1)] = x.rep.shape[axis] - (sum(lengths) + 1)
    return _split_into(g, x, axis, lengths, node["name"])


def _squeeze_op(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x = ins[0]
    dims = attr(node, "squeeze_dims", []) or [i for i, n in enumerate(x.rep.shape) if n == 1]
    return [_squeeze(g, x, sorted(d % x.rep.ndim for d in dims), node["name"])]


def _expand_dims(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, dim = ins
    axis = int(_need_const(node, dim, "axis"))
    if axis < 0:
        axis += x.rep.ndim + 1
    return [_unsqueeze(g, x, [axis], node["name"])]


def _shape(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    rep = np.array(ins[0].rep.shape, np.int64)
    shape = g.emit("Shape", [ins[0]], rep, node["name"])
    return [g.cast(shape, TF_TYPES[attr(node, "out_type", "DT_INT32")], node["name"])]


def _size(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    size = g.emit("Size", [ins[0]], np.array(ins[0].rep.size, np.int64), node["name"])
    return [g.cast(size, TF_TYPES[attr(node, "out_type", "DT_INT32")], node["name"])]


def _range(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    start, limit, delta = ins
    rep = np.arange(start.rep.item(), limit.rep.item(), delta.rep.item()).astype(start.rep.dtype)
    return [g.emit("Range", list(ins), rep, node["name"])]


def _fill(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    dims, value = ins
    rep = np.full([int(d) for d in dims.rep], value.rep.item(), value.rep.dtype)
    return [g.emit("Expand", [value, g.int64(dims, node["name"])], rep, node["name"])]


def _tile(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, reps = ins
    rep = np.tile(x.rep, [int(r) for r in reps.rep])
    return [g.emit("Tile", [x, g.int64(reps, node["name"])], rep, node["name"])]


def _strided_slice(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x = ins[0]
    begin, end, strides = (_need_const(node, t, "slice bound").astype(np.int64)
                           for t in ins[1:4])
    masks = {k: int(attr(node, f"{k}_mask", 0)) for k in
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
    return [Value(y.name, rep, y.const)]


def _gather_nd(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    params, indices = ins
    k = indices.rep.shape[-1]
    # The representative indices of the data path are not real: keep them in range.
    idx = np.clip(indices.rep, 0, np.array(params.rep.shape[:k]) - 1).astype(np.int64)
    rep = params.rep[tuple(np.moveaxis(idx, -1, 0))]
    return [g.emit("GatherND", [params, g.int64(indices, node["name"])], rep, node["name"])]


def _top_k(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, k = ins
    n = int(k.rep)
    order = np.argsort(-x.rep, axis=-1, kind="stable")[..., :n]
    values = np.take_along_axis(x.rep, order, -1)
    k64 = g.const([n], np.int64, node["name"])
    vals, idx = g.emit_many("TopK", [x, k64], [values, order.astype(np.int64)], node["name"],
                            axis=-1, largest=1, sorted=1)
    return [vals, g.cast(idx, np.int32, node["name"])]


def _select(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    cond, a, b = ins
    if cond.rep.ndim == 1 and a.rep.ndim > 1:  # TF's Select picks rows by a vector
        cond = _unsqueeze(g, cond, list(range(1, a.rep.ndim)), node["name"])
    return [g.emit("Where", [cond, a, b], np.where(cond.rep, a.rep, b.rep), node["name"])]


def _reduce(onnx_op: str, fn: Callable[..., np.ndarray]) -> _Op:
    def translate(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
        x, axes_t = ins
        axes = [int(a) for a in np.atleast_1d(_need_const(node, axes_t, "reduction axis"))]
        keep = bool(attr(node, "keep_dims", False))
        rep = np.asarray(fn(x.rep, axis=tuple(axes), keepdims=keep))
        if onnx_op == "ReduceSum":  # axes are an input from opset 13, ReduceMax's from 18
            return [g.emit(onnx_op, [x, g.const(axes, np.int64, node["name"])], rep,
                           node["name"], keepdims=int(keep))]
        return [g.emit(onnx_op, [x], rep, node["name"], axes=axes, keepdims=int(keep))]
    return translate


def _arg_max(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    x, dim = ins
    axis = int(_need_const(node, dim, "axis"))
    rep = np.argmax(x.rep, axis).astype(np.int64)
    y = g.emit("ArgMax", [x], rep, node["name"], axis=axis, keepdims=0)
    return [g.cast(y, TF_TYPES[attr(node, "output_type", "DT_INT64")], node["name"])]


def _add_n(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
    rep = np.sum([t.rep for t in ins], axis=0).astype(ins[0].rep.dtype)
    return [g.emit("Sum", list(ins), rep, node["name"])]


def _sparse_to_dense(g: OnnxGraph, node: dict[str, Any], ins: list[Value]) -> list[Value]:
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
    "Conv2D": _conv, "DepthwiseConv2dNative": _conv, **{op: _conv for op in FUSED},
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
SHAPE_ONLY = {"Conv2D", "DepthwiseConv2dNative", *FUSED, "MaxPool", "ResizeBilinear"}
