"""MACs and parameter counts against hand counts."""

import numpy as np
import torch

import fuser
from fuser.analysis import analyze


class Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.up = torch.nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        y = self.up(self.dw(torch.relu(self.bn(self.conv(x)))))
        return self.fc(y.mean((2, 3)))


def test_hand_counted_macs_and_params():
    g = fuser.from_torch(Mixed(), (torch.zeros(1, 4, 8, 8),))
    info = analyze(g)
    conv = 8 * 8 * 8 * (4 * 3 * 3)  # out elements x (C_in/groups * k*k)
    dw = 8 * 4 * 4 * (1 * 3 * 3)  # stride 2 -> 4x4
    up = (8 * 4 * 4) * (6 * 2 * 2)  # in elements x (C_out/groups * k*k)
    fc = 5 * 6
    assert info["macs"] == conv + dw + up + fc
    per = [(r["op"], r["macs"]) for r in info["per_node"] if r["macs"]]
    assert per == [("Conv", conv), ("Conv", dw), ("ConvTranspose", up), ("Gemm", fc)]
    assert info["params"] == sum(p.numel() for p in Mixed().parameters())
    assert info["buffers"] == 16  # BN running mean + var: buffers, not params


def test_norms_without_affine_parameters_count_none_as_torch_does():
    # the frontend writes ones and zeros for ONNX's scale and bias inputs: not parameters
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.InstanceNorm2d(8),
        torch.nn.GroupNorm(2, 8, affine=False),
        torch.nn.LayerNorm([14], elementwise_affine=False),
        torch.nn.PReLU(8),
        torch.nn.GroupNorm(4, 8),  # affine, at its initial ones and zeros: parameters all the same
    )
    info = analyze(fuser.from_torch(m, (torch.zeros(1, 3, 16, 16),), fallback=False))
    assert info["params"] == sum(p.numel() for p in m.parameters()) == 224 + 8 + 16
    per = {r["op"]: 0 for r in info["per_node"]}
    for r in info["per_node"]:
        per[r["op"]] += r["params"]
    assert per["InstanceNormalization"] == per["LayerNormalization"] == 0 and per["PRelu"] == 8


def test_matmul_macs_batched():
    g = fuser.Graph("mm")
    a = g.add_input("a", (2, 3, 4, 5))
    b = g.const(np.ones((5, 7), np.float32), "b")
    n = g.add_node("MatMul", [a, b])
    g.outputs.append(n.output)
    from fuser.analysis.shapes import infer_shapes

    infer_shapes(g)
    assert n.output.shape == (2, 3, 4, 7)
    assert analyze(g)["macs"] == 2 * 3 * 4 * 7 * 5
    assert analyze(g)["params"] == 35


def test_activation_and_weight_bytes():
    g = fuser.from_torch(Mixed(), (torch.zeros(1, 4, 8, 8),))
    rows = {r["op"]: r for r in analyze(g)["per_node"]}
    assert rows["ConvTranspose"]["activation_bytes"] == 6 * 8 * 8 * 4
    assert rows["ConvTranspose"]["weight_bytes"] == (8 * 6 * 2 * 2 + 6) * 4
