"""The certified lower bound (edge-cut relaxation, ``fuser.fusion.bound``) against the exact
optimum (ILP, chain DP) where that is computable, and against every search's plans."""

import pytest
from test_fusion_graphs import conv_chain, random_dag, residual_block, se_block

from fuser.fusion import build_fusion_graph, make_cost_model, partition_fusion_graph
from fuser.fusion.bound import cut_bound
from fuser.fusion.exact import exact_optimum, optimality_gap
from fuser.fusion.plan import partition_problems

CASES = [
    (residual_block, "lbdf", 4000),
    (residual_block, "brr", 3000),
    (se_block, "lbdf", 1000),
    (se_block, "brr", 500),
    (conv_chain, "lbdf", 1500),
    (conv_chain, "brr", 2000),
    *(
        (lambda s=s: random_dag(s, n_ops=12), style, buffer)
        for s in range(4)
        for style, buffer in (("lbdf", 2500), ("brr", 2500), ("brr", 1000))
    ),
]


@pytest.mark.parametrize("build,style,buffer", CASES)
def test_bound_closes_on_the_exact_optimum(build, style, buffer):
    fg = build_fusion_graph(build())
    cost = make_cost_model(fg, style, buffer)
    best = exact_optimum(cost)
    assert best.optimal
    bound = cut_bound(cost, time_limit=30)
    assert bound.lower_bytes <= best.dram_bytes
    # these graphs are small: row generation ends on a legal plan of valid groups at the optimum
    assert bound.exact and bound.lower_bytes == bound.plan_bytes == best.dram_bytes
    assert partition_problems(fg, bound.plan) == [] and all(cost.valid(g) for g in bound.plan)
    assert sum(cost.cost(g).dram_bytes for g in bound.plan) == best.dram_bytes


@pytest.mark.parametrize("seed", range(3))
def test_every_rounds_bound_is_below_the_optimum_and_grows(seed):
    fg = build_fusion_graph(random_dag(seed, n_ops=12))
    cost = make_cost_model(fg, "brr", 1000)
    optimum = exact_optimum(cost).dram_bytes
    bounds = [cut_bound(cost, time_limit=30, max_rounds=k).lower_bytes for k in (1, 2, 3, 4)]
    assert bounds == sorted(bounds) and bounds[-1] <= optimum
    assert bounds[0] > 0


@pytest.mark.parametrize("style,buffer", [("lbdf", "4KB"), ("brr", "4KB"), ("brr", "8KB")])
def test_gap_is_a_real_bound_below_every_search(style, buffer):
    fg = build_fusion_graph(random_dag(0, n_ops=40))
    cost = make_cost_model(fg, style, 4096 if buffer == "4KB" else 8192)
    plans = [
        partition_fusion_graph(fg, buffer=buffer, style=style, search=search, budget=60)[0]
        for search in ("greedy", "local", "nsga2", "random")
    ]
    gap = optimality_gap(cost, plans[0].dram_bytes, time_limit=20)
    trivial = cost.lower_dram(fg.all_mask)
    assert trivial < gap["bytes"] <= min(p.dram_bytes for p in plans)
    assert gap["plan_bytes"] is None or gap["bytes"] <= gap["plan_bytes"]
    if gap["exact"]:
        assert gap["plan_bytes"] == gap["bytes"]
