"""fuser's default CPU schedules: every kernel of every zoo model gets a rule (none left
naive), the whole zoo and both PaddleOCR models match ONNX Runtime with them, the blocked
layout's weights are transformed at build time, each rule's tile comes from the target's
vector width, and the rules' tunable space replays to the default schedule."""

from __future__ import annotations

import re

import native
import numpy as np
import onnx
import pytest
import torch
from util import HEAVY, PADDLE_MODELS, ort_run_graph, paddle_model, rel_err
from zoo_cache import zoo_case

import fuser

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")

from fuser.backends import tvm as tb  # noqa: E402
from fuser.backends.tvm import layout, schedules  # noqa: E402
from fuser.models import names as zoo_names  # noqa: E402

TOL = 1e-4
ZOO = sorted(zoo_names())


def _zoo_fused(name: str):
    _, x, graph = zoo_case(name)
    graph = fuser.optimize(graph).graph
    target = tb.make_target("llvm")
    return graph, x, target, tb.schedule(tb.fuse(tb.to_relax(graph), target), target)


# One model per thing the default pipeline does beyond ResNet-18 and MobileNetV2 (which
# test_tvm_backend runs): plain channel counts as matmul and a channel shuffle (ShuffleNet),
# padded matmuls, fast softmax and GELU (ViT), fast sigmoid and squeeze-excite
# (EfficientNet), equal-part channel splits (YOLOv8), layer norm and 7x7 depthwise (ConvNeXt).
# Every model of the zoo with FUSER_HEAVY=1 (test_tvm_backend's heavy test runs them all at
# full size too).
ZOO_MATCH = ZOO if HEAVY else [
    "convnext_tiny", "efficientnet_b0", "shufflenet_v2_x1_0", "vit_tiny_patch16_224", "yolov8n"
]  # fmt: skip


def _no_naive(fused) -> None:
    sources = tb.schedule_sources(fused)
    naive = sorted(k for k, v in sources.items() if v == schedules.NAIVE)
    assert not naive, f"kernels no rule scheduled: {naive}"
    assert set(sources.values()) <= {rule.NAME for rule in schedules.RULES}


# ResNet-152's kernels are ResNet-50's (same stages and widths, more repeats; the fused
# modules' PrimFuncs differ only in names): it runs under FUSER_HEAVY=1 only.
ZOO_KERNELS = ZOO if HEAVY else [name for name in ZOO if name != "resnet152"]


@pytest.mark.parametrize("name", ZOO_KERNELS)
def test_zoo_no_kernel_left_naive(name):
    """Every kernel of every zoo model (64x64; VGG and ViT at 224) is taken by a rule."""
    *_, fused = _zoo_fused(name)
    _no_naive(fused)


@pytest.mark.parametrize("name", ZOO_MATCH)
def test_zoo_default_schedules_match_ort(name):
    graph, x, target, fused = _zoo_fused(name)
    _no_naive(fused)
    feeds = {graph.inputs[0].name: x.numpy()}
    got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
    want = ort_run_graph(graph, feeds)
    assert all(rel_err(g, w) <= TOL for g, w in zip(got, want))


@pytest.mark.parametrize("name", sorted(PADDLE_MODELS))
def test_paddle_models_no_kernel_left_naive(name):
    """Both PaddleOCR models (their outputs against ONNX Runtime: test_tvm_backend)."""
    path = paddle_model(name)
    if not path.exists():
        pytest.skip(f"{path} is not present")
    shape = PADDLE_MODELS[name] if HEAVY or "cls" in name else (1, 3, 320, 320)
    input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    graph = fuser.optimize(str(path), input_shapes={input_name: shape}).graph
    target = tb.make_target("llvm")
    _no_naive(tb.schedule(tb.fuse(tb.to_relax(graph), target), target))


# ---- layout, tiles, tuning space ------------------------------------------------------------
def _conv_graph(cin=16, cout=32, hw=8):
    x = torch.randn(1, cin, hw, hw, generator=torch.Generator().manual_seed(0))
    module = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU6()).eval()
    return fuser.optimize(module, (x,)).graph, x


