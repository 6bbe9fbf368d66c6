"""What a converter sees of one node, and helpers every op family shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fuser.ir import FuserError, Node

from ..common import R, relax


class Lowering:
    """What a converter sees of one node: its relax inputs, constants and attributes."""

    def __init__(self, bb, node: Node, args: list):
        self.bb, self.node, self.args = bb, node, args

    def attr(self, key: str, default: Any = None) -> Any:
        return self.node.attrs.get(key, default)

    def const(self, i: int) -> np.ndarray | None:
        v = self.node.input(i)
        return None if v is None else v.const

    def ints(self, i: int) -> list[int] | None:
        """A constant int input (shape, axes, pads) as a list; None when absent."""
        v = self.node.input(i)
        if v is None:
            return None
        if v.const is None:
            raise self.fail(f"input {i} ({v.name}) must be a constant")
        return [int(a) for a in np.asarray(v.const).reshape(-1)]

    def scalar(self, i: int, default: float | None = None) -> float | None:
        v = self.node.input(i)
        if v is None:
            return default
        if v.const is None:
            raise self.fail(f"input {i} ({v.name}) must be a constant")
        return float(np.asarray(v.const).reshape(-1)[0])

    @property
    def out_shape(self) -> list[int]:
        return [int(d) for d in self.node.output.shape]

    @property
    def rank(self) -> int:
        return len(self.node.input(0).shape)

    def fail(self, msg: str) -> FuserError:
        n = self.node
        src = n.graph.source if n.graph is not None else "<graph>"
        return FuserError(f"{src}: node {n.name} ({n.op}): {msg} (TVM backend)")


def spatial_pads(
    c: Lowering,
    in_sp: Sequence[int],
    kernel: Sequence[int],
    strides,
    dilations,
    out_sp: Sequence[int] | None = None,
) -> list[int]:
    """ONNX pads [b1, b2, .., e1, e2, ..] with auto_pad resolved (SAME_* from the static shape)."""
    n = len(kernel)
    auto = c.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(c.attr("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for i in range(n):
        k_eff = (kernel[i] - 1) * dilations[i] + 1
        out = -(-in_sp[i] // strides[i])
        total = max((out - 1) * strides[i] + k_eff - in_sp[i], 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def channel_bias(x, b, rank: int):
    """x + b broadcast along axis 1 (conv bias)."""
    return R.add(x, R.reshape(b, [1, -1] + [1] * (rank - 2)))


def relax_const(a: np.ndarray):
    """A relax constant keeping the array's dtype (relax.const narrows int64 otherwise)."""
    a = np.ascontiguousarray(a)
    return relax.const(a, str(a.dtype))
