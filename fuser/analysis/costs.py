"""Per-node cost analysis: MACs, parameters, activation and weight bytes.

Counting conventions (the ones torchvision, fvcore and Torch-Pruning use):
  - MACs: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul only;
    one MAC per weight tap per output element. Conv: numel(Y)·(C_in/group)·prod(k).
    ConvTranspose: numel(X)·(C_out/group)·prod(k). Gemm/MatMul: M·N·K (times batch).
    Bias adds, BN, activations, pooling and elementwise ops count 0 MACs.
    ResNet-50 at 224² is 4.09 G by this rule.
  - params: elements of floating-point constants consumed as weights: all
    floating constants of more than one element, except BatchNormalization's
    running mean/variance (buffers, reported apart) and constants in
    configuration slots (Resize scales, Pad pads, Reshape shapes, ...).
    Conv/Gemm weights and biases count whatever their size. A constant used by
    several nodes counts once. This equals PyTorch's ``sum(p.numel() for p in
    model.parameters())`` for the zoo.
  - activation bytes: bytes of a node's outputs; weight bytes: bytes of the
    parameters (and buffers) it reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fuser.ir import Graph, Node, Value

WEIGHT_SLOTS = {
    "Conv": {1, 2},
    "ConvTranspose": {1, 2},
    "Gemm": {1, 2},
    "BatchNormalization": {1, 2},
    "LayerNormalization": {1, 2},
    "InstanceNormalization": {1, 2},
    "GroupNormalization": {1, 2},
    "PRelu": {1},
}
BUFFER_SLOTS = {"BatchNormalization": {3, 4}}
# Inputs that configure an op rather than carry data or weights.
CONFIG_SLOTS = {
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Pad": {1, 2, 3},
    "Clip": {1, 2},
    "Reshape": {1},
    "Slice": {1, 2, 3, 4},
    "Expand": {1},
    "Tile": {1},
    "Split": {1},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "ReduceMean": {1},
    "ReduceSum": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL2": {1},
    "Gather": {1},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
    "Dropout": {1, 2},
    "CastLike": {1},
}


@dataclass
class NodeCost:
    name: str
    op: str
    output_shape: list
    macs: int
    params: int
    activation_bytes: int
    weight_bytes: int


def node_macs(node: Node) -> int:
    op, ins, out = node.op, node.inputs, node.outputs[0]
    if not out.is_static:
        return 0
    if op == "Conv":
        w = ins[1]
        return out.numel * int(np.prod(w.shape[1:]))
    if op == "ConvTranspose":
        w = ins[1]  # [C_in, C_out/group, k...]
        return ins[0].numel * int(np.prod(w.shape[1:]))
    if op == "Gemm":
        a_shape = ins[0].shape
        k = a_shape[0] if node.attr("transA", 0) else a_shape[1]
        return out.numel * int(k)
    if op == "MatMul":
        a_shape = ins[0].shape
        return out.numel * int(a_shape[-1])
    return 0


def weight_role(node: Node, index: int) -> str | None:
    """'param', 'buffer' or None (data or configuration) for input ``index`` of ``node``."""
    v = node.inputs[index]
    if v is None or not v.is_const or v.const.dtype.kind != "f":
        return None
    if index in BUFFER_SLOTS.get(node.op, ()):
        return "buffer"
    if index in WEIGHT_SLOTS.get(node.op, ()):
        return "param"
    if index in CONFIG_SLOTS.get(node.op, ()):
        return None
    return "param" if v.numel > 1 else None


def node_weights(node: Node) -> list[tuple[Value, str]]:
    out = []
    for i in range(len(node.inputs)):
        role = weight_role(node, i)
        if role:
            out.append((node.inputs[i], role))
    return out


def analyze(graph: Graph) -> dict:
    """Per-node costs and totals; see the module docstring for the conventions."""
    rows, params_seen, buffers_seen = [], {}, {}
    for n in graph.nodes:
        weights = node_weights(n)
        for v, role in weights:
            (params_seen if role == "param" else buffers_seen)[id(v)] = v
        rows.append(
            NodeCost(
                name=n.name,
                op=n.op,
                output_shape=list(n.outputs[0].shape or ()),
                macs=node_macs(n),
                params=sum(v.numel for v, role in weights if role == "param"),
                activation_bytes=sum(v.nbytes for v in n.outputs),
                weight_bytes=sum(v.nbytes for v, _ in weights),
            )
        )
    ops = graph.op_counts()
    return {
        "model": graph.name,
        "inputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype.name} for v in graph.inputs],
        "outputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype.name} for v in graph.outputs],
        "params": int(sum(v.numel for v in params_seen.values())),
        "buffers": int(sum(v.numel for v in buffers_seen.values())),
        "macs": int(sum(r.macs for r in rows)),
        "weight_bytes": int(
            sum(v.nbytes for v in params_seen.values()) + sum(v.nbytes for v in buffers_seen.values())
        ),
        "activation_bytes": int(sum(r.activation_bytes for r in rows)),
        "nodes": len(graph.nodes),
        "ops": ops,
        "per_node": [asdict(r) for r in rows],
    }
