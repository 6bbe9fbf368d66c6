"""The planner against the plans it made before its speed-up (``saved_plans.py``).

Where the search is unchanged (the random split) every plan must be the same: groups,
split explanations, Pareto front. The explain split now splits chain groups by an exact
DP and falls back to interval DP where its tree search runs out of nodes, so there
each plan must move no more DRAM than the saved one.
"""

import json

import pytest
from saved_plans import SAVED, cases, fusion_graph, graph_fingerprint, key, plan_case, summary
from util import HEAVY

SAVED_PLANS = json.loads(SAVED.read_text())
# Where the capped tree search does worse (measured; heavy run only): Inception v2 LBDF,
# whose all-fused group needs ~100,000 tree nodes and now gets 2,000 plus interval DP.
KNOWN_WORSE = {
    f"light_inception_v2|lbdf|{buffer}|{search}|explain|60|0": limit
    for buffer, limit in (("64KB", 0.012), ("256KB", 0.023))
    for search in ("local", "random", "nsga2")
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
