"""Fusion plans: partitions of a graph's ops into groups, their checks, encoding and JSON.

A plan is legal when every op is in exactly one group, every group is weakly
connected, and the graph of groups (an edge A -> B when an op of A feeds an op of
B) is acyclic, so the groups can run one after another.

Searches work on an *edge genome*: one bit per producer->consumer edge of the op
graph, 1 = fuse. ``decode`` turns any genome into a legal partition: the
components of the fused edges, and where those components would form a cycle,
a refinement by levels (level(v) = max over in-edges u->v of level(u) if fused,
else level(u) + 1; ops sharing a level and a fused edge stay together), so every
edge between groups climbs a level and no cycle can remain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuser.ir import FuserError, Graph, stable_topological_order

from .opgraph import FusionGraph, bits, mask_of

PLAN_FORMAT = "fuser.fusion.plan/1"


# ---- partitions as bitmasks -------------------------------------------------------
def partition_problems(fg: FusionGraph, groups: Iterable[int]) -> list[str]:
    """Why ``groups`` (op bitmasks) is not a legal partition; [] when it is."""
    groups = list(groups)
    problems = []
    seen = 0
    for g in groups:
        if g == 0:
            problems.append("an empty group")
            continue
        if seen & g:
            problems.append(f"ops in two groups: {fg.group_names(seen & g)[:5]}")
        seen |= g
        if not fg.is_connected(g):
            problems.append(f"group {fg.group_names(g)[:5]} is not connected")
    if seen != fg.all_mask:
        problems.append(f"ops in no group: {fg.group_names(fg.all_mask & ~seen)[:5]}")
    if not problems and topological_groups(fg, groups) is None:
        problems.append("the groups form a cycle (some group both feeds and waits on another)")
    return problems


def group_of(fg: FusionGraph, groups: list[int]) -> list[int]:
    """Per op: the index of its group in ``groups``."""
    owner = [-1] * fg.n
    for k, g in enumerate(groups):
        for i in bits(g):
            owner[i] = k
    return owner


def topological_groups(fg: FusionGraph, groups: list[int]) -> list[int] | None:
    """``groups`` in an order where every group comes after the groups it reads from
    (ties broken by first op), or None when the group graph has a cycle. Edges to
    ops outside ``groups`` are ignored, so this also orders the pieces of one group."""
    first_op = [(g & -g).bit_length() for g in groups]
    order = stable_topological_order(len(groups), _group_edges(fg, groups), key=first_op.__getitem__)
    return None if order is None else [groups[k] for k in order]


def _group_edges(fg: FusionGraph, groups: list[int]):
    """(a, b) for every edge from an op of ``groups[a]`` to one of ``groups[b]``, a != b; edges to
    ops outside ``groups`` are ignored."""
    owner = group_of(fg, groups)
    for u in range(fg.n):
        if owner[u] >= 0:
            for v in fg.succs[u]:
                if owner[v] >= 0 and owner[v] != owner[u]:
                    yield owner[u], owner[v]


def groups_acyclic(fg: FusionGraph, groups: list[int]) -> bool:
    """Whether the group graph of ``groups`` has no cycle (``topological_groups`` is not None),
    without ordering it: the check local search makes for every step it tries."""
    succ = [0] * len(groups)
    for a, b in _group_edges(fg, groups):
        succ[a] |= 1 << b
    indegree = [0] * len(groups)
    for s in succ:
        for b in bits(s):
            indegree[b] += 1
    ready = [k for k, d in enumerate(indegree) if d == 0]
    done = 0
    while ready:
        a = ready.pop()
        done += 1
        for b in bits(succ[a]):
            indegree[b] -= 1
            if indegree[b] == 0:
                ready.append(b)
    return done == len(groups)


def reach(fg: FusionGraph, mask: int) -> tuple[int, int]:
    """(ancestors, descendants) of the group ``mask``: the ORs of its ops' reachability masks."""
    anc, desc = fg.ancestors(), fg.descendants()
    up = down = 0
    for i in bits(mask):
        up |= anc[i]
        down |= desc[i]
    return up, down


