"""TF.js graph models to OpenVINO, without TensorFlow.

A TF.js graph model is ``NAME.json`` (``modelTopology``: a TensorFlow GraphDef in protobuf's JSON
form, and ``weightsManifest``: where each constant's bytes sit in the ``.bin`` shards) plus the
shards. :func:`graph_def_bytes` rebuilds the binary GraphDef with the protobuf classes that the
small ``tensorboardX`` package ships: the constants are filled from the shards (fp16-quantised
weights widened to fp32), and TF.js's fused convolutions, which TensorFlow's own op registry
does not know, are split back into convolution + ``BiasAdd`` + activation. OpenVINO's
TensorFlow front end then reads the file (:func:`convert`).

Example:
    >>> model = convert(Path("models/nanodet.json"))   # an openvino.Model
    >>> compiled = openvino.Core().compile_model(model, "CPU")
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.errors import ModelError

__all__ = ["convert", "graph_def_bytes", "read_weights"]

#: numpy dtype of each TF.js manifest dtype, and of each quantisation dtype.
_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16,
           "uint8": np.uint8, "uint16": np.uint16, "int8": np.int8, "int16": np.int16}
#: numpy dtype of each TensorFlow DataType enum value a constant may have (DT_FLOAT,
#: DT_INT32, DT_INT64, DT_BOOL).
_TF_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64, 10: np.bool_}
#: TF.js fused op -> the plain TensorFlow op of its first stage.
_FUSED = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
          "_FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}
#: Activations a fused op may end with (TF.js names them as TensorFlow does).
_ACTIVATIONS = ("Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "LeakyRelu")
#: Attributes that only the fused form has.
_FUSED_ONLY = ("fused_ops", "num_args", "epsilon", "leakyrelu_alpha", "num_host_args")


def read_weights(model_json: Path) -> dict[str, np.ndarray]:
    """Every constant of a TF.js graph model by name, dequantised (fp16 -> fp32).

    Example:
        >>> read_weights(Path("models/nanodet.json"))["some/Conv2D/weights"].dtype
        dtype('float32')
    """
    spec = _load_json(model_json)
    out: dict[str, np.ndarray] = {}
    for group in spec.get("weightsManifest", []):
        blob = b"".join(_read_shard(model_json.parent / p) for p in group["paths"])
        offset = 0
        for entry in group["weights"]:
            shape = [int(s) for s in entry.get("shape", [])]
            count = int(np.prod(shape)) if shape else 1
            quant = entry.get("quantization")
            stored = _dtype(quant["dtype"] if quant else entry["dtype"], model_json)
            size = count * np.dtype(stored).itemsize
            if offset + size > len(blob):
                raise ModelError(f"{model_json}: the weight files end before {entry['name']} "
                                 "(truncated download?)",
                                 hint="fetch the detectors again: run_stream.py fetch detectors")
            raw: np.ndarray = np.frombuffer(blob, stored, count, offset).reshape(shape)
            offset += size
            target = _dtype(entry["dtype"], model_json)
            if quant and "scale" in quant:  # affine uint8/uint16 quantisation
                raw = raw.astype(np.float32) * quant["scale"] + quant.get("min", 0.0)
            out[entry["name"]] = raw.astype(target)
    return out


def _dtype(name: str, model_json: Path) -> type:
    if name not in _DTYPES:
        raise ModelError(f"{model_json}: weights of dtype {name!r} are not supported")
    return _DTYPES[name]


def _read_shard(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the weights {path} ({exc.strerror})",
                         hint="fetch the detectors again: run_stream.py fetch detectors") from None


def _load_json(model_json: Path) -> dict[str, Any]:
    try:
        spec = json.loads(Path(model_json).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the TF.js model {model_json} ({exc})",
                         hint="fetch the detectors again: run_stream.py fetch detectors") from None
    if not isinstance(spec, dict) or "modelTopology" not in spec:
        raise ModelError(f"{model_json} is not a TF.js graph model (no modelTopology)")
    return spec


def _decoded(strings: list[str]) -> list[str]:
    return [base64.b64decode(s).decode() for s in strings]


def _encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _split_fused(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A fused convolution as its plain stages (JSON nodes); other nodes unchanged."""
    if node["op"] not in _FUSED:
        return [node]
    attr = dict(node.get("attr", {}))
    stages = _decoded(attr.get("fused_ops", {}).get("list", {}).get("s", []))
    inputs = list(node["input"])
    controls = [i for i in inputs if i.startswith("^")]
    data = [i for i in inputs if not i.startswith("^")]
    if not stages or stages[0] != "BiasAdd" or len(stages) > 2 or len(data) != 3 or (
            len(stages) == 2 and stages[1] not in _ACTIVATIONS):
        raise ModelError(f"fused op {node['op']} with stages {stages} and {len(data)} inputs "
                         f"({node['name']}) is not supported")
    alpha = attr.get("leakyrelu_alpha")
    for key in _FUSED_ONLY:
        attr.pop(key, None)
    dtype = attr.get("T", {"type": "DT_FLOAT"})
    name = node["name"]
    conv_name = f"{name}/_conv"
    bias_name = f"{name}/_bias" if len(stages) == 2 else name
    out = [{"name": conv_name, "op": _FUSED[node["op"]], "input": data[:2] + controls,
            "attr": attr},
           {"name": bias_name, "op": "BiasAdd", "input": [conv_name, data[2]],
            "attr": {"T": dtype, "data_format": attr.get("data_format", {"s": _encoded("NHWC")})}}]
    if len(stages) == 2:
        act_attr: dict[str, Any] = {"T": dtype}
        if stages[1] == "LeakyRelu":
            act_attr["alpha"] = alpha or {"f": 0.2}
        out.append({"name": name, "op": stages[1], "input": [bias_name], "attr": act_attr})
    return out


