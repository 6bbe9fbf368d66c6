"""Single blocks as IR graphs, built directly (no torch capture): the shapes the tests and the
benchmark need (odd sizes, k ∈ {3, 5, 7}, strides, with and without residual) in milliseconds.

The ops are the ones fuser.optimize leaves after BN folding: Conv with bias, Relu,
Clip(0, 6), HardSwish, Sigmoid + Mul (SiLU), Add. Weights are seeded, N(0, 1/fan_in)
with biases N(0, 0.1), so every term of the block matters.
"""

from __future__ import annotations

import numpy as np

from fuser.ir import Graph, Value

DEFAULT_ACTIVATION = {"convfirst": "silu", "mbconv": "relu6", "resnet_basic": "relu"}


def _act(g: Graph, v: Value, name: str) -> Value:
    if name == "none":
        return v
    if name == "relu":
        return g.add_node("Relu", [v]).output
    if name == "relu6":
        return g.add_node("Clip", [v, g.const(np.float32(0), "min"), g.const(np.float32(6), "max")]).output
    if name == "hardswish":
        return g.add_node("HardSwish", [v]).output
    if name == "silu":
        return g.add_node("Mul", [v, g.add_node("Sigmoid", [v]).output]).output
    raise ValueError(name)


def _conv(
    g: Graph, v: Value, c_in: int, c_out: int, k: int, stride: int, groups: int, rng: np.random.Generator
) -> Value:
    w = (rng.standard_normal((c_out, c_in // groups, k, k)) / np.sqrt(c_in // groups * k * k)).astype(
        np.float32
    )
    b = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
    p = k // 2
    return g.add_node(
        "Conv",
        [v, g.const(w, "w"), g.const(b, "b")],
        attrs={
            "kernel_shape": [k, k],
            "strides": [stride, stride],
            "pads": [p, p, p, p],
            "dilations": [1, 1],
            "group": groups,
        },
    ).output


def block_graph(
    kind: str,
    channels: int,
    *,
    out_channels: int | None = None,
    expansion: int = 4,
    kernel: int = 3,
    stride: int = 1,
    hw: tuple[int, int] = (16, 16),
    batch: int = 1,
    residual: bool | None = None,
    activation: str | None = None,
    group_width: int = 8,
    with_expand: bool = True,
    seed: int = 0,
) -> Graph:
    """One block as a Graph (static shapes inferred). ``residual`` defaults to True where the
    shapes allow it (resnet_basic: a 1×1 projection when they do not)."""
    from fuser.analysis.shapes import infer_shapes

    rng = np.random.default_rng(seed)
    act = activation or DEFAULT_ACTIVATION[kind]
    c_out = out_channels or channels
    if residual is None:
        residual = stride == 1 and c_out == channels
    g = Graph(f"{kind}_block")
    x = g.add_input("x", (batch, channels, *hw))
    if kind == "convfirst":
        hidden = expansion * channels
        v = _conv(g, x, channels, channels, kernel, 1, channels // group_width, rng)
        v = _act(g, _conv(g, v, channels, hidden, 1, 1, 1, rng), act)
        v = _conv(g, v, hidden, c_out, 1, 1, 1, rng)
    elif kind == "mbconv":
        hidden = expansion * channels if with_expand else channels
        v = _act(g, _conv(g, x, channels, hidden, 1, 1, 1, rng), act) if with_expand else x
        v = _act(g, _conv(g, v, hidden, hidden, kernel, stride, hidden, rng), act)
        v = _conv(g, v, hidden, c_out, 1, 1, 1, rng)
    elif kind == "resnet_basic":
        v = _act(g, _conv(g, x, channels, c_out, kernel, stride, 1, rng), act)
        v = _conv(g, v, c_out, c_out, kernel, 1, 1, rng)
        shortcut = x if residual else _conv(g, x, channels, c_out, 1, stride, 1, rng)
        # the 1×1 projection has no padding
        if not residual:
            shortcut.producer.attrs["pads"] = [0, 0, 0, 0]
        v = _act(g, g.add_node("Add", [v, shortcut]).output, act)
        residual = False
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    if residual:
        v = g.add_node("Add", [x, v]).output
    g.outputs = [v]
    infer_shapes(g)
    return g
