"""Block fusion without a GPU: the fuse_blocks pass on the zoo, the CPU tile-schedule reference
against the unfused block (ONNX Runtime on the extracted subgraph), the analytic model against
hand counts, the schedule chooser, determinism of the emitted CUDA, and `fuser blocks`."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from util import ort_run, random_input, rel_err
from zoo_cache import zoo_case

import fuser
from fuser.blockfusion import (
    block_cost,
    blocks_report,
    choose_schedule,
    emit_kernel,
    fixed_schedule,
    run_schedule,
)
from fuser.blockfusion.devices import DEVICES
from fuser.blockfusion.schedule import NoSchedule, candidate_schedules
from fuser.blockfusion.synthetic import block_graph
from fuser.cli import main
from fuser.passes import fuse_blocks

ZOO_BLOCKS = {"convfirst": ("convfirst", 12), "mobilenet_v2": ("mbconv", 17), "resnet18": ("resnet_basic", 8)}

# Synthetic blocks: odd map sizes (no tile divides them), k ∈ {3, 5, 7}, strides, with and without
# residual, projection shortcuts, no expand conv, every activation.
SYNTHETIC = {
    "convfirst_k3": ("convfirst", dict(channels=32, expansion=4, kernel=3, hw=(13, 17))),
    "convfirst_k5_noresidual_b2": (
        "convfirst",
        dict(channels=16, expansion=3, kernel=5, hw=(9, 7), residual=False, batch=2),
    ),
    "convfirst_k7_relu": (
        "convfirst",
        dict(channels=24, expansion=2, kernel=7, hw=(11, 12), activation="relu"),
    ),
    "convfirst_group_width4": (
        "convfirst",
        dict(channels=32, expansion=4, kernel=3, hw=(10, 9), group_width=4),
    ),
    "mbconv_k3": ("mbconv", dict(channels=24, expansion=6, kernel=3, hw=(13, 17))),
    "mbconv_k5_s2": (
        "mbconv",
        dict(channels=24, out_channels=32, expansion=6, kernel=5, stride=2, hw=(13, 17)),
    ),
    "mbconv_k7_hardswish": (
        "mbconv",
        dict(channels=16, expansion=4, kernel=7, hw=(12, 11), activation="hardswish"),
    ),
    "mbconv_no_expand": (
        "mbconv",
        dict(channels=32, out_channels=16, kernel=3, with_expand=False, hw=(11, 10)),
    ),
    "mbconv_k3_s2_silu_b2": (
        "mbconv",
        dict(channels=16, out_channels=24, expansion=4, stride=2, hw=(10, 9), activation="silu", batch=2),
    ),
    "resnet_k3": ("resnet_basic", dict(channels=32, kernel=3, hw=(13, 17))),
    "resnet_k3_s2_projection_b2": (
        "resnet_basic",
        dict(channels=32, out_channels=64, stride=2, hw=(13, 17), batch=2),
    ),
    "resnet_k5": ("resnet_basic", dict(channels=16, kernel=5, hw=(9, 11))),
    "resnet_k7_s2_projection": (
        "resnet_basic",
        dict(channels=16, out_channels=32, kernel=7, stride=2, hw=(15, 14)),
    ),
}


@functools.cache
def folded_zoo(name: str):
    """The zoo graph with BN folded (shared by the tests below: they only read it, or mark node.meta)."""
    return fuser.optimize(zoo_case(name)[2]).graph


def unfused_output(graph, spec, x: np.ndarray) -> np.ndarray:
    """The block's nodes as they are in the graph, run by ONNX Runtime (the unfused reference)."""
    sub = graph.extract([graph.node_by_name(n) for n in spec.nodes])
    (inp,), (outp,) = sub.inputs, sub.outputs
    assert inp.name == spec.input_name and outp.name == spec.output_name
    return ort_run(fuser.to_onnx(sub), {inp.name: x})[0]


def single_block(name: str):
    kind, kw = SYNTHETIC[name]
    graph = block_graph(kind, **kw)
    blocks, rejected = fuse_blocks.find_blocks(graph)
    assert len(blocks) == 1 and not rejected, (blocks, rejected)
    return graph, blocks[0]


