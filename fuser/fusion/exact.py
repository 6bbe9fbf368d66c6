"""The least-DRAM plan of a small graph under a cost model, for judging searches.

Plans are scored by Σ F_D(G) over their groups, with every group valid, so the
optimum is a set-partitioning problem:

**Chains** (every op feeds only the next): groups are intervals, and dynamic
programming over the op order is exact in O(n·L) (L the longest valid interval):
best[j] = min over valid i..j−1 of best[i] + F_D(ops i..j−1).

**Other graphs**: enumerate every connected, convex, valid group (grown by convex
closure, pruned by validity: F_β only grows as ops are added, so no superset of an
invalid group is valid), then solve the ILP (HiGHS through
``scipy.optimize.milp`` in a worker process, ``fuser.fusion.milp``)

  min Σ_g F_D(g)·x_g    x_g ∈ {0,1}: group g is chosen;  L_o ∈ [0, n−1]: level of op o
  Σ_{g ∋ o} x_g = 1                              every op in exactly one group
  y_uv = Σ_{g ∋ u, v} x_g                        1 iff edge u -> v stays inside a group
  L_v − L_u + y_uv ≥ 1,  L_v − L_u + n·y_uv ≤ n   inside a group levels are equal,
                                                  between groups they climb,
so the group graph is acyclic. The level rows are added only when needed: set
partitioning alone is solved first, and its optimum is the plan's when its groups
happen to be acyclic (so far they always were on real models; ``crossed`` in the tests
is a case where they are not). This is practical up to a few tens of thousands of
candidate groups, a number the buffer sets more than the graph's size: every zoo model
(up to 386 ops) at 128 and 256 KB has at most 10,711 and solves in seconds, while PicoDet
at 1 MB has 115,354; beyond ``max_candidates`` the optimum is reported as not computable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .cost import CostModel
from .opgraph import FusionGraph, bits
from .plan import groups_acyclic


@dataclass
class ExactResult:
    dram_bytes: int
    groups: list[int]
    method: str  # "chain-dp" or "ilp"
    optimal: bool  # False when the ILP stopped at its time limit
    candidates: int  # valid groups considered
    lower_bound: int | None = None  # HiGHS's dual bound when it stopped early

    def __post_init__(self):
        if self.optimal:
            self.lower_bound = self.dram_bytes


def is_chain(fg: FusionGraph) -> bool:
    """Every op has at most one producer and one consumer op, and consecutive ops are linked."""
    return (
        all(len(p) <= 1 for p in fg.preds)
        and all(len(s) <= 1 for s in fg.succs)
        and all(fg.preds[i] == [i - 1] for i in range(1, fg.n))
    )


def chain_optimum(cost: CostModel) -> ExactResult:
    fg = cost.fg
    n = fg.n
    best = [0] + [None] * n
    choice = [0] * (n + 1)
    considered = 0
    for j in range(1, n + 1):
        mask = 0
        for i in range(j - 1, -1, -1):  # the interval i..j-1 grows leftward
            mask |= 1 << i
            if not cost.valid(mask):
                break  # every longer interval holds this one, so is invalid too
            considered += 1
            total = best[i] + cost.cost(mask).dram_bytes
            if best[j] is None or total < best[j]:
                best[j], choice[j] = total, i
    groups, j = [], n
    while j > 0:
        i = choice[j]
        groups.append(sum(1 << k for k in range(i, j)))
        j = i
    return ExactResult(best[n], groups[::-1], "chain-dp", True, considered)


def valid_groups(
    cost: CostModel, max_candidates: int, seconds: float | None = None, within: int | None = None
) -> list[int] | None:
    """Every connected, convex, valid group (None past ``max_candidates``, or ``seconds``); with
    ``within``, only those of its ops.

    Grown by convex closure: a group takes a neighbour ``w`` together with every op on a path
    between them (ops both below one member and above another), so every set visited is convex
    and counted once. Complete: a convex group T holds the closure of any of its subsets, so T
    is reached one neighbour at a time; pruned by validity (no superset of an invalid closure is
    valid) and by ``within`` (a closure leaving it leaves it for good). Why not grow connected
    sets and test convexity at the end (ESU): on PicoDet most connected sets are not convex, and
    listing 2,725 groups of one 120-op region visited enough of them to take 697 s."""
    fg = cost.fg
    within = fg.all_mask if within is None else within
    deadline = None if seconds is None else time.perf_counter() + seconds
    anc, desc = fg.ancestors(), fg.descendants()
    found: list[int] = []
    seen: set[int] = set()
    tried = 0
    for s in bits(within):
        allowed = within & ~((1 << s) - 1)  # groups whose first op is s
        start = 1 << s
        found.append(start)
        stack = [(start, desc[s], anc[s], fg.nbr_mask(s))]
        while stack:
            sub, down, up, near = stack.pop()
            ext = near & allowed & ~sub
            while ext:
                w = ext & -ext
                ext ^= w
                wi = w.bit_length() - 1
                new_down, new_up = down | desc[wi], up | anc[wi]
                bigger = sub | w | (new_down & new_up)
                if bigger & ~allowed or bigger in seen:
                    continue
                tried += 1
                if deadline is not None and not tried % 256 and time.perf_counter() > deadline:
                    return None
                seen.add(bigger)
                if not cost.valid(bigger):
                    continue
                found.append(bigger)
                if len(found) > max_candidates:
                    return None
                stack.append((bigger, new_down, new_up, near | fg.neighbours(bigger & ~sub)))
    return found


def ilp_optimum(
    cost: CostModel, candidates: list[int], time_limit: float, node_limit: int | None = None
) -> ExactResult | None:
    """The least-DRAM legal plan of ``candidates`` (valid groups), or None when no legal plan
    was found. First set partitioning alone, without the level rows: its optimum is a lower
    bound, and when its groups are acyclic, as on every zoo model and the PaddleOCR detector,
    it is the optimum (2-5x sooner: PP-OCRv4's detector BRR 128 KB, 23,319 groups, 8.5 s
    against 38 s). Else the ILP with the level rows in the time left."""
    start = time.perf_counter()
    first = _solve_partition(cost, candidates, time_limit, node_limit, levels=False)
    if first is None:
        return None
    groups, optimal, bound = first
    if groups_acyclic(cost.fg, groups):
        return _result(cost, groups, optimal, len(candidates), bound)
    left = time_limit - (time.perf_counter() - start)
    second = _solve_partition(cost, candidates, left, node_limit, levels=True) if left > 0 else None
    if second is None:
        return None
    groups, optimal, level_bound = second
    # set partitioning relaxes the ILP: its dual bound bounds every legal plan too
    bounds = [b for b in (level_bound, bound) if b is not None]
    return _result(cost, groups, optimal, len(candidates), max(bounds) if bounds else None)


def _result(cost: CostModel, groups: list[int], optimal: bool, candidates: int, bound) -> ExactResult:
    lower = int(np.ceil(bound - 1e-6)) if bound is not None and np.isfinite(bound) else None
    dram = sum(cost.cost(m).dram_bytes for m in groups)
    return ExactResult(dram, groups, "ilp", optimal, candidates, lower)


def _solve_partition(
    cost: CostModel, candidates: list[int], time_limit: float, node_limit: int | None, levels: bool
) -> tuple[list[int], bool, float | None] | None:
    """HiGHS on the set partitioning of the ops into ``candidates``, with the level rows that
    keep the group graph acyclic when ``levels``: (chosen groups, proven optimal, dual bound),
    or None when it found no solution."""
    from scipy.sparse import coo_matrix

    from .milp import solve_milp

    fg = cost.fg
    n, k, edges = fg.n, len(candidates), fg.edges
    n_vars = k + n if levels else k
    rows, cols, vals = [], [], []
    lower, upper = [], []

    def add_row(entries, lo, hi):
        r = len(lower)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lower.append(lo)
        upper.append(hi)

    members = [[] for _ in range(n)]
    for g, mask in enumerate(candidates):
        for i in bits(mask):
            members[i].append(g)
    for i in range(n):
        add_row([(g, 1) for g in members[i]], 1, 1)
    for u, v in edges if levels else ():
        inside = [(g, 1) for g in members[u] if candidates[g] >> v & 1]
        add_row(inside + [(k + v, 1), (k + u, -1)], 1, np.inf)
        add_row([(g, n) for g, _ in inside] + [(k + v, 1), (k + u, -1)], -np.inf, n)
    a = coo_matrix((vals, (rows, cols)), shape=(len(lower), n_vars)).tocsr()
    c = np.array([cost.cost(m).dram_bytes for m in candidates] + [0] * (n_vars - k), dtype=float)
    bounds_lo = np.zeros(n_vars)
    bounds_hi = np.concatenate([np.ones(k), np.full(n_vars - k, n - 1)])
    options = {"time_limit": time_limit, "disp": False}
    if node_limit:
        options["node_limit"] = node_limit
    res = solve_milp(c, a, lower, upper, np.ones(n_vars), bounds_lo, bounds_hi, options)
    if res.x is None:
        return None
    chosen = [candidates[g] for g in range(k) if res.x[g] > 0.5]
    return chosen, res.status == 0, getattr(res, "mip_dual_bound", None)


def exact_optimum(
    cost: CostModel, max_candidates: int = 30_000, time_limit: float = 60.0, max_ops: int | None = None
) -> ExactResult | None:
    """The least-DRAM legal plan of valid groups, or None when not computable (more
    than ``max_candidates`` valid groups, or a non-chain graph of more than ``max_ops`` ops)."""
    if is_chain(cost.fg):
        return chain_optimum(cost)
    if max_ops is not None and cost.fg.n > max_ops:
        return None
    candidates = valid_groups(cost, max_candidates)
    if candidates is None:
        return None
    return ilp_optimum(cost, candidates, time_limit)


def optimality_gap(
    cost: CostModel,
    dram_bytes: int,
    time_limit: float = 20.0,
    block_ops: int | None = None,
    price_rounds: int | None = None,
) -> dict:
    """The proven bound on the least DRAM of any plan of valid groups, to judge a plan moving
    ``dram_bytes``: ``{"bytes", "exact", "method", "plan_bytes"}`` (``plan_bytes``: the least
    DRAM of a legal plan met on the way, a settled one first, or None); see ``optimum_and_plan``."""
    return optimum_and_plan(cost, dram_bytes, time_limit, block_ops, price_rounds)[0]


def optimum_and_plan(
    cost: CostModel,
    dram_bytes: int,
    time_limit: float = 20.0,
    block_ops: int | None = None,
    price_rounds: int | None = None,
    prices: str | None = None,
    block_starts: list[int] | None = None,
) -> tuple[dict, list[int] | None]:
    """``optimality_gap``'s answer and the groups (op bitmasks) of the legal plan of valid groups
    behind its ``plan_bytes`` (None when no plan was met). The bound is the best of, within
    ``time_limit``:

    - chains: the exact chain DP;
    - first, the ILP over every valid group when there are at most 30,000 (listed within an
      eighth of the time), up to half the time: exact when solved, else HiGHS's dual bound.
      Every zoo model at 128 KB and 256 KB in both styles has at most 10,711 valid groups and
      solves in 2 s or less; a large buffer makes far more (PicoDet BRR 1 MB: 115,354), and
      then the relaxations below take the time;
    - the edge-cut relaxation by row generation (``fuser.fusion.bound``, all the time left, a
      half on graphs of more than ``2·BLOCK_OPS`` ops, a quarter for BRR there): exact when it
      closes on a legal plan, else its certified lower bound;
    - on those graphs, the block bound (``fuser.fusion.bound.block_bound``, the rest of the
      time): the relaxation of runs of ``BLOCK_OPS`` ops (BRR; twice that for LBDF, whose
      blocks solve fast; ``block_ops`` when given, or cut at ``block_starts``) solved apart,
      summed and priced (up to ``PRICE_ROUNDS`` rounds, ``price_rounds`` when given;
      ``prices``: a file that keeps them between runs), with the legal plan its blocks' plans
      make. Longer runs cut fewer group seams, so they bound tighter, but their relaxations
      take longer: PicoDet BRR 128 KB, 40 ops a run: 74.81 MB in 126 s; 80: 76.18 MB in 600 s,
      its slowest run 284 s;
    - the trivial bound every plan pays, (W + In + Out)·e of the whole graph.

    Not exact, the gap printed is an upper bound on the true gap. A bound stopped by its
    time limit depends on the machine's speed. ``plan_settled``: the plan came from a bound
    that ended on its own, before any time limit (so the same on every machine)."""
    if is_chain(cost.fg):
        best = chain_optimum(cost)
        return _proven(best.dram_bytes, best.method, best.groups)
    from .bound import BLOCK_OPS, PRICE_ROUNDS, block_bound, cut_bound

    start = time.perf_counter()
    bounds = [(cost.lower_dram(cost.fg.all_mask), "W + In + Out of the graph")]
    plans = []
    candidates = valid_groups(cost, 30_000, time_limit / 8)  # None: too many (or slow) for the ILP
    if candidates is not None:
        exact = ilp_optimum(cost, candidates, time_limit / 2)
        if exact is not None and exact.optimal:
            return _proven(exact.dram_bytes, exact.method, exact.groups)
        if exact is not None:
            plans.append((exact.dram_bytes, exact.groups, False, "ilp"))
        if exact is not None and exact.lower_bound is not None:
            bounds.append((exact.lower_bound, "ilp dual bound"))
    blocks = cost.fg.n > 2 * BLOCK_OPS
    # the whole relaxation closes well on LBDF; on BRR its tiles need many slow rounds, which
    # the blocks do in seconds each
    brr = cost.name == "brr"
    left = time_limit - (time.perf_counter() - start)
    cut = cut_bound(cost, left / ((4 if brr else 2) if blocks else 1))
    if cut.exact:
        return _proven(cut.lower_bytes, "edge-cut MILP", cut.plan)
    bounds.append((cut.lower_bytes, "edge-cut MILP bound"))
    plans.append((cut.plan_bytes, cut.plan, cut.settled, "edge-cut MILP"))
    if blocks:
        share = time_limit - (time.perf_counter() - start)
        # LBDF's blocks solve in a fraction of a second: twice as long, half the seams
        ops = block_ops or (BLOCK_OPS if brr else 2 * BLOCK_OPS)
        rounds = PRICE_ROUNDS if price_rounds is None else price_rounds  # 0: no prices
        block = block_bound(cost, share, ops, price_rounds=rounds, prices=prices, starts=block_starts)
        if block.exact:
            return _proven(block.lower_bytes, "block edge-cut MILP", block.plan)
        bounds.append((block.lower_bytes, "block edge-cut MILP bound"))
        plans.append((block.plan_bytes, block.plan, block.settled, "block edge-cut MILP"))
    best, method = max(bounds, key=lambda b: b[0])
    plan_bytes, plan, settled, plan_from = min(
        # a settled plan first (only such a plan may be adopted), then the cheapest
        (p for p in plans if p[0]),
        key=lambda p: (not p[2], p[0]),
        default=(None, None, False, None),
    )
    answer = {"bytes": best, "exact": False, "method": method, "plan_bytes": plan_bytes}
    answer.update(plan_settled=settled, plan_from=plan_from)
    return answer, plan


def _proven(optimum: int, method: str, groups: list[int]) -> tuple[dict, list[int]]:
    """An exact answer: the optimum and the plan that reaches it."""
    answer = {"bytes": optimum, "exact": True, "method": method, "plan_bytes": optimum}
    answer.update(plan_settled=True, plan_from=method)
    return answer, groups
