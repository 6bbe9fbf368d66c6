"""Torch implementations of data movement: reshapes, transposes, concat/split, slicing, padding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fuser.ir import Node
from fuser.ir.ops import register

from .context import (
    Op,
    prod,
    torch_pads,
)


def _reshape(c: Op, x, shape=None):
    target = c.ints(1, shape) if c.opset >= 5 else list(c.attr("shape"))
    if not c.attr("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _flatten(c: Op, x):
    axis = c.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(prod(x.shape[:axis]), prod(x.shape[axis:]))


def _transpose(c: Op, x):
    perm = c.attr("perm")
    return x.permute(list(perm) if perm else list(range(x.dim() - 1, -1, -1)))


def _squeeze(c: Op, x, axes=None):
    ax = c.attr("axes") if c.opset < 13 else c.ints(1, axes)
    if not ax:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in ax))


def _unsqueeze(c: Op, x, axes=None):
    ax = c.attr("axes") if c.opset < 13 else c.ints(1, axes)
    rank = x.dim() + len(ax)
    for a in sorted(a % rank for a in ax):
        x = x.unsqueeze(a)
    return x


def _concat(c: Op, *xs):
    return torch.cat([x for x in xs if x is not None], dim=c.attr("axis"))


def _split(c: Op, x, split=None):
    axis = c.attr("axis", 0) % x.dim()
    sizes = c.attr("split") if c.opset < 13 else c.ints(1, split)
    if not sizes:
        dim, n = x.shape[axis], c.nout
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    return torch.split(x, list(sizes), dim=axis)


def _slice(c: Op, x, starts=None, ends=None, axes=None, steps=None):
    if c.opset < 10:
        st, en, ax, sp = c.attr("starts"), c.attr("ends"), c.attr("axes"), None
    else:
        st, en, ax, sp = c.ints(1, starts), c.ints(2, ends), c.ints(3, axes), c.ints(4, steps)
    rank = x.dim()
    ax = list(ax) if ax else list(range(len(st)))
    sp = list(sp) if sp else [1] * len(st)
    index = [slice(None)] * rank
    flips = []
    for s, e, a, k in zip(st, en, ax, sp):
        a %= rank
        dim = x.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if k > 0:
            index[a] = slice(min(max(s, 0), dim), min(max(e, 0), dim), k)
        elif k < 0:  # walk the flipped axis forward
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            flips.append(a)
            index[a] = slice(dim - 1 - s, max(dim - 1 - e, 0), -k)
        else:
            raise c.fail("Slice step 0")
    if flips:
        x = x.flip(flips)
    return x[tuple(index)]


def _pad_index(mode: str, dim: int, b: int, e: int) -> np.ndarray:
    i = np.arange(-b, dim + e)
    if mode == "edge":
        return np.clip(i, 0, dim - 1)
    if mode == "wrap":
        return i % dim
    if dim == 1:
        return np.zeros_like(i)
    period = 2 * (dim - 1)
    i = np.abs(i) % period
    return np.where(i >= dim, period - i, i)


def _pad(c: Op, x, pads=None, value=None, axes=None):
    mode = c.attr("mode", "constant")
    if c.opset < 11:
        p = list(c.attr("pads", c.attr("paddings")))
        val, ax = c.attr("value", 0.0), None
    else:
        p = c.ints(1, pads)
        val = c.scalar(2, value) if len(c.consts) > 2 else None
        ax = c.ints(3, axes) if len(c.consts) > 3 else None
    rank = x.dim()
    ax = [a % rank for a in ax] if ax else list(range(rank))
    n = len(ax)
    begin = {a: p[i] for i, a in enumerate(ax)}
    end = {a: p[n + i] for i, a in enumerate(ax)}
    if mode == "constant":
        tp = torch_pads([begin.get(a, 0) for a in range(rank)], [end.get(a, 0) for a in range(rank)])
        return F.pad(x, tp, value=0 if val is None else val)
    if mode not in ("reflect", "edge", "wrap"):
        raise c.fail(f"Pad mode '{mode}' is not supported")
    for a in ax:
        if begin[a] or end[a]:
            idx = torch.from_numpy(_pad_index(mode, x.shape[a], begin[a], end[a])).to(x.device)
            x = x.index_select(a, idx)
    return x


def _gather(c: Op, x, idx):
    axis = c.attr("axis", 0) % x.dim()
    ci = c.const(1)
    if ci is not None and ci.ndim == 0:
        return x.select(axis, int(ci))
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    y = x.index_select(axis, idx.reshape(-1))
    return y.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))


def _expand(c: Op, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(c.ints(1, shape))))


def _tile(c: Op, x, repeats):
    return x.repeat(c.ints(1, repeats))


def _depth_to_space(c: Op, x):
    bs = c.attr("blocksize")
    n, ch, h, w = x.shape
    if c.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, bs, bs, ch // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, ch // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, ch // (bs * bs), h * bs, w * bs)


def _space_to_depth(c: Op, x):
    bs = c.attr("blocksize")
    n, ch, h, w = x.shape
    y = x.reshape(n, ch, h // bs, bs, w // bs, bs)
    # DCR: blocks outermost; CRD: channels outermost (the inverse of DepthToSpace's CRD)
    y = y.permute(0, 3, 5, 1, 2, 4) if c.attr("mode", "DCR") == "DCR" else y.permute(0, 1, 3, 5, 2, 4)
    return y.reshape(n, ch * bs * bs, h // bs, w // bs)


def _check_pad(c: Op, node: Node):
    if c.attr("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        raise c.fail(f"Pad mode '{c.attr('mode')}' is not supported")


def _check_depth_space(c: Op, node: Node):
    if c.attr("mode", "DCR") not in ("DCR", "CRD"):
        raise c.fail(f"mode '{c.attr('mode')}' is not supported")
    if node.inputs[0].shape is not None and len(node.inputs[0].shape) != 4:
        raise c.fail("only 4-d inputs are supported")


register("torch", "Reshape", _reshape)
register("torch", "Flatten", _flatten)
register("torch", "Transpose", _transpose)
register("torch", "Squeeze", _squeeze)
register("torch", "Unsqueeze", _unsqueeze)
register("torch", "Concat", _concat)
register("torch", "Split", _split)
register("torch", "Slice", _slice)
register("torch", "Gather", _gather)
register("torch", "Expand", _expand)
register("torch", "Tile", _tile)
register("torch", "Pad", _pad)
register("torch", "DepthToSpace", _depth_to_space)
register("torch", "SpaceToDepth", _space_to_depth)
register("torch.check", "Pad", _check_pad)
register("torch.check", "DepthToSpace", _check_depth_space)
register("torch.check", "SpaceToDepth", _check_depth_space)