def merge_makes_cycle(
    fg: FusionGraph, a: int, b: int, reach_a: tuple[int, int] | None = None, reach_b=None
) -> bool:
    """Whether fusing groups ``a`` and ``b`` closes a cycle: an op outside both that
    one of them reaches and that reaches the other (a path that leaves and comes back).
    ``reach_a``/``reach_b``: their ``reach`` when the caller maintains it."""
    up_a, down_a = reach_a or reach(fg, a)
    up_b, down_b = reach_b or reach(fg, b)
    outside = ~(a | b)
    return bool((down_a & up_b | down_b & up_a) & outside)


# ---- the edge genome --------------------------------------------------------------
def encode(fg: FusionGraph, groups: list[int]) -> np.ndarray:
    """The genome of a partition: edge k is fused iff both its ends share a group."""
    owner = group_of(fg, groups)
    return np.array([owner[u] == owner[v] for u, v in fg.edges], dtype=bool)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _components(n: int, pairs: Iterable[tuple[int, int]], members: list[int]) -> list[int]:
    uf = _UnionFind(n)
    for u, v in pairs:
        uf.union(u, v)
    comp: dict[int, int] = {}
    for i in members:
        r = uf.find(i)
        comp[r] = comp.get(r, 0) | (1 << i)
    return list(comp.values())


def decode(fg: FusionGraph, genome: np.ndarray) -> list[int]:
    """A legal partition (op bitmasks, in no particular order) from an edge genome."""
    from scipy.sparse.csgraph import connected_components

    fused = np.asarray(genome, dtype=bool)
    ends = fg.edge_array
    chosen = ends[fused]
    _, label = connected_components(_adjacency(chosen[:, 0], chosen[:, 1], fg.n), directed=False)
    a, b = label[ends[:, 0]], label[ends[:, 1]]
    between = a != b
    n_groups = int(label.max()) + 1 if fg.n else 0
    n_scc, scc = connected_components(
        _adjacency(a[between], b[between], n_groups), directed=True, connection="strong"
    )
    if n_scc == n_groups:  # the group graph is acyclic
        return _masks(label.tolist())
    # Groups on a cycle: refine their ops by levels; the others stay as they are.
    cyclic_scc = np.bincount(scc, minlength=n_scc) > 1
    on_cycle = cyclic_scc[scc[label]]
    groups = _masks(label[~on_cycle].tolist(), np.flatnonzero(~on_cycle).tolist())
    members = np.flatnonzero(on_cycle).tolist()
    inside = on_cycle[ends[:, 0]] & on_cycle[ends[:, 1]] & (scc[a] == scc[b])
    level = dict.fromkeys(members, 0)
    for (u, v), f in zip(ends[inside].tolist(), fused[inside].tolist()):  # edges in op order
        level[v] = max(level[v], level[u] + (0 if f else 1))
    same = [
        (u, v)
        for (u, v), f in zip(ends[inside].tolist(), fused[inside].tolist())
        if f and level[u] == level[v]
    ]
    return groups + _components(fg.n, same, members)


def _adjacency(rows: np.ndarray, cols: np.ndarray, n: int):
    from scipy.sparse import coo_matrix

    return coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n)).tocsr()


def _masks(labels: list[int], ops: list[int] | None = None) -> list[int]:
    """Group bitmasks from per-op labels (of ``ops``, default 0..n-1), in label order of first op."""
    if not len(labels):
        return []
    labels = np.asarray(labels)
    ops = np.arange(len(labels)) if ops is None else np.asarray(ops)
    order = np.argsort(labels, kind="stable")
    label_sorted, ops_sorted = labels[order], ops[order].tolist()
    starts = np.flatnonzero(np.r_[True, label_sorted[1:] != label_sorted[:-1]]).tolist()
    ends = starts[1:] + [len(ops_sorted)]
    spans = sorted(zip(starts, ends), key=lambda se: ops_sorted[se[0]])  # by first op
    return [1 << ops_sorted[a] if b - a == 1 else mask_of(ops_sorted[a:b]) for a, b in spans]


