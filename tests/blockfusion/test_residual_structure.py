"""Residual blocks found by structure (fuser.blockfusion.structure), not by template: hand counts
per zoo model and in the real PaddleOCR classifier, activations named by what they compute,
squeeze-and-excite split at its pool with the reason, refusals with reasons, and each fused
block built as one depth-first TVM kernel against ONNX Runtime on its subgraph (a sample of
kinds by default; every block of every model with FUSER_HEAVY=1)."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from util import HEAVY, PADDLE_MODELS, paddle_model
from zoo_cache import zoo_case

import fuser
from fuser.blockfusion.structure import block_groups, find_residual_blocks
from fuser.cli.main import main

TOL = 1e-4

# Outermost fused blocks per kind, counted by hand from each architecture: ResNet-18 has 2+2+2+2
# basic blocks; MobileNetV2 10 inverted residuals with a skip (1+2+3+2+2, not the t=1 first or
# the stride-2/widening ones); ConvNeXt-T 3+3+9+3; EfficientNet-B0 16 MBConv of which 9 have a
# skip (the other 7 keep only their squeeze-excite); YOLOv8n 8 C2f (4 backbone, 4 neck) and its
# 3 head branches (box and class convs joined by Concat); PicoDet's CSP-PAN 4 CSP layers (2
# top-down, 2 bottom-up: two 1x1 branches joined by Concat) and LCNet's 2 squeeze-excite blocks.
HAND = {
    "resnet18": {"ResNet basic": 8},
    "mobilenet_v2": {"MBConv": 10},
    "convfirst": {"ConvFirst": 12},
    "convnext_tiny": {"ConvNeXt": 18},
    "yolov8n": {"C2f": 8, "concat block": 3},
    "efficientnet_b0": {"MBConv + SE": 9, "squeeze-excite": 7},
    "picodet_layout": {"concat block": 4, "squeeze-excite": 2},
}


def folded(name: str):
    return fuser.optimize(zoo_case(name)[2]).graph


def outer_fused(blocks) -> dict[str, int]:
    return dict(collections.Counter(b.kind for b in blocks if b.fused and b.inside is None))


@pytest.mark.parametrize("name", sorted(HAND))
def test_zoo_blocks_match_hand_counts(name):
    blocks = find_residual_blocks(folded(name))
    assert outer_fused(blocks) == HAND[name]
    # no node in two outermost blocks: each can become one kernel (block_groups feeds to_relax)
    outer = [b for b in blocks if b.fused and b.inside is None]
    assert sum(len(b.nodes) for b in outer) == len(block_groups(blocks))


def test_yolov8n_bottlenecks_nested_in_c2f_and_silu_named():
    blocks = find_residual_blocks(folded("yolov8n"))
    by_name = {b.name: b for b in blocks}
    inner = [b for b in blocks if b.inside]
    # the backbone's C2f have 1, 2, 2, 1 shortcut bottlenecks; the neck's have no shortcut
    assert len(inner) == 6 and {b.kind for b in inner} == {"YOLO bottleneck"}
    assert all(by_name[b.inside].kind == "C2f" and set(b.nodes) < set(by_name[b.inside].nodes) for b in inner)
    for b in blocks:
        if b.kind in ("C2f", "YOLO bottleneck"):
            assert set(b.activations) == {"SiLU"} and "SiLU" in b.description
            assert "Mul" not in b.description and "Sigmoid" not in b.description
    # the DFL head has no rows to tile: refused, and says so
    refused = [b for b in blocks if not b.fused and b.inside is None]
    assert len(refused) == 1 and "no rows" in refused[0].reason


def test_a_projection_shortcut_is_described_with_its_merge():
    """ResNet's 1x1 stride-2 downsample conv runs beside the main path: the description puts it
    in the Add it feeds, not first in the chain (it read 'Conv 1x1 s2 -> Conv 3x3 s2 ...')."""
    blocks = find_residual_blocks(folded("resnet18"))
    descriptions = collections.Counter(b.description for b in blocks)
    assert descriptions == {
        "Conv 3x3 + ReLU -> Conv 3x3 -> Add -> ReLU": 5,
        "Conv 3x3 s2 + ReLU -> Conv 3x3 -> Add(Conv 1x1 s2) -> ReLU": 3,
    }
    bottleneck = find_residual_blocks(folded("resnet50"))[0]
    assert bottleneck.description == "Conv 1x1 + ReLU -> Conv 3x3 + ReLU -> Conv 1x1 -> Add(Conv 1x1) -> ReLU"


def test_squeeze_excite_is_split_at_its_pool_with_the_reason():
    blocks = find_residual_blocks(folded("mobilenet_v3_small"))
    se = [b for b in blocks if b.kind == "MBConv + SE"]
    assert len(se) == 5
    for b in se:
        assert b.fused and b.stages == 2 and b.reason.startswith("split at ReduceMean")
        assert b.activations[:2] == ["HardSwish", "HardSwish"] and "HardSigmoid" in b.activations
    plain = [b for b in blocks if b.kind == "MBConv"]
    assert len(plain) == 1 and plain[0].stages == 1 and plain[0].activations == ["ReLU", "ReLU"]


def test_paddleocr_classifier_blocks():
    """The real PP-OCR direction classifier (PP-LCNet-like MobileNetV3): SE blocks split at the pool."""
    name = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    path = paddle_model(name)
    input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    graph = fuser.optimize(str(path), input_shapes={input_name: PADDLE_MODELS[name]}).graph
    blocks = find_residual_blocks(graph)
    assert outer_fused(blocks) == {"MBConv + SE": 6, "squeeze-excite": 3, "MBConv": 1}
    assert all(b.stages == 2 for b in blocks if b.fused and ("squeeze" in b.kind or "SE" in b.kind))


def _verify_sample(graph, blocks, kinds=None):
    from fuser.blockfusion.verify import verify_blocks

    fused = [b for b in blocks if b.fused and b.inside is None]
    if kinds is not None:  # the first block of each kind
        fused = [next(b for b in fused if b.kind == k) for k in kinds]
    checks = verify_blocks(graph, fused)
    assert len(checks) == len(fused)
    return checks


SAMPLE = {  # one block of each kind the issue names, by default; every block with FUSER_HEAVY=1
    "resnet18": ["ResNet basic"],
    "yolov8n": ["C2f"],
    "mobilenet_v3_small": ["MBConv + SE"],
    "convfirst": ["ConvFirst"],
}
ALL_ZOO = sorted(set(HAND) | {"mobilenet_v3_small", "shufflenet_v2_x1_0"})


@pytest.mark.heavy
@pytest.mark.parametrize("name", ALL_ZOO if HEAVY else sorted(SAMPLE))
def test_fused_blocks_match_ort(name):
    graph = folded(name)
    checks = _verify_sample(graph, find_residual_blocks(graph), None if HEAVY else SAMPLE[name])
    for c in checks:
        assert c.rel_err <= TOL, c
        assert c.stages >= 1  # it was tiled: one kernel with a tile loop, not left whole
    if name == "mobilenet_v3_small":
        assert any(c.stages == 2 for c in checks)  # split at the pool


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(PADDLE_MODELS) if HEAVY else ["ch_ppocr_mobile_v2.0_cls_infer.onnx"])
def test_fused_paddleocr_blocks_match_ort(name):
    """Both PaddleOCR models (the detector at 160x160); the classifier's first SE block by default."""
    path = paddle_model(name)
    input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    shape = (1, 3, 160, 160) if "det" in name else PADDLE_MODELS[name]
    graph = fuser.optimize(str(path), input_shapes={input_name: shape}).graph
    blocks = find_residual_blocks(graph)
    for c in _verify_sample(graph, blocks, None if HEAVY else ["MBConv + SE"]):
        assert c.rel_err <= TOL, c