def test_prepacked_weight_equals_the_layout_transform():
    w = np.arange(32 * 16 * 3 * 3, dtype=np.float32).reshape(32, 16, 3, 3)
    index_map = tvm.tirx.IndexMap.from_func(lambda o, i, h, k: (o // 16, i // 8, h, k, i % 8, o % 16))
    packed = layout.transform_constant(w, index_map)
    assert np.array_equal(packed, w.reshape(2, 16, 2, 8, 3, 3).transpose(0, 2, 4, 5, 3, 1))
    assert np.array_equal(packed, index_map.map_tensor(tvm.runtime.tensor(w)).numpy())


def test_weights_are_transformed_at_build_time():
    """No layout transform of a constant is left for run time: every layout-transform kernel
    main calls reads an activation, and the conv kernel reads its weight already blocked."""
    graph, _ = _conv_graph()
    target = tb.make_target("llvm", cpu="x86-64-v4")
    fused = tb.fuse(tb.to_relax(graph), target)
    calls = []
    tvm.relax.analysis.post_order_visit(
        fused["main"], lambda e: calls.append(e) if isinstance(e, tvm.relax.Call) and e.args else None
    )
    for call in calls:
        callee = call.args[0]
        if isinstance(callee, tvm.ir.GlobalVar) and "layout_transform" in callee.name_hint:
            assert not any(isinstance(a, tvm.ir.expr.Constant) for a in call.args[1])
    conv = next(k for k in tb.kernel_names(fused) if "conv2d_nchwc" in k)
    shapes = [[int(d) for d in b.shape] for b in fused[conv].params]
    assert [2, 1, 3, 3, 16, 16] in shapes  # OIHW16i16o: 32 out, 16 in, packed once


@pytest.mark.parametrize(("cpu", "lanes"), [("x86-64-v4", 16), ("x86-64-v3", 8), ("x86-64", 4)])
def test_blocks_and_vectors_follow_the_target(cpu, lanes):
    target = tb.make_target("llvm", cpu=cpu)
    facts = schedules.cpu_facts(target)
    assert facts.lanes == lanes and facts.vector_registers == (32 if lanes == 16 else 16)
    graph, x = _conv_graph()
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    conv = next(k for k in tb.kernel_names(fused) if "conv2d_nchwc" in k)
    assert tb.schedule_sources(fused)[conv] == "window"
    # the vector loops of the scheduled kernel, from its TVMScript (0.27 has no TIR visitor in Python)
    vectorized = [int(n) for n in re.findall(r"T\.vectorized\((?:T\.int64\()?(\d+)", fused[conv].script())]
    assert lanes in vectorized and max(vectorized) == lanes  # the channel block, one register
    feeds = {graph.inputs[0].name: x.numpy()}
    if cpu != "x86-64-v4" or "avx512f" in tb.host_features():
        got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
        assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


@pytest.mark.parametrize("cpu", ["x86-64-v4", "x86-64-v3"])
def test_quarter_vector_blocks_stay_plain(cpu):
    """116 channels (4 x 29) would be 4-channel blocks: a quarter (half) of a 16 (8) lane
    vector. The tensor stays NCHW and its 1x1 conv runs as a matmul over the pixels, while
    its depthwise conv still runs blocked, between layout transforms; 32 channels keep
    their block throughout. Outputs against ORT."""
    target = tb.make_target("llvm", cpu=cpu)
    for c, blocked in [(116, False), (32, True)]:
        x = torch.randn(1, c, 8, 8, generator=torch.Generator().manual_seed(0))
        module = torch.nn.Sequential(torch.nn.Conv2d(c, c, 1), torch.nn.Conv2d(c, c, 3, padding=1, groups=c))
        graph = fuser.optimize(module.eval(), (x,)).graph
        fused = tb.fuse(tb.to_relax(graph), target)
        names = tb.kernel_names(fused)
        assert any("conv2d_nchwc" in k for k in names) == blocked, names
        assert any("matmul" in k for k in names) != blocked, names
        assert any("dwconv_nchwc" in k for k in names), names
        if cpu != "x86-64-v4" or "avx512f" in tb.host_features():
            feeds = {graph.inputs[0].name: x.numpy()}
            executable = tb.build_fused(tb.schedule(fused, target), target)
            got = native.run_executable(executable, graph, target, feeds)
            assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


def test_host_caches_read_from_the_os(tmp_path):
    for i, (level, kind, size) in enumerate(
        [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K")]
    ):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    caches = schedules.host_caches(str(tmp_path))
    assert caches[1] == 48 << 10 and caches[2] == 2 << 20  # the instruction cache is not data
    assert caches[3] == schedules.common.DEFAULT_CACHES[3]  # not reported: the default


def test_tuning_space_at_its_defaults_is_the_default_schedule():
    """The rules' tunable space, replayed at its default decisions, is exactly the default
    schedule: tuning starts from it."""
    from tvm import s_tir

    graph, _ = _conv_graph()
    target = tb.make_target("llvm")
    fused = tb.fuse(tb.to_relax(graph), target)
    for name in tb.kernel_names(fused):
        func = fused[name]
        default, rule = schedules.schedule_func(func, target)
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        spaced = schedules.design_space(target)(sch)
        tvm.ir.assert_structural_equal(spaced.mod["main"], default)  # raises naming the mismatch


def test_no_default_schedules_is_tvm_plain_pipeline():
    graph, x = _conv_graph()
    target = tb.make_target("llvm")
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target, schedules=False), target, schedules=False)
    assert not any("nchwc" in k for k in tb.kernel_names(fused))
    assert set(tb.schedule_sources(fused).values()) == {schedules.NAIVE}


# ---- each rule against ONNX Runtime, on this CPU and without AVX-512 -------------------------
class _Shuffle(torch.nn.Module):
    """ShuffleNet's channel shuffle: a reshape-transpose-reshape kernel."""

    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class _Attention(torch.nn.Module):
    """softmax(x x^T) x: batched matmuls and a softmax, as in ViT's attention."""

    def forward(self, x):
        return torch.softmax(x @ x.transpose(-1, -2), -1) @ x


class _Softmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, -1)


