"""Torch implementations of convolution, matmul, normalisation and pooling."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from fuser.ir import Node
from fuser.ir.ops import register

from .context import (
    Op,
    bcast_view,
    cached,
    explicit_pads,
    prod,
    torch_pads,
)

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(c: Op, x, w, b=None):
    n = w.dim() - 2
    if n not in _CONV:
        raise c.fail(f"{n}-d convolution is not supported")
    s = list(c.attr("strides") or [1] * n)
    d = list(c.attr("dilations") or [1] * n)
    k_eff = [(k - 1) * dd + 1 for k, dd in zip(w.shape[2:], d)]
    pb, pe = explicit_pads(c, x.shape[2:], k_eff, s)
    if pb != pe:
        x = F.pad(x, torch_pads(pb, pe))
        pb = [0] * n
    return _CONV[n](x, w, b, s, pb, d, c.attr("group", 1))


def _conv_transpose(c: Op, x, w, b=None):
    n = w.dim() - 2
    if n not in _CONVT:
        raise c.fail(f"{n}-d transposed convolution is not supported")
    s = list(c.attr("strides") or [1] * n)
    d = list(c.attr("dilations") or [1] * n)
    op = list(c.attr("output_padding") or [0] * n)
    g = c.attr("group", 1)
    in_sp = x.shape[2:]
    full = [st * (i - 1) + o + (k - 1) * dd + 1 for st, i, o, k, dd in zip(s, in_sp, op, w.shape[2:], d)]
    auto = c.attr("auto_pad", "NOTSET") or "NOTSET"
    out_shape = c.attr("output_shape")
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-n:] if out_shape else [i * st for i, st in zip(in_sp, s)]
        totals = [f - t for f, t in zip(full, target)]
        pb = [t // 2 for t in totals] if auto == "SAME_UPPER" else [t - t // 2 for t in totals]
        pe = [t - p for t, p in zip(totals, pb)]
    elif auto == "VALID":
        pb, pe = [0] * n, [0] * n
    else:
        pads = list(c.attr("pads") or [0] * (2 * n))
        pb, pe = pads[:n], pads[n:]
    if pb == pe and all(p >= 0 for p in pb) and all(o < max(st, dd) for o, st, dd in zip(op, s, d)):
        return _CONVT[n](x, w, b, s, pb, op, g, d)
    y = _CONVT[n](x, w, None, s, 0, 0, g, d)  # spatial size full - output_padding
    y = F.pad(y, torch_pads([-p for p in pb], [o - p for o, p in zip(op, pe)]))
    return y if b is None else y + bcast_view(b, 1, y.dim())


def _batchnorm(c: Op, x, scale, bias, mean, var, *_):
    eps = c.attr("epsilon", 1e-5)
    if c.attr("training_mode", 0):
        dims = [0] + list(range(2, x.dim()))
        bm, bv = x.mean(dims), x.var(dims, unbiased=False)
        y = F.batch_norm(x, bm, bv, scale, bias, False, 0.0, eps)
        m = c.attr("momentum", 0.9)
        return (y, mean * m + bm * (1 - m), var * m + bv * (1 - m))[: c.nout]
    if scale.dim() == 1 and mean.dim() == 1 and x.dim() >= 2:
        y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    else:  # opset < 9, spatial=0: per-activation statistics
        y = (x - mean) / torch.sqrt(var + eps) * scale + bias
    return y if c.nout == 1 else (y, mean, var, mean, var)[: c.nout]


def _layernorm(c: Op, x, scale, bias=None):
    axis = c.attr("axis", -1) % x.dim()
    eps = c.attr("epsilon", 1e-5)
    ns = tuple(x.shape[axis:])
    extra = c.nout > 1 and any(c.used[1:])
    if not extra and tuple(scale.shape) == ns and (bias is None or tuple(bias.shape) == ns):
        return (
            F.layer_norm(x, ns, scale, bias, eps)
            if c.nout == 1
            else (F.layer_norm(x, ns, scale, bias, eps), None, None)[: c.nout]
        )
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y if c.nout == 1 else (y, mean, inv)[: c.nout]


def _instancenorm(c: Op, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=c.attr("epsilon", 1e-5))


def _groupnorm(c: Op, x, scale, bias):
    groups = c.attr("num_groups")
    ch = x.shape[1]
    if scale.numel() != ch:  # opset 18: one scale/bias per group
        scale = scale.repeat_interleave(ch // groups)
        bias = bias.repeat_interleave(ch // groups)
    return F.group_norm(x, groups, scale, bias, c.attr("epsilon", 1e-5))


def _rms_norm(c: Op, x, scale):
    axis = c.attr("axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    xf = x.float() if c.attr("stash_type", 1) == 1 else x
    y = xf * torch.rsqrt(xf.square().mean(dims, keepdim=True) + c.attr("epsilon", 1e-5))
    return y.to(x.dtype) * scale


def _lp_norm(c: Op, x):
    axis = c.attr("axis", -1) % x.dim()
    norm = torch.linalg.vector_norm(x, c.attr("p", 2), dim=axis, keepdim=True)
    return x / torch.where(norm == 0, torch.ones_like(norm), norm)  # a zero vector stays zero


def _mean_variance_norm(c: Op, x):
    dims = tuple(a % x.dim() for a in c.attr("axes", [0, 2, 3]))
    mean = x.mean(dims, keepdim=True)
    std = torch.sqrt((x * x).mean(dims, keepdim=True) - mean * mean)
    return (x - mean) / (std + 1e-9)


def _global_lp_pool(c: Op, x):
    p = c.attr("p", 2)
    return x.abs().pow(p).sum(tuple(range(2, x.dim())), keepdim=True).pow(1.0 / p)


def _einsum(c: Op, *xs):
    return torch.einsum(c.attr("equation").replace(" ", ""), *xs)


def _det(c: Op, x):
    return torch.linalg.det(x)


def _lrn(c: Op, x):
    size = c.attr("size")
    alpha, beta, bias = c.attr("alpha", 1e-4), c.attr("beta", 0.75), c.attr("bias", 1.0)
    lo = (size - 1) // 2  # ONNX: channels [c - floor((size-1)/2), c + ceil((size-1)/2)]
    sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    avg = F.avg_pool2d(F.pad(sq, (0, 0, lo, size - 1 - lo)), (size, 1), stride=1)
    return x / (bias + alpha * avg.reshape(x.shape)) ** beta


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(c: Op, x):
    """(kernel, strides, dilations, pads_begin, pads_end, out_sizes, ceil) as ORT computes them."""
    n = x.dim() - 2
    k = list(c.attr("kernel_shape"))
    s = list(c.attr("strides") or [1] * n)
    d = list(c.attr("dilations") or [1] * n)
    ceil = bool(c.attr("ceil_mode", 0))
    in_sp = list(x.shape[2:])
    k_eff = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
    auto = c.attr("auto_pad", "NOTSET") or "NOTSET"
    pb, pe = explicit_pads(c, in_sp, k_eff, s)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // st) for i, st in zip(in_sp, s)]
    elif auto == "VALID":
        out = [(i - ke) // st + 1 for i, ke, st in zip(in_sp, k_eff, s)]
    else:
        out = [_pool_out(i, b, e, ke, st, ceil) for i, b, e, ke, st in zip(in_sp, pb, pe, k_eff, s)]
    return k, s, d, pb, pe, out, ceil


def _pool_out(size: int, pb: int, pe: int, k_eff: int, s: int, ceil: bool) -> int:
    num = size + pb + pe - k_eff
    out = (num + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + pb:  # the last window must start inside input or left pad
        out -= 1
    return out


def _torch_pool_ok(k, s, d, pb, pe, out, ceil, in_sp) -> bool:
    """Whether torch's own pooling (symmetric padding) yields exactly ``out``."""
    return (
        pb == pe
        and all(2 * p <= kk for p, kk in zip(pb, k))
        and out
        == [_pool_out(i, p, p, (kk - 1) * dd + 1, st, ceil) for i, p, kk, dd, st in zip(in_sp, pb, k, d, s)]
    )


