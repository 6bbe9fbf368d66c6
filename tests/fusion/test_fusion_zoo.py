"""Fusion plans on zoo models: every group valid and connected, groups acyclic, all ops
covered, DRAM never above no fusion. Reduced form: a few models unless FUSER_HEAVY=1."""

import pytest
from test_fusion_plan import assert_legal
from util import HEAVY
from zoo_cache import zoo_case

import fuser
from fuser import models
from fuser.fusion import build_fusion_graph, partition_fusion_graph

# Reduced: one model per op family the row rules treat differently (residual adds, channel
# concats, channel shuffles with 5-D reshapes and transposes); SE barriers are in the other tests.
REDUCED = ["resnet18", "squeezenet1_1", "shufflenet_v2_x1_0"]
MODELS = models.names() if HEAVY else REDUCED


@pytest.mark.heavy
@pytest.mark.parametrize("name", MODELS)
def test_plans_on_zoo_model_are_legal(name):
    graph = fuser.optimize(zoo_case(name)[2]).graph
    fg = build_fusion_graph(graph)
    budget = 200 if HEAVY else 20
    for style, buffer in (("lbdf", "64KB"), ("brr", "32KB")):
        for search, split in (("greedy", "explain"), ("local", "explain"), ("nsga2", "random")):
            plan, _ = partition_fusion_graph(
                fg, buffer=buffer, style=style, search=search, split=split, budget=budget, seed=0
            )
            assert_legal(fg, plan)
            if search == "local":  # fusion pays somewhere in every zoo model
                assert plan.dram_bytes < plan.no_fusion_dram_bytes
