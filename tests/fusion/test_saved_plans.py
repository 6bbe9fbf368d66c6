"""The planner against the plans it made before its speed-up (``saved_plans.py``).

Where the search is unchanged (the random split) every plan must be the same: groups,
split explanations, Pareto front. The explain split now splits chain groups by an exact
DP and big groups, and those its tree search runs out of nodes on, by interval DP, so
there each plan must move no more DRAM than the saved one, but for the measured
exceptions listed (``KNOWN_WORSE``).
"""

import json

import pytest
from saved_plans import SAVED, cases, fusion_graph, graph_fingerprint, key, plan_case, summary
from util import HEAVY

SAVED_PLANS = json.loads(SAVED.read_text())
# Where the search lands worse (measured; heavy run only): Inception v2 LBDF 256 KB with local
# search, +0.44% (the all-fused group needs ~100,000 tree nodes; big groups get interval DP).
# Every other Inception v2 and DenseNet-121 explain plan moves less (BRR 256 KB: 10-21% less).
KNOWN_WORSE = {"light_inception_v2|lbdf|256KB|local|explain|60|0": 0.005}
# Where big groups' interval DP (fuser.fusion.split.BIG_GROUP_OPS) lands the search elsewhere on the
# small synthetic graphs (measured). Their big groups' splits move less in sum than the tree search's
# (random_dag_0: 210 KB less over 15 groups, LBDF 2KB NSGA-II), but a search's path is chaotic; on
# random_dag_2 one of 8 big groups splits 2,048 B worse and sits in the best random plan. On every
# zoo model (NSGA-II 2000, 128/256 KB, LBDF/BRR) the plans move less or the same.
KNOWN_WORSE |= {
    "random_dag_0|lbdf|2KB|nsga2|explain|80|0": 0.005,
    "random_dag_0|lbdf|2KB|nsga2|explain|80|1": 0.02,
    "random_dag_0|brr|2KB|local|explain|80|0": 0.013,
    "random_dag_0|brr|2KB|local|explain|80|1": 0.036,
    "random_dag_2|lbdf|8KB|random|explain|80|0": 0.069,
}
# Reduced run: the small graphs in full, the two large onnx models with greedy search only.
LARGE = ("light_inception_v2", "light_densenet121")
CASES = [c for c in cases() if HEAVY or c[0] not in LARGE or c[3] == "greedy"]


def test_saved_graphs_are_the_graphs_planned():
    for name, fingerprint in SAVED_PLANS["graphs"].items():
        assert graph_fingerprint(fusion_graph(name)) == fingerprint, f"{name} changed: record again"


@pytest.mark.parametrize("case", CASES, ids=key)
def test_plan_matches_the_saved_plan(case):
    saved = SAVED_PLANS["plans"][key(case)]
    now = summary(plan_case(case))
    if case[4] == "random":
        assert now == saved
    else:
        assert now["dram_bytes"] <= saved["dram_bytes"] * (1 + KNOWN_WORSE.get(key(case), 0))
