"""drop_zero_bias: remove biases that are a broadcast zero.

Rule: the bias of ``Conv``/``ConvTranspose`` (input 2) or ``Gemm`` (input C) that
is a splat constant (one value broadcast: what ConstantOfShape or Expand of a
scalar folds to) equal to 0 is removed; the op's result is unchanged.
PyTorch's ONNX exporter writes such a bias for every bias-free conv, so capture
runs this pass to keep the graph's parameters equal to the module's. A real
bias array that happens to be zero is a parameter and is kept. Gemm's C is optional
from opset 11 only: before that it stays.
"""

from __future__ import annotations

from fuser.ir import Graph, is_splat

from .base import PassResult

BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def run(graph: Graph) -> PassResult:
    dropped = 0
    for node in graph.nodes:
        i = BIAS_INPUT.get(node.op)
        if node.op == "Gemm" and graph.opset < 11:
            continue
        b = node.input(i) if i is not None else None
        if b is None or not b.is_const or not is_splat(b.const) or b.const.reshape(-1)[:1].any():
            continue
        node.set_input(i, None)
        while node.inputs and node.inputs[-1] is None:
            node.inputs.pop()
        dropped += 1
    return PassResult(graph, dropped > 0, {"dropped": dropped})
