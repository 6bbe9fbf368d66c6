"""Explanations of invalid groups: culprits, cuts that really disconnect, splits that fit."""

import random

import networkx as nx
import pytest
from test_fusion_graphs import random_dag, residual_block, se_block
from util import HEAVY

from fuser.fusion import build_fusion_graph, partition_fusion_graph, rectify_rate
from fuser.fusion.cost import LBDF
from fuser.fusion.explain import ExactExplainer
from fuser.fusion.opgraph import bits
from fuser.fusion.plan import partition_problems, topological_groups
from fuser.fusion.split import ExplainSplitter, RandomSplitter, edge_cuts, severed_edges


def names(fg, mask):
    return set(fg.group_names(mask))


def assert_cut_disconnects(fg, group, pieces):
    """Without the severed edges the group falls apart into exactly ``pieces``, which run in order."""
    severed = set(severed_edges(fg, pieces))
    g = nx.Graph()
    g.add_nodes_from(bits(group))
    g.add_edges_from(e for e in fg.inner_edges(group) if e not in severed)
    components = sorted(sum(1 << i for i in c) for c in nx.connected_components(g))
    assert len(components) >= 2 and components == sorted(pieces)
    assert topological_groups(fg, list(pieces)) is not None


def test_se_block_blames_the_gate_multiply_and_cuts_before_it():
    fg = build_fusion_graph(se_block())
    cost = LBDF(fg, 1000)  # the whole block needs 1102 bytes: t = conv(x) is held whole for the Mul
    group = fg.all_mask
    explanation = ExactExplainer(cost).explain(group)
    excess = cost.cost(group).buffer_bytes - cost.buffer_bytes
    culprits = [fg.names[i] for i in explanation.culprits(excess)]
    assert culprits[0] == "excite"  # it waits for mean(t) while reading t's first row
    assert explanation.op_scores[fg.names.index("excite")] >= 800  # all 10 rows of t
    assert sum(explanation.op_scores.values()) == pytest.approx(cost.cost(group).buffer_bytes)
    result = ExplainSplitter(cost).split(group)
    assert all(cost.valid(p) for p in result.pieces)
    assert_cut_disconnects(fg, group, result.pieces)
    step = result.steps[0]
    record = ExplainSplitter(cost).describe(step)
    assert record["culprits"][0]["op"] == "excite" and record["buffer_bytes_before"] == 1102
    assert all(b < 1000 for b in record["buffer_bytes_after"])
    # the cut that fixes it severs t -> Mul: the gated tensor goes to DRAM instead
    assert {"from": "conv", "to": "excite"}.items() <= record["cut_edges"][0].items() or any(
        c["from"] == "conv" and c["to"] == "excite" for c in record["cut_edges"]
    )


def test_residual_block_blames_the_convolutions_and_cuts_the_skip_edge_too():
    fg = build_fusion_graph(residual_block())
    cost = LBDF(fg, 4000)  # conv1 + conv2 weights (2 x 2320) cannot share the buffer
    group = fg.all_mask
    explanation = ExactExplainer(cost).explain(group)
    excess = cost.cost(group).buffer_bytes - cost.buffer_bytes
    assert set(fg.names[i] for i in explanation.culprits(excess)) <= {"conv1", "conv2"}
    splitter = ExplainSplitter(cost)
    result = splitter.split(group)
    assert all(cost.valid(p) for p in result.pieces)
    assert not any(names(fg, p) >= {"conv1", "conv2"} for p in result.pieces)
    assert_cut_disconnects(fg, group, result.pieces)
    # every candidate cut disconnects the group; cutting conv1 -> conv2's path also cuts stem -> add
    stem, add = fg.names.index("stem"), fg.names.index("add")
    relu1, conv2 = fg.names.index("relu1"), fg.names.index("conv2")
    for edge in explanation.ranked_edges():
        for down in edge_cuts(fg, group, edge):
            pieces = fg.convex_components(down) + fg.convex_components(group & ~down)
            assert_cut_disconnects(fg, group, pieces)
            if down >> stem & 1 and not down >> add & 1:
                assert (stem, add) in severed_edges(fg, pieces)
    down = fg.closure_up(relu1, group)
    assert set(severed_edges(fg, [down, group & ~down])) == {(relu1, conv2), (stem, add)}


