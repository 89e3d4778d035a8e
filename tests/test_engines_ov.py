"""The OpenVINO engine, engine/precision options and their errors (tiny random-weight model)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from isa_env import ISAS, run_with_isa

from streamer.config import load_config
from streamer.core.errors import ConfigError
from streamer.parsing.engines import cpu_has_bf16, default_cache_dir, int8_model_path
from streamer.parsing.parser import HumanParser, ParserOptions

pytest.importorskip("openvino", reason="the openvino engine needs pip install openvino")


def photo(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), np.uint8))[:h, :w].copy()


CROPS = [photo(s, 180 + 90 * s, 90 + 50 * s) for s in range(4)]  # the last is shrunk to fit


@pytest.fixture(scope="module")
def reference(tiny_single_model) -> list[np.ndarray]:
    return HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch")
                       ).parse_crops(CROPS)


@pytest.fixture(scope="module")
def cache() -> Path:
    """The test session's engine cache (conftest), so the tiny model is exported once."""
    return default_cache_dir()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_openvino_fp32_agrees_with_torch_one_by_one_and_batched(
        tiny_single_model, reference, cache):
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                       batch_size=1, cache_dir=str(cache)))
    single = parser.parse_crops(CROPS)
    parser.options.batch_size = 4
    split = parser.parse_crops(CROPS)  # one engine call, run crop by crop on the batch-1 model
    engine = parser.engine_for(parser.cfg.canvas_hw)
    assert not engine.static_batches and set(engine._compiled) == {1}
    engine.static_batches = True
    batched = parser.parse_crops(CROPS)  # a static shape compiled for 4 crops
    assert set(engine._compiled) == {1, 4}
    for maps in (single, split, batched):
        for got, ref in zip(maps, reference, strict=True):
            assert agreement(got, ref) >= 0.995


def test_compiled_model_is_cached_and_not_rebuilt(tiny_single_model, cache, tmp_path):
    for onnx in cache.glob("*.onnx"):  # the export is not what is tested here
        shutil.copy(onnx, tmp_path)
    options = ParserOptions(model=str(tiny_single_model), engine="openvino", batch_size=2,
                            cache_dir=str(tmp_path))
    first = HumanParser(options)
    before = first.parse_crops(CROPS[:2])
    assert first.engine_for(first.cfg.canvas_hw).compiled_now == [1]
    blobs = {p: p.stat().st_mtime_ns for p in tmp_path.glob("openvino-*.blob")}
    assert len(blobs) == 1
    # The second start imports the compiled blob: no compiling, and not even the ONNX export
    # it was compiled from is read again.
    for onnx in tmp_path.glob("*.onnx"):
        onnx.unlink()
    second = HumanParser(options)
    after = second.parse_crops(CROPS[:2])
    assert second.engine_for(second.cfg.canvas_hw).compiled_now == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("openvino-*.blob")} == blobs
    assert not list(tmp_path.glob("*.onnx"))
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("damage", ["garbage", "empty"])
def test_damaged_blob_is_recompiled_with_a_warning(tiny_single_model, reference, cache,
                                                   tmp_path, caplog, damage):
    for onnx in cache.glob("*.onnx"):
        shutil.copy(onnx, tmp_path)
    options = ParserOptions(model=str(tiny_single_model), engine="openvino",
                            cache_dir=str(tmp_path))
    first = HumanParser(options)
    blob = first.engine_for(first.cfg.canvas_hw).blob_path(1)
    del first  # nothing maps the blob while it is damaged
    blob.write_bytes(b"not a compiled model" * 100 if damage == "garbage" else b"")
    with caplog.at_level(logging.WARNING, logger="streamer.parsing.engines"):
        parser = HumanParser(options)
    assert parser.engine_for(parser.cfg.canvas_hw).compiled_now == [1]
    assert any("recompiling" in r.getMessage() for r in caplog.records)
    assert blob.stat().st_size > 1000
    for got, ref in zip(parser.parse_crops(CROPS), reference, strict=True):
        assert agreement(got, ref) >= 0.995


