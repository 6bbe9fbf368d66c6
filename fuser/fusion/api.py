"""``partition``: the one call that plans fusion groups for a model."""

from __future__ import annotations

import time

from fuser.ir import FuserError, Graph
from fuser.units import format_size, parse_size

from .cost import CostModel, GroupCost, make_cost_model
from .explain import ExactExplainer, Explainer
from .opgraph import FusionGraph, build_fusion_graph
from .plan import Plan, PlanGroup, topological_groups
from .search import SEARCHES, Evaluated, PlanEvaluator, Progress, pareto_front, run_search
from .split import SPLITS, Splitter, make_splitter

EXPLAINERS = ("exact", "gnn")


def make_explainer(name: str, cost: CostModel, seed: int = 0) -> Explainer:
    if name == "exact":
        return ExactExplainer(cost)
    if name == "gnn":
        from .gnn import GNNExplainer

        return GNNExplainer.for_cost_model(cost, seed=seed)
    raise FuserError(f"unknown explainer '{name}'; choose one of {', '.join(EXPLAINERS)}")


def group_report(cost: CostModel, mask: int) -> PlanGroup:
    c: GroupCost = cost.cost(mask)
    return PlanGroup(
        ops=cost.fg.group_names(mask),
        buffer_bytes=c.buffer_bytes,
        dram_bytes=c.dram_bytes,
        valid=c.valid,
        fits=c.fits,
        weight_bytes=c.weight_bytes,
        feature_bytes=c.feature_bytes,
        input_bytes=c.input_bytes,
        output_bytes=c.output_bytes,
        tiles=c.tiles if cost.name == "brr" else None,
        batch_dram_bytes=cost.batch_dram(c) if cost.fg.images > 1 else None,
    )


def build_plan(
    cost: CostModel, best: Evaluated, front: list[Evaluated], search: dict, splitter: Splitter
) -> Plan:
    fg = cost.fg
    plan = Plan(
        model=fg.graph.name,
        style=cost.name,
        buffer_bytes=cost.buffer_bytes,
        element_bytes=cost.element_bytes,
        dram_bytes=best.dram,
        no_fusion_dram_bytes=cost.no_fusion_dram(),
        layer_fusion_dram_bytes=cost.layer_fusion_dram(),
        peak_buffer_bytes=best.peak,
        groups=[group_report(cost, g) for g in topological_groups(fg, best.groups)],
        splits=[splitter.describe(step) for step in best.steps],
        unfusable=[{"op": fg.names[i], "reason": why} for i, why in cost.unfusable()],
        search=search,
        pareto=[{"dram_bytes": p.dram, "peak_buffer_bytes": p.peak, "groups": len(p.groups)} for p in front],
    )
    if fg.images > 1:
        plan.images = fg.images
        plan.batch_dram_bytes = sum(g.batch_dram_bytes for g in plan.groups)
    return plan


