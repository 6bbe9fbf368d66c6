"""The certified lower bound (edge-cut relaxation, ``fuser.fusion.bound``) against the exact
optimum (ILP, chain DP) where that is computable, and against every search's plans."""

import json
import logging

import pytest
from test_fusion_graphs import _conv, conv_chain, finish, random_dag, residual_block, se_block

from fuser.fusion import build_fusion_graph, make_cost_model, partition_fusion_graph
from fuser.fusion.bound import PRICE_BOX, block_bound, block_cuts, cut_bound
from fuser.fusion.exact import exact_optimum, optimality_gap
from fuser.fusion.opgraph import bits
from fuser.fusion.plan import partition_problems
from fuser.ir import Graph

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


def two_branches() -> Graph:
    """stem -> a1 -> a2 and stem -> b, joined by a concat: the stem's output has two readers
    that only a group holding a1, a2 (64 channels) and b together could share."""
    g = Graph("two_branches")
    x = g.add_input("x", (1, 8, 16, 16))
    stem = _conv(g, x, 8, 8, 3, name="stem")
    a2 = _conv(g, _conv(g, stem, 8, 64, 3, name="a1"), 64, 8, 3, name="a2")
    b = _conv(g, stem, 8, 8, 1, name="b")
    return finish(g, [g.add_node("Concat", [a2, b], name="cat", attrs={"axis": 1}).output])


def test_readers_no_valid_group_joins_read_once_each_in_the_first_round():
    """On a 1000-byte buffer every conv runs alone, so the stem's output (8 x 16 x 16 = 2048
    elements) is read twice. Its readers a1 and b have no common path; the cheapest undirected
    path joining them without the stem (a1, a2, cat, b) has more weights than the buffer, so no
    valid group holds both: the first round already counts both reads and closes on the optimum
    (without that row it counted one read: 2048 bytes short)."""
    cost = make_cost_model(build_fusion_graph(two_branches()), "lbdf", 1000)
    best = exact_optimum(cost)
    assert best.optimal and len(best.groups) == 4
    first = cut_bound(cost, time_limit=30, max_rounds=1)
    assert first.lower_bytes == best.dram_bytes == 59096


@pytest.mark.parametrize("seed", range(3))
def test_every_rounds_bound_is_below_the_optimum_and_grows(seed):
    fg = build_fusion_graph(random_dag(seed, n_ops=12))
    cost = make_cost_model(fg, "brr", 1000)
    optimum = exact_optimum(cost).dram_bytes
    bounds = [cut_bound(cost, time_limit=30, max_rounds=k).lower_bytes for k in (1, 2, 3, 4)]
    assert bounds == sorted(bounds) and bounds[-1] <= optimum
    assert bounds[0] > 0


# LBDF and BRR 4 KB: the ILP over their 2,512 and 3,186 valid groups proves the optimum in ~3 s;
# BRR 8 KB (13,458 groups) does not in 20 s, and any time-limited bound is a bound: 6 s
@pytest.mark.parametrize("style,buffer,seconds", [("lbdf", "4KB", 20), ("brr", "4KB", 20), ("brr", "8KB", 6)])
def test_gap_is_a_real_bound_below_every_search(style, buffer, seconds):
    fg = build_fusion_graph(random_dag(0, n_ops=40))
    cost = make_cost_model(fg, style, 4096 if buffer == "4KB" else 8192)
    plans = [
        partition_fusion_graph(fg, buffer=buffer, style=style, search=search, budget=60)[0]
        for search in ("greedy", "local", "nsga2", "random")
    ]
    gap = optimality_gap(cost, plans[0].dram_bytes, time_limit=seconds)
    trivial = cost.lower_dram(fg.all_mask)
    assert trivial < gap["bytes"] <= min(p.dram_bytes for p in plans)
    assert gap["plan_bytes"] is None or gap["bytes"] <= gap["plan_bytes"]
    if gap["exact"]:
        assert gap["plan_bytes"] == gap["bytes"]


BLOCK_CASES = [
    (seed, style, buffer, max_ops, halo)
    for seed in range(4)
    for style, buffer in (("lbdf", 2500), ("brr", 2500), ("brr", 1000))
    for max_ops, halo in ((4, 0), (5, 2), (6, 8))
]


