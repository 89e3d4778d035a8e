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
import math
import sys
from pathlib import Path

import torch
from torch import nn

from streamer.m2fp.checkpoint import CHECKPOINT_FILE
from streamer.m2fp.config import modelscope_configuration, parse_model_config
from streamer.m2fp.deform_attn import MSDeformAttn
from streamer.m2fp.model import M2FP


def _init_deformable(module: MSDeformAttn) -> None:
    """Deformable DETR's start: offsets fanned out on a circle, uniform attention."""
    nn.init.zeros_(module.sampling_offsets.weight)
    heads, levels, points = module.n_heads, module.n_levels, module.n_points
    thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2)
    grid = grid.repeat(1, levels, points, 1) * torch.arange(1, points + 1).view(1, 1, -1, 1)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(grid.flatten())
    nn.init.zeros_(module.attention_weights.weight)
    nn.init.zeros_(module.attention_weights.bias)


def smooth_random_images(n: int, height: int, width: int, generator: torch.Generator):
    """Images with structure at several scales, in 0..255, so activations resemble real ones."""
    out = torch.zeros(n, 3, height, width)
    for cells in (4, 16, 64):
        coarse = torch.rand(n, 3, max(1, height // cells), max(1, width // cells),
                            generator=generator)
        out += torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                               align_corners=False)
    return (out / 3 * 255).clamp(0, 255)


@torch.no_grad()
def recalibrate_batchnorm(net: M2FP, batches: int, generator: torch.Generator) -> None:
    """Set BatchNorm running statistics from forward passes over random images."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    net.backbone.train()
    for _ in range(batches):
        images = smooth_random_images(2, 256, 192, generator)
        net.backbone((images - net.pixel_mean) / net.pixel_std)
    net.eval()
    for bn in bns:
        bn.momentum = 0.1


def make_model(directory: str | Path, variant: str, *, tiny: bool = False, seed: int = 0) -> Path:
    """Write ``configuration.json`` and ``pytorch_model.pt`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = modelscope_configuration(variant, tiny=tiny)
    torch.manual_seed(seed)
    net = M2FP(parse_model_config(config)).eval()
    for module in net.modules():
        if isinstance(module, MSDeformAttn):
            _init_deformable(module)
    generator = torch.Generator().manual_seed(seed)
    recalibrate_batchnorm(net, batches=3 if tiny else 6, generator=generator)
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