def test_cli_blocks_lists_residual_blocks_and_verifies_them():
    args = ["blocks", "zoo:resnet18", "--input-shape", "1,3,32,32"]
    r = CliRunner().invoke(main, [*args, "--json", "--verify"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    fused = [b for b in data["residual_blocks"] if b["fused"]]
    assert len(fused) == 8 and {b["kind"] for b in fused} == {"ResNet basic"}
    checks = data["residual_checks"]
    assert [c["block"] for c in checks] == [b["name"] for b in fused]
    assert all(c["rel_err"] <= TOL for c in checks)
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0 and "8 residual blocks found by structure, 8 fused" in r.output
    assert "CUDA templates" in r.output


def _chain(shape, scale):
    """x -> Sigmoid -> Mul(x, ·) -> Mul(·, scale): SiLU times ``scale`` (a scalar or one
    constant per channel)."""
    from fuser.ir import Graph

    g = Graph("chain", opset=18)
    x = g.add_input("x", shape)
    s = g.add_node("Sigmoid", [x]).output
    y = g.add_node("Mul", [x, s]).output
    z = g.add_node("Mul", [y, g.const(np.asarray(scale, np.float32))]).output
    g.outputs.append(z)
    return g, z


@pytest.mark.parametrize("shape", [(8, 16, 28, 28), (1, 2, 3, 5)])
def test_activations_are_named_on_any_input_size_and_a_per_channel_constant_is_not_one(shape):
    """SiLU on a batch of 8 (100,352 values, probed with 113 repeated) and on 30 values (fewer
    than one run of the probe); the same chain times one constant per channel computes no
    single activation: 'elementwise', though its first channel (scaled by 1) is SiLU."""
    from fuser.blockfusion.structure import name_activation

    g, out = _chain(shape, 1.0)
    assert name_activation(g, list(g.nodes), out) == "SiLU"
    per_channel = 1 + np.linspace(0, 0.5, shape[1]).reshape(1, -1, 1, 1)
    g, out = _chain(shape, per_channel)
    assert name_activation(g, list(g.nodes), out) == "elementwise"


class _Residual(torch.nn.Module):
    """act(x + conv(act(conv(x)))) between two convs (a block's entry and output are no
    graph input or output)."""

    def __init__(self, act):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.act, self.stem, self.head = act, torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.act(x + self.c2(self.act(self.c1(x)))))


class _GeluTanhAsOps(torch.nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))


