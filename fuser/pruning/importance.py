"""Channel importance: one score per channel of a group; low scores go first.

Criteria (all deterministic; float64 throughout):
  - ``l1`` / ``l2``: magnitude, as Torch-Pruning's MagnitudeImportance. Each member of the
    group that is a layer's weight on its output axis ('out'), input axis ('in') or a norm's
    scale ('scale') gives, per channel, the sum of |w|^p over the channel's slice (over all
    its positions, e.g. every feature a flattened channel becomes). Biases, BN statistics
    and constant operands do not vote.
  - ``taylor``: first-order Taylor, |w·∂L/∂w| summed the same way, with gradients from the
    graph's torch module (``fuser.backends.torch``) on the data the caller gives:
    cross-entropy when targets are given, else half the output's squared norm.
  - ``obs``: data-free reconstruction damage, see ``fuser.pruning.obs``.
Per-member scores are reduced over the members that hold the channel (``mean``, ``sum``,
``max``, ``prod`` or ``first``), then normalized within the group (``mean``: divide by the
mean, ``max``, ``sum``, ``standardization``: to [0, 1], ``gaussian``: zero mean unit std, or
None), which only matters for global pruning, where groups are ranked together.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fuser.ir import FuserError, Graph

from .deps import ChannelGroup, DependencyAnalysis, Member

CRITERIA = ("l1", "l2", "taylor", "obs")
REDUCTIONS = ("mean", "sum", "max", "prod", "first")
NORMALIZERS = ("mean", "max", "sum", "standardization", "gaussian", None)
VOTING_ROLES = ("out", "in", "scale")


def channel_index(analysis: DependencyAnalysis, group: ChannelGroup, member: Member) -> np.ndarray:
    """For each position along the member's axis: its channel's index in ``group``, or -1."""
    lookup = {int(r): k for k, r in enumerate(group.channels)}
    roots = analysis.root_of[member.ids]
    return np.array([lookup.get(int(r), -1) for r in roots], dtype=np.int64)


def position_scores(member: Member, weight_score: np.ndarray) -> np.ndarray:
    """Sum of ``weight_score`` (an array shaped like the member's constant) per position."""
    moved = np.moveaxis(weight_score, member.axis, 0)
    return moved.reshape(moved.shape[0], -1).sum(axis=1)


def per_channel(
    analysis: DependencyAnalysis, group: ChannelGroup, member: Member, scores: np.ndarray
) -> np.ndarray:
    """Position scores summed per channel of ``group``; NaN where the member lacks it."""
    idx = channel_index(analysis, group, member)
    inside = idx >= 0
    total = np.bincount(idx[inside], scores[inside], minlength=group.size).astype(np.float64)
    present = np.bincount(idx[inside], minlength=group.size) > 0
    total[~present] = np.nan
    return total


def reduce_members(rows: list[np.ndarray], size: int, how: str) -> np.ndarray:
    if not rows:
        return np.zeros(size)
    stack = np.vstack(rows)
    with warnings.catch_warnings():  # all-NaN columns (a channel no member holds) give 0
        warnings.simplefilter("ignore", RuntimeWarning)
        if how == "mean":
            out = np.nanmean(stack, axis=0)
        elif how == "sum":
            out = np.nansum(stack, axis=0)
        elif how == "max":
            out = np.nanmax(stack, axis=0)
        elif how == "prod":
            out = np.nanprod(stack, axis=0)
        elif how == "first":
            out = stack[0]
        else:
            raise FuserError(f"group reduction '{how}': choose one of {', '.join(REDUCTIONS)}")
    return np.nan_to_num(out, nan=0.0)


def normalize(scores: np.ndarray, how: str | None) -> np.ndarray:
    if how is None or scores.size == 0:
        return scores
    if how == "mean":
        d = scores.mean()
    elif how == "max":
        d = scores.max()
    elif how == "sum":
        d = scores.sum()
    elif how == "standardization":
        lo, hi = scores.min(), scores.max()
        return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
    elif how == "gaussian":
        sd = scores.std()
        return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)
    else:
        raise FuserError(f"normalizer '{how}': choose one of {', '.join(str(n) for n in NORMALIZERS)}")
    return scores / d if d > 0 else scores


