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
    several nodes counts once. A constant the torch frontend made up (the ones and
    zeros of a norm without affine parameters) is not a parameter; an ONNX file's
    initializers are, whatever their values. This equals PyTorch's ``sum(p.numel() for p in
    model.parameters())`` for the zoo.
  - activation bytes: bytes of a node's outputs; weight bytes: bytes of the
    parameters (and buffers) it reads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from fuser.ir import Graph, Node, Value
from fuser.ir.ops import Role, op_def


@dataclass
class NodeCost:
    name: str
    op: str
    output_shape: list
    macs: int
    params: int
    activation_bytes: int
    weight_bytes: int


def _conv_macs(node: Node) -> int:
    return node.output.numel * math.prod(map(int, node.inputs[1].shape[1:]))


def _conv_transpose_macs(node: Node) -> int:
    # W: [C_in, C_out/group, k...]
    return node.inputs[0].numel * math.prod(map(int, node.inputs[1].shape[1:]))


def _gemm_macs(node: Node) -> int:
    a_shape = node.inputs[0].shape
    return node.output.numel * int(a_shape[0] if node.attr("transA", 0) else a_shape[1])


def _matmul_macs(node: Node) -> int:
    return node.output.numel * int(node.inputs[0].shape[-1])


# The registry names each op's rule (fuser.ir.ops.OpDef.macs); "none" counts 0 by convention.
MAC_RULES = {
    "conv": _conv_macs,
    "conv_transpose": _conv_transpose_macs,
    "gemm": _gemm_macs,
    "matmul": _matmul_macs,
    "none": lambda node: 0,
}


def node_macs(node: Node) -> int:
    d = op_def(node.op)
    if d is None or not node.outputs[0].is_static:
        return 0
    return MAC_RULES[d.macs](node)


def weight_role(node: Node, index: int) -> str | None:
    """'param', 'buffer' or None (data or configuration) for input ``index`` of ``node``,
    from the registry's role of that input slot."""
    v = node.inputs[index]
    if v is None or not v.is_const or v.const.dtype.kind != "f":
        return None
    d = op_def(node.op)
    role = d.role(index) if d is not None else Role.DATA
    if role is Role.STAT:
        return "buffer"
    if role in (Role.WEIGHT, Role.BIAS):
        return None if v.derived else "param"
    if role in (Role.CONFIG, Role.INDEX):
        return None
    # an operand: a weight unless it is a scalar or computed from shapes alone (an anchor grid)
    return "param" if v.numel > 1 and not v.derived else None


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