def graph_def_bytes(model_json: Path) -> bytes:
    """The serialised TensorFlow GraphDef of a TF.js graph model, constants filled in.

    Example:
        >>> Path("nanodet.pb").write_bytes(graph_def_bytes(Path("models/nanodet.json")))
    """
    from google.protobuf import json_format
    from tensorboardX.proto import graph_pb2

    model_json = Path(model_json)
    spec = _load_json(model_json)
    weights = read_weights(model_json)
    topology = dict(spec["modelTopology"])
    topology.pop("library", None)  # functions: none in these models, and not in the schema
    nodes: list[dict[str, Any]] = []
    for node in topology.get("node", []):
        nodes.extend(_split_fused(node))
    topology["node"] = nodes
    graph = graph_pb2.GraphDef()
    json_format.ParseDict(topology, graph, ignore_unknown_fields=True)
    for node in graph.node:
        if node.op != "Const":
            continue
        if node.name not in weights:
            raise ModelError(f"{model_json}: constant {node.name} has no weights in the manifest")
        tensor = node.attr["value"].tensor
        if tensor.dtype not in _TF_DTYPES:
            raise ModelError(f"{model_json}: constant {node.name} has an unsupported dtype")
        # TF.js stores int64 as int32: back to the dtype the graph declares.
        value: np.ndarray = np.array(weights[node.name], _TF_DTYPES[tensor.dtype],
                                     order="C")  # keeps 0-d
        tensor.ClearField("tensor_shape")
        tensor.tensor_shape.SetInParent()
        for size in value.shape:
            tensor.tensor_shape.dim.add().size = int(size)
        tensor.tensor_content = value.tobytes()
    return graph.SerializeToString()


def convert(model_json: Path, input_shape: list[int] | None = None) -> Any:
    """An ``openvino.Model`` from a TF.js graph model (input shape fixed when given).

    Example:
        >>> convert(Path("models/movenet-multipose.json"), [1, 256, 256, 3])
        <Model: 'TensorFlow_Frontend_IR' ...>
    """
    import openvino as ov

    data = graph_def_bytes(model_json)
    with tempfile.TemporaryDirectory(prefix="streamer-tfjs-") as tmp:
        pb = Path(tmp) / (Path(model_json).stem + ".pb")
        pb.write_bytes(data)
        try:
            kwargs = {"input": [input_shape]} if input_shape else {}
            return ov.convert_model(str(pb), **kwargs)
        except Exception as exc:  # the front end's own error types vary by version
            raise ModelError(f"OpenVINO could not convert {model_json} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
