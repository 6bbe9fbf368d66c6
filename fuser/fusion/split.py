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
     and bound with cutoffs: a piece is split only as far as needed to learn
     whether its cut can still beat the best cut found (``_bounded``: the
     split, or proof that it moves at least the cutoff), which picks the cut
     a full evaluation would pick. For groups of more than
     ``lookahead_ops`` ops (unlimited by default) it instead keeps the largest
     valid piece any cut offers (most ops, then least DRAM) and recurses on the
     rest, the cheaper rule of the paper; on EfficientNet-B3 (LBDF, 256 KB) the
     tree search splits the all-fused network to 47.8 MB of DRAM where peeling
     the largest valid piece reaches 65.6 MB;
  3. else (no cut offers a valid piece, with lookahead off) cut at the
     best-scored edge and recurse on every piece.
A group whose inner edges form one path (a chain: most groups of a CNN's
backbone) is instead split by **chain DP**, exact there: every split of a chain
is into intervals, and best[j] = min over valid ops i..j−1 of best[i] + F_D(i..j−1)
scans each j's intervals upstream with incremental costs (``upstream_intervals``;
LBDF only: BRR's tile count makes each interval an exact evaluation, so BRR chains
of more than ``EXACT_CHAIN_OPS`` ops keep the tree search).
The tree search may split at most ``tree_nodes`` new groups for one group the
plan asks to split (its memo grows across calls, so later splits reuse what
earlier ones found). Past that, which happens on wide graphs split whole (the
all-fused Inception v2 needs about 100,000 tree nodes), the groups it still has
to split are split by interval DP (below).
**Big groups.** A group of more than ``big_group_ops`` ops (``BIG_GROUP_OPS``)
that the plan asks to split goes to interval DP at once (but a BRR chain of more
than ``EXACT_CHAIN_OPS``, whose interval DP is as slow as its chain DP: the tree
search). A search on a large graph asks to split hundreds of distinct big groups
(Inception v2, NSGA-II 1000 plans, BRR 256 KB: 777 of more than 16 ops), where a
tree search that runs out of nodes takes about 0.35 s and interval DP a few ms;
and the interval DP below splits them as well or better: NSGA-II 2000 plans on
every zoo model at 128 and 256 KB, LBDF and BRR, moves less DRAM on 39 of 68 rows
and the same on the rest (``benchmarks/results/fusion_search.txt``; planning
time: ``planner_scaling.txt``). With ``big_tree_nodes`` above 0 a big group's
interval DP is instead the cutoff of a tree search of that many nodes: it gets
the tree's split when that moves less, else the interval DP's. Such a search
shares only full tree-search results with later splits; what it found with
interval-DP answers inside it holds for that search only, and a requested split
so found is kept as answered.
**Interval DP**: with a group's ops in topological order o_1..o_k, every
interval o_i..o_j is convex, its weakly connected components are legal pieces and
pieces of consecutive intervals keep the group graph acyclic; so
  best[j] = min over i of best[i] + Σ F_D(components of o_i..o_{j−1}),
