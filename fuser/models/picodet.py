"""PP-PicoDet with a PP-LCNet backbone (Yu et al. 2021), PaddleDetection's layout-analysis model
``picodet_lcnet_x1_0_layout`` in plain torch: the architecture PP-Structure ships for page
layout (5 classes: text, title, list, table, figure; 800 x 608 input).

Configuration (``configs/picodet/legacy_model/application/layout_analysis/``): backbone
``LCNet`` scale 1.0, feature maps 3, 4, 5; neck ``CSPPAN`` (out 128, depthwise, one CSP block,
four output levels); head ``PicoHead`` (``PicoFeat``: 4 depthwise-separable 5x5 convs per level,
class and box branches shared, a 1x1 conv to 5 + 4 * (reg_max 7 + 1) channels per level).

  backbone  ConvBN(16,3,s2) | DepthwiseSeparable x13 (dw kxk, [SE], pw 1x1; Hardswish after
            each ConvBN); SE (pool, 1x1+ReLU, 1x1+Hardsigmoid, multiply) in the last two
            -> C3 128 / 8, C4 256 / 16, C5 512 / 32
  neck      1x1 ConvBN to 128 per level; top-down: upsample x2, concat, CSPLayer; bottom-up:
            DP (dw 5x5 s2 + pw), concat, CSPLayer; a fourth level / 64 = DP(C5') + DP(P5)
  head      per level: 4 x (dw 5x5 ConvBN, Hardswish, pw 1x1 ConvBN, Hardswish), 1x1 conv to
            37 channels, split into class scores (sigmoid) and box distributions

The output is the deploy export's per level [N, H*W, 5] scores and [N, H*W, 32] box
distributions, concatenated over the four levels into one [N, anchors, 37] tensor
(10,105 anchors at 800 x 608); decoding and NMS run outside the network, as in PP-Structure.
Inputs must be multiples of 32 on each side (the top-down path doubles stride-32 maps).

Parameters: 1,791,988 as built (BN statistics not counted); with 80 classes and scale 1.5 it
builds ``picodet_lcnet_1_5x_416_coco``: 3,107,664, the README's 3.10 M (the test checks both).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import init_cnn_weights, make_divisible

PICODET_LAYOUT_PARAMS = 1_791_988
PICODET_LCNET_1_5X_COCO_PARAMS = 3_100_000  # the README's 3.10 M, to 0.01 M
REG_MAX = 7

# k, in, out, stride, squeeze-excite (PaddleDetection's LCNet NET_CONFIG)
LCNET_STAGES = {
    "blocks2": [(3, 16, 32, 1, False)],
    "blocks3": [(3, 32, 64, 2, False), (3, 64, 64, 1, False)],
    "blocks4": [(3, 64, 128, 2, False), (3, 128, 128, 1, False)],
    "blocks5": [(3, 128, 256, 2, False)] + [(5, 256, 256, 1, False)] * 5,
    "blocks6": [(5, 256, 512, 2, True), (5, 512, 512, 1, True)],
}


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> optional Hardswish (PaddleDetection's ConvBNLayer)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SEModule(nn.Module):
    """Squeeze-excite with ReLU and Hardsigmoid, reduction 4."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1)
        self.hardsigmoid = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.hardsigmoid(self.conv2(self.relu(self.conv1(self.avg_pool(x)))))


class DepthwiseSeparable(nn.Module):
    """LCNet's block: depthwise kxk ConvBN, optional SE, pointwise ConvBN."""

    def __init__(self, c_in: int, c_out: int, stride: int, k: int = 3, use_se: bool = False):
        super().__init__()
        self.dw_conv = ConvBN(c_in, c_in, k, stride, groups=c_in)
        self.se = SEModule(c_in) if use_se else nn.Identity()
        self.pw_conv = ConvBN(c_in, c_out, 1)

    def forward(self, x):
        return self.pw_conv(self.se(self.dw_conv(x)))


