"""LBDF and BRR cost models against hand counts (elements; e bytes per element)."""

import random

import pytest
from test_fusion_graphs import conv_chain, random_dag, residual_block, se_block

from fuser.fusion.cost import BRR, LBDF
from fuser.fusion.opgraph import bits, build_fusion_graph, mask_of
from fuser.ir import FuserError
from fuser.units import format_size, parse_size

# conv_chain: x[1,4,16,16] -> conv1 3x3 (4->8) -> relu -> conv2 3x3 stride 2 (8->8) -> y[1,8,8,8]
W1, W2 = 8 * 4 * 9 + 8, 8 * 8 * 9 + 8  # 296, 584 weights (+ bias)
X, C1, Y = 4 * 16 * 16, 8 * 16 * 16, 8 * 8 * 8  # tensor elements: 1024, 2048, 512
ROW_X, ROW_C1, ROW_Y = 4 * 16, 8 * 16, 8 * 8  # one row of each: 64, 128, 64


def chain_model(cls, beta, e=1):
    fg = build_fusion_graph(conv_chain())
    return fg, cls(fg, beta, e)


@pytest.mark.parametrize("e", [1, 2])
def test_lbdf_chain_hand_count(e):
    fg, cost = chain_model(LBDF, 1 << 20, e)
    c = cost.cost(fg.all_mask)
    # rows held: y 1 (written out), relu out 3 = (1-1)·2+3, conv1 out 3 (relu keeps rows),
    # x 5 = (3-1)·1+3 (conv1 must emit the 3 rows relu needs)
    feature = 1 * ROW_Y + 3 * ROW_C1 + 3 * ROW_C1 + 5 * ROW_X
    assert feature == 1152
    assert c.buffer_bytes == (W1 + W2 + feature) * e == 2032 * e
    assert c.dram_bytes == (W1 + W2 + X + Y) * e == 2416 * e
    assert (c.weight_bytes, c.feature_bytes, c.input_bytes, c.output_bytes) == (
        (W1 + W2) * e,
        feature * e,
        X * e,
        Y * e,
    )
    # no fusion: each op reads its inputs and weights, writes its output
    assert cost.no_fusion_dram() == ((W1 + X + C1) + (C1 + C1) + (W2 + C1 + Y)) * e == 10608 * e


def test_layer_fusion_puts_each_op_with_its_elementwise_tail_as_a_compiler_does():
    fg = build_fusion_graph(residual_block(channels=16, size=8))
    kernels = sorted(fg.group_names(m) for m in fg.layer_kernels())
    # the residual Add joins conv2 (its only reader of conv2's output), relu2 the Add; the stem
    # conv's output is read twice (conv1 and the Add), so the stem ends its kernel
    assert kernels == [["conv1", "relu1"], ["conv2", "add", "relu2"], ["stem"]]
    t, w1, w3 = 16 * 8 * 8, 16 * 16 + 16, 16 * 16 * 9 + 16
    cost = LBDF(fg, 1 << 10, 4)  # no buffer bounds a layer-by-layer kernel
    assert cost.layer_fusion_dram() == 4 * ((w1 + t + t) + (w3 + t + t) + (w3 + 3 * t)) == 4 * 12080
    assert cost.no_fusion_dram() == 4 * ((w1 + 2 * t) + (w3 + 2 * t) + 2 * t + (w3 + 2 * t) + 3 * t + 2 * t)
    se = build_fusion_graph(se_block())
    # the gate's Mul reads the conv's output too, but only the sigmoid's alone: it joins fc2
    assert sorted(se.group_names(m) for m in se.layer_kernels()) == [
        ["conv"],
        ["fc1", "relu"],
        ["fc2", "gate", "excite"],
        ["squeeze"],
    ]


def test_a_graph_of_layers_drops_the_tensors_inside_a_layer():
    fg = build_fusion_graph(residual_block(channels=16, size=8), layers=True)
    assert fg.n == 3 and fg.names == ["stem", "conv1", "conv2"]
    assert fg.group_names(fg.all_mask) == ["stem", "conv1", "relu1", "conv2", "add", "relu2"]
    assert fg.index_of("relu1") == fg.index_of("conv1") == 1
    assert len(fg.tensor_names) == 4  # x, the stem's output, relu1's, relu2's: conv1's is inside
    row, w3 = 16 * 8, 16 * 16 * 9 + 16
    layer = LBDF(fg, 1 << 20).cost(0b100)  # conv2 + add + relu2 alone
    # one row out, the 3 rows conv2 reads, the stem's one row for the Add; none for the tensors
    # conv2 and the Add hand on in registers (the graph of ops holds a row of each: 2 more)
    assert layer.buffer_bytes == w3 + (1 + 3 + 1) * row
    ops = build_fusion_graph(residual_block(channels=16, size=8))
    assert LBDF(ops, 1 << 20).cost(
        mask_of(ops.index_of(n) for n in ("conv2", "add", "relu2"))
    ).buffer_bytes == (layer.buffer_bytes + 2 * row)


