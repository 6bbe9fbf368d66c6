"""Rewrite a graph once the channels to remove are chosen.

Given the dependency analysis and, per raw channel id, whether it is kept:
  - every Member (a constant input sliced along an axis) keeps the positions whose ids are
    kept; a constant used by several nodes with the same slicing stays one constant;
  - depthwise Conv/ConvTranspose: ``group`` := kept input channels;
  - Reshape: the shape constant gets the kept count on every labeled output axis (all
    dims explicit; shapes are static);
  - Split: sizes := kept positions per output; Slice (step 1): starts/ends := the kept
    positions before and inside the range; Gather: indices renumbered, removed ones dropped;
    Expand, Resize: the ``shape`` / ``sizes`` entries of labeled axes := kept counts;
then shapes are re-inferred and every graph output must keep its shape.
"""

from __future__ import annotations

import numpy as np

from fuser.ir import Graph, Node

from .deps import DependencyAnalysis, Member, slice_params


def _set_const(graph: Graph, node: Node, index: int, array: np.ndarray, tag: str) -> None:
    while len(node.inputs) <= index:
        node.add_input(None)
    node.set_input(index, graph.const(np.asarray(array), f"{node.name}_{tag}"))


class _Keep:
    """Kept-position masks of label arrays."""

    def __init__(self, kept_raw: np.ndarray):
        self.kept_raw = kept_raw

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return self.kept_raw[ids]

    def count(self, ids: np.ndarray) -> int:
        return int(self.kept_raw[ids].sum())


def slice_members(graph: Graph, members: list[Member], keep: _Keep) -> int:
    """Slice every member constant; returns how many constants changed."""
    by_input: dict[tuple[int, int], list[Member]] = {}
    for m in members:
        by_input.setdefault((id(m.node), m.index), []).append(m)
    cache: dict[tuple, object] = {}
    changed = 0
    for ms in by_input.values():
        node, index = ms[0].node, ms[0].index
        old = node.inputs[index]
        masks = {}
        for m in ms:
            mk = keep.mask(m.ids)
            masks[m.axis] = mk if m.axis not in masks else masks[m.axis] & mk
        if all(mk.all() for mk in masks.values()):
            continue
        key = (id(old),) + tuple((a, mk.tobytes()) for a, mk in sorted(masks.items()))
        if key not in cache:
            arr = old.const
            for a, mk in sorted(masks.items()):
                arr = np.compress(mk, arr, axis=a)
            cache[key] = graph.const(np.ascontiguousarray(arr), f"{old.name}_pruned")
        node.set_input(index, cache[key])
        changed += 1
    return changed


def rewrite_attributes(graph: Graph, analysis: DependencyAnalysis, keep: _Keep) -> None:
    blocked = {b.node for b in analysis.blocked}  # their channels are frozen: nothing to do
    for node in list(graph.nodes):
        fn = _REWRITES.get(node.op)
        if fn is not None and node.name not in blocked:
            fn(graph, analysis, keep, node)


def _depthwise_group(graph, analysis, keep, node):
    x = node.inputs[0]
    ids = analysis.labels_of(x).get(1)
    group = node.attr("group", 1)
    if ids is not None and group > 1 and group == x.shape[1]:
        node.attrs["group"] = keep.count(ids)


def _reshape(graph, analysis, keep, node):
    y = node.outputs[0]
    labels = analysis.labels_of(y)
    if not labels:
        return
    dims = list(y.shape)
    for a, ids in labels.items():
        dims[a] = keep.count(ids)
    if dims != list(y.shape):
        _set_const(graph, node, 1, np.array(dims, dtype=np.int64), "shape")


def _split(graph, analysis, keep, node):
    x = node.inputs[0]
    axis = node.attr("axis", 0) % len(x.shape)
    if axis not in analysis.labels_of(x):
        return
    sizes = [keep.count(analysis.labels_of(o)[axis]) for o in node.outputs]
    if graph.opset >= 13:
        node.attrs.pop("num_outputs", None)
        _set_const(graph, node, 1, np.array(sizes, dtype=np.int64), "split")
    else:
        node.attrs["split"] = sizes