# ---- the pass -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(ZOO_BLOCKS))
def test_pass_finds_every_zoo_block(model):
    graph = folded_zoo(model)
    result = fuse_blocks.run(graph)
    kind, count = ZOO_BLOCKS[model]
    assert result.stats["blocks"] == result.stats[kind] == count
    assert result.stats["not_fused"] == 0 and not result.changed
    marked = [n for n in graph.nodes if "block" in n.meta]
    blocks, _ = fuse_blocks.find_blocks(graph)
    assert len(marked) == sum(len(b.nodes) for b in blocks)
    assert {n.meta["block"]["id"] for n in marked} == {b.name for b in blocks}
    # every Conv of a block is marked with its role, and no node sits in two blocks
    assert all(n.meta["block"]["role"] for n in marked)
    assert len({n.name for n in marked}) == len(marked)
    for spec in blocks:  # fusion never adds DRAM traffic, halos included
        cost = block_cost(choose_schedule(spec))
        assert cost.fused.dram_bytes < sum(k.dram_bytes for k in cost.unfused), spec.name
    if model == "resnet18":  # 3 downsample blocks with a 1×1 stride-2 projection, 5 identity
        assert sorted(b.residual for b in blocks).count("projection") == 3
    if model == "mobilenet_v2":  # the t=1 first block has no expand conv and no residual
        assert blocks[0].layer("expand") is None and blocks[0].residual == "none"
        assert sum(b.residual == "identity" for b in blocks) == 10


def test_pass_reports_squeeze_excite_and_bottlenecks_with_reasons():
    se = block_graph("mbconv", 16, expansion=4, hw=(8, 8))
    # insert squeeze-and-excite between the depthwise activation and the projection
    dw_act = next(n for n in se.nodes if n.op == "Clip" and n.inputs[0].producer.attr("group") > 1)
    project = dw_act.output.users[0]
    g = se
    pooled = g.add_node("GlobalAveragePool", [dw_act.output], before=project).output
    w = g.const(np.full((64, 64, 1, 1), 0.01, np.float32), "se_w")
    scale = g.add_node(
        "Sigmoid",
        [g.add_node("Conv", [pooled, w], attrs={"kernel_shape": [1, 1]}, before=project).output],
        before=project,
    ).output
    scaled = g.add_node("Mul", [dw_act.output, scale], before=project).output
    project.set_input(0, scaled)
    from fuser.analysis.shapes import infer_shapes

    infer_shapes(g)
    blocks, rejected = fuse_blocks.find_blocks(g)
    assert not blocks and len(rejected) == 1
    assert "squeeze-and-excite" in rejected[0].reason and "GlobalAveragePool" in rejected[0].reason
    assert {"GlobalAveragePool", "Mul", "Add"} <= {g.node_by_name(n).op for n in rejected[0].nodes}
    fuse_blocks.run(g)
    assert g.node_by_name(rejected[0].nodes[0]).meta["block_not_fused"] == rejected[0].reason


def test_pass_on_squeeze_excite_zoo_model():
    """EfficientNet-B0: every MBConv has squeeze-and-excite, so none is fused and each says why."""
    blocks, rejected = fuse_blocks.find_blocks(folded_zoo("efficientnet_b0"))
    assert not blocks and len(rejected) == 16
    assert all("squeeze-and-excite" in r.reason for r in rejected)


def test_pass_rejects_channels_not_multiple_of_8():
    blocks, rejected = fuse_blocks.find_blocks(block_graph("mbconv", 12, expansion=2, hw=(8, 8)))
    assert not blocks and "not multiples of 8" in rejected[0].reason


def test_pass_registered_in_pipeline():
    result = fuser.optimize(block_graph("convfirst", 16, hw=(8, 8)), passes=["fuse_blocks"])
    assert result.report.steps[-1].stats["convfirst"] == 1


# ---- the CPU tile-schedule reference -------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(ZOO_BLOCKS))
def test_reference_matches_unfused_zoo_blocks(model):
    """Every block of the model, with the chosen tiles and with 3×5 tiles (partial tiles on both
    edges, halos across tile borders and image borders, several hidden chunks)."""
    graph = folded_zoo(model)
    blocks, _ = fuse_blocks.find_blocks(graph)
    for i, spec in enumerate(blocks):
        x = random_input(spec.input_shape, seed=i)
        want = unfused_output(graph, spec, x)
        for schedule in (choose_schedule(spec), fixed_schedule(spec, 3, 5)):
            got = run_schedule(schedule, x)
            assert rel_err(got, want) <= 2e-6, (spec.name, schedule.summary())


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_reference_matches_unfused_synthetic_blocks(name):
    graph, spec = single_block(name)
    x = random_input(spec.input_shape, seed=1)
    want = ort_run(fuser.to_onnx(graph), {"x": x})[0]
    for schedule in (choose_schedule(spec), fixed_schedule(spec, 3, 5), fixed_schedule(spec, 4, 4, warps=4)):
        assert rel_err(run_schedule(schedule, x), want) <= 2e-6, schedule.summary()
    # the kernel's numerics: fp16 storage, fp32 accumulation
    assert rel_err(run_schedule(choose_schedule(spec), x, "fp16"), want) <= 3e-3


