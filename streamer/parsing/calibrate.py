"""Calibrate int8 models on your own footage, and say which engine to use on this machine.

    python -m streamer.calibrate --model DIR --source PATH [PATH ...] \\
        --engine onnxruntime|openvino [--crops N] [--held-out N] [--json OUT]

Sources are videos, images or folders of them. People are found with the configured detector
(streamer.vision.detect's PersonFinder, HOG by default) on frames spread over each video; each
crop is fitted onto the model's canvas exactly as HumanParser does. ``--crops`` of them
calibrate the activation ranges (ONNX Runtime's static quantiser, or NNCF for OpenVINO);
``--held-out`` others, never seen by calibration, measure the int8 model's label-pixel agreement
with fp32 torch. The int8 model is written into the engine cache, where ``parser.precision:
int8`` finds it; a ``.json`` beside it records the footage and the agreement. Last, the
agreement gate (streamer.parsing.gate) compares the int8 model with the fp32 engines on the
held-out crops and prints the fastest setting that agrees on >= 99.5% of label pixels
(``--min-agreement 0.99`` to opt in to 99%).

Example:
    >>> report = calibrate("models/single", ["clips/cam1.mp4", "photos/"], "openvino",
    ...                    crops=64, held_out=16)
    >>> round(report.agreement_vs_torch, 3)
    0.997
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamer.core.errors import ConfigError, SourceError, StreamerError
from streamer.core.labels import IMAGE_SUFFIXES
from streamer.io.sources import open_source
from streamer.m2fp.checkpoint import CHECKPOINT_FILE
from streamer.m2fp.preprocess import to_single_canvas
from streamer.parsing.engines import (
    AGREEMENT_GATE,
    cpu_has_bf16,
    default_cache_dir,
    int8_model_path,
    onnx_model,
)
from streamer.parsing.gate import (
    Candidate,
    Measurement,
    check_min_agreement,
    choose,
    format_table,
    measure,
)
from streamer.vision.detect import DetectorOptions, PersonFinder

log = logging.getLogger("streamer.calibrate")

INT8_ENGINES = ("onnxruntime", "openvino")
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg",
                            ".mpeg", ".flv", ".wmv"})
#: People shorter than this are not worth calibrating on (the parser skips them too).
MIN_CROP_HEIGHT = 64


@dataclass
class CalibrationReport:
    """What ``calibrate`` did and measured (written next to the int8 model as JSON)."""

    engine: str
    model: str
    artefact: str
    sources: list[str]
    calibration_crops: int
    held_out_crops: int
    agreement_vs_torch: float | None
    seconds: float
    candidates: list[dict] = field(default_factory=list)
    recommended: str | None = None
    min_agreement: float = AGREEMENT_GATE
    weights_note: str = ""


#: Operators ONNX Runtime quantises: the convolutions and matrix products that carry the FLOPs,
#: and the additions, ReLUs and pooling between them, so int8 tensors flow from one layer to the
#: next through the ResNet; normalisations, softmax and grid sampling stay fp32.
ORT_QUANTIZED_OPS: tuple[str, ...] = ("Conv", "MatMul", "Add", "Relu", "MaxPool")
#: Parts of the network both quantisers keep in fp32 (ONNX node-name prefixes). The masked-
#: attention decoder thresholds its intermediate masks at 0.5 and adds -inf attention masks,
#: so int8 noise there flips whole regions, for about 2% of the network's FLOPs.
FP32_SCOPES: tuple[str, ...] = ("/predictor/",)


def expand_sources(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Videos and images named by ``paths``, folders expanded (sorted, not recursive).

    Example:
        >>> [p.name for p in expand_sources(["clips/"])]
        ['cam1.mp4', 'cam2.mp4']
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES)
            if not found:
                raise SourceError(f"folder {path} has no videos or images",
                                  hint="pass video files, images or folders holding them")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise SourceError(f"calibration source not found: {path}", hint="check the path")
    return out


def _frames_of(path: Path, wanted: int):
    """About ``wanted`` frames spread evenly over a video (every frame of an image)."""
    with open_source(path) as source:
        step = max(1, (source.info.frame_count or 0) // wanted)
        taken = 0
        for frame in source:
            if frame.index % step == 0:
                yield frame
                taken += 1
                if taken >= wanted:
                    break


def find_person_crops(
    sources: Sequence[str | os.PathLike[str]],
    count: int,
    detector: DetectorOptions | None = None,
    frames_per_video: int | None = None,
) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` person crops ``(name, RGB array)`` from videos and images.

    Frames are spread over each video, people found with ``PersonFinder`` (HOG unless
    ``detector`` says otherwise), and crops taken in turn from each source so that no single
    clip dominates.

    Example:
        >>> crops = find_person_crops(["clips/cam1.mp4"], 32)
        >>> crops[0][0]
        'cam1.mp4@f0#1'
    """
    files = expand_sources(sources)
    options = detector or DetectorOptions(type="hog", pad=0.1, min_size=MIN_CROP_HEIGHT // 2)
    per_video = frames_per_video or max(4, -(-2 * count // max(1, len(files))))
    per_source: list[list[tuple[str, np.ndarray]]] = []
    for path in files:
        found: list[tuple[str, np.ndarray]] = []
        try:
            for frame in _frames_of(path, per_video):
                finder = PersonFinder(options)  # frames are far apart: no tracking across them
                for person in finder.find(frame.image, 0):
                    b = person.box
                    if b.height >= MIN_CROP_HEIGHT and b.width >= 8:
                        found.append((f"{path.name}@f{frame.index}#{person.id}",
                                      frame.image[b.y0:b.y1, b.x0:b.x1].copy()))
        except SourceError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        per_source.append(found)
    # Share ``count`` between the sources in turn, then take each source's share spread evenly
    # over its crops (its whole clip, not just the start), and interleave the sources again.
    quota = [0] * len(per_source)
    while sum(quota) < count and any(q < len(f) for q, f in zip(quota, per_source, strict=True)):
        for i, found in enumerate(per_source):
            if quota[i] < len(found) and sum(quota) < count:
                quota[i] += 1
    picked = [[found[int(j)] for j in np.linspace(0, len(found) - 1, q).round()] if q else []
              for found, q in zip(per_source, quota, strict=True)]
    return [c for turn in itertools.zip_longest(*picked) for c in turn if c is not None]


def canvas_input(crop: np.ndarray, canvas_hw: tuple[int, int]) -> np.ndarray:
    """One crop as the engine's ``(1, 3, H, W)`` float32 input, prepared as HumanParser does."""
    canvas, _ = to_single_canvas(np.ascontiguousarray(crop), canvas_hw)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32)


class _DropBelowError(logging.Filter):
    """Drops a library's warnings and notes logged straight to the root logger."""

    def __init__(self, package: str) -> None:
        super().__init__()
        self.package = package

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self.package not in record.pathname


def quantize_onnxruntime(fp32_onnx: Path, out: Path, inputs: Sequence[np.ndarray]) -> None:
    """Static int8 quantisation with ONNX Runtime: QDQ, per-channel int8 weights, uint8
    activations from min/max ranges over ``inputs``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._next, None)
            return None if x is None else {"images": x}

    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    nodes_to_exclude = [n.name for n in graph.node if n.name.startswith(FP32_SCOPES)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.onnx")
    # MinMax calibration keeps only per-tensor minima and maxima per crop, so memory stays
    # small whatever the number of crops. The quantiser also derives (unused) parameters for
    # the excluded decoder's -inf attention masks; numpy's warnings about those say nothing.
    quiet = _DropBelowError("onnxruntime")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            quantize_static(
                str(fp32_onnx), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, op_types_to_quantize=list(ORT_QUANTIZED_OPS),
                nodes_to_exclude=nodes_to_exclude, calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        root.removeFilter(quiet)
    tmp.replace(out)


def quantize_openvino(fp32_onnx: Path, out_xml: Path, inputs: Sequence[np.ndarray]) -> None:
    """int8 quantisation with NNCF's post-training quantiser on the OpenVINO model."""
    # NNCF imports torch's extension builder, which warns that there is no CUDA on a CPU box.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise ConfigError("int8 for parser.engine openvino is calibrated with NNCF, which is "
                          "not installed", hint="pip install nncf") from None
    import openvino as ov

    # NNCF sets its own logger to INFO on import and lists every operation it leaves alone.
    nncf.set_log_level(logging.WARNING)
    model = ov.Core().read_model(str(fp32_onnx))
    quantized = nncf.quantize(
        model, nncf.Dataset(list(inputs)), subset_size=len(inputs),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(patterns=[re.escape(p) + ".*" for p in FP32_SCOPES],
                                        validate=False))
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_xml.with_name(f"{out_xml.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(out_xml.with_suffix(".bin"))
    tmp.replace(out_xml)




def default_candidates(engine: str) -> list[Candidate]:
    """The fp32 engines, OpenVINO bf16 where the CPU has it, and the new int8 model."""
    out = [Candidate("onnxruntime"), Candidate("openvino")]
    if cpu_has_bf16():
        out.append(Candidate("openvino", "bf16"))
    return out + [Candidate(engine, "int8")]


def calibrate(
    model: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    engine: str,
    *,
    crops: int = 64,
    held_out: int = 16,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    candidates: Sequence[Candidate] | None = None,
    min_agreement: float = AGREEMENT_GATE,
    detector: DetectorOptions | None = None,
) -> CalibrationReport:
    """Write the int8 model for ``engine`` calibrated on ``sources`` and measure it.

    Example:
        >>> calibrate("models/single", ["clips/"], "onnxruntime", crops=32).recommended
        'parser.engine=openvino parser.precision=fp32'
    """
    from streamer.parsing.parser import HumanParser, ParserOptions

    if engine not in INT8_ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(INT8_ENGINES)}, not {engine!r}")
    if crops < 1 or held_out < 1:
        raise ConfigError("--crops and --held-out must be at least 1")
    check_min_agreement(min_agreement)
    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    parser = HumanParser(ParserOptions(model=str(model), engine="torch", threads=threads))
    if not parser.single_person:
        raise ConfigError("streamer.calibrate calibrates the single-person model (person "
                          "crops); this model parses whole frames",
                          hint="pass a single-person model directory with --model")
    canvas_hw = parser.cfg.canvas_hw
    checkpoint = parser.model_dir / CHECKPOINT_FILE
    found = find_person_crops(sources, crops + held_out, detector)
    if len(found) < 2:
        raise SourceError(f"found {len(found)} person crop(s) in {', '.join(map(str, sources))}, "
                          "too few to calibrate",
                          hint="pass footage where people are at least 64 px tall")
    # Every k-th crop is held out, so both sets span every source and the whole of each clip.
    k = max(2, round(len(found) / max(1, min(held_out, len(found) // 2))))
    test = [c for i, c in enumerate(found) if i % k == k - 1][:held_out]
    test_names = {name for name, _ in test}
    train = [c for c in found if c[0] not in test_names][:crops]
    log.info("calibrating on %d person crops, %d held out", len(train), len(test))

    fp32_onnx = onnx_model(parser.net, canvas_hw, checkpoint, cache)
    inputs = [canvas_input(crop, canvas_hw) for _, crop in train]
    out = int8_model_path(engine, checkpoint, canvas_hw, cache)
    quantize = quantize_onnxruntime if engine == "onnxruntime" else quantize_openvino
    quantize(fp32_onnx, out, inputs)
    del parser, inputs

    results = measure(model, list(candidates) if candidates is not None
                      else default_candidates(engine), [c for _, c in test],
                      threads=threads, cache_dir=cache)
    int8 = next((m for m in results if (m.engine, m.precision) == (engine, "int8")), None)
    best = choose(results, min_agreement)
    report = CalibrationReport(
        engine=engine, model=str(model), artefact=str(out),
        sources=[str(s) for s in sources], calibration_crops=len(train),
        held_out_crops=len(test),
        agreement_vs_torch=int8.agreement_vs_torch if int8 is not None else None,
        seconds=round(time.perf_counter() - started, 1),
        candidates=[asdict(m) for m in results],
        recommended=best.setting if best else None, min_agreement=min_agreement,
        weights_note="agreement is measured against this model's own fp32 output; with random "
                     "weights (streamer.testing.make_model) it says nothing about real parses",
    )
    out.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _print_report(report: CalibrationReport, results: list[Measurement]) -> None:
    print(f"int8 model for {report.engine}: {report.artefact}")
    print(f"calibrated on {report.calibration_crops} person crops, measured on "
          f"{report.held_out_crops} held-out crops in {report.seconds:.0f} s")
    if report.agreement_vs_torch is not None:
        print(f"int8 agrees with fp32 torch on {100 * report.agreement_vs_torch:.2f}% of "
              f"held-out label pixels")
    print()
    print(format_table(results, report.min_agreement))
    print()
    if report.recommended:
        print(f"recommended on this machine: --set {report.recommended.replace(' ', ' --set ')}")
    else:
        print(f"no setting reached {report.min_agreement} agreement")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m streamer.calibrate",
        description="Calibrate an int8 M2FP model on your own footage and measure it.")
    ap.add_argument("--model", required=True, help="model directory or ModelScope id")
    ap.add_argument("--source", required=True, nargs="+",
                    help="videos, images or folders with people in them")
    ap.add_argument("--engine", required=True, choices=INT8_ENGINES)
    ap.add_argument("--crops", type=int, default=64, help="calibration crops (default 64)")
    ap.add_argument("--held-out", type=int, default=16,
                    help="crops kept out of calibration to measure agreement (default 16)")
    ap.add_argument("--candidates", help="engine:precision pairs the gate compares, comma "
                    "separated (default: onnxruntime:fp32,openvino:fp32,openvino:bf16 and the "
                    "new int8)")
    ap.add_argument("--min-agreement", type=float, default=AGREEMENT_GATE,
                    help=f"the gate (default {AGREEMENT_GATE}; 0.99 is the lowest opt-in)")
    ap.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    ap.add_argument("--cache-dir", help="engine cache (default ~/.cache/streamer)")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("streamer.engines").setLevel(logging.WARNING)
    try:
        candidates = None
        if args.candidates:
            candidates = [Candidate.parse(c) for c in args.candidates.split(",") if c.strip()]
            candidates.append(Candidate(args.engine, "int8"))
        report = calibrate(args.model, args.source, args.engine, crops=args.crops,
                           held_out=args.held_out, cache_dir=args.cache_dir,
                           threads=args.threads, candidates=candidates,
                           min_agreement=args.min_agreement)
    except StreamerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    _print_report(report, [Measurement(**m) for m in report.candidates])
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
