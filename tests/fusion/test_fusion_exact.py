"""The exact optimum (chain DP, ILP) against brute force over every partition of tiny graphs."""

import pytest
from test_fusion_graphs import conv_chain, random_dag, residual_block, se_block

from fuser.fusion import build_fusion_graph, make_cost_model, partition_fusion_graph
from fuser.fusion.exact import chain_optimum, exact_optimum, ilp_optimum, is_chain, valid_groups
from fuser.fusion.opgraph import bits
from fuser.fusion.plan import partition_problems


def set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first]] + part
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1 :]


def brute_force(cost):
    fg = cost.fg
    best = None
    for part in set_partitions(list(range(fg.n))):
        groups = [sum(1 << i for i in g) for g in part]
        if all(cost.valid(g) for g in groups) and not partition_problems(fg, groups):
            dram = sum(cost.cost(g).dram_bytes for g in groups)
            best = dram if best is None else min(best, dram)
    return best


CASES = [
    (residual_block, "lbdf", 4000),
    (residual_block, "brr", 3000),
    (se_block, "lbdf", 1000),
    (se_block, "brr", 500),
    (lambda: random_dag(1, n_ops=6), "lbdf", 2500),
    (lambda: random_dag(2, n_ops=6), "brr", 1500),
]


@pytest.mark.parametrize("build,style,buffer", CASES)
def test_ilp_matches_brute_force_and_bounds_every_search(build, style, buffer):
    fg = build_fusion_graph(build())
    assert fg.n <= 9
    cost = make_cost_model(fg, style, buffer)
    best = exact_optimum(cost)
    assert best.method == "ilp" and best.optimal
    assert best.dram_bytes == brute_force(cost)
    assert partition_problems(fg, best.groups) == [] and all(cost.valid(g) for g in best.groups)
    for search in ("greedy", "local", "nsga2"):
        plan, _ = partition_fusion_graph(fg, buffer=buffer, style=style, search=search, budget=40)
        assert plan.dram_bytes >= best.dram_bytes


def test_chain_dp_matches_ilp_and_brute_force():
    fg = build_fusion_graph(conv_chain())
    assert is_chain(fg)
    for style, buffer in (("lbdf", 1500), ("lbdf", 2100), ("brr", 2000)):
        cost = make_cost_model(fg, style, buffer)
        dp = chain_optimum(cost)
        ilp = ilp_optimum(cost, valid_groups(cost, 1000), time_limit=30)
        assert dp.dram_bytes == ilp.dram_bytes == brute_force(cost)
        assert sorted(i for g in dp.groups for i in bits(g)) == list(range(fg.n))


def test_enumeration_stops_at_its_cap():
    fg = build_fusion_graph(random_dag(3, n_ops=40))
    cost = make_cost_model(fg, "lbdf", 1 << 30)  # everything fits: exponentially many groups
    assert valid_groups(cost, max_candidates=500) is None
    assert exact_optimum(cost, max_candidates=500) is None


def _brute_valid_groups(cost, within):
    """Every subset of ``within``: connected, convex (no op outside it both below and above
    one of its ops) and valid."""
    fg = cost.fg
    anc, desc = fg.ancestors(), fg.descendants()
    ops = bits(within)
    found = set()
    for pick in range(1, 1 << len(ops)):
        mask = sum(1 << ops[k] for k in range(len(ops)) if pick >> k & 1)
        below = above = 0
        for i in bits(mask):
            below |= desc[i]
            above |= anc[i]
        if fg.is_connected(mask) and not below & above & ~mask and cost.valid(mask):
            found.add(mask)
    return found


@pytest.mark.parametrize("seed,style,buffer", [(4, "lbdf", 3000), (5, "brr", 2500), (6, "lbdf", 1 << 30)])
def test_enumeration_lists_exactly_the_connected_convex_valid_groups(seed, style, buffer):
    fg = build_fusion_graph(random_dag(seed, n_ops=13))
    cost = make_cost_model(fg, style, buffer)
    whole = valid_groups(cost, 100_000)
    assert len(whole) == len(set(whole))  # each group once
    assert set(whole) == _brute_valid_groups(cost, fg.all_mask)
    assert len(whole) > fg.n  # groups of more than one op among them
    # within a part of the graph: only its groups, and a group convex there but not in the
    # whole graph (a path leaving the part) is not one
    part = sum(1 << i for i in range(fg.n) if i % 3 != 1)
    inside = valid_groups(cost, 100_000, within=part)
    assert set(inside) == _brute_valid_groups(cost, part)


def test_a_zoo_models_optimum_is_proven_by_the_ilp_and_every_other_bound_and_plan_respects_it():
    """MobileNetV3-Small at 224², BRR 256 KB (2,439 valid groups): the proof is the ILP's, exact,
    its plan legal and of valid groups; the edge-cut relaxation bounds below it and no search
    plans below it."""
    import fuser
    from fuser.fusion.bound import cut_bound
    from fuser.fusion.exact import optimum_and_plan

    fg = build_fusion_graph(fuser.optimize("zoo:mobilenet_v3_small", input_shapes=(1, 3, 224, 224)).graph)
    cost = make_cost_model(fg, "brr", 256 * 1024)
    answer, groups = optimum_and_plan(cost, 0, time_limit=120)
    assert answer["exact"] and answer["method"] == "ilp" and answer["plan_settled"]
    assert cost.dram(groups) == answer["bytes"] == answer["plan_bytes"]
    assert partition_problems(fg, groups) == [] and all(cost.valid(g) for g in groups)
    assert sorted(i for g in groups for i in bits(g)) == list(range(fg.n))
    assert cut_bound(cost, time_limit=10, max_rounds=2).lower_bytes <= answer["bytes"]
    for search in ("greedy", "nsga2"):
        plan, _ = partition_fusion_graph(fg, buffer="256KB", style="brr", search=search, budget=200)
        assert plan.dram_bytes >= answer["bytes"]


def crossed():
    """a = conv(x), c = conv(x), b = a + c, d = a * c: the groups {a, b} and {c, d} read each
    other's first op, a cycle."""
    from test_fusion_graphs import _conv, finish

    from fuser.ir import Graph

    g = Graph("crossed")
    x = g.add_input("x", (1, 8, 8, 8))
    a, c = _conv(g, x, 8, 8, 3, name="a"), _conv(g, x, 8, 8, 3, name="c")
    return finish(g, [g.add_node("Add", [a, c], name="b").output, g.add_node("Mul", [a, c], name="d").output])


def test_a_cyclic_set_partition_falls_back_to_the_level_rows():
    """LBDF at 1,000 bytes: set partitioning alone picks {a, b} and {c, d} (5,264 B), which no
    running order allows; the ILP then solves with the level rows and proves the least legal
    plan, the brute force's 5,776 B."""
    from fuser.fusion.exact import _solve_partition
    from fuser.fusion.plan import groups_acyclic

    fg = build_fusion_graph(crossed())
    cost = make_cost_model(fg, "lbdf", 1000)
    candidates = valid_groups(cost, 1000)
    alone, optimal, _ = _solve_partition(cost, candidates, 30, None, levels=False)
    assert optimal and not groups_acyclic(fg, alone) and sum(cost.cost(g).dram_bytes for g in alone) == 5264
    best = ilp_optimum(cost, candidates, time_limit=30)
    assert best.optimal and best.dram_bytes == brute_force(cost) == 5776
    assert partition_problems(fg, best.groups) == []
