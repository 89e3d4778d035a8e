"""Write an M2FP model directory with the real architecture and random weights.

The model hubs are unreachable in CI, so tests and benchmarks use these directories. The layout
is ModelScope's (``configuration.json`` + ``pytorch_model.pt`` holding ``{'model': state}``),
so they go through exactly the code path real weights take. Timings are real; parses are not.

Usage:
    python -m streamer.testing.make_model DIR --variant single|multi [--tiny] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from streamer.m2fp.checkpoint import CHECKPOINT_FILE
from streamer.m2fp.config import modelscope_configuration, parse_model_config
from streamer.m2fp.model import M2FP

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def smooth_random_images(n: int, height: int, width: int, generator: torch.Generator):
    """Images with structure at several scales, in 0..255, so activations resemble real ones."""
    out = torch.zeros(n, 3, height, width)
    for cells in (3, 12, 48):
        coarse = torch.rand(n, 3, max(1, height // cells), max(1, width // cells),
                            generator=generator)
        out += nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                         align_corners=False)
    return (out / 3 * 255).clamp(0, 255)


@torch.no_grad()
def _perturb_constants(net: nn.Module, generator: torch.Generator) -> None:
    """Randomise what default initialisation leaves constant, so every path carries signal."""

    def rand(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * (hi - lo) + lo

    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            m.weight.copy_(rand(m.weight.shape, 0.6, 1.4))
            m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
        elif hasattr(m, "sampling_offsets") and hasattr(m, "attention_weights"):
            # Deformable attention starts with query-independent offsets and uniform weights.
            # (get_parameter: these modules are found by name, in ours and ModelScope's net.)
            offsets_w = m.get_parameter("sampling_offsets.weight")
            offsets_b = m.get_parameter("sampling_offsets.bias")
            weights_w = m.get_parameter("attention_weights.weight")
            weights_b = m.get_parameter("attention_weights.bias")
            offsets_w.copy_(rand(offsets_w.shape, -1, 1) * 0.02)
            offsets_b.add_(rand(offsets_b.shape, -0.5, 0.5))
            weights_w.copy_(rand(weights_w.shape, -1, 1) * 0.05)
            weights_b.copy_(rand(weights_b.shape, -1, 1))
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None:
            m.in_proj_bias.copy_(rand(m.in_proj_bias.shape, -0.05, 0.05))
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            if torch.count_nonzero(m.bias) == 0:
                m.bias.copy_(rand(m.bias.shape, -0.05, 0.05))


@torch.no_grad()
def _damp_decoder_residuals(net: nn.Module, factor: float) -> None:
    """Shrink the decoder's residual branches so that the queries keep their identity."""
    predictor = net.get_submodule("sem_seg_head.predictor")
    for layers, weight in (("transformer_self_attention_layers", "self_attn.out_proj.weight"),
                           ("transformer_cross_attention_layers",
                            "multihead_attn.out_proj.weight"),
                           ("transformer_ffn_layers", "linear2.weight")):
        for layer in predictor.get_submodule(layers).children():
            layer.get_parameter(weight).mul_(factor)


@torch.no_grad()
def _recalibrate_batchnorm(net: nn.Module, generator: torch.Generator, batches: int) -> None:
    """Running statistics = cumulative average of batch statistics over random images."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    backbone = net.get_submodule("backbone")
    backbone.train()
    for _ in range(batches):
        images = smooth_random_images(2, 256, 192, generator)
        backbone((images - net.get_buffer("pixel_mean")) / net.get_buffer("pixel_std"))
    net.eval()
    for bn in bns:
        bn.momentum = 0.1


@torch.no_grad()
def _calibrate_heads(
    net: nn.Module, forward: Forward, generator: torch.Generator,
    mask_std: float = 4.0, class_std: float = 3.0, rounds: int = 3,
) -> None:
    """Make random queries disagree, then set the logit scales.

    A random decoder maps its queries onto nearly the same vector, so every query would predict
    the same class and mask. The shared part is removed through the biases of the last mask and
    class layers, then they are scaled so that mask logits have spread ``mask_std`` (masks
    neither empty nor full) and class logits vary by ``class_std`` across queries (confident
    enough for the multi-person score thresholds). The attention masks depend on these heads,
    so a few rounds let it settle.
    """
    predictor = net.get_submodule("sem_seg_head.predictor")
    mask_embed = predictor.get_submodule("mask_embed")
    mask_layer = list(mask_embed.get_submodule("layers").children())[-1]
    class_layer = predictor.get_submodule("class_embed")
    image = smooth_random_images(1, 256, 192, generator)
    captured: dict[str, torch.Tensor] = {}
    handle = mask_embed.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("embed", out))
    try:
        for _ in range(rounds):
            logits, _ = forward(image)
            mask_layer.get_parameter("bias").sub_(captured["embed"].mean(dim=(0, 1)))
            class_layer.get_parameter("bias").sub_(logits.mean(dim=(0, 1)))
            logits, masks = forward(image)
            for layer, std, value in ((mask_layer, mask_std, masks.std()),
                                      (class_layer, class_std, logits.std(dim=1).mean())):
                scale = std / float(value.clamp_min(1e-6))
                layer.get_parameter("weight").mul_(scale)
                layer.get_parameter("bias").mul_(scale)
    finally:
        handle.remove()


def randomise(net: nn.Module, forward: Forward, seed: int, *, bn_batches: int = 4) -> None:
    """Give an M2FP network (ours or ModelScope's: the same parameter names) random weights
    whose outputs are not degenerate: varied classes per query, masks neither empty nor full,
    BatchNorm statistics from real-looking activations. Deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    _perturb_constants(net, generator)
    _damp_decoder_residuals(net, 0.3)
    _recalibrate_batchnorm(net, generator, bn_batches)
    _calibrate_heads(net, forward, generator)
    net.eval()


def make_model(directory: str | Path, variant: str, *, tiny: bool = False, seed: int = 0) -> Path:
    """Write ``configuration.json`` and ``pytorch_model.pt`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = modelscope_configuration(variant, tiny=tiny)
    torch.manual_seed(seed)
    net = M2FP(parse_model_config(config)).eval()
    randomise(net, net, seed, bn_batches=3 if tiny else 4)
    (directory / "configuration.json").write_text(json.dumps(config, indent=2))
    torch.save({"model": net.state_dict()}, directory / CHECKPOINT_FILE)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.testing.make_model",
        description="Write an M2FP model directory (real architecture, RANDOM weights).",
    )
    parser.add_argument("directory", help="output directory (created if missing)")
    parser.add_argument("--variant", choices=("single", "multi"), required=True,
                        help="single: LIP single-person model; multi: CIHP multi-person model")
    parser.add_argument("--tiny", action="store_true",
                        help="shrink depth and widths for fast tests (same code path)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    path = make_model(args.directory, args.variant, tiny=args.tiny, seed=args.seed)
    size = "tiny" if args.tiny else "full-size"
    print(f"wrote {size} {args.variant}-person M2FP with random weights to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
