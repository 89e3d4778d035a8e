"""DeepLab-style ResNet backbone: a three-convolution stem, then bottleneck stages res2..res5.

Parameter names follow the checkpoints ModelScope publishes (``stem.conv1.norm.weight``,
``res4.12.conv2.weight``, ...), so they load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamer.m2fp.config import BackboneConfig

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class ConvNorm(nn.Conv2d):
    """A convolution followed by an optional norm layer stored as ``.norm``."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        return self.norm(x) if self.norm is not None else x


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> ConvNorm:
    return ConvNorm(
        cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
        bias=False, norm=nn.BatchNorm2d(cout),
    )


class Stem(nn.Module):
    """Three 3x3 convolutions (the first with stride 2) and a stride-2 max pool: stride 4."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = conv_bn(3, half, 3, stride=2)
        self.conv2 = conv_bn(half, half, 3)
        self.conv3 = conv_bn(half, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    def __init__(
        self, cin: int, cout: int, mid: int, *, stride: int, dilation: int, stride_in_1x1: bool
    ) -> None:
        super().__init__()
        self.shortcut = conv_bn(cin, cout, 1, stride=stride) if cin != cout else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv_bn(cin, mid, 1, stride=s1)
        self.conv2 = conv_bn(mid, mid, 3, stride=s3, dilation=dilation)
        self.conv3 = conv_bn(mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class DeepLabResNet(nn.Module):
    """Returns a dict of feature maps ``res2``..``res5`` at strides 4, 8, 16 and 32."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"backbone depth must be one of {sorted(BLOCKS_PER_STAGE)}")
        self.stem = Stem(cfg.stem_out_channels)
        self.out_features = tuple(cfg.out_features)
        cin, cout = cfg.stem_out_channels, cfg.res2_out_channels
        mid = cfg.num_groups * cfg.width_per_group
        self.channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        stride_so_far = 4
        last_stage = max(int(name[3]) for name in self.out_features)
        for i, stage_idx in enumerate(range(2, last_stage + 1)):
            dilation = {4: cfg.res4_dilation, 5: cfg.res5_dilation}.get(stage_idx, 1)
            n_blocks = BLOCKS_PER_STAGE[cfg.depth][i]
            first_stride = 1 if i == 0 or dilation > 1 else 2
            if stage_idx == 5:
                dilations = [dilation * g for g in cfg.res5_multi_grid]
            else:
                dilations = [dilation] * n_blocks
            blocks = []
            for b in range(n_blocks):
                blocks.append(Bottleneck(
                    cin if b == 0 else cout, cout, mid,
                    stride=first_stride if b == 0 else 1,
                    dilation=dilations[b], stride_in_1x1=cfg.stride_in_1x1,
                ))
            name = f"res{stage_idx}"
            self.add_module(name, nn.Sequential(*blocks))
            stride_so_far *= first_stride
            self.channels[name], self.strides[name] = cout, stride_so_far
            cin, cout, mid = cout, cout * 2, mid * 2
        self.stage_names = tuple(f"res{i}" for i in range(2, last_stage + 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        features: dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                features[name] = x
        return features