class LCNet(nn.Module):
    """PP-LCNet; returns the outputs of blocks4, blocks5 and blocks6 (strides 8, 16, 32)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.conv1 = ConvBN(3, make_divisible(16 * scale), 3, 2)
        for name, stage in LCNET_STAGES.items():
            blocks = [
                DepthwiseSeparable(make_divisible(c_in * scale), make_divisible(c_out * scale), s, k, se)
                for k, c_in, c_out, s, se in stage
            ]
            setattr(self, name, nn.Sequential(*blocks))
        self.out_channels = [
            make_divisible(LCNET_STAGES[n][-1][2] * scale) for n in ("blocks4", "blocks5", "blocks6")
        ]

    def forward(self, x):
        x = self.blocks3(self.blocks2(self.conv1(x)))
        c3 = self.blocks4(x)
        c4 = self.blocks5(c3)
        return c3, c4, self.blocks6(c4)


class DPModule(nn.Module):
    """Depthwise kxk ConvBN + Hardswish, then pointwise ConvBN + Hardswish (CSP-PAN's DP_Module)."""

    def __init__(self, channels: int, k: int, stride: int = 1):
        super().__init__()
        self.dw = ConvBN(channels, channels, k, stride, groups=channels)
        self.pw = ConvBN(channels, channels, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class CSPLayer(nn.Module):
    """Cross-stage partial layer: two 1x1 branches, one through a 1x1 + DP bottleneck (no
    identity add), concatenated and mixed by a 1x1."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        mid = c_out // 2
        self.main_conv = ConvBN(c_in, mid, 1)
        self.short_conv = ConvBN(c_in, mid, 1)
        self.blocks = nn.Sequential(ConvBN(mid, mid, 1), DPModule(mid, k))
        self.final_conv = ConvBN(2 * mid, c_out, 1)

    def forward(self, x):
        return self.final_conv(torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), 1))


class CSPPAN(nn.Module):
    """Path aggregation with CSP layers over three levels, plus a fourth at stride 64."""

    def __init__(self, in_channels: list[int], channels: int = 128, k: int = 5):
        super().__init__()
        self.conv_t = nn.ModuleList(ConvBN(c, channels, 1) for c in in_channels)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down_blocks = nn.ModuleList(CSPLayer(2 * channels, channels, k) for _ in range(2))
        self.downsamples = nn.ModuleList(DPModule(channels, k, 2) for _ in range(2))
        self.bottom_up_blocks = nn.ModuleList(CSPLayer(2 * channels, channels, k) for _ in range(2))
        self.first_top_conv = DPModule(channels, k, 2)
        self.second_top_conv = DPModule(channels, k, 2)

    def forward(self, feats):
        c3, c4, c5 = (conv(f) for conv, f in zip(self.conv_t, feats))
        p4 = self.top_down_blocks[0](torch.cat((self.upsample(c5), c4), 1))
        p3 = self.top_down_blocks[1](torch.cat((self.upsample(p4), c3), 1))
        n4 = self.bottom_up_blocks[0](torch.cat((self.downsamples[0](p3), p4), 1))
        n5 = self.bottom_up_blocks[1](torch.cat((self.downsamples[1](n4), c5), 1))
        n6 = self.first_top_conv(c5) + self.second_top_conv(n5)
        return p3, n4, n5, n6


class PicoHead(nn.Module):
    """Per level: PicoFeat (shared class/box branch) and a 1x1 conv to classes + 4 (reg_max + 1)."""

    def __init__(self, num_classes: int, channels: int = 128, num_convs: int = 4, levels: int = 4):
        super().__init__()
        self.num_classes = num_classes
        convs = []
        for _ in range(levels):
            layers = []
            for _ in range(num_convs):
                layers += [ConvBN(channels, channels, 5, groups=channels), ConvBN(channels, channels, 1)]
            convs.append(nn.Sequential(*layers))
        self.cls_convs = nn.ModuleList(convs)
        self.head_cls = nn.ModuleList(
            nn.Conv2d(channels, num_classes + 4 * (REG_MAX + 1), 1) for _ in range(levels)
        )

    def forward(self, feats) -> torch.Tensor:
        outs = []
        for feat, convs, head in zip(feats, self.cls_convs, self.head_cls):
            logits = head(convs(feat)).flatten(2).transpose(1, 2)  # [N, H*W, classes + boxes]
            scores, boxes = logits.split((self.num_classes, 4 * (REG_MAX + 1)), 2)
            outs.append(torch.cat((scores.sigmoid(), boxes), 2))
        return torch.cat(outs, 1)


class PicoDet(nn.Module):
    def __init__(self, num_classes: int = 5, scale: float = 1.0):
        super().__init__()
        self.backbone = LCNet(scale)
        self.neck = CSPPAN(self.backbone.out_channels)
        self.head = PicoHead(num_classes)
        init_cnn_weights(self)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)))


def picodet_lcnet_layout(num_classes: int = 5, scale: float = 1.0) -> PicoDet:
    """PP-PicoDet-LCNet x1.0, PP-Structure's layout-analysis configuration."""
    return PicoDet(num_classes, scale)