def test_split_explanations_are_in_the_plan():
    fg = build_fusion_graph(residual_block())
    plan, _ = partition_fusion_graph(fg, buffer=4000, search="local", split="explain", budget=20)
    assert plan.splits, "the all-fused start overflows: its split is how the plan came about"
    for s in plan.splits:
        assert s["buffer_bytes_before"] >= plan.buffer_bytes
        assert s["culprits"] and s["cut_edges"]
        assert len(s["buffer_bytes_after"]) == len(s["pieces"]) >= 2
        assert set().union(*(set(p["ops"]) for p in s["pieces"])) == set(s["group"])


def test_random_split_is_legal_and_the_explain_split_moves_less_dram():
    fg = build_fusion_graph(random_dag(11, n_ops=60))
    cost = LBDF(fg, 6000)
    rng = random.Random(0)
    groups = [
        g
        for g in (fg.convex_components(fg.all_mask & ~((1 << rng.randrange(fg.n)) - 1))[0] for _ in range(20))
        if not cost.valid(g)
    ]
    assert groups
    explain, rand = ExplainSplitter(cost), RandomSplitter(cost, seed=0)
    peel = ExplainSplitter(cost, lookahead_ops=0)  # the cheaper rule: keep the largest valid piece
    peel.big_group_ops = None  # a rule of the tree search: not for big groups' interval DP
    for g in groups:
        for splitter in (explain, rand, peel):
            result = splitter.split(g)
            pieces = result.pieces
            assert sorted(i for p in pieces for i in bits(p)) == bits(g)
            assert all(cost.valid(p) for p in pieces)
            assert result.dram == sum(cost.cost(p).dram_bytes for p in pieces)
            assert partition_problems(fg, pieces + [1 << i for i in bits(fg.all_mask & ~g)]) == []
    assert any(s.rule == "largest valid piece" for g in groups for s in peel.split(g).steps)
    assert sum(explain.split(g).dram for g in groups) <= sum(rand.split(g).dram for g in groups)


def test_exact_explainer_rectifies_more_often_than_random_cuts():
    from fuser.fusion.gnn import sample_groups

    fg = build_fusion_graph(random_dag(4, n_ops=80))
    cost = LBDF(fg, 8000)
    near_misses = [
        g
        for g in sample_groups(fg, 400, random.Random(1))
        if not cost.valid(g)
        and g & cost.fusable_mask == g
        and cost.cost(g).buffer_bytes < 2 * cost.buffer_bytes
    ]
    assert len(near_misses) >= 10
    exact = rectify_rate(cost, near_misses, ExactExplainer(cost), top=1)
    assert exact >= rectify_rate(cost, near_misses, None, top=1)
    assert exact >= 0.5


@pytest.mark.heavy
def test_gnn_classifier_is_accurate_and_its_explanations_split_validly():
    """The paper's learned explainer: >= 95% held-out accuracy over several buffer sizes.
    Reduced form: a random 80-op DAG and 1000 groups; FUSER_HEAVY=1: MobileNetV2, 3000."""
    from fuser.fusion.gnn import TRAIN_BUFFERS, GNNExplainer

    if HEAVY:
        from zoo_cache import zoo_case

        import fuser

        fg = build_fusion_graph(fuser.optimize(zoo_case("mobilenet_v2")[2]).graph)
        buffers, samples, epochs = TRAIN_BUFFERS, 3000, 30
    else:
        fg = build_fusion_graph(random_dag(4, n_ops=80))
        buffers, samples, epochs = (1000, 2000, 4000, 8000, 16000), 1000, 20
    cost = LBDF(fg, buffers[2])
    gnn = GNNExplainer.for_cost_model(cost, samples=samples, epochs=epochs, buffers=buffers)
    assert gnn.report.heldout_accuracy >= 0.95, gnn.report
    assert 0.2 < gnn.report.valid_fraction < 0.8  # both classes are well represented
    splitter = ExplainSplitter(cost, gnn)
    group = fg.closure_up(40, fg.all_mask)  # op 40 and its ancestors: an invalid, convex group
    assert not cost.valid(group)
    pieces = splitter.split(group).pieces
    assert all(cost.valid(p) for p in pieces)
    assert partition_problems(fg, pieces + [1 << i for i in bits(fg.all_mask & ~group)]) == []


