"""Pure-PyTorch multi-scale deformable attention (test-only mmcv stand-in).

Written from the Deformable-DETR definition: for every query ``q``, head ``h``,
level ``l`` and point ``p`` a location ``loc[q, h, l, p]`` in normalised
``[0, 1]`` image coordinates (x first, 0 = left/top edge of the feature map,
1 = right/bottom edge) is bilinearly sampled from the level-``l`` value map of
head ``h`` (zero outside the map, pixel centres at ``(i + 0.5) / size``), and
the samples are summed with weights ``attn[q, h, l, p]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class MultiScaleDeformableAttnFunction:
    """Placeholder for mmcv's compiled autograd op.

    ``apply`` always raises so that ModelScope's ``MSDeformAttn.forward`` takes
    its documented CPU fallback, ``multi_scale_deformable_attn_pytorch``.
    """

    @staticmethod
    def apply(*args, **kwargs):
        raise RuntimeError(
            "mmcv stand-in: compiled MultiScaleDeformableAttnFunction is not "
            "available; use multi_scale_deformable_attn_pytorch"
        )


def multi_scale_deformable_attn_pytorch(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention by ``F.grid_sample``.

    Args:
        value: (N, S, heads, C) with ``S = sum_l H_l * W_l`` (levels concatenated
            in order, each flattened row-major).
        value_spatial_shapes: (L, 2) integer tensor of ``(H_l, W_l)``.
        sampling_locations: (N, Lq, heads, L, P, 2), ``(x, y)`` in [0, 1].
        attention_weights: (N, Lq, heads, L, P).

    Returns:
        (N, Lq, heads * C)
    """
    n, s, heads, c = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in value_spatial_shapes.tolist()]
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial shapes {shapes} do not cover {s} value positions")

    # grid_sample with align_corners=False maps -1/+1 to the outer edges of
    # the border pixels, which is exactly the [0, 1] convention above.
    grids = sampling_locations * 2.0 - 1.0
    sampled_levels = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, heads, C) -> (N*heads, C, H, W)
        v = value[:, start:start + h * w]
        start += h * w
        v = v.permute(0, 2, 3, 1).reshape(n * heads, c, h, w)
        # (N, Lq, heads, P, 2) -> (N*heads, Lq, P, 2)
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(n * heads, lq, points, 2)
        sampled_levels.append(F.grid_sample(
            v, g, mode="bilinear", padding_mode="zeros", align_corners=False
        ))  # (N*heads, C, Lq, P)
    # Summed over all levels and points at once, in the order mmcv's own CPU fallback uses,
    # so that ModelScope's numerics (not only its maths) are reproduced.
    wts = attention_weights.permute(0, 2, 1, 3, 4).reshape(n * heads, 1, lq, levels * points)
    out = (torch.stack(sampled_levels, dim=-2).flatten(-2) * wts).sum(-1)  # (N*heads, C, Lq)
    return out.view(n, heads * c, lq).transpose(1, 2).contiguous()
