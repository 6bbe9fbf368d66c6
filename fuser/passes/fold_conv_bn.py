"""fold_conv_bn: fold inference BatchNormalization into the op before it (deploy mode).

With s = γ / sqrt(σ² + ε) per output channel c (You et al., ICLR 2024, "Deploy"):
  - ``BN(Conv(x, W, b))``          -> ``Conv(x, W', b')``, W'[c] = W[c]·s[c], b' = (b − μ)·s + β
  - ``BN(ConvTranspose(x, W, b))`` -> same with the output channel on W's dim 1 (per group:
                                     W is [C_in, C_out/group, k...])
  - ``BN(Gemm(A, B, C))`` (2-D)    -> ``Gemm(A, B', C')``: B's output-feature axis scaled by s,
                                     C' = beta·C·s + (β − μ·s), beta := 1
  - ``BN(MatMul(x, W))`` (2-D)      -> ``Add(MatMul(x, W'), β − μ·s)``
  - ``BN(Add(P(x), b))``, P any of the above, b a constant with one value per channel
                                   -> ``Add(P'(x), b·s + β − μ·s)``, P' = P with W (and its
                                     own bias) scaled by s (PaddleOCR writes ConvTranspose bias so)
(b is 0 when absent). Conditions: BN is in inference form (no training_mode, one output
used); its γ, β, μ, σ² and the weights are constants, γ, β, μ, σ² one value per channel
(not BatchNormalization-7's ``spatial=0``); the producer's output (and, for MatMul+Add, the
MatMul's output) has no user but the next op and is not a graph output.
Folded weights are new constants, so a weight or BN shared by several ops stays correct,
and a BN applied twice (``BN(BN(conv))``) folds twice: each fold keeps the output equal.
"""

from __future__ import annotations

import numpy as np

from fuser.ir import Graph, Node, Value
from fuser.ir.ops import Category, ops_in

from .base import PassResult

CONV_LIKE = ops_in(Category.CONV, Category.MATMUL)


def _sole_user(graph: Graph, v: Value, node: Node) -> bool:
    return v.users == [node] and len(v.uses) == 1 and not graph.is_output(v)


