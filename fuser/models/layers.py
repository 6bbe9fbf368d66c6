"""Building blocks shared by several model families.

The layouts mirror torchvision's (``Conv2dNormActivation``, ``SqueezeExcitation``,
``StochasticDepth``, ``LayerNorm2d``, ``Permute``) so that state_dict keys and
parameter counts line up with the originals. Every normalisation after a conv
is a real ``nn.BatchNorm2d`` module, which the BN-folding passes depend on.
No module here uses in-place ops or data-dependent control flow, so all of them
go through ``torch.export`` and ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ModuleFactory = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going below 90% of it.

    Channel-rounding rule from the MobileNet reference code (also used by
    EfficientNet): hardware kernels prefer channel counts that are multiples of 8.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down must not remove more than 10%
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d -> norm -> activation, as torchvision's ``Conv2dNormActivation``.

    Children are indexed 0 (conv), 1 (norm), 2 (activation) like torchvision's,
    and missing parts are simply left out. ``padding`` defaults to "same" for odd
    kernels; the conv has a bias only when there is no norm (a bias would be
    absorbed by the norm anyway) unless ``bias`` says otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: ModuleFactory | None = nn.BatchNorm2d,
        activation_layer: ModuleFactory | None = nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation gate (Hu et al. 2018, "Squeeze-and-Excitation Networks").

    Global average pool -> 1x1 conv (reduce) -> activation -> 1x1 conv (expand) ->
    gate activation -> channel-wise scaling of the input; torchvision layout.
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: ModuleFactory = nn.ReLU,
        scale_activation: ModuleFactory = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.activation(self.fc1(scale))
        scale = self.scale_activation(self.fc2(scale))
        return scale * x


class StochasticDepth(nn.Module):
    """Randomly drop whole residual branches per sample while training.

    Huang et al. 2016, "Deep Networks with Stochastic Depth" ("row" mode of
    torchvision). In eval mode it is the identity, which is what gets traced.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # self.training / drop_prob are Python attributes, not tensor values, so
        # this branch is resolved at trace time.
        if not self.training or self.drop_prob == 0.0:
            return x
        survival = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        keep = (torch.rand(mask_shape, dtype=x.dtype, device=x.device) < survival).to(x.dtype)
        return x * keep / survival

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (torchvision's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """``torch.permute`` as a module, so it can sit inside an ``nn.Sequential``."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


def init_cnn_weights(model: nn.Module, linear_init: str = "normal") -> None:
    """torchvision's CNN initialisation, shared by the families that use it.

    Convs get Kaiming-normal (fan_out, ReLU gain) with zero bias, norms get
    weight 1 / bias 0. Linear layers differ between torchvision families:

    - ``"normal"``: N(0, 0.01), zero bias (VGG, MobileNet V2/V3);
    - ``"uniform"``: U(-1/sqrt(out), 1/sqrt(out)), zero bias (EfficientNet);
    - ``"default"``: PyTorch's default Linear init is kept (ResNet).
    """
    if linear_init not in ("normal", "uniform", "default"):
        raise ValueError(f"unknown linear_init {linear_init!r}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_init != "default":
            if linear_init == "normal":
                nn.init.normal_(module.weight, 0.0, 0.01)
            else:
                init_range = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -init_range, init_range)
            nn.init.zeros_(module.bias)


def init_transformer_weights(model: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal init for convs and linears (ConvNeXt, ViT), zero bias."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
