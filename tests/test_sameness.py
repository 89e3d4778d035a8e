"""Proof that streamer's M2FP is ModelScope's M2FP.

ModelScope's own ``M2FP`` class (test-only dependency; mmcv replaced by tests/mmcv_standin)
builds a full-size R101 checkpoint with random weights; our network loads it with strict key
checking and must give the same logits and masks, and our whole parse (our preprocessing, our
quarter-resolution post-processing) the same label maps as ModelScope's stock pipeline on real
photos, for the single- and the multi-person model.
"""

from __future__ import annotations

from pathlib import Path

import modelscope_ref as ref
import numpy as np
import pytest
import torch
from PIL import Image

from streamer.m2fp.model import PIXEL_MEAN, SIZE_DIVISIBILITY
from streamer.parsing.parser import HumanParser, ParserOptions

ref.require_modelscope()

PHOTOS = ("opencv_messi5.jpg", "coco_000000000785_skier.jpg", "ultralytics_zidane.jpg",
          "coco_000000196141_baseball.jpg")


@pytest.fixture(scope="module", params=["single", "multi"])
def pair(request, tmp_path_factory):
    """(variant, ModelScope model, stock pipeline, our parser) sharing one checkpoint."""
    variant = request.param
    model_dir = tmp_path_factory.mktemp(f"ref-{variant}")
    ref.make_reference_model_dir(model_dir, variant, tiny=False, seed=11)
    stock = ref.stock_pipeline(model_dir)
    ours = HumanParser(ParserOptions(model=str(model_dir), engine="torch"))
    return variant, stock.model.eval(), stock, ours


def photos(media: Path, count: int) -> list[tuple[str, np.ndarray]]:
    return [(name, np.asarray(Image.open(media / "images" / name).convert("RGB")))
            for name in PHOTOS[:count]]


def pad_like_modelscope(images: torch.Tensor) -> torch.Tensor:
    """ModelScope zero-pads the normalised batch; ours normalises inside, so pad with the mean."""
    h, w = images.shape[-2:]
    d = SIZE_DIVISIBILITY
    ph, pw = (h + d - 1) // d * d, (w + d - 1) // d * d
    out = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1).expand(images.shape[0], 3, ph, pw).clone()
    out[..., :h, :w] = images
    return out


def test_raw_outputs_match(pair, media):
    variant, model, _, ours = pair
    name, image = photos(media, 1)[0]
    expected = ref.modelscope_forward(model, image)
    # Masked attention thresholds mask logits, so a rounding difference upstream can flip an
    # attention-mask bit; summing deformable attention in ModelScope's order removes that.
    ours.net.use_reference_order(True)
    try:
        with torch.inference_mode():
            logits, masks = ours.net(pad_like_modelscope(expected["input"]))
    finally:
        ours.net.use_reference_order(False)
    assert logits.shape == expected["pred_logits"].shape
    assert masks.shape == expected["pred_masks"].shape
    torch.testing.assert_close(logits, expected["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(masks, expected["pred_masks"], atol=1e-4, rtol=0)


def test_label_maps_match_stock_pipeline(pair, media):
    variant, model, stock, ours = pair
    classes = list(model.classes)
    for name, image in photos(media, 4 if variant == "single" else 2):
        expected = ref.stock_label_map(stock(image), classes, image.shape[:2])
        got = ours.parse(image).labels
        agreement = float((got == expected).mean())
        print(f"{variant} {name}: {agreement:.5f} of label pixels identical, "
              f"{len(np.unique(expected))} classes present")
        assert agreement >= 0.999, f"{variant} {name}: only {agreement:.4%} identical"
