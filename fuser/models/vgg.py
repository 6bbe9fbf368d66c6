"""VGG-16 (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", arXiv 1409.1556), configuration "D" without
batch norm, in torchvision's layout (features / avgpool / classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import init_cnn_weights

# Output channels of each 3x3 conv; "M" is a 2x2 max pool. Configuration D of Table 1.
VGG16_LAYERS: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]


def make_vgg_features(layers: list[int | str]) -> nn.Sequential:
    modules: list[nn.Module] = []
    in_channels = 3
    for spec in layers:
        if spec == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(in_channels, int(spec), kernel_size=3, padding=1), nn.ReLU()]
            in_channels = int(spec)
    return nn.Sequential(*modules)


class VGG(nn.Module):
    def __init__(self, layers: list[int | str], num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = make_vgg_features(layers)
        # Adaptive pooling to 7x7 lets the 224-trained classifier accept other resolutions.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        # The classifier holds 90% of the weights and init_cnn_weights overwrites
        # them below, so PyTorch's default init is skipped (halves build time).
        self.classifier = nn.Sequential(
            nn.utils.skip_init(nn.Linear, 512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.utils.skip_init(nn.Linear, 4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        init_cnn_weights(self, linear_init="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def vgg16(**kwargs) -> VGG:
    return VGG(VGG16_LAYERS, **kwargs)