@pytest.mark.parametrize("graph", ["dag0", "dag3", "se", "square"])
def test_local_edge_blame_is_both_ends_plus_what_the_consumer_dictates(graph):
    """s(u) + s(v) + the bytes v dictates on every tensor u sends it, counted per read
    (``Mul(t, t)`` reads t twice), for every inner edge: the explainer's local blame by hand."""
    from test_fusion_cost import _square_chain

    g = {"se": se_block, "square": _square_chain}.get(graph) or (lambda: random_dag(int(graph[3:]), 40))
    fg = build_fusion_graph(g())
    cost = LBDF(fg, 1024)
    explainer = ExactExplainer(cost)
    explainer.shortlist = 0  # every edge ranked by local blame alone: local / (1 + F_β) − 1
    for mask in [fg.all_mask, *fg.convex_components(fg.all_mask & ~1)]:
        if mask & (mask - 1) == 0:
            continue
        b = cost.breakdown(mask)
        scores = dict(b.op_weight)
        for t, nbytes in b.tensor_bytes.items():
            scores[b.demander[t]] += nbytes
        total = sum(scores.values())
        got = explainer.explain(mask).edge_scores
        assert set(got) == set(fg.inner_edges(mask))
        for u, v in fg.inner_edges(mask):
            dictated = sum(b.tensor_bytes[t] for t in fg.edge_tensors[(u, v)] if b.demander[t] == v)
            assert got[(u, v)] == (scores[u] + scores[v] + dictated) / (1 + total) - 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_candidate_cuts_are_the_cuts_of_cut_at(seed):
    """The explain split's inline cuts: the same down-sets, pieces and order as ``edge_cuts`` and
    ``cut_at`` give for every inner edge, on random convex groups."""
    from fuser.fusion.split import cut_at

    fg = build_fusion_graph(random_dag(seed, 40))
    cost = LBDF(fg, 2048)
    splitter = ExplainSplitter(cost)
    splitter.top_edges = 10**6
    rng = random.Random(seed)
    groups = [fg.all_mask] + [
        fg.convex_components(fg.all_mask & ~(1 << rng.randrange(fg.n)))[0] for _ in range(20)
    ]
    for mask in groups:
        edges = fg.inner_edges(mask)
        rng.shuffle(edges)
        want, seen = [], set()
        for edge in edges:
            for down in edge_cuts(fg, mask, edge):
                if down not in seen:
                    seen.add(down)
                    want.append(cut_at(fg, cost, mask, down, edge))
        got = splitter.candidate_cuts(mask, edges)
        assert [(c.edge, c.down, c.pieces) for c in got] == [(c.edge, c.down, c.pieces) for c in want]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_balance_from_closure_matrices_equals_the_member_product(seed, monkeypatch):
    """Edge scores with the closure sums read from the n × n closure matrices (graphs of up to
    1024 ops) are exactly those of the per-group member product used past that size."""
    from fuser.fusion import opgraph

    def explanations():
        fg = build_fusion_graph(random_dag(seed, 40))
        explainer = ExactExplainer(LBDF(fg, 1024))
        rng = random.Random(seed)
        groups = [fg.all_mask] + [
            fg.convex_components(fg.all_mask & ~(1 << rng.randrange(fg.n)))[0] for _ in range(10)
        ]
        return [explainer.explain(g).edge_scores for g in groups if g & (g - 1)]

    with_matrices = explanations()
    monkeypatch.setattr(opgraph, "CLOSURE_MATRIX_OPS", 0)
    assert explanations() == with_matrices