def _fill_min(dtype: torch.dtype) -> float:
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


def _maxpool(c: Op, x):
    k, s, d, pb, pe, out, ceil = _pool_geometry(c, x)
    n = len(k)
    want_idx = c.nout > 1 and c.used[1]
    in_sp = list(x.shape[2:])
    if _torch_pool_ok(k, s, d, pb, pe, out, ceil, in_sp):
        res = _MAXPOOL[n](x, k, s, pb, d, ceil_mode=ceil, return_indices=want_idx)
        padded, pb_used = in_sp, [0] * n
    else:
        right = [
            (o - 1) * st + (kk - 1) * dd + 1 - i - b for o, st, kk, dd, i, b in zip(out, s, k, d, in_sp, pb)
        ]
        xp = F.pad(x, torch_pads(pb, right), value=_fill_min(x.dtype))
        res = _MAXPOOL[n](xp, k, s, 0, d, ceil_mode=False, return_indices=want_idx)
        padded, pb_used = list(xp.shape[2:]), pb
    if not want_idx:
        return res if c.nout == 1 else (res, None)
    y, idx = res
    return y, _onnx_pool_indices(idx, padded, pb_used, in_sp, c.attr("storage_order", 0))


def _onnx_pool_indices(idx, padded, pb, in_sp, storage_order):
    """torch's per-plane indices (into the padded plane) -> ONNX's flat indices into X."""
    coords, rem = [], idx
    for size in reversed(padded):
        coords.append(rem % size)
        rem = rem // size
    coords = [cc - p for cc, p in zip(reversed(coords), pb)]
    order = range(len(in_sp)) if not storage_order else reversed(range(len(in_sp)))
    flat = torch.zeros_like(idx)
    for i in order:
        flat = flat * in_sp[i] + coords[i]
    nc = idx.shape[0] * idx.shape[1]
    base = torch.arange(nc, device=idx.device).view(idx.shape[0], idx.shape[1], *[1] * len(in_sp))
    return flat + base * prod(in_sp)


