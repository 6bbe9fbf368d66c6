"""Planning a batch per image: sizes of one image, the batch's DRAM from them (hand counts)."""

import json

from click.testing import CliRunner
from test_fusion_cost import C1, ROW_C1, ROW_X, ROW_Y, W1, W2, X, Y
from test_fusion_graphs import conv_chain

from fuser.cli import main
from fuser.fusion.api import partition
from fuser.fusion.cost import BRR, LBDF
from fuser.fusion.opgraph import build_fusion_graph
from fuser.fusion.plan import Plan
from fuser.serde.onnx import save_onnx

FEATURE = 1 * ROW_Y + 3 * ROW_C1 + 3 * ROW_C1 + 5 * ROW_X  # one image's line buffers: 1152
ALL = (1 << 3) - 1


def test_a_batch_is_indexed_at_one_image_sizes_and_whole_batch_at_the_batch():
    one, per_image = build_fusion_graph(conv_chain()), build_fusion_graph(conv_chain(8))
    whole = build_fusion_graph(conv_chain(8), per_image=False)
    assert (one.images, per_image.images, whole.images) == (1, 8, 1)
    assert per_image.tensor_numel == one.tensor_numel == [X, C1, C1, Y]
    assert per_image.tensor_row_numel == one.tensor_row_numel
    assert whole.tensor_numel == [8 * n for n in one.tensor_numel]
    assert whole.tensor_row_numel == [8 * n for n in one.tensor_row_numel]


def test_lbdf_reads_a_fitting_groups_weights_once_a_batch_and_brr_once_a_tile_of_each_image():
    fg = build_fusion_graph(conv_chain(8))
    lbdf = LBDF(fg, 1 << 20)
    fused = lbdf.cost(ALL)
    assert fused.buffer_bytes == W1 + W2 + FEATURE  # one image's rows, not eight
    assert lbdf.batch_dram(fused) == W1 + W2 + 8 * (X + Y)
    over = LBDF(fg, 1000).cost(1 << 2)  # conv2 alone does not fit 1000 B: its weights come per image
    assert not over.fits and LBDF(fg, 1000).batch_dram(over) == 8 * (W2 + C1 + Y)
    brr = BRR(fg, 1 << 20)
    c = brr.cost(ALL)
    assert brr.batch_dram(c) == 8 * c.dram_bytes


def test_a_plan_for_one_image_fuses_what_the_whole_batch_plan_must_split():
    buffer = W1 + W2 + FEATURE + 1  # one image's whole chain fits; eight images' do not
    per_image = partition(conv_chain(8), buffer=buffer)
    whole = partition(conv_chain(8), buffer=buffer, per_image=False)
    one = partition(conv_chain(), buffer=buffer)
    assert per_image.op_groups == one.op_groups == [["conv1", "relu", "conv2"]]
    assert per_image.dram_bytes == one.dram_bytes == W1 + W2 + X + Y
    assert (per_image.images, per_image.batch_dram_bytes) == (8, W1 + W2 + 8 * (X + Y))
    assert [g.batch_dram_bytes for g in per_image.groups] == [W1 + W2 + 8 * (X + Y)]
    assert one.groups[0].batch_dram_bytes is None and "batch_dram_bytes" not in one.to_dict()["groups"][0]
    assert len(whole.op_groups) > 1 and whole.images == 1
    assert "images" in per_image.to_dict() and "images" not in one.to_dict()  # batch-1 JSON unchanged
    assert "per image of 8, the batch moves" in str(per_image)
    assert Plan.from_dict(per_image.to_dict()).to_dict() == per_image.to_dict()  # saved plans keep both


def test_fuse_cli_plans_per_image_unless_whole_batch(tmp_path):
    path = tmp_path / "chain8.onnx"
    save_onnx(conv_chain(8), path)
    args = ["fuse", str(path), "--buffer", str(W1 + W2 + FEATURE + 1), "--no-gap"]
    per_image = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    whole = json.loads(CliRunner().invoke(main, [*args, "--whole-batch", "--json"]).output)
    assert (per_image["images"], per_image["batch_dram_bytes"]) == (8, W1 + W2 + 8 * (X + Y))
    assert len(per_image["groups"]) == 1 and len(whole["groups"]) > 1 and "images" not in whole
    text = CliRunner().invoke(main, args).output
    assert "planned per image of a batch of 8" in text


def test_the_kernel_table_shows_what_the_batch_moves():
    from fuser.backends.latency import KernelTiming, _join_plan

    plan = partition(conv_chain(8), buffer=W1 + W2 + FEATURE + 1)
    groups = plan.to_dict()["groups"]
    (row,) = _join_plan([KernelTiming("fuser_group_0", 1.0, group=0)], groups)
    assert row.dram_bytes == W1 + W2 + 8 * (X + Y)  # not one image's W1 + W2 + X + Y


def test_the_report_page_says_its_bytes_are_one_images():
    from fuser.reports.html import render_html
    from fuser.reports.model_report import ReportOptions, build_report

    options = ReportOptions(buffer=W1 + W2 + FEATURE + 1, sweep=(), measure=False)
    data = build_report(conv_chain(8), options)
    assert (data["plan"]["images"], data["plan"]["batch_dram_bytes"]) == (8, W1 + W2 + 8 * (X + Y))
    assert data["plan"]["dram_bytes"] == W1 + W2 + X + Y  # one image's
    page = render_html(data, graph=False)
    assert 'id="per-image">Planned per image of a batch of 8' in page
    single = build_report(conv_chain(1), options)
    assert "images" not in single["plan"] and 'id="per-image"' not in render_html(single, graph=False)


def test_measured_reports_no_fusion_and_layer_fusion_for_the_whole_batch():
    from fuser.fusion.measured import _baselines

    plan = partition(conv_chain(8), buffer=W1 + W2 + FEATURE + 1).to_dict()
    one_image = (W1 + X + C1) + (C1 + C1) + (W2 + C1 + Y)
    layers = (W1 + X + C1) + (W2 + C1 + Y)  # conv1 with its ReLU, then conv2
    assert plan["no_fusion_dram_bytes"] == one_image and plan["layer_fusion_dram_bytes"] == layers
    assert _baselines(conv_chain(8), plan) == (
        W1 + W2 + 8 * (X + 4 * C1 + Y),
        W1 + W2 + 8 * (X + 2 * C1 + Y),
    )
    single = partition(conv_chain(1), buffer=W1 + W2 + FEATURE + 1).to_dict()
    assert _baselines(conv_chain(1), single) == (one_image, layers)
