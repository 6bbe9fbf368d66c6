"""DRAM bytes measured on a simulated cache (fuser.backends.tvm.cachesim, valgrind's cachegrind)
against hand counts, and a fusion plan's predicted bytes against its depth-first build and TVM's
FuseOps build (fuser.fusion.measured): the issue's acceptance checks on a two-conv chain."""

from __future__ import annotations

import json
import shutil

import native
import pytest
import torch
from util import HEAVY

import fuser

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")
tb = pytest.importorskip("fuser.backends.tvm")

from fuser.backends.tvm import artifact  # noqa: E402
from fuser.backends.tvm.cachesim import SIMULATED_CPU, simulate_dram  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")

C, H = 16, 64
MAP = C * H * H * 4  # bytes of one 16x64x64 fp32 map: 256 KiB


def test_a_relu_moves_its_input_and_output_once(tmp_path):
    """Hand count: Relu over a 256 KiB map on a 64 KiB cache reads 4096 lines and writes 4096.
    Scheduled as ``fusion.measured`` schedules the FuseOps build (depth-first rules, one
    thread): a parallel loop's body is attributed to no kernel by cg_annotate here."""
    x = torch.randn(1, C, H, H)
    graph = fuser.optimize(torch.nn.ReLU(), (x,)).graph
    target = tb.make_target("llvm", cpu=SIMULATED_CPU, threads=1)
    fused = tb.fuse(tb.to_relax(graph), target, default_tile=tb.TileHint("lbdf"))
    kernels = tb.kernel_names(fused)
    artifact.save(tmp_path / "b", tb.build_fused(fused, target), graph, target)
    traffic = simulate_dram(tmp_path / "b", {graph.inputs[0].name: x.numpy()}, kernels, 64 << 10)
    (kernel,) = traffic.kernels.values()
    assert kernel.read_misses == pytest.approx(MAP // 64, rel=0.05)
    assert kernel.write_misses == pytest.approx(MAP // 64, rel=0.05)
    assert traffic.dram_bytes == pytest.approx(2 * MAP, rel=0.05)


def test_plan_driven_build_moves_what_the_plan_predicts():
    """conv3x3+ReLU twice over 8x192x192 maps (1.125 MiB each), planned LBDF at 128 KB: one
    group whose intermediate stays in line buffers. Measured within +-25% of the prediction,
    and <= 0.6x the FuseOps build (two kernels: the intermediate written and read back)."""
    from fuser.fusion.api import partition
    from fuser.fusion.measured import measure_plan

    c, h = 8, 192
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(c, c, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(c, c, 3, padding=1),
        torch.nn.ReLU(),
    ).eval()
    graph = fuser.optimize(module, (torch.randn(1, c, h, h),)).graph
    plan = partition(graph, buffer="128KB", style="lbdf", search="local", element_bytes=4)
    assert [g.ops for g in plan.groups] == [[n.name for n in graph.nodes]]
    report = measure_plan(graph, plan)
    assert report.cache_bytes == 2 * plan.buffer_bytes
    (group,) = report.groups
    assert group.measured_bytes == report.measured_bytes
    assert abs(report.model_ratio - 1) <= 0.25, report.to_dict()
    assert report.fuseops_ratio <= 0.6, report.to_dict()
    # the model predicts the FuseOps build too: two conv + ReLU kernels, the input and output
    # once, the intermediate written and read back
    assert report.layer_fusion_bytes == 4 * (2 * (c * c * 9 + c) + 4 * c * h * h)
    assert abs(report.fuseops_model_ratio - 1) <= 0.25, report.to_dict()
    # the FuseOps build moves the intermediate map twice more (written, read back)
    inter = c * h * h * 4
    assert report.fuseops_bytes - report.measured_bytes == pytest.approx(2 * inter, rel=0.25)


class LoneOps(torch.nn.Module):
    """Four one-group branches, each a schedule that once moved several times its prediction
    (or, measured, almost nothing)."""

    def __init__(self):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(C, C, 3, padding=1, groups=C)
        self.project = torch.nn.Conv2d(384, 64, 1)
        self.pool = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.wide = torch.nn.Conv2d(256, 256, 1)

    def forward(self, a, b, c, d):
        return self.depthwise(a), self.project(b), self.pool(c), self.wide(d)


def test_lone_ops_move_their_inputs_and_outputs_once():
    """One cachegrind run, 64 KB plan (128 KB simulated cache), each group within +-25% of its
    prediction, where the old schedules measured:

    - a depthwise 3x3 conv alone over a 256 KiB map: 2.05x (the default schedule wrote the pad
      of its input whole and read it back; MobileNetV2 at 224, 128 KB: 2.0-3.4x); row tiles keep
      the pad in a line buffer;
    - a 1x1 conv, 384 -> 64 channels over 12x12, whose input (221 KB) and weights (96 KB) both
      exceed 3/4 of the buffer and whose output (36 KB) does not: 11.6x (output chunks
      outermost read the input once per chunk; MobileNetV2's project convs 3.8-4.0x); the
      reduction outermost keeps the output on chip while input and weights stream once;
    - ReLU + global average pool over a 256 KiB map: 3.0x (the ReLU written whole and read back
      by the pool; MobileNetV2's last ReLU6 + pool 2.8x); the pool reads each element once, so
      the ReLU is computed inside it;
    - a blocked 1x1 conv, 256 -> 256 over 8x8 (256 KB of weights), on the default schedule,
      whose loops are parallel: ~64 B, as a parallel body is an unnamed lambda cachegrind
      cannot attribute; the simulated build makes them serial."""
    from fuser.fusion.api import partition
    from fuser.fusion.measured import measure_plan

    torch.manual_seed(0)
    inputs = (
        torch.randn(1, C, H, H),
        torch.randn(1, 384, 12, 12),
        torch.randn(1, C, H, H),
        torch.randn(1, 256, 8, 8),
    )
    graph = fuser.optimize(LoneOps().eval(), inputs).graph
    plan = partition(graph, buffer="64KB", style="lbdf", search="local", element_bytes=4)
    assert sorted(len(g.ops) for g in plan.groups) == [1, 1, 1, 3]  # ReLU, pool, flatten: one group
    report = measure_plan(graph, plan, fuseops=False)
    # what each group must move at least once, by hand: input and output (and weights)
    floors = {
        "depthwise": 2 * MAP,
        "project": (384 + 64) * 12 * 12 * 4 + 384 * 64 * 4,
        "pool": MAP,
        "wide": 2 * 256 * 8 * 8 * 4 + 256 * 256 * 4,
    }
    kinds = [next(k for k in floors if k in g.ops[0]) for g in report.groups]
    assert sorted(kinds) == sorted(floors)
    for kind, group in zip(kinds, report.groups):
        assert group.measured_bytes >= floors[kind], group
        assert abs(group.ratio - 1) <= 0.25, group


@pytest.mark.heavy
@pytest.mark.skipif(not HEAVY, reason="FUSER_HEAVY=1: bench --dram simulates a build (minutes)")
def test_bench_dram_reports_each_group(tmp_path):
    """fuser bench --plan --dram: per group its ops, predicted and simulated bytes, kernel time."""
    from fuser.fusion.api import partition

    module = torch.nn.Sequential(torch.nn.Conv2d(C, C, 3, padding=1), torch.nn.ReLU()).eval()
    graph = fuser.optimize(module, (torch.randn(1, C, 32, 32),)).graph
    path = tmp_path / "m.onnx"
    fuser.save_onnx(graph, path)
    plan_path = tmp_path / "p.json"
    partition(graph, buffer="64KB", style="lbdf", search="greedy", element_bytes=4).save(plan_path)
    r = native.run_cli(
        "bench", path, "--backends", "tvm", "--plan", plan_path, "--dram", "--repeat", "3", "--json"
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (group,) = data["groups"]
    assert group["ops"] and group["kernel_ms"] > 0
    assert abs(group["measured_bytes"] / group["predicted_bytes"] - 1) <= 0.25
    assert data["dram"]["cache_bytes"] == 2 * data["dram"]["buffer_bytes"]
