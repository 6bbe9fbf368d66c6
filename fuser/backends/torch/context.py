"""What an op implementation sees of its node (``Op``), and helpers every op family shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fuser.ir import FuserError, Node
from fuser.ir.semantics import window_pads

# ONNX TensorProto element types -> torch dtypes.
ONNX_TO_TORCH_DTYPE = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    4: torch.uint16,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    12: torch.uint32,
    13: torch.uint64,
    16: torch.bfloat16,
}


def torch_dtype(np_dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype


class Op:
    """What an op function knows about its node besides the runtime tensors."""

    __slots__ = (
        "name",
        "op",
        "attrs",
        "opset",
        "consts",
        "nout",
        "used",
        "out_dtypes",
        "cache",
        "const_values",
    )

    def __init__(self, node: Node, opset: int, used: list[bool], consts: list[np.ndarray | None]):
        self.name, self.op, self.attrs, self.opset = node.name, node.op, dict(node.attrs), opset
        self.consts = consts
        self.nout = len(node.outputs)
        self.used = used
        self.out_dtypes = [v.dtype for v in node.outputs]
        self.cache: dict = {}
        # constant inputs as Python lists: torch.compile cannot trace numpy arrays held by
        # the module, and ints()/scalar() of a constant are all most ops need
        self.const_values = {
            i: c.reshape(-1).tolist() for i, c in enumerate(consts) if c is not None and c.size <= 1024
        }

    def attr(self, key: str, default: Any = None) -> Any:
        v = self.attrs.get(key, default)
        return v.decode() if isinstance(v, bytes) else v

    def const(self, i: int) -> np.ndarray | None:
        return self.consts[i] if i < len(self.consts) else None

    def array(self, i: int, t: torch.Tensor | None) -> np.ndarray | None:
        """Input ``i`` as numpy: its constant value, else the runtime tensor's."""
        c = self.const(i)
        if c is not None:
            return np.asarray(c)
        return None if t is None else t.detach().cpu().numpy()

    def ints(self, i: int, t: torch.Tensor | None) -> list[int] | None:
        if i in self.const_values:
            return [int(v) for v in self.const_values[i]]
        a = self.array(i, t)
        return None if a is None else [int(v) for v in a.reshape(-1)]

    def scalar(self, i: int, t: torch.Tensor | None) -> Any:
        if i in self.const_values:
            values = self.const_values[i]
            return values[0] if values else None
        a = self.array(i, t)
        return None if a is None or a.size == 0 else a.reshape(-1)[0].item()

    def fail(self, msg: str) -> FuserError:
        """An error to raise; the module prefixes the file, node and op."""
        return FuserError(msg)


def prod(xs) -> int:
    return int(math.prod(xs))


def torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX-style per-dim (begin, end) for the trailing dims -> F.pad's last-dim-first list."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


def cached(c: Op, key, make: Callable):
    """A per-node cached helper tensor (index maps, divisors). Made outside inference mode so
    that a module first run under ``torch.inference_mode`` can still be trained afterwards."""
    value = c.cache.get(key)
    if value is None:
        with torch.inference_mode(False):
            value = c.cache[key] = make()
    return value


def bcast_view(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    return t.view([1] * axis + [-1] + [1] * (rank - axis - 1))


def explicit_pads(c: Op, in_sp, k_eff, strides):
    try:
        return window_pads(c.attrs, in_sp, k_eff, strides)
    except FuserError as e:
        raise c.fail(str(e)) from None