@pytest.mark.parametrize("seed,style,buffer,max_ops,halo", BLOCK_CASES)
def test_block_bound_is_below_the_optimum(seed, style, buffer, max_ops, halo):
    """Blocks of a few ops, with and without a halo: the summed bound never passes the exact
    optimum (ILP over every valid group), and the blocks' plan is legal and at least it."""
    fg = build_fusion_graph(random_dag(seed, n_ops=14))
    cost = make_cost_model(fg, style, buffer)
    best = exact_optimum(cost)
    assert best.optimal
    res = block_bound(cost, time_limit=30, max_ops=max_ops, halo=halo)
    assert res.settled and 0 < res.lower_bytes <= best.dram_bytes
    assert res.plan is not None and partition_problems(fg, res.plan) == []
    assert all(cost.valid(g) for g in res.plan)
    assert res.plan_bytes == sum(cost.cost(g).dram_bytes for g in res.plan) >= best.dram_bytes
    assert sorted(i for g in res.plan for i in bits(g)) == list(range(fg.n))


@pytest.mark.parametrize("starts", [[3, 9], [7], [1, 2, 12]])
def test_blocks_cut_where_asked_bound_below_the_optimum(starts):
    """Blocks beginning at ops given by hand (``starts``, 0 implied) instead of ``block_cuts``'
    choice: exactly those blocks are solved, and the bound stays below the exact optimum; a
    start past the last op, or before the first, is refused."""
    fg = build_fusion_graph(random_dag(2, n_ops=14))
    cost = make_cost_model(fg, "brr", 2500)
    res = block_bound(cost, time_limit=30, halo=2, workers=1, starts=starts)
    blocks = [line.split(":")[0] for line in res.log if line.startswith("block ")]
    ends = [*starts, fg.n]
    assert blocks == [f"block {a}..{b - 1}" for a, b in zip([0, *starts], ends)]
    assert 0 < res.lower_bytes <= exact_optimum(cost).dram_bytes
    with pytest.raises(ValueError, match=f"cannot start at op {fg.n}: the graph has {fg.n} ops"):
        block_bound(cost, time_limit=30, starts=[5, fg.n])
    with pytest.raises(ValueError, match="cannot start at op -1"):
        block_bound(cost, time_limit=30, starts=[-1, 5])


PRICE_CASES = [
    (seed, style, buffer)
    for seed in range(4, 8)
    for style, buffer in (("lbdf", 2500), ("brr", 2500), ("brr", 1000))
]


@pytest.mark.parametrize("seed,style,buffer", PRICE_CASES)
def test_priced_block_bound_is_below_the_optimum(seed, style, buffer):
    """Prices on the edges two blocks share (and far readers, regions grown along long edges)
    only raise the block bound, and it stays at most the exact optimum."""
    fg = build_fusion_graph(random_dag(seed, n_ops=18))
    cost = make_cost_model(fg, style, buffer)
    best = exact_optimum(cost)
    assert best.optimal
    for max_ops, halo in ((4, 0), (5, 2), (6, 3)):
        plain = block_bound(cost, time_limit=30, max_ops=max_ops, halo=halo, price_rounds=0)
        priced = block_bound(cost, time_limit=30, max_ops=max_ops, halo=halo)
        assert plain.settled and priced.settled
        assert 0 < plain.lower_bytes <= priced.lower_bytes <= best.dram_bytes


def test_prices_raise_the_block_bound():
    """A case where the blocks, built apart, put halo ops in different groups: priced toward
    agreement, their summed bound rises (12,556 B -> 14,619 B when written, 14,607 B by the
    subgradient steps before; the optimum is 17,240 B)."""
    fg = build_fusion_graph(random_dag(0, n_ops=14))
    cost = make_cost_model(fg, "brr", 2500)
    plain = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=0)
    priced = block_bound(cost, time_limit=30, max_ops=5, halo=2)
    optimum = exact_optimum(cost).dram_bytes
    assert plain.lower_bytes + (optimum - plain.lower_bytes) // 4 < priced.lower_bytes <= optimum


