"""Torch implementations of reductions: Reduce*, Softmax, Hardmax, ArgMax/ArgMin."""

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
            return _EACH_ALONE.get(c.op, _identity)(x)
        ax = range(x.dim())
    return fn(x, tuple(sorted(a % max(x.dim(), 1) for a in ax)) if x.dim() else (), keep)


def _reducer(fn: Callable) -> Callable:
    return partial(_apply_reduce, fn)


def _reduce_mean(x, dims, keep):
    return x.mean(dims, keepdim=keep)


def _reduce_sum(x, dims, keep):
    return x.sum(dims, keepdim=keep)


def _empty_reduction(x, dims, keep, fill):
    shape = (
        [1 if d in dims else n for d, n in enumerate(x.shape)]
        if keep
        else [n for d, n in enumerate(x.shape) if d not in dims]
    )
    return torch.full(shape, fill, dtype=x.dtype, device=x.device)


def _reduce_max(x, dims, keep):
    if x.numel() == 0 and any(x.shape[d] == 0 for d in dims):  # ONNX: the identity of max
        low = float("-inf") if x.dtype.is_floating_point else torch.iinfo(x.dtype).min
        return _empty_reduction(x, dims, keep, low)
    return x.amax(dims, keepdim=keep)


def _reduce_min(x, dims, keep):
    if x.numel() == 0 and any(x.shape[d] == 0 for d in dims):
        high = float("inf") if x.dtype.is_floating_point else torch.iinfo(x.dtype).max
        return _empty_reduction(x, dims, keep, high)
    return x.amin(dims, keepdim=keep)


def _reduce_prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


def _reduce_l2(x, dims, keep):
    return torch.sqrt((x * x).sum(dims, keepdim=keep))


def _reduce_l1(x, dims, keep):
    return x.abs().sum(dims, keepdim=keep)


def _reduce_log_sum(x, dims, keep):
    return torch.log(x.sum(dims, keepdim=keep))


def _reduce_log_sum_exp(x, dims, keep):
    return torch.logsumexp(x, dims, keepdim=keep) if dims else x


def _reduce_sum_square(x, dims, keep):
    return (x * x).sum(dims, keepdim=keep)


_REDUCERS = {
    "ReduceMean": _reduce_mean,
    "ReduceSum": _reduce_sum,
    "ReduceMax": _reduce_max,
    "ReduceMin": _reduce_min,
    "ReduceProd": _reduce_prod,
    "ReduceL2": _reduce_l2,
    "ReduceL1": _reduce_l1,
    "ReduceLogSum": _reduce_log_sum,
    "ReduceLogSumExp": _reduce_log_sum_exp,
    "ReduceSumSquare": _reduce_sum_square,
}


def _identity(x):
    return x


# Reductions over no axes (noop_with_empty_axes=1) still apply their elementwise part.
_EACH_ALONE = {
    "ReduceL1": torch.abs,
    "ReduceL2": torch.abs,
    "ReduceLogSum": torch.log,
    "ReduceSumSquare": torch.square,
}


def _arg_extreme(c: Op, x):
    axis = c.attr("axis", 0) % x.dim()
    keep = bool(c.attr("keepdims", 1))
    pick = torch.argmax if c.op == "ArgMax" else torch.argmin
    if c.attr("select_last_index", 0):
        return x.shape[axis] - 1 - pick(x.flip(axis), axis, keepdim=keep)
    return pick(x, axis, keepdim=keep)


def _hardmax(c: Op, x):
    if c.opset < 13:  # coerce to 2-D at axis, as Softmax
        axis = c.attr("axis", 1) % max(x.dim(), 1)
        flat = x.reshape(prod(x.shape[:axis]), prod(x.shape[axis:]))
        return _hardmax_along(flat, 1).reshape(x.shape)
    return _hardmax_along(x, c.attr("axis", -1) % x.dim())


def _hardmax_along(x, axis: int):
    return torch.zeros_like(x).scatter(axis, x.argmax(axis, keepdim=True), 1)


register("torch", "Softmax", _softmax(torch.softmax))
register("torch", "LogSoftmax", _softmax(torch.log_softmax))
register("torch", "ArgMax", _arg_extreme)
register("torch", "ArgMin", _arg_extreme)
register("torch", "Hardmax", _hardmax)
for _op, _fn in _REDUCERS.items():
    register("torch", _op, _reducer(_fn))
