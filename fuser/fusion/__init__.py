"""Fusion groups under an on-chip buffer budget (after Mills et al., arXiv 2501.00636).

    import fuser
    plan = fuser.partition("zoo:resnet18", buffer="128KB", style="lbdf",
                           search="local", split="explain", budget=1000, seed=0)
    plan.dram_bytes, plan.no_fusion_dram_bytes, plan.groups, plan.splits
    plan.save("plan.json"); fuser.fusion.Plan.load("plan.json")

Modules: ``opgraph`` (indexed ops, tensors, row rules), ``cost`` (LBDF and BRR:
F_β and F_D), ``plan`` (partitions, genome, JSON), ``split`` and ``explain``
(splitting invalid groups, explanations), ``gnn`` (the learned explainer),
``search`` (greedy, random, local, NSGA-II), ``exact`` (optimum of small graphs).
"""

from fuser.units import parse_size

from .api import EXPLAINERS, partition, partition_fusion_graph
from .cost import BRR, LBDF, STYLES, CostModel, GroupCost, make_cost_model
from .explain import ExactExplainer, Explanation
from .opgraph import FusionGraph, build_fusion_graph
from .plan import Plan, PlanGroup, decode, encode, partition_problems
from .search import SEARCHES, PlanEvaluator
from .split import SPLITS, ExplainSplitter, RandomSplitter, rectify_rate

__all__ = [
    "partition",
    "partition_fusion_graph",
    "Plan",
    "PlanGroup",
    "FusionGraph",
    "build_fusion_graph",
    "CostModel",
    "LBDF",
    "BRR",
    "GroupCost",
    "make_cost_model",
    "parse_size",
    "ExactExplainer",
    "Explanation",
    "ExplainSplitter",
    "RandomSplitter",
    "PlanEvaluator",
    "rectify_rate",
    "partition_problems",
    "encode",
    "decode",
    "STYLES",
    "SEARCHES",
    "SPLITS",
    "EXPLAINERS",
]