def _bn_scale_shift(bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with BN(y) = y·s + t per channel, in float64; None if BN is not foldable."""
    if bn.attr("training_mode", 0) or any(v.uses for v in bn.outputs[1:]):
        return None
    params = bn.inputs[1:5]
    if len(params) != 4 or not all(v is not None and v.is_const for v in params):
        return None
    if bn.attr("spatial", 1) == 0 or any(v.const.ndim != 1 for v in params):
        return None  # statistics per (channel, position) (BatchNormalization-7/8): not a channel scale
    gamma, beta, mean, var = (v.const.astype(np.float64) for v in params)
    s = gamma / np.sqrt(var + bn.attr("epsilon", 1e-5))
    return s, beta - mean * s


def _const_input(node: Node, i: int) -> np.ndarray | None:
    v = node.input(i)
    return v.const.astype(np.float64) if v is not None and v.is_const else None


def _scale_into(graph: Graph, node: Node, s: np.ndarray) -> bool:
    """Multiply ``node``'s output channels by s through its weights (and bias); no shift."""
    w, b = _const_input(node, 1), _const_input(node, 2)
    if w is None or (node.input(2) is not None and b is None) or node.output.shape[1] != len(s):
        return False
    if node.op in ("Conv", "ConvTranspose"):
        k_ones = (1,) * (w.ndim - 2)
        if node.op == "Conv":
            w = w * s.reshape(-1, 1, *k_ones)
        else:  # W [C_in, C_out/g, k...]; output channel = group·(C_out/g) + j
            g = node.attr("group", 1)
            c_in, c_out_g = w.shape[:2]
            w = (w.reshape(g, c_in // g, c_out_g, *w.shape[2:]) * s.reshape(g, 1, c_out_g, *k_ones)).reshape(
                w.shape
            )
    elif node.op == "Gemm":
        w = w * (s.reshape(-1, 1) if node.attr("transB", 0) else s.reshape(1, -1))
    elif node.op == "MatMul" and w.ndim == 2 and len(node.output.shape) == 2:
        w = w * s.reshape(1, -1)
    else:
        return False
    _set_input(graph, node, 1, w)
    if b is not None:
        _set_input(graph, node, 2, b * s)  # Gemm: beta·C·s keeps beta
    return True


def _shift(graph: Graph, node: Node, t: np.ndarray) -> Node:
    """Add t per output channel to ``node``'s result; returns the node producing it."""
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
        b = _const_input(node, 2)
        if node.op == "Gemm" and b is not None:
            b = np.broadcast_to(b * node.attr("beta", 1.0), node.output.shape)
            node.attrs["beta"] = 1.0
            b = b[0] if (b == b[:1]).all() else b  # a per-feature bias stays a vector
        _set_input(graph, node, 2, (0 if b is None else b) + t)
        return node
    bias = graph.const(t.astype(node.output.dtype), f"{node.name}_bn_bias")
    add = graph.add_node(
        "Add",
        [node.output, bias],
        name=f"{node.name}_bn_add",
        before=graph.nodes[graph.nodes.index(node) + 1],
    )
    add.output.shape, add.output.dtype = node.output.shape, node.output.dtype
    return add


def _per_channel(b: Value, out: Value, c: int) -> bool:
    """b broadcasts one value per channel (axis 1) onto ``out``."""
    shape, rank = tuple(b.shape), len(out.shape)
    if rank == 2:
        return shape in ((c,), (1, c))
    want = (c,) + (1,) * (rank - 2)
    return shape in (want, (1,) + want)


def _set_input(graph: Graph, node: Node, index: int, array: np.ndarray) -> None:
    old = node.input(index)
    dtype = old.dtype if old is not None else node.inputs[1].dtype
    new = graph.const(np.asarray(array).astype(dtype), f"{node.name}_{'w' if index == 1 else 'b'}_folded")
    while len(node.inputs) <= index:
        node.add_input(None)
    node.set_input(index, new)


def fold_one(graph: Graph, bn: Node) -> bool:
    """Fold ``bn`` into its producer if the rules allow; True when folded."""
    x = bn.inputs[0]
    prod = x.producer
    st = _bn_scale_shift(bn)
    if prod is None or st is None or not _sole_user(graph, x, bn):
        return False
    s, t = st
    if prod.op == "Add":  # BN(P(x) + b) = P'(x) + (b·s + t), P' = P scaled by s
        const = [v for v in prod.inputs if v.is_const]
        data = [v for v in prod.inputs if not v.is_const]
        if len(const) != 1 or len(data) != 1 or data[0].producer is None:
            return False
        b, inner = const[0], data[0].producer
        if (
            not _sole_user(graph, data[0], prod)
            or not _per_channel(b, x, len(s))
            or data[0].shape != x.shape
            or not _scale_into(graph, inner, s)
        ):
            return False
        folded_b = (b.const.astype(np.float64).reshape(-1) * s + t).reshape(b.shape)
        _set_input(graph, prod, prod.inputs.index(b), folded_b)
        out_node = prod
    elif prod.op in CONV_LIKE and _scale_into(graph, prod, s):
        out_node = _shift(graph, prod, t)
    else:
        return False
    y, new_y = bn.outputs[0], out_node.outputs[0]
    if graph.is_output(y):
        new_y.name = y.name  # keep the model's output name
    graph.replace_all_uses_with(y, new_y)
    graph.erase_node(bn)
    return True


def run(graph: Graph) -> PassResult:
    folded = 0
    for node in list(graph.nodes):
        if node.op == "BatchNormalization" and fold_one(graph, node):
            folded += 1
    return PassResult(graph, folded > 0, {"folded": folded})