def partition_fusion_graph(
    fg: FusionGraph,
    *,
    buffer: int | str = "256KB",
    style: str = "lbdf",
    search: str = "local",
    split: str = "explain",
    budget: int = 1000,
    seed: int = 0,
    element_bytes: int = 1,
    explainer: str = "exact",
    progress: Progress | None = None,
    gap: bool = False,
    gap_time_limit: float = 20.0,
    gap_block_ops: int | None = None,
    gap_price_rounds: int | None = None,
    gap_prices: str | None = None,
    gap_block_starts: list[int] | None = None,
) -> tuple[Plan, float]:
    """Plan ``fg`` (an indexed graph, reusable across calls); returns (plan, search seconds).
    ``gap``: also prove how far the plan is from optimal (``plan.optimum``, ``plan.gap``); where
    that proof finds the optimum, or a legal plan by a bound that settled before its time limit,
    and it moves less DRAM than the search's plan, the plan returned is that one
    (``plan.search["search"]`` gains ``+exact``, ``["adopted"]`` says from which method and what
    the search's plan moved); or, when cheaper still, the search's plan polished
    (``fuser.fusion.bound.polish``: ``+polish``): neighbouring groups merged and runs of ops
    re-planned exactly where that saves. ``gap_time_limit``, ``gap_block_ops``,
    ``gap_price_rounds``: the proof's seconds, and the ops per block and most price rounds of its
    block bound (``optimum_and_plan``); ``gap_prices``: a file that keeps its prices between
    runs, so that a long proof can go on where the last one stopped; ``gap_block_starts``: the
    ops that begin its blocks, instead of cuts chosen for ``gap_block_ops``."""
    if search not in SEARCHES:
        raise FuserError(f"unknown search '{search}'; choose one of {', '.join(SEARCHES)}")
    if split not in SPLITS:
        raise FuserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    buffer_bytes = parse_size(buffer) if isinstance(buffer, str) else int(buffer)
    cost = make_cost_model(fg, style, buffer_bytes, element_bytes)
    splitter = make_splitter(
        split, cost, seed, make_explainer(explainer, cost, seed) if split == "explain" else None
    )
    evaluator = PlanEvaluator(cost, splitter, budget, progress)
    start = time.perf_counter()
    best, front = run_search(search, evaluator, seed)
    seconds = time.perf_counter() - start
    info = {
        "search": search,
        "split": split,
        "explainer": explainer if split == "explain" else None,
        "budget": budget,
        "seed": seed,
        "plans_evaluated": evaluator.used,
        "buffer": format_size(buffer_bytes),
    }
    if not gap:
        return build_plan(cost, best, front, info, splitter), seconds
    from .bound import polish
    from .exact import optimum_and_plan

    optimum, groups = optimum_and_plan(
        cost, best.dram, gap_time_limit, gap_block_ops, gap_price_rounds, gap_prices, gap_block_starts
    )
    # Only a plan from a bound that ended on its own (a proven optimum, or a block bound whose
    # every block settled): a plan met before a time limit stopped the proof would make the
    # plan depend on the machine's speed (same inputs and seed, same plan).
    choices = []
    if optimum["plan_settled"] and groups is not None:
        choices.append((optimum["plan_bytes"], 0, optimum["plan_from"], groups, "exact"))
    if not (choices and optimum["exact"]):  # nothing beats a proven optimum: no polish to run
        polished = polish(cost, best.groups)  # groups merged, runs and regions re-planned
        choices.append((cost.dram(polished), 1, "polish", polished, "polish"))
    dram, _, source, groups, tag = min(choices, key=lambda c: c[:2])
    if dram < best.dram:
        info["search"] = f"{search}+{tag}"
        info["adopted"] = {"from": source, "search_dram_bytes": best.dram}
        best, front = adopt(evaluator, groups, front)
    plan = build_plan(cost, best, front, info, splitter)
    plan.optimum = optimum
    return plan, seconds


def adopt(
    evaluator: PlanEvaluator, groups: list[int], front: list[Evaluated]
) -> tuple[Evaluated, list[Evaluated]]:
    """The legal plan of valid groups the optimality proof met, as the search's best: no split
    made it (its groups are valid as found), and it joins the Pareto front."""
    cost = evaluator.cost
    assert all(cost.valid(g) for g in groups if g & (g - 1)), "the proof's plan holds an invalid group"
    exact = Evaluated(
        evaluator.genome_of(groups),
        sorted(groups),
        sum(cost.cost(g).dram_bytes for g in groups),
        evaluator.peak(groups),
    )
    return exact, pareto_front([*front, exact])


def partition(
    graph: Graph,
    buffer: int | str = "256KB",
    style: str = "lbdf",
    search: str = "local",
    split: str = "explain",
    budget: int = 1000,
    seed: int = 0,
    *,
    element_bytes: int = 1,
    explainer: str = "exact",
    progress: Progress | None = None,
    gap: bool = False,
    per_image: bool = True,
    layers: bool = False,
) -> Plan:
    """Partition ``graph``'s ops into fusion groups under an on-chip buffer of ``buffer`` bytes
    (``fuser.partition`` takes any model and optimizes it first).

    ``buffer``: bytes or a size such as ``"256KB"`` (KB = 1024 bytes).
    ``style``: ``"lbdf"`` or ``"brr"`` (see ``fuser.fusion.cost``).
    ``search``: ``"greedy"``, ``"random"``, ``"local"`` or ``"nsga2"``; ``budget`` plans.
    ``split``: ``"random"`` or ``"explain"`` (with ``explainer`` ``"exact"`` or ``"gnn"``).
    ``gap``: prove the plan's distance to optimal, and hand back the better plan the proof
    met (see ``partition_fusion_graph``).
    ``per_image``: at a batch above 1, plan for one image of it (how fuser's group kernels run:
    images outermost); ``False`` sizes every group for the whole batch at once.
    ``layers``: plan over layers, each op with the elementwise ops that only extend it (what a
    compiler fuses whatever the buffer: ``FusionGraph.layer_kernels``), so the plan never moves
    more than layer fusion; ``False`` plans single ops, as the paper's model does.
    The same inputs and seed give the same plan.
    """
    plan, _ = partition_fusion_graph(
        build_fusion_graph(graph, per_image, layers),
        buffer=buffer,
        style=style,
        search=search,
        split=split,
        budget=budget,
        seed=seed,
        element_bytes=element_bytes,
        explainer=explainer,
        progress=progress,
        gap=gap,
    )
    return plan
