"""Torch implementations of ops that make tensors from shapes (Shape, Size, Range, ConstantOfShape)."""

from __future__ import annotations

import numpy as np
import torch

from fuser.ir.ops import register

from .context import (
    Op,
    torch_dtype,
)


def _shape(c: Op, x):
    dims = list(x.shape)[c.attr("start", 0) : c.attr("end", None)]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def _size(c: Op, x):
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _range(c: Op, start, limit, delta):
    vals = [c.scalar(i, t) for i, t in enumerate((start, limit, delta))]
    return torch.arange(*vals, dtype=start.dtype, device=start.device)


def _constant_of_shape(c: Op, shape):
    val = c.attr("value")
    val = np.zeros(1, np.float32) if val is None else np.asarray(val)
    return torch.full(
        c.ints(0, shape), val.reshape(-1)[0].item(), dtype=torch_dtype(val.dtype), device=shape.device
    )


register("torch", "Shape", _shape)
register("torch", "Size", _size)
register("torch", "Range", _range)
register("torch", "ConstantOfShape", _constant_of_shape)
