"""Interval DP, the split of big groups: three topological orders, merge-polished pieces."""

import random

import pytest
from test_fusion_graphs import _conv, finish, random_dag

from fuser.fusion import build_fusion_graph
from fuser.fusion.cost import make_cost_model
from fuser.fusion.opgraph import bits
from fuser.fusion.plan import groups_acyclic, topological_groups
from fuser.fusion.polish import merge_polish
from fuser.fusion.split import ExplainSplitter, interval_orders
from fuser.ir import Graph


def two_branches() -> Graph:
    """s -> (a1 -> a2) and (b1 -> b2) -> t, the branches' ops interleaved in op order."""
    g = Graph("branches")
    x = g.add_input("x", (1, 4, 8, 8))
    s = _conv(g, x, 4, 4, 3, name="s")
    a1 = _conv(g, s, 4, 4, 3, name="a1")
    b1 = _conv(g, s, 4, 4, 3, name="b1")
    a2 = _conv(g, a1, 4, 4, 3, name="a2")
    b2 = _conv(g, b1, 4, 4, 3, name="b2")
    t = g.add_node("Add", [a2, b2], name="t").output
    return finish(g, [t])


def test_the_depth_first_orders_list_each_branch_together():
    fg = build_fusion_graph(two_branches())
    orders = [[fg.names[i] for i in ops] for ops in interval_orders(fg, fg.all_mask)]
    assert orders == [
        ["s", "a1", "b1", "a2", "b2", "t"],  # op order: an interval cuts both branches at one point
        ["s", "b1", "b2", "a1", "a2", "t"],  # depth first from the source, successors in op order
        ["s", "b1", "b2", "a1", "a2", "t"],  # depth first from the sink, predecessors last first
    ]
    part = fg.all_mask & ~(1 << fg.names.index("t"))  # two sinks: a2 first reached, then b2
    sinks_first = [fg.names[i] for i in interval_orders(fg, part)[2]]
    assert sinks_first == ["s", "b1", "b2", "a1", "a2"]


def _random_groups(fg, cost, seed, count):
    """Invalid convex groups: the components of random runs of op order (a run of a topological
    order is convex, and so is each of its components)."""
    rng = random.Random(seed)
    groups = [fg.all_mask]
    for _ in range(6 * count):
        first = rng.randrange(fg.n // 2)
        last = rng.randrange(first + 2, fg.n + 1)
        groups.extend(fg.components(((1 << last) - 1) & ~((1 << first) - 1)))
    return [g for g in dict.fromkeys(groups) if not cost.valid(g)][:count]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("style,buffer", [("lbdf", 2048), ("brr", 2048)])
def test_interval_split_is_legal_and_no_worse_than_any_one_order(seed, style, buffer):
    """Every op once, valid pieces in a running order, DRAM = the sum of the pieces' and no more
    than interval DP in any single order; somewhere the other orders or the polish must win
    over op order alone (else the test shows nothing)."""
    fg = build_fusion_graph(random_dag(seed, 36))
    cost = make_cost_model(fg, style, buffer)
    groups = _random_groups(fg, cost, seed, 12)
    assert len(groups) >= 6
    splitter = ExplainSplitter(cost)
    better = 0
    for mask in groups:
        got = splitter.interval_split(mask)
        assert sorted(i for p in got.pieces for i in bits(p)) == bits(mask)
        assert all(cost.valid(p) for p in got.pieces) and topological_groups(fg, got.pieces) is not None
        assert got.dram == cost.dram(got.pieces)
        raw = [splitter._intervals_in(ops) for ops in interval_orders(fg, mask)]
        assert got.dram <= min(cost.dram(r) for r in raw)
        better += got.dram < cost.dram(raw[0])
    assert better


@pytest.mark.parametrize("seed", range(3))
def test_interval_dp_reuses_a_shared_prefix_exactly(seed):
    """best[j] depends only on the first j ops: a splitter that has already split groups sharing
    a prefix gives each group the pieces a fresh splitter gives it."""
    fg = build_fusion_graph(random_dag(seed, 36))
    cost = make_cost_model(fg, "lbdf", 2048)
    groups = _random_groups(fg, cost, seed, 12)
    warm = ExplainSplitter(cost)
    for mask in groups:
        for kind, ops in enumerate(interval_orders(fg, mask)):
            assert warm._intervals_in(ops, kind) == ExplainSplitter(cost)._intervals_in(ops, kind)
    assert warm._interval_dp


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("style,buffer", [("lbdf", 2048), ("brr", 1000)])
def test_merge_polish_of_one_groups_pieces_stays_inside_it(seed, style, buffer):
    """The pieces of one group (edges leaving it ignored): merged or moved only among
    themselves, each op once, valid, acyclic, DRAM never higher."""
    fg = build_fusion_graph(random_dag(seed, 30))
    cost = make_cost_model(fg, style, buffer)
    for mask in _random_groups(fg, cost, seed, 6):
        singles = [1 << i for i in bits(mask)]
        pieces = merge_polish(cost, singles)
        assert sorted(i for p in pieces for i in bits(p)) == bits(mask)
        assert all(cost.valid(p) for p in pieces) and groups_acyclic(fg, pieces)
        assert cost.dram(pieces) <= cost.dram(singles)


@pytest.mark.parametrize("seed", range(4))
def test_groups_acyclic_agrees_with_topological_groups(seed):
    fg = build_fusion_graph(random_dag(seed, 30))
    rng = random.Random(seed)
    for _ in range(200):
        owner = [rng.randrange(6) for _ in range(fg.n)]
        groups = [g for g in (sum(1 << i for i in range(fg.n) if owner[i] == k) for k in range(6)) if g]
        assert groups_acyclic(fg, groups) == (topological_groups(fg, groups) is not None)
