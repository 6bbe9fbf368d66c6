"""fuser model zoo: plain-torch reimplementations of common CNNs.

Each model has the module structure and parameter count of its torchvision /
timm original (no dependency on either), with real ``nn.Conv2d`` +
``nn.BatchNorm2d`` pairs wherever the original has them, no in-place ops and no
data-dependent control flow, so every model goes through ``torch.export`` and
``torch.fx.symbolic_trace``.

    >>> from fuser import models
    >>> net = models.create("resnet18", seed=0)        # eval mode, deterministic
    >>> x = torch.randn(models.input_shape("resnet18"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .convfirst import CONVFIRST_PARAMS, convfirst, convfirst_block
from .convnext import convnext_tiny
from .deeplab import DEEPLABV3PLUS_MOBILENET_V3_PARAMS, deeplabv3plus_mobilenet_v3
from .efficientnet import efficientnet_b0, efficientnet_b3
from .mobilenet import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from .picodet import PICODET_LAYOUT_PARAMS, picodet_lcnet_layout
from .resnet import resnet18, resnet50, resnet152
from .shufflenet import shufflenet_v2_x1_0
from .squeezenet import squeezenet1_1
from .vgg import vgg16
from .vit import vit_tiny_patch16_224
from .yolov8 import YOLOV8N_PARAMS, yolov8n

__all__ = ["create", "names", "input_shape", "info", "randomize_batchnorm", "convfirst_block"]

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    params_reference: int | None  # torchvision/timm count; None for models without an original
    params_expected: int  # count with default kwargs (what the tests check)
    description: str
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    fixed_resolution: bool = False  # True when the model only accepts input_shape's H x W


def _reference(builder, count: int, description: str, **extra) -> ModelEntry:
    return ModelEntry(builder, count, count, description, **extra)


_REGISTRY: dict[str, ModelEntry] = {
    "resnet18": _reference(
        resnet18, 11_689_512, "ResNet-18 (He et al. 2016), basic blocks, torchvision layout"
    ),
    "resnet50": _reference(
        resnet50, 25_557_032, "ResNet-50 v1.5 (He et al. 2016), bottleneck blocks, torchvision layout"
    ),
    "resnet152": _reference(
        resnet152, 60_192_808, "ResNet-152 v1.5 (He et al. 2016), bottleneck blocks, torchvision layout"
    ),
    "mobilenet_v2": _reference(
        mobilenet_v2, 3_504_872, "MobileNetV2 (Sandler et al. 2018), inverted residuals with ReLU6"
    ),
    "mobilenet_v3_small": _reference(
        mobilenet_v3_small, 2_542_856, "MobileNetV3-Small (Howard et al. 2019), SE + Hardswish"
    ),
    "mobilenet_v3_large": _reference(
        mobilenet_v3_large, 5_483_032, "MobileNetV3-Large (Howard et al. 2019), SE + Hardswish"
    ),
    "efficientnet_b0": _reference(
        efficientnet_b0, 5_288_548, "EfficientNet-B0 (Tan & Le 2019), MBConv + SE + SiLU"
    ),
    "efficientnet_b3": _reference(
        efficientnet_b3,
        12_233_232,
        "EfficientNet-B3 (Tan & Le 2019), width 1.2 / depth 1.4, 300x300 input",
        input_shape=(1, 3, 300, 300),
    ),
    "vgg16": _reference(vgg16, 138_357_544, "VGG-16 (Simonyan & Zisserman 2015), configuration D, no BN"),
    "squeezenet1_1": _reference(
        squeezenet1_1, 1_235_496, "SqueezeNet 1.1 (Iandola et al. 2016), Fire modules"
    ),
    "shufflenet_v2_x1_0": _reference(
        shufflenet_v2_x1_0, 2_278_604, "ShuffleNetV2 1.0x (Ma et al. 2018), channel split + shuffle"
    ),
    "convnext_tiny": _reference(
        convnext_tiny, 28_589_128, "ConvNeXt-Tiny (Liu et al. 2022), depthwise 7x7 + LayerNorm + MLP blocks"
    ),
    "vit_tiny_patch16_224": _reference(
        vit_tiny_patch16_224,
        5_717_416,
        "ViT-Tiny/16 (Dosovitskiy et al. 2021), timm layout, explicit matmul attention",
        fixed_resolution=True,
    ),
    "deeplabv3plus_mobilenet_v3": ModelEntry(
        deeplabv3plus_mobilenet_v3,
        None,
        DEEPLABV3PLUS_MOBILENET_V3_PARAMS,
        "DeepLabV3+ (Chen et al. 2018) on dilated MobileNetV3-Large, ASPP + stride-4 skip, 21 classes",
    ),
    "yolov8n": _reference(
        yolov8n,
        YOLOV8N_PARAMS,
        "YOLOv8n (Ultralytics 2023): C2f bottlenecks, SPPF, decoupled anchor-free head with DFL",
        input_shape=(1, 3, 640, 640),
    ),
    "picodet_layout": ModelEntry(
        picodet_lcnet_layout,
        None,
        PICODET_LAYOUT_PARAMS,
        "PP-PicoDet-LCNet x1.0 (Yu et al. 2021), PP-Structure's layout detector: LCNet + CSP-PAN + PicoHead",
        input_shape=(1, 3, 800, 608),
    ),
    "convfirst": ModelEntry(
        convfirst,
        None,
        CONVFIRST_PARAMS,
        "ConvFirst (Lavin 2024): grouped kxk conv first, then 1x1 expand/SiLU/project, BN throughout",
    ),
}


def names() -> list[str]:
    """Sorted names of all models in the zoo."""
    return sorted(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(names())}") from None


def input_shape(name: str) -> tuple[int, ...]:
    """Default NCHW input shape (batch 1) of a model."""
    return _entry(name).input_shape


def info(name: str) -> dict:
    """Metadata: reference parameter count (None for our own models), description, input shape."""
    entry = _entry(name)
    return {
        "name": name,
        "params_reference": entry.params_reference,
        "params_expected": entry.params_expected,
        "description": entry.description,
        "input_shape": entry.input_shape,
        "fixed_resolution": entry.fixed_resolution,
    }


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    With fresh BN (mean 0, var 1, weight 1, bias 0) folding BN into convs is
    almost a no-op, so folding bugs would go unnoticed. Values are drawn from a
    private generator, deterministically from ``seed``:
    running_mean ~ 0.1 N(0,1), running_var ~ U(0.5,1.5), weight ~ U(0.5,1.5),
    bias ~ 0.1 N(0,1).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            if module.affine:
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))


def create(name: str, *, seed: int = 0, randomize_bn: bool = True, **kwargs) -> nn.Module:
    """Build a model in eval mode with deterministic weights.

    The architecture's own (torchvision-like) initialisation runs under
    ``torch.manual_seed(seed)`` inside ``fork_rng``, so the caller's global RNG
    state is left untouched and the same ``name`` + ``seed`` (+ kwargs) always
    give bit-identical weights. Extra kwargs (e.g. ``num_classes``) go to the
    model constructor.
    """
    entry = _entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.builder(**kwargs)
    if randomize_bn:
        randomize_batchnorm(model, seed)
    return model.eval()
