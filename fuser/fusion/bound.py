"""A certified lower bound on the least DRAM of any plan, exact when it closes: row generation
on an edge-cut relaxation of the partition problem, solved by HiGHS (``scipy.optimize.milp``, in a
worker process whose time limit holds: ``fuser.fusion.milp``).

Why it is a bound. Every legal plan of valid groups (``fuser.fusion.plan``) sets, per
producer->consumer edge e of the op graph, z_e = 1 when its ends are in different groups.
Its DRAM, Σ F_D over its groups (``fuser.fusion.cost``), is

  Σ_G W(G)·T(G) + Σ_t numel(t)·(written_t + reads_t)    elements (times e for bytes)

with T(G) = 1 except for BRR's tiles, written_t = 1 when t is a graph output or some
consumer of t is cut from its producer, reads_t = the number of groups other than its
producer's that read t (graph inputs: every group reading them). The relaxation is a MILP
over the z_e whose every constraint holds for every legal plan of valid groups and whose
objective is at most that plan's DRAM, so its optimum (or HiGHS's dual bound when stopped
at its time limit) is at most the least DRAM of any plan:

  objective   W_total + Σ_t numel(t)·(w_t + r_t) + Σ_op q_op,
              W_total the distinct weights, each moved at least once by any plan;
              w_t ≥ z_e and r_t ≥ z_e over t's consumer edges e (graph outputs w_t = 1,
              graph inputs r_t ≥ 1; a weight shared by several ops counts like a graph
              input read by each group holding a user).
  reads       consumers c_1 ⇝ c_2 ⇝ ... of t on one path (in topological order): convex
              groups hold consecutive runs of them, so
              r_t ≥ Σ_i z_(p,c_i) − Σ_i s_i,  s_i ≤ z_(p,c_i), s_i ≤ z_(p,c_i+1), s_i ≤ 1 − z_e
              for every edge e between c_i and c_i+1 (their ops are in the group when they are).
              Consumers no valid group holds together (a group is connected: every undirected
              path joining two of them without the producer has F_β's lower bound, weights and
              one row of every output, at least β; Dijkstra) fall into classes, each read by
              its own groups: r_t ≥ Σ_C R_C, R_C ≥ z_(p,c) for c in C and R_C ≥ C's chain runs.
              PicoDet's backbone maps read by the next stage and by the neck: the whole
              relaxation of picodet_layout, LBDF 256 KB, 31.45 -> 32.42 MB in 150 s.
  covering    F_β only grows as ops are added (the cost model's monotonicity), so for every
              connected invalid set S and a spanning tree of its edges: Σ_tree z_e ≥ 1
              (all uncut would put S inside one group); an edge whose two ops are already
              invalid together is cut (z_e = 1).
  convexity   a group holding both ends of an edge a -> b holds every op between them
              (else a path leaves the group and comes back: a cycle): z_e ≤ z_ab for every
              edge e on a path a ⇝ b; such an edge is cut outright when the ops between a
              and b are invalid together. A component of the relaxed solution that is not
              convex adds z_(u,w) ≤ Σ_Q z_e for an uncut path Q joining two of its ops a, b
              and an edge u -> w between them that leaves it.
  BRR tiles   q_op ≥ w(op)·(τ(S) − 1)·(1 − Σ_tree(S) z_e) for the ops of a connected set S,
              w(op) its share of its weights, τ(S) the fewest tiles any valid group holding
              S can run in: rows(t) ≥ μ_t(T), μ_t(T) = ⌈H_t/T⌉ for graph outputs and tensors
              no op reads, else min(⌈H_t/T⌉, max over consumers c of c's row rule applied
              to max μ of c's outputs) (a tensor leaves the group, or every consumer
              demands its rows); τ(S) is the fewest T with W_max(S) + Σ_t ρ_S(t, T)·row(t)
              < β over the tensors S reads or writes, ρ_S the larger of μ_t and the demands
              of S's own consumers, found backward through S (a consumer in S demands rows
              for its own ρ_S output rows: row rules only grow with the rows asked for).
  exactness   for a component G found in a solution: "the group is exactly G" is
              1 − Σ_tree(G) z_e − Σ_{e leaving G} (1 − z_e), so Σ_{op∈G} q_op ≥ (T*(G) − 1)·W(G)
              times it, and the reads of a tensor by consumers found in separate components
              G_i: r_t ≥ Σ_i (1 − Σ_{e leaving G_i} (1 − z_e)).

Row generation: solve, read the components of the uncut edges, add what the solution
violates (covering sets grown inside each invalid component and shrunk to minimal, the
non-convex components, reads and tiles counted short), solve again, until the solution
is a legal plan of valid groups whose DRAM equals the relaxed objective: that plan is
optimal and the bound exact. At the time limit the best bound so far stands (each round's
optimum, or dual bound, is a bound; they only grow). The legal plans met on the way are
upper bounds (``BoundResult.plan``). On BRR the tile rows of every valid component are
separated every round (not only once the whole solution is legal): fewer, slower rounds.

Blocks (``block_bound``): on large graphs the whole relaxation's rounds grow slow; the same
relaxation over runs of ``BLOCK_OPS`` ops of the topological order (each term of the
objective counted in exactly one run) solves in seconds per run, and the runs' bounds add up
to a bound of the whole (see ``block_bound``); Lagrangian prices on the edges two runs share
raise that sum (``price_blocks``). ``merge_polish``, ``window_polish`` and ``group_polish``
(exact re-planning of runs of the op order, or of regions of adjacent groups, the rest of the
plan held) improve the plans met.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .cost import BRR, CostModel
from .opgraph import bits
from .plan import topological_groups
from .polish import merge_polish

MAX_BETWEEN_EDGES = 64  # convexity/read rows per edge pair up front; longer spans come lazily
BLOCK_OPS = 40  # ops per block of the block bound: its blocks settle in seconds
MAX_REACH = 16  # far neighbours a block's region may take in (``CutBound._reach_out``)
MAX_SEEDS = 64  # covering sets grown per invalid component and round
PRICE_ROUNDS = 20  # rounds of the block bound's prices (``price_blocks``)
PRICE_BOX = 0.25  # the prices' first box, as a fraction of each shared edge's tensor size
# a block's re-solve in a price round stops after this long, its dual bound and best solution
# kept: on PicoDet BRR 256 KB kept rounds took up to 6.3 minutes, and rounds of 9 to 16 minutes
# (ρ 0.16 to 0.47) were never kept
PRICE_ROUND_SECONDS = 600.0
WINDOW_OPS = 24  # ops per window of ``window_polish``
WINDOW_CANDIDATES = 4000  # valid groups a window's ILP may take
WINDOW_NODES = 20000  # branch-and-bound nodes a window's ILP may take (deterministic, unlike time)
REGION_OPS = 30  # ops per region of ``group_polish`` (PicoDet BRR 256 KB: saves what 36 does)

logger = logging.getLogger(__name__)  # the block bound's progress as it happens, at INFO


@dataclass
class BoundResult:
    """A certified lower bound of the least DRAM (bytes), and the best plan seen."""

    lower_bytes: int
    exact: bool  # the bound is the optimum: ``plan`` reaches it
    plan: list[int] | None = None  # a legal plan of valid groups (op bitmasks), when one was met
    plan_bytes: int | None = None
    rounds: int = 0
    cuts: int = 0
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)
    # ended on its own (optimal, or nothing left to separate), no time limit met: then the same
    # inputs give the same bound and plan on any machine
    settled: bool = False


class _Model:
    """The MILP in growing form: variables (z_e first), objective, rows."""

    def __init__(self, n_binary: int):
        self.cost: list[float] = [0.0] * n_binary
        self.lower: list[float] = [0.0] * n_binary
        self.upper: list[float] = [1.0] * n_binary
        self.integer: list[int] = [1] * n_binary
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self.constant = 0.0

    def var(self, cost: float, lower: float = 0.0, upper: float = np.inf) -> int:
        self.cost.append(float(cost))
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(0)
        return len(self.cost) - 1

    def row(self, coefs: dict[int, float], lo: float = -np.inf, hi: float = np.inf) -> None:
        self.rows.append((coefs, lo, hi))

    def solve(self, time_limit: float):
        from scipy.sparse import coo_matrix

        from .milp import solve_milp

        r, c, v = [], [], []
        for k, (coefs, _, _) in enumerate(self.rows):
            for j, a in coefs.items():
                r.append(k)
                c.append(j)
                v.append(a)
        a = coo_matrix((v, (r, c)), shape=(len(self.rows), len(self.cost))).tocsr() if self.rows else None
        return solve_milp(
            np.array(self.cost),
            a,
            [lo for _, lo, _ in self.rows],
            [hi for _, _, hi in self.rows],
            np.array(self.integer),
            np.array(self.lower),
            np.array(self.upper),
            {"time_limit": max(time_limit, 0.1), "disp": False, "mip_rel_gap": 0},
        )


class CutBound:
    """The relaxation of one cost model (see the module docstring)."""

    def __init__(
        self,
        cost: CostModel,
        block: tuple[int, int] | None = None,
        halo: int = 0,
        reads: set[int] | None = None,
    ):
        self.cost = cost
        fg = self.fg = cost.fg
        self.anc, self.desc = fg.ancestors(), fg.descendants()
        self.m = _Model(len(fg.edges))
        self.z = fg.edge_index
        # block: only the ops first..last-1 (a run of the topological order, so convex), see
        # ``block_bound``; every other edge is held cut and stays out of every row
        # ``halo`` more ops on each side join its rows, but not its objective
        first, last = block or (0, fg.n)
        self.own = ((1 << last) - 1) & ~((1 << first) - 1)
        first, last = max(0, first - halo), min(fg.n, last + halo)
        self.block = ((1 << last) - 1) & ~((1 << first) - 1)
        self.whole = block is None or self.own == fg.all_mask
        if not self.whole:
            self.block = self._reach_out(self.block)
        self.members = bits(self.block)
        self.read_tensors = reads  # tensors whose reads this block counts (None: those it produces)
        self.last_plan: list[int] | None = None
        self.last_x: np.ndarray | None = None  # the last round's solution
        self.last_bound = 0  # the last ``solve``'s bound (bytes)
        self._seen_rows: set = set()
        self._reads: dict[int, tuple[int, list[int], list[int | None]]] = {}  # key -> (var, consumers, z)
        self._q: dict[int, int] = {}  # op -> q variable (BRR)
        self._mu: dict[int, list[int]] = {}
        self._uncut: list[list[int]] = []  # per op: its uncut neighbours in this round's solution
        self._share = self._weight_shares()
        self._joins: dict[tuple[int, int, int], bool] = {}  # (a, b, avoid) -> _unjoinable
        self._path_cost: list[int] | None = None
        self._build()
        self.built_rows = len(self.m.rows)  # the rows every relaxation of this block starts with

    # ---- the static part ------------------------------------------------------------
    def _reach_out(self, region: int) -> int:
        """``region`` (a run of the topological order) grown by the neighbours of its own ops
        beyond it, each while the region stays convex (every op on a path between two of its
        ops in it): a long edge (a skip connection's far reader) then has a variable, and
        every row over the region's edges still holds for any legal plan."""
        up = down = 0
        for i in bits(region):
            up |= self.anc[i]
            down |= self.desc[i]
        for c in bits(self.fg.neighbours(self.own) & ~region)[:MAX_REACH]:
            grown = region | 1 << c
            if not (up | self.anc[c]) & (down | self.desc[c]) & ~grown:
                region, up, down = grown, up | self.anc[c], down | self.desc[c]
        return region

    def _weight_shares(self) -> list[float]:
        fg = self.fg
        if not fg.shared_weights:
            return [float(w) for w in fg.weight_numel]
        users: dict[int, int] = {}
        for ids in fg.weight_ids:
            for w in ids:
                users[w] = users.get(w, 0) + 1
        return [sum(fg.weight_numel_by_id[w] / users[w] for w in fg.weight_ids[i]) for i in range(fg.n)]

    def _apart(self, a: int, b: int) -> bool:
        """Whether no valid group holds both ops (it would hold every op between them)."""
        return not self.cost.valid(self.between(a, b))

    def _separate(self, a: int, b: int, avoid: int = -1) -> bool:
        """Whether no valid group holds both ops (nor ``avoid``): one reaches the other and the
        ops between them are invalid together, or every path joining them is (``_unjoinable``)."""
        if a > b:
            a, b = b, a
        if self.desc[a] >> b & 1 and self._apart(a, b):
            return True
        return self._unjoinable(a, b, avoid)

    def _unjoinable(self, a: int, b: int, avoid: int = -1) -> bool:
        """Whether every connected set of ops holding ``a`` and ``b`` but not ``avoid`` is
        invalid: a group is connected, so it holds an undirected path a ~ b, and the cost
        model's lower bound of F_β (weights plus one row of every output) adds up along it
        (LBDF without shared weights: weights and rows; else rows, plus the larger weight of
        the two ends); Dijkstra finds the cheapest path: at least β, no group holds both. An
        op that shares no group (``CostModel.fusable_mask``) is on no such path."""
        key = (a, b, avoid)
        known = self._joins.get(key)
        if known is not None:
            return known
        cost, fg = self.cost, self.fg
        fusable = cost.fusable_mask
        if not (fusable >> a & 1 and fusable >> b & 1):
            return True
        additive = cost.name == "lbdf" and not fg.shared_weights
        node = self._path_cost
        if node is None:  # each op's own lower bound, less its weights where they do not add up
            e = cost.element_bytes
            node = self._path_cost = [
                cost.lower_bound(1 << i) // e - (0 if additive else fg.weight_numel[i]) for i in range(fg.n)
            ]
        beta = cost.buffer_bytes / cost.element_bytes  # elements
        base = 0 if additive else max(fg.weight_numel[a], fg.weight_numel[b])
        limit = beta - base
        best = {a: node[a]}
        heap = [(node[a], a)]
        joined = False
        while heap:
            d, i = heapq.heappop(heap)
            if d >= limit:
                break
            if i == b:
                joined = True
                break
            if d > best[i]:
                continue
            for j in bits(fg.nbr_mask(i) & fusable):
                if j == avoid:
                    continue
                dj = d + node[j]
                if dj < best.get(j, limit):
                    best[j] = dj
                    heapq.heappush(heap, (dj, j))
        self._joins[key] = not joined
        return not joined

    def _far_readers(self, far: list[int], apart_from: list[int]) -> int:
        """At least this many groups read a tensor through the consumers ``far`` (beyond the
        block) that are not the groups of the ops ``apart_from`` (its producer and the consumers
        the block's rows count): the consumers in ``far`` that share no valid group with any
        op of ``apart_from`` nor with each other (taken greedily in op order), one group each."""
        taken: list[int] = []
        for c in far:
            if all(self._separate(c, o) for o in apart_from) and all(self._separate(c, o) for o in taken):
                taken.append(c)
        return len(taken)

    def between(self, a: int, b: int) -> int:
        """The ops on paths a ⇝ b (both ends included)."""
        return (self.desc[a] | 1 << a) & (self.anc[b] | 1 << b)

    def _build(self) -> None:
        fg, m, cost = self.fg, self.m, self.cost
        block, own = self.block, self.own
        users: dict[int, list[int]] = {}
        for i, ids in enumerate(fg.weight_ids):
            for w in ids:
                users.setdefault(w, []).append(i)
        for w, ops in users.items():  # a shared weight is read by every group holding a user
            if own >> ops[0] & 1:  # counted once: in the block of its first user
                self._add_outside_reads(("w", w), fg.weight_numel_by_id[w], ops)
        for t in range(len(fg.tensor_numel)):
            numel = fg.tensor_numel[t]
            consumers = bits(fg.tensor_consumer_mask[t])
            p = fg.tensor_producer[t]
            if p < 0:
                if consumers and own >> consumers[0] & 1:  # counted in its first reader's block
                    self._add_outside_reads(("t", t), numel, consumers)
                continue
            write = own >> p & 1  # its write counts in its producer's block
            read = write if self.read_tensors is None else t in self.read_tensors
            if not (write or read):
                continue  # counted in another block
            if not block >> p & 1:  # made beyond the halo: read from DRAM by the groups of its
                if read:  # consumers that share no group with it (one each, when apart)
                    m.constant += numel * self._far_readers(consumers, [p])
                continue
            written = fg.tensor_is_output[t] or any(
                not block >> c & 1 and self._apart(p, c) for c in consumers
            )  # (an op beyond the halo that can share no group with the producer reads it)
            far = [c for c in consumers if not block >> c & 1]
            consumers = [c for c in consumers if block >> c & 1]
            zs = [self.z[(p, c)] for c in consumers]
            if read and far:  # readers beyond the halo in groups of their own: read once each
                m.constant += numel * self._far_readers(far, [p, *consumers])
            if not write:
                pass
            elif written:
                m.constant += numel
            elif len(zs) == 1:
                m.cost[zs[0]] += numel
            elif zs:
                w = m.var(numel, 0, 1)
                for z in zs:
                    m.row({w: 1, z: -1}, lo=0)
            if zs and read:
                self._add_reads(("t", t), numel, consumers, zs, p)
        for k, (u, v) in enumerate(fg.edges):
            if not (block >> u & 1 and block >> v & 1):
                m.lower[k] = 1.0  # out of the block: no variable, in no row, no cost
                continue
            if not cost.valid(1 << u | 1 << v):
                m.lower[k] = 1.0
                continue
            span = self.between(u, v)
            if span & (span - 1) & ~(1 << u | 1 << v):  # another path u ⇝ v
                if not cost.valid(span):
                    m.lower[k] = 1.0
                    continue
                for e in fg.inner_edges(span)[:MAX_BETWEEN_EDGES]:
                    if e != (u, v):
                        m.row({self.z[e]: 1, k: -1}, hi=0)
        if isinstance(cost, BRR):
            for i in bits(own):
                if self._share[i] > 0:
                    self._q[i] = m.var(1.0)

    def _add_outside_reads(self, key, numel: int, readers: list[int]) -> None:
        """A graph input or shared weight: every group holding a reader reads it."""
        near = [c for c in readers if self.block >> c & 1]
        far = [c for c in readers if not self.block >> c & 1]
        self.m.constant += numel * self._far_readers(far, near)
        self._add_reads(key, numel, near, [None] * len(near))

    def _add_reads(
        self, key, numel: int, consumers: list[int], zs: list[int | None], producer: int = -1
    ) -> None:
        """r ≥ each consumer's cut, and the chain-run rows for consumers on one path; when the
        consumers fall into classes no valid group joins (``_separate``, the producer's group
        aside: a consumer cut from it is in another), r ≥ Σ over classes of each one's reads,
        those rows written for each class's own variable."""
        m = self.m
        if len(consumers) == 1:
            if zs[0] is None:
                m.constant += numel
            else:
                m.cost[zs[0]] += numel
            return
        r = m.var(numel, 0 if all(z is not None for z in zs) else 1)
        self._reads[key] = (r, consumers, zs)
        classes = self._classes(consumers, producer)
        class_reads = (
            [r]
            if len(classes) == 1
            else [m.var(0, 1 if any(zs[k] is None for k in c) else 0) for c in classes]
        )
        for reads, members in zip(class_reads, classes):  # R_C ≥ each cut and chain's runs in C
            for k in members:
                if zs[k] is not None:
                    m.row({reads: 1, zs[k]: -1}, lo=0)
            for chain in self._chains(consumers, members):
                coefs, lo = self._runs(consumers, zs, chain)
                coefs[reads] = 1.0
                m.row(coefs, lo=lo)
        if len(classes) > 1:  # r ≥ Σ_C R_C
            m.row({r: 1.0, **dict.fromkeys(class_reads, -1.0)}, lo=0)

    def _chains(self, consumers: list[int], members) -> list[list[int]]:
        """The positions ``members`` of ``consumers`` (ascending: topological) in runs on one
        path each (greedy), those of two or more."""
        chains: list[list[int]] = []
        for k in members:
            for chain in chains:
                if self.desc[consumers[chain[-1]]] >> consumers[k] & 1:
                    chain.append(k)
                    break
            else:
                chains.append([k])
        return [c for c in chains if len(c) > 1]

    def _runs(self, consumers: list[int], zs: list[int | None], chain: list[int]):
        """(coefs, lo) of "reads ≥ Σ_i z_i − Σ_i s_i" over a chain of consumers: s_i is 1 only
        when c_i and c_i+1 are both cut and share a group (every edge between them uncut)."""
        m = self.m
        coefs: dict[int, float] = {}
        lo = 0.0
        for k in chain:
            if zs[k] is None:
                lo += 1
            else:
                coefs[zs[k]] = coefs.get(zs[k], 0) - 1
        for a, b in zip(chain, chain[1:]):
            s = m.var(0, 0, 1)
            coefs[s] = 1.0
            for k in (a, b):
                if zs[k] is not None:
                    m.row({s: 1, zs[k]: -1}, hi=0)
            span = self.between(consumers[a], consumers[b])
            for e in self.fg.inner_edges(span)[:MAX_BETWEEN_EDGES]:
                m.row({s: 1, self.z[e]: 1}, hi=1)
        return coefs, lo

    def _classes(self, consumers: list[int], producer: int) -> list[list[int]]:
        """Positions of ``consumers`` in classes: two consumers some valid group without the
        producer may hold together share a class."""
        from .plan import _components

        n = len(consumers)
        pairs = [
            (i, j)
            for i in range(n)
            for j in range(i + 1, n)
            if not self._separate(consumers[i], consumers[j], producer)
        ]
        return [bits(c) for c in sorted(_components(n, pairs, list(range(n))), key=lambda c: c & -c)]

    # ---- BRR: a monotone bound on the tiles --------------------------------------------
    def _mu_rows(self, tiles: int) -> list[int]:
        """μ_t(T): the fewest rows of t any valid group producing or reading it holds."""
        mu = self._mu.get(tiles)
        if mu is not None:
            return mu
        fg = self.fg
        n_t = len(fg.tensor_numel)
        mu = [0] * n_t
        demand = [0] * n_t
        for op in reversed(range(fg.n)):
            for t in fg.op_outputs[op]:
                sink = -(-fg.tensor_height[t] // tiles)
                if fg.tensor_is_output[t] or not fg.tensor_consumer_mask[t]:
                    mu[t] = sink
                else:
                    mu[t] = min(sink, demand[t])
            r_out = max((mu[t] for t in fg.op_outputs[op]), default=1)
            for t, rule in fg.op_inputs[op]:
                demand[t] = max(demand[t], rule.rows(r_out, fg.tensor_height[t]))
        for t in range(n_t):
            if fg.tensor_producer[t] < 0:
                mu[t] = demand[t]
        self._mu[tiles] = mu
        return mu

    def _footprint_bound(self, ops: list[int], tiles: int) -> int:
        fg = self.fg
        mu = self._mu_rows(tiles)
        rows: dict[int, int] = {}
        for op in reversed(ops):  # consumers first: their demands grow the rows of their inputs
            r_out = 1
            for t in fg.op_outputs[op]:
                rows[t] = max(rows.get(t, 0), mu[t])
                r_out = max(r_out, rows[t])
            for t, rule in fg.op_inputs[op]:
                rows[t] = max(rows.get(t, 0), rule.rows(r_out, fg.tensor_height[t]))
        w_max = max(fg.weight_numel[i] for i in ops)
        return (w_max + sum(r * fg.tensor_row_numel[t] for t, r in rows.items())) * self.cost.element_bytes

    def least_tiles(self, mask: int) -> int:
        """τ(S): a valid group holding ``mask`` runs in at least this many tiles."""
        ops = bits(mask)
        beta = self.cost.buffer_bytes
        hi = max(self.fg.tensor_height) or 1
        if self._footprint_bound(ops, hi) >= beta:
            return hi
        lo = 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._footprint_bound(ops, mid) < beta:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _heavy_core(self, mask: int, level: int) -> int:
        """A minimal connected subset of ``mask`` that still needs ``level`` tiles (τ ≥ level)."""
        fg, beta = self.fg, self.cost.buffer_bytes
        for op in bits(mask):
            smaller = mask & ~(1 << op)
            if (
                smaller & (smaller - 1)
                and fg.is_connected(smaller)
                and self._footprint_bound(bits(smaller), level - 1) >= beta
            ):
                mask = smaller
        return mask

    # ---- separation ------------------------------------------------------------------
    def _zi(self, u: int, v: int) -> int:
        return self.z[(u, v)] if (u, v) in self.z else self.z[(v, u)]

    def _connector(self, targets: int) -> list[int]:
        """z indices of uncut edges (this round's solution) joining the ops of ``targets``,
        which lie in one component: if they all stay uncut, those ops share a group."""
        adj = self._uncut
        root = (targets & -targets).bit_length() - 1
        parent = {root: -1}
        frontier = [root]
        while frontier:
            nxt = []
            for u in frontier:
                for v in adj[u]:
                    if v not in parent:
                        parent[v] = u
                        nxt.append(v)
            frontier = nxt
        edges: set[int] = set()
        for v in bits(targets):
            while parent[v] >= 0 and self._zi(parent[v], v) not in edges:
                edges.add(self._zi(parent[v], v))
                v = parent[v]
        return sorted(edges)

    def _crosses(self, mask: int) -> bool:
        """Whether an edge leaves ``mask`` out of the block (its z is no variable)."""
        out = 0
        for u in bits(mask):
            out |= self.fg.nbr_mask(u)
        return bool(out & ~self.block)

    def _boundary(self, mask: int) -> list[int]:
        fg = self.fg
        out = []
        for u in bits(mask):
            for v in fg.succs[u]:
                if not mask >> v & 1:
                    out.append(self.z[(u, v)])
            for p in fg.preds[u]:
                if not mask >> p & 1:
                    out.append(self.z[(p, u)])
        return out

    def _add(self, coefs: dict[int, float], lo=-np.inf, hi=np.inf) -> bool:
        """Add a row unless it is there already; whether it was added."""
        coefs = {j: a for j, a in coefs.items() if a}
        key = (tuple(sorted(coefs.items())), lo, hi)
        if key in self._seen_rows:
            return False
        self._seen_rows.add(key)
        self.m.row(coefs, lo, hi)
        return True

    def found_rows(self) -> list:
        """The rows found since the build (``solve``'s separation), as JSON: [[j, a], ...], lo,
        hi (None for an infinite side)."""
        side = lambda v: None if np.isinf(v) else float(v)  # noqa: E731
        return [[sorted(c.items()), side(lo), side(hi)] for c, lo, hi in self.m.rows[self.built_rows :]]

    def take_rows(self, rows: list) -> int:
        """Rows another relaxation of this same block found (``found_rows``): each holds for
        every legal plan, so a resumed block starts with what earlier rounds separated instead of
        finding it again; the number new here. Raises ValueError on a row that names no variable
        of this block."""
        n_vars, parsed = len(self.m.cost), []
        for coefs, lo, hi in rows:  # all checked before any is added
            coefs = {int(j): float(a) for j, a in coefs}
            if not all(0 <= j < n_vars for j in coefs):
                raise ValueError("a saved row names a variable this block does not have")
            parsed.append((coefs, -np.inf if lo is None else float(lo), np.inf if hi is None else float(hi)))
        return sum(self._add(*row) for row in parsed)

    def _cover(self, mask: int) -> bool:
        """Σ z_e ≥ 1 over edges joining the invalid set ``mask`` (they cannot all stay uncut)."""
        tree = self._connector(mask)
        return self._add(dict.fromkeys(tree, 1.0), lo=1)

    def minimal_invalid_sets(self, group: int) -> list[int]:
        """Connected invalid subsets of the invalid ``group``, each minimal: grown from seeds
        inside the group until invalid, then shrunk while they stay connected and invalid."""
        fg, cost = self.fg, self.cost
        ops = bits(group)
        step = max(1, len(ops) // MAX_SEEDS)
        found: set[int] = set()
        for seed in ops[::step]:
            s, frontier = 1 << seed, [seed]
            order = [seed]
            while cost.valid(s) and frontier:
                u = frontier.pop(0)
                for v in bits(fg.nbr_mask(u) & group & ~s):
                    s |= 1 << v
                    order.append(v)
                    frontier.append(v)
                    if not cost.valid(s):
                        break
            if cost.valid(s):
                continue
            for op in order:
                smaller = s & ~(1 << op)
                if smaller & (smaller - 1) and fg.is_connected(smaller) and not cost.valid(smaller):
                    s = smaller
            found.add(s)
        return sorted(found)

    def _convexity(self, group: int) -> int:
        """Rows cutting off a non-convex component; the number added."""
        fg = self.fg
        up = down = 0
        for i in bits(group):
            up |= self.anc[i]
            down |= self.desc[i]
        bad = up & down & ~group
        added = 0
        for x in bits(bad)[:4]:
            a = next(i for i in bits(group) if self.desc[i] >> x & 1)
            b = next(i for i in bits(group) if self.anc[i] >> x & 1)
            path = self._connector(1 << a | 1 << b)
            span = self.between(a, b)
            for u in bits(span & group):
                for w in fg.succs[u]:
                    if span >> w & 1 and not group >> w & 1:
                        coefs = dict.fromkeys(path, -1.0)
                        coefs[self.z[(u, w)]] = 1.0
                        added += self._add(coefs, hi=0)
        return added

    def _exactly(self, group: int) -> tuple[dict[int, float], float] | None:
        """[a plan's group is exactly ``group``] ≥ const + Σ coefs·z: its spanning tree uncut
        and every edge leaving it cut (None when an edge leaves the block: not expressible)."""
        if self._crosses(group):
            return None
        coefs: dict[int, float] = {}
        for z in self._connector(group):
            coefs[z] = coefs.get(z, 0) - 1
        boundary = self._boundary(group)
        for z in boundary:
            coefs[z] = coefs.get(z, 0) + 1
        return coefs, 1.0 - len(boundary)

    @staticmethod
    def _plus(coefs: dict[int, float], more: dict[int, float], scale: float) -> None:
        for z, a in more.items():
            coefs[z] = coefs.get(z, 0) + scale * a

    def _read_cuts(self, owner: list[int], groups: list[int], x: np.ndarray) -> int:
        added = 0
        for r, consumers, zs in self._reads.values():
            outside = {}
            for c, z in zip(consumers, zs):
                if z is None or x[z] > 0.5:
                    outside[owner[c]] = groups[owner[c]]
            if x[r] + 0.5 >= len(outside) or any(self._crosses(g) for g in outside.values()):
                continue
            coefs: dict[int, float] = {r: 1.0}  # r ≥ Σ_g [every edge leaving g cut]
            lo = 0.0
            for g in outside.values():
                boundary = self._boundary(g)
                self._plus(coefs, dict.fromkeys(boundary, 1.0), -1)
                lo += 1 - len(boundary)
            added += self._add(coefs, lo=lo)
        return added

    def _tile_cuts(self, groups: list[int], x: np.ndarray) -> int:
        added = 0
        cost = self.cost
        for g in groups:
            if not g & (g - 1):
                continue
            c = cost.cost(g)
            if c.tiles <= 1:
                continue
            qs = [self._q[i] for i in bits(g) if i in self._q]  # this block's own ops
            extra = (c.tiles - 1) * sum(self._share[i] for i in bits(g) if i in self._q)
            if sum(x[q] for q in qs) + 0.5 >= extra:
                continue
            tau = self.least_tiles(g)
            levels, level = set(), tau
            while level >= 2:  # halving: smaller cores bind every group that holds them
                levels.add(level)
                level = (level + 1) // 2 if level > 2 else 1
            for level in sorted(levels):
                if level < 2:
                    continue
                core = self._heavy_core(g, level)
                for i in bits(g):
                    if i in self._q:
                        a = self._share[i] * (level - 1)
                        coefs = {self._q[i]: 1.0}
                        self._plus(coefs, dict.fromkeys(self._connector(core | 1 << i), 1.0), a)
                        added += self._add(coefs, lo=a)
            exactly = self._exactly(g) if tau < c.tiles else None
            if exactly is not None:  # Σ q ≥ extra·[exactly g]
                coefs = dict.fromkeys(qs, 1.0)
                ind, const = exactly
                self._plus(coefs, ind, -extra)
                added += self._add(coefs, lo=extra * const)
        return added

    # ---- the loop --------------------------------------------------------------------
    def _integral(self) -> bool:
        """Whether every plan's relaxed objective is an integer (then bounds round up)."""
        return all(float(c).is_integer() for c in self.m.cost) and all(
            float(s).is_integer() for s in self._share
        )

    def solve(self, time_limit: float = 20.0, max_rounds: int | None = None) -> BoundResult:
        from .plan import _components

        fg, cost, m = self.fg, self.cost, self.m
        e = cost.element_bytes
        start = time.perf_counter()
        integral = self._integral()
        lower = 0.0  # elements
        best_plan, best_dram = None, None  # elements
        rounds = cuts = 0
        log: list[str] = []
        settled = False
        while True:
            left = time_limit - (time.perf_counter() - start)
            if left <= 0 or rounds == max_rounds:
                break
            res = m.solve(left)
            rounds += 1
            bound = getattr(res, "mip_dual_bound", None)
            if bound is None or not np.isfinite(bound):
                bound = res.fun if res.status == 0 else None
            if bound is not None:
                bound += m.constant
                bound = np.ceil(bound - 1e-6) if integral else bound - 1e-6 * abs(bound)
                lower = max(lower, bound)
            if res.x is None:
                break
            x = self.last_x = res.x
            uncut = [fg.edges[k] for k in range(len(fg.edges)) if x[k] < 0.5]
            groups = _components(fg.n, uncut, self.members)
            self._uncut = [[] for _ in range(fg.n)]
            for u, v in uncut:
                self._uncut[u].append(v)
                self._uncut[v].append(u)
            owner = [-1] * fg.n  # ops out of the block: in no group
            for k, g in enumerate(groups):
                for i in bits(g):
                    owner[i] = k
            added = 0
            for k, (u, v) in enumerate(fg.edges):  # cut, yet its ends share a group: a cycle row
                if x[k] > 0.5 and owner[u] == owner[v] >= 0:
                    coefs = dict.fromkeys(self._connector(1 << u | 1 << v), -1.0)
                    coefs[k] = 1.0
                    added += self._add(coefs, hi=0)
            invalid = [g for g in groups if g & (g - 1) and not cost.valid(g)]
            for g in invalid:
                for s in self.minimal_invalid_sets(g):
                    added += self._cover(s)
            for g in groups:
                if g & (g - 1):
                    added += self._convexity(g)
            if isinstance(cost, BRR):  # valid groups' tiles every round: fewer rounds than at the end only
                added += self._tile_cuts([g for g in groups if g not in invalid], x)
            if not invalid and not added and topological_groups(fg, groups) is not None:
                self.last_plan = groups  # the relaxation's own choice (a block's, for stitching)
                dram = sum(cost.cost(g).dram_bytes for g in groups) // e
                if best_dram is None or dram < best_dram:
                    best_plan, best_dram = groups, dram
                if self.whole and best_dram <= lower:
                    log.append(f"round {rounds}: optimal, {dram * e} B")
                    settled = res.status == 0
                    break
                added += self._read_cuts(owner, groups, x)
                if isinstance(cost, BRR):
                    added += self._tile_cuts(groups, x)
            log.append(
                f"round {rounds}: bound {lower * e:.0f} B, {len(groups)} groups, {len(invalid)} invalid, "
                f"+{added} rows, {time.perf_counter() - start:.1f} s"
            )
            cuts += added
            if not added:
                settled = res.status == 0
                break  # nothing left to separate: the bound stands
        exact = self.whole and best_dram is not None and best_dram <= lower
        lower_bytes = self.last_bound = best_dram * e if exact else int(np.floor(lower * e))
        return BoundResult(
            lower_bytes,
            exact,
            best_plan,
            None if best_dram is None else best_dram * e,
            rounds,
            cuts,
            time.perf_counter() - start,
            log,
            settled,
        )


def cut_bound(cost: CostModel, time_limit: float = 20.0, max_rounds: int | None = None) -> BoundResult:
    """The certified lower bound of ``cost``'s least DRAM (see the module docstring), after
    at most ``time_limit`` seconds and ``max_rounds`` rounds (every round's bound holds)."""
    return CutBound(cost).solve(time_limit, max_rounds)


def block_cuts(fg, max_ops: int) -> list[int]:
    """Where to split the topological order into runs of at most ``max_ops`` ops: the cut
    positions (op indices that start a block) whose crossing tensors are smallest in total
    (dynamic programming; a crossing tensor's traffic is what the block bound gives up)."""
    n = fg.n
    crossing = [0] * (n + 1)  # elements of tensors produced before p and read at or after p
    for t, numel in enumerate(fg.tensor_numel):
        p = fg.tensor_producer[t]
        consumers = bits(fg.tensor_consumer_mask[t])
        if p >= 0 and consumers:
            for q in range(p + 1, consumers[-1] + 1):
                crossing[q] += numel
    best = [0.0] + [np.inf] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_ops), j):
            c = best[i] + (crossing[i] if i else 0)
            if c < best[j]:
                best[j], back[j] = c, i
    starts, j = [], n
    while j > 0:
        starts.append(back[j])
        j = back[j]
    return sorted(starts)


def block_bound(
    cost: CostModel,
    time_limit: float = 20.0,
    max_ops: int = BLOCK_OPS,
    halo: int = 8,
    price_rounds: int = PRICE_ROUNDS,
    workers: int | None = None,
    prices: str | None = None,
    starts: list[int] | None = None,
) -> BoundResult:
    """A certified lower bound from independent blocks: the op order cut into runs of at most
    ``max_ops`` ops (``block_cuts``; or at ``starts``, the ops that begin a block, given by
    hand), each bounded by its own edge-cut relaxation
    (``CutBound(cost, block, halo, reads)``), the bounds summed. The blocks solve on up to
    ``workers`` threads (default: one per core the process may use; ``solve_blocks``).

    Why it is a bound: every term of the whole relaxation's objective goes to exactly one
    block: a tensor's write to its producer's block, its reads to the block holding all its
    readers (else to its producer's), a graph input's or shared weight's reads to its first
    reader's block, an op's tile term q to its own block. A block's relaxation holds the edges
    among its ops and ``halo`` ops on each side (so a tensor crossing into the next block is
    one variable, its write counted before and its read after the cut), all its terms over
    those edges, and only rows over those edges (a row that would name an edge leaving them,
    the "exactly this group" rows, is not written). Any legal plan, restricted to those
    edges, satisfies every block's rows, and its DRAM is at least the sum of the blocks' terms.
    So Σ_blocks (optimum, or dual bound) ≤ the least DRAM. Terms beyond a halo are dropped
    (≥ 0), except a tensor's readers beyond the halo that provably share no group with its
    producer or the readers the block sees (``_far_readers``: one read each); a block's region
    also takes in its own ops' far neighbours while it stays convex (``_reach_out``), so every
    row over its edges still holds. Small blocks solve in seconds where the whole relaxation
    takes minutes. Then, while a plan is dearer than the sum, ``price_blocks`` raises it.

    The plan (from the blocks as built, never the priced ones: it does not hang on how many
    price rounds the time allows): the cheapest, merge-polished, of the blocks' plans cut down
    to their own ops, the plan whose groups follow each block's choice on its own edges (a
    crossing edge uncut when both blocks leave it uncut), and the blocks' plans stitched in
    op order and in reverse (``stitch``), when legal and valid; then re-planned window by
    window (``window_polish``) and region by region (``group_polish``). ``prices``: a file that
    keeps the prices between runs (``price_blocks``' ``state``)."""
    start = time.perf_counter()
    fg = cost.fg
    if starts is None:
        starts = block_cuts(fg, max_ops)
    else:
        starts = sorted({0, *starts})
        for op in (starts[0], starts[-1]):
            if not 0 <= op < fg.n:
                raise ValueError(f"a block cannot start at op {op}: the graph has {fg.n} ops")
    ends = [*starts[1:], fg.n]
    block_of = [0] * fg.n
    for k, (a, b) in enumerate(zip(starts, ends)):
        block_of[a:b] = [k] * (b - a)
    reads: list[set[int]] = [set() for _ in starts]
    for t, p in enumerate(fg.tensor_producer):  # reads: where every reader is, else the producer's
        readers = {block_of[c] for c in bits(fg.tensor_consumer_mask[t])}
        if p >= 0:
            reads[readers.pop() if len(readers) == 1 else block_of[p]].add(t)
    total, rounds, cuts, log, settled = 0, 0, 0, [], True
    workers = workers or usable_cores()
    relaxations = [CutBound(cost, (a, b), halo, reads[k]) for k, (a, b) in enumerate(zip(starts, ends))]

    def first_solve(k: int):
        left = time_limit - (time.perf_counter() - start)
        # up to half of what is left when it starts (all, for the last): a slow block early
        # on settles, which the plan's adoption needs, and the fast ones after it leave time
        # for the prices
        return relaxations[k].solve(left if k == len(starts) - 1 else left / 2)

    results = solve_blocks(first_solve, range(len(starts)), workers)
    cut_down: list[int] | None = []
    chosen_plans: list[list[int] | None] = []  # per block: its relaxation's plan
    kept: list[set[int]] = []  # per block: the edges its relaxation's last plan keeps uncut
    for k, (a, b) in enumerate(zip(starts, ends)):
        relaxation, res = relaxations[k], results[k]
        total += res.lower_bytes
        rounds += res.rounds
        cuts += res.cuts
        settled = settled and res.settled
        _note(
            log,
            f"block {a}..{b - 1}: bound {res.lower_bytes} B, {res.rounds} rounds, {res.seconds:.1f} s"
            + ("" if res.settled else ", stopped by its time limit"),
        )
        own = ((1 << b) - 1) & ~((1 << a) - 1)
        chosen = relaxation.last_plan or res.plan
        chosen_plans.append(chosen)
        if cut_down is not None and chosen is not None:
            cut_down += [c for g in chosen if g & own for c in fg.components(g & own)]
        else:
            cut_down = None
        kept.append({fg.edge_index[e] for g in relaxation.last_plan or () for e in fg.inner_edges(g)})
    from .plan import _components

    uncut = [  # an edge in a block as that block chose; one between blocks where both chose so
        (u, v) for k, (u, v) in enumerate(fg.edges) if k in kept[block_of[u]] and k in kept[block_of[v]]
    ]
    followed = _components(fg.n, uncut, range(fg.n))
    candidates = [("cut down", cut_down), ("followed", followed)]
    if all(chosen_plans):
        owns = [((1 << b) - 1) & ~((1 << a) - 1) for a, b in zip(starts, ends)]
        candidates += [
            ("stitched forward", stitch(fg, chosen_plans, owns)),
            ("stitched backward", stitch(fg, chosen_plans[::-1], owns[::-1])),
        ]
    plan, plan_bytes = None, None
    for name, candidate in candidates:
        if candidate is not None and all(cost.valid(g) for g in candidate):
            candidate = merge_polish(cost, candidate)
        if candidate is None or not all(cost.valid(g) for g in candidate):
            _note(log, f"{name} plan: none or invalid")
            continue
        if topological_groups(fg, candidate) is None:
            _note(log, f"{name} plan: cyclic")
            continue
        dram = sum(cost.cost(g).dram_bytes for g in candidate)
        _note(log, f"{name} plan: {dram} B")
        if plan_bytes is None or dram < plan_bytes:
            plan, plan_bytes = candidate, dram
    if plan_bytes is None or plan_bytes > total:  # the blocks' shared edges priced to agree
        left = time_limit - (time.perf_counter() - start)
        total = price_blocks(cost, relaxations, total, plan_bytes, left, log, price_rounds, workers, prices)
    # after the prices, which keep the time they had: windows are a fixed amount of work, untimed
    # (a settled plan must not depend on the clock). A plan of blocks that a time limit stopped
    # is never adopted, so it is not polished past the time limit: on Inception v2 BRR 256 KB
    # that took 20 s beyond a 20 s proof.
    if plan is not None and (settled or time.perf_counter() - start < time_limit):
        plan = group_polish(cost, window_polish(cost, plan, log=log), log=log)
        plan_bytes = cost.dram(plan)
    exact = plan_bytes is not None and plan_bytes <= total
    return BoundResult(
        plan_bytes if exact else total,
        exact,
        plan,
        plan_bytes,
        rounds,
        cuts,
        time.perf_counter() - start,
        log,
        settled,
    )


def price_blocks(
    cost: CostModel,
    blocks: list[CutBound],
    lower_bytes: int,
    upper_bytes: int | None,
    time_limit: float,
    log: list[str],
    max_rounds: int = PRICE_ROUNDS,
    workers: int = 1,
    state: str | None = None,
) -> int:
    """The block bound raised by Lagrangian prices on the edges two blocks share (both hold
    both ends: the halos' overlap): the best of ``lower_bytes`` (the blocks solved as built)
    and the bounds of up to ``max_rounds`` rounds within ``time_limit``, stopping early once
    the bound reaches ``upper_bytes`` (a plan's DRAM) or the prices are optimal.

    Why it is a bound: for an edge e held by blocks A and B, any price λ_e adds λ_e·z_e to A's
    objective and −λ_e·z_e to B's. A legal plan gives z_e the same value in both, so the prices
    cancel on it: Σ_blocks min(objective + prices) ≤ Σ_blocks (its terms) ≤ its DRAM, for every
    λ (integers here, so the blocks' rounding up stays sound). Rows found on the way stay (each
    holds for any plan); a block whose prices did not move keeps its bound.

    Which prices: the best Σ_blocks min(...) is a concave function of λ; every block solution
    x met is a plane above its block's part, value(x) + Σ ±λ_e·z_e(x). A round takes the λ that
    maximises the lowest planes' sum (an LP) within a box of ρ·numel(e) around the best prices
    so far (the box-step cutting-plane method; a price near a crossing tensor's size is what
    makes cutting it pay or not), re-solves the blocks whose prices moved, and adds their
    solutions' planes. The step is kept when the bound rises by a tenth of what the planes
    promised (then ρ grows by half, up to its first size), else ρ halves. A block re-solves
    for at most ``PRICE_ROUND_SECONDS``: stopped there, its dual bound still holds and its best
    solution is still a plane, so a slow round costs a step, never the bound. It stops when the
    planes promise nothing more: those prices are optimal. On random DAGs of 14 to 36 ops it
    reached in 3 to 17 rounds a bound at least as high as the Polyak subgradient steps it
    replaced in up to 60.

    ``state``: a file that keeps the prices between runs (the centre, ρ, the planes, and the
    rows each priced block's relaxation found), written after every round; a run that finds it,
    made for these same blocks and costs, gives the blocks those rows, re-solves them at its
    centre and goes on from there, so that the rounds of several runs add up. The bound is
    never read from the file: it is what the blocks solve to at the prices it names, with the
    rows fuser separated for them (each valid for every legal plan; a row naming a variable its
    block lacks makes the run refuse that block's rows and the later blocks', and find them
    again)."""
    start = time.perf_counter()
    e = cost.element_bytes
    fg = cost.fg
    n_edges = len(fg.edges)
    base = [list(b.m.cost[:n_edges]) for b in blocks]
    shared = []  # (block, later block, edge)
    for k, a in enumerate(blocks):
        free = {i for i in range(n_edges) if a.m.lower[i] == 0}
        for k2 in range(k + 1, len(blocks)):
            shared += [(k, k2, i) for i in sorted(free) if blocks[k2].m.lower[i] == 0]
    if not shared or any(b.last_x is None for b in blocks):
        return lower_bytes
    priced = sorted({k for key in shared for k in key[:2]})
    fixed = sum(b.last_bound for k, b in enumerate(blocks) if k not in priced)
    size = np.array([sum(fg.tensor_numel[t] for t in fg.edge_tensors[fg.edges[i]]) for *_, i in shared])
    planes: dict[int, list[tuple[float, dict[int, int]]]] = {k: [] for k in priced}

    def add_plane(k: int, price: np.ndarray) -> None:
        x, m = blocks[k].last_x, blocks[k].m
        if x is None:  # stopped with no solution: no plane
            return
        sign = {s: (1 if a == k else -1) * round(x[i]) for s, (a, b, i) in enumerate(shared) if k in (a, b)}
        value = float(np.dot(m.cost, x)) + m.constant - sum(c * price[s] for s, c in sign.items())
        planes[k].append((value, sign))

    def resolve(block_and_unstarted: tuple[int, int], cap: float = PRICE_ROUND_SECONDS) -> bool:
        """Whether the block settled (else ``cap`` or the time limit stopped it)."""
        k, unstarted = block_and_unstarted
        left = time_limit - (time.perf_counter() - start)
        # what is left, split among the blocks not yet started, as many at once as workers
        return blocks[k].solve(min(left, left * workers / unstarted, cap)).settled

    def set_prices(price: np.ndarray) -> None:
        for b, costs in zip(blocks, base):
            b.m.cost[:n_edges] = costs
        for (k, k2, i), lam in zip(shared, price):
            blocks[k].m.cost[i] += lam
            blocks[k2].m.cost[i] -= lam

    centre = np.zeros(len(shared))
    for k in priced:
        add_plane(k, centre)
    best = at_centre = lower_bytes
    rho = PRICE_BOX
    key = _price_key(cost, shared, base) if state else None
    saved = _load_prices(state, key, len(priced), log) if state else None

    def save() -> None:
        if state:
            rows = [blocks[k].found_rows() for k in priced]
            _save_prices(state, key, centre, at_centre, rho, [planes[k] for k in priced], rows)

    if saved is not None:  # go on from the saved centre: the blocks re-solved at its prices
        centre, rho = np.array(saved["centre"], dtype=float), saved["rho"]
        for k, block_planes in zip(priced, saved["planes"]):
            planes[k] += [(value, dict(sign)) for value, sign in block_planes]
        # the rows the saved rounds found, so that the re-solve starts where they left off (on
        # PicoDet BRR 256 KB: 40 s with them, 24 to 27 minutes without)
        try:
            taken = sum(blocks[k].take_rows(rows) for k, rows in zip(priced, saved.get("rows", ())))
        except (ValueError, TypeError) as err:  # the prices still hold: the rows are found again
            taken = 0
            _note(log, f"prices: the rows in {state} are unusable ({err}); re-solving without them")
        set_prices(centre)
        # no cap: the bound all later steps must beat (a fresh block, without the rows the
        # rounds before it found, re-solves slower than it did in the run that saved it)
        unsettled = solve_blocks(
            lambda key: resolve(key, np.inf), [(k, len(priced) - i) for i, k in enumerate(priced)], workers
        ).count(False)
        for k in priced:
            add_plane(k, centre)
        at_centre = sum(b.last_bound for b in blocks)
        best = max(best, at_centre)
        _note(
            log,
            f"prices resumed from {state}: bound {at_centre} B at its centre, ρ {rho:g}, {taken} rows taken"
            + (f", {unsettled} stopped by the time limit" if unsettled else ""),
        )
        save()
    for r in range(max_rounds):
        if upper_bytes is not None and best >= upper_bytes:
            break
        left = time_limit - (time.perf_counter() - start)
        promised, price = _best_prices(planes, priced, centre, rho * size, left)
        if promised is None:
            break
        promised = promised * e + fixed
        moved = {k for s, key in enumerate(shared) if price[s] != centre[s] for k in key[:2]}
        if promised - at_centre <= e or not moved:
            _note(log, f"prices round {r + 1}: optimal prices, bound {at_centre} B")
            break
        set_prices(price)
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            _note(log, f"prices round {r + 1}: stopped by the time limit")
            break
        order = sorted(moved)
        settled = solve_blocks(resolve, [(k, len(order) - i) for i, k in enumerate(order)], workers)
        stopped = settled.count(False)
        for k in order:
            add_plane(k, price)
        total = sum(b.last_bound for b in blocks)
        kept = total >= at_centre + (promised - at_centre) / 10
        _note(
            log,
            f"prices round {r + 1}: bound {total} B, ρ {rho:g}, {len(moved)} blocks re-solved, "
            + (f"{stopped} stopped by the time limit, " if stopped else "")
            + ("kept" if kept else "not kept"),
        )
        best = max(best, total)
        if kept:
            # never past the first box: wider boxes were never kept on PicoDet or yolov8n, and
            # their block MILPs ran 7 to 14 minutes a round (ρ 0.42, 0.47) against 1 to 3
            centre, at_centre, rho = price, total, min(rho * 1.5, PRICE_BOX)
        else:
            rho /= 2
        save()
    for b, costs in zip(blocks, base):  # the blocks' own objectives back (their rows stay)
        b.m.cost[:n_edges] = costs
    return best


def _price_key(cost: CostModel, shared: list, base: list) -> str:
    """What a saved price state must have been made for: the style, buffer, edges, the shared
    edges and every block's own objective."""
    what = [cost.name, cost.buffer_bytes, cost.element_bytes, cost.fg.edges, shared, base]
    return hashlib.sha256(json.dumps(what, default=int).encode()).hexdigest()


def _load_prices(path: str, key: str, n_blocks: int, log: list[str]) -> dict | None:
    """The price state saved at ``path`` for ``key``, or None (no file, or made for other
    blocks or costs: then the prices start at zero, and the log says why)."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        _note(log, f"prices: {path} unreadable ({e}); starting from zero")
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or len(saved.get("planes", ())) != n_blocks:
        _note(log, f"prices: {path} was saved for other blocks or costs; starting from zero")
        return None
    return saved


def _save_prices(path: str, key: str, centre, at_centre: int, rho: float, planes: list, rows: list) -> None:
    """The price state (``price_blocks``' ``state``), written whole by a rename: with each
    priced block's planes, the rows its relaxation found (``CutBound.found_rows``)."""
    from ..serde.files import atomic_write

    saved = {
        "key": key,
        "bound_at_centre": int(at_centre),
        "rho": rho,
        "centre": [int(p) for p in centre],
        "planes": [[[value, sorted(sign.items())] for value, sign in block] for block in planes],
        "rows": rows,
    }
    atomic_write(path, json.dumps(saved, separators=(",", ":")).encode())


def _best_prices(planes, priced, centre, box, time_limit):
    """The LP of ``price_blocks``: max Σ_k v_k with v_k ≤ every plane of block k, the prices
    within ``box`` of ``centre``; (its value in elements, the prices rounded), or (None, None)."""
    from scipy.sparse import coo_matrix

    from .milp import solve_milp

    n_prices = len(centre)
    r, c, v, hi = [], [], [], []
    for j, k in enumerate(priced):
        for value, sign in planes[k]:
            row = len(hi)
            r.append(row)
            c.append(n_prices + j)
            v.append(1.0)
            for s, z in sign.items():
                if z:
                    r.append(row)
                    c.append(s)
                    v.append(-float(z))
            hi.append(value)
    n = n_prices + len(priced)
    res = solve_milp(
        np.concatenate([np.zeros(n_prices), -np.ones(len(priced))]),
        coo_matrix((v, (r, c)), shape=(len(hi), n)).tocsr(),
        np.full(len(hi), -np.inf),
        hi,
        np.zeros(n),
        np.concatenate([centre - box, np.full(len(priced), -np.inf)]),
        np.concatenate([centre + box, np.full(len(priced), np.inf)]),
        {"time_limit": max(time_limit, 1.0), "disp": False},
    )
    if res.x is None:
        return None, None
    return -res.fun, np.round(res.x[:n_prices])


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def solve_blocks(solve, keys, workers: int) -> list:
    """``[solve(k) for k in keys]``, on up to ``workers`` threads: HiGHS lets go of the GIL
    while it solves, so the blocks' MILPs run side by side (each block's relaxation is its
    own; the cost model's memos only ever gain the same entries). The results do not hang on
    the threads: each block's solve is the same whichever runs first."""
    keys = list(keys)
    if workers <= 1 or len(keys) <= 1:
        return [solve(k) for k in keys]
    with ThreadPoolExecutor(min(workers, len(keys))) as pool:
        return list(pool.map(solve, keys))


def stitch(fg, plans: list[list[int]], owns: list[int]) -> list[int]:
    """One plan from the blocks' plans, taken in the order given: each block's groups that hold
    its own ops, less the ops an earlier block placed, split into their connected pieces (a
    group straddling a block's edge is kept whole by the block taken first). Every group is a
    subset of a block's group, so valid when those are (F_β only grows with ops); whether the
    plan is acyclic is for the caller to check."""
    placed, groups = 0, []
    for plan, own in zip(plans, owns):
        for g in plan:
            if g & own:
                rest = g & ~placed
                groups += fg.components(rest)
                placed |= rest
    groups += fg.components(fg.all_mask & ~placed) if fg.all_mask & ~placed else []
    return groups


def polish(cost: CostModel, groups: list[int]) -> list[int]:
    """``groups`` (a legal plan of valid groups) merge-polished, re-planned window by window
    (``window_polish``) and region by region (``group_polish``), and merge-polished again:
    DRAM never rises. Deterministic."""
    return merge_polish(cost, group_polish(cost, window_polish(cost, merge_polish(cost, groups))))


def _replan(
    cost: CostModel, groups: list[int], region: int, inside: list[int], node_limit: int, time_limit: float
):
    """The cheapest legal plan of valid groups that keeps every group of ``groups`` not
    touching ``region`` and takes the rest from ``inside`` (or a straddling group whole, or cut
    to its pieces beyond ``region``): the ILP (``fuser.fusion.exact``), whose levels keep the
    plan acyclic. ``(groups, dram)`` when it is proven within ``node_limit`` nodes, legal, and
    saves; else None."""
    from .exact import ilp_optimum

    fg = cost.fg
    held = [g for g in groups if not g & region]
    choices = []
    for g in groups:
        if g & region and g & ~region:
            choices += [g, *fg.components(g & ~region)]
    res = ilp_optimum(cost, sorted(set(held + choices + inside)), time_limit, node_limit)
    if res is None or not res.optimal or res.dram_bytes >= cost.dram(groups):
        return None
    trial = sorted(res.groups)
    if not all(cost.valid(g) for g in trial) or topological_groups(fg, trial) is None:
        return None
    return trial, res.dram_bytes


def window_polish(
    cost: CostModel,
    groups: list[int],
    width: int = WINDOW_OPS,
    max_candidates: int = WINDOW_CANDIDATES,
    time_limit: float = 60.0,
    log: list[str] | None = None,
    node_limit: int = WINDOW_NODES,
) -> list[int]:
    """``groups`` (a legal plan of valid groups) improved by exact re-planning of windows:
    for each run of ``width`` ops of the topological order (stepping half a run), the ILP over
    every valid group inside the run (``fuser.fusion.exact``), the plan's groups beyond it held,
    and each group straddling its edge either kept whole or cut to its connected pieces beyond
    the run (valid: F_β only grows with ops); the ILP's levels keep the plan acyclic. The plan
    is always one of its choices, so DRAM never rises; a window is taken only when its ILP is
    proven optimal within ``node_limit`` branch-and-bound nodes and saves. Sweeps until one
    saves nothing. Deterministic: windows in op order, candidates and ILP work capped by count
    (a window past ``max_candidates`` valid groups is skipped); ``time_limit`` only guards
    against a pathological solve (windows here solve in 2 s or less)."""
    from .exact import valid_groups

    fg = cost.fg
    groups = sorted(groups)
    improved = True
    while improved:
        improved = False
        for a in range(0, max(fg.n - width // 2, 1), max(width // 2, 1)):
            run = ((1 << min(a + width, fg.n)) - 1) & ~((1 << a) - 1)
            inside = valid_groups(cost, max_candidates, within=run)
            better = None if inside is None else _replan(cost, groups, run, inside, node_limit, time_limit)
            if better is None:
                continue
            _note(log, f"window {a}..{min(a + width, fg.n) - 1}: {cost.dram(groups)} -> {better[1]} B")
            groups, improved = better[0], True
    return groups


def group_polish(
    cost: CostModel,
    groups: list[int],
    max_ops: int = REGION_OPS,
    max_candidates: int = WINDOW_CANDIDATES,
    time_limit: float = 60.0,
    log: list[str] | None = None,
    node_limit: int = WINDOW_NODES,
) -> list[int]:
    """``groups`` (a legal plan of valid groups) improved by exact re-planning of regions that
    follow the graph: for each group in op order, the region grown from it by whole adjacent
    groups (the one with the earliest first op first) while it holds at most ``max_ops`` ops,
    then the ILP over every valid group inside it, every other group held (``_replan``).

    Why beside ``window_polish``: a run of the op order interleaves unrelated branches (PicoDet's
    neck ops sit between backbone ops), so a group that follows a branch past the run's edge is
    out of the run's reach, while a region of adjacent groups holds whole connected work.
    PicoDet BRR 256 KB: 51.33 -> 51.05 MB after the windows (its proven optimum). Same rules as
    the windows: DRAM never rises, a region is taken only when proven within ``node_limit`` nodes
    and it saves, regions past ``max_candidates`` valid groups are skipped, a region already
    solved with the same groups is not solved again, sweeps until one saves nothing;
    deterministic."""
    from .exact import valid_groups

    fg = cost.fg
    groups = sorted(groups)
    solved: set[tuple[int, ...]] = set()
    improved = True
    while improved:
        improved = False
        for seed in list(groups):
            if seed not in groups:
                continue
            region, near = seed, fg.neighbours(seed)
            while True:
                adjacent = sorted((g for g in groups if g & near and not g & region), key=lambda g: g & -g)
                fits = next((g for g in adjacent if (region | g).bit_count() <= max_ops), None)
                if fits is None:
                    break
                region, near = region | fits, near | fg.neighbours(fits)
            key = tuple(g for g in groups if g & region)
            if key in solved:
                continue
            solved.add(key)
            inside = valid_groups(cost, max_candidates, within=region)
            better = None if inside is None else _replan(cost, groups, region, inside, node_limit, time_limit)
            if better is None:
                continue
            first, size = (seed & -seed).bit_length() - 1, region.bit_count()
            _note(log, f"region of {size} ops from op {first}: {cost.dram(groups)} -> {better[1]} B")
            groups, improved = better[0], True
    return groups


def _note(log: list[str] | None, line: str) -> None:
    """``line`` kept in ``log`` and logged at once: a bound that runs for an hour shows its
    blocks and price rounds while it runs (``benchmarks/fusion_dram.py --gap-log``)."""
    if log is not None:
        log.append(line)
    logger.info(line)