def test_cache_key_separates_precision_and_hint(tiny_single_model, cache):
    made = set()
    for precision, hint in [("fp32", "latency"), ("fp32", "throughput"), ("bf16", "latency")]:
        parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                           precision=precision, perf_hint=hint,
                                           cache_dir=str(cache)))
        made.add(parser.engine_for(parser.cfg.canvas_hw).blob_path(1).name)
    assert len(made) == (3 if cpu_has_bf16() else 2)  # bf16 without the CPU support is fp32


def test_throughput_hint_runs_crops_on_parallel_requests(tiny_single_model, reference,
                                                         cache):
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                       perf_hint="throughput", batch_size=4,
                                       cache_dir=str(cache)))
    maps = parser.parse_crops(CROPS)
    engine = parser.engine_for(parser.cfg.canvas_hw)
    assert set(engine._compiled) == {1}  # crops are spread over requests, not batched
    assert engine.concurrency >= 1  # the infer request chains of batch 1
    for got, ref in zip(maps, reference, strict=True):
        assert agreement(got, ref) >= 0.995


def test_bf16_runs_in_bf16_where_the_cpu_has_it(tiny_single_model, reference, cache):
    # What holds in any process and test order; the one-time warning is checked in a fresh
    # process below (it is logged once per process, so an earlier test may have taken it).
    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                       precision="bf16", cache_dir=str(cache)))
    maps = parser.parse_crops(CROPS[:2])
    engine = parser.engine_for(parser.cfg.canvas_hw)
    hints = [str(part.get_property("INFERENCE_PRECISION_HINT")) for part in engine.compiled(1)]
    if cpu_has_bf16():
        # Backbone and pixel decoder in bf16, the transformer decoder kept in fp32.
        assert engine.precision == "bf16" and len(hints) == 2
        assert "bfloat16" in hints[0] and "float32" in hints[1]
        blobs = {engine.blob_path(1, part) for part, _ in engine.parts}
        assert len(blobs) == 2 and all(b.is_file() for b in blobs)
        # Parallel request chains (throughput hint) give what the latency chain gives.
        fast = HumanParser(ParserOptions(model=str(tiny_single_model), engine="openvino",
                                         precision="bf16", perf_hint="throughput",
                                         batch_size=4, cache_dir=str(cache)))
        for a, b in zip(fast.parse_crops(CROPS[:2]), maps, strict=True):
            assert agreement(a, b) >= 0.999
    else:
        assert engine.precision == "fp32" and len(hints) == 1 and "float32" in hints[0]
    # bf16 label maps are not held to the gate (random weights make them fragile); they must
    # still be label maps of the crop, mostly like fp32's.
    for got, ref in zip(maps, reference, strict=False):
        assert got.shape == ref.shape and agreement(got, ref) > 0.5


BF16_CHILD = """
import json, logging, sys
import numpy as np
from streamer.parsing.calibrate import default_candidates
from streamer.parsing.engines import cpu_has_bf16
from streamer.parsing.parser import HumanParser, ParserOptions
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("streamer.engines").addHandler(handler)
logging.getLogger("streamer.engines").setLevel(logging.WARNING)
crop = np.kron(np.random.default_rng(0).integers(0, 255, (13, 7, 3), dtype=np.uint8),
               np.ones((16, 16, 1), np.uint8))
out = {"has_bf16": cpu_has_bf16(), "engines": [],
       "calibrate_tries": [c.precision for c in default_candidates("openvino")]}
for hint in ("latency", "throughput"):  # two engines: the warning is still logged once
    parser = HumanParser(ParserOptions(model=sys.argv[1], engine="openvino", precision="bf16",
                                       perf_hint=hint, cache_dir=sys.argv[2]))
    labels = parser.parse_crops([crop])[0]
    engine = parser.engine_for(parser.cfg.canvas_hw)
    out["engines"].append({
        "precision": engine.precision, "shape": list(labels.shape),
        "hints": [str(p.get_property("INFERENCE_PRECISION_HINT")) for p in engine.compiled(1)]})
out["warnings"] = [m for m in records if "no native bf16" in m]
print(json.dumps(out))
"""