@pytest.mark.parametrize(
    "seed,style,buffer,optimum", [(1, "lbdf", 2500, 4608), (7, "lbdf", 2500, 8760), (11, "brr", 1000, 36776)]
)
def test_prices_close_the_block_bound_where_the_blocks_can_agree(seed, style, buffer, optimum):
    """Where the blocks' relaxations have a common solution that is an optimal plan, the best
    prices make the summed bound the optimum (hand-checked: ``exact_optimum`` below); the
    cutting planes find them in a few rounds (3 to 5 when written)."""
    fg = build_fusion_graph(random_dag(seed, n_ops=18))
    cost = make_cost_model(fg, style, buffer)
    assert exact_optimum(cost).dram_bytes == optimum
    plain = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=0)
    priced = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=8)
    assert plain.lower_bytes < optimum == priced.lower_bytes and priced.exact


@pytest.mark.parametrize("seed,style,buffer", [(3, "lbdf", 2500), (6, "brr", 1000), (5, "brr", 1000)])
def test_prices_stop_when_the_planes_promise_no_more(seed, style, buffer):
    """The rounds end on their own ("optimal prices": no price within the box promises a higher
    sum) well before the most rounds allowed, so allowing more changes nothing."""
    fg = build_fusion_graph(random_dag(seed, n_ops=18))
    cost = make_cost_model(fg, style, buffer)
    twenty, sixty = (block_bound(cost, time_limit=60, max_ops=5, halo=2, price_rounds=r) for r in (20, 60))
    rounds = [line for line in twenty.log if line.startswith("prices round")]
    assert "optimal prices" in rounds[-1] and len(rounds) < 20
    assert sixty.lower_bytes == twenty.lower_bytes
    assert [line for line in sixty.log if line.startswith("prices round")] == rounds


@pytest.mark.parametrize("seed,style,buffer", [(3, "brr", 2500), (6, "lbdf", 2500)])
def test_the_price_box_grows_back_to_its_first_size_and_no_further(seed, style, buffer):
    """A kept step grows the box by half, but never past ``PRICE_BOX`` (on PicoDet, wider boxes
    were never kept and made rounds of 7 to 14 minutes): in these cases the first rounds are
    kept at the first size, so the box stays there (it would grow to 0.375 without the cap)."""
    fg = build_fusion_graph(random_dag(seed, n_ops=18))
    cost = make_cost_model(fg, style, buffer)
    res = block_bound(cost, time_limit=30, max_ops=5, halo=2, workers=1)
    rounds = [line for line in res.log if line.startswith("prices round") and "ρ" in line]
    rho = [float(line.split("ρ ")[1].split(",")[0]) for line in rounds]
    kept = [not line.endswith("not kept") for line in rounds]
    assert rho[:2] == [PRICE_BOX, PRICE_BOX] and kept[0]
    assert max(rho) == PRICE_BOX
    for r, (k, now, after) in enumerate(zip(kept, rho, rho[1:])):
        assert after == pytest.approx(min(now * 1.5, PRICE_BOX) if k else now / 2, rel=1e-5), r


def test_a_price_round_stopped_by_its_time_cap_loses_the_step_never_the_bound(monkeypatch):
    """With no time at all for a round's re-solves (``PRICE_ROUND_SECONDS`` 0), every round
    is stopped and not kept: the bound is the unpriced one, to the byte, not less."""
    from fuser.fusion import bound

    fg = build_fusion_graph(random_dag(0, n_ops=14))
    cost = make_cost_model(fg, "brr", 2500)
    plain = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=0)
    monkeypatch.setattr(bound, "PRICE_ROUND_SECONDS", 0.0)
    capped = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=5, workers=1)
    rounds = [line for line in capped.log if line.startswith("prices round") and "ρ" in line]
    assert len(rounds) == 5
    assert all("stopped by the time limit, not kept" in line for line in rounds)
    assert capped.lower_bytes == plain.lower_bytes


def test_saved_prices_go_on_where_the_last_run_stopped(tmp_path):
    """A run that finds the price file of an earlier run re-solves the blocks at its centre
    (the same bound it saved, to the byte: the bound is recomputed, never read) and goes on
    from there; its bound stays below the optimum and at least what it resumed from."""
    fg = build_fusion_graph(random_dag(0, n_ops=14))
    cost = make_cost_model(fg, "brr", 2500)
    optimum = exact_optimum(cost).dram_bytes
    state = tmp_path / "prices.json"
    first = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=2, workers=1, prices=str(state))
    saved = json.loads(state.read_text())
    assert len(saved["centre"]) > 0 and any(saved["centre"]) and saved["bound_at_centre"] <= first.lower_bytes
    again = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=0, workers=1, prices=str(state))
    resumed = [line for line in again.log if line.startswith("prices resumed")]
    assert resumed and f"bound {saved['bound_at_centre']} B at its centre" in resumed[0]
    more = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=20, workers=1, prices=str(state))
    assert first.lower_bytes <= more.lower_bytes <= optimum
    assert any(line.startswith("prices resumed") for line in more.log)


