"""ONNX attribute semantics that more than one stage computes the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .graph import FuserError


def window_pads(
    attrs: Mapping[str, Any],
    in_spatial: Sequence[int],
    kernel_effective: Sequence[int],
    strides: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(begin, end) pads per spatial axis of a window op (Conv, MaxPool, AveragePool, ...),
    ``auto_pad`` resolved: SAME_UPPER/SAME_LOWER pad so that output = ceil(in / stride)
    (the odd pixel at the end for SAME_UPPER, at the start for SAME_LOWER); VALID pads
    nothing; NOTSET reads ``pads`` [b1, b2, ..., e1, e2, ...]."""
    n = len(in_spatial)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s in zip(in_spatial, kernel_effective, strides):
            out = -(-int(size) // s)
            total = max(0, (out - 1) * s + k - int(size))
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return begin, end
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto != "NOTSET":
        raise FuserError(f"unknown auto_pad '{auto}'")
    pads = list(attrs.get("pads") or [0] * (2 * n))
    return pads[:n], pads[n:]
