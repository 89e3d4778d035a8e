"""Proof that streamer's M2FP is ModelScope's M2FP.

ModelScope's own ``M2FP`` class (test-only dependency; mmcv replaced by tests/mmcv_standin)
builds a full-size R101 checkpoint with random weights; our network loads it with strict key
checking and must give the same logits and masks, and our whole parse (our preprocessing, our
quarter-resolution post-processing) the same label maps as ModelScope's stock pipeline on real
photos, for the single- and the multi-person model. The raw comparison holds on any CPU: where
a kernel rounds differently, masked attention may flip an attention bit at a mask logit within
rounding of its threshold, and the test checks what must hold then (``check_raw_outputs``,
docs/sameness.md); it also re-runs with the kernels capped to AVX2 in a child process.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import modelscope_ref as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from isa_env import run_with_isa
from PIL import Image

from streamer.m2fp.preprocess import PIXEL_MEAN, SIZE_DIVISIBILITY
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


@dataclass
class DecoderTrace:
    """What one network's transformer decoder did, read through forward hooks only.

    ``masks[i]`` is the attention mask layer ``i`` attended with (True = blocked), one head's
    ``(N, Q, HW)``; ``logits[i]`` the mask logits it was thresholded from, recomputed from the
    layer's input with the network's own ``decoder_norm`` and ``mask_embed`` as both networks
    compute them: project at 1/4 resolution, then resize to the level's size.
    """

    masks: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


#: True while ``trace_decoder`` re-runs ``decoder_norm``/``mask_embed`` for its own record, so
#: other hooks (tests/isa_divergence.py) can tell those calls from the network's.
RECOMPUTING = [False]


@contextmanager
def trace_decoder(net: torch.nn.Module, replace: list[torch.Tensor] | None = None):
    """Record each cross-attention layer's attention mask and mask logits; with ``replace``,
    attend with those masks instead (all heads alike), so the rest of the network can be
    compared given the same masks."""
    predictor = net.sem_seg_head.predictor
    heads = predictor.num_heads
    trace = DecoderTrace()
    features: list[torch.Tensor] = []

    def keep_features(_module, _inputs, output):
        features.append(output)

    def before_layer(index, _module, args, kwargs):
        tgt = args[0]
        mask = kwargs["memory_mask"] if "memory_mask" in kwargs else args[2]
        n, q, hw = tgt.shape[1], tgt.shape[0], mask.shape[-1]
        mf = features[-1]
        scale = 2 ** (3 - index % 3)  # levels at 1/32, 1/16, 1/8 of the input; masks at 1/4
        size = (mf.shape[-2] // scale, mf.shape[-1] // scale)
        assert size[0] * size[1] == hw
        RECOMPUTING[0] = True
        try:
            embed = predictor.mask_embed(predictor.decoder_norm(tgt).transpose(0, 1))
        finally:
            RECOMPUTING[0] = False
        full = torch.einsum("bqc,bchw->bqhw", embed, mf)
        logits = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        trace.logits.append(logits.flatten(2))
        trace.masks.append(mask.view(n, heads, q, hw)[:, 0].clone())
        if replace is None:
            return None
        forced = replace[index][:, None].expand(n, heads, q, hw).reshape(n * heads, q, hw)
        if "memory_mask" in kwargs:
            return args, {**kwargs, "memory_mask": forced}
        return (args[0], args[1], forced, *args[3:]), kwargs

    handles = [net.sem_seg_head.pixel_decoder.mask_features.register_forward_hook(
        keep_features)]
    for i, layer in enumerate(predictor.transformer_cross_attention_layers):
        handles.append(layer.register_forward_pre_hook(
            functools.partial(before_layer, i), with_kwargs=True))
    try:
        yield trace
    finally:
        for handle in handles:
            handle.remove()


#: Float rounding between two orders of the same sums, on mask logits of magnitude ~10.
ROUNDING = 1e-4
#: At most this share of attention-mask bits may flip (each one a logit within ROUNDING of 0).
MAX_FLIPPED_SHARE = 1e-4


def check_raw_outputs(variant: str, model, ours: HumanParser, image: np.ndarray,
                      orders: tuple[str, ...] = ("reference",)) -> dict[str, dict]:
    """Our network computes ModelScope's function, on any CPU.

    In reference-order mode both networks run the same operations in the same order, and on
    this machine (AVX-512, and capped to AVX2 in ``test_raw_outputs_match_on_avx2``) they agree
    bit for bit. On another CPU a kernel may round differently, and masked attention thresholds
    mask logits at 0 (``sigmoid < 0.5``), so a logit within rounding of 0 can flip one attention
    bit and move the final logits by more than rounding (seen on an AVX2-only AMD machine: 7 of
    2200 logits off by up to 2.7e-4). So what is asserted is what must hold:

    1. mask logits agree to rounding at every layer up to the first one where a bit flips (so
       every flipped bit is a logit within rounding of the threshold), and few bits flip;
    2. given ModelScope's attention masks, our logits and masks agree with ModelScope's to
       ``ROUNDING`` -- with no flipped bit, that is our free run itself.

    ``orders`` may add ``"fast"``: our default order, checked the same way against the same
    ModelScope run. It rounds differently from ModelScope (~1e-7), as another CPU's kernels
    may, so it exercises the flipped-bit path of the proof. Returns, per order, what was
    measured (flipped bits per layer, largest differences).
    """
    with trace_decoder(model) as theirs:
        expected = ref.modelscope_forward(model, image)
    padded = pad_like_modelscope(expected["input"])
    return {order: _compare(variant, expected, theirs, ours.net, padded, order)
            for order in orders}


def _compare(variant: str, expected: dict, theirs: DecoderTrace, net: torch.nn.Module,
             padded: torch.Tensor, order: str) -> dict:
    net.use_reference_order(order == "reference")
    try:
        with torch.inference_mode():
            with trace_decoder(net) as mine:
                logits, masks = net(padded)
            flipped = [int((a != b).sum()) for a, b in zip(mine.masks, theirs.masks,
                                                            strict=True)]
            if any(flipped):
                with trace_decoder(net, replace=theirs.masks):
                    logits, masks = net(padded)
    finally:
        net.use_reference_order(False)
    bits = sum(m.numel() for m in theirs.masks)
    print(f"{variant}, {order} order: {sum(flipped)} of {bits} attention-mask bits flipped, "
          f"per layer {flipped}; ISA {torch.backends.cpu.get_cpu_capability()}")
    mask_logits_max_abs = 0.0
    for i, (a, b) in enumerate(zip(mine.logits, theirs.logits, strict=True)):
        # ModelScope's own thresholding (with its all-blocked rows opened) is what we recompute
        blocked = b.sigmoid() < 0.5
        opened = blocked.all(-1, keepdim=True)
        assert torch.equal(theirs.masks[i], blocked & ~opened), f"layer {i}: trace is off"
        mask_logits_max_abs = max(mask_logits_max_abs, float((a - b).abs().max()))
        assert mask_logits_max_abs <= ROUNDING, f"layer {i}: mask logits differ"
        if flipped[i]:
            break  # later layers attended differently: compared given the same masks below
    assert sum(flipped) <= MAX_FLIPPED_SHARE * bits, flipped
    assert logits.shape == expected["pred_logits"].shape
    assert masks.shape == expected["pred_masks"].shape
    torch.testing.assert_close(logits, expected["pred_logits"], atol=ROUNDING, rtol=0)
    torch.testing.assert_close(masks, expected["pred_masks"], atol=ROUNDING, rtol=0)
    return {"isa": torch.backends.cpu.get_cpu_capability(), "flipped": flipped, "bits": bits,
            "mask_logits_max_abs": mask_logits_max_abs,
            "logits_max_abs": float((logits - expected["pred_logits"]).abs().max()),
            "masks_max_abs": float((masks - expected["pred_masks"]).abs().max())}


def test_raw_outputs_match(pair, media):
    variant, model, _, ours = pair
    got = check_raw_outputs(variant, model, ours, photos(media, 1)[0][1],
                            orders=("reference", "fast"))
    print(f"{variant}: {got}")
    # The fast order stands in for a CPU whose kernels round differently: it must differ from
    # ModelScope by rounding (or the flipped-bit path of the proof is never exercised here).
    assert got["fast"]["mask_logits_max_abs"] > 0, "the fast order no longer rounds differently"


def test_the_same_attention_masks_give_the_same_outputs(tmp_path, media):
    """The proof's last step, checked where it must bite: attention masks with bits flipped on
    purpose (the 40 mask logits nearest the threshold in each layer), fed to both networks,
    change the outputs and leave them equal between the two (tiny multi-person model)."""
    model = ref.make_reference_model_dir(tmp_path, "multi", tiny=True, seed=3)
    ours = HumanParser(ParserOptions(model=str(tmp_path), engine="torch"))
    image = photos(media, 1)[0][1]
    with trace_decoder(model) as free:
        unforced = ref.modelscope_forward(model, image)
    flipped = []
    for mask, logits in zip(free.masks, free.logits, strict=True):
        mask = mask.clone().flatten()
        nearest = logits.flatten().abs().topk(40, largest=False).indices
        mask[nearest] = ~mask[nearest]
        mask = mask.view_as(logits)
        mask[mask.all(-1)] = False  # as both networks do: a query blocked everywhere sees all
        flipped.append(mask)
    with trace_decoder(model, replace=flipped):
        forced = ref.modelscope_forward(model, image)
    ours.net.use_reference_order(True)
    try:
        with torch.inference_mode(), trace_decoder(ours.net, replace=flipped):
            logits, masks = ours.net(pad_like_modelscope(forced["input"]))
    finally:
        ours.net.use_reference_order(False)
    assert not torch.equal(forced["pred_logits"], unforced["pred_logits"])
    torch.testing.assert_close(logits, forced["pred_logits"], atol=ROUNDING, rtol=0)
    torch.testing.assert_close(masks, forced["pred_masks"], atol=ROUNDING, rtol=0)


AVX2_CHILD = """
import json, sys
from pathlib import Path
import modelscope_ref as ref
from test_sameness import check_raw_outputs, photos
from streamer.parsing.parser import HumanParser, ParserOptions
model_dir, variant, media = sys.argv[1:4]
model = ref.load_modelscope_model(model_dir)
ours = HumanParser(ParserOptions(model=model_dir, engine="torch"))
print(json.dumps(check_raw_outputs(variant, model, ours, photos(Path(media), 1)[0][1])))
"""


@pytest.mark.parametrize("pair", ["multi"], indirect=True)
def test_raw_outputs_match_on_avx2(pair, media):
    """The same proof with oneDNN, ATen and MKL capped to AVX2 (an AVX2-only machine's kernels),
    in a fresh process on the same checkpoint. Multi-person only: the variant that failed on an
    AVX2 machine, with 3.4x the attention-mask bits; the single-person run would add about two
    minutes on a loaded 2-core box."""
    variant, model, _, ours = pair
    got = run_with_isa("avx2", AVX2_CHILD, ours.options.model, variant, str(media))
    print(f"{variant} under avx2: {got}")
    assert got["reference"]["isa"] == "AVX2"


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
