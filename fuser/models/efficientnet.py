"""EfficientNet B0/B3 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", arXiv 1905.11946), following torchvision's version:
MBConv blocks with squeeze-and-excite and SiLU, stochastic depth (identity in eval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from .layers import ConvBNAct, SqueezeExcitation, StochasticDepth, init_cnn_weights, make_divisible


@dataclass
class MBConvConfig:
    """One stage of the B0 table, already scaled by the width/depth multipliers."""

    expand_ratio: int
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int


class MBConv(nn.Module):
    """1x1 expand -> kxk depthwise -> squeeze-excite -> 1x1 linear projection (+ residual)."""

    def __init__(self, cfg: MBConvConfig, drop_prob: float) -> None:
        super().__init__()
        self.use_residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        expanded = make_divisible(cfg.in_channels * cfg.expand_ratio)
        layers: list[nn.Module] = []
        if expanded != cfg.in_channels:
            layers.append(ConvBNAct(cfg.in_channels, expanded, kernel_size=1, activation_layer=nn.SiLU))
        layers.append(
            ConvBNAct(
                expanded,
                expanded,
                kernel_size=cfg.kernel_size,
                stride=cfg.stride,
                groups=expanded,
                activation_layer=nn.SiLU,
            )
        )
        # The SE bottleneck is sized from the block *input*, not the expanded width.
        layers.append(SqueezeExcitation(expanded, max(1, cfg.in_channels // 4), activation=nn.SiLU))
        layers.append(ConvBNAct(expanded, cfg.out_channels, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_prob)
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = self.stochastic_depth(out) + x
        return out


# B0 baseline (expand ratio, kernel, stride, in, out, layers), Table 1 of the paper.
B0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


def scaled_stages(width_mult: float, depth_mult: float) -> list[MBConvConfig]:
    return [
        MBConvConfig(
            expand_ratio,
            kernel,
            stride,
            make_divisible(in_ch * width_mult),
            make_divisible(out_ch * width_mult),
            int(math.ceil(layers * depth_mult)),
        )
        for expand_ratio, kernel, stride, in_ch, out_ch, layers in B0_STAGES
    ]


class EfficientNet(nn.Module):
    def __init__(
        self,
        width_mult: float,
        depth_mult: float,
        dropout: float,
        stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        stages = scaled_stages(width_mult, depth_mult)
        layers: list[nn.Module] = [ConvBNAct(3, stages[0].in_channels, stride=2, activation_layer=nn.SiLU)]
        total_blocks = sum(stage.num_layers for stage in stages)
        block_id = 0
        for stage in stages:
            blocks = []
            for i in range(stage.num_layers):
                # Only the first block of a stage changes width / resolution.
                block_cfg = stage if i == 0 else replace(stage, in_channels=stage.out_channels, stride=1)
                # Drop probability grows linearly with depth.
                blocks.append(MBConv(block_cfg, stochastic_depth_prob * block_id / total_blocks))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        last_in = stages[-1].out_channels
        last_out = 4 * last_in
        layers.append(ConvBNAct(last_in, last_out, kernel_size=1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_out, num_classes))
        init_cnn_weights(self, linear_init="uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def efficientnet_b0(**kwargs) -> EfficientNet:
    kwargs.setdefault("dropout", 0.2)
    return EfficientNet(1.0, 1.0, **kwargs)


def efficientnet_b3(**kwargs) -> EfficientNet:
    kwargs.setdefault("dropout", 0.3)
    return EfficientNet(1.2, 1.4, **kwargs)
