"""Torch implementations of elementwise ops: arithmetic, activations, casts."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, reduce

import torch
import torch.nn.functional as F

from fuser.ir import Node
from fuser.ir.ops import register

from .context import (
    ONNX_TO_TORCH_DTYPE,
    Op,
    torch_dtype,
)


# Generic ops are partials of module-level functions (not closures) so modules pickle.
def _apply_unary(fn: Callable, c: Op, x):
    return fn(x)


def _apply_binary(fn: Callable, c: Op, a, b):
    return fn(a, b)


def _unary(fn: Callable) -> Callable:
    return partial(_apply_unary, fn)


def _binary(fn: Callable) -> Callable:
    return partial(_apply_binary, fn)


def _div(c: Op, a, b):
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # C-style integer division


def _pow(c: Op, a, b):
    y = torch.pow(a, b)
    return y if y.dtype == a.dtype else y.to(a.dtype)


def _mod(c: Op, a, b):
    return torch.fmod(a, b) if c.attr("fmod", 0) else torch.remainder(a, b)


def _apply_variadic(fn: Callable, mean: bool, c: Op, *xs):
    xs = [x for x in xs if x is not None]
    y = reduce(fn, xs) if len(xs) > 1 else xs[0]
    return y / len(xs) if mean and len(xs) > 1 else y


def _variadic(fn: Callable, mean: bool = False) -> Callable:
    return partial(_apply_variadic, fn, mean)


def _clip(c: Op, x, lo=None, hi=None):
    if c.opset < 11:
        lo_v, hi_v = c.attr("min"), c.attr("max")
    else:
        lo_v = c.scalar(1, None) if c.const(1) is not None else lo
        hi_v = c.scalar(2, None) if c.const(2) is not None else hi
    if lo_v is None and hi_v is None:
        return x
    if isinstance(lo_v, torch.Tensor) or isinstance(hi_v, torch.Tensor):

        def as_t(v):
            return (
                v
                if v is None or isinstance(v, torch.Tensor)
                else torch.tensor(v, dtype=x.dtype, device=x.device)
            )

        lo_v, hi_v = as_t(lo_v), as_t(hi_v)
    return torch.clamp(x, lo_v, hi_v)


def _hardsigmoid(c: Op, x):
    return torch.clamp(x * c.attr("alpha", 0.2) + c.attr("beta", 0.5), 0.0, 1.0)


def _gelu(c: Op, x):
    return F.gelu(x, approximate=c.attr("approximate", "none"))


def _leaky_relu(c: Op, x):
    return F.leaky_relu(x, c.attr("alpha", 0.01))


def _elu(c: Op, x):
    return F.elu(x, c.attr("alpha", 1.0))


def _prelu(c: Op, x, slope):
    if slope.numel() == 1 or (
        x.dim() >= 2
        and slope.dim() == x.dim() - 1
        and slope.shape[0] == x.shape[1]
        and slope.numel() == x.shape[1]
    ):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x < 0, x * slope, x)


def _dropout(c: Op, x, ratio=None, training=None):
    """ONNX Dropout: the identity, unless training_mode (opset 12+) is true: then a new random
    mask each call, y = x · mask / (1 − ratio), as ONNX Runtime draws it."""
    if c.scalar(2, training):  # None when the input is absent
        p = c.scalar(1, ratio)
        p = 0.5 if p is None else float(p)
        keep = torch.rand(x.shape, device=x.device) >= p
        y = x * keep / (1 - p) if p < 1 else torch.zeros_like(x)
        return y if c.nout == 1 else (y, keep)
    if c.nout == 1:
        return x
    if not c.used[1]:
        return x, None
    dt = torch_dtype(c.out_dtypes[1]) if c.out_dtypes[1] is not None else torch.bool
    return x, torch.ones(x.shape, dtype=dt, device=x.device)


def _identity(c: Op, x, *_):
    return x


def _cast(c: Op, x):
    to = c.attr("to")
    if to not in ONNX_TO_TORCH_DTYPE:
        raise c.fail(f"Cast to ONNX type {to} is not supported")
    return x.to(ONNX_TO_TORCH_DTYPE[to])


def _cast_like(c: Op, x, like):
    return x.to(like.dtype)


def _where(c: Op, cond, a, b):
    return torch.where(cond, a, b)


def _isinf(c: Op, x):
    neg, pos = c.attr("detect_negative", 1), c.attr("detect_positive", 1)
    if neg and pos:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


def _selu(c: Op, x):
    alpha, gamma = c.attr("alpha", 1.67326319217681884765625), c.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _celu(c: Op, x):
    return F.celu(x, c.attr("alpha", 1.0))


def _thresholded_relu(c: Op, x):
    return torch.where(x > c.attr("alpha", 1.0), x, torch.zeros_like(x))


def _shrink(c: Op, x):
    lambd, bias = c.attr("lambd", 0.5), c.attr("bias", 0.0)
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))


def _swish(c: Op, x):
    return x * torch.sigmoid(c.attr("alpha", 1.0) * x)


def _bit_shift(c: Op, x, y):
    return x << y if c.attr("direction") == "LEFT" else x >> y


def _softsign(x):
    return x / (1 + x.abs())


def _check_cast(c: Op, node: Node):
    if c.attr("to") not in ONNX_TO_TORCH_DTYPE:
        raise c.fail(f"Cast to ONNX type {c.attr('to')} is not supported")


register("torch", "Relu", _unary(torch.relu))
register("torch", "Sigmoid", _unary(torch.sigmoid))
register("torch", "Tanh", _unary(torch.tanh))
register("torch", "Erf", _unary(torch.erf))
register("torch", "Exp", _unary(torch.exp))
register("torch", "Log", _unary(torch.log))
register("torch", "Neg", _unary(torch.neg))
register("torch", "Abs", _unary(torch.abs))
register("torch", "Sqrt", _unary(torch.sqrt))
register("torch", "Reciprocal", _unary(torch.reciprocal))
register("torch", "Floor", _unary(torch.floor))
register("torch", "Ceil", _unary(torch.ceil))
register("torch", "Not", _unary(torch.logical_not))
register("torch", "Sin", _unary(torch.sin))
register("torch", "Cos", _unary(torch.cos))
register("torch", "HardSwish", _unary(F.hardswish))
register("torch", "Softplus", _unary(F.softplus))
register("torch", "Mish", _unary(F.mish))
register("torch", "Clip", _clip)
register("torch", "HardSigmoid", _hardsigmoid)
register("torch", "Gelu", _gelu)
register("torch", "LeakyRelu", _leaky_relu)
register("torch", "Elu", _elu)
register("torch", "PRelu", _prelu)
register("torch", "Identity", _identity)
register("torch", "Dropout", _dropout)
register("torch", "Cast", _cast)
register("torch", "CastLike", _cast_like)
register("torch", "Add", _binary(torch.add))
register("torch", "Sub", _binary(torch.sub))
register("torch", "Mul", _binary(torch.mul))
register("torch", "Div", _div)
register("torch", "Pow", _pow)
register("torch", "Mod", _mod)
register("torch", "Equal", _binary(torch.eq))
register("torch", "Less", _binary(torch.lt))
register("torch", "Greater", _binary(torch.gt))
register("torch", "And", _binary(torch.logical_and))
register("torch", "Or", _binary(torch.logical_or))
register("torch", "Where", _where)
register("torch", "Sum", _variadic(torch.add))
register("torch", "Mean", _variadic(torch.add, mean=True))
register("torch", "Max", _variadic(torch.maximum))
register("torch", "Min", _variadic(torch.minimum))
for _op, _fn in {
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Sign": torch.sign,
    "Round": torch.round,  # half to even, as ONNX
    "IsNaN": torch.isnan,
    "Softsign": _softsign,
    "BitwiseNot": torch.bitwise_not,
}.items():
    register("torch", _op, _unary(_fn))
for _op, _fn in {
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}.items():
    register("torch", _op, _binary(_fn))
register("torch", "IsInf", _isinf)
register("torch", "Selu", _selu)
register("torch", "Celu", _celu)
register("torch", "ThresholdedRelu", _thresholded_relu)
register("torch", "Shrink", _shrink)
register("torch", "Swish", _swish)
register("torch", "BitShift", _bit_shift)
register("torch.check", "Cast", _check_cast)