def _invalid_groups(fg, cost, seed, count=12):
    """The whole graph and random convex groups of it that do not fit."""
    rng = random.Random(seed)
    groups = [fg.all_mask]
    for _ in range(4 * count):
        drop = fg.all_mask
        for _ in range(rng.randrange(1, 6)):
            drop &= ~(1 << rng.randrange(fg.n))
        groups.extend(fg.convex_components(drop))
    return list(dict.fromkeys(g for g in groups if not cost.valid(g)))[:count]


def _full_split(cost, mask):
    """The tree search with no node budget and no interval-DP bound: the split by definition."""
    splitter = ExplainSplitter(cost, tree_nodes=10**9)
    splitter.big_group_ops = fg_size = cost.fg.n
    assert mask.bit_count() <= fg_size
    return splitter.split(mask)


@pytest.mark.parametrize("style", ["lbdf", "brr"])
def test_tree_search_cutoff_refuses_only_splits_that_cannot_win(style):
    """``_bounded(g, limit)`` (the tree search's cutoff) answers None only when the full split of
    g moves at least ``limit`` bytes, and otherwise the full split itself, pieces and all."""
    from fuser.fusion.cost import make_cost_model

    refused = answered = 0
    for seed in range(4):
        fg = build_fusion_graph(random_dag(seed, 28))
        cost = make_cost_model(fg, style, 2048)
        for mask in _invalid_groups(fg, cost, seed, 8):
            full = _full_split(cost, mask)
            for limit in (full.dram - 1, full.dram, full.dram + 1, full.dram // 2, cost.lower_dram(mask)):
                splitter = ExplainSplitter(cost, tree_nodes=10**9)
                splitter._nodes_left, splitter._cutoffs = 10**9, True  # as in a big group's search
                got = splitter._bounded(mask, limit)
                if got is None:
                    assert full.dram >= limit
                    refused += 1
                else:
                    assert (got.dram, got.pieces) == (full.dram, full.pieces)
                    answered += 1
    assert refused and answered


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("style", ["lbdf", "brr"])
def test_big_groups_move_no_more_than_their_interval_split_and_stay_legal(seed, style):
    """A group over ``big_group_ops`` ops: interval DP bounds a smaller tree search, so its split
    moves no more than the interval DP's (groups without unfusable ops: those are taken out
    first, whatever the group's size), and a full search beats neither."""
    from fuser.fusion.cost import make_cost_model

    fg = build_fusion_graph(random_dag(seed, 40))
    cost = make_cost_model(fg, style, 8192)
    groups = [g for g in _invalid_groups(fg, cost, seed, 20) if not g & ~cost.fusable_mask]
    assert len(groups) >= 10
    for mask in groups:
        big = ExplainSplitter(cost)
        big.big_group_ops, big.big_tree_nodes = 0, 5
        got = big.split(mask)
        assert got.dram <= big.interval_split(mask).dram
        unlimited = ExplainSplitter(cost)
        unlimited.big_group_ops, unlimited.big_tree_nodes = 0, 10**9
        assert unlimited.split(mask).dram <= min(big.interval_split(mask).dram, _full_split(cost, mask).dram)
        assert got.dram == sum(cost.cost(p).dram_bytes for p in got.pieces)
        assert sum(got.pieces) == mask and all(cost.valid(p) for p in got.pieces)
        assert topological_groups(fg, got.pieces) is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_found_past_the_node_budget_stay_in_their_search(seed):
    """After big groups' searches that ran out of nodes, every split the splitter shares between
    searches is the full split of its group, and asking again gives the same answer."""
    fg = build_fusion_graph(random_dag(seed, 40))
    cost = LBDF(fg, 2048)
    splitter = ExplainSplitter(cost)
    splitter.big_group_ops, splitter.big_tree_nodes = 0, 3
    asked = _invalid_groups(fg, cost, seed)
    answers = [splitter.split(g) for g in asked]
    assert splitter._requested, "no search ran out of nodes: the test checks nothing"
    for mask, result in splitter._memo.items():
        full = _full_split(cost, mask)
        assert (result.dram, result.pieces) == (full.dram, full.pieces)
    assert [splitter.split(g) for g in asked] == answers
