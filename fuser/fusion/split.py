"""Splitting invalid fusion groups: ``random`` (the paper's baseline) and ``explain``.

A cut of group G at an inner edge u -> v separates a *down-set* A (closed under
predecessors inside G) from the rest B = G − A, and cuts every edge from A to B:
the skip and parallel edges that would otherwise keep G in one piece are cut with
it. Each edge offers two such cuts, the smallest down-set holding u (u and its
ancestors in G) and the largest one without v (G minus v and its descendants).
Since no edge runs from B back to A, the pieces keep the plan's group graph
acyclic; each side is split further into its weakly connected components.

``random``: cut at a uniformly random inner edge (one of its two cuts, at random)
and recurse on every piece that is still invalid.

Both first take every unfusable op out of the group (it runs alone in any valid
plan; see ``Splitter._isolate``), the paper's pruning of unfusable ops.

``explain``: ask the explainer (``fuser.fusion.explain``) which ops and edges are
to blame, form the cuts of its ``top_edges`` best edges, and
  1. take the cut whose pieces are all valid with the least total DRAM;
  2. else take the cut whose pieces, split recursively the same way, move the
     least DRAM in total: a greedy tree search over the explainer's cuts (the
     ``branch`` most promising of them), memoised by group and pruned by branch
     and bound. For groups of more than
     ``lookahead_ops`` ops (unlimited by default) it instead keeps the largest
     valid piece any cut offers (most ops, then least DRAM) and recurses on the
     rest, the cheaper rule of the paper; on EfficientNet-B3 (LBDF, 256 KB) the
     tree search splits the all-fused network to 47.8 MB of DRAM where peeling
     the largest valid piece reaches 65.6 MB;
  3. else (no cut offers a valid piece, with lookahead off) cut at the
     best-scored edge and recurse on every piece.
Each split step is recorded as an explanation: the culprit ops, the cut edges
and the buffer need before and after.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .cost import CostModel
from .explain import ExactExplainer, Explainer
from .opgraph import FusionGraph, bits

SPLITS = ("random", "explain")


@dataclass
class Cut:
    """One way to cut a group: the down-set side, the pieces and their validity."""

    edge: tuple[int, int]
    down: int
    pieces: list[int]
    valid: list[bool]

    @property
    def all_valid(self) -> bool:
        return all(self.valid)

    def dram(self, cost: CostModel) -> int:
        return sum(cost.cost(p).dram_bytes for p in self.pieces)


def cut_at(fg: FusionGraph, cost: CostModel, mask: int, down: int, edge: tuple[int, int]) -> Cut:
    """Cut the convex group ``mask`` into ``down`` and the rest, each split into components."""
    pieces = fg.convex_components(down) + fg.convex_components(mask & ~down)
    return Cut(edge, down, pieces, [cost.valid(p) for p in pieces])


def edge_cuts(fg: FusionGraph, mask: int, edge: tuple[int, int]) -> list[int]:
    """The down-sets of the two cuts at ``edge`` (one when they coincide)."""
    u, v = edge
    smallest = fg.closure_up(u, mask)
    largest = mask & ~fg.closure_down(v, mask)
    return [smallest] if smallest == largest else [smallest, largest]


def severed_edges(fg: FusionGraph, pieces) -> list[tuple[int, int]]:
    """Edges between different ``pieces`` of one group: what a split cuts."""
    owner = {i: k for k, p in enumerate(pieces) for i in bits(p)}
    return [(u, v) for u in owner for v in fg.succs[u] if owner.get(v, owner[u]) != owner[u]]


@dataclass(frozen=True)
class SplitStep:
    """One split of an invalid group: what was cut, why, and into what."""

    group: int
    culprits: tuple[tuple[int, float], ...]  # (op, score) of the ops to blame
    rule: str
    pieces: tuple[int, ...]


@dataclass
class SplitResult:
    pieces: list[int]
    steps: list[SplitStep] = field(default_factory=list)
    dram: int = 0  # Σ F_D of the pieces


def describe_step(cost: CostModel, step: SplitStep, splitter: str) -> dict:
    """The JSON explanation of a split: culprits, cut edges, buffer need before and after."""
    fg = cost.fg
    mask = step.group
    return {
        "group": fg.group_names(mask),
        "splitter": splitter,
        "rule": step.rule,
        "buffer_bytes_before": cost.cost(mask).buffer_bytes,
        "buffer_limit_bytes": cost.buffer_bytes,
        "culprits": [{"op": fg.names[i], "score_bytes": int(round(s))} for i, s in step.culprits],
        "cut_edges": [
            {
                "from": fg.names[u],
                "to": fg.names[v],
                "tensors": [fg.tensor_names[t] for t in fg.edge_tensors[(u, v)]],
                "bytes": sum(fg.tensor_numel[t] for t in fg.edge_tensors[(u, v)]) * cost.element_bytes,
            }
            for u, v in severed_edges(fg, step.pieces)
        ],
        "pieces": [
            {"ops": fg.group_names(p), "buffer_bytes": cost.cost(p).buffer_bytes, "valid": cost.valid(p)}
            for p in step.pieces
        ],
        "buffer_bytes_after": [cost.cost(p).buffer_bytes for p in step.pieces],
    }


class Splitter:
    """Splits an invalid group into valid ones; memoised per group."""

    name = "?"

    def __init__(self, cost: CostModel):
        self.cost = cost
        self.fg = cost.fg
        self._memo: dict[int, SplitResult] = {}

    def split(self, mask: int) -> SplitResult:
        if self.cost.valid(mask):
            return SplitResult([mask], [], self.cost.cost(mask).dram_bytes)
        result = self._memo.get(mask)
        if result is None:
            stuck = mask & ~self.cost.fusable_mask
            result = self._memo[mask] = self._isolate(mask, stuck) if stuck else self._split(mask)
        return result

    def _isolate(self, mask: int, stuck: int) -> SplitResult:
        """Take the unfusable ops out of the group first: each runs alone in every valid plan.

        The rest falls into components. A component holding both an ancestor and a
        descendant of a removed op (linked only through it) would feed it and wait on
        it, a cycle, so it is cut between the op's ancestors and the others.
        """
        fg = self.fg
        anc, desc = fg.ancestors(), fg.descendants()
        pieces = fg.components(mask & ~stuck)
        for op in bits(stuck):
            upstream, downstream = anc[op] & mask, desc[op] & mask
            refined = []
            for c in pieces:
                if c & upstream and c & downstream:
                    refined += fg.components(c & upstream) + fg.components(c & ~upstream)
                else:
                    refined.append(c)
            pieces = refined
        pieces = [1 << op for op in bits(stuck)] + pieces
        culprits = tuple((op, float(self.cost.cost(1 << op).buffer_bytes)) for op in bits(stuck))
        return self._recurse(pieces, SplitStep(mask, culprits, "unfusable ops alone", tuple(pieces)))

    def _split(self, mask: int) -> SplitResult:
        raise NotImplementedError

    def _recurse(self, pieces: list[int], step: SplitStep) -> SplitResult:
        out = SplitResult([], [step])
        for p in pieces:
            sub = self.split(p)
            out.pieces.extend(sub.pieces)
            out.steps.extend(sub.steps)
            out.dram += sub.dram
        return out

    def describe(self, step: SplitStep) -> dict:
        return describe_step(self.cost, step, self.name)


class RandomSplitter(Splitter):
    """Cut at a random inner edge, recurse on the pieces (the paper's baseline)."""

    name = "random"

    def __init__(self, cost: CostModel, seed: int = 0):
        super().__init__(cost)
        self.rng = random.Random(seed)

    def _split(self, mask: int) -> SplitResult:
        fg = self.fg
        edges = fg.inner_edges(mask)
        edge = edges[self.rng.randrange(len(edges))]
        downs = edge_cuts(fg, mask, edge)
        cut = cut_at(fg, self.cost, mask, downs[self.rng.randrange(len(downs))], edge)
        return self._recurse(cut.pieces, SplitStep(mask, (), "random edge", tuple(cut.pieces)))


class ExplainSplitter(Splitter):
    """Cost-aware recursive split guided by an explainer (see the module docstring)."""

    name = "explain"

    def __init__(
        self,
        cost: CostModel,
        explainer: Explainer | None = None,
        top_edges: int = 8,
        branch: int = 5,
        lookahead_ops: int | None = None,
    ):
        super().__init__(cost)
        self.explainer = explainer or ExactExplainer(cost)
        self.top_edges = top_edges
        self.branch = branch  # cuts whose pieces the tree search splits further
        self.lookahead_ops = lookahead_ops  # larger groups peel their largest valid piece

    def candidate_cuts(self, mask: int, ranked_edges: list[tuple[int, int]]) -> list[Cut]:
        cuts, seen = [], set()
        for edge in ranked_edges[: self.top_edges]:
            for down in edge_cuts(self.fg, mask, edge):
                if down not in seen:
                    seen.add(down)
                    cuts.append(cut_at(self.fg, self.cost, mask, down, edge))
        return cuts

    def _split(self, mask: int) -> SplitResult:
        cost = self.cost
        explanation = self.explainer.explain(mask)
        excess = cost.cost(mask).buffer_bytes - cost.buffer_bytes
        culprits = tuple((i, explanation.op_scores[i]) for i in explanation.culprits(excess))
        cuts = self.candidate_cuts(mask, explanation.ranked_edges())
        complete = [c for c in cuts if c.all_valid]
        if complete:
            best = min(complete, key=lambda c: c.dram(cost))
            return SplitResult(
                best.pieces,
                [SplitStep(mask, culprits, "all pieces valid", tuple(best.pieces))],
                best.dram(cost),
            )
        if self.lookahead_ops is None or mask.bit_count() <= self.lookahead_ops:
            best = self._least_dram_cut(cuts)
            return self._recurse(
                best.pieces, SplitStep(mask, culprits, "least DRAM after splitting", tuple(best.pieces))
            )
        valid_pieces = [p for c in cuts for p, ok in zip(c.pieces, c.valid) if ok]
        if valid_pieces:
            best_piece = min(valid_pieces, key=lambda p: (-p.bit_count(), cost.cost(p).dram_bytes))
            rest = self.fg.convex_components(mask & ~best_piece)
            out = self._recurse(rest, SplitStep(mask, culprits, "largest valid piece", (best_piece, *rest)))
            out.pieces.insert(0, best_piece)
            out.dram += cost.cost(best_piece).dram_bytes
            return out
        first = cuts[0]
        return self._recurse(first.pieces, SplitStep(mask, culprits, "best-scored edge", tuple(first.pieces)))

    def _least_dram_cut(self, cuts: list[Cut]) -> Cut:
        """The cut whose pieces, each split recursively (memoised), move the least DRAM.

        Branch and bound: a piece moves at least its (W + In + Out) however it is
        split, so cuts are tried from the lowest such bound, at most ``branch`` of
        them, and the search stops at the first bound no better than the best total.
        """
        cost = self.cost

        def bound(c: Cut) -> int:
            return sum(
                cost.cost(p).dram_bytes if ok else cost.lower_dram(p) for p, ok in zip(c.pieces, c.valid)
            )

        best, best_total = cuts[0], None
        for lower, _, c in sorted((bound(c), k, c) for k, c in enumerate(cuts))[: self.branch]:
            if best_total is not None and lower >= best_total:
                break
            total = sum(self.split(p).dram for p in c.pieces)
            if best_total is None or total < best_total:
                best, best_total = c, total
        return best


def make_splitter(name: str, cost: CostModel, seed: int = 0, explainer: Explainer | None = None) -> Splitter:
    from fuser.ir import FuserError

    if name == "random":
        return RandomSplitter(cost, seed)
    if name == "explain":
        return ExplainSplitter(cost, explainer)
    raise FuserError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")


def rectify_rate(
    cost: CostModel, groups: list[int], explainer: Explainer | None = None, top: int = 1, seed: int = 0
) -> float:
    """Share of the invalid ``groups`` that one cut can make all-valid, trying the cuts
    (both down-sets) of the explainer's ``top`` best-ranked edges, or of ``top`` random
    edges when ``explainer`` is None (the random split's odds with as many tries)."""
    fg = cost.fg
    rng = random.Random(seed)
    invalid = [g for g in groups if not cost.valid(g)]
    fixed = 0
    for g in invalid:
        if explainer is None:
            edges = fg.inner_edges(g)
            edges = rng.sample(edges, min(top, len(edges)))
        else:
            edges = explainer.explain(g).ranked_edges()[:top]
        fixed += any(
            cut_at(fg, cost, g, down, edge).all_valid for edge in edges for down in edge_cuts(fg, g, edge)
        )
    return fixed / max(len(invalid), 1)