class _RMSNorm(torch.nn.Module):
    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)


def _seq(*layers):
    return torch.nn.Sequential(*layers)


C = torch.nn.Conv2d
# case -> (module, input shape, {kernel-name fragment: the rule that must schedule it})
RULE_CASES = {
    "conv3x3": (_seq(C(16, 32, 3, padding=1), torch.nn.ReLU6()), (1, 16, 8, 8), {"conv2d_nchwc": "window"}),
    "conv1x1": (_seq(C(16, 32, 1), torch.nn.ReLU()), (1, 16, 8, 8), {"conv2d_nchwc": "window"}),
    "conv1x1_plain": (C(58, 116, 1), (1, 58, 8, 8), {"matmul": "matmul"}),  # 58: no channel block
    "depthwise": (C(32, 32, 3, padding=1, groups=32), (1, 32, 9, 9), {"dwconv_nchwc": "window"}),
    # 58 channels have no block: plain NCHW, the output row as vectors (28 -> 2 x 14, 14 -> 14)
    "depthwise_plain": (C(58, 58, 3, padding=1, groups=58), (1, 58, 28, 28), {"conv2d": "window"}),
    "depthwise_plain_s2": (
        C(58, 58, 3, stride=2, padding=1, groups=58),
        (1, 58, 28, 28),
        {"conv2d": "window"},
    ),
    "dense": (torch.nn.Linear(64, 40), (1, 64), {"matmul": "matmul"}),
    "pool": (
        _seq(
            C(16, 16, 3, padding=1),
            torch.nn.MaxPool2d(2),
            torch.nn.AvgPool2d(2),
            torch.nn.AdaptiveAvgPool2d(1),
        ),
        (1, 16, 8, 8),
        {"max_pool2d": "window", "avg_pool2d": "window", "mean": "window"},
    ),
    "injective": (_Shuffle(), (1, 16, 8, 8), {"transpose": "injective"}),
    # rows of 12: fewer than two vectors, dlight's rule keeps them
    "attention": (_Attention(), (1, 4, 12, 16), {"matmul": "matmul", "softmax": "reduction"}),
    # rows of 45 and 37: whole vectors, then a partial one (masked in the lanes, peeled after)
    "softmax_rows": (_Softmax(), (1, 3, 7, 45), {"softmax": "rows"}),
    "layernorm_rows": (torch.nn.LayerNorm(37), (1, 5, 37), {"layer_norm": "rows"}),
    "rmsnorm_rows": (_RMSNorm(), (1, 6, 50), {"mean": "rows"}),
}