def test_layers_keep_an_activation_with_its_conv_when_the_pair_does_not_fit_as_ops():
    from fuser.fusion.api import partition

    # conv1 alone needs 616 elements, conv1 + relu as ops 744 (a row of each output), as a
    # layer 616; conv2 alone 1032: over a 700 buffer it runs alone either way
    ops = partition(conv_chain(), buffer=700, search="greedy")
    assert [g.ops for g in ops.groups] == [["conv1"], ["relu"], ["conv2"]]
    assert ops.dram_bytes == ops.no_fusion_dram_bytes == (W1 + X + C1) + 2 * C1 + (W2 + C1 + Y)
    layers = partition(conv_chain(), buffer=700, search="greedy", layers=True)
    assert [g.ops for g in layers.groups] == [["conv1", "relu"], ["conv2"]]
    assert layers.dram_bytes == layers.layer_fusion_dram_bytes == (W1 + X + C1) + (W2 + C1 + Y)
    assert layers.no_fusion_dram_bytes == ops.no_fusion_dram_bytes  # still the graph's ops alone
    assert layers.groups[0].buffer_bytes == W1 + 3 * ROW_X + ROW_C1


def test_lbdf_validity_is_strict():
    fg, fits = chain_model(LBDF, 2033)
    assert fits.valid(fg.all_mask) and fits.cost(fg.all_mask).fits
    fg, full = chain_model(LBDF, 2032)  # F_β = β is not enough
    assert not full.valid(fg.all_mask)
    assert full.valid(1) and not full.cost(fg.all_mask).valid  # one op alone is always valid


def test_lbdf_unfusable_ops_reported():
    # conv2's 584 weights alone overflow 580 bytes; conv1 alone needs 296 + 3 rows of x
    # + 1 row of its output = 616 bytes
    fg, cost = chain_model(LBDF, 580)
    unfusable = dict(cost.unfusable())
    assert list(unfusable) == [0, 2]
    assert "weights 584 B" in unfusable[2] and "needs 616 B" in unfusable[0]
    assert cost.fusable_mask == 0b010
    assert not cost.valid(0b110) and not cost.valid(0b011)


