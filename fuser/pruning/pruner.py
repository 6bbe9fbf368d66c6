"""Structured pruning of a Graph: analyse -> score -> choose -> (compensate) -> rewrite.

Choosing (``select``): per group, ``keep = max(1, int(C·(1 − r)))`` channels stay, rounded
up to a multiple of ``round_to`` (Torch-Pruning's per-layer convention, r the group's ratio;
C counts the group's prunable channels), the lowest-scored go. With ``global_pruning``
the lowest-scored channels over all groups go until the ratio of all prunable channels is
reached, each group keeping at least one channel (and ``round_to``). Frozen channels never
go. Afterwards no tensor axis may lose all its positions (a Split section whose channels all
lost): the best-scored channel of such an axis is put back.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fuser.ir import FuserError, Graph, Node

from .apply import apply_pruning
from .deps import Blocked, DependencyAnalysis, analyze_dependencies, layer_name
from .importance import CRITERIA, NORMALIZERS, REDUCTIONS, group_scores, taylor_gradients

Progress = Callable[[str], None]


@dataclass
class GroupReport:
    index: int
    name: str
    layers: list[str]  # readable names of the layers that create the channels
    sources: list[str]  # their node names
    channels: int
    kept: int
    prunable: int  # channels that could go (not frozen)
    frozen_reason: str
    nodes: list[str]  # layers whose weights the group slices
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    removed: list[int] = field(default_factory=list)  # channel indices (group order)


@dataclass
class PruneReport:
    ratio: float
    criterion: str
    global_pruning: bool
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    groups: list[GroupReport]
    blocked: list[Blocked]
    seconds: float
    # the analysis behind the decisions, for inspection (not serialized)
    analysis: DependencyAnalysis | None = field(default=None, repr=False, compare=False)
    kept_raw: np.ndarray | None = field(default=None, repr=False, compare=False)

    def kept_positions(self, member) -> np.ndarray:
        """Indices along ``member``'s axis (of the unpruned constant) that stayed."""
        return np.flatnonzero(self.kept_raw[member.ids])

    @property
    def channels_removed(self) -> int:
        return sum(g.channels - g.kept for g in self.groups)

    def to_dict(self, with_indices: bool = False) -> dict:
        groups = []
        for g in self.groups:
            d = asdict(g)
            if not with_indices:
                d.pop("removed")
            groups.append(d)
        return {
            "ratio": self.ratio,
            "criterion": self.criterion,
            "global_pruning": self.global_pruning,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "channels_removed": self.channels_removed,
            "groups": groups,
            "blocked": [asdict(b) for b in self.blocked],
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        from fuser.units import human

        pruned = [g for g in self.groups if g.kept < g.channels]
        lines = [
            f"pruned {len(pruned)} of {len(self.groups)} channel groups "
            f"({self.channels_removed} channels, criterion {self.criterion}): "
            f"MACs {human(self.macs_before)} -> {human(self.macs_after)}, "
            f"params {human(self.params_before)} -> {human(self.params_after)}"
        ]
        lines += [f"  blocked: {b}" for b in self.blocked]
        return "\n".join(lines)


def _matcher(patterns: Iterable[str]) -> Callable[[Node], bool]:
    """A node matches a pattern by its name or a constant input's name (glob, or a module
    path: 'layer4.1.conv2' matches the weight 'layer4.1.conv2.weight')."""
    pats = list(patterns)

    def names(node: Node) -> list[str]:
        return [node.name, layer_name(node)] + [v.name for v in node.inputs if v is not None and v.is_const]

    def match(node: Node) -> bool:
        return any(fnmatch.fnmatchcase(n, p) or n.startswith(p + ".") for p in pats for n in names(node))

    return match


def _keep_count(c: int, ratio: float, round_to: int | None) -> int:
    keep = max(1, int(c * (1.0 - ratio) + 1e-6))
    if round_to and round_to > 1:
        keep = min(c, -(-keep // round_to) * round_to)
    return keep


def select(
    analysis: DependencyAnalysis,
    scores: dict[int, np.ndarray],
    ratio: float,
    *,
    global_pruning: bool = False,
    round_to: int | None = None,
    ratio_of: Callable[[Any], float] | None = None,
) -> dict[int, np.ndarray]:
    """Per prunable group: a bool array over its channels, True = removed."""
    removed = {}
    groups = analysis.prunable_groups
    if not global_pruning:
        for g in groups:
            r = ratio_of(g) if ratio_of else ratio
            cand = np.flatnonzero(g.prunable)
            n_go = len(cand) - _keep_count(len(cand), r, round_to)
            order = cand[np.argsort(scores[g.index][cand], kind="stable")]
            gone = np.zeros(g.size, bool)
            gone[order[: max(n_go, 0)]] = True
            removed[g.index] = gone
        return removed
    pool = [(float(scores[g.index][k]), g.index, int(k)) for g in groups for k in np.flatnonzero(g.prunable)]
    pool.sort()
    target = len(pool) - int(len(pool) * (1.0 - ratio) + 1e-6)
    left = {g.index: int(g.prunable.sum()) for g in groups}
    floor = {g.index: _keep_count(int(g.prunable.sum()), 1.0, round_to) for g in groups}
    gone_sets = {g.index: np.zeros(g.size, bool) for g in groups}
    taken = 0
    for _, gi, k in pool:
        if taken >= target:
            break
        if left[gi] - 1 < floor[gi]:
            continue
        gone_sets[gi][k] = True
        left[gi] -= 1
        taken += 1
    if round_to and round_to > 1:  # put the best-scored back until a multiple remains
        for g in groups:
            gone = gone_sets[g.index]
            keep = int(g.prunable.sum() - gone.sum())
            want = min(int(g.prunable.sum()), -(-keep // round_to) * round_to)
            back = np.flatnonzero(gone)
            back = back[np.argsort(-scores[g.index][back], kind="stable")]
            gone[back[: want - keep]] = False
    return gone_sets


def kept_raw_ids(analysis: DependencyAnalysis, removed: dict[int, np.ndarray]) -> np.ndarray:
    """Per raw id: True when its channel stays."""
    gone_roots = np.zeros(len(analysis.root_of), bool)
    for g in analysis.groups:
        gone = removed.get(g.index)
        if gone is not None:
            gone_roots[g.channels[gone]] = True
    return ~gone_roots[analysis.root_of] if len(analysis.root_of) else np.zeros(0, bool)


def repair_empty_axes(
    analysis: DependencyAnalysis, removed: dict[int, np.ndarray], scores: dict[int, np.ndarray]
) -> int:
    """Put back the best channel of any axis that would lose every position."""
    where = {int(r): (g.index, k) for g in analysis.groups for k, r in enumerate(g.channels)}
    arrays = [ids for labels in analysis.labels.values() for ids in labels.values()]
    arrays += [m.ids for m in analysis.members]
    restored = 0
    changed = True
    while changed:
        changed = False
        kept = kept_raw_ids(analysis, removed)
        for ids in arrays:
            if len(ids) and not kept[ids].any():
                best = max(
                    (where[int(r)] for r in np.unique(analysis.root_of[ids]) if int(r) in where),
                    key=lambda gk: scores[gk[0]][gk[1]],
                )
                removed[best[0]][best[1]] = False
                restored += 1
                changed = True
                break
    return restored


# Data movement on constants, folded before analysis at any size (fold_constants stops at a
# million elements): a weight written as Transpose(W) must be a constant to be sliced.
_WEIGHT_VIEWS = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"}


def materialize_weight_views(graph: Graph) -> int:
    """Replace Transpose/Reshape/... of constants by the constants they compute."""
    count = 0
    for node in list(graph.nodes):
        if (
            node.op not in _WEIGHT_VIEWS
            or not all(v is None or v.is_const for v in node.inputs)
            or graph.is_output(node.outputs[0])
            or not node.outputs[0].is_static
        ):
            continue
        x = node.inputs[0].const
        y = np.transpose(x, node.attr("perm")) if node.op == "Transpose" else x.reshape(node.outputs[0].shape)
        graph.replace_all_uses_with(
            node.outputs[0], graph.const(np.ascontiguousarray(y), node.outputs[0].name)
        )
        graph.erase_node(node)
        count += 1
    return count


def prune_graph(
    graph: Graph,
    ratio: float = 0.5,
    criterion: str = "l2",
    *,
    data: Any = None,
    loss: Callable | None = None,
    global_pruning: bool = False,
    group_reduction: str = "mean",
    normalizer: str | None = "mean",
    round_to: int | None = None,
    ignored: Sequence[str] = (),
    layer_ratios: dict[str, float] | None = None,
    heads: bool = False,
    progress: Progress | None = None,
) -> PruneReport:
    """Prune ``graph`` in place; see ``fuser.prune`` for the arguments."""
    from fuser.analysis import analyze

    t0 = time.perf_counter()
    step = progress or (lambda s: None)
    _check_args(ratio, criterion, group_reduction, normalizer, round_to, layer_ratios, data)
    _check_static(graph)
    _check_patterns_match(graph, ignored, layer_ratios)
    before = analyze(graph)
    step("dependencies")
    if ratio == 0 and not any((layer_ratios or {}).values()):
        graph = graph.copy()  # nothing will go: analyse a copy, leave the caller's untouched
    materialize_weight_views(graph)
    analysis = analyze_dependencies(graph, _matcher(ignored), heads=heads)
    step("importance")
    grads = taylor_gradients(graph, data, loss) if criterion == "taylor" else None
    moments = saliency = None
    if criterion == "obs":
        from fuser.pruning import obs

        moments = obs.propagate(graph, analysis)
        saliency = obs.saliency(analysis, moments)
    scores = group_scores(
        analysis, criterion, reduction=group_reduction, normalizer=normalizer, grads=grads, saliency=saliency
    )
    step("selection")
    removed = select(
        analysis,
        scores,
        ratio,
        global_pruning=global_pruning,
        round_to=round_to,
        ratio_of=_ratio_of(graph, ratio, layer_ratios),
    )
    repair_empty_axes(analysis, removed, scores)
    kept_raw = kept_raw_ids(analysis, removed)
    step("rewrite")
    if not kept_raw.all():
        extra = []
        if criterion == "obs":
            extra = obs.compensate(graph, analysis, moments, kept_raw)
        apply_pruning(graph, analysis, kept_raw, extra)
    after = analyze(graph) if not kept_raw.all() else before
    return PruneReport(
        ratio=ratio,
        criterion=criterion,
        global_pruning=global_pruning,
        macs_before=before["macs"],
        macs_after=after["macs"],
        params_before=before["params"],
        params_after=after["params"],
        groups=_group_reports(analysis, removed, before, after),
        blocked=list(analysis.blocked),
        seconds=round(time.perf_counter() - t0, 3),
        analysis=analysis,
        kept_raw=kept_raw,
    )


def _ratio_of(graph: Graph, ratio: float, layer_ratios: dict[str, float] | None):
    """group -> its ratio: the first pattern matching one of its source layers, else ``ratio``."""
    if not layer_ratios:
        return None
    match = {p: _matcher([p]) for p in layer_ratios}

    def ratio_of(group) -> float:
        for p, r in layer_ratios.items():
            if any(match[p](graph.node_by_name(s)) for s in group.sources):
                return r
        return ratio

    return ratio_of


def _check_patterns_match(graph: Graph, ignored: Sequence[str], layer_ratios: dict | None) -> None:
    """A pattern of ``ignored`` or ``layer_ratios`` that names no node (a typo) is refused:
    ignoring it would prune what the caller meant to protect or to spare."""
    for option, patterns in (("ignored", list(ignored)), ("layer_ratios", list(layer_ratios or {}))):
        for p in patterns:
            match = _matcher([p])
            if not any(match(n) for n in graph.nodes):
                examples = ", ".join(n.name for n in graph.nodes if n.op in ("Conv", "Gemm", "MatMul"))[:160]
                raise FuserError(
                    f"{graph.source}: {option} pattern '{p}' matches no node; nodes are named like "
                    f"{examples or graph.nodes[0].name} (fuser info MODEL --nodes lists them)"
                )


def _check_static(graph: Graph) -> None:
    for n in graph.nodes:
        for v in n.outputs:
            if (v.uses or graph.is_output(v)) and not v.is_static:
                raise FuserError(
                    f"{graph.source}: node '{n.name}' ({n.op}): output '{v.name}' has "
                    f"no static shape ({v.type_str()}); pruning needs static shapes "
                    "(fix the input shapes, e.g. --input-shape x:1,3,224,224)"
                )


def _check_args(ratio, criterion, reduction, normalizer, round_to, layer_ratios, data):
    for r in [ratio] + list((layer_ratios or {}).values()):
        if not (isinstance(r, (int, float)) and 0.0 <= r < 1.0):
            raise FuserError(f"pruning ratio {r!r}: must be in [0, 1)")
    if criterion not in CRITERIA:
        raise FuserError(f"criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
    if reduction not in REDUCTIONS:
        raise FuserError(f"group reduction '{reduction}': choose one of {', '.join(REDUCTIONS)}")
    if normalizer not in NORMALIZERS:
        raise FuserError(f"normalizer '{normalizer}': choose one of {', '.join(str(n) for n in NORMALIZERS)}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise FuserError(f"round_to {round_to!r}: must be a positive integer")
    if criterion == "taylor" and data is None:
        raise FuserError(
            "criterion 'taylor' needs data (inputs, or (inputs, targets)); 'obs' is the data-free alternative"
        )


def _group_reports(
    analysis: DependencyAnalysis, removed: dict[int, np.ndarray], before: dict, after: dict
) -> list[GroupReport]:
    cost_before = {r["name"]: r for r in before["per_node"]}
    cost_after = {r["name"]: r for r in after["per_node"]}
    out = []
    for g in analysis.groups:
        gone = removed.get(g.index, np.zeros(g.size, bool))
        nodes = list(dict.fromkeys(m.node.name for m in g.members))

        def total(costs, key, nodes=nodes):
            return int(sum(costs[n][key] for n in nodes if n in costs))

        out.append(
            GroupReport(
                index=g.index,
                name=g.name,
                layers=g.layers,
                sources=g.sources,
                channels=g.size,
                kept=int(g.size - gone.sum()),
                prunable=int(g.prunable.sum()),
                frozen_reason=g.frozen_reason if not g.prunable.all() else "",
                nodes=nodes,
                params_before=total(cost_before, "params"),
                params_after=total(cost_after, "params"),
                macs_before=total(cost_before, "macs"),
                macs_after=total(cost_after, "macs"),
                removed=[int(k) for k in np.flatnonzero(gone)],
            )
        )
    return out


def random_channels(analysis, ratio: float, seed: int = 0) -> set[int]:
    """Channel ids a ``ratio`` prune would remove from each prunable group, chosen at random
    (seeded): what the zero-contribution checks zero out."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for g in analysis.prunable_groups:
        cand = np.flatnonzero(g.prunable)
        n = len(cand) - _keep_count(len(cand), ratio, None)
        chosen |= {int(r) for r in g.channels[rng.choice(cand, n, replace=False)]}
    return chosen