def _window_sum(xp, k, s, d, out):
    """Sum over (dilated) pooling windows of an already padded tensor, by strided slices."""
    acc = None
    for offs in itertools.product(*[range(kk) for kk in k]):
        sl = (slice(None), slice(None)) + tuple(
            slice(o * dd, o * dd + (oo - 1) * st + 1, st) for o, dd, st, oo in zip(offs, d, s, out)
        )
        acc = xp[sl] if acc is None else acc + xp[sl]
    return acc


def _avgpool(c: Op, x):
    k, s, d, pb, pe, out, ceil = _pool_geometry(c, x)
    n = len(k)
    include = bool(c.attr("count_include_pad", 0))
    in_sp = list(x.shape[2:])
    if all(dd == 1 for dd in d) and _torch_pool_ok(k, s, d, pb, pe, out, ceil, in_sp):
        return _AVGPOOL[n](x, k, s, pb, ceil_mode=ceil, count_include_pad=include)
    right = [(o - 1) * st + (kk - 1) * dd + 1 - i - b for o, st, kk, dd, i, b in zip(out, s, k, d, in_sp, pb)]
    key = ("count", tuple(in_sp), x.device, x.dtype)
    if all(dd == 1 for dd in d):

        def wsum(t):
            return _AVGPOOL[n](t, k, s, 0) * prod(k)
    else:

        def wsum(t):
            return _window_sum(t, k, s, d, out)

    def divisor():  # how many elements each window divides by
        mask = torch.ones([1, 1] + in_sp, dtype=x.dtype, device=x.device)
        if include:  # explicit pads count, the ceil-mode overhang does not
            mask = F.pad(
                F.pad(mask, torch_pads(pb, pe), value=1.0),
                torch_pads([0] * n, [r - e for r, e in zip(right, pe)]),
            )
        else:
            mask = F.pad(mask, torch_pads(pb, right))
        return wsum(mask)

    return wsum(F.pad(x, torch_pads(pb, right))) / cached(c, key, divisor)


def _global_avgpool(c: Op, x):
    return x.mean(tuple(range(2, x.dim())), keepdim=True)


def _global_maxpool(c: Op, x):
    return x.amax(tuple(range(2, x.dim())), keepdim=True)


def _gemm(c: Op, a, b, cc=None):
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)
    if c.attr("transA", 0):
        a = a.t()
    if beta == 0:
        cc = None
    if (
        c.attr("transB", 0)
        and alpha == 1.0
        and (cc is None or (beta == 1.0 and cc.dim() == 1 and cc.shape[0] == b.shape[0]))
    ):
        return F.linear(a, b, cc)
    if c.attr("transB", 0):
        b = b.t()
    if cc is None:
        y = a @ b
        return y if alpha == 1.0 else y * alpha
    return torch.addmm(cc, a, b, beta=beta, alpha=alpha)


def _matmul(c: Op, a, b):
    return torch.matmul(a, b)


# Build-time checks: what an op cannot handle is refused before anything runs.
def _check_conv(c: Op, node: Node):
    w = node.input(1)
    if w is not None and w.shape is not None and len(w.shape) - 2 not in _CONV:
        raise c.fail(f"{len(w.shape) - 2}-d weights are not supported (1-d to 3-d are)")
    if (c.attr("auto_pad", "NOTSET") or "NOTSET") not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise c.fail(f"unknown auto_pad '{c.attr('auto_pad')}'")


def _check_pool(c: Op, node: Node):
    if len(c.attr("kernel_shape") or ()) not in _MAXPOOL:
        raise c.fail("kernel_shape must have 1 to 3 dims")
    _check_conv(c, node)


register("torch", "Conv", _conv)
register("torch", "ConvTranspose", _conv_transpose)
register("torch", "Gemm", _gemm)
register("torch", "MatMul", _matmul)
register("torch", "BatchNormalization", _batchnorm)
register("torch", "LayerNormalization", _layernorm)
register("torch", "InstanceNormalization", _instancenorm)
register("torch", "GroupNormalization", _groupnorm)
register("torch", "LRN", _lrn)
register("torch", "RMSNormalization", _rms_norm)
register("torch", "LpNormalization", _lp_norm)
register("torch", "MeanVarianceNormalization", _mean_variance_norm)
register("torch", "GlobalLpPool", _global_lp_pool)
register("torch", "Einsum", _einsum)
register("torch", "Det", _det)
register("torch", "MaxPool", _maxpool)
register("torch", "AveragePool", _avgpool)
register("torch", "GlobalAveragePool", _global_avgpool)
register("torch", "GlobalMaxPool", _global_maxpool)
register("torch.check", "Conv", _check_conv)
register("torch.check", "ConvTranspose", _check_conv)
register("torch.check", "MaxPool", _check_pool)
register("torch.check", "AveragePool", _check_pool)