def test_the_resumed_bound_is_not_stopped_by_the_rounds_time_cap(tmp_path, monkeypatch):
    """The re-solve at the saved centre is what every later step must beat: it runs to the
    end even when the rounds' cap (``PRICE_ROUND_SECONDS``) would stop it (on PicoDet a fresh
    block took 6 minutes there, against a cap then of 6), so it gives the saved bound."""
    from fuser.fusion import bound

    fg = build_fusion_graph(random_dag(0, n_ops=14))
    cost = make_cost_model(fg, "brr", 2500)
    state = tmp_path / "prices.json"
    block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=2, workers=1, prices=str(state))
    saved = json.loads(state.read_text())["bound_at_centre"]
    monkeypatch.setattr(bound, "PRICE_ROUND_SECONDS", 0.0)
    again = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=1, workers=1, prices=str(state))
    resumed = next(line for line in again.log if line.startswith("prices resumed"))
    assert f"bound {saved} B at its centre" in resumed and "stopped" not in resumed
    assert again.lower_bytes >= saved


def test_a_block_given_the_rows_another_found_settles_sooner_on_the_same_bound():
    """The rows a block's relaxation separated (``found_rows``), given to a fresh relaxation of
    the same block (``take_rows``), hold for every plan: the same settled bound, in fewer MILP
    rounds (what makes a resumed price state start where its rounds left off)."""
    from fuser.fusion.bound import CutBound

    fg = build_fusion_graph(random_dag(3, n_ops=18))
    cost = make_cost_model(fg, "brr", 2500)
    block = (0, 9)
    solved = CutBound(cost, block, 2)
    first = solved.solve(60)
    found_rows = solved.found_rows()
    assert len(found_rows) == first.cuts > 0
    fresh = CutBound(cost, block, 2)
    assert fresh.take_rows(json.loads(json.dumps(found_rows))) == len(found_rows)
    again = fresh.solve(60)
    assert first.settled and again.settled
    assert again.lower_bytes == first.lower_bytes and again.rounds < first.rounds
    other = CutBound(cost, block, 2)
    with pytest.raises(ValueError, match="names a variable this block does not have"):
        other.take_rows([*found_rows, [[[len(other.m.cost), 1.0]], 1.0, None]])
    assert len(other.m.rows) == other.built_rows  # nothing taken from a list with a bad row


def test_saved_rows_are_taken_on_resume_and_bad_ones_refused(tmp_path):
    """The price file keeps every priced block's rows; a resume takes them (the log counts
    them) and re-solves to the saved bound; rows naming variables the blocks lack are refused
    with a line that says so, and the saved prices still give the saved bound."""
    fg = build_fusion_graph(random_dag(0, n_ops=14))
    cost = make_cost_model(fg, "brr", 2500)
    state = tmp_path / "prices.json"
    block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=2, workers=1, prices=str(state))
    saved = json.loads(state.read_text())
    assert len(saved["rows"]) == len(saved["planes"]) and any(saved["rows"])
    again = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=0, workers=1, prices=str(state))
    resumed = next(line for line in again.log if line.startswith("prices resumed"))
    assert f"bound {saved['bound_at_centre']} B at its centre" in resumed
    assert int(resumed.split(" rows taken")[0].rsplit(" ", 1)[1]) > 0
    saved["rows"][0] = [[[[10**6, 1.0]], 1.0, None]]
    state.write_text(json.dumps(saved))
    bad = block_bound(cost, time_limit=30, max_ops=5, halo=2, price_rounds=0, workers=1, prices=str(state))
    assert any("are unusable (a saved row names a variable" in line for line in bad.log)
    resumed = next(line for line in bad.log if line.startswith("prices resumed"))
    assert f"bound {saved['bound_at_centre']} B at its centre, ρ {saved['rho']:g}, 0 rows taken" in resumed


