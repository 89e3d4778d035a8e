"""Smoke tests of the ModelScope reference harness (tests/modelscope_ref.py).

They prove the harness itself works: ModelScope's M2FP imports with the mmcv stand-in, tiny
random models build and round-trip through ModelScope's own checkpoint loader, the stock
pipeline runs offline on a real photo, and the stand-in deformable attention is correct.
Skipped with a clear reason when ModelScope is not installed
(``pip install -e '.[test]'``).
"""

from __future__ import annotations

import socket
from pathlib import Path

import modelscope_ref as ref
import numpy as np
import pytest
import torch

ref.require_modelscope()

MEDIA_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "images"
PHOTO = MEDIA_IMAGES / "coco_000000000785_skier.jpg"  # 640 x 425, one person


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny single- and multi-person model directories plus the in-memory ModelScope models."""
    out = {}
    for variant in ("single", "multi"):
        model_dir = tmp_path_factory.mktemp(f"m2fp_{variant}")
        model = ref.make_reference_model_dir(model_dir, variant, tiny=True, seed=0)
        out[variant] = (model_dir, model)
    return out


@pytest.fixture(scope="module")
def photo():
    if not PHOTO.exists():
        pytest.skip(f"media not present: {PHOTO}")
    from PIL import Image

    return np.asarray(Image.open(PHOTO).convert("RGB"))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the ModelScope reference tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- stand-in


def _brute_force_msda(value, shapes, locations, weights):
    """Per-sample bilinear interpolation, zero outside, pixel centres at (i + 0.5) / size."""
    n, _, heads, c = value.shape
    _, lq, _, levels, points, _ = locations.shape
    starts = np.concatenate([[0], np.cumsum([h * w for h, w in shapes])])
    out = np.zeros((n, lq, heads, c))
    for b in range(n):
        for q in range(lq):
            for h in range(heads):
                for lvl, (height, width) in enumerate(shapes):
                    fmap = value[b, starts[lvl]:starts[lvl + 1], h].reshape(height, width, c)
                    for p in range(points):
                        x = locations[b, q, h, lvl, p, 0] * width - 0.5
                        y = locations[b, q, h, lvl, p, 1] * height - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        sample = np.zeros(c)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < height and 0 <= xx < width:
                                    sample += wy * wx * fmap[yy, xx]
                        out[b, q, h] += weights[b, q, h, lvl, p] * sample
    return out.reshape(n, lq, heads * c)


def test_standin_deformable_attention_matches_brute_force():
    ref._prepare_imports()
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 5), (1, 1)]
    n, lq, heads, c, points = 2, 5, 2, 3, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), heads, c, generator=g,
                        dtype=torch.float64)
    # include locations outside [0, 1] to exercise the zero padding
    locations = torch.rand(n, lq, heads, len(shapes), points, 2, generator=g,
                           dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, heads, len(shapes), points, generator=g, dtype=torch.float64)
    got = multi_scale_deformable_attn_pytorch(value, torch.tensor(shapes), locations, weights)
    assert got.shape == (n, lq, heads * c)
    want = _brute_force_msda(value.numpy(), shapes, locations.numpy(), weights.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_modelscope_uses_the_standin():
    ref._prepare_imports()
    import mmcv.ops.multi_scale_deform_attn as standin
    from modelscope.models.cv.image_instance_segmentation.maskdino import ms_deform_attn

    assert Path(standin.__file__).is_relative_to(ref.STANDIN_DIR)
    assert ms_deform_attn.multi_scale_deformable_attn_pytorch is \
        standin.multi_scale_deformable_attn_pytorch
    with pytest.raises(RuntimeError):
        standin.MultiScaleDeformableAttnFunction.apply()


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("variant", ["single", "multi"])
def test_full_size_config_is_accepted(tmp_path, variant):
    """ModelScope's M2FP accepts the full configurations (R101); only construction, no forward."""
    ref.write_config(tmp_path, variant)
    M2FP = ref._m2fp_class()
    kwargs = ref.read_model_kwargs(tmp_path)
    kwargs["pretrained"] = False
    model = M2FP(str(tmp_path), **kwargs)
    assert len(model.backbone.res4) == 23  # ResNet-101
    assert model.num_classes == (20 if variant == "single" else 21)
    assert model.num_queries == 100