# ---- the Plan ---------------------------------------------------------------------
def moved_bytes(record: dict) -> int | None:
    """A plan's or a group's predicted DRAM bytes (their ``to_dict``): the whole batch's when
    the plan was made for one image of it, else ``dram_bytes``."""
    return record.get("batch_dram_bytes") or record.get("dram_bytes")


@dataclass
class PlanGroup:
    """One fusion group of a plan: its ops (names, topological order) and costs (bytes).

    ``buffer_bytes`` is F_β, ``dram_bytes`` F_D (see ``fuser.fusion.cost``); ``tiles``:
    BRR's row tiles (None under LBDF); ``batch_dram_bytes``: F_D of the whole batch when the
    plan was made for one image of it (``Plan.images``). JSON: the same keys, ``tiles`` and
    ``batch_dram_bytes`` only when set.
    """

    ops: list[str]
    buffer_bytes: int = 0
    dram_bytes: int = 0
    valid: bool = True
    fits: bool = True
    weight_bytes: int = 0
    feature_bytes: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    tiles: int | None = None
    batch_dram_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("tiles", "batch_dram_bytes"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "<plan>") -> PlanGroup:
        if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
            raise FuserError(f'{source}: every group needs an "ops" list of op names')
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Plan:
    """A fusion plan with its costs, explanations and provenance (JSON-serialisable).

    ``groups``: ``PlanGroup``s in an order that runs (topological).
    ``splits``: one explanation per split of an invalid group (see fuser.fusion.split).
    ``optimum``: the proven bound on the least DRAM of any plan, when computed
    (``fuser.fusion.exact.optimality_gap``): ``{"bytes", "exact", "method", "plan_bytes"}``.
    ``images``: the batch, when the plan was made for one image of it (every byte count above
    is then one image's: ``fuser.fusion.opgraph.build_fusion_graph``); ``batch_dram_bytes``:
    what the whole batch moves. JSON: both only when ``images`` > 1.
    ``print(plan)`` gives a short summary; ``plan.to_json()`` everything.
    """

    model: str
    style: str
    buffer_bytes: int
    element_bytes: int
    dram_bytes: int
    no_fusion_dram_bytes: int
    peak_buffer_bytes: int
    groups: list[PlanGroup]
    splits: list[dict] = field(default_factory=list)
    unfusable: list[dict] = field(default_factory=list)
    search: dict = field(default_factory=dict)
    pareto: list[dict] = field(default_factory=list)
    optimum: dict | None = None
    images: int = 1
    batch_dram_bytes: int | None = None
    layer_fusion_dram_bytes: int | None = None  # the compiler's own fusion (CostModel.layer_fusion_dram)

    @property
    def dram_ratio(self) -> float:
        """DRAM bytes of the plan over the no-fusion baseline's."""
        return self.dram_bytes / max(self.no_fusion_dram_bytes, 1)

    @property
    def op_groups(self) -> list[list[str]]:
        return [g.ops for g in self.groups]

    @property
    def gap(self) -> float | None:
        """How far above the proven optimum (or lower bound) the plan's DRAM is: 0.01 = 1%."""
        if not self.optimum or self.optimum["bytes"] <= 0:
            return None
        return self.dram_bytes / self.optimum["bytes"] - 1

    def __str__(self) -> str:
        fused = [g for g in self.groups if len(g.ops) > 1]
        search = self.search or {}
        layers = (
            f"{self.dram_bytes / self.layer_fusion_dram_bytes:.3f} of layer fusion, "
            if self.layer_fusion_dram_bytes
            else ""
        )
        text = (
            f"Plan({self.model}: {self.style.upper()}, buffer {self.buffer_bytes:,} B, "
            f"DRAM {self.dram_bytes:,} B = {self.dram_ratio:.3f} of no fusion, {layers}"
            f"{len(self.groups)} groups ({len(fused)} fused, {sum(len(g.ops) for g in fused)} ops), "
            f"peak buffer {self.peak_buffer_bytes:,} B, {len(self.splits)} splits"
        )
        if search.get("search"):
            text += f"; {search['search']} search, {search.get('split')} split"
        if self.images > 1:
            text += f"; per image of {self.images}, the batch moves {self.batch_dram_bytes:,} B"
        if self.gap is not None:
            kind = "optimal" if self.optimum["exact"] else "a lower bound"
            text += f"; within {100 * self.gap:.1f}% of {kind}"
        return text + ")"

    __repr__ = __str__

    def to_dict(self) -> dict[str, Any]:
        d = {"format": PLAN_FORMAT, **asdict(self)}
        d["groups"] = [g.to_dict() for g in self.groups]
        if self.optimum is None:
            del d["optimum"]
        if self.images == 1:
            del d["images"], d["batch_dram_bytes"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path) -> None:
        """Writes the plan as JSON: same model, options and seed, same bytes. A lower bound
        that was stopped by its time limit depends on the machine's speed, so only a proven
        optimum is saved with the plan."""
        from fuser.serde.files import atomic_write

        d = self.to_dict()
        if not (self.optimum or {}).get("exact"):
            d.pop("optimum", None)
        atomic_write(path, (json.dumps(d, indent=2) + "\n").encode())

    @classmethod
    def from_dict(cls, data: dict, source: str = "<plan>") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise FuserError(f'{source}: not a fusion plan (expected "format": "{PLAN_FORMAT}")')
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = {"model", "style", "buffer_bytes", "groups"} - set(fields)
        if missing:
            raise FuserError(f"{source}: fusion plan lacks {', '.join(sorted(missing))}")
        if not isinstance(fields["groups"], list):
            raise FuserError(f'{source}: "groups" must be a list')
        fields["groups"] = [PlanGroup.from_dict(g, source) for g in fields["groups"]]
        fields.setdefault("element_bytes", 1)
        for k in ("dram_bytes", "no_fusion_dram_bytes", "peak_buffer_bytes"):
            fields.setdefault(k, 0)
        return cls(**fields)

    @classmethod
    def load(cls, path) -> Plan:
        path = Path(path)
        if not path.exists():
            raise FuserError(f"{path}: no such plan file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise FuserError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
        return cls.from_dict(data, str(path))

    def annotate(self, graph) -> None:
        """Mark each node of ``graph`` with its group: ``node.meta["fusion_group"]`` is the
        group's index in ``groups`` (topological order), for backends that run groups."""
        owner = {name: k for k, g in enumerate(self.groups) for name in g.ops}
        missing = [n.name for n in graph.nodes if n.name not in owner]
        if missing:
            raise FuserError(f"plan for {self.model} has no group for op '{missing[0]}' of {graph.name}")
        for node in graph.nodes:
            node.meta["fusion_group"] = owner[node.name]

    def masks(self, fg: FusionGraph) -> list[int]:
        """The groups as op bitmasks of ``fg``; raises FuserError when illegal there."""
        groups = [mask_of(fg.index_of(name) for name in g.ops) for g in self.groups]
        problems = partition_problems(fg, groups)
        if problems:
            raise FuserError(f"plan for {self.model} does not fit graph {fg.graph.name}: {problems[0]}")
        return groups


def plan_groups(plan_path, graph: Graph) -> tuple[dict[str, int], list[dict]]:
    """A fusion plan file (`fuser.fusion.plan` JSON) as node name -> group id for
    ``to_relax``, plus the plan's group records (ops, dram_bytes, ...) for reports."""
    plan = Plan.load(plan_path)
    names = {n.name for n in graph.nodes}
    owner: dict[str, int] = {}
    for gid, group in enumerate(plan.groups):
        for op in group.ops:
            if op not in names:
                raise FuserError(
                    f"{plan_path}: plan op {op!r} is not a node of {graph.name} "
                    "(was the plan made for this model and input shape?)"
                )
            if op in owner:
                raise FuserError(
                    f"{plan_path}: plan op {op!r} is in groups {owner[op]} and {gid}; "
                    "each op belongs to one group (make the plan again with fuser fuse --save-plan)"
                )
            owner[op] = gid
    return owner, [g.to_dict() for g in plan.groups]