def test_a_price_file_for_other_costs_is_not_used(tmp_path):
    """Prices saved at one buffer size are not applied at another: the run says so, starts from
    zero (the bound a run without the file gives) and saves its own prices over them."""
    fg = build_fusion_graph(random_dag(0, n_ops=14))
    state = tmp_path / "prices.json"
    block_bound(make_cost_model(fg, "brr", 2500), 30, max_ops=5, halo=2, price_rounds=2, prices=str(state))
    other = make_cost_model(fg, "brr", 1000)
    before = json.loads(state.read_text())["key"]
    fresh = block_bound(other, 30, max_ops=5, halo=2, price_rounds=3, workers=1)
    used = block_bound(other, 30, max_ops=5, halo=2, price_rounds=3, workers=1, prices=str(state))
    assert any("saved for other blocks or costs; starting from zero" in line for line in used.log)
    assert used.lower_bytes == fresh.lower_bytes
    assert json.loads(state.read_text())["key"] != before


@pytest.mark.parametrize("seed,style,buffer", [(7, "lbdf", 2500), (5, "brr", 1000), (6, "brr", 2500)])
def test_blocks_on_threads_give_what_one_thread_gives(seed, style, buffer):
    """The blocks and their priced re-solves (5 to 15 rounds in these cases) on 3 threads: the
    same settled bound, plan, log of bounds and row count as one after another (each block's
    relaxation is its own)."""
    fg = build_fusion_graph(random_dag(seed, n_ops=18))
    cost = make_cost_model(fg, style, buffer)
    one, three = (block_bound(cost, time_limit=60, max_ops=5, halo=2, workers=w) for w in (1, 3))
    assert one.settled and three.settled
    assert (three.lower_bytes, three.plan, three.rounds, three.cuts) == (
        one.lower_bytes,
        one.plan,
        one.rounds,
        one.cuts,
    )

    def bounds(log):  # without the seconds, which differ
        return [line.split(",")[0] for line in log]

    assert bounds(three.log) == bounds(one.log) and any("prices round" in line for line in one.log)


def test_the_block_bound_logs_each_line_as_it_keeps_it(caplog):
    """Every line the block bound keeps (blocks, plans, price rounds, windows, regions) is also
    logged at INFO by ``fuser.fusion.bound`` when it is made, in order: what
    ``fusion_dram.py --gap-log`` prints while an hour-long bound runs."""
    fg = build_fusion_graph(random_dag(5, n_ops=18))
    cost = make_cost_model(fg, "brr", 1000)
    with caplog.at_level(logging.INFO, logger="fuser.fusion.bound"):
        res = block_bound(cost, time_limit=60, max_ops=5, halo=2, workers=1)
    logged = [r.getMessage() for r in caplog.records if r.name == "fuser.fusion.bound"]
    assert logged == res.log and any("prices round" in line for line in logged)


@pytest.mark.parametrize("style,buffer", [("lbdf", 2500), ("brr", 1000)])
def test_one_block_is_the_whole_relaxation(style, buffer):
    fg = build_fusion_graph(random_dag(1, n_ops=12))
    cost = make_cost_model(fg, style, buffer)
    best = exact_optimum(cost)
    res = block_bound(cost, time_limit=30, max_ops=fg.n)
    assert res.exact and res.lower_bytes == res.plan_bytes == best.dram_bytes


def test_block_cuts_take_the_smallest_crossings():
    """The dynamic program's cut positions against every way to cut 10 ops into runs of at most
    4: the least total of crossing tensors (elements produced before a cut, read after it)."""
    from itertools import combinations

    fg = build_fusion_graph(random_dag(3, n_ops=10))

    def crossing(p):
        return sum(
            numel
            for t, numel in enumerate(fg.tensor_numel)
            if 0 <= fg.tensor_producer[t] < p and fg.tensor_consumer_mask[t] >> p
        )

    def total(cuts):
        return sum(crossing(p) for p in cuts)

    def fits(cuts):
        edges = [0, *cuts, fg.n]
        return all(b - a <= 4 for a, b in zip(edges, edges[1:]))

    best = min(total(c) for k in range(fg.n) for c in combinations(range(1, fg.n), k) if fits(c))
    starts = block_cuts(fg, 4)
    assert starts[0] == 0 and fits(starts[1:]) and total(starts[1:]) == best
