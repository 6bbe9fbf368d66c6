"""ShuffleNet V2 x1.0 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design", arXiv 1807.11164), torchvision's layout
(conv1 / maxpool / stage2..4 / conv5 / fc, flat branch sequentials).
"""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: (g, c/g) -> (c/g, g).

    Written with unflatten/flatten instead of reading ``x.size()`` so that it
    needs no shape values at trace time (fx) and exports to Reshape/Transpose.
    """
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def depthwise_conv(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False, groups=channels)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (torchvision's ``InvertedResidual``).

    Stride 1: split channels in half, transform one half, concat, shuffle.
    Stride 2: both branches see the whole input and each halves the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise_conv(in_channels, stride),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(),
            depthwise_conv(branch_channels, stride),
            nn.BatchNorm2d(branch_channels),
            nn.Conv2d(branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            halves = x.chunk(2, dim=1)
            out = torch.cat((halves[0], self.branch2(halves[1])), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        stages_repeats: tuple[int, ...] = (4, 8, 4),
        stages_out_channels: tuple[int, ...] = (24, 116, 232, 464, 1024),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        in_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, in_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage_index, (repeats, out_channels) in enumerate(
            zip(stages_repeats, stages_out_channels[1:]), start=2
        ):
            units = [ShuffleUnit(in_channels, out_channels, 2)]
            units += [ShuffleUnit(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage_index}", nn.Sequential(*units))
            in_channels = out_channels
        last_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_channels, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels), nn.ReLU()
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(last_channels, num_classes)
        # torchvision keeps PyTorch's default init for ShuffleNetV2.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(**kwargs)