def _no_avx512_target():
    """This CPU's target with AVX-512 switched off in its -mattr (as for a VM that hides it):
    runs wherever the host target runs."""
    host_target = tb.make_target("llvm")
    attrs = {k: host_target.attrs[k] for k in ("mcpu", "num-cores")}
    attrs["mattr"] = [*host_target.attrs.get("mattr", []), "-avx512f"]
    return tvm.target.Target({"kind": "llvm", **attrs})


@pytest.mark.parametrize("avx512", [True, False], ids=["host", "no-avx512"])
@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_each_rule_matches_ort(case, avx512):
    from test_tvm_target import EVEX_ONLY, executable_asm

    module, shape, rules = RULE_CASES[case]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(module.eval(), (x,)).graph
    target = tb.make_target("llvm") if avx512 else _no_avx512_target()
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    sources = tb.schedule_sources(fused)
    _no_naive(fused)
    for fragment, rule in rules.items():
        taken = {k: v for k, v in sources.items() if fragment in k}
        assert taken and set(taken.values()) == {rule}, sources
    executable = tb.build_fused(fused, target)
    if not avx512:
        assert schedules.cpu_facts(target).lanes <= 8
        assert not EVEX_ONLY.findall(executable_asm(executable))
    feeds = {graph.inputs[0].name: x.numpy()}
    got = native.run_executable(executable, graph, target, feeds)
    want = ort_run_graph(graph, feeds)
    assert all(rel_err(g, w) <= TOL for g, w in zip(got, want))


def test_tiny_tuning_budget_never_picks_a_schedule_slower_than_the_default(tmp_path):
    """Tuning starts from the default schedules: each tunable kernel's default is measured
    into the database first, so with 2 trials a kernel the build picks is the database's
    fastest record for it and never one measured slower than its default schedule."""
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from fuser.backends.tvm import tuning

    graph, _ = _conv_graph(cin=8, cout=16, hw=8)
    target = tb.make_target("llvm", 1)
    fused = tb.fuse(tb.to_relax(graph), target)
    result = tuning.tune(fused, target, tmp_path, 2)
    assert result.seeded == len(result.budgets) >= 1 and result.trials_run >= 1
    database = tuning.open_database(tmp_path)
    with target:
        tasks = ms.relax_integration.extract_tasks(fused, target)
    tasks = [t for t in tasks if schedules.tunable(t.dispatched[0]["main"], target)]
    assert {t.task_name for t in tasks} == {b.name for b in result.budgets}
    for task in tasks:
        workload = database.commit_workload(task.dispatched[0])
        records = database.get_top_k(workload, 64)
        default, _ = schedules.schedule_func(task.dispatched[0]["main"], target)

        def applied(record, mod=task.dispatched[0]):
            sch = s_tir.Schedule(mod)
            record.trace.apply_to_schedule(sch, remove_postproc=True)
            return sch.mod["main"]

        seconds = [float(np.mean([float(s) for s in r.run_secs])) for r in records]
        is_default = [tvm_ffi.structural_equal(applied(r), default) for r in records]
        assert any(is_default), task.task_name  # the default was measured and kept
        assert seconds[0] == min(seconds) <= seconds[is_default.index(True)]
        chosen = result.mod[task.task_name]
        tvm.ir.assert_structural_equal(chosen.body, applied(records[0]).body)


