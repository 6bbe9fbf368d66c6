"""MobileNet V2 and V3, following torchvision's implementations.

- MobileNetV2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks", arXiv 1801.04381.
- MobileNetV3: Howard et al. 2019, "Searching for MobileNetV3", arXiv 1905.02244.

Module names and nesting (``features``/``classifier``, ``conv``/``block``
sub-sequentials) match torchvision's, so state_dict keys line up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .layers import ConvBNAct, ModuleFactory, SqueezeExcitation, init_cnn_weights, make_divisible

# ----------------------------------------------------------------------------- V2


class InvertedResidualV2(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection (+ residual)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=1, activation_layer=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden, activation_layer=nn.ReLU6),
            # The projection is linear: a ReLU here would destroy information
            # in the low-dimensional bottleneck (the paper's main argument).
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    # (expand ratio t, output channels c, repeats n, first stride s) from Table 2 of the paper.
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNAct(3, in_channels, stride=2, activation_layer=nn.ReLU6)]
        for expand_ratio, channels, repeats, first_stride in self.SETTINGS:
            out_channels = make_divisible(channels * width_mult)
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                features.append(InvertedResidualV2(in_channels, out_channels, stride, expand_ratio))
                in_channels = out_channels
        features.append(ConvBNAct(in_channels, last_channels, kernel_size=1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_cnn_weights(self, linear_init="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)


# ----------------------------------------------------------------------------- V3

# MobileNetV3 uses a smaller BN momentum and a larger eps than PyTorch's defaults.
BatchNormV3 = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass
class BlockConfigV3:
    """One row of Tables 1/2 of the MobileNetV3 paper."""

    in_channels: int
    kernel_size: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride: int
    dilation: int = 1

    @property
    def activation_layer(self) -> ModuleFactory:
        return nn.Hardswish if self.activation == "HS" else nn.ReLU


class InvertedResidualV3(nn.Module):
    """MobileNetV2 block plus optional squeeze-excite and a per-block activation choice."""

    def __init__(self, cfg: BlockConfigV3, norm_layer: ModuleFactory = BatchNormV3) -> None:
        super().__init__()
        self.use_residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        act = cfg.activation_layer
        layers: list[nn.Module] = []
        if cfg.expanded_channels != cfg.in_channels:
            layers.append(
                ConvBNAct(
                    cfg.in_channels,
                    cfg.expanded_channels,
                    kernel_size=1,
                    norm_layer=norm_layer,
                    activation_layer=act,
                )
            )
        # Dilated blocks keep the resolution (the stride is traded for dilation).
        stride = 1 if cfg.dilation > 1 else cfg.stride
        layers.append(
            ConvBNAct(
                cfg.expanded_channels,
                cfg.expanded_channels,
                kernel_size=cfg.kernel_size,
                stride=stride,
                dilation=cfg.dilation,
                groups=cfg.expanded_channels,
                norm_layer=norm_layer,
                activation_layer=act,
            )
        )
        if cfg.use_se:
            squeeze_channels = make_divisible(cfg.expanded_channels // 4)
            layers.append(
                SqueezeExcitation(cfg.expanded_channels, squeeze_channels, scale_activation=nn.Hardsigmoid)
            )
        layers.append(
            ConvBNAct(
                cfg.expanded_channels,
                cfg.out_channels,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        )
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.out_channels
        # Marks blocks that start a new resolution stage (torchvision's ``_is_cn``);
        # segmentation heads use it to find skip-connection points.
        self.starts_stage = cfg.stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


def mobilenet_v3_config(arch: str, dilated: bool = False) -> tuple[list[BlockConfigV3], int]:
    """Block table and classifier width of MobileNetV3-Large/-Small (width multiplier 1.0).

    ``dilated`` replaces the stride of the last stage by dilation 2 (output
    stride 16 instead of 32), as torchvision does for segmentation backbones.
    """
    dilation = 2 if dilated else 1
    cfg = BlockConfigV3
    if arch == "large":
        blocks = [
            cfg(16, 3, 16, 16, False, "RE", 1),
            cfg(16, 3, 64, 24, False, "RE", 2),  # stride 4
            cfg(24, 3, 72, 24, False, "RE", 1),
            cfg(24, 5, 72, 40, True, "RE", 2),  # stride 8
            cfg(40, 5, 120, 40, True, "RE", 1),
            cfg(40, 5, 120, 40, True, "RE", 1),
            cfg(40, 3, 240, 80, False, "HS", 2),  # stride 16
            cfg(80, 3, 200, 80, False, "HS", 1),
            cfg(80, 3, 184, 80, False, "HS", 1),
            cfg(80, 3, 184, 80, False, "HS", 1),
            cfg(80, 3, 480, 112, True, "HS", 1),
            cfg(112, 3, 672, 112, True, "HS", 1),
            cfg(112, 5, 672, 160, True, "HS", 2, dilation),  # stride 32
            cfg(160, 5, 960, 160, True, "HS", 1, dilation),
            cfg(160, 5, 960, 160, True, "HS", 1, dilation),
        ]
        return blocks, 1280
    if arch == "small":
        blocks = [
            cfg(16, 3, 16, 16, True, "RE", 2),  # stride 4
            cfg(16, 3, 72, 24, False, "RE", 2),  # stride 8
            cfg(24, 3, 88, 24, False, "RE", 1),
            cfg(24, 5, 96, 40, True, "HS", 2),  # stride 16
            cfg(40, 5, 240, 40, True, "HS", 1),
            cfg(40, 5, 240, 40, True, "HS", 1),
            cfg(40, 5, 120, 48, True, "HS", 1),
            cfg(48, 5, 144, 48, True, "HS", 1),
            cfg(48, 5, 288, 96, True, "HS", 2, dilation),  # stride 32
            cfg(96, 5, 576, 96, True, "HS", 1, dilation),
            cfg(96, 5, 576, 96, True, "HS", 1, dilation),
        ]
        return blocks, 1024
    raise ValueError(f"unknown MobileNetV3 variant {arch!r}")


def mobilenet_v3_features(blocks: list[BlockConfigV3]) -> nn.Sequential:
    """Stem, inverted-residual blocks and the final 1x1 conv (6x the last block's width)."""
    norm_layer = BatchNormV3
    layers: list[nn.Module] = [
        ConvBNAct(3, blocks[0].in_channels, stride=2, norm_layer=norm_layer, activation_layer=nn.Hardswish)
    ]
    layers += [InvertedResidualV3(cfg, norm_layer) for cfg in blocks]
    last_in = blocks[-1].out_channels
    layers.append(
        ConvBNAct(last_in, 6 * last_in, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.Hardswish)
    )
    return nn.Sequential(*layers)


class MobileNetV3(nn.Module):
    def __init__(
        self, arch: str = "large", num_classes: int = 1000, dropout: float = 0.2, dilated: bool = False
    ) -> None:
        super().__init__()
        blocks, last_channels = mobilenet_v3_config(arch, dilated)
        self.features = mobilenet_v3_features(blocks)
        lastconv_channels = 6 * blocks[-1].out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_channels, last_channels),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(last_channels, num_classes),
        )
        init_cnn_weights(self, linear_init="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    return MobileNetV3("large", **kwargs)


def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    return MobileNetV3("small", **kwargs)
