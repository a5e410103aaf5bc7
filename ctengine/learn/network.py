"""The layers of the slice classifier: ResNetV2 backbone, concatenating FPN, level heads.

Shapes are (N, C, H, W); see :mod:`ctengine.learn.model` for the network
they make up and its references.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: pyramid levels, in the order their heads are concatenated
LEVELS = ("P3", "P4", "P5", "P6", "P7")
#: stride of each of the four backbone stages (Keras ResNet50V2: 2, 2, 2, 1)
_STAGE_STRIDES = (2, 2, 2, 1)
_BN_EPS = 1.001e-5  # Keras ResNetV2


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=momentum)


class PreActBottleneck(nn.Module):
    """Keras ResNetV2 ``block2``: BN-ReLU, 1x1, 3x3 (strided), 1x1, plus shortcut."""

    def __init__(self, in_channels: int, filters: int, *, stride: int = 1,
                 conv_shortcut: bool = False, bn_momentum: float = 0.01) -> None:
        super().__init__()
        out = 4 * filters
        if not conv_shortcut and in_channels != out:
            raise ValueError(f"identity shortcut needs in_channels == {out}, got {in_channels}")
        self.stride = stride
        self.preact_bn = _bn(in_channels, bn_momentum)
        self.shortcut = nn.Conv2d(in_channels, out, 1, stride=stride) if conv_shortcut else None
        self.conv1 = nn.Conv2d(in_channels, filters, 1, bias=False)
        self.bn1 = _bn(filters, bn_momentum)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(filters, bn_momentum)
        self.conv3 = nn.Conv2d(filters, out, 1)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The block's pre-activation BN-ReLU (a pyramid tap in the authors' model)."""
        return F.relu(self.preact_bn(x))

    def forward(self, x: torch.Tensor, preact: torch.Tensor | None = None) -> torch.Tensor:
        p = self.preact(x) if preact is None else preact
        if self.shortcut is not None:
            short = self.shortcut(p)
        elif self.stride > 1:
            short = x[:, :, ::self.stride, ::self.stride]  # Keras MaxPooling2D(1, stride)
        else:
            short = x
        y = F.relu(self.bn1(self.conv1(p)))
        y = F.relu(self.bn2(self.conv2(y)))
        return short + self.conv3(y)


class ResNetV2Backbone(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool) and four pre-activation stages.

    `forward` returns the authors' taps: C3 = pre-activation of the first
    block of stage 3 (stride 16), C4 = the same for stage 4 (stride 32),
    C5 = the final BN-ReLU (stride 32).
    """

    def __init__(self, *, in_channels: int, stem_channels: int, widths: list[int],
                 blocks: list[int], bn_momentum: float = 0.01) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"widths and blocks need 4 stages, got {widths!r}, {blocks!r}")
        if any(w % 4 or w <= 0 for w in widths) or any(b < 1 for b in blocks):
            raise ValueError(f"widths must be positive multiples of 4 and blocks >= 1, "
                             f"got {widths!r}, {blocks!r}")
        self.stem = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3)
        self.stages = nn.ModuleList()
        ch = stem_channels
        for width, n, stride in zip(widths, blocks, _STAGE_STRIDES):
            stage = nn.ModuleList(
                PreActBottleneck(ch if i == 0 else width, width // 4,
                                 stride=stride if i == n - 1 else 1, conv_shortcut=i == 0,
                                 bn_momentum=bn_momentum)
                for i in range(n))
            self.stages.append(stage)
            ch = width
        self.post_bn = _bn(ch, bn_momentum)
        self.channels = (widths[1], widths[2], widths[3])  # C3, C4, C5

    @staticmethod
    def _run(stage: nn.ModuleList, x: torch.Tensor, preact: torch.Tensor | None = None) -> torch.Tensor:
        x = stage[0](x, preact)
        for block in stage[1:]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # Keras zero-pads before pooling
        x = self._run(self.stages[0], x)
        x = self._run(self.stages[1], x)
        c3 = self.stages[2][0].preact(x)
        x = self._run(self.stages[2], x, c3)
        c4 = self.stages[3][0].preact(x)
        x = self._run(self.stages[3], x, c4)
        c5 = F.relu(self.post_bn(x))
        return c3, c4, c5


class ConcatFPN(nn.Module):
    """Feature pyramid whose top-down path concatenates instead of adding.

    M5 = lat5(C5); M4 = cat(up(M5), lat4(C4)) (2F channels);
    M3 = cat(up(M4), lat3(C3)) (3F channels); P5, P4, P3 = 3x3 convs of
    M5, M4, M3 to F channels; P6 = 3x3/2 conv of C5; P7 = 3x3/2 conv of
    ReLU(P6). Upsampling is nearest-neighbour to the finer map's size.
    """

    def __init__(self, in_channels: tuple[int, int, int], features: int) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        f = features
        self.lat5 = nn.Conv2d(c5, f, 1)
        self.lat4 = nn.Conv2d(c4, f, 1)
        self.lat3 = nn.Conv2d(c3, f, 1)
        self.out5 = nn.Conv2d(f, f, 3, padding=1)
        self.out4 = nn.Conv2d(2 * f, f, 3, padding=1)
        self.out3 = nn.Conv2d(3 * f, f, 3, padding=1)
        self.p6 = nn.Conv2d(c5, f, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(f, f, 3, stride=2, padding=1)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> dict[str, torch.Tensor]:
        m5 = self.lat5(c5)
        m4 = torch.cat([F.interpolate(m5, size=c4.shape[-2:], mode="nearest"), self.lat4(c4)], 1)
        m3 = torch.cat([F.interpolate(m4, size=c3.shape[-2:], mode="nearest"), self.lat3(c3)], 1)
        p6 = self.p6(c5)
        return {"M5": m5, "M4": m4, "M3": m3, "P3": self.out3(m3), "P4": self.out4(m4),
                "P5": self.out5(m5), "P6": p6, "P7": self.p7(F.relu(p6))}


class LevelHead(nn.Module):
    """Pool (or flatten), dropout, dense to the class count, ReLU (as the authors)."""

    def __init__(self, in_features: int, num_classes: int, *, flatten: bool, dropout: float) -> None:
        super().__init__()
        self.flatten = flatten
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1) if self.flatten else x.mean(dim=(2, 3))
        return F.relu(self.dense(self.dropout(x)))


def level_sizes(size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Spatial size of P3..P7 for an (H, W) network input (each stride-2 step is ceil)."""
    def down(n: int, k: int) -> int:
        for _ in range(k):
            n = math.ceil(n / 2)
        return n
    return {lvl: (down(size[0], k), down(size[1], k))
            for lvl, k in zip(LEVELS, (4, 5, 5, 6, 7))}


def resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) to `hw`: box average for integer shrink factors, else bilinear."""
    h, w = x.shape[-2:]
    if (h, w) == hw:
        return x
    if h % hw[0] == 0 and w % hw[1] == 0 and h // hw[0] == w // hw[1]:
        return F.avg_pool2d(x, h // hw[0])
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False,
                         antialias=hw[0] < h or hw[1] < w)

