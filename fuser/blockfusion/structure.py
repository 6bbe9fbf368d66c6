"""Residual blocks found by structure, not by template: every single-entry, single-exit region
whose skip edge rejoins it, each to become one depth-first TVM kernel.

    blocks = find_residual_blocks(graph)       # graph after fuser.optimize (BN folded)
    [b.name for b in blocks if b.fused]
    groups = block_groups(blocks)               # node name -> block index, for to_relax

Rules (on ``graph.to_networkx()``, with a virtual source feeding every node that reads only
graph inputs):

- A merge is a node that joins computed values: Add or Sum of two or more, Concat, or a Mul
  that scales a tensor by something computed from it. For a merge m, its entry is d, m's
  immediate dominator (networkx ``immediate_dominators``): every path to m passes through d,
  so the region R between them (descendants of d that are ancestors of m) has d's outputs as
  its only inputs (single entry). R is single-exit when nothing in it is read outside R and m
  and nothing in it is a graph output; m is then the block's exit, and so is the activation
  after it (an elementwise chain on m's output alone, e.g. ResNet's ReLU).
- A block must compute something: an Add/Sum/Concat region holds a weighted op (Conv, Gemm,
  MatMul); a Mul region holds a weighted op or a global pool (squeeze-and-excite). A Mul whose
  region is elementwise only is an activation (SiLU is x * sigmoid(x)), not a block.
- Nested blocks (C2f holds bottlenecks, an MBConv its squeeze-and-excite) are reported inside
  the outermost block that fuses; an outer block that cannot fuse leaves its inner ones to fuse
  on their own.
- Fusing: a block becomes one kernel when TVM lowers all its ops and its output has rows
  (rank >= 4). Refused, with the reason: ops TVM cannot lower, an output without rows, and
  regions that mix rows (attention: a MatMul of two activations, Softmax over flattened
  positions, a Reshape or Flatten that merges the rows), where no output row can be computed
  from the rows above it (a Transpose to channels-last, as in ConvNeXt, moves rows whole).
  A global pool (squeeze-and-excite) does not refuse the block: its input must be whole
  before the pool emits, so the kernel runs as two tile loops, the pooled-from tensor held
  whole between them (``depthfirst`` rule 3), and the block is reported as split there.
- Activations are named by what they compute: the elementwise chain after a value is run (the
  torch backend) on a probe and compared with ReLU, ReLU6, SiLU, HardSwish, GELU, ...
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from fuser.ir import Graph, Node, Value
from fuser.ir.ops import Category, category, implementation, reduction_axes

MERGES = ("Add", "Sum", "Concat", "Mul")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


def is_global_pool(n: Node) -> bool:
    """A pool over a map's rows: Global*Pool, or a ReduceMean/Max whose axes take the rows
    (axis rank-2) of its input. One over the channels of an NHWC tensor (ConvNeXt's LayerNorm
    written out as ops) or of each pixel needs no whole map: it is no pool."""
    if n.op not in GLOBAL_POOLS:
        return False
    if n.op.startswith("Global"):
        return True
    rank = len(n.inputs[0].shape or ()) if n.inputs and n.inputs[0] is not None else 0
    axes = reduction_axes(n, rank) if rank else None
    return axes is None or rank < 3 or rank - 2 in axes


MAX_OPS = 80  # a larger single-exit region is a stage, not a block
SRC = "\0source"


@dataclass
class Block:
    """One residual block: its nodes (graph order), entry and exit values, what it computes,
    and whether it becomes one kernel (``reason`` says why not, or how it is split)."""

    name: str
    kind: str
    nodes: list[str]
    entry: list[str]
    output: str
    merge: str
    description: str
    fused: bool
    reason: str = ""
    stages: int = 1
    inside: str | None = None  # the enclosing fused block
    template: str | None = None  # the CUDA template that matches the same nodes, if any
    activations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(vars(self))


# ---- activations, named by what they compute -----------------------------------------------
def _gelu(x):
    from math import erf

    return np.array([0.5 * v * (1 + erf(v / 2**0.5)) for v in x.ravel()]).reshape(x.shape)


ACTIVATIONS = {
    "ReLU": lambda x: np.maximum(x, 0),
    "ReLU6": lambda x: np.clip(x, 0, 6),
    "SiLU": lambda x: x / (1 + np.exp(-x)),
    "HardSwish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "HardSigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "HardSigmoid(0.2)": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
    "Tanh": np.tanh,
    "GELU": _gelu,
    "GELU(tanh)": lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3))),
    "Mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "SELU": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "Softplus": lambda x: np.log1p(np.exp(x)),
    "Softsign": lambda x: x / (1 + np.abs(x)),
}


def _parametric(x: np.ndarray, y: np.ndarray) -> str | None:
    """The one-parameter families, their parameter read off the probe's ends and the whole
    curve checked: LeakyReLU(a) (a PReLU of one slope too), ELU(a) (CELU(a) computes the same
    for a = 1), Clip(lo, hi) (hardtanh)."""
    pos, neg = x > 0, x < -1
    close = functools.partial(np.allclose, rtol=1e-4, atol=1e-4)
    if not close(y[pos], x[pos]):
        lo, hi = float(y.min()), float(y.max())
        if close(y, np.clip(x, lo, hi)) and lo < hi:
            return f"Clip({lo:g}, {hi:g})"
        return None
    slope = float(y[0] / x[0])
    if slope != 0 and close(y[neg], slope * x[neg]):
        return f"LeakyReLU({slope:.3g})"
    alpha = float(y[0] / np.expm1(x[0]))
    if alpha > 0 and close(y[x <= 0], alpha * np.expm1(x[x <= 0])):
        return f"ELU({alpha:.3g})"
    return None


def _elementwise_after(v: Value, limit: int = 16) -> tuple[list[Node], Value] | None:
    """The elementwise nodes computing a function of ``v`` alone (and constants), ending in one
    value read elsewhere: (nodes in graph order, that value); None when there is none."""
    nodes: dict[int, Node] = {}
    known = {id(v)}
    frontier = list(v.users)
    while frontier and len(nodes) < limit:
        n = frontier.pop(0)
        if id(n) in nodes or category(n.op) != Category.ELEMENTWISE:
            continue
        data = [i for i in n.inputs if i is not None and not i.is_const]
        if not data or any(id(i) not in known for i in data):
            continue
        nodes[id(n)] = n
        known.update(id(o) for o in n.outputs)
        frontier.extend(u for o in n.outputs for u in o.users)
    if not nodes:
        return None
    inside = set(nodes)
    exits = [
        o
        for n in nodes.values()
        for o in n.outputs
        if any(id(u) not in inside for u in o.users) or not o.users
    ]
    if len(exits) != 1:
        return None
    graph = v.producer.graph if v.producer is not None else None
    order = {id(n): i for i, n in enumerate(graph.nodes)} if graph is not None else {}
    return sorted(nodes.values(), key=lambda n: order.get(id(n), 0)), exits[0]


def name_activation(graph: Graph, nodes: list[Node], out: Value) -> str:
    """What an elementwise chain computes, by running it on a probe: 'ReLU', 'SiLU', ... or
    'elementwise' when it matches no known activation (per-channel constants, say)."""
    from fuser.backends.torch.module import run_torch

    sub = graph.extract(nodes)
    if len(sub.inputs) != 1 or len(sub.outputs) != 1:
        return "elementwise"
    x_in = sub.inputs[0]
    shape = [int(d) for d in x_in.shape]
    # 113 values laid out over the whole input: a per-channel constant shows as a mismatch, and
    # each activation is computed on the 113 values alone (its Python GELU on a batch-32
    # ConvNeXt input took two minutes)
    base = np.linspace(-7, 7, 113, dtype=np.float32).astype(x_in.dtype)
    probe = np.resize(base, shape)
    try:
        (y,) = run_torch(sub, {x_in.name: probe})
    except Exception:  # noqa: BLE001 - an op the torch backend lacks: no name, no harm
        return "elementwise"
    if y.shape != probe.shape:
        return "elementwise"
    # one function everywhere: every run of 113 outputs is the first
    flat, n = np.asarray(y, np.float64).ravel(), base.size
    first = flat[:n]
    whole = flat.size - flat.size % n if flat.size >= n else 0
    same = whole == 0 or np.allclose(flat[:whole].reshape(-1, n), first, rtol=1e-4, atol=1e-4)
    if not same or not np.allclose(flat[whole:], first[: flat.size - whole], rtol=1e-4, atol=1e-4):
        return "elementwise"
    for name, f in ACTIVATIONS.items():
        if np.allclose(first, f(base.astype(np.float64))[: first.size], rtol=1e-4, atol=1e-4):
            return name
    if first.size == base.size:
        return _parametric(base.astype(np.float64), first) or "elementwise"
    return "elementwise"


def _named_tail(graph: Graph, nodes: list[Node], out: Value) -> tuple[list[Node], str]:
    """The chain's longest tail that names an activation, and that name: the chain after a
    MatMul or Conv often starts with its bias Add (a constant per channel, no activation),
    and GELU written out (Div Erf Add Mul Mul) follows it. ([], 'elementwise') if none."""
    for start in range(len(nodes)):
        tail = nodes[start:]
        name = name_activation(graph, tail, out)
        if name != "elementwise":
            return tail, name
    return [], "elementwise"


def _chain_label(graph: Graph, chain: list[Node], out: Value, chosen: set[int]) -> tuple[str, str | None]:
    """'Add + GELU' for an elementwise chain (the ops before its named tail, of those in the
    block, then the name) and the activation named, or None."""
    tail, name = _named_tail(graph, chain, out)
    head = " ".join(a.op for a in chain[: len(chain) - len(tail)] if id(a) in chosen)
    return " + ".join(([head] if head else []) + ([name] if tail else [])), (name if tail else None)


def layernorm_as_ops(n: Node) -> list[Node] | None:
    """The nodes of a LayerNorm written out as ops, from its first ReduceMean (what exporters
    before opset 17 write): mean, x - mean, its square's mean + eps, sqrt, the division, then
    a constant scale and shift if present. None when ``n`` does not start one."""
    if n.op != "ReduceMean" or is_global_pool(n) or not n.inputs or n.inputs[0] is None:
        return None
    x = n.inputs[0]
    sub = next((u for u in n.output.users if u.op == "Sub" and u.inputs[0] is x), None)
    div = next((u for u in sub.output.users if u.op == "Div"), None) if sub is not None else None
    if div is None or div.inputs[0] is not sub.output:
        return None
    between, v = [], div.inputs[1]
    while v is not None and v is not sub.output and v.producer is not None and len(between) < 6:
        between.append(v.producer)
        v = v.producer.inputs[0]
    if v is not sub.output:
        return None
    nodes, out = [n, sub, *reversed(between), div], div.output
    for op in ("Mul", "Add"):
        (user, *more) = out.users or [None]
        affine = user is not None and not more and user.op == op
        if affine and any(i is not None and i.is_const for i in user.inputs):
            nodes.append(user)
            out = user.output
    return nodes


# ---- description ----------------------------------------------------------------------------
def _conv_label(n: Node) -> str:
    w = n.inputs[1]
    k = list(w.shape[2:]) if w is not None and w.shape else n.attr("kernel_shape", [1, 1])
    groups = int(n.attr("group", 1))
    c_in = int(n.inputs[0].shape[1]) if n.inputs[0].shape else 0
    stride = (n.attr("strides") or [1])[0]
    label = f"{n.op} {'x'.join(str(int(d)) for d in k)}"
    if groups > 1:
        label += " dw" if groups == c_in else f" g{groups}"
    return label + (f" s{stride}" if stride > 1 else "")


def _in_chain_of_one_input(n: Node) -> bool:
    """A Mul or Add of one value with itself or a constant (x * x in GELU(tanh) written out):
    part of an activation, not a merge of two branches."""
    data = {id(i) for i in n.inputs if i is not None and not i.is_const}
    return category(n.op) == Category.ELEMENTWISE and len(data) == 1


def _shortcuts(members: list[Node], entries: list[Value], chosen: set[int]) -> dict[int, list[Node]]:
    """Merge node id -> the conv on its skip branch and the elementwise chain after it (a
    projection shortcut: a conv of the block's entry, read by the merge directly, beside the
    main path that also starts at the entry), so the description does not list it as the
    first step of the chain."""
    if len(entries) != 1 or sum(id(u) in chosen for u in entries[0].users) < 2:
        return {}
    entry = entries[0]
    found = {}
    for n in members:
        if n.op not in WEIGHTED or n.inputs[0] is not entry:
            continue
        after = _elementwise_after(n.output)
        chain, out = after if after is not None and all(id(a) in chosen for a in after[0]) else ([], n.output)
        merges = [u for u in out.users if id(u) in chosen and u.op in MERGES]
        if len(merges) == 1 and len(out.users) == 1:
            found[id(merges[0])] = [n, *chain]
    return found


def _describe(graph: Graph, members: list[Node], entries: list[Value] = ()) -> tuple[str, list[str]]:
    """'Conv 3x3 + SiLU -> Conv 3x3 + SiLU -> Add' and the activations named in it; a projection
    shortcut goes with its merge: 'Conv 3x3 s2 + ReLU -> Conv 3x3 -> Add(Conv 1x1 s2)'."""
    chosen = {id(n) for n in members}
    shortcut_of = _shortcuts(members, list(entries), chosen)
    covered = {id(a) for branch in shortcut_of.values() for a in branch}
    parts, acts = [], []
    for n in members:
        if id(n) in covered:
            continue
        if id(n) in shortcut_of:
            parts.append(f"{n.op}({_conv_label(shortcut_of[id(n)][0])})")
            continue
        layernorm = layernorm_as_ops(n)
        if layernorm and all(id(a) in chosen for a in layernorm):
            covered.update(id(a) for a in layernorm)
            parts.append("LayerNorm")
            continue
        if n.op in WEIGHTED or is_global_pool(n) or n.op in ("MaxPool", "AveragePool", "LayerNormalization"):
            label = _conv_label(n) if n.op in ("Conv", "ConvTranspose") else n.op
            after = _elementwise_after(n.output)
            if after is not None and all(id(a) in chosen for a in after[0]):
                text, name = _chain_label(graph, *after, chosen)
                covered.update(id(a) for a in after[0])
                label += " + " + text
                acts += [name] if name else []
            parts.append(label)
        elif (n.op in MERGES and not _in_chain_of_one_input(n)) or n.op in ("Split", "Resize"):
            parts.append(n.op)
        elif category(n.op) == Category.ELEMENTWISE:
            after = _elementwise_after(n.inputs[0]) if n.inputs and n.inputs[0] is not None else None
            if after is not None and id(n) in {id(a) for a in after[0]}:
                text, name = _chain_label(graph, *after, chosen)
                covered.update(id(a) for a in after[0] if id(a) in chosen)
                parts.append(text)
                acts += [name] if name else []
    return " -> ".join(p for p in parts if p), acts


def _kind(members: list[Node], merge: Node, acts: list[str]) -> str:
    convs = [n for n in members if n.op == "Conv"]
    ops = {n.op for n in members}
    has_pool = any(is_global_pool(n) for n in members)

    def kernel(n):
        return int(n.inputs[1].shape[2]) if n.inputs[1] is not None and n.inputs[1].shape else 1

    def depthwise(n):
        g = int(n.attr("group", 1))
        return g > 1 and g == int(n.inputs[0].shape[1])

    if merge.op == "Concat":
        if "Split" in ops:  # YOLOv8's C2f ends in a conv; ShuffleNet's unit in the shuffle
            return "C2f" if members[-1].op in WEIGHTED or members[0].op in WEIGHTED else "channel split"
        return "concat block"
    if merge.op == "Mul":
        return "squeeze-excite" if has_pool else "gated block"
    layernorm = "LayerNormalization" in ops or any(layernorm_as_ops(n) for n in members)
    if layernorm and any(depthwise(c) and kernel(c) == 7 for c in convs):
        return "ConvNeXt"
    dw = [c for c in convs if depthwise(c)]
    grouped = [c for c in convs if int(c.attr("group", 1)) > 1 and not depthwise(c)]
    dense = [c for c in convs if int(c.attr("group", 1)) == 1]
    if grouped and len(dense) >= 2 and kernel(grouped[0]) > 1 and convs[0] is grouped[0]:
        return "ConvFirst"
    if dw:
        return "MBConv + SE" if has_pool else "MBConv"
    spatial = [c for c in dense if kernel(c) > 1]
    if len(dense) >= 3 and len(spatial) == 1:
        return "bottleneck"
    if len(spatial) == 2 and "SiLU" in acts:
        return "YOLO bottleneck"
    if len(spatial) >= 2:
        return "ResNet basic"
    return "residual"


# ---- fusability ---------------------------------------------------------------------------------
def _refusal(members: list[Node], output: Value) -> str:
    try:
        import fuser.backends.tvm.converters  # noqa: F401 - registers the ops TVM lowers
    except ImportError:
        return "Apache TVM is not installed (pip install 'fuser[tvm]')"
    missing = sorted({n.op for n in members if implementation("relax", n.op) is None})
    if missing:
        return f"TVM does not lower {', '.join(missing)}"
    if output.shape is None or len(output.shape) < 4:
        return "its output has no rows (rank < 4): nothing to tile"
    for n in members:
        data = [i for i in n.inputs if i is not None and not i.is_const]
        if n.op == "MatMul" and len(data) == 2:
            return "it mixes rows: MatMul of two activations (attention over all positions)"
        if n.op in ("Softmax", "LogSoftmax") and n.outputs[0].shape and len(n.outputs[0].shape) < 4:
            return f"it mixes rows: {n.op} over flattened positions"
        if n.op in ("Reshape", "Flatten") and data:  # a Transpose only moves rows, whole
            a, b = data[0].shape, n.outputs[0].shape
            if a and b and len(a) >= 4 and (len(b) < 4 or a[-2] not in b[1:]):
                return f"it mixes rows: {n.op} {list(a)} -> {list(b)} merges the rows"
    return ""


# ---- the finder -------------------------------------------------------------------------------
def find_residual_blocks(graph: Graph, templates: bool = True) -> list[Block]:
    """Every residual block of ``graph`` (BN folded), fused or not, in graph order."""
    import networkx as nx

    dg = nx.DiGraph(graph.to_networkx())
    dg.add_node(SRC)
    for n in list(dg.nodes):
        if n != SRC and dg.in_degree(n) == 0:
            dg.add_edge(SRC, n)
    idom = nx.immediate_dominators(dg, SRC)
    by_name = {n.name: n for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    found: list[tuple[list[Node], Node, list[Value], Value]] = []
    for m in graph.nodes:
        if m.op not in MERGES:
            continue
        data = [v for v in m.inputs if v is not None and not v.is_const]
        if len(data) < 2:
            continue
        d = idom.get(m.name)
        if d is None:
            continue
        region = (nx.descendants(dg, d) if d != SRC else set(dg.nodes)) & nx.ancestors(dg, m.name)
        region.discard(SRC)
        region.discard(d)
        if not region or len(region) > MAX_OPS:
            continue
        members = [by_name[x] for x in sorted(region, key=order.__getitem__)]
        ops = {n.op for n in members}
        if not ops & set(WEIGHTED) and not (m.op == "Mul" and any(is_global_pool(n) for n in members)):
            continue
        inside = region | {m.name}
        if any(graph.is_output(v) for n in members for v in n.outputs):
            continue
        if any(u.name not in inside for n in members for v in n.outputs for u in v.users):
            continue
        entry = (
            [v for v in graph.inputs if any(id(v) == id(i) for n in members for i in n.inputs)]
            if d == SRC
            else [v for v in by_name[d].outputs if v.users]
        )
        tail = _elementwise_after(m.output) if not graph.is_output(m.output) else None
        if tail is not None:
            members = [*members, m, *tail[0]]
            output = tail[1]
        else:
            members = [*members, m]
            output = m.output
        if d != SRC and by_name[d].op == "Split" and m.op == "Concat":  # C2f: cv1, split ... concat, cv2
            head = _unit_before(by_name[d])
            foot = _unit_after(output)
            members = [*head, by_name[d], *members, *(foot[0] if foot else [])]
            output = foot[1] if foot else output
            entry = [v for v in head[0].inputs if v is not None and not v.is_const] if head else entry
        found.append((members, m, entry, output))
    return _select(graph, found, templates)


def _unit_before(node: Node) -> list[Node]:
    """The weighted op and its activation whose output only ``node`` reads, or []."""
    v = node.inputs[0]
    if v is None or len(v.users) != 1:
        return []
    p = v.producer
    while p is not None and p.op not in WEIGHTED:
        if category(p.op) != Category.ELEMENTWISE:
            return []
        data = [i for i in p.inputs if i is not None and not i.is_const]
        p = next(
            (i.producer for i in data if i.producer is not None and i.producer.op in WEIGHTED), None
        ) or (data[0].producer if data else None)
    if p is None:
        return []
    act = _elementwise_after(p.output)
    if act is None:
        return [p] if p.output is v else []
    return [p, *act[0]] if act[1] is v else []


def _unit_after(v: Value) -> tuple[list[Node], Value] | None:
    """The weighted op that alone reads ``v``, with its activation: (nodes, output), or None."""
    if len(v.users) != 1 or v.users[0].op not in WEIGHTED:
        return None
    conv = v.users[0]
    act = _elementwise_after(conv.output)
    return ([conv, *act[0]], act[1]) if act else ([conv], conv.output)


def _select(graph: Graph, found, templates: bool) -> list[Block]:
    """Name the candidates, fuse the outermost fusable ones, mark the nested ones."""
    spec_of = {}
    if templates:
        from .matcher import find_blocks

        for spec in find_blocks(graph, None)[0]:
            spec_of[frozenset(spec.nodes)] = spec.kind
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    blocks = []
    for members, m, entry, output in found:
        description, acts = _describe(graph, members, entry)
        names = [n.name for n in members]
        reason = _refusal(members, output)
        pools = sorted({n.op for n in members if is_global_pool(n)})
        stages = 1
        if not reason and pools:
            stages = 2
            reason = (
                f"split at {pools[0]}: the pool needs its whole H x W input before it emits, so the "
                "kernel runs two tile loops, the pooled-from tensor held whole between them"
            )
        template = next((kind for nodes, kind in spec_of.items() if nodes <= set(names)), None)
        blocks.append(
            Block(
                name="",
                kind=_kind(members, m, acts),
                nodes=names,
                entry=[v.name for v in entry],
                output=output.name,
                merge=m.name,
                description=description,
                fused=False,
                reason=reason,
                stages=stages,
                template=template,
                activations=acts,
            )
        )
    # outermost first: a fused block claims its nodes; blocks inside it are reported with it
    claimed: dict[str, str] = {}
    for b in sorted(blocks, key=lambda b: -len(b.nodes)):
        b.name = f"block{order[b.merge]}"
        owner = {claimed[n] for n in b.nodes if n in claimed}
        if owner:
            b.inside = sorted(owner)[0]
            continue
        if b.reason and b.stages == 1:
            continue
        b.fused = True
        claimed.update(dict.fromkeys(b.nodes, b.name))
    blocks.sort(key=lambda b: order[b.merge])
    for i, b in enumerate(blocks):
        b.name = f"block{i}"
    renamed = {f"block{order[b.merge]}": b.name for b in blocks}
    for b in blocks:
        if b.inside:
            b.inside = renamed.get(b.inside, b.inside)
    return blocks


def block_groups(blocks: list[Block]) -> dict[str, int]:
    """Node name -> index of the fused block holding it (the ``groups`` of ``to_relax``)."""
    return {n: i for i, b in enumerate(blocks) if b.fused for n in b.nodes}
