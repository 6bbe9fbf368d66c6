"""What a converter sees of one node, and helpers every op family shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fuser.ir import FuserError, Node
from fuser.ir.semantics import window_pads

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
    def opset(self) -> int:
        return self.node.graph.opset if self.node.graph is not None else 17

    @property
    def out_shape(self) -> list[int]:
        return [int(d) for d in self.node.output.shape]

    @property
    def dtype(self) -> str:
        """The output's element type: what a scalar constant of the op is made of (relax.const
        would make float32 of a float16 or float64 model's scalars, and the op fails to
        type-check)."""
        return str(self.node.output.dtype)

    @property
    def rank(self) -> int:
        return len(self.node.input(0).shape)

    def fail(self, msg: str) -> FuserError:
        n = self.node
        src = n.graph.source if n.graph is not None else "<graph>"
        return FuserError(f"{src}: node {n.name} ({n.op}): {msg} (TVM backend)")


def spatial_pads(c: Lowering, in_sp: Sequence[int], kernel: Sequence[int], strides, dilations) -> list[int]:
    """ONNX pads [b1, b2, .., e1, e2, ..] with auto_pad resolved (SAME_* from the static shape)."""
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    try:
        begin, end = window_pads(c.node.attrs, in_sp, k_eff, strides)
    except FuserError as e:
        raise c.fail(str(e)) from None
    return begin + end


def channel_bias(x, b, rank: int):
    """x + b broadcast along axis 1 (conv bias)."""
    return R.add(x, R.reshape(b, [1, -1] + [1] * (rank - 2)))


def relax_const(a: np.ndarray):
    """A relax constant keeping the array's dtype (relax.const narrows int64 otherwise) and
    its rank (np.ascontiguousarray would make a 0-d array shape (1,))."""
    a = np.asarray(a, order="C")
    return relax.const(a, str(a.dtype))
