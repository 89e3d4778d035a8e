"""int8 calibration on real footage, and the agreement gate (tiny random-weight model)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from streamer.core.errors import ConfigError, SourceError
from streamer.parsing.calibrate import calibrate, expand_sources, find_person_crops, main
from streamer.parsing.engines import calibration_record, default_cache_dir, int8_model_path
from streamer.parsing.gate import Candidate, Measurement, choose, label_agreement, measure
from streamer.parsing.parser import HumanParser, ParserOptions

CLIP = "videos/chaplin_bw.mp4"


@pytest.fixture
def cache(tmp_path):
    """An empty engine cache holding only the session's fp32 ONNX exports (not under test)."""
    for onnx in default_cache_dir().glob("onnxruntime-*.onnx"):
        if ".int8" not in onnx.name:
            shutil.copy(onnx, tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------ the gate
def m(engine: str, precision: str, median: float, agree: float) -> Measurement:
    return Measurement(engine, precision, median, median * 1.1, agree)


def test_gate_picks_the_fastest_at_the_default_agreement():
    results = [m("torch", "fp32", 0.80, 1.0), m("openvino", "fp32", 0.56, 0.9995),
               m("openvino", "bf16", 0.37, 0.97), m("onnxruntime", "int8", 0.45, 0.993)]
    best = choose(results)
    assert (best.engine, best.precision) == ("openvino", "fp32")
    assert best.setting == "parser.engine=openvino parser.precision=fp32"


def test_gate_lowers_to_99_only_on_opt_in_and_never_below():
    results = [m("openvino", "fp32", 0.56, 0.9995), m("onnxruntime", "int8", 0.45, 0.993),
               m("openvino", "int8", 0.30, 0.985)]
    assert choose(results, 0.99).precision == "int8"
    assert choose(results, 0.99).engine == "onnxruntime"
    for too_low in (0.98, 0.5, 1.5):
        with pytest.raises(ConfigError, match="min_agreement must be between 0.99 and 1"):
            choose(results, too_low)


def test_gate_skips_candidates_that_could_not_run_and_may_choose_none():
    results = [Measurement("openvino", "int8", error="not calibrated"),
               m("openvino", "bf16", 0.3, 0.9)]
    assert choose(results) is None
    assert choose(results + [m("torch", "fp32", 0.8, 1.0)]).engine == "torch"


def test_label_agreement_weighs_every_pixel():
    ref = [np.zeros((10, 10), np.uint8), np.zeros((2, 5), np.uint8)]
    got = [np.zeros((10, 10), np.uint8), np.ones((2, 5), np.uint8)]
    assert label_agreement(got, ref) == pytest.approx(100 / 110)


def test_measure_runs_torch_first_and_reports_what_could_not_run(tiny_single_model):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (200, 100, 3), dtype=np.uint8) for _ in range(2)]
    results = measure(tiny_single_model, [Candidate("openvino"), Candidate("openvino", "int8")],
                      crops, threads=1)  # the session's cache (conftest): exported once
    assert [(r.engine, r.precision) for r in results] == [
        ("torch", "fp32"), ("openvino", "fp32"), ("openvino", "int8")]
    assert results[0].agreement_vs_torch == 1.0
    assert results[1].agreement_vs_torch >= 0.995 and results[1].median_s > 0
    assert "streamer.calibrate" in results[2].error and results[2].median_s is None


# ------------------------------------------------------------------------------ calibration
def test_sources_are_checked(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        expand_sources([tmp_path / "nothing.mp4"])
    with pytest.raises(SourceError, match="no videos or images"):
        expand_sources([tmp_path])


def test_person_crops_come_from_real_footage(media):
    crops = find_person_crops([media / CLIP, media / "images" / "ultralytics_bus.jpg"], 6)
    assert len(crops) == 6
    # Taken in turn from each source, so the photo's people are not crowded out by the clip.
    assert {name.split("@")[0] for name, _ in crops} == {
        "chaplin_bw.mp4", "ultralytics_bus.jpg"}
    for _, crop in crops:
        assert crop.ndim == 3 and crop.shape[0] >= 64 and crop.dtype == np.uint8


def test_calibrate_onnxruntime_end_to_end(media, tiny_single_model, cache, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["--model", str(tiny_single_model), "--source", str(media / CLIP),
                 "--engine", "onnxruntime", "--crops", "6", "--held-out", "2",
                 "--candidates", "onnxruntime:fp32", "--threads", "1",
                 "--cache-dir", str(cache), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    agreement = float(re.search(r"int8 agrees with fp32 torch on ([\d.]+)%", printed).group(1))
    assert 0 < agreement <= 100
    assert "recommended on this machine: --set parser.engine=" in printed
    report = json.loads(out.read_text())
    assert report["calibration_crops"] == 6 and report["held_out_crops"] == 2
    artefact = int8_model_path("onnxruntime", tiny_single_model / "pytorch_model.pt",
                               (512, 384), cache)
    assert report["artefact"] == str(artefact)
    assert calibration_record(artefact)["agreement_vs_torch"] == report["agreement_vs_torch"]

    import onnx

    ops = {n.op_type for n in onnx.load(str(artefact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The engine picks the calibrated model up from the cache.
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="onnxruntime",
                                       precision="int8", cache_dir=str(cache)))
    labels = parser.parse_crops([np.full((300, 150, 3), 90, np.uint8)])[0]
    assert labels.shape == (300, 150)
    assert parser.engine_for(parser.cfg.canvas_hw).model_path == artefact


def test_calibrate_openvino_with_nncf(media, tiny_single_model, cache):
    pytest.importorskip("nncf", reason="OpenVINO int8 is calibrated with NNCF: pip install nncf")
    report = calibrate(tiny_single_model, [media / CLIP], "openvino", crops=4, held_out=2,
                       cache_dir=cache, threads=1, candidates=[Candidate("openvino", "int8")])
    assert report.calibration_crops == 4 and report.held_out_crops == 2
    assert 0 < report.agreement_vs_torch <= 1
    xml = int8_model_path("openvino", tiny_single_model / "pytorch_model.pt", (512, 384),
                          cache)
    assert report.artefact == str(xml) and xml.with_suffix(".bin").is_file()
    assert "FakeQuantize" in xml.read_text()
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                       precision="int8", cache_dir=str(cache)))
    assert parser.parse_crops([np.full((300, 150, 3), 90, np.uint8)])[0].shape == (300, 150)
    assert parser.engine_for(parser.cfg.canvas_hw).sources == {"whole": xml}


def test_calibrate_rejects_bad_arguments(tiny_single_model, tiny_multi_model, tmp_path, capsys):
    assert main(["--model", str(tiny_single_model), "--source", str(tmp_path / "none.mp4"),
                 "--engine", "onnxruntime", "--cache-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: calibration source not found")
    assert main(["--model", str(tiny_single_model), "--source", str(tmp_path),
                 "--engine", "openvino", "--min-agreement", "0.9"]) == 2
    assert "min_agreement must be between 0.99 and 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="single-person model"):
        calibrate(tiny_multi_model, [tmp_path], "openvino", cache_dir=tmp_path)
