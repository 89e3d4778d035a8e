"""Sine positional encoding of a feature map (DETR), depending only on its shape."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionEncoding(nn.Module):
    def __init__(self, num_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``(N, 2 * num_feats, H, W)`` for an input ``(N, C, H, W)``."""
        n, _, h, w = x.shape
        eps, scale = 1e-6, 2 * math.pi
        y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
        y = (y / (h + eps) * scale)[:, None].expand(h, w)
        xs = (xs / (w + eps) * scale)[None, :].expand(h, w)
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=x.device)
        pairs = torch.div(dim_t, 2, rounding_mode="floor")
        dim_t = self.temperature ** (2 * pairs / self.num_feats)
        pos_x = xs[:, :, None] / dim_t
        pos_y = y[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(n, -1, -1, -1).to(x.dtype)
