"""DeepLabV3+ with a MobileNetV3-Large backbone for 21-class semantic segmentation.

Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation" (DeepLabV3+, arXiv 1802.02611), with the ASPP module of
Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image
Segmentation" (DeepLabV3, arXiv 1706.05587), on the MobileNetV3-Large backbone
of Howard et al. 2019 (arXiv 1905.02244).

- Backbone: MobileNetV3-Large features with the last stage dilated (stride 1,
  dilation 2) as in torchvision's ``deeplabv3_mobilenet_v3_large``: output stride
  16, 960 channels after the final 1x1 conv.
- ASPP: a 1x1 branch, three dilated 3x3 branches (rates 6/12/18, the paper's
  choice at output stride 16) and an image-pooling branch whose 1x1 output is
  bilinearly upsampled back; 5x256 channels projected to 256 (1x1 conv+BN+ReLU).
- Decoder: the stride-4 backbone feature (24 ch) is reduced to 48 channels by a
  1x1 conv+BN+ReLU, concatenated with the 4x-upsampled ASPP output, refined by
  two 3x3 conv+BN+ReLU (256 ch), classified by a 1x1 conv and bilinearly
  upsampled to the input size (``align_corners=False``).

Parameter count with the defaults (21 classes): 11,727,653 = backbone 2,971,952
+ ASPP 7,457,792 (the three 960->256 dilated 3x3 branches dominate) + low-level
projection 1,248 + decoder 1,291,264 + classifier 5,397. For comparison,
torchvision's deeplabv3_mobilenet_v3_large (DeepLabV3, no decoder, with an
auxiliary head) has 11,029,328.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNAct, init_cnn_weights
from .mobilenet import mobilenet_v3_config, mobilenet_v3_features

DEEPLABV3PLUS_MOBILENET_V3_PARAMS = 11_727_653


def upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``reference``."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class ASPPPooling(nn.Sequential):
    """Image-level features: global pool -> 1x1 conv+BN+ReLU -> upsample back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to(super().forward(x), x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (torchvision's layout: ``convs`` + ``project``)."""

    def __init__(
        self, in_channels: int, atrous_rates: tuple[int, ...], out_channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNAct(in_channels, out_channels, kernel_size=1)]
        branches += [
            ConvBNAct(in_channels, out_channels, kernel_size=3, dilation=rate) for rate in atrous_rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvBNAct(len(branches) * out_channels, out_channels, kernel_size=1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(
        self,
        num_classes: int = 21,
        atrous_rates: tuple[int, ...] = (6, 12, 18),
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        blocks, _ = mobilenet_v3_config("large", dilated=True)
        self.backbone = mobilenet_v3_features(blocks)
        # The skip comes from the last layer before the stride-8 stage (stride 4, 24 ch).
        stage_starts = [i for i, layer in enumerate(self.backbone) if getattr(layer, "starts_stage", False)]
        self.low_level_index = stage_starts[1] - 1
        skip_channels = self.backbone[self.low_level_index].out_channels
        high_channels = self.backbone[-1].out_channels

        self.aspp = ASPP(high_channels, atrous_rates, aspp_channels)
        self.low_level_project = ConvBNAct(skip_channels, low_level_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            ConvBNAct(aspp_channels + low_level_channels, decoder_channels, kernel_size=3),
            ConvBNAct(decoder_channels, decoder_channels, kernel_size=3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        init_cnn_weights(self, linear_init="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        low_level = x
        # Plain loop over a Sequential: unrolled by export/fx, index is a Python int.
        for index, layer in enumerate(self.backbone):
            features = layer(features)
            if index == self.low_level_index:
                low_level = features
        high_level = self.aspp(features)
        skip = self.low_level_project(low_level)
        decoded = self.decoder(torch.cat([upsample_to(high_level, skip), skip], dim=1))
        return upsample_to(self.classifier(decoded), x)


def deeplabv3plus_mobilenet_v3(**kwargs) -> DeepLabV3Plus:
    return DeepLabV3Plus(**kwargs)
