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

Only the ops that the two detector graphs use are known
(:data:`streamer.vision.tfjs_onnx_ops.OPS`); any other is a
:class:`~streamer.core.errors.ModelError` naming it.

Example:
    >>> model = convert(Path("models/nanodet.json"))        # an onnx.ModelProto
    >>> onnx.save(model, "nanodet.onnx")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.errors import ModelError
from streamer.vision.onnx_build import TF_TYPES, OnnxGraph, Value, attr, onnx_type
from streamer.vision.tfjs import read_weights
from streamer.vision.tfjs_onnx_ops import OPS, SHAPE_ONLY

__all__ = ["OPSET", "convert"]

OPSET = 17
PROBE_SIDE = 256  # a free input dimension's size while converting (any multiple of 32)


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
    g = OnnxGraph()
    tensors: dict[str, list[Value]] = {}
    inputs = []
    for node in _ordered(nodes):
        name, op = node["name"], node["op"]
        if op == "Const":
            if name not in weights:
                raise ModelError(f"{model_json}: constant {name} has no weights in the manifest")
            dtype = TF_TYPES.get(attr(node, "dtype", "DT_FLOAT"))
            if dtype is None:
                raise ModelError(f"{model_json}: constant {name} has an unsupported dtype")
            tensors[name] = [Value(name, np.asarray(weights[name], dtype), const=True)]
            continue
        if op == "Placeholder":
            dtype = TF_TYPES[attr(node, "dtype", "DT_FLOAT")]
            dims = [int(d.get("size", -1)) for d in
                    node["attr"]["shape"]["shape"].get("dim", [])]
            onnx_dims: list[int | str] = [d if d >= 0 else f"{name}_{i}"
                                          for i, d in enumerate(dims)]
            inputs.append(helper.make_tensor_value_info(name, onnx_type(dtype), onnx_dims))
            probe = [d if d >= 0 else PROBE_SIDE for d in dims]
            tensors[name] = [Value(name, np.zeros(probe, dtype))]
            continue
        ins = []
        for text in node.get("input", []):
            if text.startswith("^"):
                continue
            source, index = _tensor_ref(text)
            ins.append(tensors[source][index])
        if op not in SHAPE_ONLY and ins and all(t.const for t in ins):
            outs = OPS[op](OnnxGraph(), node, ins)  # constants only: folded with numpy
            tensors[name] = [Value(f"{name}:{i}", t.rep, const=True) for i, t in enumerate(outs)]
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
        outputs.append(helper.make_tensor_value_info(text, onnx_type(t.rep.dtype), free))
    graph = helper.make_graph(
        g.nodes, model_json.stem, inputs, outputs,
        initializer=[numpy_helper.from_array(np.array(v, order="C"), k)
                     for k, v in g.initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="streamer.vision.tfjs_onnx")
    model.ir_version = 8  # readable by every onnxruntime the project allows (>= 1.17)
    return model
