"""The accuracy tool: metrics checked against a by-hand computation, and the eval command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamer.apps.evaluate import Confusion, find_pairs, load_label, main, score_pairs
from streamer.core.errors import ConfigError, SourceError

ROOT = Path(__file__).resolve().parents[1]
NAMES = tuple(f"c{i}" for i in range(20))


def reference(pairs: list[tuple[np.ndarray, np.ndarray]], n: int = 20):
    """Per-class IoU, mIoU and pixel accuracy the slow, obvious way (loops and sums)."""
    tp, fp, fn = [0] * n, [0] * n, [0] * n
    correct = total = 0
    for pred, truth in pairs:
        valid = truth != 255
        for c in range(n):
            t = (truth == c) & valid
            p = (pred == c) & valid
            tp[c] += int(np.sum(t & p))
            fp[c] += int(np.sum(p & ~t))
            fn[c] += int(np.sum(t & ~p))
        correct += int(np.sum((pred == truth) & valid))
        total += int(np.sum(valid))
    ious = {c: tp[c] / (tp[c] + fp[c] + fn[c]) for c in range(n) if tp[c] + fp[c] + fn[c]}
    return ious, sum(ious.values()) / len(ious), correct / total


def gt_pairs(media: Path, name: str) -> list[tuple[Path, Path]]:
    root = media / "parsing_gt" / name
    pairs, unlabelled = find_pairs(root / "images", root / "labels")
    assert not unlabelled
    return pairs


def shifted(truth: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``truth`` moved right by dx and down by dy; uncovered pixels are background."""
    out = np.zeros_like(truth)
    h, w = truth.shape
    out[dy:, dx:] = truth[:h - dy, :w - dx]
    return out


def folders(tmp_path: Path, image: tuple[int, int] | None = (8, 6),
            label: tuple[int, int] | None = (8, 6)) -> tuple[Path, Path]:
    """``tmp_path/images`` and ``tmp_path/labels``, holding an RGB ``a.jpg`` of size ``image``
    and a label ``a.png`` of size ``label`` (None: that file is not made)."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    if image is not None:
        Image.new("RGB", image).save(images / "a.jpg")
    if label is not None:
        Image.new("L", label).save(labels / "a.png")
    return images, labels


def error_line(capsys: pytest.CaptureFixture[str], start: str) -> str:
    """What the command wrote to stderr: one line, starting with ``start``."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(start) and "\n" not in err, err
    return err


def test_hand_made_example():
    truth = np.array([[0, 0, 1, 1],
                      [0, 2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 9]], np.uint8)
    s = score_pairs([(pred, truth)], NAMES)
    # bg: tp 2, truth 3, pred 3 -> 2/4; c1: tp 2, truth 2, pred 3 -> 2/3; c2: tp 1, truth 2,
    # pred 1 -> 1/2. The pixel predicted 9 is not annotated (255): ignored.
    assert s.iou[:3] == pytest.approx([2 / 4, 2 / 3, 1 / 2])
    assert s.iou[9] is None and 9 in s.excluded
    assert s.miou == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert s.pixel_accuracy == pytest.approx(5 / 7)
    assert s.pixels == 7 and s.ignored == 1


def test_unknown_predicted_ids_count_as_wrong():
    truth = np.array([[1, 1, 0]], np.uint8)
    pred = np.array([[1, 255, 0]], np.uint8)  # 255: "person, too small to parse"
    s = score_pairs([(pred, truth)], NAMES[:3])
    assert s.iou == [1.0, 0.5, None]
    assert s.pixel_accuracy == pytest.approx(2 / 3)
    assert s.predicted_pixels == [1, 1, 0]