over intervals whose components are all valid (an interval holding an invalid
component is never extended: F_β only grows with ops added), is the least-DRAM
split into interval pieces, in O(k·L) component evaluations (L the longest
all-valid interval). An interval cuts every branch it spans at one point, so the
DP runs in three orders (``interval_orders``: op order, and depth first from the
sources and from the sinks, which list a branch's ops together), each split is
merge-polished (``fuser.fusion.polish.merge_polish``: neighbouring pieces merged,
single ops moved, while DRAM falls), and the least is kept. best[j] depends only
on o_1..o_j, so groups whose order starts alike share the DP's rows.
Each split step is recorded as an explanation: the culprit ops, the cut edges
and the buffer need before and after.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from .cost import CostModel
from .explain import ExactExplainer, Explainer
from .opgraph import FusionGraph, bits
from .polish import merge_polish

SPLITS = ("random", "explain")
TREE_NODES = 2000  # groups one split's tree search may split before interval DP takes over
# Groups of more than BIG_GROUP_OPS ops go to interval DP at once (BIG_TREE_NODES > 0: interval DP
# is the cutoff of a tree search of that many nodes). None: every group gets the tree search.
BIG_GROUP_OPS: int | None = 16
BIG_TREE_NODES = 0
EXACT_CHAIN_OPS = 48  # longest chain split by DP on exact costs (BRR: O(k·L²) cost work)


@dataclass
class Cut:
    """One way to cut a group: the down-set side and the pieces. A piece's validity is
    looked up only when asked (``cost.valid`` is memoised): most cuts the explain split
    weighs are decided by one large invalid piece, and the others need no exact F_β."""

    edge: tuple[int, int]
    down: int
    pieces: list[int]
    cost: CostModel

    @property
    def valid(self) -> list[bool]:
        return [self.cost.valid(p) for p in self.pieces]

    @property
    def all_valid(self) -> bool:
        return all(map(self.cost.valid, self.pieces))

    def dram(self, cost: CostModel) -> int:
        return sum(cost.cost(p).dram_bytes for p in self.pieces)


def cut_at(fg: FusionGraph, cost: CostModel, mask: int, down: int, edge: tuple[int, int]) -> Cut:
    """Cut the convex group ``mask`` into ``down`` and the rest, each split into components.
    A side that is one closure of the edge's ends (``edge_cuts`` makes one side so) is one
    component: in a convex set every op of it is linked to that end."""
    u, v = edge
    rest = mask & ~down
    lower = [down] if down == fg.closure_up(u, mask) else fg.convex_components(down)
    upper = [rest] if rest == fg.closure_down(v, mask) else fg.convex_components(rest)
    return Cut(edge, down, lower + upper, cost)


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


def interval_orders(fg: FusionGraph, mask: int) -> list[list[int]]:
    """Three topological orders of the ops of ``mask`` for interval DP: op order, and depth
    first from the sources (successors in op order) and from the sinks (predecessors), each
    listing a branch's ops together. An interval of one order cuts parallel branches at one
    point; the depth-first orders cut each branch on its own (PicoDet's heads)."""

    def depth_first(roots, nexts) -> list[int]:
        seen, post = 0, []
        for root in roots:
            if seen >> root & 1:
                continue
            seen |= 1 << root
            stack = [(root, iter(nexts(root)))]
            while stack:
                op, rest = stack[-1]
                for nxt in rest:
                    if not seen >> nxt & 1:
                        seen |= 1 << nxt
                        stack.append((nxt, iter(nexts(nxt))))
                        break
                else:
                    stack.pop()
                    post.append(op)
        return post

    ops = bits(mask)
    sources = [op for op in ops if not fg.pred_mask[op] & mask]
    sinks = [op for op in reversed(ops) if not fg.succ_mask[op] & mask]
    from_sources = depth_first(sources, lambda op: bits(fg.succ_mask[op] & mask))[::-1]
    from_sinks = depth_first(sinks, lambda op: reversed(bits(fg.pred_mask[op] & mask)))
    return [ops, from_sources, from_sinks]


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
        tree_nodes: int = TREE_NODES,
    ):
        super().__init__(cost)
        self.explainer = explainer or ExactExplainer(cost)
        self.top_edges = top_edges
        self.branch = branch  # cuts whose pieces the tree search splits further
        self.lookahead_ops = lookahead_ops  # larger groups peel their largest valid piece
        self.tree_nodes = tree_nodes
        self._nodes_left: int | None = None  # set while a tree search runs
        self._scans: dict[int, tuple[list[int], np.ndarray, int]] = {}  # chain DP, by last op
        self._chain_dp: dict[int, tuple[list[int], list, list[int], list[int]]] = {}  # by first op
        self.big_group_ops = BIG_GROUP_OPS  # None: off; else larger groups get interval DP first
        self.big_tree_nodes = BIG_TREE_NODES
        self._interval_cap = False  # set while a big group's tree search runs: interval DP bounds
        self._cutoffs = False  # and pieces are split with cutoffs (``_least_dram_cut``)
        # A big group's search shares only full tree-search results (``_memo``, ``_at_least``):
        # what it found with interval-DP answers (past its node budget, or its interval DP)
        # holds for that search only, and the split asked for is kept as answered (``_requested``).
        self._at_least: dict[int, int] = {}  # groups whose split provably moves at least this
        self._partial = 0  # interval-DP answers so far (a result found after one is partial)
        self._search_memo: dict[int, SplitResult] = {}
        self._search_at_least: dict[int, int] = {}
        self._requested: dict[int, SplitResult] = {}
        self._intervals: dict[int, SplitResult] = {}  # interval_split, by group
        self._interval_dp: dict[tuple[int, int], tuple[list[int], list, list]] = {}  # by order, first op

    def split(self, mask: int) -> SplitResult:
        if self._nodes_left is not None:  # inside a tree search: its budget applies
            result = self._bounded(mask, None)
            assert result is not None  # no cutoff, no refusal
            return result
        result = self._requested.get(mask)
        if result is not None:
            return result
        big = self.big_group_ops is not None and mask.bit_count() > self.big_group_ops
        if big and mask.bit_count() > EXACT_CHAIN_OPS and not self.cost.incremental_intervals:
            big = not self.is_chain(mask)  # a long BRR chain: interval DP is O(k·L) exact costs
        self._nodes_left = self.big_tree_nodes if big else self.tree_nodes
        self._interval_cap = self._cutoffs = big
        partial = self._partial
        try:
            result = self._bounded(mask, None)
        finally:
            self._nodes_left = None
            self._interval_cap = self._cutoffs = False
            self._search_memo.clear()
            self._search_at_least.clear()
        if big and self._partial != partial:
            self._requested[mask] = result
        return result

    def interval_split(self, mask: int) -> SplitResult:
        """The least-DRAM of the splits of ``mask`` into the components of intervals of its
        three ``interval_orders``, each merge-polished (see the module docstring); memoised."""
        result = self._intervals.get(mask)
        if result is None:
            result = self._intervals[mask] = self._interval_split(mask)
        return result

    def _interval_split(self, mask: int) -> SplitResult:
        best = None
        orders = interval_orders(self.fg, mask)
        for kind, ops in enumerate(orders):
            if ops in orders[:kind]:
                continue  # the same split again
            pieces = merge_polish(self.cost, self._intervals_in(ops, kind))
            dram = self.cost.dram(pieces)
            if best is None or dram < best[0]:
                best = (dram, pieces)
        dram, pieces = best
        rule = "interval DP (best of three topological orders, merge-polished)"
        return SplitResult(pieces, [SplitStep(mask, (), rule, tuple(pieces))], dram)

    def _intervals_in(self, ops: list[int], kind: int = 0) -> list[int]:
        """The least-DRAM split of the group of ``ops`` (in a topological order) into the
        components of intervals of that order. best[j] depends only on ``ops[:j]`` (a
        component's cost does not depend on the group around it), so the DP of the last
        sequence of this ``kind`` of order with the same first op is kept and its common
        prefix reused (``chain_split``'s sharing): the groups a search asks to split differ
        by a few ops."""
        cost, fg = self.cost, self.fg
        k = len(ops)
        cached = self._interval_dp.get((kind, ops[0]))
        done = 0
        if cached is not None:
            old_ops, best, choice = cached
            limit = min(k, len(old_ops))
            while done < limit and old_ops[done] == ops[done]:
                done += 1
            best, choice = best[: done + 1], choice[: done + 1]
        else:
            best, choice = [0], [()]
        cost_of, valid, nbr_mask = cost.cost, cost.valid, fg.nbr_mask  # the hot loop's lookups
        for j in range(done + 1, k + 1):
            comps: list[tuple[int, int]] = []  # (component, its F_D)
            total = 0
            least, pick = None, ()
            for i in range(j - 1, -1, -1):
                op = ops[i]
                joined, near = 1 << op, nbr_mask(op)
                kept = []
                for c in comps:
                    if c[0] & near:
                        joined |= c[0]
                        total -= c[1]
                    else:
                        kept.append(c)
                if not valid(joined):
                    break  # every longer interval holds this component
                dram = cost_of(joined).dram_bytes
                comps = [*kept, (joined, dram)]
                total += dram
                if least is None or best[i] + total < least:
                    least, pick = best[i] + total, (i, *(c for c, _ in comps))
            best.append(least)
            choice.append(pick)
        self._interval_dp[(kind, ops[0])] = (ops, best, choice)
        pieces, j = [], k
        while j > 0:
            i, *comps = choice[j]
            pieces[:0] = sorted(comps)
            j = i
        return pieces

    def is_chain(self, mask: int) -> bool:
        """Whether the group's inner edges form one path through its ops in topological order."""
        fg = self.fg
        ops = bits(mask)
        for k, op in enumerate(ops):
            if fg.pred_mask[op] & mask != (1 << ops[k - 1] if k else 0):
                return False
            if fg.succ_mask[op] & mask != (1 << ops[k + 1] if k + 1 < len(ops) else 0):
                return False
        return True

    def _scan(self, ops: list[int], j: int, group: int) -> tuple[list[int], np.ndarray, int]:
        """(interval masks, their F_D, count n) of ``ops[i:j]`` for i = j−1, ..., j−n, the
        intervals ending at ``ops[j−1]`` while valid, reusing the scan of an earlier chain
        group that ends at the same op: an interval's cost does not depend on the group
        around it, and inside a chain group the path upstream of an op is unique, so a
        cached interval that lies inside this group is this group's."""
        end = ops[j - 1]
        cached = self._scans.get(end)
        if cached is not None:
            intervals, drams, stop = (
                cached  # stop: the first invalid interval, 0 when the scan ran out of ops
            )
            if len(intervals) >= j and intervals[j - 1] & ~group == 0:
                return intervals, drams, j
            if stop and stop & ~group == 0:
                return intervals, drams, len(intervals)
        scan = list(self.cost.upstream_intervals(ops, j))
        intervals = [interval for _, interval, _ in scan]
        drams = np.array([dram for _, _, dram in scan], dtype=np.int64)
        stop = intervals[-1] | 1 << ops[j - 1 - len(scan)] if len(scan) < j else 0
        self._scans[end] = (intervals, drams, stop)
        return intervals, drams, len(intervals)

    def chain_split(self, mask: int) -> SplitResult:
        """The least-DRAM split of a chain group: its pieces are intervals, so DP over the
        chain is exact: best[j] = min over valid ops i..j−1 of best[i] + F_D(ops i..j−1)
        (ties: the longest last piece). best[j] depends only on the first j ops, so chain
        groups that start with the same ops share it: the DP of the last such group is kept
        per first op and extended."""
        ops = bits(mask)
        k = len(ops)
        cached = self._chain_dp.get(ops[0])
        done = 0  # best[0..done] are known
        if cached is not None:
            old_ops, best, choice, piece = cached
            limit = min(k, len(old_ops))
            while done < limit and old_ops[done] == ops[done]:
                done += 1
            best, choice, piece = best[: done + 1], choice[: done + 1], piece[: done + 1]
        else:
            best, choice, piece = np.zeros(1, np.int64), [0], [0]
        if done < k:
            best = np.concatenate([best, np.zeros(k - done, np.int64)])
            for j in range(done + 1, k + 1):
                intervals, drams, n = self._scan(ops, j, mask)
                totals = best[j - n : j][::-1] + drams[:n]  # x = 0: the interval of ops[j-1] alone
                x = int(totals.argmin())  # the first least: as a scan from x = 0 with strict <
                best[j] = totals[x]
                choice.append(j - 1 - x)
                piece.append(intervals[x])
            self._chain_dp[ops[0]] = (ops, best, choice, piece)
        pieces, j = [], k
        while j > 0:
            pieces.append(piece[j])
            j = choice[j]
        pieces.reverse()
        step = SplitStep(mask, (), "chain DP (least DRAM over every split of a chain)", tuple(pieces))
        return SplitResult(pieces, [step], int(best[k]))

    def candidate_cuts(self, mask: int, ranked_edges: list[tuple[int, int]]) -> list[Cut]:
        """The cuts of the ``top_edges`` best edges (both down-sets, ``edge_cuts``), each once:
        ``cut_at`` inline, where the closure side of each cut is one component."""
        fg, cost = self.fg, self.cost
        up_closed, down_closed = fg.up_closed(), fg.down_closed()
        cuts, seen = [], set()
        for edge in ranked_edges[: self.top_edges]:
            u, v = edge
            smallest = up_closed[u] & mask
            upper = down_closed[v] & mask
            largest = mask & ~upper
            if smallest not in seen:
                seen.add(smallest)
                rest = mask & ~smallest
                pieces = [smallest, rest] if rest == upper else [smallest, *fg.convex_components(rest)]
                cuts.append(Cut(edge, smallest, pieces, cost))
            if largest != smallest and largest not in seen:
                seen.add(largest)
                cuts.append(Cut(edge, largest, [*fg.convex_components(largest), upper], cost))
        return cuts

    def _bounded(self, mask: int, limit: int | None) -> SplitResult | None:
        """``split(mask)``, or None when that provably moves ``limit`` bytes or more (the
        tree search's cutoff: such a split cannot win); None is remembered as a bound."""
        cost = self.cost
        if cost.valid(mask):
            return SplitResult([mask], [], cost.cost(mask).dram_bytes)
        result = self._memo.get(mask) or self._search_memo.get(mask)
        if result is not None:
            return result
        if limit is not None:
            known = max(self._at_least.get(mask, -1), self._search_at_least.get(mask, -1))
            if known >= limit:
                return None
        partial = self._partial
        stuck = mask & ~cost.fusable_mask
        result = self._isolate(mask, stuck) if stuck else self._split(mask, limit)
        # found with interval-DP leaves: this (big group's) search's only
        partial = self._cutoffs and self._partial != partial
        if result is None:
            bounds = self._search_at_least if partial else self._at_least
            bounds[mask] = max(limit, bounds.get(mask, -1))
        else:
            (self._search_memo if partial else self._memo)[mask] = result
        return result

    def _split(self, mask: int, limit: int | None = None) -> SplitResult | None:
        cost = self.cost
        if (cost.incremental_intervals or mask.bit_count() <= EXACT_CHAIN_OPS) and self.is_chain(mask):
            return self.chain_split(mask)
        self._nodes_left -= 1
        if self._nodes_left < 0:
            self._partial += 1
            return self.interval_split(mask)
        explanation = self.explainer.explain(mask)
        excess = cost.cost(mask).buffer_bytes - cost.buffer_bytes
        culprits = tuple((i, explanation.op_scores[i]) for i in explanation.culprits(excess))
        cuts = self.candidate_cuts(mask, explanation.ranked_edges(self.top_edges))
        fallback = None
        if limit is None and self._interval_cap:  # a big group asked for: interval DP bounds the search
            fallback = self.interval_split(mask)
            limit = fallback.dram
        complete = [c for c in cuts if c.all_valid]
        if complete:
            best = min(complete, key=lambda c: c.dram(cost))
            if fallback is not None and fallback.dram < best.dram(cost):
                self._partial += 1
                return fallback
            return SplitResult(
                best.pieces,
                [SplitStep(mask, culprits, "all pieces valid", tuple(best.pieces))],
                best.dram(cost),
            )
        if self.lookahead_ops is None or mask.bit_count() <= self.lookahead_ops:
            best = self._least_dram_cut(cuts, limit)
            if best is None:
                if fallback is not None:
                    self._partial += 1
                return fallback
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

    def _least_dram_cut(self, cuts: list[Cut], limit: int | None = None) -> Cut | None:
        """The cut whose pieces, each split recursively (memoised), move the least DRAM;
        None when every cut provably moves ``limit`` bytes or more.

        Branch and bound: a piece moves at least its (W + In + Out) however it is
        split, so cuts are tried from the lowest such bound, at most ``branch`` of
        them, and the search stops at the first bound no better than the best total.
        In a big group's search, a cut is dropped as soon as the splits of its first
        pieces and the bounds of the rest reach the best total (or ``limit``), and each
        piece is split with the cutoff that leaves it: what it would have to beat to
        matter. A cut so dropped could not have won (ties keep the earlier cut), so the
        cut chosen is the one a full evaluation of every tried cut would choose (the
        plain search evaluates them in full: what it leaves unsplit would change which
        groups later reach its node budget, so its plans would change).
        """
        cost = self.cost
        bound = cost.piece_dram_bound
        best, best_total = None, None
        tried = sorted((sum(map(bound, c.pieces)), k, c) for k, c in enumerate(cuts))[: self.branch]
        if not self._cutoffs:  # the plain search: every tried cut's pieces split in full
            for lower, _, c in tried:
                if best_total is not None and lower >= best_total:
                    break
                total = sum(self._bounded(p, None).dram for p in c.pieces)
                if best_total is None or total < best_total:
                    best, best_total = c, total
            return best
        for lower, _, c in tried:
            cap = limit if best_total is None else best_total if limit is None else min(best_total, limit)
            if cap is not None and lower >= cap:
                break
            total, rest = 0, lower
            for p in c.pieces:
                rest -= bound(p)
                result = self._bounded(p, None if cap is None else cap - total - rest)
                if result is None:
                    break
                total += result.dram
                if cap is not None and total + rest >= cap:
                    break
            else:
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