def test_reference_walks_the_kernels_tiles():
    """tile_of covers every (image, tile) exactly once; the regions are the halo arithmetic."""
    _, spec = single_block("mbconv_k5_s2")
    s = fixed_schedule(spec, 3, 5)
    tiles = [s.tile_of(b) for b in range(s.grid)]
    assert len(set(tiles)) == s.grid == spec.batch * 3 * 2  # 7×9 output in 3×5 tiles
    assert {(oy, ox) for _, oy, ox in tiles} == {(oy, ox) for oy in (0, 3, 6) for ox in (0, 5)}
    r = s.x_region  # depthwise k5 s2 pad 2: rows (TILE_H − 1)·2 + 5 from 2·oy0 − 2
    assert (r.scale, r.offset_y, r.offset_x, r.h, r.w) == (2, -2, -2, 9, 13)
    _, spec = single_block("resnet_k3_s2_projection_b2")
    s = fixed_schedule(spec, 4, 4)
    assert (s.mid_region.h, s.mid_region.offset_y) == (6, -1)
    assert (s.x_region.h, s.x_region.offset_y, s.x_region.scale) == (13, -3, 2)
    assert s.residual_origin == 3 * 13 + 3  # x at (2·oy, 2·ox) is region pixel (3 + 2·py, 3 + 2·px)


def test_reference_rejects_wrong_input_shape():
    _, spec = single_block("convfirst_k3")
    with pytest.raises(ValueError, match="input shape"):
        run_schedule(choose_schedule(spec), np.zeros((1, 32, 13, 16), np.float32))


# ---- analytic model ------------------------------------------------------------------------------