def test_truth_with_more_classes_than_names_grows():
    truth = np.array([[0, 24]], np.uint8)
    s = score_pairs([(truth, truth)], ("bg",))
    assert len(s.iou) == 25 and s.classes[24] == "class 24" and s.miou == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(SourceError, match="does not match"):
        Confusion(2).add(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("name", ["cihp", "lip"])
def test_ground_truth_scores_one(media, name):
    truths = [load_label(label) for _, label in gt_pairs(media, name)]
    s = score_pairs([(t, t) for t in truths], NAMES)
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0
    present = sorted(set(np.unique(np.concatenate([t.ravel() for t in truths]))) - {255})
    assert [c for c, v in enumerate(s.iou) if v is not None] == present
    assert all(s.iou[c] == 1.0 for c in present)
    assert s.pixels == sum(t.size for t in truths) - s.ignored


@pytest.mark.parametrize("name", ["cihp", "lip"])
def test_all_background_matches_hand_computation(media, name):
    truths = [load_label(label) for _, label in gt_pairs(media, name)]
    pairs = [(np.zeros_like(t), t) for t in truths]
    s = score_pairs(pairs, NAMES)
    ious, miou, acc = reference(pairs)
    valid = sum(int(np.sum(t != 255)) for t in truths)
    background = sum(int(np.sum(t == 0)) for t in truths)
    # Closed form: background IoU = truth background / all annotated pixels, others 0.
    assert ious[0] == pytest.approx(background / valid)
    assert s.iou[0] == pytest.approx(background / valid, abs=1e-12)
    assert all(s.iou[c] == 0.0 for c in ious if c)
    assert s.miou == pytest.approx(miou, abs=1e-12)
    assert s.miou == pytest.approx(background / valid / len(ious), abs=1e-12)
    assert s.pixel_accuracy == pytest.approx(acc, abs=1e-12)
    assert s.pixel_accuracy == pytest.approx(background / valid, abs=1e-12)


@pytest.mark.parametrize("name", ["cihp", "lip"])
def test_shifted_labels_match_hand_computation(media, name):
    truths = [load_label(label) for _, label in gt_pairs(media, name)]
    pairs = [(shifted(t, 7, 3), t) for t in truths]
    s = score_pairs(pairs, NAMES)
    ious, miou, acc = reference(pairs)
    assert {c: v for c, v in enumerate(s.iou) if v is not None} == pytest.approx(ious,
                                                                                abs=1e-12)
    assert s.miou == pytest.approx(miou, abs=1e-12)
    assert s.pixel_accuracy == pytest.approx(acc, abs=1e-12)
    assert 0.0 < s.miou < 1.0


def test_pairs_by_stem_and_their_errors(tmp_path):
    images, labels = folders(tmp_path, image=None, label=None)
    with pytest.raises(ConfigError, match="--images folder"):
        find_pairs(tmp_path / "nope", labels)
    Image.new("RGB", (8, 6)).save(images / "a.jpg")
    Image.new("RGB", (8, 6)).save(images / "b.png")
    with pytest.raises(SourceError, match="no image"):
        find_pairs(images, labels)
    Image.new("L", (8, 6)).save(labels / "a.png")
    Image.new("L", (8, 6)).save(labels / "zzz.png")
    pairs, unlabelled = find_pairs(images, labels)
    assert [(i.name, lab.name) for i, lab in pairs] == [("a.jpg", "a.png")]
    assert [p.name for p in unlabelled] == ["b.png"]
    Image.new("RGB", (8, 6)).save(labels / "rgb.png")
    with pytest.raises(SourceError, match="not single-channel"):
        load_label(labels / "rgb.png")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--images", str(tmp_path / "nope"), "--labels", str(tmp_path)]) == 2
    error_line(capsys, "error: --images folder")
    images, labels = folders(tmp_path, label=None)
    assert main(["--images", str(images), "--labels", str(labels)]) == 1
    error_line(capsys, "error: no image")


def test_size_mismatch_is_one_error_line(tmp_path, capsys, tiny_single_model):
    images, labels = folders(tmp_path, image=(40, 30), label=(30, 40))
    code = main(["--images", str(images), "--labels", str(labels), "--model",
                 str(tiny_single_model), "--engine", "torch"])
    error_line(capsys, "error: size mismatch: image a.jpg is 40x30 but label a.png is 30x40")
    assert code == 1


def test_cli_table_and_json(media, tmp_path, tiny_single_model):
    lip = media / "parsing_gt" / "lip"
    out = tmp_path / "scores.json"
    proc = subprocess.run(
        [sys.executable, "run_stream.py", "eval", "--images", str(lip / "images"),
         "--labels", str(lip / "labels"), "--model", str(tiny_single_model),
         "--engine", "torch", "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["id", "class", "IoU", "truth", "px", "pred", "px"]
    assert any(line.startswith("mIoU") and "excluded" in line for line in lines)
    assert any(line.startswith("pixel accuracy") for line in lines)
    data = json.loads(out.read_text())
    assert data["images"] == 2 and len(data["per_image"]) == 2
    assert data["model_kind"] == "single-person" and data["engine"] == "torch"
    assert len(data["classes"]) == 20 and data["classes"][13]["name"] == "Face"
    assert "excluded" in data["note"]
    # The JSON numbers are the metric of the model's own label maps (same thread count, so the
    # same arithmetic; the tolerance allows a few pixels on a decision boundary).
    from streamer.apps.evaluate import load_image
    from streamer.parsing.parser import HumanParser, ParserOptions

    parser = HumanParser(ParserOptions(model=str(tiny_single_model), engine="torch", threads=1))
    pairs = [(parser.parse(load_image(i)).labels, load_label(lab))
             for i, lab in find_pairs(lip / "images", lip / "labels")[0]]
    ious, miou, acc = reference(pairs)
    assert data["miou"] == pytest.approx(miou, abs=1e-3)
    assert data["pixel_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert data["miou_classes"] == sorted(ious)


def test_multi_person_model_and_hog_paths(media, tmp_path, capsys, tiny_multi_model,
                                          tiny_single_model):
    lip = media / "parsing_gt" / "lip"
    args = ["--images", str(lip / "images"), "--labels", str(lip / "labels"),
            "--engine", "torch"]
    assert main([*args, "--model", str(tiny_multi_model), "--json",
                 str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["model_kind"] == "multi-person"
    assert main([*args, "--model", str(tiny_single_model), "--detector", "hog",
                 "--json", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["detector"] == "hog"
    assert "mIoU" in capsys.readouterr().out


# ------------------------------------------- issue 14 item 20: both mIoU conventions, export
def cihp_reference(pairs: list[tuple[np.ndarray, np.ndarray]], n: int = 20) -> float:
    """mIoU the CIHP / LIP way, written from its definition: one n x n confusion matrix over
    annotated pixels, IoU = tp / max(1, truth + predicted - tp) per class, averaged over all
    n classes (a class absent from both counts 0)."""
    confusion = np.zeros((n, n))
    for pred, truth in pairs:
        valid = truth != 255
        for t, p in zip(truth[valid].ravel(), pred[valid].ravel(), strict=True):
            if p < n:
                confusion[t, p] += 1
    tp = np.diag(confusion)
    return float(np.mean(tp / np.maximum(1.0, confusion.sum(1) + confusion.sum(0) - tp)))


def test_miou_both_ways_by_hand():
    truth = np.array([[0, 1], [1, 255]], np.uint8)
    pred = np.array([[0, 1], [0, 0]], np.uint8)
    s = score_pairs([(pred, truth)], ("bg", "hat", "hair"))
    # bg 1/2, hat 1/2, hair absent from both: left out of miou, counted 0 in the CIHP mean.
    assert s.miou == pytest.approx(0.5) and s.excluded == [2]
    assert s.miou_all_classes == pytest.approx(1 / 3)
    assert s.mean_class_accuracy == pytest.approx((1 + 0.5 + 0) / 3)
    data = s.to_dict()
    assert data["miou"] == 0.5 and data["miou_all_classes"] == pytest.approx(1 / 3, abs=1e-6)
    assert "CIHP" in data["miou_all_classes_note"] and "excluded" in data["note"]


@pytest.mark.parametrize("name", ["cihp", "lip"])
def test_miou_all_classes_matches_the_cihp_definition(media, name):
    truths = [load_label(label) for _, label in gt_pairs(media, name)]
    pairs = [(shifted(t, 5, 2)[::2, ::2].copy(), t[::2, ::2].copy()) for t in truths]
    s = score_pairs(pairs, NAMES)
    assert s.miou_all_classes == pytest.approx(cihp_reference(pairs), abs=1e-12)
    assert s.excluded and s.miou_all_classes < s.miou


def test_eval_exports_the_predictions_it_scored(media, tmp_path, capsys, tiny_single_model):
    lip = media / "parsing_gt" / "lip"
    out, json_path = tmp_path / "pred", tmp_path / "s.json"
    code = main(["--images", str(lip / "images"), "--labels", str(lip / "labels"), "--model",
                 str(tiny_single_model), "--engine", "torch", "--labels-out", str(out),
                 "--json", str(json_path), "--log-level", "ERROR"])
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "mIoU CIHP/LIP" in stdout
    pairs = find_pairs(lip / "images", lip / "labels")[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i.stem}.png" for i, _ in pairs)
    # Scoring the exported maps again gives the numbers eval reported: they are what it scored.
    again = score_pairs([(load_label(out / f"{i.stem}.png"), load_label(lab))
                         for i, lab in pairs], NAMES)
    data = json.loads(json_path.read_text())
    assert data["miou"] == pytest.approx(again.miou, abs=1e-6)
    assert data["miou_all_classes"] == pytest.approx(again.miou_all_classes, abs=1e-6)
    assert data["pixel_accuracy"] == pytest.approx(again.pixel_accuracy, abs=1e-6)


def test_eval_refuses_to_export_over_its_inputs(media, tmp_path, capsys):
    images, labels = folders(tmp_path)
    before = (labels / "a.png").read_bytes()
    for target in (labels, images):
        assert main(["--images", str(images), "--labels", str(labels), "--labels-out",
                     str(target), "--model", str(tmp_path / "no-model")]) == 2
        error_line(capsys, "error: --labels-out")
    assert (labels / "a.png").read_bytes() == before


def test_eval_help_has_log_level():
    proc = subprocess.run([sys.executable, "run_stream.py", "eval", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--log-level" in proc.stdout
    assert "--labels-out" in proc.stdout
