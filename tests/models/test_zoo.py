"""Tests for the model zoo (fuser.models).

Parameter counts are checked against the torchvision / timm originals (and
against our own documented counts for the two models without an original).
The heaviest models run their forward/capture checks on 64x64 inputs unless
FUSER_HEAVY=1, in which case they use their full default input shape.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from torch import nn

from fuser import models

# Kept here, independent of models/__init__.py, so a change to the registry
# cannot silently change what the tests expect.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b3": 12_233_232,
    "vgg16": 138_357_544,
    "squeezenet1_1": 1_235_496,
    "shufflenet_v2_x1_0": 2_278_604,
    "convnext_tiny": 28_589_128,
    "vit_tiny_patch16_224": 5_717_416,
    "deeplabv3plus_mobilenet_v3": 11_727_653,  # ours: no reference model
    "convfirst": 9_137_416,  # ours: no reference model
    "yolov8n": 3_157_200,  # Ultralytics' model.info(); 3,151,904 with BN folded (below)
    "picodet_layout": 1_791_988,  # no published count at 5 classes; 1.5x COCO is checked below
}
OWN_MODELS = {"deeplabv3plus_mobilenet_v3", "convfirst", "picodet_layout"}
HEAVY_MODELS = {"resnet152", "vgg16", "efficientnet_b3", "yolov8n", "picodet_layout"}
RUN_HEAVY_FULL = os.environ.get("FUSER_HEAVY") == "1"
SMALL_RESOLUTION = 64


def model_params(names=None):
    """Parametrize over model names, tagging the heavy ones with the ``heavy`` marker."""
    return [
        pytest.param(name, marks=pytest.mark.heavy) if name in HEAVY_MODELS else name
        for name in (names or models.names())
    ]


@functools.cache
def built(name: str) -> nn.Module:
    """One seed-0 instance per model, shared by the tests (they never mutate it)."""
    return models.create(name, seed=0)


def make_input(name: str, reduced: bool) -> torch.Tensor:
    """Default input, or a 64x64 one for reduced checks where the model allows it."""
    shape = models.input_shape(name)
    if reduced and not models.info(name)["fixed_resolution"]:
        shape = shape[:2] + (SMALL_RESOLUTION, SMALL_RESOLUTION)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1234))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_and_metadata():
    assert models.names() == sorted(EXPECTED_PARAMS)
    for name in models.names():
        info = models.info(name)
        assert isinstance(info["description"], str) and info["description"]
        expected_reference = None if name in OWN_MODELS else EXPECTED_PARAMS[name]
        assert info["params_reference"] == expected_reference
        side = {"efficientnet_b3": 300, "yolov8n": 640}.get(name, 224)
        expected_shape = (1, 3, 800, 608) if name == "picodet_layout" else (1, 3, side, side)
        assert models.input_shape(name) == expected_shape
    with pytest.raises(KeyError):
        models.create("no_such_model")


@pytest.mark.parametrize("name", models.names())
def test_parameter_count(name):
    assert count_params(built(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", model_params())
def test_forward_shape_and_finite(name):
    model = built(name)
    x = make_input(name, reduced=name in HEAVY_MODELS and not RUN_HEAVY_FULL)
    assert not model.training
    with torch.no_grad():
        y = model(x)
    if name.startswith("deeplab"):
        expected = (1, 21) + tuple(x.shape[-2:])
    elif name == "yolov8n":  # 4 box + 80 class rows, one column per anchor of the 3 levels
        expected = (1, 84, sum((x.shape[2] // s) * (x.shape[3] // s) for s in (8, 16, 32)))
    elif name == "picodet_layout":  # 5 class scores + 4 x 8 box bins per anchor of the 4 levels
        expected = (1, sum(-(-x.shape[2] // s) * -(-x.shape[3] // s) for s in (8, 16, 32, 64)), 37)
    else:
        expected = (1, 1000)
    assert tuple(y.shape) == expected
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "name",
    ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0", "convfirst", "deeplabv3plus_mobilenet_v3"],
)
def test_other_resolutions(name):
    model = built(name)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 65, 47))
    assert torch.isfinite(y).all()
    if name.startswith("deeplab"):
        assert tuple(y.shape) == (1, 21, 65, 47)


def test_kwargs_pass_through():
    assert models.create("resnet18", num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    segmenter = models.create("deeplabv3plus_mobilenet_v3", num_classes=5)
    assert segmenter(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    small = models.create("convfirst", channels=16, expansion=2, kernel_size=5, depths=(1, 1))
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("name", model_params())
def test_seed_determinism(name):
    rng_before = torch.get_rng_state()
    again = models.create(name, seed=0).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before), "create() must not disturb the global RNG"
    reference = built(name).state_dict()
    assert reference.keys() == again.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    other = models.create(name, seed=1).state_dict()
    assert any(not torch.equal(reference[k], other[k]) for k in reference if reference[k].is_floating_point())


def test_randomized_batchnorm():
    model = built("resnet18")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        assert ((bn.running_var >= 0.5) & (bn.running_var <= 1.5)).all()
        assert ((bn.weight >= 0.5) & (bn.weight <= 1.5)).all()
        assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.equal(bn.bias, torch.zeros_like(bn.bias))
    plain = models.create("resnet18", randomize_bn=False)
    for bn in (m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))


def assert_batchnorm_follows_bias_free_conv(graph_module: torch.fx.GraphModule) -> None:
    """BN folding relies on every BatchNorm2d consuming a bias-free Conv2d directly."""
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            producer = node.args[0]
            assert producer.op == "call_module" and isinstance(modules[producer.target], nn.Conv2d), (
                node.target
            )
            assert modules[producer.target].bias is None, f"{producer.target} feeds BN but has a bias"


@pytest.mark.parametrize("name", model_params())
def test_fx_and_export_capture(name):
    model = built(name)
    assert not any(getattr(m, "inplace", False) for m in model.modules()), "in-place ops complicate export"
    x = make_input(name, reduced=True)  # capture does not depend on resolution
    graph_module = torch.fx.symbolic_trace(model)
    assert_batchnorm_follows_bias_free_conv(graph_module)
    with torch.no_grad():
        eager = model(x)
        traced = graph_module(x)
        exported = torch.export.export(model, (x,)).module()(x)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-6)


def test_convfirst_block():
    channels, expansion = 64, 4
    block = models.convfirst_block(channels, expansion=expansion, kernel_size=3).eval()
    # grouped 3x3 (group width 8) + 1x1 expand + 1x1 project, three BNs.
    expected = channels * 8 * 9 + 2 * (expansion * channels * channels) + 2 * channels * (2 + expansion)
    assert count_params(block) == expected
    groups = [m.groups for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert groups == [channels // 8, 1, 1]
    x = torch.randn(1, channels, 16, 16)
    with torch.no_grad():
        y = block(x)
        exported = torch.export.export(block, (x,)).module()(x)
    assert y.shape == x.shape
    torch.testing.assert_close(exported, y)
    with pytest.raises(ValueError):
        models.convfirst_block(12)


def test_yolov8n_fused_parameter_count_and_anchors():
    """Ultralytics' fused count (BN folded into the convs): 3,151,904; the anchor grid the head
    computes from the input shape is no parameter."""
    import fuser
    from fuser.analysis import analyze

    graph = fuser.optimize(built("yolov8n"), (torch.zeros(1, 3, 640, 640),)).graph
    assert analyze(graph)["params"] == 3_151_904
    assert graph.outputs[0].shape == (1, 84, 8400)


def test_picodet_matches_published_configurations():
    """PaddleDetection's README lists PicoDet-LCNet 1.5x (80 COCO classes) at 3.10 M parameters;
    the layout model at its 800 x 608 input has 10,105 anchors (100x76 + 50x38 + 25x19 + 13x10)."""
    from fuser.models.picodet import picodet_lcnet_layout

    coco = picodet_lcnet_layout(num_classes=80, scale=1.5)
    assert count_params(coco) // 10_000 == 310  # 3,107,664; the README's 3.10 M is truncated
    with torch.no_grad():
        y = built("picodet_layout")(torch.zeros(1, 3, 800, 608))
    assert tuple(y.shape) == (1, 10_105, 37)
    scores = y[..., :5]
    assert ((scores >= 0) & (scores <= 1)).all()
