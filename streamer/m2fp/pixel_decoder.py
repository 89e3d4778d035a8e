"""Multi-scale deformable-attention pixel decoder.

A deformable transformer encoder mixes res3..res5; an FPN step adds res2; a 1x1 convolution
gives the per-pixel mask features at stride 4. Returns the mask features and the three
lowest-resolution levels for the transformer decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from streamer.m2fp.backbone import ConvNorm
from streamer.m2fp.config import EncoderConfig
from streamer.m2fp.deform_attn import MSDeformAttn
from streamer.m2fp.position import SinePositionEncoding


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ffn: int, n_layers: int, n_levels: int):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, d_ffn, n_levels, n_heads) for _ in range(n_layers)
        )

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        ref = reference_points(shapes, src)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        return src


class DeformableTransformer(nn.Module):
    """Holds ``level_embed`` and the encoder, as the checkpoint's ``transformer.*`` keys do."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, n_layers: int, n_levels: int):
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(n_levels, d_model))
        self.encoder = DeformableEncoder(d_model, n_heads, d_ffn, n_layers, n_levels)


def reference_points(shapes: list[tuple[int, int]], like: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level in [0, 1], shaped ``(1, S, levels, 2)`` as (x, y)."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=like.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=like.device) + 0.5) / w
        grid = torch.stack(
            (xs[None, :].expand(h, w), ys[:, None].expand(h, w)), dim=-1
        ).reshape(-1, 2)
        points.append(grid)
    ref = torch.cat(points, 0)
    return ref[None, :, None, :].expand(1, -1, len(shapes), 2).to(like.dtype)


class MSDeformAttnPixelDecoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, channels: dict[str, int], strides: dict[str, int]):
        super().__init__()
        conv_dim = cfg.conv_dim
        in_features = sorted(cfg.in_features, key=lambda k: strides[k])
        self.transformer_in_features = sorted(cfg.transformer_in_features, key=lambda k: strides[k])
        levels = len(self.transformer_in_features)
        # Projections run from the lowest resolution (res5) to the highest.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[k], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for k in reversed(self.transformer_in_features)
        )
        self.transformer = DeformableTransformer(
            conv_dim, cfg.transformer_nheads, cfg.transformer_dim_feedforward,
            cfg.transformer_enc_layers, levels,
        )
        self.pe_layer = SinePositionEncoding(conv_dim // 2)
        self.mask_features = nn.Conv2d(conv_dim, cfg.mask_dim, 1)
        min_stride = min(strides[k] for k in self.transformer_in_features)
        n_fpn = int(math.log2(min_stride) - math.log2(cfg.common_stride))
        self.fpn_features = list(reversed(in_features[:n_fpn]))
        # Checkpoint names: adapter_1 / layer_1 belong to the highest-resolution level.
        for idx, name in enumerate(in_features[:n_fpn]):
            self.add_module(f"adapter_{idx + 1}", ConvNorm(
                channels[name], conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim)))
            self.add_module(f"layer_{idx + 1}", ConvNorm(
                conv_dim, conv_dim, 3, padding=1, bias=False, norm=nn.GroupNorm(32, conv_dim)))
        self.n_fpn = n_fpn
        self.num_outputs = 3

    def forward(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos, shapes = [], [], []
        for idx, name in enumerate(reversed(self.transformer_in_features)):
            x = features[name]
            projected = self.input_proj[idx](x)
            h, w = int(x.shape[-2]), int(x.shape[-1])
            shapes.append((h, w))
            srcs.append(projected.flatten(2).transpose(1, 2))
            level_pos = self.pe_layer(x).flatten(2).transpose(1, 2)
            pos.append(level_pos + self.transformer.level_embed[idx].view(1, 1, -1))
        memory = self.transformer.encoder(torch.cat(srcs, 1), torch.cat(pos, 1), shapes)
        n = memory.shape[0]
        outs: list[torch.Tensor] = []
        start = 0
        for h, w in shapes:
            outs.append(memory[:, start:start + h * w].transpose(1, 2).reshape(n, -1, h, w))
            start += h * w
        for i, name in enumerate(self.fpn_features):
            idx = self.n_fpn - i
            lateral = getattr(self, f"adapter_{idx}")(features[name])
            top_down = F.interpolate(
                outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(F.relu(getattr(self, f"layer_{idx}")(lateral + top_down)))
        return self.mask_features(outs[-1]), outs[: self.num_outputs]