def _conv_silu_add_concat(channels=16, hw=12):
    """YOLOv8n's C2f tail in one kernel: conv -> SiLU -> + x -> concat with x."""
    torch.manual_seed(0)
    conv = C(channels, channels, 3, padding=1)

    class Tail(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.silu(conv(x)) + x
            return torch.cat([x, y], 1)

    x = torch.randn(1, channels, hw, hw)
    return fuser.optimize(Tail().eval(), (x,)).graph, x.numpy()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_concat_after_a_conv_is_computed_whole_and_one_thread_targets_stay_serial(threads):
    """The window rule once computed the concat per register tile: the half that comes from
    the other input was never written (NaN). A one-thread target gets no parallel loop."""
    graph, x = _conv_silu_add_concat()
    target = tb.make_target("llvm", threads=threads)
    fused = tb.schedule(tb.fuse(tb.to_relax(graph, [list(graph.nodes)]), target, planned=True), target)
    assert set(tb.schedule_sources(fused).values()) == {"window"}
    kernel = next(f for gv, f in fused.functions.items() if gv.name_hint == "fuser_group_0")
    assert ("T.parallel" in kernel.script()) == (threads > 1)
    got = native.run_executable(tb.build_fused(fused, target), graph, target, {graph.inputs[0].name: x})
    want = ort_run_graph(graph, {graph.inputs[0].name: x})
    assert rel_err(got[0], want[0]) <= TOL


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["softmax_rows", "layernorm_rows", "rmsnorm_rows"])
def test_the_rows_rule_peels_partial_vectors_and_matches_ort(case, threads):
    """Rows of 45, 37 and 50 elements: whole vectors, then a partial one in a loop of its own.
    On one thread the reductions' last vector is peeled too (their init decomposed first: a
    peeled copy with the init would zero the lanes again); with threads it stays masked, the
    row loop parallel."""
    module, shape, _ = RULE_CASES[case]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(module.eval(), (x,)).graph
    target = tb.make_target("llvm", threads=threads)
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    sources = tb.schedule_sources(fused)
    kernel = next(f for gv, f in fused.functions.items() if sources.get(gv.name_hint) == "rows")
    script = kernel.script()
    assert ("T.parallel" in script) == (threads > 1)
    assert ("_init" in script) == (threads == 1) and "_partition" in script
    feeds = {graph.inputs[0].name: x.numpy()}
    got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
    assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


@pytest.mark.parametrize(("hw", "tile"), [(28, [1, 28]), (14, [3, 7]), (7, [3, 7])])
def test_the_window_rules_conv_tile_fits_the_registers(hw, tile):
    """A 1x1 conv (96 -> 96 channels, 6 chunks of 16) on AVX-512: the register tile whose
    accumulators, weight vectors and broadcast inputs fit in 31 of the 32 registers, the most
    accumulators first (28 columns: 1 x 28, 30 registers; 14 and 7: 3 x 7, 31), not 2 x 14 at
    14 columns (44 registers: the accumulators that fit in 28), which LLVM spilled to the
    stack."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(96, 96, 1)
    graph = fuser.optimize(conv.eval(), (torch.randn(1, 96, hw, hw),)).graph
    target = tb.make_target("llvm", cpu="znver4", threads=1)
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    (func,) = [f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in str(f)]
    from fuser.backends.tvm.depthfirst import _realizes

    loops = next(lps for r, lps in _realizes(func.body) if r.block.name_hint.endswith("_update"))
    assert [int(lp.extent) for lp in loops if lp.kind == tvm.tirx.ForKind.UNROLLED] == tile


@pytest.mark.parametrize(("cpu", "nvec"), [("x86-64-v4", 25), ("x86-64-v3", 5)])
def test_a_gemv_tile_spans_the_registers(cpu, nvec):
    """MobileNetV2's head at batch 1 (1280 -> 1000: vectors of 8, 1000 = 8 x 125): a GEMV reads
    each weight vector once, so its register tile takes as many vectors of a weight row as
    the registers hold less two (AVX-512: 25 of 30, AVX2: 5 of 14), not the 1 of 4 that a
    matmul's row tile leaves (32 bytes per 4000-byte row). Output against ORT."""
    torch.manual_seed(0)
    graph = fuser.optimize(torch.nn.Linear(1280, 1000).eval(), (torch.randn(1, 1280),)).graph
    target = tb.make_target("llvm", cpu=cpu, threads=1)
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    (name,) = [k for k in tb.kernel_names(fused) if "matmul" in k]
    assert tb.schedule_sources(fused)[name] == "matmul"
    from fuser.backends.tvm.depthfirst import _realizes

    loops = next(lps for r, lps in _realizes(fused[name].body) if r.block.name_hint.endswith("_update"))
    assert [int(lp.extent) for lp in loops if lp.kind == tvm.tirx.ForKind.UNROLLED] == [1, nvec]
    assert [int(lp.extent) for lp in loops if lp.kind == tvm.tirx.ForKind.VECTORIZED] == [8]
    if cpu != "x86-64-v4" or "avx512f" in tb.host_features():
        feeds = {graph.inputs[0].name: np.random.default_rng(0).standard_normal((1, 1280), dtype=np.float32)}
        got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
        assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


