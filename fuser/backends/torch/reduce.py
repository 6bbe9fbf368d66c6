"""Torch implementations of reductions: Reduce*, Softmax, ArgMax."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from fuser.ir.ops import register

from .context import (
    Op,
    prod,
)


def _apply_softmax(fn: Callable, c: Op, x):
    if c.opset < 13:  # coerce to 2-D at axis
        axis = c.attr("axis", 1) % max(x.dim(), 1)
        shape = x.shape
        return fn(x.reshape(prod(shape[:axis]), prod(shape[axis:])), dim=1).reshape(shape)
    return fn(x, dim=c.attr("axis", -1))


def _softmax(fn: Callable) -> Callable:
    return partial(_apply_softmax, fn)


def _apply_reduce(fn: Callable, c: Op, x, axes=None):
    # axes as an input (ReduceSum >= 13, the rest >= 18)
    ax = c.ints(1, axes) if len(c.consts) > 1 else c.attr("axes")
    keep = bool(c.attr("keepdims", 1))
    if not ax:
        if c.attr("noop_with_empty_axes", 0):  # reduce over no axes: each element alone
            return x.abs() if c.op == "ReduceL2" else x
        ax = range(x.dim())
    return fn(x, tuple(sorted(a % max(x.dim(), 1) for a in ax)) if x.dim() else (), keep)


def _reducer(fn: Callable) -> Callable:
    return partial(_apply_reduce, fn)


def _reduce_mean(x, dims, keep):
    return x.mean(dims, keepdim=keep)


def _reduce_sum(x, dims, keep):
    return x.sum(dims, keepdim=keep)


def _reduce_max(x, dims, keep):
    return x.amax(dims, keepdim=keep)


def _reduce_min(x, dims, keep):
    return x.amin(dims, keepdim=keep)


def _reduce_prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


def _reduce_l2(x, dims, keep):
    return torch.sqrt((x * x).sum(dims, keepdim=keep))


_REDUCERS = {
    "ReduceMean": _reduce_mean,
    "ReduceSum": _reduce_sum,
    "ReduceMax": _reduce_max,
    "ReduceMin": _reduce_min,
    "ReduceProd": _reduce_prod,
    "ReduceL2": _reduce_l2,
}


def _argmax(c: Op, x):
    axis = c.attr("axis", 0) % x.dim()
    keep = bool(c.attr("keepdims", 1))
    if c.attr("select_last_index", 0):
        return x.shape[axis] - 1 - x.flip(axis).argmax(axis, keepdim=keep)
    return x.argmax(axis, keepdim=keep)


register("torch", "Softmax", _softmax(torch.softmax))
register("torch", "LogSoftmax", _softmax(torch.log_softmax))
register("torch", "ArgMax", _argmax)
for _op, _fn in _REDUCERS.items():
    register("torch", _op, _reducer(_fn))