def _slice(graph, analysis, keep, node):
    labels = analysis.labels_of(node.inputs[0])
    params = slice_params(node)
    if not any(a in labels for a, _ in params):
        return
    as_inputs = node.input(1) is not None  # opset >= 10; before, attributes
    starts = [
        int(v) for v in (np.asarray(node.inputs[1].const).reshape(-1) if as_inputs else node.attr("starts"))
    ]
    ends = [
        int(v) for v in (np.asarray(node.inputs[2].const).reshape(-1) if as_inputs else node.attr("ends"))
    ]
    for k, (a, taken) in enumerate(params):
        if a in labels:
            mask = keep.mask(labels[a])
            starts[k] = int(mask[: taken.start].sum())
            ends[k] = starts[k] + int(mask[taken.start : taken.stop].sum())
    if as_inputs:
        _set_const(graph, node, 1, np.array(starts, dtype=node.inputs[1].dtype), "starts")
        _set_const(graph, node, 2, np.array(ends, dtype=node.inputs[2].dtype), "ends")
    else:
        node.attrs["starts"], node.attrs["ends"] = starts, ends


def _gather(graph, analysis, keep, node):
    x, idx = node.inputs[0], node.inputs[1]
    axis = node.attr("axis", 0) % len(x.shape)
    ids = analysis.labels_of(x).get(axis)
    if ids is None:
        return
    mask = keep.mask(ids)
    newpos = np.cumsum(mask) - 1
    ind = np.asarray(idx.const)
    flat = ind.reshape(-1)
    flat = np.where(flat < 0, flat + x.shape[axis], flat)
    taken = np.array([newpos[i] for i in flat if mask[i]], dtype=idx.dtype)
    if len(taken) != len(flat) or not mask.all():
        shape = [len(taken) if d != 1 else 1 for d in ind.shape] if ind.ndim else []
        _set_const(graph, node, 1, taken.reshape(shape), "indices")


def _expand(graph, analysis, keep, node):
    y = node.outputs[0]
    labels = analysis.labels_of(y)
    if not labels:
        return
    shape = [int(v) for v in np.asarray(node.inputs[1].const).reshape(-1)]
    shift = len(y.shape) - len(shape)
    for a, ids in labels.items():
        if a - shift >= 0 and shape[a - shift] != 1:
            shape[a - shift] = keep.count(ids)
    _set_const(graph, node, 1, np.array(shape, dtype=np.int64), "shape")


def _resize(graph, analysis, keep, node):
    sizes = node.input(3)
    labels = analysis.labels_of(node.inputs[0])
    if sizes is None or sizes.numel == 0 or not labels:
        return
    dims = [int(v) for v in np.asarray(sizes.const).reshape(-1)]
    for a, ids in labels.items():
        dims[a] = keep.count(ids)
    _set_const(graph, node, 3, np.array(dims, dtype=np.int64), "sizes")


_REWRITES = {
    "Conv": _depthwise_group,
    "ConvTranspose": _depthwise_group,
    "Reshape": _reshape,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Expand": _expand,
    "Resize": _resize,
}


def apply_pruning(
    graph: Graph, analysis: DependencyAnalysis, kept_raw: np.ndarray, extra_members: list[Member] = ()
) -> int:
    """Remove every position whose id is not kept; returns the number of constants sliced."""
    from fuser.analysis.shapes import infer_shapes

    keep = _Keep(kept_raw)
    out_shapes = [tuple(v.shape) for v in graph.outputs]
    changed = slice_members(graph, list(analysis.members) + list(extra_members), keep)
    rewrite_attributes(graph, analysis, keep)
    infer_shapes(graph)
    for v, shape in zip(graph.outputs, out_shapes):
        if tuple(v.shape) != shape:
            raise RuntimeError(
                f"{graph.source}: pruning changed output '{v.name}' from "
                f"{list(shape)} to {list(v.shape)} (a bug in a channel rule)"
            )
    return changed