def test_model_hand_counts_convfirst():
    """C = 64, E = 4, k = 3 at 56×56: X = 56·56·64; MACs X·(8·9 + 2·4·64); unfused activations
    (7 + 2E)·X; 8×8 tiles read 10×10 regions, in-image rows per tile 9, 10, ..., 10, 9."""
    graph = block_graph("convfirst", 64, expansion=4, hw=(56, 56))
    (spec,), _ = fuse_blocks.find_blocks(graph)
    s = fixed_schedule(spec, 8, 8, hidden_chunk=64)
    cost = block_cost(s, elem_bytes=2)
    X = 56 * 56 * 64
    assert cost.fused.macs == X * (8 * 9 + 2 * 4 * 64) == fuser.info(graph)["macs"]
    assert cost.fused.ops == 2 * cost.fused.macs + X  # + the residual additions
    halo = ((9 + 5 * 10 + 9) / 56) ** 2
    assert s.halo_factor() == pytest.approx(halo)
    weights = (64 * 8 * 9 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    elements = cost.activation_elements
    assert elements["unfused"] == (7 + 2 * 4) * X
    assert elements["fused"] == pytest.approx((halo + 1) * X, abs=1)
    assert sum(k.weight_bytes for k in cost.unfused) == cost.fused.weight_bytes == 2 * weights
    assert cost.fused.dram_bytes == round(2 * ((halo + 1) * X + weights))
    assert [k.op for k in cost.unfused] == ["conv 3×3/g8", "conv 1×1+silu", "conv 1×1", "add"]
    # the grouped conv and the add run on CUDA cores, the 1×1 convs on tensor cores
    assert cost.unfused[0].simt_ops == 2 * X * 72 and cost.unfused[1].tensor_ops == 2 * X * 256
    dev = DEVICES["h100"]
    # group width 8: the fused kernel runs the grouped conv on tensor cores too (K = 9·8 → 80)
    assert s.grouped_on_tensor_cores and s.gemm("spatial").k_pad == 80
    ideal = 2 * X * (512 + 72) / dev.fp16_tensor_flops + X / dev.fp32_flops
    assert cost.fused.ideal_seconds(dev) == pytest.approx(ideal)
    assert cost.fused.roofline_seconds(dev) == pytest.approx(
        max(ideal, cost.fused.dram_bytes / dev.bandwidth)
    )
    assert cost.fused.intensity == pytest.approx(cost.fused.ops / cost.fused.dram_bytes)


def test_model_hand_counts_mbconv_stride2_and_projection():
    (spec,), _ = fuse_blocks.find_blocks(
        block_graph("mbconv", 24, out_channels=32, expansion=6, stride=2, hw=(16, 16))
    )
    cost = block_cost(fixed_schedule(spec, 4, 4), elem_bytes=2)
    x, hid_in, hid_out, y = 16 * 16 * 24, 16 * 16 * 144, 8 * 8 * 144, 8 * 8 * 32
    assert cost.fused.macs == hid_in * 24 + hid_out * 9 + y * 144
    assert cost.activation_elements["unfused"] == (x + hid_in) + (hid_in + hid_out) + (hid_out + y)
    (spec,), _ = fuse_blocks.find_blocks(
        block_graph("resnet_basic", 16, out_channels=32, stride=2, hw=(8, 8))
    )
    cost = block_cost(fixed_schedule(spec, 4, 4), elem_bytes=4)
    y = 4 * 4 * 32
    assert cost.fused.macs == y * 16 * 9 + y * 32 * 9 + y * 16
    assert [k.op for k in cost.unfused] == ["conv 3×3/s2+relu", "conv 3×3", "conv 1×1/s2", "add+relu"]
    assert cost.unfused[-1].activation_bytes == 3 * y * 4


def test_model_waterline_and_efficiency_gap():
    from fuser.blockfusion.model import waterline

    (spec,), _ = fuse_blocks.find_blocks(block_graph("convfirst", 64, hw=(56, 56), batch=32))
    cost = block_cost(choose_schedule(spec))
    dev = DEVICES["h100"]
    w = waterline(cost.unfused, dev, [1e-4] * len(cost.unfused))
    assert w["waterline_s"] == pytest.approx(
        sum(max(k.ideal_seconds(dev), k.dram_bytes / dev.bandwidth) for k in cost.unfused)
    )
    assert w["measured_s"] == pytest.approx(4e-4)
    assert w["waterline_efficiency"] == pytest.approx(w["waterline_s"] / 4e-4)
    assert waterline(cost.unfused, dev, [1e-4, None, 1e-4, 1e-4])["measured_s"] is None
    gap = cost.fused.gap(dev, measured=1e-4)
    assert gap["efficiency"] == pytest.approx(cost.fused.ops / (1e-4 * cost.fused.peak(dev)))
    assert gap["attainable_flops"] == pytest.approx(
        min(cost.fused.peak(dev), dev.bandwidth * cost.fused.intensity)
    )
    # on an H100 the unfused 1×1 convs and the add are memory-bound, the grouped conv (72 MACs per
    # output, fp32 FMAs) compute-bound; fusion cuts the block's DRAM traffic ~4× at E = 4
    assert [k.gap(dev)["bound"] for k in cost.unfused] == ["compute", "memory", "memory", "memory"]
    assert sum(k.dram_bytes for k in cost.unfused) > 3.5 * cost.fused.dram_bytes


# ---- schedule chooser ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["convfirst_k3", "mbconv_k5_s2", "resnet_k3_s2_projection_b2"])
def test_chooser_fits_budget_and_is_fastest_of_the_fitting(name):
    _, spec = single_block(name)
    dev = DEVICES["h100"]
    best = choose_schedule(spec)
    assert best.fits(dev) == "" and best.smem_bytes <= dev.smem_per_block
    assert best.tiles_y * best.tile_h >= spec.out_hw[0] and best.tiles_x * best.tile_w >= spec.out_hw[1]
    fitting = [s for s in candidate_schedules(spec) if not s.fits(dev)]
    assert best.modeled_seconds(dev) == min(s.modeled_seconds(dev) for s in fitting)


def test_chooser_big_block_uses_chunks_and_raises_when_nothing_fits():
    (spec,), _ = fuse_blocks.find_blocks(block_graph("convfirst", 512, expansion=6, hw=(14, 14)))
    s = choose_schedule(spec)
    assert s.hidden_chunk < s.hidden_p and s.acc_floats + 48 <= 255 and s.smem_bytes <= 227 * 1024
    with pytest.raises(NoSchedule, match="shared memory"):
        fixed_schedule(spec, 32, 32, hidden_chunk=256)


# ---- CUDA source -------------------------------------------------------------------------------------


def test_emitted_cuda_is_deterministic_and_deduplicated():
    graph = block_graph("convfirst", 32, hw=(13, 17))
    (spec,), _ = fuse_blocks.find_blocks(graph)
    a, b = emit_kernel(choose_schedule(spec)), emit_kernel(choose_schedule(spec))
    assert a.source == b.source and a.name == b.name
    # same shapes, other weights → the same kernel; another shape → another kernel
    (other,), _ = fuse_blocks.find_blocks(block_graph("convfirst", 32, hw=(13, 17), seed=5))
    assert emit_kernel(choose_schedule(other)).source == a.source
    (wider,), _ = fuse_blocks.find_blocks(block_graph("convfirst", 32, hw=(13, 18)))
    assert emit_kernel(choose_schedule(wider)).name != a.name
    s = choose_schedule(spec)
    assert f"static constexpr int X_H = {s.x_region.h};" in a.source
    assert f"static constexpr int TILES_X = {s.tiles_x};" in a.source
    min_blocks = s.ctas_per_sm(DEVICES["h100"])
    assert f'extern "C" __global__ void __launch_bounds__({s.threads}, {min_blocks}) {a.name}(' in a.source
    assert a.arg_names == ("w_spatial", "b_spatial", "w_expand", "b_expand", "w_project", "b_project")


# ---- `fuser blocks` ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory):
    """The zoo graphs as ONNX files (the CLI's MODEL), BN kept."""
    d = tmp_path_factory.mktemp("zoo_onnx")
    paths = {}
    for name in ("convfirst", "mobilenet_v2"):
        paths[name] = d / f"{name}.onnx"
        fuser.save_onnx(zoo_case(name)[2], paths[name])
    return paths


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("model", ["convfirst", "mobilenet_v2"])
def test_cli_blocks_json_cuda_and_roofline(model, zoo_onnx, tmp_path):
    out_dir, png = tmp_path / "cu", tmp_path / "roofline.png"
    r = invoke("blocks", zoo_onnx[model], "--json", "--emit-cuda", out_dir, "--plot", png)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    kind, count = ZOO_BLOCKS[model]
    assert len(data["blocks"]) == count and {b["kind"] for b in data["blocks"]} == {kind}
    for b in data["blocks"]:
        assert b["ops"] > 2 * b["macs"] > 0 or b["residual"] == "none"
        assert 0 < b["dram_bytes_fused"] < b["dram_bytes_unfused"]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    files = sorted(p.name for p in out_dir.glob("*.cu"))
    assert files == sorted({m["file"] for m in manifest}) and len(files) == data["kernels"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same input, same bytes
    sources = {p.name: p.read_bytes() for p in out_dir.glob("*.cu")}
    r2 = invoke("blocks", zoo_onnx[model], "--emit-cuda", out_dir, "--plot", tmp_path / "again.png")
    assert r2.exit_code == 0 and "residual blocks found by structure" in r2.output
    assert "CUDA templates" in r2.output
    assert sources == {p.name: p.read_bytes() for p in out_dir.glob("*.cu")}
    assert (tmp_path / "again.png").read_bytes() == png.read_bytes()


def test_cli_blocks_user_errors(zoo_onnx):
    r = invoke("blocks", zoo_onnx["convfirst"], "--device", "h300")
    assert r.exit_code == 2 and "h300" in r.output
    r = invoke("blocks", "missing.onnx")
    assert r.exit_code == 2 and "no such file" in r.output
    import torch

    if not torch.cuda.is_available():
        r = invoke("blocks", zoo_onnx["convfirst"], "--measure")
        assert r.exit_code == 2 and "--device cpu" in r.output and "Traceback" not in r.output


def test_cpu_measured_efficiency_gap():
    """--device cpu --measure: every unfused layer timed here, gap and waterline filled in."""
    report = blocks_report(
        block_graph("mbconv", 16, expansion=4, hw=(16, 16)), "cpu", measure=True, repeats=3
    )
    (block,) = report["blocks"]
    assert report["measured_on"] == "cpu" and report["elem_bytes"] == 4
    for layer in block["layers"]:
        assert layer["measured_s"] > 0 and layer["efficiency"] > 0 and layer["achieved_flops"] > 0
    assert "measured_s" not in block["fused"]  # no fused kernel runs on the CPU
    w = report["waterline"]["unfused"]
    assert w["measured_s"] == pytest.approx(sum(layer["measured_s"] for layer in block["layers"]))
    assert report["waterline"]["fused"]["measured_s"] is None


def test_a_misspelt_device_is_refused_and_the_zoo_is_reachable_from_fuser():
    """'a100-typo' got H100's limits silently; fuser.models.names() after `import fuser` (the
    README's spelling) raised AttributeError."""
    import fuser

    graph = fuser.from_zoo("resnet18", (1, 3, 32, 32))
    with pytest.raises(fuser.FuserError, match="unknown device 'a100-typo'; choose one of h100, h200, cpu"):
        fuser.find_blocks(graph, device="a100-typo")
    assert "resnet18" in fuser.models.names()
