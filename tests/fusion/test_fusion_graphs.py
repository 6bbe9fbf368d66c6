"""Small graphs for the fusion tests (hand-countable blocks, seeded random CNN-like DAGs),
and the tests of how fusion reads them: row rules, barriers, tensors and edges."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fuser.analysis.shapes import infer_shapes
from fuser.ir import Graph


def _conv(g: Graph, x, c_in: int, c_out: int, k: int, stride: int = 1, name: str = "conv"):
    w = g.const(np.zeros((c_out, c_in, k, k), np.float32), f"{name}_w")
    b = g.const(np.zeros(c_out, np.float32), f"{name}_b")
    pad = k // 2
    return g.add_node(
        "Conv",
        [x, w, b],
        name=name,
        attrs={"kernel_shape": [k, k], "strides": [stride, stride], "pads": [pad] * 4},
    ).output


def finish(g: Graph, outputs) -> Graph:
    g.outputs = list(outputs)
    infer_shapes(g)
    return g


def conv_chain(batch: int = 1) -> Graph:
    """x[1,4,16,16] -> conv3x3 4->8 -> relu -> conv3x3/2 8->8 -> y[1,8,8,8] (hand counts in tests)."""
    g = Graph("chain")
    x = g.add_input("x", (batch, 4, 16, 16))
    c1 = _conv(g, x, 4, 8, 3, name="conv1")
    r = g.add_node("Relu", [c1], name="relu").output
    c2 = _conv(g, r, 8, 8, 3, stride=2, name="conv2")
    return finish(g, [c2])


def se_block() -> Graph:
    """Squeeze-and-excite: t = conv1x1(x); y = t * sigmoid(fc2(relu(fc1(mean_hw(t)))))."""
    g = Graph("se", opset=18)
    x = g.add_input("x", (1, 8, 10, 10))
    t = _conv(g, x, 8, 8, 1, name="conv")
    axes = g.const(np.array([2, 3], np.int64), "axes")
    s = g.add_node("ReduceMean", [t, axes], name="squeeze", attrs={"keepdims": 1}).output
    f1 = _conv(g, s, 8, 2, 1, name="fc1")
    r = g.add_node("Relu", [f1], name="relu").output
    f2 = _conv(g, r, 2, 8, 1, name="fc2")
    sig = g.add_node("Sigmoid", [f2], name="gate").output
    y = g.add_node("Mul", [t, sig], name="excite").output
    return finish(g, [y])


def residual_block(channels: int = 16, size: int = 8) -> Graph:
    """stem conv -> [conv3x3 -> relu -> conv3x3] + skip -> relu."""
    g = Graph("residual")
    x = g.add_input("x", (1, channels, size, size))
    stem = _conv(g, x, channels, channels, 1, name="stem")
    c1 = _conv(g, stem, channels, channels, 3, name="conv1")
    r1 = g.add_node("Relu", [c1], name="relu1").output
    c2 = _conv(g, r1, channels, channels, 3, name="conv2")
    a = g.add_node("Add", [c2, stem], name="add").output
    y = g.add_node("Relu", [a], name="relu2").output
    return finish(g, [y])


def conv_relu_chain(n_relu: int, channels: int = 8, size: int = 32) -> Graph:
    """The planner-scaling chain: x -> conv3x3 -> n_relu x Relu (every op feeds only the next)."""
    g = Graph(f"conv_relu_chain{n_relu}")
    x = g.add_input("x", (1, channels, size, size))
    t = _conv(g, x, channels, channels, 3, name="conv")
    for k in range(n_relu):
        t = g.add_node("Relu", [t], name=f"relu{k}").output
    return finish(g, [t])


def random_dag(seed: int, n_ops: int = 20) -> Graph:
    """A seeded CNN-like DAG: convs (1x1/3x3, some strided), activations, residual adds,
    channel concats, pools and squeeze-and-excite gates, with several outputs."""
    rng = random.Random(seed)
    g = Graph(f"dag{seed}", opset=18)  # ReduceMean takes its axes as an input from opset 18
    x = g.add_input("x", (1, 4, 16, 16))
    stem = _conv(g, x, 4, 4, 3, name="stem")  # one entry op: the op graph is connected
    shapes = {id(stem): (4, 16, 16)}
    tensors = [stem]
    count = 1

    def add(v, c, h, w):
        shapes[id(v)] = (c, h, w)
        tensors.append(v)

    while count < n_ops:
        t = tensors[-1] if rng.random() < 0.6 else rng.choice(tensors)
        c, h, w = shapes[id(t)]
        kind = rng.choice(["conv", "conv", "conv", "act", "add", "concat", "pool", "se"])
        if kind == "conv":
            k = rng.choice([1, 3])
            stride = 2 if h >= 8 and rng.random() < 0.2 else 1
            c_out = rng.choice([4, 8, 16])
            add(
                _conv(g, t, c, c_out, k, stride, name=f"conv{count}"), c_out, -(-h // stride), -(-w // stride)
            )
            count += 1
        elif kind == "act":
            add(
                g.add_node(rng.choice(["Relu", "Sigmoid", "HardSwish"]), [t], name=f"act{count}").output,
                c,
                h,
                w,
            )
            count += 1
        elif kind == "add":
            same = [u for u in tensors if shapes[id(u)] == (c, h, w) and u is not t]
            if same:
                add(g.add_node("Add", [t, rng.choice(same)], name=f"add{count}").output, c, h, w)
                count += 1
        elif kind == "concat":
            same = [u for u in tensors if shapes[id(u)][1:] == (h, w) and u is not t]
            if same:
                u = rng.choice(same)
                add(
                    g.add_node("Concat", [t, u], name=f"cat{count}", attrs={"axis": 1}).output,
                    c + shapes[id(u)][0],
                    h,
                    w,
                )
                count += 1
        elif kind == "pool" and h >= 4:
            add(
                g.add_node(
                    "MaxPool", [t], name=f"pool{count}", attrs={"kernel_shape": [2, 2], "strides": [2, 2]}
                ).output,
                c,
                h // 2,
                w // 2,
            )
            count += 1
        elif kind == "se":
            axes = g.const(np.array([2, 3], np.int64), f"axes{count}")
            s = g.add_node("ReduceMean", [t, axes], name=f"mean{count}", attrs={"keepdims": 1}).output
            f = _conv(g, s, c, c, 1, name=f"fc{count}")
            gate = g.add_node("Sigmoid", [f], name=f"gate{count}").output
            add(g.add_node("Mul", [t, gate], name=f"scale{count}").output, c, h, w)
            count += 4
    used = {id(v) for n in g.nodes for v in n.inputs if v is not None}
    outputs = [v for v in tensors if id(v) not in used]
    return finish(g, outputs)


# ---- how the fusion view reads these graphs ---------------------------------------
def test_row_rules_of_the_blocks():
    from fuser.fusion.opgraph import build_fusion_graph

    fg = build_fusion_graph(conv_chain())
    rules = {fg.names[i]: [r for _, r in fg.op_inputs[i]] for i in range(fg.n)}
    (conv1,), (relu,), (conv2,) = rules["conv1"], rules["relu"], rules["conv2"]
    assert (conv1.kind, conv1.kernel, conv1.stride) == ("window", 3, 1)
    assert relu.kind == "same"
    assert (conv2.kind, conv2.kernel, conv2.stride) == ("window", 3, 2)
    # h_prev = min((h_next - 1)·stride + k, H)
    assert conv2.rows(1, 16) == 3 and conv2.rows(4, 16) == 9 and conv2.rows(8, 16) == 16
    assert fg.tensor_height == [16, 16, 16, 8] and fg.tensor_row_numel == [64, 128, 128, 64]
    assert fg.weight_numel == [8 * 4 * 9 + 8, 0, 8 * 8 * 9 + 8]
    assert fg.edges == [(0, 1), (1, 2)]


def test_squeeze_is_a_barrier_and_its_outputs_are_one_row():
    from fuser.fusion.opgraph import build_fusion_graph

    fg = build_fusion_graph(se_block())
    squeeze = fg.names.index("squeeze")
    assert fg.barrier_mask == 1 << squeeze
    assert fg.op_inputs[squeeze][0][1].kind == "accumulate"
    gate = fg.names.index("gate")
    assert fg.tensor_height[fg.op_outputs[gate][0]] == 1  # [1, 8, 1, 1]: a single row


def test_random_dags_are_seeded_and_connected():
    from fuser.fusion.opgraph import build_fusion_graph

    a, b = random_dag(3), random_dag(3)
    assert str(a) == str(b)
    fg = build_fusion_graph(a)
    assert fg.n >= 20 and fg.is_connected(fg.all_mask)


@pytest.mark.parametrize("width", [1, 8, 63, 300, 512, 513, 5000])
def test_bits_lists_the_set_bits_in_order(width):
    """``bits`` (a byte table up to 512 ops, a loop or numpy past it) against a bit-by-bit scan."""
    from fuser.fusion.opgraph import bits

    rng = random.Random(width)
    masks = [0, 1 << (width - 1), (1 << width) - 1] + [
        rng.getrandbits(width) & rng.getrandbits(width) for _ in range(50)
    ]
    masks += [
        rng.getrandbits(width) & rng.getrandbits(width) & rng.getrandbits(width) & rng.getrandbits(width)
        for _ in range(50)
    ]
    for m in masks:
        assert bits(m) == [i for i in range(m.bit_length()) if m >> i & 1]
