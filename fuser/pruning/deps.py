"""Channel-dependency analysis on the IR: which channels must be removed together.

The model. Every tensor carries, for each axis that holds prunable channels, an array of
channel ids, one per position along that axis (its *labels*). Ops that create channels
hand out fresh ids; every other op maps its inputs' labels to its outputs' by an explicit
rule, and where an op needs two positions to disappear together (the two operands of an
Add, the rows of a channel-shuffle reshape) it *unifies* their ids (union-find). A
*channel* is a class of unified ids: removing it removes every position carrying one of
its ids, in every tensor and every weight. A *group* is the set of channels created by the
same layers (one conv's outputs, or all convs tied by a residual stream): ratios apply per
group. Ids may repeat along an axis (Flatten before a Gemm gives channel c the feature
block [c·HW, (c+1)·HW)); unification only ever merges classes, so a constraint an op
imposed stays true whatever later ops add.

Rules, by op ("labeled" = carries channel ids; C = channel axis 1 for NCHW ops):
  - Conv, group 1: input C labels slice W's axis 1; output C gets fresh ids (W axis 0, B).
    Depthwise (C_in/group = 1): output channel j is input channel j // m (m = C_out/C_in),
    so it repeats the input's labels; W axis 0 and B follow and ``group`` is rewritten.
    Grouped (C_in/group > 1): the same in-group index is removed from every group (the
    input's ids are unified across groups, the output's fresh ids are tiled per group),
    which keeps every group the same size and ``group`` unchanged.
  - ConvTranspose: the same with W = [C_in, C_out/group, k...]; grouped non-depthwise blocks.
  - Gemm and MatMul with a constant 2-D weight: the input feature axis slices the weight's
    input axis; the output feature axis gets fresh ids (weight's output axis, bias). Leading
    axes pass through. MatMul of two activations (attention): the contracted axes are
    unified, batch axes broadcast, the row axis of A and column axis of B pass through.
  - Elementwise ops (one data input: UNARY_RULES; two or more: ops.BINARY_OPS):
    numpy broadcasting, axis by axis; labeled operands of one axis are unified; a constant
    operand spanning the axis is sliced with it (bias, layer scale, position embedding);
    an activation operand without labels there fixes the axis (frozen, reported).
  - BatchNormalization, InstanceNormalization: C passes through; scale, bias, mean and
    variance are sliced. LayerNormalization: labels pass through; scale and bias are sliced
    on the normalized axes (the statistics then run over fewer channels, as Torch-Pruning's
    do). GroupNormalization: like a grouped conv (same in-group index in every group).
  - Pools, Resize/Upsample (channel scale 1; ``sizes`` rewritten), Pad (no channel padding),
    Softmax/LogSoftmax, Dropout, Identity, Cast: labels pass through.
  - Reduce* (not ArgMax): a reduced labeled axis loses its labels (the reduction runs over
    the kept channels); other axes pass through or shift.
  - Concat: labels concatenate along the axis (offsets by construction); an unlabeled part
    gets frozen ids; other axes unify as for broadcasting.
  - Split / Slice (step 1) / Gather (constant indices, one axis wide): the output takes the
    matching positions' labels; sizes, starts/ends and indices are rewritten from the kept
    channels.
  - Transpose, Squeeze, Unsqueeze, Expand, Tile: labels move with their axes.
  - Reshape / Flatten: the shapes split into blocks of axes with equal products. A block
    whose one labeled input axis lands on one output axis keeps its labels (flatten into a
    Gemm repeats them per position); so does an output axis along which the channel alone
    varies ([N,g,c·H·W] back to [N,g·c,H,W] in torch's GroupNorm). A block that splits a
    labeled axis into several (channel shuffle [N,g·c]->[N,g,c], attention heads
    [B,T,3·h·d]->[B,T,3,h,d], GroupNorm's [N,g·c,H,W]->[N,g,c·H·W]) keeps the labels on
    the innermost axis and unifies the outer ones, so the same in-block index is
    removed from every row: the grid stays rectangular, Q/K/V and every head keep equal,
    aligned sizes, and the shape constant is rewritten. With ``heads=True`` a token tensor
    [B,T,C] split into (..., h, d) keeps them on the head axis instead: whole heads go
    (Q, K and V of a head together) and the head count in the shape constants is rewritten.
    Two labeled axes in one block block.
  - Graph outputs keep their shape: their labels are frozen. Graph inputs carry none.
  - A constant sliced by several nodes (a conv called twice, tied weights) unifies the ids
    of each axis it is sliced on, so it stays one constant: the layers that share it lose
    the same channels, as Torch-Pruning couples a shared parameter.
Any other op, or an op whose rule's conditions fail (non-constant weights, a Slice step
on a channel axis, DepthToSpace, LRN, Shape of a labeled tensor, ...), blocks: every label
reaching it is frozen, its outputs carry none, and it is listed in ``blocked`` by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from fuser.ir import Graph, Node, Value
from fuser.ir.ops import BINARY_OPS, OPS, Category, Role, implementation, op_def, ops_in, refuse, register

Labels = dict[int, np.ndarray]  # axis -> raw channel ids, one per position along the axis


def _one_data_input(op: str) -> bool:
    d = op_def(op)
    return d.role(0) is Role.DATA and Role.DATA not in d.inputs[1:]


# Ops whose outputs are the input's values transformed one by one: elementwise ops with one
# data input, and Softmax/LogSoftmax (normalised along an axis, its labels pass through).
UNARY_RULES = frozenset(op for op in ops_in(Category.ELEMENTWISE) if _one_data_input(op)) | {
    "Softmax",
    "LogSoftmax",
}
# What a weight slice is to its layer; magnitude criteria read the 'out', 'in' and 'scale' ones.
ROLES = ("out", "in", "scale", "bias", "stat", "operand")


@dataclass
class Member:
    """A constant input of a node, sliced along ``axis`` when channels go."""

    node: Node
    index: int  # input slot
    axis: int  # axis of the constant
    ids: np.ndarray  # raw channel id of each position along the axis
    role: str  # one of ROLES

    @property
    def value(self) -> Value:
        return self.node.inputs[self.index]


@dataclass
class Blocked:
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}"


def layer_name(node: Node) -> str:
    """A readable name for a layer: its weight's module path when the graph came from torch
    ('layer1.0.conv1.weight' -> 'layer1.0.conv1'), else the node's name."""
    consts = [v.name for v in node.inputs[1:] if v is not None and v.is_const]
    if node.op == "MatMul":  # torch's Linear: the bias Add carries the module path
        consts = [
            v.name
            for u in node.outputs[0].users
            if u.op == "Add"
            for v in u.inputs
            if v is not None and v.is_const
        ] + consts
    for name in consts:
        for suffix in (".weight", ".bias"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
    return node.name


@dataclass
class ChannelGroup:
    """Channels created together; the unit a pruning ratio applies to."""

    index: int
    channels: np.ndarray  # channel (class root) ids, in order of first appearance
    prunable: np.ndarray  # bool per channel: False when frozen
    sources: list[str]  # nodes that create these channels, in graph order
    layers: list[str]  # their readable names (see layer_name)
    members: list[Member] = field(default_factory=list)
    frozen_reason: str = ""

    @property
    def name(self) -> str:
        more = f" +{len(self.layers) - 1}" if len(self.layers) > 1 else ""
        return f"{self.layers[0]}{more}"

    @property
    def size(self) -> int:
        return len(self.channels)


class ChannelSets:
    """Union-find over raw channel ids, with a frozen flag per class."""

    def __init__(self):
        self.parent: list[int] = []
        self.frozen: list[bool] = []
        self.reason: dict[int, str] = {}  # root -> why it is frozen
        self.block_of: list[int] = []  # raw id -> index of the fresh() call that made it
        self.block_source: list[str | None] = []  # that call's creating node (None: filler)

    def fresh(self, n: int, source: str | None = None, frozen: str | None = None) -> np.ndarray:
        """``n`` new ids made by node ``source`` (None: filler for an unlabeled part), frozen
        with the reason ``frozen`` when given."""
        start = len(self.parent)
        ids = np.arange(start, start + n, dtype=np.int64)
        self.parent.extend(range(start, start + n))
        self.frozen.extend([frozen is not None] * n)
        self.block_of.extend([len(self.block_source)] * n)
        self.block_source.append(source)
        if frozen is not None:
            self.reason.update((int(i), frozen) for i in ids)
        return ids

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra  # the older id stays root: stable, deterministic numbering
        if self.frozen[rb] and not self.frozen[ra]:
            self.frozen[ra] = True
            self.reason[ra] = self.reason.get(rb, "")

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def freeze(self, ids: Iterable[int], reason: str) -> None:
        for i in np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)):
            r = self.find(int(i))
            if not self.frozen[r]:
                self.frozen[r] = True
                self.reason[r] = reason

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