def _fake_caches(root, l1d: str, l2: str, l3: str) -> str:
    for i, (level, size) in enumerate(((1, l1d), (2, l2), (3, l3))):
        index = root / f"index{i}"
        index.mkdir()
        (index / "type").write_text("Data" if level == 1 else "Unified")
        (index / "level").write_text(str(level))
        (index / "size").write_text(size)
    return str(root)


def test_a_conv_tile_picks_the_pair_whose_weights_stay_close():
    """ResNet-18's layer3 conv (256 -> 256, 3x3 at 14x14; 16 chunks of 147 KB of weights): the
    most accumulators, 8 chunks x 2 columns, reload 1.18 MB of weights per pass, from L3 on a
    1 MB L2, every 2 columns (117 GFLOP/s, 1 thread, Zen 5); 2 x 7 reloads 295 KB from L2
    every 7 (242 GFLOP/s). Weights read by one pass only (a squeeze-and-excite conv on a 1x1
    map) come from memory for every tile: the most accumulators still win."""
    from fuser.backends.tvm.schedules.common import ConvWeights, conv_register_tile

    caches = {"l1d": 48 << 10, "l2": 1 << 20}
    assert conv_register_tile(16, 14, 32) == (8, 2)  # the accumulators alone
    assert conv_register_tile(16, 14, 32, 1, ConvWeights(2304, 64, 14, **caches)) == (2, 7)
    # 128 -> 128 1x1 (YOLOv8n): 8 x 2 is 64 KB a pass, over half of L1; 2 x 7 16 KB
    assert conv_register_tile(8, 14, 32, 1, ConvWeights(128, 64, 14, **caches)) == (2, 7)
    # 64 -> 64 3x3 at 56x56 (ResNet-18's layer1): 36 KB a chunk, one chunk x 28 columns as before
    assert conv_register_tile(4, 56, 32, 1, ConvWeights(576, 64, 56, **caches)) == (1, 28)
    # 960 -> 240 squeeze-and-excite conv on a 1x1 map: every tile streams the weights once
    assert conv_register_tile(15, 1, 32, 1, ConvWeights(960, 64, 1, **caches)) == (15, 1)


def test_the_window_rule_gives_a_wide_conv_the_tile_that_keeps_its_weights_in_l2(tmp_path, monkeypatch):
    """The window rule passes the conv's weights to the tile choice: ResNet-18's layer3 conv on
    AVX-512 with a 48 KB L1d and 1 MB L2 gets 2 chunks x 7 columns. Output against ORT."""
    from fuser.backends.tvm.depthfirst import _realizes

    monkeypatch.setenv("FUSER_CACHE_DIR", _fake_caches(tmp_path, "48K", "1024K", "32768K"))
    torch.manual_seed(0)
    x = torch.randn(1, 256, 14, 14)
    graph = fuser.optimize(torch.nn.Conv2d(256, 256, 3, padding=1).eval(), (x,)).graph
    fused = None
    for cpu in ("znver4", None):  # the tile for AVX-512; then a build this host runs
        target = tb.make_target("llvm", cpu=cpu, threads=1)
        fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
        (name,) = [k for k in tb.kernel_names(fused) if "conv2d" in k]
        assert tb.schedule_sources(fused)[name] == "window"
        if cpu:
            body = fused[name].body
            loops = next(lps for r, lps in _realizes(body) if r.block.name_hint.endswith("_update"))
            assert [int(lp.extent) for lp in loops if lp.kind == tvm.tirx.ForKind.UNROLLED] == [2, 7]
    feeds = {graph.inputs[0].name: x.numpy()}
    got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
    assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