def test_brr_chain_hand_count():
    fg, cost = chain_model(BRR, 3000)
    c = cost.cost(fg.all_mask)

    # T tiles, each making ceil(8/T) rows of y; on chip: W_max = conv2's weights + the tile's rows
    def footprint(y_rows):
        relu_rows = min((y_rows - 1) * 2 + 3, 16)
        x_rows = min((relu_rows - 1) + 3, 16)
        return W2 + y_rows * ROW_Y + 2 * relu_rows * ROW_C1 + x_rows * ROW_X

    assert [footprint(-(-8 // t)) for t in (1, 2, 3, 4)] == [6216, 3848, 3144, 2440]
    assert c.tiles == 4 and c.buffer_bytes == 2440  # the fewest tiles under 3000 bytes
    assert c.dram_bytes == (W1 + W2) * 4 + X + Y  # weights fetched once per tile
    assert c.valid


def test_brr_invalid_when_smallest_footprint_does_not_fit():
    smallest = W2 + 1152  # one row per tile, W_max on chip
    fg, fits = chain_model(BRR, smallest + 1)
    assert fits.valid(fg.all_mask) and fits.cost(fg.all_mask).tiles == 8
    fg, tight = chain_model(BRR, smallest)
    assert not tight.valid(fg.all_mask)
    assert tight.cost(fg.all_mask).buffer_bytes == smallest


def test_brr_single_op_costs_like_no_fusion():
    fg, cost = chain_model(BRR, 100)
    assert [cost.cost(1 << i).dram_bytes for i in range(3)] == [W1 + X + C1, 2 * C1, W2 + C1 + Y]
    assert cost.no_fusion_dram() == sum(cost.cost(1 << i).dram_bytes for i in range(3))


def test_se_barrier_holds_the_gated_tensor_whole():
    fg = build_fusion_graph(se_block())
    cost = LBDF(fg, 1 << 20)
    c = cost.cost(fg.all_mask)
    weights = (8 * 8 + 8) + (2 * 8 + 2) + (8 * 2 + 8)
    # t = conv(x) [1,8,10,10] is read by the Mul, which waits for mean(t): all 10 rows stay;
    # x and the output hold one row; the [1,C,1,1] tensors are one row each
    feature = 80 + 10 * 80 + 8 + 2 + 2 + 8 + 8 + 80
    assert c.buffer_bytes == weights + feature == 1102
    assert c.dram_bytes == weights + 800 + 800
    # without the Mul there is nothing to wait for: t streams through the mean one row at a time
    without_mul = fg.all_mask & ~(1 << fg.names.index("excite"))
    assert cost.cost(without_mul).feature_bytes == 80 + 80 + 8 + 2 + 2 + 8 + 8


def test_group_costs_are_memoised_and_fusion_never_costs_more_in_lbdf():
    fg = build_fusion_graph(se_block())
    cost = LBDF(fg, 1 << 20)
    assert cost.cost(fg.all_mask) is cost.cost(fg.all_mask)
    assert cost.cost(fg.all_mask).dram_bytes < cost.singles_dram(fg.all_mask)
    assert cost.lower_bound(fg.all_mask) <= cost.cost(fg.all_mask).buffer_bytes


def test_sizes_parse_and_print():
    assert parse_size("256KB") == 262144 == parse_size("256k") == parse_size("0.25MB")
    assert parse_size("1MB") == 1 << 20 and parse_size("65536") == 65536
    assert format_size(262144) == "256KB" and format_size(1 << 20) == "1MB" and format_size(1000) == "1000B"
    for bad in ("", "12 parsecs", "-1KB", "0"):
        with pytest.raises(FuserError):
            parse_size(bad)


def _square_chain():
    """conv -> Mul(t, t) -> conv: one op reading the same tensor twice."""
    from test_fusion_graphs import _conv, finish

    from fuser.ir import Graph

    g = Graph("square")
    x = g.add_input("x", (1, 4, 16, 16))
    t = _conv(g, x, 4, 8, 3, name="c1")
    sq = g.add_node("Mul", [t, t], name="square").output
    return finish(g, [_conv(g, sq, 8, 8, 3, stride=2, name="c2")])


def _interval_groups(fg, rng, count):
    """Random intervals of the topological order (convex), each with its components."""
    groups = {fg.all_mask}
    for _ in range(count):
        i = rng.randrange(fg.n)
        j = rng.randrange(i, min(fg.n, i + 30)) + 1
        groups.update(fg.convex_components(mask_of(range(i, j))))
    return sorted(groups)


def _groups_of(graph: str, model, count: int):
    """(cost model, group, its ops) for random convex groups of a test graph."""
    g = {"se": se_block, "square": _square_chain}.get(graph) or (lambda: random_dag(int(graph[3:]), 40))
    fg = build_fusion_graph(g())
    cost = model(fg, 4096)
    for mask in _interval_groups(fg, random.Random(graph), count):
        yield cost, mask, bits(mask)


def _assert_lower_bound(cost, mask: int) -> None:
    """The plain-sum bound equals the numpy one (masks past 512 ops) and bounds F_β."""
    member = cost.fg.member_vector(mask).astype(bool)
    assert cost.lower_bound(mask) == cost._weight_term(member) + cost._output_rows[member].sum()
    assert cost.lower_bound(mask) <= cost.cost(mask).buffer_bytes


@pytest.mark.parametrize("graph", ["dag0", "dag1", "dag2", "se", "square"])
def test_lbdf_one_pass_equals_the_row_walk(graph):
    """LBDF's fused backward pass (cost and breakdown) against the generic terms BRR uses:
    ``_io`` and ``_rows`` with a one-row sink, on random convex groups."""
    for cost, mask, ops in _groups_of(graph, LBDF, 60):
        weights, _, n_in, n_out = cost._io(mask, ops)
        rows, demander, whole = cost._rows(ops, mask, lambda t: 1)
        feature = cost._feature(rows, whole)
        c = LBDF(cost.fg, 4096).cost(mask)  # fresh: no breakdown filled its memo
        terms = (c.weight_bytes, c.input_bytes, c.output_bytes, c.feature_bytes)
        assert terms == (weights, n_in, n_out, feature)
        assert c.buffer_bytes == weights + feature and c.dram_bytes == weights + n_in + n_out
        _assert_lower_bound(cost, mask)
        b = LBDF(cost.fg, 4096).breakdown(mask)
        assert b.demander == demander and list(b.tensor_bytes) == list(rows)
        assert b.tensor_bytes == cost._tensor_bytes(rows, whole)


@pytest.mark.parametrize("graph", ["dag0", "dag1", "se", "square"])
def test_brr_prepared_walk_equals_the_row_walk(graph):
    """BRR's tile search walks a group prepared once (``_walk``): every tile count's
    footprint and T_max against the generic ``_footprint``/``_tiles_max``."""
    for cost, mask, ops in _groups_of(graph, BRR, 40):
        steps, whole, t_max, io = cost._walk(mask, ops)
        assert io == cost._io(mask, ops)
        assert t_max == cost._tiles_max(mask, ops)
        _assert_lower_bound(cost, mask)
        for tiles in range(1, t_max + 1):
            assert cost._walk_footprint(steps, whole, tiles) == cost._footprint(ops, mask, tiles)