@pytest.mark.parametrize("variant", ["single", "multi"])
def test_tiny_model_outputs_and_checkpoint_round_trip(tiny_dirs, variant):
    model_dir, model = tiny_dirs[variant]
    assert (model_dir / ref.CONFIG_FILE).is_file()
    state = torch.load(model_dir / ref.CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert set(state) == {"model"}
    assert set(state["model"]) == set(model.state_dict())
    assert not model.training

    g = torch.Generator().manual_seed(1)
    images = ref.smooth_random_images(1, 200, 150, g)  # padded to 224 x 160
    out = ref.modelscope_raw(model, images)
    classes = 20 if variant == "single" else 21
    assert out["pred_logits"].shape == (1, 20, classes + 1)
    assert out["pred_masks"].shape == (1, 20, 56, 40)
    assert out["padded_size"] == (224, 160)
    # non-trivial: queries disagree on class, masks are neither all-on nor all-off
    assert len(set(out["pred_logits"][0].argmax(-1).tolist())) >= 4
    on = (out["pred_masks"] > 0).float().mean().item()
    assert 0.1 < on < 0.9

    # ModelScope's own loader (pretrained: true) reproduces the in-memory model bit for bit
    loaded = ref.load_modelscope_model(model_dir)
    again = ref.modelscope_raw(loaded, images)
    torch.testing.assert_close(again["pred_logits"], out["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(again["pred_masks"], out["pred_masks"], rtol=0, atol=0)


def test_build_is_deterministic(tiny_dirs, tmp_path):
    _, model = tiny_dirs["multi"]
    ref.write_config(tmp_path, "multi", tiny=True)
    other = ref.build_modelscope_model(tmp_path, seed=0)
    a, b = model.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.media
def test_stock_pipeline_single(tiny_dirs, photo, no_network):
    model_dir, model = tiny_dirs["single"]
    run = ref.stock_pipeline(model_dir)
    assert type(run.pipeline).__name__ == "ImageHumanParsingPipeline"
    result = run(photo)
    assert result["labels"] and len(result["masks"]) == len(result["labels"])
    label_map = ref.stock_label_map(result, ref.LIP_CLASSES, photo.shape[:2])
    assert label_map.shape == photo.shape[:2]
    assert label_map.min() >= 0 and label_map.max() < len(ref.LIP_CLASSES)
    # single-person: the masks are the argmax of one semantic map, so they tile the image
    assert int(sum(np.asarray(m).sum() for m in result["masks"])) == label_map.size

    raw = ref.modelscope_forward(model, photo)
    assert raw["input"].shape == (1, 3, 512, 384)  # the 384 x 512 (w x h) canvas
    x0, y0, x1, y1 = raw["crop_box"]
    assert (x1 - x0, y1 - y0) == (384, 255)  # 640 x 425 scaled to fit, centred

    # the indentation quirk: no 'sem_seg' when postprocessing happens before inference
    run.model.sem_seg_postprocess_before_inference = True
    try:
        with pytest.raises(NotImplementedError):
            run(photo[:64, :48])
    finally:
        run.model.sem_seg_postprocess_before_inference = False


@pytest.mark.media
def test_stock_pipeline_multi(tiny_dirs, photo, no_network):
    model_dir, model = tiny_dirs["multi"]
    run = ref.stock_pipeline(model_dir)
    result = run(photo)
    assert set(result) >= {"masks", "labels", "scores"}
    assert result["labels"], "random weights should still give some part instances"
    assert all(np.asarray(m).shape == photo.shape[:2] for m in result["masks"])
    label_map = ref.stock_label_map(result, ref.CIHP_CLASSES, photo.shape[:2])
    assert label_map.shape == photo.shape[:2]
    assert 0 <= label_map.min() and label_map.max() < ref.CIHP_CLASSES.index("Human")

    raw = ref.modelscope_forward(model, photo)
    assert raw["input"].shape == (1, 3, 640, 964)  # short side 640
    assert raw["pred_masks"].shape == (1, 20, 160, 248)  # padded to 640 x 992, stride 4
