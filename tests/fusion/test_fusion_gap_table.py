"""benchmarks/fusion_dram.py's gap table without bounds: the planner's own plans, row by row."""

import fusion_dram
from rich.console import Console

import fuser
from fuser.fusion import build_fusion_graph, partition_fusion_graph


def test_the_search_only_gap_table_lists_the_plans_partition_makes():
    """``fusion_dram.py --gaps --no-bounds``: every row's DRAM is the plan ``partition`` makes."""
    console = Console(record=True, width=160)
    table = fusion_dram.gap_report(console, ["resnet18"], budget=20, size=64, bounds=False)
    fg = build_fusion_graph(fuser.optimize("zoo:resnet18", input_shapes=(1, 3, 64, 64)).graph)
    want = [
        partition_fusion_graph(fg, buffer=b, style=s, search="nsga2", budget=20)[0].dram_bytes
        for b in ("128KB", "256KB")
        for s in ("lbdf", "brr")
    ]
    assert table.row_count == 4
    assert list(table.columns[4].cells) == [fusion_dram.mb(d) for d in want]
    assert list(table.columns[7].cells) == ["-"] * 4


def test_the_gap_table_reruns_only_the_rows_asked_for():
    """``--styles brr --buffers 256KB``: one row, the same plan as in the whole table."""
    console = Console(record=True, width=160)
    table = fusion_dram.gap_report(
        console, ["resnet18"], budget=20, size=64, bounds=False, buffers=("256KB",), styles=("brr",)
    )
    fg = build_fusion_graph(fuser.optimize("zoo:resnet18", input_shapes=(1, 3, 64, 64)).graph)
    want = partition_fusion_graph(fg, buffer="256KB", style="brr", search="nsga2", budget=20)[0]
    assert table.row_count == 1
    assert list(table.columns[2].cells) == ["brr"] and list(table.columns[3].cells) == ["256KB"]
    assert list(table.columns[4].cells) == [fusion_dram.mb(want.dram_bytes)]


def test_the_gap_tables_block_bound_takes_the_ops_per_block_and_price_rounds_asked_for(monkeypatch):
    """``--gap-block-ops 50 --gap-price-rounds 3``: MobileNetV2's BRR bound (more than twice 40
    ops: the block bound runs) cuts its op order into runs of at most 50 ops and prices them for
    at most 3 rounds, and the title says so; without them, 40 ops and ``PRICE_ROUNDS``. Its
    2,357 valid groups are taken as too many for the ILP, which would otherwise prove the
    optimum first on a fast enough machine and leave the block bound unasked."""
    from fuser.fusion import bound, exact

    monkeypatch.setattr(exact, "valid_groups", lambda *args, **kwargs: None)
    calls = []
    block_bound = bound.block_bound

    def recorded(cost, time_limit, max_ops=bound.BLOCK_OPS, price_rounds=bound.PRICE_ROUNDS, **kw):
        calls.append((max_ops, price_rounds))
        return block_bound(cost, time_limit, max_ops=max_ops, price_rounds=price_rounds, **kw)

    monkeypatch.setattr(bound, "block_bound", recorded)
    console = Console(record=True, width=160)
    rows = dict(buffers=("256KB",), styles=("brr",))
    table = fusion_dram.gap_report(
        console, ["mobilenet_v2"], 20, 64, time_limit=2, **rows, block_ops=50, price_rounds=3
    )
    assert calls == [(50, 3)]
    assert table.title.endswith("bounds 2 s, 50 ops per block, up to 3 price rounds")
    assert table.row_count == 1 and list(table.columns[7].cells)[0].startswith(("lower bound", "optimum"))
    table = fusion_dram.gap_report(console, ["mobilenet_v2"], 20, 64, time_limit=2, **rows)
    assert calls[1:] == [(bound.BLOCK_OPS, bound.PRICE_ROUNDS)] and table.title.endswith("bounds 2 s")
    table = fusion_dram.gap_report(console, ["mobilenet_v2"], 20, 64, time_limit=2, **rows, price_rounds=0)
    assert calls[2:] == [(bound.BLOCK_OPS, 0)] and table.title.endswith("up to 0 price rounds")  # 0: none
