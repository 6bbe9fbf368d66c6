"""torch.export -> IR directly (fuser.frontends.aten): every zoo model captured without the
ONNX exporter at parity with eager, names and Node.meta from the user's code, one converter
per op checked against eager, and the exporter fallback for an op without a converter."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from util import ort_run, ort_run_graph, rel_err
from zoo_cache import zoo_case, zoo_eager

import fuser
from fuser.frontends import aten
from fuser.ir import FuserError, check_graph, display_name
from fuser.models import names

TOL = 1e-5


@pytest.mark.parametrize("name", names())
def test_zoo_captured_directly_at_parity(name):
    module, x, graph = zoo_case(name)
    check_graph(graph)
    assert all("module" in n.meta and n.meta["torch_op"] for n in graph.nodes)  # no exporter fallback
    assert len({n.name for n in graph.nodes}) == len(graph.nodes)
    consts = {v.name for v in graph.constants()}
    params = [k for k, p in module.named_parameters() if p.numel() > 1]
    held = [k for k in params if k in consts or f"{k}.T" in consts]
    assert len(held) >= len(params) - 2  # by name (ViT's cls_token is folded into a broadcast)
    (got,) = ort_run_graph(graph, {graph.inputs[0].name: x.numpy()})
    assert rel_err(got, zoo_eager(name)) <= TOL


def test_names_and_meta_read_like_the_code():
    module, x, graph = zoo_case("resnet18")
    by_name = {n.name: n for n in graph.nodes}
    conv = by_name["layer3.1.conv2"]
    assert conv.op == "Conv" and conv.inputs[1].name == "layer3.1.conv2.weight"
    assert conv.meta["module"] == "layer3.1.conv2" and conv.meta["module_type"] == "Conv2d"
    assert conv.meta["torch_op"] == "aten.conv2d.default"
    assert conv.meta["source"].endswith("fuser/models/resnet.py:43")  # out = self.bn2(self.conv2(out))
    assert conv.meta["weights"] == {1: ("layer3.1.conv2.weight", (0, 1, 2, 3))}
    add = by_name["layer3.1/add"]  # out + identity, in BasicBlock.forward
    assert add.op == "Add" and add.meta["module"] == "layer3.1"
    assert [by_name[n].op for n in ("layer3.1.relu", "layer3.1.relu@1")] == ["Relu", "Relu"]  # called twice
    assert {"flatten", "fc", "avgpool"} <= set(by_name)
    assert display_name(conv) == "layer3.1.conv2"
    assert [v.name for v in graph.inputs + graph.outputs] == ["x", "output"]


class Ops(nn.Module):
    def __init__(self, fn, *layers):
        super().__init__()
        self.fn, self.layers = fn, nn.ModuleList(layers)

    def forward(self, *xs):
        return self.fn(self, *xs)


def _ops_cases():
    img = (2, 4, 9, 9)
    bounds = nn.BatchNorm2d(4).eval()  # its buffers as per-channel clamp bounds
    bounds.running_mean.fill_(-0.3)
    bounds.running_var.fill_(0.5)
    return {
        # torch maps coordinates by the scale factor given, not by output / input size (they
        # differ at 1.5x of 13 rows); nearest picks rows by the factor's float reciprocal
        "interpolate_fractional_scale_factors": (
            Ops(
                lambda s, x: torch.cat(
                    [
                        F.interpolate(x, scale_factor=1.5, mode="bilinear").flatten(1),
                        F.interpolate(x, scale_factor=0.6, mode="nearest").flatten(1),
                        F.interpolate(x, scale_factor=(1.7, 0.7), mode="nearest").flatten(1),
                    ],
                    1,
                )
            ),
            [(2, 4, 13, 17)],
        ),
        "clamp_by_tensors": (  # ONNX Clip takes scalar bounds only: Max and Min
            Ops(
                lambda s, x: (
                    torch.clamp(x, min=s.layers[0].running_mean.view(1, 4, 1, 1))
                    + torch.clamp(
                        x, s.layers[0].running_mean.view(1, 4, 1, 1), s.layers[0].running_var.view(1, 4, 1, 1)
                    )
                ),
                bounds,
            ),
            [img],
        ),
        "avg_pool_divisor_override": (  # torch's ONNX exporter divides by the window instead
            Ops(lambda s, x: F.avg_pool2d(x, 3, stride=2, padding=1, divisor_override=2)),
            [img],
        ),
        "integer_sum_is_int64": (  # ReduceSum keeps int32: a Cast first, as torch promotes
            Ops(lambda s, x: (x * 10).to(torch.int32).sum(dim=1).float()),
            [img],
        ),
        "conv1d_transpose1d": (
            Ops(
                lambda s, x: s.layers[1](s.layers[0](x)),
                nn.Conv1d(4, 6, 3, 2, 1),
                nn.ConvTranspose1d(6, 4, 3, 2),
            ),
            [(2, 4, 11)],
        ),
        "conv3d_same_dilated": (
            Ops(lambda s, x: s.layers[0](x), nn.Conv3d(4, 5, 3, padding="same", dilation=2)),
            [(1, 4, 6, 7, 5)],
        ),
        "conv_transpose2d_groups": (
            Ops(lambda s, x: s.layers[0](x), nn.ConvTranspose2d(4, 6, 3, 2, 1, output_padding=1, groups=2)),
            [img],
        ),
        "prelu_per_channel_and_shared": (  # the slope broadcasts over axis 1, not the last axis
            Ops(
                lambda s, x: s.layers[0](x) + s.layers[1](x.flatten(2)).view(2, 4, 9, 9),
                nn.PReLU(4, init=0.1),
                nn.PReLU(init=0.3),
            ),
            [img],
        ),
        "norms": (
            Ops(
                lambda s, x: s.layers[2](s.layers[1](s.layers[0](x))),
                nn.GroupNorm(2, 4),
                nn.InstanceNorm2d(4, affine=True),
                nn.LayerNorm([9, 9], elementwise_affine=False),
            ),
            [img],
        ),
        "activations": (
            Ops(
                lambda s, x: (
                    F.leaky_relu(x, 0.2)
                    + F.elu(x)
                    + F.softplus(x)
                    + F.mish(x)
                    + F.hardtanh(x, -0.5, 0.7)
                    + x.clamp(min=-0.1)
                    + torch.rsqrt(x.abs() + 1)
                    + F.gelu(x, approximate="tanh")
                    + F.relu6(x)
                    + torch.tanh(x) * torch.exp(-x.abs())
                    + torch.where(x > 0, x, 0.5 * x).pow(2)
                    - 1 / (2 + x.abs())
                )
            ),
            [img],
        ),
        "binary_broadcast": (
            Ops(lambda s, x, y: torch.maximum(x, y) - 3 - y / (x.abs() + 1), nn.Identity()),
            [img, (4, 1, 9)],
        ),
        "pools": (
            Ops(
                lambda s, x: (
                    torch.cat(
                        [
                            F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                            F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                            F.adaptive_avg_pool2d(F.pad(x, (0, 1, 0, 1)), 5),
                        ],
                        1,
                    ).amax(dim=1, keepdim=True)
                    + F.adaptive_max_pool2d(x, 1)
                )
            ),
            [img],
        ),
        "resize_pad_shuffle": (
            Ops(
                lambda s, x: (
                    F.pixel_shuffle(
                        F.interpolate(F.pad(x, (1, 2, 0, 1), mode="reflect"), scale_factor=2, mode="nearest")
                        + F.interpolate(
                            F.pad(x, (1, 2, 0, 1), mode="replicate"), size=(20, 24), mode="bilinear"
                        ),
                        2,
                    )
                    + F.interpolate(x, size=(40, 48), mode="bilinear", align_corners=True)[:, :1]
                )
            ),
            [img],
        ),
        "data_movement": (
            Ops(
                lambda s, x: (
                    torch.stack(x.unbind(1)[1:3], 2).flatten(2).narrow(2, 1, 15)[..., ::3].sum(-1)
                    + x.split([1, 3], 1)[1]
                    .permute(0, 2, 3, 1)
                    .reshape(2, 9, 27)
                    .transpose(1, 2)
                    .mean((1, 2))
                    .unsqueeze(-1)
                    + x[:, 2].squeeze().mean(-1)[:, :1].expand(2, 3)[:, 2:]
                )
            ),
            [img],
        ),
        "attention_softmax": (
            Ops(
                lambda s, q, k: (
                    F.scaled_dot_product_attention(q, k, k)
                    + F.log_softmax(q, -1)
                    + torch.bmm(q[0], k[0].transpose(1, 2)).softmax(-1).mean()
                ),
                nn.Identity(),
            ),
            [(2, 3, 5, 8), (2, 3, 6, 8)],
        ),
        "linear_addmm_embedding": (
            Ops(
                lambda s, x: (
                    s.layers[0](x)
                    + torch.addmm(s.layers[1].bias, x[:, 0], s.layers[1].weight.t())[:, None]
                    + s.layers[2](torch.tensor([[1, 3, 0]])).sum()
                ),
                nn.Linear(6, 5),
                nn.Linear(6, 5),
                nn.Embedding(4, 5),
            ),
            [(2, 3, 6)],
        ),
    }


CASES = _ops_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_converters_match_eager(case):
    torch.manual_seed(0)
    module, shapes = CASES[case]
    module.eval()
    xs = tuple(torch.randn(s) for s in shapes)
    graph = fuser.from_torch(module, xs, fallback=False)  # raises if any op lacks a converter
    check_graph(graph)
    with torch.no_grad():
        want = module(*xs).numpy()
    feeds = {v.name: x.numpy() for v, x in zip(graph.inputs, xs)}
    (got,) = ort_run(fuser.to_onnx(graph), feeds)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


def test_op_without_converter_falls_back_to_the_exporter(monkeypatch, caplog):
    module, x, graph = zoo_case("resnet18")
    monkeypatch.delitem(aten.CONVERTERS, "relu")
    with caplog.at_level(logging.WARNING, logger="fuser.frontends.torch"):
        fallback = fuser.from_torch(module, (x,))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "no direct converter for aten.relu.default in module 'relu'" in lines[0]
    (got,) = ort_run_graph(fallback, {fallback.inputs[0].name: x.numpy()})
    assert rel_err(got, zoo_eager("resnet18")) <= TOL
    assert fallback.op_counts() == graph.op_counts()
    conv = fallback.node_by_name("layer3.1.conv2/conv")  # named by the module the exporter recorded
    assert conv.op == "Conv" and display_name(conv) == conv.name and conv.meta["module"] == "layer3.1.conv2"
    assert {"layer3.1.relu/relu", "layer3.1.relu/relu@1", "layer3.1/add"} <= {n.name for n in fallback.nodes}
    assert conv.meta["source"].endswith("fuser/models/resnet.py:43")
    with pytest.raises(
        FuserError, match=r"ResNet: no direct converter for aten\.relu\.default in module 'relu'"
    ):
        fuser.from_torch(module, (x,), fallback=False)


def test_display_name_of_onnx_graph_is_the_node_name():
    g = fuser.Graph()
    x = g.add_input("x", (1, 2), np.float32)
    node = g.add_node("Relu", [x], name="my_relu")
    assert display_name(node) == "my_relu"


def test_fuse_json_names_ops_by_module_path():
    """`fuser fuse zoo:resnet18 --json`: the split explanation of the whole graph (every op in
    one group) names, by module path, the ops whose weights alone fill the 256 KB buffer at 1 B
    per element (hand count: layer3.0.conv1 128*256*9 = 294912, layer3's other convs 589824,
    layer4's 1179648 and 2359296, fc 512*1000 = 512000; every other layer is under 262144)."""
    from click.testing import CliRunner

    from fuser.cli import main

    result = CliRunner().invoke(main, ["fuse", "zoo:resnet18", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    first = plan["splits"][0]  # 49 ops: 20 convs (BN folded), 17 ReLUs, 8 adds, maxpool, avgpool, flatten, fc
    assert first["rule"] == "unfusable ops alone" and len(first["group"]) == 49
    culprits = [c["op"] for c in first["culprits"]]
    assert culprits == [f"layer{s}.{b}.conv{c}" for s in (3, 4) for b in (0, 1) for c in (1, 2)] + ["fc"]
    assert {"from": "layer3.0.conv1", "to": "layer3.0.relu"}.items() <= first["cut_edges"][0].items()
    assert [u["op"] for u in plan["unfusable"]] == culprits
    ops = [op for g in plan["groups"] for op in g["ops"]]
    assert {"conv1", "maxpool", "layer1.0/add", "layer1.0.relu@1", "layer2.0.downsample.0", "flatten"} <= set(
        ops
    )


def test_tvm_kernel_table_names_plan_groups_by_module_path():
    from fuser.backends.latency import KernelTiming, _join_plan
    from fuser.backends.tvm.lower import GROUP_FUNC_PREFIX

    _, _, graph = zoo_case("resnet18")
    names = [n.name for n in fuser.optimize(graph).graph.nodes]
    groups = [{"ops": names[:4], "dram_bytes": 10}, {"ops": names[4:5], "dram_bytes": 20}]
    kernels = _join_plan(
        [
            KernelTiming(f"{GROUP_FUNC_PREFIX}0", 2.0, group=0),
            KernelTiming(f"{GROUP_FUNC_PREFIX}1", 1.0, group=1),
        ],
        groups,
    )
    assert [(k.group, k.ops, k.dram_bytes) for k in kernels] == [
        (0, "conv1 .. layer1.0.conv1", 10),
        (1, "layer1.0.relu", 20),
    ]


def test_capture_errors_name_the_real_cause_in_one_clean_line(capsys):
    """Each refusal is one FuserError whose advice fits its cause: bfloat16 weights (numpy has
    no such type; was a TypeError from the weight copy), inputs forward() itself rejects (was
    "remove data-dependent control flow"), control flow (torch's graph dumps, written to
    stderr by the failed export, stay unprinted), and an op the ONNX exporter cannot
    convert (named from its innermost error, without the exporter's colour codes; was
    "... This is step 3/3 ... Next steps:")."""
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    with pytest.raises(FuserError, match=r"bfloat16 tensors cannot be held .* cast the model to float32"):
        bf16 = copy.deepcopy(conv).to(torch.bfloat16)
        fuser.from_torch(bf16, (torch.randn(1, 3, 8, 8, dtype=torch.bfloat16),))
    rejected = r"forward\(\) fails on the example inputs \(float32\[1, 5, 8, 8\]\)"
    with pytest.raises(FuserError, match=rejected) as e:
        fuser.from_torch(conv, (torch.randn(1, 5, 8, 8),))
    assert "control flow" not in str(e.value) and "5 channels" in str(e.value)
    with pytest.raises(FuserError, match=r"\(float64\[1, 3, 8, 8\]\).*double"):
        fuser.from_torch(conv, (torch.randn(1, 3, 8, 8, dtype=torch.float64),))

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    capsys.readouterr()
    with pytest.raises(FuserError, match="data-dependent control flow"):
        fuser.from_torch(Branchy(), (torch.randn(1, 3, 8, 8),))
    printed = capsys.readouterr()
    assert "def forward" not in printed.err + printed.out

    class AdaptiveMax(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_max_pool2d(x, 2)

    with pytest.raises(FuserError, match=r"ONNX exporter failed: .*aten\.adaptive_max_pool2d") as e:
        fuser.from_torch(AdaptiveMax(), (torch.randn(1, 3, 11, 11),))
    assert "\x1b" not in str(e.value) and "Next steps" not in str(e.value)
