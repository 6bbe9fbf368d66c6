"""Torch implementations of indexing ops: gathers, scatters, TopK, Trilu, cumulative sums."""

from __future__ import annotations

import torch

from fuser.ir.ops import register

from .context import Op, prod

_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(idx: torch.Tensor, size) -> torch.Tensor:
    """Negative indices count from the end (ONNX)."""
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


def _gather_elements(c: Op, x, idx):
    axis = c.attr("axis", 0) % x.dim()
    return torch.gather(x, axis, _wrap(idx, x.shape[axis]))


def _gather_nd(c: Op, data, idx):
    b = c.attr("batch_dims", 0)
    k = idx.shape[-1]
    sizes = torch.tensor(data.shape[b : b + k], device=idx.device)
    idx = _wrap(idx, sizes)
    batch = prod(data.shape[:b])
    flat = data.reshape(batch, *data.shape[b:])
    rows = idx.reshape(batch, -1, k)
    lead = torch.arange(batch, device=idx.device).view(batch, 1).expand(batch, rows.shape[1])
    out = flat[(lead, *(rows[..., j] for j in range(k)))]
    return out.reshape(*idx.shape[:-1], *data.shape[b + k :])


def _scatter_elements(c: Op, data, idx, updates):
    axis = c.attr("axis", 0) % data.dim()
    idx = _wrap(idx, data.shape[axis])
    reduction = c.attr("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, idx, updates)
    return data.scatter_reduce(axis, idx, updates, _SCATTER_REDUCE[reduction], include_self=True)


def _scatter_nd(c: Op, data, idx, updates):
    k = idx.shape[-1]
    sizes = torch.tensor(data.shape[:k], device=idx.device)
    rows = _wrap(idx, sizes).reshape(-1, k)
    upd = updates.reshape(rows.shape[0], *data.shape[k:])
    out = data.clone()
    reduction = c.attr("reduction", "none")
    if reduction == "none":
        out[tuple(rows[:, j] for j in range(k))] = upd
        return out
    if reduction == "add":
        return out.index_put_(tuple(rows[:, j] for j in range(k)), upd, accumulate=True)
    combine = {"mul": torch.mul, "max": torch.maximum, "min": torch.minimum}[reduction]
    for i in range(rows.shape[0]):  # in order: repeated indices combine one after another
        at = tuple(rows[i].tolist())
        out[at] = combine(out[at], upd[i])
    return out


def _top_k(c: Op, x, k):
    axis = c.attr("axis", -1) % x.dim()
    count = c.ints(1, k)[0]
    # a stable sort keeps the lower index first among equal values, as ONNX wants
    values, indices = torch.sort(x, dim=axis, descending=bool(c.attr("largest", 1)), stable=True)
    return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)


def _trilu(c: Op, x, k=None):
    diagonal = c.scalar(1, k) if k is not None or c.const(1) is not None else 0
    return torch.triu(x, int(diagonal)) if c.attr("upper", 1) else torch.tril(x, int(diagonal))


def _cumulative(c: Op, x, axis_t):
    axis = c.ints(1, axis_t)[0] % x.dim()
    if c.attr("reverse", 0):
        x = x.flip(axis)
    if c.op == "CumSum":
        y = torch.cumsum(x, axis, dtype=x.dtype)
        first = torch.zeros_like(x.narrow(axis, 0, 1))
    else:
        y = torch.cumprod(x, axis, dtype=x.dtype)
        first = torch.ones_like(x.narrow(axis, 0, 1))
    if c.attr("exclusive", 0):
        y = torch.cat([first, y.narrow(axis, 0, x.shape[axis] - 1)], axis) if x.shape[axis] else y
    return y.flip(axis) if c.attr("reverse", 0) else y


register("torch", "GatherElements", _gather_elements)
register("torch", "GatherND", _gather_nd)
register("torch", "ScatterElements", _scatter_elements)
register("torch", "Scatter", _scatter_elements)
register("torch", "ScatterND", _scatter_nd)
register("torch", "TopK", _top_k)
register("torch", "Trilu", _trilu)
register("torch", "CumSum", _cumulative)
register("torch", "CumProd", _cumulative)
