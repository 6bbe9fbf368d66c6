"""Relax converters for elementwise ops (unary, binary, activations, casts)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fuser.ir.ops import implements, register

from ..common import R, relax
from .context import Lowering


def _unary(fn: Callable) -> Callable:
    return lambda c, x: fn(x)


def _binary(fn: Callable) -> Callable:
    return lambda c, a, b: fn(a, b)


@implements("relax", "Clip")
def _clip(c: Lowering, x, *_):
    if c.node.domain == "" and len(c.node.inputs) == 1 and "min" in c.node.attrs:
        lo, hi = c.attr("min"), c.attr("max")  # opset < 11
    else:
        lo, hi = c.scalar(1), c.scalar(2)
    big = float(np.finfo(np.float32).max)  # open bounds: clip needs numbers
    return R.clip(x, -big if lo is None else float(lo), big if hi is None else float(hi))


@implements("relax", "HardSigmoid")
def _hard_sigmoid(c: Lowering, x, alpha: float | None = None, beta: float | None = None):
    alpha = float(c.attr("alpha", 0.2)) if alpha is None else alpha
    beta = float(c.attr("beta", 0.5)) if beta is None else beta
    y = R.add(R.multiply(x, relax.const(alpha, c.dtype)), relax.const(beta, c.dtype))
    return R.clip(y, 0.0, 1.0)


@implements("relax", "HardSwish")
def _hard_swish(c: Lowering, x):
    return R.multiply(x, _hard_sigmoid(c, x, 1.0 / 6.0, 0.5))


@implements("relax", "Gelu")
def _gelu(c: Lowering, x):
    approx = c.attr("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return R.nn.gelu_tanh(x) if approx == "tanh" else R.nn.gelu(x)


@implements("relax", "LeakyRelu")
def _leaky_relu(c: Lowering, x):
    return R.nn.leakyrelu(x, float(c.attr("alpha", 0.01)))


@implements("relax", "PRelu")
def _prelu(c: Lowering, x, slope):
    # slope broadcasts to x (ONNX's unidirectional broadcast: (C, 1, 1) per channel). As
    # max(x, 0) + slope * min(x, 0), exact for either sign: a where() on a bool mask failed in
    # the blocked layout (ConvertLayout padded the bool mask's channels with a float 0.0)
    zero = relax.const(0.0, c.dtype)
    return R.add(R.maximum(x, zero), R.multiply(R.minimum(x, zero), slope))


@implements("relax", "Sum")
def _sum(c: Lowering, *xs):
    total = xs[0]
    for x in xs[1:]:
        total = R.add(total, x)
    return total


@implements("relax", "Reciprocal")
def _reciprocal(c: Lowering, x):
    return R.divide(relax.const(1.0, c.dtype), x)


@implements("relax", "Where")
def _where(c: Lowering, cond, a, b):
    return R.where(cond, a, b)


@implements("relax", "Cast")
def _cast(c: Lowering, x):
    return R.astype(x, str(c.node.output.dtype))


@implements("relax", "Identity")
def _identity(c: Lowering, x, *_):
    return x


@implements("relax", "Dropout")
def _dropout(c: Lowering, x, *_):
    training = c.node.input(2)
    if training is not None and (training.const is None or np.asarray(training.const).any()):
        raise c.fail(
            "training_mode is true (a new random mask each run), which a compiled inference "
            "build does not draw; export the model in eval mode"
        )
    return x


if R is not None:
    for _op, _fn in {
        "Add": R.add,
        "Sub": R.subtract,
        "Mul": R.multiply,
        "Div": R.divide,
        "Pow": R.power,
        "Max": R.maximum,
        "Min": R.minimum,
        "Equal": R.equal,
        "Less": R.less,
        "Greater": R.greater,
    }.items():
        register("relax", _op, _binary(_fn))
    for _op, _fn in {
        "Relu": R.nn.relu,
        "Sigmoid": R.sigmoid,
        "Tanh": R.tanh,
        "Erf": R.erf,
        "Exp": R.exp,
        "Log": R.log,
        "Sqrt": R.sqrt,
        "Neg": R.negative,
        "Abs": R.abs,
        "Floor": R.floor,
        "Ceil": R.ceil,
    }.items():
        register("relax", _op, _unary(_fn))