@dataclass
class DependencyAnalysis:
    """The result of ``analyze_dependencies``: labels, groups and what blocked."""

    graph: Graph
    sets: ChannelSets
    labels: dict[int, Labels]  # id(Value) -> labels
    members: list[Member]
    groups: list[ChannelGroup]
    blocked: list[Blocked]
    root_of: np.ndarray  # raw id -> channel (class root) id

    def labels_of(self, v: Value) -> Labels:
        return self.labels.get(id(v), {})

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable.any()]


# ---- the tracer: state the rules read and write ---------------------------------------------
class _Tracer:
    def __init__(self, graph: Graph, ignored: Callable[[Node], bool], heads: bool = False):
        self.graph = graph
        self.heads = heads
        self.sets = ChannelSets()
        self.labels: dict[int, Labels] = {}
        self.members: list[Member] = []
        self.blocked: list[Blocked] = []
        self.ignored = ignored
        self.sliced: dict[tuple[int, int], np.ndarray] = {}  # (id(constant), axis) -> its ids

    # labels
    def get(self, v: Value | None) -> Labels:
        return {} if v is None else self.labels.get(id(v), {})

    def set(self, v: Value, labels: Labels) -> None:
        labels = {a: ids for a, ids in labels.items() if ids is not None}
        if labels:
            self.labels[id(v)] = labels

    def fresh(self, node: Node, n: int) -> np.ndarray:
        """Fresh ids for ``n`` new channels of ``node`` (frozen when the node is ignored)."""
        frozen = f"{layer_name(node)} is ignored" if self.ignored(node) else None
        return self.sets.fresh(n, node.name, frozen=frozen)

    def member(self, node: Node, index: int, axis: int, ids: np.ndarray | None, role: str) -> None:
        v = node.input(index)
        if ids is None or v is None:
            return
        if not v.is_const:
            raise _Block(f"input {index} ('{v.name}') must be a constant to be sliced")
        if v.shape[axis] != len(ids):
            raise _Block(f"input {index} has {v.shape[axis]} positions on axis {axis}, expected {len(ids)}")
        # a constant two nodes share (a conv called twice, tied weights) is sliced once for both
        first = self.sliced.setdefault((id(v), axis), ids)
        if first is not ids:
            self.sets.unify(first, ids)
        self.members.append(Member(node, index, axis, ids, role))

    def freeze_all(self, node: Node, reason: str) -> None:
        why = f"{node.name} ({node.op}): {reason}"
        for v in node.inputs:
            for ids in self.get(v).values():
                self.sets.freeze(ids, why)

    def block(self, node: Node, reason: str) -> None:
        labeled = any(self.get(v) for v in node.inputs)
        self.freeze_all(node, reason)
        # drop members this node recorded before it failed
        self.members = [m for m in self.members if m.node is not node]
        for v in node.outputs:
            self.labels.pop(id(v), None)
        if labeled:
            self.blocked.append(Blocked(node.name, node.op, reason))