@pytest.mark.parametrize(
    ("act", "name"),
    [
        (torch.nn.ELU(), "ELU(1)"),
        (torch.nn.SELU(), "SELU"),
        (torch.nn.Softplus(), "Softplus"),
        (torch.nn.Softsign(), "Softsign"),
        (torch.nn.Hardtanh(-2.0, 2.0), "Clip(-2, 2)"),
        (torch.nn.LeakyReLU(0.2), "LeakyReLU(0.2)"),
        (_GeluTanhAsOps(), "GELU(tanh)"),
    ],
)
def test_every_activation_of_a_block_is_named_also_after_its_add(act, name):
    """Each activation is named where it follows a conv and where it follows the Add, and both
    are listed: the Add's ELU, SELU, Softplus, Softsign and hardtanh went unmentioned (no
    name, so no label), GELU(tanh) written out (nine ops: more than the chain's old limit of
    8, its x * x read as a merge) came as 'Mul -> Mul -> ...'. Parametric families read their
    parameter off the probe."""
    x = torch.randn(1, 3, 8, 8)
    graph = fuser.optimize(_Residual(act).eval(), (x,)).graph
    (block,) = find_residual_blocks(graph)
    assert block.description == f"Conv 3x3 + {name} -> Conv 3x3 -> Add -> {name}"
    assert block.activations == [name, name]


class _ConvNeXtWrittenOut(torch.nn.Module):
    """ConvNeXt's block with its channels-last LayerNorm written out as ops (what exporters
    before opset 17 emit): mean, x - mean, mean of its square, + eps, sqrt, divide, scale."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.dw = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.weight, self.bias = torch.nn.Parameter(torch.rand(c) + 0.5), torch.nn.Parameter(torch.rand(c))
        self.up, self.down = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)
        self.stem, self.head = torch.nn.Conv2d(3, c, 1), torch.nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        centered = y - y.mean(-1, keepdim=True)
        y = centered / torch.sqrt((centered * centered).mean(-1, keepdim=True) + 1e-6)
        y = self.down(torch.nn.functional.gelu(self.up(y * self.weight + self.bias)))
        return self.head(x + y.permute(0, 3, 1, 2))


def test_a_layernorm_written_out_is_no_pool():
    """Its ReduceMeans reduce each pixel's channels, not the map's rows: the block is a
    ConvNeXt block, one stage (it was 'MBConv + SE', split at ReduceMean 'the pool needs its
    whole H x W input'), described with 'LayerNorm'."""
    x = torch.randn(1, 3, 8, 8)
    graph = fuser.optimize(_ConvNeXtWrittenOut().eval(), (x,)).graph
    assert "ReduceMean" in graph.op_counts() and "LayerNormalization" not in graph.op_counts()
    (block,) = find_residual_blocks(graph)
    assert block.kind == "ConvNeXt" and block.stages == 1, (block.kind, block.reason)
    assert block.description.startswith("Conv 7x7 dw -> LayerNorm -> ")
