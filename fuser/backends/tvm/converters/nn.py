"""Relax converters for convolution, matmul, normalisation, pooling and reductions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fuser.ir.ops import implements, register

from ..common import R, relax
from .context import Lowering, channel_bias, spatial_pads


@implements("relax", "Conv")
def _conv(c: Lowering, x, w, b=None):
    rank = c.rank
    n = rank - 2
    wshape = c.node.input(1).shape
    kernel = c.attr("kernel_shape", list(wshape[2:]))
    strides = c.attr("strides", [1] * n)
    dil = c.attr("dilations", [1] * n)
    pads = spatial_pads(c, c.node.input(0).shape[2:], kernel, strides, dil)
    group = c.attr("group", 1)
    if n == 2:
        y = R.nn.conv2d(x, w, strides, pads, dil, group)
    elif n == 1:
        y = R.nn.conv1d(x, w, strides, pads, dil, group)
    else:
        raise c.fail(f"{n}-d convolution is not supported")
    return channel_bias(y, b, rank) if b is not None else y


@implements("relax", "ConvTranspose")
def _conv_transpose(c: Lowering, x, w, b=None):
    n = c.rank - 2
    if n != 2:
        raise c.fail(f"{n}-d transposed convolution is not supported")
    if c.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "") or c.attr("output_shape"):
        raise c.fail("auto_pad/output_shape are not supported; give explicit pads")
    strides = c.attr("strides", [1] * n)
    pads, output_padding = c.attr("pads", [0] * 2 * n), c.attr("output_padding", [0] * n)
    dilations, group = c.attr("dilations", [1] * n), c.attr("group", 1)
    kernel = [int(d) for d in c.node.input(1).shape[2:]]
    if (
        list(strides) == kernel
        and not any(pads)
        and not any(output_padding)
        and set(dilations) == {1}
        and group == 1
    ):
        y = _upsampling_conv(c, x, w, kernel)
    else:
        y = R.nn.conv2d_transpose(x, w, strides, pads, output_padding, dilations, group)
    return channel_bias(y, b, c.rank) if b is not None else y


def _upsampling_conv(c: Lowering, x, w, kernel: list[int]):
    """A transposed conv whose stride is its kernel (no overlap: the 2x2 stride-2 up-convs of
    U-Nets and of PaddleOCR's DB head) as a 1x1 conv to C_out x kh x kw channels, then each
    channel group spread over its kh x kw output pixels (depth to space): the 1x1 conv runs
    on the blocked default schedule. TVM's conv2d_transpose dilates the input with zeros and
    kept NCHW: PP-OCRv4's detector at 640x640 spent 529 ms of 603 in its two (1 GFLOP/s)."""
    n, c_in, h, wd = (int(d) for d in c.node.input(0).shape)
    c_out = int(c.node.input(1).shape[1])
    kh, kw = kernel
    # W[ci, co, i, j] -> W'[(co, i, j), ci, 1, 1]
    w1x1 = R.reshape(R.permute_dims(w, [1, 2, 3, 0]), [c_out * kh * kw, c_in, 1, 1])
    y = R.nn.conv2d(x, w1x1, [1, 1], [0, 0, 0, 0], [1, 1], 1)
    y = R.reshape(y, [n, c_out, kh, kw, h, wd])
    return R.reshape(R.permute_dims(y, [0, 1, 4, 2, 5, 3]), [n, c_out, h * kh, wd * kw])


@implements("relax", "Gemm")
def _gemm(c: Lowering, a, b, cc=None):
    if c.attr("transA", 0):
        a = R.permute_dims(a, [1, 0])
    if c.attr("transB", 0):
        b = R.permute_dims(b, [1, 0])
    y = R.matmul(a, b)
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if alpha != 1.0:
        y = R.multiply(y, relax.const(alpha, c.dtype))
    if cc is not None and beta != 0.0:
        y = R.add(y, cc if beta == 1.0 else R.multiply(cc, relax.const(beta, c.dtype)))
    return y


@implements("relax", "MatMul")
def _matmul(c: Lowering, a, b):
    a_shape, b_shape = (list(c.node.input(i).shape or ()) for i in (0, 1))
    batch = int(np.prod(a_shape[:-2], dtype=np.int64)) if len(a_shape) > 2 else 1
    if batch > 1 and len(b_shape) == 2 and all(isinstance(d, int) for d in a_shape):
        # a token map (N, H, W, C) times one weight: one (N*H*W, C) matmul. As a batch of
        # N*H rows of W tokens, each row streamed all of B: ConvNeXt-T's last stage (7 x 7
        # tokens, 9.4 MB of weights) ran its MLP at 37 GFLOP/s, 190 as one matmul
        rows = int(np.prod(a_shape[:-1], dtype=np.int64))
        y = R.matmul(R.reshape(a, [rows, a_shape[-1]]), b)
        return R.reshape(y, [*a_shape[:-1], int(b_shape[1])])
    return R.matmul(a, b)


@implements("relax", "MaxPool", "AveragePool")
def _pool(c: Lowering, x):
    n = c.rank - 2
    if n != 2:
        raise c.fail(f"{n}-d pooling is not supported")
    kernel = c.attr("kernel_shape")
    strides = c.attr("strides", [1] * n)
    dil = c.attr("dilations", [1] * n)
    pads = spatial_pads(c, c.node.input(0).shape[2:], kernel, strides, dil)
    ceil = bool(c.attr("ceil_mode", 0))
    if c.node.op == "MaxPool":
        if len(c.node.outputs) > 1 and c.node.outputs[1].uses:
            raise c.fail("MaxPool indices output is not supported")
        return R.nn.max_pool2d(x, kernel, strides, pads, dil, ceil)
    return R.nn.avg_pool2d(x, kernel, strides, pads, dil, ceil, bool(c.attr("count_include_pad", 0)))


@implements("relax", "GlobalAveragePool")
def _global_avgpool(c: Lowering, x):
    return R.mean(x, list(range(2, c.rank)), keepdims=True)


@implements("relax", "Softmax")
def _softmax(c: Lowering, x):
    if c.opset >= 13:
        rank = len(c.node.input(0).shape)
        axis = c.attr("axis", -1) % max(rank, 1)
        if axis == rank - 1:
            return R.nn.softmax(x, -1)
        # over an inner axis (YOLOv8's DFL: 16 bins of each box side): moved last and back.
        # dlight's CPU reduction rule fuses the leading spatial loops of the output, which
        # are not the reduction's, and recomputed it 16x (YOLOv8n 224: 1.08 ms of 6.8)
        perm = [i for i in range(rank) if i != axis] + [axis]
        back = [perm.index(i) for i in range(rank)]
        return R.permute_dims(R.nn.softmax(R.permute_dims(x, perm), -1), back)
    # opset < 13: one softmax over all axes from ``axis`` (default 1) on, the input
    # seen as 2-D
    shape = list(c.node.input(0).shape)
    axis = c.attr("axis", 1) % max(len(shape), 1)
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    flat = R.nn.softmax(R.reshape(x, [rows, int(np.prod(shape[axis:], dtype=np.int64))]), 1)
    return R.reshape(flat, shape)


@implements("relax", "LRN")
def _lrn(c: Lowering, x):
    """y = x / (bias + alpha/size * sum of x^2 over a window of ``size`` channels)^beta.
    The window sum is an average pool over the channel axis (zero padding counted), so
    alpha/size * sum = alpha * mean."""
    size = int(c.attr("size"))
    alpha, beta, bias = (float(c.attr(k, d)) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    shape = [int(d) for d in c.node.input(0).shape]
    if len(shape) < 3:
        raise c.fail(f"{len(shape)}-d LRN is not supported")
    rest = int(np.prod(shape[2:], dtype=np.int64))
    sq = R.reshape(R.multiply(x, x), [shape[0], 1, shape[1], rest])
    lo, hi = (size - 1) // 2, size // 2  # floor and ceil of (size - 1) / 2
    mean = R.nn.avg_pool2d(sq, (size, 1), (1, 1), (lo, 0, hi, 0), count_include_pad=True)
    scale = R.add(R.multiply(R.reshape(mean, shape), relax.const(alpha, c.dtype)), relax.const(bias, c.dtype))
    return R.divide(x, R.power(scale, relax.const(beta, c.dtype)))


@implements("relax", "LayerNormalization")
def _layernorm(c: Lowering, x, scale, bias=None):
    axis = c.attr("axis", -1) % c.rank
    if bias is None:
        # zeros computed from scale, not an array: a plan group's primitive function may
        # not hold tensor constants (and TVM 0.27's center=False gives wrong results)
        bias = c.bb.emit(R.multiply(scale, relax.const(0.0, c.dtype)))
    axes, eps = list(range(axis, c.rank)), float(c.attr("epsilon", 1e-5))
    if c.dtype in ("float32", "float16"):
        return R.nn.layer_norm(x, scale, bias, axes, eps)
    # TVM's layer_norm takes float32 and float16 only: the same formula in plain ops
    centered = R.subtract(x, R.mean(x, axes, keepdims=True))
    var = R.mean(R.multiply(centered, centered), axes, keepdims=True)
    normed = R.divide(centered, R.sqrt(R.add(var, relax.const(eps, c.dtype))))
    return R.add(R.multiply(normed, scale), bias)


@implements("relax", "BatchNormalization")
def _batchnorm(c: Lowering, x, scale, bias, mean, var, *_):
    """Inference BatchNormalization left after folding (no conv before it). Written with
    ops, not folded arrays: a plan group's function may not hold tensor constants, and
    outside groups FoldConstant pre-computes the weight-only part anyway."""
    shape = [1, int(c.node.input(0).shape[1])] + [1] * (c.rank - 2)
    eps = relax.const(float(c.attr("epsilon", 1e-5)), c.dtype)
    inv_std = R.divide(scale, R.sqrt(R.add(var, eps)))
    return R.add(
        R.multiply(R.subtract(x, R.reshape(mean, shape)), R.reshape(inv_std, shape)), R.reshape(bias, shape)
    )


def _reduce(fn: Callable) -> Callable:
    def lower(c: Lowering, x, axes_in=None):
        axes = c.attr("axes")
        if axes is None and c.node.input(1) is not None:
            axes = c.ints(1)
        if not axes:
            if c.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(c.rank))
        return fn(x, [a % c.rank for a in axes], bool(c.attr("keepdims", 1)))

    return lower


def _extreme(fn: Callable, infinity: float) -> Callable:
    """ReduceMax/ReduceMin on floats. TVM starts these reductions from the largest finite value
    (-3.4e38 for max), not from the infinity, so a row of only -inf gives -3.4e38 for max (and
    masked attention's `Equal(ReduceMax(bias), -inf)` then never sees a fully masked row). Rows
    whose elements are all that infinity, and empty rows, get the infinity, as in ONNX."""

    def reduce(x, axes: list[int], keepdims: bool):
        dtype = str(x.ty.dtype)
        if dtype == "bool":  # max is any, min is all; TVM has no bool max/min
            hits = R.sum(R.astype(x if infinity < 0 else R.logical_not(x), "int32"), axes, keepdims)
            found = R.greater(hits, relax.const(0, "int32"))
            return found if infinity < 0 else R.logical_not(found)
        if not dtype.startswith(("float", "bfloat")):
            return fn(x, axes, keepdims)
        inf = relax.const(infinity, dtype)
        others = R.sum(R.astype(R.not_equal(x, inf), "int32"), axes, keepdims)
        found = fn(x, axes, keepdims)
        # the fill is computed from data: FoldConstant would make a data-free one a tensor
        # constant, which a plan group's primitive function may not hold
        fill = R.add(R.multiply(found, relax.const(0, dtype)), inf)
        return R.where(R.greater(others, relax.const(0, "int32")), found, fill)

    return reduce


if R is not None:
    for _op, _fn in {
        "ReduceMean": R.mean,
        "ReduceSum": R.sum,
        "ReduceMax": _extreme(R.max, -np.inf),
        "ReduceMin": _extreme(R.min, np.inf),
    }.items():
        register("relax", _op, _reduce(_fn))
