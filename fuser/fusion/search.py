"""Plan search under a plan budget: greedy, random, local search and NSGA-II.

Every search proposes edge genomes (``fuser.fusion.plan``); ``PlanEvaluator``
turns each into a legal plan of valid groups and costs it:

  decode -> split every invalid group (random or explain splitter)
         -> dissolve any group that moves more DRAM than its ops alone (BRR's
            weight re-fetches can make fusion a loss) -> Σ F_D, max F_β.

One evaluated genome is one plan of the budget. Every repaired group moves at
most what its ops would alone, so no plan moves more DRAM than no fusion.

  greedy  TVM FuseOps-style: every elementwise or reshape-like op joins the group
          of its latest producer (unless that closes a cycle), then invalid groups
          are split. Deterministic, one plan whatever the budget.
  random  genomes with every edge fused with probability p, p ~ U(0, 1) per plan.
  local   a population of the K best plans; each step mutates one of them by a
          move (an op crosses to a neighbouring group), a merge (two adjacent
          groups fuse) or a split (a group is cut at a random edge).
  nsga2   pymoo's NSGA-II on the genome, minimising DRAM bytes and peak buffer use
          (max F_β over the groups that fit); two-point crossover, bit-flip mutation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fuser.ir import FuserError
from fuser.ir.ops import Category, ops_in

from .cost import CostModel, GroupCost
from .opgraph import ELEMENTWISE, bits
from .plan import decode, encode, merge_makes_cycle
from .split import Splitter, edge_cuts

SEARCHES = ("greedy", "random", "local", "nsga2")
# what FuseOps-style greedy fuses into its producer: the registry's elementwise and
# injective (data movement) ops, and per-channel norms
INJECTIVE = ELEMENTWISE | ops_in(Category.INJECTIVE)

Progress = Callable[[int, int], None]
MAX_STEPS = 500  # split explanations a plan carries from its ancestors


@dataclass
class Evaluated:
    """A proposed genome and the legal plan of valid groups it became."""

    genome: np.ndarray
    groups: list[int]
    dram: int
    peak: int
    steps: list = field(default_factory=list)  # SplitSteps that made the plan valid

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(self.groups)

    def derived(self, parent: Evaluated) -> Evaluated:
        """This plan as a child of ``parent`` (local search): it inherits the splits
        that made its ancestors, so the plan explains every split on its way."""
        own = {id(s) for s in self.steps}
        inherited = [s for s in parent.steps if id(s) not in own]
        return Evaluated(
            self.genome, self.groups, self.dram, self.peak, (inherited + self.steps)[-MAX_STEPS:]
        )


class PlanEvaluator:
    """Genome -> repaired plan -> cost, counting plans against the budget."""

    def __init__(self, cost: CostModel, splitter: Splitter, budget: int, progress: Progress | None = None):
        if budget < 1:
            raise FuserError(f"plan budget must be at least 1, got {budget}")
        self.cost = cost
        self.fg = cost.fg
        self.splitter = splitter
        self.budget = budget
        self.progress = progress
        self.used = 0
        self.best: Evaluated | None = None
        self._memo: dict[bytes, Evaluated] = {}
        self._verdicts: dict[int, tuple[bool, GroupCost | None]] = {}

    @property
    def exhausted(self) -> bool:
        return self.used >= self.budget

    def repair(self, groups: list[int]) -> tuple[list[int], list, list[GroupCost]]:
        """Split invalid groups and dissolve unprofitable ones; also the costs of the
        multi-op groups kept (one memo lookup per group: big bitmasks are slow to hash)."""
        final, steps, kept = [], [], []
        for g in groups:
            if not g & (g - 1):  # one op: always valid, nothing to dissolve
                final.append(g)
                continue
            valid, c = self._verdict(g)
            if valid:
                pieces = [(g, c)]
            else:
                result = self.splitter.split(g)
                pieces = [(p, self._kept_cost(p)) for p in result.pieces]
                steps.extend(result.steps)
            for p, c in pieces:
                if not p & (p - 1):
                    final.append(p)
                elif c is None:
                    final.extend(1 << i for i in bits(p))
                else:
                    final.append(p)
                    kept.append(c)
        return final, steps, kept

    def _verdict(self, mask: int) -> tuple[bool, GroupCost | None]:
        """(valid, its cost when valid and it moves no more DRAM than its ops alone, else
        None) of a group of several ops (memoised)."""
        v = self._verdicts.get(mask)
        if v is None:
            cost = self.cost
            if cost.valid(mask):
                c = cost.cost(mask)
                v = (True, c if c.dram_bytes <= cost.singles_dram(mask) else None)
            else:
                v = (False, None)  # not costed: big invalid groups are refused by a cheap bound
            self._verdicts[mask] = v
        return v

    def _kept_cost(self, piece: int) -> GroupCost | None:
        """A split's piece as ``_verdict`` keeps it; a piece still invalid (the splitters
        hand back none) is kept, as it was, when it moves no more DRAM than its ops alone."""
        if not piece & (piece - 1):
            return None  # one op: runs alone, never dissolved
        valid, c = self._verdict(piece)
        if valid:
            return c
        c = self.cost.cost(piece)
        return c if c.dram_bytes <= self.cost.singles_dram(piece) else None

    def evaluate(self, genome: np.ndarray) -> Evaluated:
        genome = np.asarray(genome, dtype=bool)
        key = np.packbits(genome).tobytes()
        ev = self._memo.get(key)
        if ev is None:
            groups, steps, kept = self.repair(sorted(decode(self.fg, genome)))
            singles = [g.bit_length() - 1 for g in groups if not g & (g - 1)]
            cost = self.cost
            dram = sum(c.dram_bytes for c in kept) + sum(cost.single_dram_bytes[i] for i in singles)
            peak = max(
                [c.buffer_bytes for c in kept]  # repaired groups fit
                + [cost.single_buffer_bytes[i] for i in singles if cost.fusable_mask >> i & 1],
                default=0,
            )
            ev = Evaluated(genome, groups, dram, peak, steps)
            self._memo[key] = ev
        self.used += 1
        if self.best is None or (ev.dram, len(ev.groups)) < (self.best.dram, len(self.best.groups)):
            self.best = ev
        if self.progress is not None:
            self.progress(min(self.used, self.budget), self.budget)
        return ev

    def peak(self, groups: list[int]) -> int:
        """Largest F_β among the groups that fit (unfusable single ops run apart)."""
        fitting = [self.cost.cost(g).buffer_bytes for g in groups if self.cost.cost(g).fits]
        return max(fitting, default=0)

    def genome_of(self, groups: list[int]) -> np.ndarray:
        return encode(self.fg, groups)


# ---- greedy -----------------------------------------------------------------------
def greedy_groups(cost: CostModel) -> list[int]:
    """FuseOps-style groups before repair: injective ops join their latest producer."""
    fg = cost.fg
    anc, desc = fg.ancestors(), fg.descendants()
    owner = list(range(fg.n))
    members = {i: 1 << i for i in range(fg.n)}
    reach = {i: (anc[i], desc[i]) for i in range(fg.n)}  # per group, kept up to date on merges
    for op in range(fg.n):
        if fg.ops[op] not in INJECTIVE:
            continue
        for p in reversed(fg.preds[op]):
            a, b = owner[p], owner[op]
            if a == b or merge_makes_cycle(fg, members[a], members[b], reach[a], reach[b]):
                continue
            joined = members.pop(b)
            (up_a, down_a), (up_b, down_b) = reach[a], reach.pop(b)
            members[a] |= joined
            reach[a] = (up_a | up_b, down_a | down_b)
            for i in bits(joined):
                owner[i] = a
            break
    return list(members.values())


def search_greedy(ev: PlanEvaluator, seed: int) -> Evaluated:
    return ev.evaluate(ev.genome_of(greedy_groups(ev.cost)))


# ---- random search ----------------------------------------------------------------
def search_random(ev: PlanEvaluator, seed: int) -> Evaluated:
    rng = np.random.default_rng(seed)
    n_edges = len(ev.fg.edges)
    ev.evaluate(np.zeros(n_edges, dtype=bool))
    while not ev.exhausted:
        ev.evaluate(rng.random(n_edges) < rng.random())
    return ev.best


# ---- local search -----------------------------------------------------------------
def _inter_group_edges(fg, owner) -> list[tuple[int, int]]:
    return [(u, v) for u, v in fg.edges if owner[u] != owner[v]]


def mutate(ev: PlanEvaluator, groups: list[int], rng: random.Random) -> np.ndarray:
    """A move, merge or split of ``groups``, as a genome."""
    fg = ev.fg
    genome = ev.genome_of(groups)
    owner = [0] * fg.n
    for k, g in enumerate(groups):
        for i in bits(g):
            owner[i] = k
    boundary = _inter_group_edges(fg, owner)
    multi = [g for g in groups if g & (g - 1)]
    kinds = (["merge", "move"] if boundary else []) + (["split"] if multi else [])
    if not kinds:
        return genome
    kind = rng.choice(kinds)

    def set_edges(a: int, b: int, fused: bool) -> None:
        for u in bits(a):
            for v in fg.succs[u]:
                if b >> v & 1:
                    genome[fg.edge_index[(u, v)]] = fused
        for u in bits(b):
            for v in fg.succs[u]:
                if a >> v & 1:
                    genome[fg.edge_index[(u, v)]] = fused

    if kind == "merge":
        u, v = boundary[rng.randrange(len(boundary))]
        set_edges(groups[owner[u]], groups[owner[v]], True)
    elif kind == "move":
        u, v = boundary[rng.randrange(len(boundary))]
        mover, target = (u, v) if rng.random() < 0.5 else (v, u)
        home = groups[owner[mover]] & ~(1 << mover)
        set_edges(1 << mover, home, False)
        set_edges(1 << mover, groups[owner[target]], True)
    else:
        g = multi[rng.randrange(len(multi))]
        edges = fg.inner_edges(g)
        edge = edges[rng.randrange(len(edges))]
        downs = edge_cuts(fg, g, edge)
        down = downs[rng.randrange(len(downs))]
        set_edges(down, g & ~down, False)
    return genome


def search_local(ev: PlanEvaluator, seed: int, population: int = 8) -> Evaluated:
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    n_edges = len(ev.fg.edges)
    starts = [
        np.zeros(n_edges, dtype=bool),
        ev.genome_of(greedy_groups(ev.cost)),
        np.ones(n_edges, dtype=bool),
    ]
    pop: dict[tuple, Evaluated] = {}

    def offer(e: Evaluated) -> None:
        pop.setdefault(e.key, e)
        if len(pop) > population:
            worst = max(pop.values(), key=lambda x: (x.dram, len(x.groups), x.key))
            del pop[worst.key]

    for genome in starts:
        if not ev.exhausted:
            offer(ev.evaluate(genome))
    while len(pop) < population and not ev.exhausted:
        offer(ev.evaluate(np_rng.random(n_edges) < np_rng.random()))
    while not ev.exhausted:
        ranked = sorted(pop.values(), key=lambda x: (x.dram, len(x.groups), x.key))
        parent = ranked[rng.randrange(len(ranked))]
        offer(ev.evaluate(mutate(ev, parent.groups, rng)).derived(parent))
    return min(pop.values(), key=lambda x: (x.dram, len(x.groups), x.key))


# ---- NSGA-II ----------------------------------------------------------------------
def search_nsga2(ev: PlanEvaluator, seed: int, population: int = 40) -> tuple[Evaluated, list[Evaluated]]:
    """NSGA-II (pymoo) over the edge genome; returns the least-DRAM plan and the Pareto front."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.core.sampling import Sampling
    from pymoo.operators.crossover.pntx import TwoPointCrossover
    from pymoo.operators.mutation.bitflip import BitflipMutation
    from pymoo.optimize import minimize

    n_edges = len(ev.fg.edges)
    evaluated: dict[bytes, Evaluated] = {}

    class FusionProblem(Problem):
        def __init__(self):
            super().__init__(n_var=n_edges, n_obj=2, xl=0, xu=1, vtype=bool)

        def _evaluate(self, x, out, *args, **kwargs):
            rows = []
            for genome in x:
                if ev.exhausted:  # the last generation may overshoot the budget: drop the rest
                    rows.append((np.inf, np.inf))
                    continue
                e = ev.evaluate(genome)
                evaluated[np.packbits(e.genome).tobytes()] = e
                rows.append((e.dram, e.peak))
            out["F"] = np.array(rows, dtype=float)

    class SeededSampling(Sampling):
        """No fusion, greedy, all fused, then random genomes of random density."""

        def _do(self, problem, n_samples, **kwargs):
            rng = np.random.default_rng(seed)
            rows = [
                np.zeros(n_edges, dtype=bool),
                ev.genome_of(greedy_groups(ev.cost)),
                np.ones(n_edges, dtype=bool),
            ]
            while len(rows) < n_samples:
                rows.append(rng.random(n_edges) < rng.random())
            return np.array(rows[:n_samples], dtype=bool)

    population = max(4, min(population, ev.budget))
    algorithm = NSGA2(
        pop_size=population,
        sampling=SeededSampling(),
        crossover=TwoPointCrossover(),
        mutation=BitflipMutation(),
        eliminate_duplicates=True,
    )
    if n_edges >= 2:
        minimize(FusionProblem(), algorithm, ("n_eval", ev.budget), seed=seed, verbose=False)
    else:  # nothing to search over
        ev.evaluate(np.zeros(n_edges, dtype=bool))
    front = pareto_front(list(evaluated.values()) or [ev.best])
    return ev.best, front


def pareto_front(plans: list[Evaluated]) -> list[Evaluated]:
    """Plans no other plan beats on both DRAM and peak buffer, by DRAM."""
    unique = {}
    for p in sorted(plans, key=lambda e: (e.dram, e.peak, e.key)):
        unique.setdefault((p.dram, p.peak), p)
    front, best_peak = [], None
    for p in unique.values():
        if best_peak is None or p.peak < best_peak:
            front.append(p)
            best_peak = p.peak
    return front


def run_search(name: str, ev: PlanEvaluator, seed: int) -> tuple[Evaluated, list[Evaluated]]:
    """(best plan, Pareto front) of search ``name``; the front is [best] except for nsga2."""
    if name == "nsga2":
        return search_nsga2(ev, seed)
    runners = {"greedy": search_greedy, "random": search_random, "local": search_local}
    if name not in runners:
        raise FuserError(f"unknown search '{name}'; choose one of {', '.join(SEARCHES)}")
    best = runners[name](ev, seed)
    return best, [best]