def test_a_matmul_over_a_prime_k_keeps_it_in_one_block():
    """ViT's attention times V: K = 197 tokens, prime, so its largest divisor under the L1 cap
    was 1: blocks of one k, the accumulators written back after every multiply-add (57
    GFLOP/s, 174 as one block; ViT-Tiny 20.1 -> 17.3 ms, 1 thread). The loop inside the row
    tiles now runs all 197. Output against ORT."""
    from fuser.backends.tvm.depthfirst import _realizes

    class AttendValues(torch.nn.Module):
        def forward(self, p, v):
            return torch.matmul(p, v)

    gen = torch.Generator().manual_seed(0)
    p, v = torch.rand(1, 3, 197, 197, generator=gen), torch.randn(1, 3, 197, 64, generator=gen)
    graph = fuser.optimize(AttendValues().eval(), (p, v)).graph
    target = tb.make_target("llvm", cpu="znver4", threads=1)
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    (name,) = [k for k in tb.kernel_names(fused) if "matmul" in k]
    assert tb.schedule_sources(fused)[name] == "matmul"
    loops = next(lps for r, lps in _realizes(fused[name].body) if r.block.name_hint.endswith("_update"))
    serial = [int(lp.extent) for lp in loops if lp.kind == tvm.tirx.ForKind.SERIAL]
    assert serial[-1] == 197, serial  # k, inside the row tiles: one block
    feeds = {graph.inputs[0].name: p.numpy(), graph.inputs[1].name: v.numpy()}
    host = tb.make_target("llvm", threads=1)
    got = native.run_executable(
        tb.build_fused(tb.schedule(tb.fuse(tb.to_relax(graph), host), host), host), graph, host, feeds
    )
    assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


PADDED_CASES = {
    # SqueezeNet's classifier in small: 264 channels are 16.5 vectors; bias, ReLU and the
    # global pool before the slice
    "classifier": (
        lambda: _seq(C(64, 264, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
        (1, 64, 7, 7),
        True,
    ),
    # PP-OCRv4 det's neck in small: 24 channels (a third more as 32), 864 multiply-adds an
    # output, 48 M in all
    "heavy_24": (lambda: _seq(C(96, 24, 3, padding=1), torch.nn.ReLU()), (1, 96, 48, 48), True),
    # a squeeze-excite's reduce conv: one pixel, nothing to gain, no slice
    "light_28": (lambda: _seq(C(672, 28, 1), torch.nn.ReLU()), (1, 672, 1, 1), False),
}


@pytest.mark.parametrize("avx512", [True, False], ids=["host", "no-avx512"])
@pytest.mark.parametrize("case", sorted(PADDED_CASES))
def test_a_conv_with_channels_off_the_vectors_computes_them_padded(case, avx512):
    """Output channels that are not whole 16-lane vectors would run in blocks of 8 (half of
    every AVX-512 vector idle): computed padded to whole vectors, zero weights in the extra
    channels, the bias and activation in the conv's kernel and the extra channels sliced off
    after them, where it pays (``layout._padded_out_channels``); a target of 8 lanes blocks
    them by 8 and pads nothing."""
    make, shape, pays = PADDED_CASES[case]
    torch.manual_seed(0)
    module = make()
    x = torch.randn(*shape)
    graph = fuser.optimize(module.eval(), (x,)).graph
    target = tb.make_target("llvm") if avx512 else _no_avx512_target()
    fused = tb.schedule(tb.fuse(tb.to_relax(graph), target), target)
    kernels = tb.kernel_names(fused)
    padded = pays and schedules.cpu_facts(target).lanes == 16
    assert any("strided_slice" in k for k in kernels) == padded, kernels
    if pays:  # the bias and ReLU stay in the conv's kernel, blocked by 8 or padded
        conv = [k for k in kernels if "conv2d" in k]
        assert len(conv) == 1 and "relu" in conv[0], kernels
    feeds = {graph.inputs[0].name: x.numpy()}
    got = native.run_executable(tb.build_fused(fused, target), graph, target, feeds)
    want = ort_run_graph(graph, feeds)[0]
    assert got[0].shape == want.shape and rel_err(got[0], want) <= TOL
