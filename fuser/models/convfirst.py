"""ConvFirst (Lavin 2024, "On the Efficiency of Convolutional Neural Networks",
arXiv 2404.03617).

A ConvNeXt-like residual block with batch norm and a *grouped* (group width 8)
rather than depthwise spatial conv placed first, so that the spatial conv runs on
the narrow (unexpanded) tensor:

    x -> kxk grouped conv (groups = C/8) + BN
      -> 1x1 expand conv (C -> E*C) + BN + SiLU
      -> 1x1 project conv (E*C -> C) + BN
      -> + x

Paper symbols map to keyword arguments as C = ``channels`` (first-stage width;
later stages double unless ``widths`` is given), E = ``expansion``,
k = ``kernel_size``.

The macro-architecture is our choice (the paper's exact ImageNet configuration
is not reproduced): a two-conv stride-4 stem (3 -> C/2 -> C, 3x3 stride 2,
BN + SiLU), four stages of widths (64, 128, 256, 512) and depths (2, 2, 6, 2),
a 2x2 stride-2 conv + BN between stages (non-overlapping like ConvNeXt's), then
global average pooling and a linear classifier.

Parameter count with the defaults (1000 classes): 9,137,416 = stem 19,488 +
stages 8,604,928 (blocks 7,915,008 + downsampling 689,920) + classifier
513,000. One block has 8C^2 + 84C parameters (72C grouped conv + 2*4C^2
pointwise convs + 12C BN), e.g. 38,144 for C=64.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, init_cnn_weights

CONVFIRST_PARAMS = 9_137_416


class ConvFirstBlock(nn.Module):
    def __init__(self, channels: int, expansion: int = 4, kernel_size: int = 3, group_width: int = 8) -> None:
        super().__init__()
        if channels % group_width:
            raise ValueError(f"channels ({channels}) must be a multiple of group_width ({group_width})")
        # No activation after the grouped conv: like ConvNeXt's depthwise conv, it
        # only mixes space (and channels within a group of 8).
        self.spatial = ConvBNAct(
            channels, channels, kernel_size=kernel_size, groups=channels // group_width, activation_layer=None
        )
        self.expand = ConvBNAct(channels, expansion * channels, kernel_size=1, activation_layer=nn.SiLU)
        self.project = ConvBNAct(expansion * channels, channels, kernel_size=1, activation_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.expand(self.spatial(x)))


def convfirst_block(channels: int, expansion: int = 4, kernel_size: int = 3) -> ConvFirstBlock:
    """A single ConvFirst block (used on its own by the benchmarks)."""
    return ConvFirstBlock(channels, expansion, kernel_size)


class ConvFirst(nn.Module):
    def __init__(
        self,
        channels: int = 64,
        expansion: int = 4,
        kernel_size: int = 3,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        widths: tuple[int, ...] | None = None,
        group_width: int = 8,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if widths is None:
            widths = tuple(channels * 2**i for i in range(len(depths)))
        if len(widths) != len(depths):
            raise ValueError(f"widths {widths} and depths {depths} must have the same length")
        self.stem = nn.Sequential(
            ConvBNAct(3, widths[0] // 2, stride=2, activation_layer=nn.SiLU),
            ConvBNAct(widths[0] // 2, widths[0], stride=2, activation_layer=nn.SiLU),
        )
        stages: list[nn.Module] = []
        for stage_index, (width, depth) in enumerate(zip(widths, depths)):
            if stage_index > 0:
                stages.append(
                    ConvBNAct(
                        widths[stage_index - 1],
                        width,
                        kernel_size=2,
                        stride=2,
                        padding=0,
                        activation_layer=None,
                    )
                )
            stages.append(
                nn.Sequential(
                    *[ConvFirstBlock(width, expansion, kernel_size, group_width) for _ in range(depth)]
                )
            )
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_cnn_weights(self, linear_init="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def convfirst(**kwargs) -> ConvFirst:
    return ConvFirst(**kwargs)
