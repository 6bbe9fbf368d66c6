"""ConvNeXt-Tiny (Liu et al. 2022, "A ConvNet for the 2020s", arXiv 2201.03545),
torchvision's layout: each block is depthwise 7x7 conv -> permute to NHWC ->
LayerNorm -> Linear (4x) -> GELU -> Linear -> permute back -> layer scale ->
stochastic depth -> residual add.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .layers import ConvBNAct, LayerNorm2d, Permute, StochasticDepth, init_transformer_weights


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float, drop_prob: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            # The MLP runs channels-last so LayerNorm/Linear act on the channel dim.
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        # Small per-channel scale on the residual branch keeps early training stable.
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class ConvNeXt(nn.Module):
    def __init__(
        self,
        widths: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (3, 3, 9, 3),
        stochastic_depth_prob: float = 0.1,
        layer_scale: float = 1e-6,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        norm_layer = partial(LayerNorm2d, eps=1e-6)
        # "Patchify" stem: non-overlapping 4x4 conv, then LayerNorm.
        layers: list[nn.Module] = [
            ConvBNAct(
                3,
                widths[0],
                kernel_size=4,
                stride=4,
                padding=0,
                norm_layer=norm_layer,
                activation_layer=None,
                bias=True,
            )
        ]
        total_blocks = sum(depths)
        block_id = 0
        for stage_index, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for _ in range(depth):
                drop_prob = stochastic_depth_prob * block_id / (total_blocks - 1.0)
                blocks.append(CNBlock(width, layer_scale, drop_prob))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage_index + 1 < len(widths):
                # Downsampling between stages: LayerNorm then 2x2 stride-2 conv.
                layers.append(
                    nn.Sequential(norm_layer(width), nn.Conv2d(width, widths[stage_index + 1], 2, stride=2))
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            norm_layer(widths[-1]), nn.Flatten(1), nn.Linear(widths[-1], num_classes)
        )
        init_transformer_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(**kwargs) -> ConvNeXt:
    return ConvNeXt(**kwargs)