class _Block(Exception):
    """Raised by a rule whose conditions fail: the node blocks."""


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _const_ints(node: Node, index: int, attr: str | None = None) -> list[int] | None:
    """An int list from a constant input (or, in older opsets, an attribute)."""
    v = node.input(index)
    if v is not None:
        if not v.is_const:
            raise _Block(f"input {index} must be a constant")
        return [int(x) for x in np.asarray(v.const).reshape(-1)]
    if attr is not None and node.attr(attr) is not None:
        return [int(x) for x in node.attr(attr)]
    return None


# ---- rules ------------------------------------------------------------------------------------
def _passthrough(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    for o in node.outputs:
        if o.shape == x.shape:
            t.set(o, t.get(x))


def _broadcast_axes(
    t: _Tracer,
    node: Node,
    operands: list[int],
    out_rank: int,
    out_shape: tuple,
    skip_axes: set[int] = frozenset(),
) -> Labels:
    """Unify labels axis by axis over numpy-broadcast operands; slice constant operands."""
    result: Labels = {}
    for a in range(out_rank):
        if a in skip_axes:
            continue
        labeled: list[np.ndarray] = []
        fixed: list[tuple[int, int]] = []
        for i in operands:
            v = node.input(i)
            if v is None:
                continue
            ai = a - (out_rank - len(v.shape))
            if ai < 0:
                continue
            ids = t.get(v).get(ai)
            if v.shape[ai] == 1 and out_shape[a] != 1:  # broadcast along a
                if ids is not None:
                    raise _Block(f"input {i} broadcasts a single channel along axis {a}")
                continue
            if ids is not None:
                labeled.append(ids)
            else:
                fixed.append((i, ai))
        if not labeled:
            continue
        base = labeled[0]
        for ids in labeled[1:]:
            t.sets.unify(base, ids)
        for i, ai in fixed:
            v = node.inputs[i]
            if v.is_const:
                t.member(node, i, ai, base, "operand")
            else:
                t.sets.freeze(
                    base, f"{node.name} ({node.op}): input '{v.name}' has fixed channels on axis {a}"
                )
        result[a] = base
    return result


def _elementwise(t: _Tracer, node: Node) -> None:
    out = node.outputs[0]
    if node.op in UNARY_RULES and node.op != "CastLike":
        _passthrough(t, node)
        return
    operands = [0] if node.op == "CastLike" else list(range(len(node.inputs)))
    t.set(out, _broadcast_axes(t, node, operands, len(out.shape), out.shape))


def _prelu(t: _Tracer, node: Node) -> None:
    out = node.outputs[0]
    t.set(out, _broadcast_axes(t, node, [0, 1], len(out.shape), out.shape))


def _clip(t: _Tracer, node: Node) -> None:
    for v in node.inputs[1:]:
        if v is not None and v.numel != 1:
            raise _Block("min/max must be scalars")
    _passthrough(t, node)


def _channels_in(t: _Tracer, node: Node, channel_axis: int = 1) -> np.ndarray | None:
    """The labels of input 0's channel axis; any other labeled axis but batch blocks."""
    labels = t.get(node.inputs[0])
    for a in labels:
        if a not in (0, channel_axis):
            raise _Block(f"channels on axis {a} cannot pass this op")
    return labels.get(channel_axis)


def _conv(t: _Tracer, node: Node) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not w.is_const:
        raise _Block("the weight is not a constant")
    l_in = _channels_in(t, node)
    group = node.attr("group", 1)
    c_in, c_out = x.shape[1], y.shape[1]
    per_group_in = w.shape[1]
    batch = t.get(x).get(0)
    if group == 1:
        t.member(node, 1, 1, l_in, "in")
        l_out = t.fresh(node, c_out)
    elif per_group_in == 1:  # depthwise (channel multiplier m = c_out / c_in)
        l_out = None if l_in is None else np.repeat(l_in, c_out // c_in)
    else:  # grouped: same in-group index in every group
        per_group_out = c_out // group
        if l_in is not None:
            grid = l_in.reshape(group, per_group_in)
            for g in range(1, group):
                t.sets.unify(grid[0], grid[g])
            t.member(node, 1, 1, grid[0], "in")
        fresh = t.fresh(node, per_group_out)
        l_out = np.tile(fresh, group)
    t.member(node, 1, 0, l_out, "out")
    t.member(node, 2, 0, l_out, "bias")
    t.set(y, {0: batch, 1: l_out})


def _conv_transpose(t: _Tracer, node: Node) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not w.is_const:
        raise _Block("the weight is not a constant")
    if node.attr("output_shape") is not None:
        raise _Block("an explicit output_shape attribute is not rewritten")
    l_in = _channels_in(t, node)
    group = node.attr("group", 1)
    c_in, c_out = x.shape[1], y.shape[1]
    if group == 1:
        t.member(node, 1, 0, l_in, "in")
        l_out = t.fresh(node, c_out)
        t.member(node, 1, 1, l_out, "out")
    elif group == c_in:  # depthwise: output j comes from input j // m
        l_out = None if l_in is None else np.repeat(l_in, c_out // c_in)
        t.member(node, 1, 0, l_in, "out")
    else:
        raise _Block("grouped ConvTranspose (not depthwise) is not pruned")
    t.member(node, 2, 0, l_out, "bias")
    t.set(y, {0: t.get(x).get(0), 1: l_out})


def _gemm(t: _Tracer, node: Node) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not b.is_const:
        raise _Block("B is not a constant")
    la = t.get(a)
    k_axis_a = 0 if node.attr("transA", 0) else 1
    trans_b = node.attr("transB", 0)
    t.member(node, 1, 1 if trans_b else 0, la.get(k_axis_a), "in")
    l_out = t.fresh(node, y.shape[1])
    t.member(node, 1, 0 if trans_b else 1, l_out, "out")
    c = node.input(2)
    if c is not None:
        if not c.is_const:
            raise _Block("C is not a constant")
        if len(c.shape) >= 1 and c.shape[-1] == y.shape[1] and y.shape[1] != 1:
            t.member(node, 2, len(c.shape) - 1, l_out, "bias")
    t.set(y, {0: la.get(1 - k_axis_a), 1: l_out})


def _matmul(t: _Tracer, node: Node) -> None:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    la, lb = t.get(a), t.get(b)
    ra, rb, ry = len(a.shape), len(b.shape), len(y.shape)
    if a.is_const and not b.is_const:
        raise _Block("a constant left operand is not pruned")
    if b.is_const:
        if rb != 2 or ra < 2:
            raise _Block("only 2-D constant weights are pruned")
        t.member(node, 1, 0, la.get(ra - 1), "in")
        l_out = t.fresh(node, y.shape[-1])
        t.member(node, 1, 1, l_out, "out")
        labels = {ax: ids for ax, ids in la.items() if ax < ra - 1}
        labels[ry - 1] = l_out
        t.set(y, labels)
        return
    if ra < 2 or rb < 2:
        raise _Block("1-D operands are not pruned")
    ka, kb = la.get(ra - 1), lb.get(rb - 2)
    if (ka is None) != (kb is None):
        raise _Block("one side of the contracted axis has fixed channels")
    if ka is not None:
        t.sets.unify(ka, kb)
    # batch axes broadcast like an elementwise op over the leading dims
    batch_shape = y.shape[:-2]
    labels: Labels = {}
    for ax in range(ry - 2):
        found = []
        for v, lab, r in ((a, la, ra), (b, lb, rb)):
            av = ax - (ry - r)
            if av >= 0 and av < r - 2 and lab.get(av) is not None:
                if v.shape[av] == 1 and batch_shape[ax] != 1:
                    raise _Block("a labeled batch axis broadcasts")
                found.append((v, lab.get(av)))
        if len(found) == 2:
            t.sets.unify(found[0][1], found[1][1])
        elif len(found) == 1:
            other = b if found[0][0] is a else a
            r = rb if other is b else ra
            av = ax - (ry - r)
            if av >= 0 and other.shape[av] != 1:
                raise _Block(f"batch axis {ax} has channels on one operand only")
        if found:
            labels[ax] = found[0][1]
    labels[ry - 2] = la.get(ra - 2)
    labels[ry - 1] = lb.get(rb - 1)
    t.set(y, labels)


def _batchnorm(t: _Tracer, node: Node) -> None:
    if any(v.uses or t.graph.is_output(v) for v in node.outputs[1:]):
        raise _Block("training-mode outputs are used")
    l_c = _channels_in_any(t, node)
    for i, role in ((1, "scale"), (2, "bias"), (3, "stat"), (4, "stat")):
        t.member(node, i, 0, l_c, role)
    t.set(node.outputs[0], t.get(node.inputs[0]))


def _channels_in_any(t: _Tracer, node: Node) -> np.ndarray | None:
    return t.get(node.inputs[0]).get(1)


def _instancenorm(t: _Tracer, node: Node) -> None:
    l_c = _channels_in_any(t, node)
    t.member(node, 1, 0, l_c, "scale")
    t.member(node, 2, 0, l_c, "bias")
    t.set(node.outputs[0], t.get(node.inputs[0]))


def _layernorm(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    if any(v.uses or t.graph.is_output(v) for v in node.outputs[1:]):
        raise _Block("mean/inv-std outputs are used")
    rank = len(x.shape)
    first = _axis(node.attr("axis", -1), rank)
    labels = t.get(x)
    for i, role in ((1, "scale"), (2, "bias")):
        v = node.input(i)
        if v is None:
            continue
        for ax, ids in labels.items():
            if ax < first:
                continue
            ai = ax - (rank - len(v.shape))
            if ai >= 0 and v.shape[ai] != 1:
                t.member(node, i, ai, ids, role)
    t.set(node.outputs[0], labels)


def _groupnorm(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    l_c = _channels_in_any(t, node)
    groups = node.attr("num_groups")
    c = x.shape[1]
    if l_c is not None and groups > 1:
        grid = l_c.reshape(groups, c // groups)
        for g in range(1, groups):
            t.sets.unify(grid[0], grid[g])
    for i, role in ((1, "scale"), (2, "bias")):
        v = node.input(i)
        if v is not None and v.numel == c and c != groups:
            t.member(node, i, 0, l_c, role)
    t.set(node.outputs[0], t.get(x))


def _pool(t: _Tracer, node: Node) -> None:
    labels = t.get(node.inputs[0])
    for a in labels:
        if a > 1:
            raise _Block(f"channels on spatial axis {a}")
    for o in node.outputs:
        t.set(o, labels)


def _reduce(t: _Tracer, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = len(x.shape)
    axes = _const_ints(node, 1, "axes")
    if axes is None:
        axes = [] if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    axes = {_axis(a, rank) for a in axes}
    keep = node.attr("keepdims", 1)
    labels: Labels = {}
    for a, ids in t.get(x).items():
        if a in axes:
            continue  # the reduction runs over the kept channels
        labels[a if keep else a - sum(1 for r in axes if r < a)] = ids
    t.set(y, labels)


def _argmax(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    axis = _axis(node.attr("axis", 0), len(x.shape))
    if axis in t.get(x):
        raise _Block("an index over channels changes meaning when channels go")
    _reduce_single(t, node, axis)


def _reduce_single(t: _Tracer, node: Node, axis: int) -> None:
    keep = node.attr("keepdims", 1)
    t.set(
        node.outputs[0],
        {(a if keep or a < axis else a - 1): ids for a, ids in t.get(node.inputs[0]).items() if a != axis},
    )


def _transpose(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    perm = node.attr("perm") or list(reversed(range(len(x.shape))))
    labels = t.get(x)
    t.set(node.outputs[0], {j: labels[p] for j, p in enumerate(perm) if p in labels})


def _squeeze(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    rank = len(x.shape)
    axes = _const_ints(node, 1, "axes")
    axes = (
        {_axis(a, rank) for a in axes} if axes is not None else {a for a, d in enumerate(x.shape) if d == 1}
    )
    labels = t.get(x)
    if axes & set(labels):
        raise _Block("squeezes a channel axis")
    t.set(node.outputs[0], {a - sum(1 for s in axes if s < a): ids for a, ids in labels.items()})


def _unsqueeze(t: _Tracer, node: Node) -> None:
    y = node.outputs[0]
    axes = sorted(_axis(a, len(y.shape)) for a in _const_ints(node, 1, "axes"))
    kept = [a for a in range(len(y.shape)) if a not in axes]  # output axis of each input axis
    t.set(y, {kept[a]: ids for a, ids in t.get(node.inputs[0]).items()})


def reshape_blocks(src: tuple, dst: tuple) -> list[tuple[list[int], list[int]]]:
    """Split two shapes of equal size into aligned blocks of axes with equal products."""
    blocks, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        bi, bj, pi, pj = [], [], 1, 1
        if i < len(src):
            pi *= src[i]
            bi.append(i)
            i += 1
        if j < len(dst):
            pj *= dst[j]
            bj.append(j)
            j += 1
        while pi != pj:
            if (pi < pj and i < len(src)) or j >= len(dst):
                pi *= src[i]
                bi.append(i)
                i += 1
            else:
                pj *= dst[j]
                bj.append(j)
                j += 1
        blocks.append((bi, bj))
    return blocks


def _reshape_to(t: _Tracer, node: Node, src: tuple, dst: tuple) -> None:
    labels = t.get(node.inputs[0])
    out: Labels = {}
    for bi, bj in reshape_blocks(src, dst):
        labeled = [a for a in bi if a in labels]
        if not labeled:
            continue
        if len(labeled) > 1:
            raise _Block(f"axes {labeled} with channels are merged")
        a = labeled[0]
        # labels of every position of the block, in row-major order
        sizes = [src[k] for k in bi]
        flat = labels[a][np.indices(sizes)[bi.index(a)].reshape(-1)]
        wide = [k for k in bj if dst[k] != 1]
        if not wide:
            raise _Block("a channel axis becomes size 1")
        shape = [dst[k] for k in wide]
        pick = _label_axis(t, flat.reshape(shape), heads=t.heads and len(src) == 3 and a == 2)
        grid = np.moveaxis(flat.reshape(shape), pick, -1)
        rows = grid.reshape(-1, shape[pick])
        for r in range(1, len(rows)):  # the same in-row index goes from every row
            t.sets.unify(rows[0], rows[r])
        out[wide[pick]] = rows[0]
    t.set(node.outputs[0], out)


def _label_axis(t: _Tracer, grid: np.ndarray, heads: bool) -> int:
    """Which axis of an output block keeps the labels. One along which the channel does not
    vary needs no unification (a GroupNorm reshape back to [N, C, H, W] finds C); otherwise
    the innermost, or with ``heads`` the head axis of (..., heads, head_dim)."""
    roots = np.array([t.sets.find(int(i)) for i in grid.reshape(-1)]).reshape(grid.shape)
    for j in range(grid.ndim):
        cols = np.moveaxis(roots, j, 0).reshape(grid.shape[j], -1)
        if (cols == cols[:, :1]).all():
            return j
    return grid.ndim - 2 if heads and grid.ndim >= 2 else grid.ndim - 1


def _reshape(t: _Tracer, node: Node) -> None:
    _reshape_to(t, node, tuple(node.inputs[0].shape), tuple(node.outputs[0].shape))


def _flatten(t: _Tracer, node: Node) -> None:
    _reshape_to(t, node, tuple(node.inputs[0].shape), tuple(node.outputs[0].shape))


def _concat(t: _Tracer, node: Node) -> None:
    y = node.outputs[0]
    rank = len(y.shape)
    axis = _axis(node.attr("axis"), rank)
    parts = [v for v in node.inputs if v is not None]
    labels = _broadcast_axes(t, node, list(range(len(node.inputs))), rank, y.shape, {axis})
    along = [t.get(v).get(axis) for v in parts]
    if any(ids is not None for ids in along):
        why = f"{node.name} (Concat): joined with a part of fixed channels"
        labels[axis] = np.concatenate(
            [
                ids if ids is not None else t.sets.fresh(v.shape[axis], frozen=why)
                for v, ids in zip(parts, along)
            ]
        )
    t.set(y, labels)


def _split_sizes(node: Node, axis: int) -> list[int]:
    return [o.shape[axis] for o in node.outputs]


def _split(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    axis = _axis(node.attr("axis", 0), len(x.shape))
    labels = t.get(x)
    offset = 0
    for o, size in zip(node.outputs, _split_sizes(node, axis)):
        lab = dict(labels)
        if axis in labels:
            lab[axis] = labels[axis][offset : offset + size]
        offset += size
        t.set(o, lab)


def slice_params(node: Node) -> list[tuple[int, range]]:
    """(axis, positions taken) per sliced axis of a Slice node with constant parameters."""
    x = node.inputs[0]
    rank = len(x.shape)
    starts, ends = _const_ints(node, 1, "starts"), _const_ints(node, 2, "ends")
    axes = _const_ints(node, 3, "axes") or list(range(len(starts)))
    steps = _const_ints(node, 4) or [1] * len(starts)
    out = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, rank)
        out.append((a, range(x.shape[a])[slice(s, e, st)]))
    return out


def _slice(t: _Tracer, node: Node) -> None:
    labels = dict(t.get(node.inputs[0]))
    for a, taken in slice_params(node):
        if a in labels:
            if taken.step != 1:
                raise _Block("a step other than 1 on a channel axis")
            labels[a] = labels[a][taken.start : taken.stop]
    t.set(node.outputs[0], labels)


def _gather(t: _Tracer, node: Node) -> None:
    x, idx = node.inputs[0], node.inputs[1]
    rank = len(x.shape)
    axis = _axis(node.attr("axis", 0), rank)
    labels = t.get(x)
    if not labels:
        return
    if not idx.is_const:
        raise _Block("indices are not constant")
    ind = np.asarray(idx.const)
    wide = [k for k, d in enumerate(ind.shape) if d != 1]
    out: Labels = {}
    for a, ids in labels.items():
        if a == axis:  # the output's index axes replace ``axis``; one of them may be wide
            if len(wide) != 1:
                raise _Block("gathers single channels")
            flat = ind.reshape(-1)
            out[a + wide[0]] = ids[np.where(flat < 0, flat + x.shape[a], flat)]
        else:
            out[a if a < axis else a - 1 + ind.ndim] = ids
    t.set(node.outputs[0], out)


def _expand(t: _Tracer, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    shift = len(y.shape) - len(x.shape)
    out: Labels = {}
    for a, ids in t.get(x).items():
        if y.shape[a + shift] != x.shape[a]:
            raise _Block("expands a channel axis")
        out[a + shift] = ids
    t.set(y, out)


def _tile(t: _Tracer, node: Node) -> None:
    reps = _const_ints(node, 1)
    t.set(node.outputs[0], {a: np.tile(ids, reps[a]) for a, ids in t.get(node.inputs[0]).items()})


def _pad(t: _Tracer, node: Node) -> None:
    x = node.inputs[0]
    rank = len(x.shape)
    pads = _const_ints(node, 1, "pads")
    axes = _const_ints(node, 3) or list(range(rank))
    axes = [_axis(a, rank) for a in axes]
    for k, a in enumerate(axes):
        if a in t.get(x) and (pads[k] or pads[k + len(axes)]):
            raise _Block("pads a channel axis")
    _passthrough(t, node)


def _resize(t: _Tracer, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    for a in t.get(x):
        if x.shape[a] != y.shape[a]:
            raise _Block("resizes a channel axis")
    t.set(y, t.get(x))


def _block_if_labeled(reason: str) -> Callable:
    def rule(t: _Tracer, node: Node) -> None:
        if any(t.get(v) for v in node.inputs):
            raise _Block(reason)

    return rule


RULES: dict[str, Callable[[_Tracer, Node], None]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm,
    "LayerNormalization": _layernorm,
    "GroupNormalization": _groupnorm,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _pool,
    "GlobalMaxPool": _pool,
    "Clip": _clip,
    "PRelu": _prelu,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "ReduceMin": _reduce,
    "ReduceProd": _reduce,
    "ReduceL2": _reduce,
    "ArgMax": _argmax,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Expand": _expand,
    "Tile": _tile,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "LRN": _block_if_labeled("normalizes across neighbouring channels"),
    "DepthToSpace": _block_if_labeled("moves channels into space"),
    "SpaceToDepth": _block_if_labeled("moves space into channels"),
    "Shape": _block_if_labeled("reads the shape of a tensor with channels"),
    "Size": _block_if_labeled("reads the size of a tensor with channels"),
}
for _op in UNARY_RULES | BINARY_OPS:
    RULES.setdefault(_op, _elementwise)
for _op, _rule in RULES.items():
    register("prune", _op, _rule)
# Every other op is a barrier: channels that reach it are frozen, and it is reported.
refuse("prune", set(OPS) - set(RULES), "no channel rule for this op")


def analyze_dependencies(
    graph: Graph, ignored: Callable[[Node], bool] = lambda n: False, *, heads: bool = False
) -> DependencyAnalysis:
    """Trace channel labels through ``graph`` (static shapes); group the coupled channels.

    ``ignored(node)`` says which channel-creating nodes keep their output channels (the
    classifier and every graph-output producer keep theirs regardless). ``heads``: prune
    attention by whole heads instead of by head dimension (see the Reshape rule).
    """
    t = _Tracer(graph, ignored, heads)
    for node in graph.nodes:
        rule = implementation("prune", node.op)
        if rule is None or node.domain not in ("", "ai.onnx"):
            if any(t.get(v) for v in node.inputs):
                t.block(node, "no channel rule for this op")
            continue
        try:
            rule(t, node)
        except _Block as e:
            t.block(node, str(e))
    for v in graph.outputs:
        for ids in t.get(v).values():
            t.sets.freeze(ids, f"graph output '{v.name}' keeps its shape")
    return _finish(graph, t)


def _finish(graph: Graph, t: _Tracer) -> DependencyAnalysis:
    sets = t.sets
    root_of = sets.roots() if sets.parent else np.zeros(0, np.int64)
    # groups: channels whose ids were made by the same fresh() call are in one group; merge
    # groups sharing a channel (union-find over roots keyed by the blocks that reach them)
    block_of = np.asarray(sets.block_of, dtype=np.int64)
    n_blocks = len(sets.block_source)
    parent = list(range(n_blocks))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_block_of_root: dict[int, int] = {}
    for raw, root in enumerate(root_of.tolist()):
        b = int(block_of[raw])
        if sets.block_source[b] is None:
            continue  # frozen filler ids from Concat: not a source
        if root in first_block_of_root:
            x, y = find(first_block_of_root[root]), find(b)
            if x != y:
                parent[max(x, y)] = min(x, y)
        else:
            first_block_of_root[root] = b
    channels_of: dict[int, list[int]] = {}
    for root, b in sorted(first_block_of_root.items(), key=lambda kv: kv[0]):
        channels_of.setdefault(find(b), []).append(root)
    groups: list[ChannelGroup] = []
    group_of_block = {}
    node_order = {n.name: i for i, n in enumerate(graph.nodes)}
    for k, (gb, roots) in enumerate(sorted(channels_of.items())):
        blocks = sorted({b for b in range(n_blocks) if find(b) == gb and sets.block_source[b] is not None})
        sources = sorted({sets.block_source[b] for b in blocks}, key=lambda s: node_order.get(s, 0))
        roots_arr = np.asarray(roots, dtype=np.int64)
        prunable = np.array([not sets.frozen[r] for r in roots], dtype=bool)
        reason = next((sets.reason.get(r, "") for r in roots if sets.frozen[r]), "")
        layers = [layer_name(graph.node_by_name(s)) for s in sources]
        groups.append(ChannelGroup(k, roots_arr, prunable, sources, layers, frozen_reason=reason))
        group_of_block[gb] = k
    # members join every group whose channels they touch
    group_of_root = {int(r): g.index for g in groups for r in g.channels}
    for m in t.members:
        touched = {group_of_root.get(int(r)) for r in np.unique(root_of[m.ids])}
        for gi in sorted(x for x in touched if x is not None):
            groups[gi].members.append(m)
    return DependencyAnalysis(graph, sets, t.labels, t.members, groups, t.blocked, root_of)