def weight_votes(
    analysis: DependencyAnalysis, group: ChannelGroup, score_of: Callable[[Member], np.ndarray | None]
) -> list[np.ndarray]:
    """Per-channel scores of every voting member; ``score_of`` gives per-weight scores."""
    rows, seen = [], set()
    for m in group.members:
        key = (id(m.node), m.index, m.axis)
        if m.role not in VOTING_ROLES or key in seen:
            continue
        seen.add(key)
        w = score_of(m)
        if w is not None:
            rows.append(per_channel(analysis, group, m, position_scores(m, w)))
    return rows


def magnitude(analysis: DependencyAnalysis, group: ChannelGroup, p: int) -> list[np.ndarray]:
    return weight_votes(analysis, group, lambda m: np.abs(m.value.const.astype(np.float64)) ** p)


def taylor(
    analysis: DependencyAnalysis, group: ChannelGroup, grads: dict[int, np.ndarray]
) -> list[np.ndarray]:
    def score(m: Member):
        g = grads.get(id(m.value))
        return None if g is None else np.abs(m.value.const.astype(np.float64) * g)

    return weight_votes(analysis, group, score)


def group_scores(
    analysis: DependencyAnalysis,
    criterion: str,
    *,
    reduction: str = "mean",
    normalizer: str | None = "mean",
    grads: dict[int, np.ndarray] | None = None,
    saliency: dict[int, np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """Importance per channel, for every prunable group (keyed by group index)."""
    out = {}
    for g in analysis.prunable_groups:
        if criterion in ("l1", "l2"):
            rows = magnitude(analysis, g, 1 if criterion == "l1" else 2)
        elif criterion == "taylor":
            rows = taylor(analysis, g, grads or {})
        elif criterion == "obs":
            rows = [saliency[g.index]] if saliency and g.index in saliency else magnitude(analysis, g, 2)
        else:
            raise FuserError(f"criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
        out[g.index] = normalize(reduce_members(rows, g.size, reduction), normalizer)
    return out


# ---- gradients for Taylor ---------------------------------------------------------------
def _batches(data: Any, graph: Graph) -> Iterable[tuple[np.ndarray, np.ndarray | None]]:
    """(inputs, targets) chunks of the graph's batch size from ``data``.

    ``data``: an array of inputs, an (inputs, targets) pair of arrays, or an iterable of
    either; torch tensors are accepted.
    """
    batch = graph.inputs[0].shape[0]

    def as_np(a):
        return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)

    def chunks(x, y):
        x = as_np(x)
        y = None if y is None else as_np(y)
        if x.shape[1:] != tuple(graph.inputs[0].shape[1:]):
            raise FuserError(
                f"taylor data: inputs of shape {list(x.shape)} do not match the "
                f"graph input {list(graph.inputs[0].shape)}"
            )
        for s in range(0, len(x) - batch + 1, batch):
            yield x[s : s + batch], (None if y is None else y[s : s + batch])

    if isinstance(data, tuple) and len(data) == 2 and not np.isscalar(data[0]):
        yield from chunks(*data)
        return
    if hasattr(data, "shape"):
        yield from chunks(data, None)
        return
    for item in data:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            yield from chunks(*item)
        else:
            yield from chunks(item, None)


def taylor_gradients(graph: Graph, data: Any, loss: Callable | None = None) -> dict[int, np.ndarray]:
    """∂L/∂w summed over ``data`` for every float constant of ``graph``; keyed by id(Value)."""
    import torch
    import torch.nn.functional as F

    from fuser.backends.torch import to_torch

    from .finetune import parameters_of

    if len(graph.inputs) != 1:
        raise FuserError(f"{graph.source}: taylor importance needs a single-input graph")
    module = to_torch(graph)
    by_value = parameters_of(graph, module)
    module.train(False)
    seen = 0
    for x, y in _batches(data, graph):
        out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=graph.inputs[0].dtype)))
        out = out[0] if isinstance(out, tuple) else out
        if loss is not None:
            value = loss(out, None if y is None else torch.as_tensor(y))
        elif y is not None:
            value = F.cross_entropy(out.reshape(out.shape[0], -1), torch.as_tensor(y).long())
        else:
            value = 0.5 * out.pow(2).sum()
        value.backward()
        seen += 1
    if not seen:
        raise FuserError(f"taylor: no batch of {graph.inputs[0].shape[0]} sample(s) in the data")
    return {k: p.grad.detach().double().numpy() for k, p in by_value.items() if p.grad is not None}