def _native_bf16() -> bool:
    """Whether this CPU itself has bf16. OpenVINO's capability list reads CPUID and ignores
    ISA caps, so asking it here is right even if this process runs under one."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.parametrize("isa", sorted(ISAS))
def test_bf16_choice_and_warning_in_a_fresh_process(tiny_single_model, cache, isa):
    """bf16 where the (possibly capped) ISA has it, else fp32 with exactly one warning line.

    ``avx2`` caps oneDNN like an AVX2-only machine: OpenVINO still lists BF16 there but cannot
    compile bf16 ("object is not initialized"), so the choice must follow the cap. On a CPU
    without bf16 both runs take the fp32 branch; on one with it (the CI box) both branches are
    checked."""
    got = run_with_isa(isa, BF16_CHILD, str(tiny_single_model), str(cache))
    expected = _native_bf16() if isa == "native" else False
    assert got["has_bf16"] is expected
    for engine in got["engines"]:
        assert engine["shape"] == [13 * 16, 7 * 16]
        if expected:
            assert engine["precision"] == "bf16"
            assert ["bfloat16" in h for h in engine["hints"]] == [True, False]
        else:
            assert engine["precision"] == "fp32"
            assert len(engine["hints"]) == 1 and "float32" in engine["hints"][0]
    assert len(got["warnings"]) == (0 if expected else 1), got["warnings"]
    # streamer.calibrate measures bf16 only where it can run
    assert ("bf16" in got["calibrate_tries"]) is expected


@pytest.mark.parametrize("overrides, key", [
    (["parser.engine=torch", "parser.precision=int8"], "parser.precision"),
    (["parser.engine=onnxruntime", "parser.precision=bf16"], "parser.precision"),
    (["parser.precision=fp16"], "parser.precision"),
    (["parser.perf_hint=fastest"], "parser.perf_hint"),
    (["parser.engine=tensorrt"], "parser.engine"),
])
def test_unsupported_settings_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_int8_without_calibration_says_how_to_calibrate(tiny_single_model, tmp_path):
    for engine in ("onnxruntime", "openvino"):
        options = ParserOptions(model=str(tiny_single_model), engine=engine,
                                precision="int8", cache_dir=str(tmp_path))
        with pytest.raises(ConfigError) as err:  # the single-person engine is built at once
            HumanParser(options)
        text = str(err.value)
        assert "\n" not in text
        assert "parser.precision int8" in text
        assert f"python -m streamer.calibrate --model {tiny_single_model}" in text
        assert f"--engine {engine}" in text
        assert not int8_model_path(engine, tiny_single_model / "pytorch_model.pt",
                                   (512, 384), tmp_path).exists()


def test_blob_mapping_reads_the_file_and_faults_on_write(tmp_path):
    import signal
    import subprocess
    import sys

    from streamer.parsing.engines import map_read_only, release_pages

    blob_file = tmp_path / "x.blob"
    blob_file.write_bytes(bytes(range(256)) * 64)
    blob, view = map_read_only(blob_file)
    release_pages(blob)  # the pages come back from the file when read again
    assert view.flags.writeable and view.tobytes() == blob_file.read_bytes()
    code = ("import sys; from streamer.parsing.engines import map_read_only; "
            "blob, view = map_read_only(sys.argv[1]); view[0] = 1")
    run = subprocess.run([sys.executable, "-c", code, str(blob_file)], capture_output=True)
    assert run.returncode in (-signal.SIGSEGV, -signal.SIGBUS)
    assert blob_file.read_bytes()[:4] == bytes(range(4))
