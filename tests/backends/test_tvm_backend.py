"""The TVM backend: IR -> Relax lowering matches ONNX Runtime, plan groups become kernels,
and the cuda build generates code that nvcc compiles (no GPU needed). Compiled code runs
in a child process (tests/native.py): a native crash fails one test, naming the signal."""

from __future__ import annotations

import copy
import shutil

import native
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from util import HEAVY, PADDLE_MODELS, ort_run_graph, paddle_model, real_model_input, rel_err
from zoo_cache import zoo_case

import fuser
from fuser.ir import FuserError, Graph

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")

from fuser.backends import tvm as tb  # noqa: E402

TOL = 1e-4


def check_graph_matches_ort(graph: Graph, feeds: dict, groups=None) -> None:
    got = native.run_graph(graph, feeds, groups)
    want = ort_run_graph(graph, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(g, w) <= TOL


def check_module(module: torch.nn.Module, *shapes, groups=None) -> None:
    xs = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    graph = fuser.optimize(module.eval(), tuple(xs)).graph
    feeds = {v.name: x.numpy() for v, x in zip(graph.inputs, xs)}
    check_graph_matches_ort(graph, feeds, groups)


class Lambda(torch.nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn, self.mods = fn, torch.nn.ModuleList(modules)

    def forward(self, *xs):
        return self.fn(self.mods, *xs)


# Each case exercises a group of ops through torch capture (the zoo's route into the IR).
OP_CASES = {
    "conv_groups_dilation_bn_relu6": (
        Lambda(
            lambda m, x: F.relu6(m[1](m[0](x))),
            torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
            torch.nn.BatchNorm2d(8),
        ),
        (1, 8, 12, 12),
    ),
    "asymmetric_pad_conv_stride": (
        Lambda(lambda m, x: m[0](F.pad(x, (0, 1, 0, 1))), torch.nn.Conv2d(3, 4, 3, stride=2)),
        (1, 3, 11, 11),
    ),
    "conv_transpose": (
        Lambda(lambda m, x: torch.sigmoid(m[0](x)), torch.nn.ConvTranspose2d(4, 3, 2, stride=2)),
        (1, 4, 5, 5),
    ),
    "pools_ceil_and_global": (
        Lambda(
            lambda m, x: torch.cat(
                [
                    F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                    F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                ],
                1,
            ).mean((2, 3), keepdim=True)
        ),
        (1, 4, 10, 10),
    ),
    "activations": (
        Lambda(
            lambda m, x: (
                F.hardswish(x)
                + F.hardsigmoid(x) * torch.tanh(x)
                - F.gelu(x) / (torch.sqrt(x * x + 1.0))
                + torch.erf(x) ** 2
            )
        ),
        (2, 3, 4, 5),
    ),
    "layernorm_softmax_matmul": (
        Lambda(lambda m, x: torch.softmax(m[0](x) @ x.transpose(1, 2), -1), torch.nn.LayerNorm(16)),
        (2, 8, 16),
    ),
    "linear_flatten": (Lambda(lambda m, x: m[0](torch.flatten(x, 1)), torch.nn.Linear(48, 10)), (2, 3, 4, 4)),
    "shape_ops": (
        Lambda(
            lambda m, x: (
                torch.cat(list(torch.split(x, [1, 2], 1))[::-1], 1)[:, :, 1:-1:2]
                .permute(0, 2, 3, 1)
                .reshape(2, -1)
                .unsqueeze(0)[..., :5]
                * x[:, 0, 0, 0].unsqueeze(0).unsqueeze(-1).expand(1, 2, 5)
            )
        ),
        (2, 3, 6, 4),
    ),
    "resize_nearest_and_bilinear": (
        Lambda(
            lambda m, x: (
                F.interpolate(x, scale_factor=2, mode="nearest")
                + F.interpolate(x, size=(8, 10), mode="bilinear", align_corners=False)
            )
        ),
        (1, 2, 4, 5),
    ),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_ops_match_ort(case):
    module, shape = OP_CASES[case]
    check_module(module, shape)


def _onnx_graph(op: str, attrs: dict, *consts, shape=(2, 6, 5, 4), opset: int = 17) -> Graph:
    """x -> op(x, *consts) -> y as a fuser Graph (shapes inferred by ONNX)."""
    from fuser.analysis.shapes import infer_shapes

    g = Graph("g", opset=opset)
    x = g.add_input("x", shape)
    inputs = [x] + [c if isinstance(c, type(x)) else g.const(np.asarray(c)) for c in consts]
    g.outputs = [g.add_node(op, inputs, attrs=attrs, name="the_op").output]
    return infer_shapes(g)


# ONNX-level cases torch capture does not produce (opset-9 Softmax, LRN, Sum, PRelu with a
# per-channel slope, Gather with negative constant indices, Slice with a negative step);
# each runs unplanned and as one plan group (whose function may hold no tensor constant).
ONNX_CASES = {
    "softmax_opset11_4d": lambda: _onnx_graph("Softmax", {"axis": 1}, opset=11),
    "lrn": lambda: _onnx_graph("LRN", {"size": 3, "alpha": 0.5, "beta": 0.7, "bias": 2.0}),
    "sum3": lambda: _onnx_graph("Sum", {}, np.full((6, 1, 1), 0.5, "f4"), np.ones((1, 4), "f4")),
    "prelu_per_channel": lambda: _onnx_graph("PRelu", {}, np.linspace(-1, 1, 6, dtype="f4").reshape(6, 1, 1)),
    "gather_negative_indices": lambda: _onnx_graph("Gather", {"axis": 1}, np.array([-1, 0, -3, 2])),
    "gather_scalar_index": lambda: _onnx_graph("Gather", {"axis": 2}, np.array(-2)),
    "slice_negative_step": lambda: _onnx_graph(
        "Slice", {}, np.array([4, -1]), np.array([0, -100]), np.array([1, 3]), np.array([-2, -1])
    ),
    "mul_by_0d_constant": lambda: _onnx_graph("Mul", {}, np.float32(3.0)),
}


@pytest.mark.parametrize("planned", [False, True])
@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_ops_match_ort(case, planned):
    graph = ONNX_CASES[case]()
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
    check_graph_matches_ort(graph, {"x": x}, [graph.nodes] if planned else None)


@pytest.mark.parametrize("planned", [False, True])
@pytest.mark.parametrize("op,sign", [("ReduceMax", 1), ("ReduceMin", -1)])
def test_reduce_max_min_of_a_row_of_infinities_is_that_infinity(op, sign, planned):
    """TVM starts max from -3.4e38, not -inf: masked attention's `ReduceMax(bias) == -inf`
    test must still see a fully masked row (and -3.4e38 itself must stay -3.4e38)."""
    graph = _onnx_graph(op, {"axes": [1], "keepdims": 1}, shape=(4, 3))
    inf, lowest = -sign * np.inf, -sign * np.finfo(np.float32).max
    x = np.array([[inf] * 3, [1, inf, 2], [lowest, inf, inf], [-inf, 0, inf]], "f4")
    want = ort_run_graph(graph, {"x": x})[0]
    np.testing.assert_array_equal(want.ravel(), [inf, 2 if sign > 0 else 1, lowest, -inf])
    got = native.run_graph(graph, {"x": x}, [graph.nodes] if planned else None)[0]
    np.testing.assert_array_equal(got, want)


def test_0d_constant_keeps_its_shape():
    from fuser.backends.tvm.converters import relax_const

    assert relax_const(np.float32(2.0)).value.numpy().shape == ()
    one = relax_const(np.zeros((1,), np.int64)).value.numpy()
    assert one.shape == (1,) and one.dtype == np.int64


def test_unsupported_op_is_refused_by_name():
    g = Graph("g")
    x = g.add_input("x", (1, 4))
    n = g.add_node("Mod", [x, g.const(np.float32(2))], attrs={"fmod": 1}, name="the_mod")
    n.output.shape, n.output.dtype = (1, 4), np.dtype(np.float32)
    g.outputs = [n.output]
    with pytest.raises(FuserError, match=r"the_mod \(Mod\): TVM backend: op Mod has no Relax converter"):
        tb.to_relax(g)


def _small_cnn():
    return Lambda(
        lambda m, x: m[2](F.relu(m[1](F.relu(m[0](x)))).mean((2, 3))),
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Linear(8, 4),
    ).eval()


def test_plan_groups_become_exactly_the_kernels():
    x = torch.randn(1, 3, 16, 16)
    graph = fuser.optimize(_small_cnn(), (x,)).graph
    nodes = graph.nodes
    assert len(nodes) >= 5
    # hand-made plan: (conv, relu), (conv, relu, mean), (gemm) -- contiguous, acyclic
    groups = [nodes[:2], nodes[2:-1], nodes[-1:]]
    fused = tb.fuse(tb.to_relax(graph, groups), tb.make_target("llvm"))
    assert len(tb.kernel_names(fused)) == len(groups)
    # node name -> group id works the same way, keeping the given ids (here against the
    # node order: the Gemm is group 0), and the planned build still matches ORT
    by_name = {n.name: len(groups) - 1 - i for i, g in enumerate(groups) for n in g}
    mod = tb.to_relax(graph, by_name)
    assert tb.group_kernels(mod) == {k: f"fuser_group_{k}" for k in range(3)}
    assert "matmul" in mod["fuser_group_0"].script() and "conv2d" in mod["fuser_group_2"].script()
    fused = tb.fuse(mod, tb.make_target("llvm"))
    assert len(tb.kernel_names(fused)) == len(groups)
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()}, groups)


def test_a_plan_group_that_only_returns_the_input_runs_in_main():
    """A model that returns its input beside a conv: the plan puts the output's Identity in a
    group of its own, which has nothing to fuse (FuseTIR failed on it: "global_name !=
    fused"); its node runs in main, the conv's group is a kernel, and the fusion plan itself
    is accepted as ``groups``. Outputs against ORT; the input comes back unchanged."""

    class PassThrough(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x), x

    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(PassThrough().eval(), (x,)).graph
    plan = fuser.partition(graph, buffer="16KB")
    assert [g.ops for g in plan.groups] == [["conv"], [graph.outputs[1].producer.name]]
    mod = tb.to_relax(graph, plan)
    assert tb.group_kernels(mod) == {0: "fuser_group_0"}
    got = native.run_graph(graph, {graph.inputs[0].name: x.numpy()}, plan)
    want = ort_run_graph(graph, {graph.inputs[0].name: x.numpy()})
    assert rel_err(got[0], want[0]) <= TOL
    assert np.array_equal(got[1], x.numpy())


def test_kernel_calls_are_timed_in_the_run_in_call_order():
    """time_calls_in_run times every kernel call of an inference where it runs: the plan's
    three group kernels in the order main calls them (the Gemm, group 0 here, last), the
    VM's builtins left out; the model's output is unchanged by the hook."""
    x = torch.randn(1, 3, 16, 16)
    graph = fuser.optimize(_small_cnn(), (x,)).graph
    nodes = graph.nodes
    groups = [nodes[:2], nodes[2:-1], nodes[-1:]]
    by_name = {n.name: len(groups) - 1 - i for i, g in enumerate(groups) for n in g}
    target = tb.make_target("llvm", threads=1)
    fused = tb.fuse(tb.to_relax(graph, by_name), target)
    specs = tb.value_specs(graph.inputs), tb.value_specs(graph.outputs)
    model = tb.TVMModel(tb.build_fused(fused, target), *specs)
    want = model(x.numpy())[0]
    calls = tb.time_calls_in_run(model, [x.numpy()], set(tb.kernel_names(fused)), runs=3)
    assert [k for k, _ in calls] == ["fuser_group_2", "fuser_group_1", "fuser_group_0"]
    assert all(ms > 0 for _, ms in calls)
    assert np.array_equal(model(x.numpy())[0], want)
    emptied = tb.TVMModel(tb.build_fused(tb.null_kernels(fused), target), *specs)
    less = tb.time_calls_in_run(model, [x.numpy()], set(tb.kernel_names(fused)), runs=3, emptied=emptied)
    assert [k for k, _ in less] == [k for k, _ in calls]
    # refused in one line: a name string, no run, another build as emptied
    other = tb.fuse(tb.to_relax(graph), target)
    other_model = tb.TVMModel(tb.build_fused(tb.null_kernels(other), target), *specs)
    for kwargs, match in [
        ({"kernels": "fuser_group_0"}, "a set of kernel names"),
        ({"runs": 0}, "at least 1"),
        ({"emptied": other_model}, "not this build"),
    ]:
        options = {"kernels": set(tb.kernel_names(fused)), "runs": 1, **kwargs}
        with pytest.raises(FuserError, match=match):
            tb.time_calls_in_run(model, [x.numpy()], **options)


def test_groups_sharing_a_kernel_get_their_own_calls_in_graph_order():
    """Two identical conv+relu blocks, one kernel for both, numbered against the graph order
    (the second block is group 0): main calls group 1's first, and each group's row gets
    the call that ran it."""
    m = torch.nn.Sequential(*[torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()] * 2)
    graph = fuser.optimize(m.eval(), (torch.randn(1, 8, 12, 12),)).graph
    nodes = graph.nodes
    owner = {n.name: 1 if i < 2 else 0 for i, n in enumerate(nodes)}
    mod = tb.to_relax(graph, owner)
    assert tb.group_order(mod) == [1, 0]
    kernel = tb.group_kernels(mod)[0]
    assert tb.group_kernels(mod) == {0: kernel, 1: kernel}
    from fuser.backends.latency import kernel_rows

    rows = kernel_rows([(kernel, 1.0), (kernel, 2.0)], tb.group_kernels(mod), tb.group_order(mod))
    assert {r.group: r.median_ms for r in rows} == {1: 1.0, 0: 2.0}


def test_kernel_rows_give_each_group_its_own_call():
    """Two groups one kernel runs get one call each, in group order; a group TVM made no
    kernel of is still listed; a kernel of no group gets its calls' mean and their count."""
    from fuser.backends.latency import NO_KERNEL, kernel_rows

    calls = [("k_a", 1.0), ("k_t", 0.25), ("k_a", 3.0), ("k_t", 0.75), ("k_b", 2.0)]
    rows = kernel_rows(calls, {0: "k_a", 1: "k_b", 2: "k_a", 3: "k_view"})
    got = [(r.kernel, r.group, r.median_ms, r.calls, r.shared_with) for r in rows]
    assert got == [
        ("k_a", 0, 1.0, 1, [2]),
        ("k_b", 1, 2.0, 1, []),
        ("k_a", 2, 3.0, 1, [0]),
        (NO_KERNEL, 3, 0.0, 0, []),
        ("k_t", None, 0.5, 2, []),
    ]  # fmt: skip (group 3 became no kernel: a reshape)
    assert rows[-1].total_ms == 1.0


class _Norms(torch.nn.Module):
    """A BatchNorm with no conv to fold into and a bias-free LayerNorm: both lower to
    extra ops, which must not put tensor constants inside a plan group."""

    def __init__(self):
        super().__init__()
        self.bn, self.ln = torch.nn.BatchNorm2d(3), torch.nn.LayerNorm(8, bias=False)
        self.bn.running_mean.normal_(generator=torch.Generator().manual_seed(1))
        self.bn.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))

    def forward(self, x):
        return self.ln(torch.relu(self.bn(x)))


@pytest.mark.parametrize("planned", [False, True])
def test_norms_match_ort_with_and_without_plan(planned):
    x = torch.randn(1, 3, 8, 8)
    graph = fuser.optimize(_Norms().eval(), (x,)).graph
    assert {"BatchNormalization", "LayerNormalization"} <= set(graph.op_counts())
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()}, [graph.nodes] if planned else None)


def test_plan_with_cyclic_groups_is_refused():
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 8, 8),)).graph
    n = graph.nodes
    with pytest.raises(FuserError, match="cycle"):
        tb.to_relax(graph, [[n[0], n[2]], [n[1]]])


def test_without_plan_tvm_fuses_conv_and_relu():
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 8, 8),)).graph
    kernels = tb.kernel_names(tb.fuse(tb.to_relax(graph), tb.make_target("llvm")))
    assert any("conv2d" in k and "relu" in k for k in kernels)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_build_generates_and_compiles_with_nvcc():
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 16, 16),)).graph
    target = tb.make_target("cuda")
    ex = tb.build(tb.to_relax(graph), target)
    source = tb.cuda_source(ex)
    assert "__global__" in source
    if tb.cuda_available():  # a GPU machine also checks the numbers
        feeds = {graph.inputs[0].name: np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("f4")}
        got = native.run_executable(ex, graph, target, feeds)
        assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


# ---- real models -------------------------------------------------------------------
ZOO_DEFAULT = ["resnet18", "mobilenet_v2"]
ZOO_ALL = [
    "convfirst",
    "convnext_tiny",
    "deeplabv3plus_mobilenet_v3",
    "efficientnet_b0",
    "efficientnet_b3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "picodet_layout",
    "resnet152",
    "resnet18",
    "resnet50",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "vgg16",
    "vit_tiny_patch16_224",
]
# Reduced heavy subset (FUSER_HEAVY=1 runs every zoo model at its real size).
# (Checked by hand at 64x64 as well: mobilenet_v3_small, shufflenet_v2_x1_0.)
ZOO_HEAVY = ZOO_ALL if HEAVY else ["squeezenet1_1"]


def check_zoo(name: str):
    _, x, graph = zoo_case(name)
    graph = fuser.optimize(graph).graph
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()})


@pytest.mark.parametrize("name", ZOO_DEFAULT)
def test_zoo_matches_ort(name):
    check_zoo(name)


@pytest.mark.heavy
@pytest.mark.parametrize("name", [n for n in ZOO_HEAVY if n not in ZOO_DEFAULT])
def test_zoo_heavy_matches_ort(name):
    check_zoo(name)


def _paddle_graph(name: str, shape=None):
    path = paddle_model(name)
    if not path.exists():
        pytest.skip(f"{path} is not present")
    shape = shape or PADDLE_MODELS[name]
    input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    graph = fuser.optimize(str(path), input_shapes={input_name: shape}).graph
    return graph, real_model_input(path, shape)


def test_paddle_cls_matches_ort():
    graph, x = _paddle_graph("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    check_graph_matches_ort(graph, {graph.inputs[0].name: x})


def test_paddle_det_matches_ort():
    # README size under FUSER_HEAVY=1; 320x320 otherwise (about 10 s to build with default schedules)
    graph, x = _paddle_graph("ch_PP-OCRv4_det_infer.onnx", None if HEAVY else (1, 3, 320, 320))
    check_graph_matches_ort(graph, {graph.inputs[0].name: x})


@pytest.mark.heavy
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])  # 64x64 in CI, 224 with FUSER_HEAVY
def test_zoo_cuda_build_compiles_with_nvcc(name):
    """The issue's check: the cuda builds of ResNet-18 and MobileNetV2 generate CUDA and
    nvcc compiles it here; on a GPU machine they must also match ONNX Runtime."""
    _, x, graph = zoo_case(name)
    graph = fuser.optimize(graph).graph
    target = tb.make_target("cuda")
    ex = tb.build(tb.to_relax(graph), target)
    assert tb.cuda_source(ex).count("__global__") >= 20
    if tb.cuda_available():
        feeds = {graph.inputs[0].name: x.numpy()}
        got = native.run_executable(ex, graph, target, feeds)
        assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= TOL


class _ScalarOps(torch.nn.Module):
    """Ops whose Relax converters make scalar constants: HardSwish (HardSigmoid's alpha,
    beta), PReLU (its zero), Reciprocal (its one), LayerNorm without bias (its zeros), a
    BatchNorm after an add (not folded: its epsilon); a conv whose weights are prepacked."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = torch.nn.PReLU(8)
        self.bn = torch.nn.BatchNorm2d(8)
        self.norm = torch.nn.LayerNorm(16, bias=False)

    def forward(self, x):
        y = self.prelu(torch.nn.functional.hardswish(self.conv(x)))
        y = self.bn(y + x.mean(1, keepdim=True))
        return self.norm(torch.reciprocal(y.abs() + 1.0))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float16, 2e-2)])
def test_a_model_in_float64_or_float16_builds_and_matches_eager(dtype, tol):
    """Scalar constants take the op's element type and prepacked weights keep theirs:
    relax.const made float32 of them, and a float64 build failed with "Binary operators must
    have the same datatype" (the prepacked conv weight, then each converter's scalar); a
    float64 LayerNorm is written in plain ops (TVM's takes float32 and float16). Against
    eager in float64 (float64 to 1e-9, float16 to 2e-2)."""
    torch.manual_seed(0)
    module = _ScalarOps().eval()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():  # the reference in float64
        want = copy.deepcopy(module).double()(x.double()).numpy()
    module, x = module.to(dtype), x.to(dtype)
    graph = fuser.optimize(module, (x,)).graph
    assert {n.op for n in graph.nodes} >= {"Conv", "HardSwish", "PRelu", "Reciprocal", "BatchNormalization"}
    (got,) = native.run_graph(graph, {graph.inputs[0].name: x.numpy()})
    assert got.dtype == x.numpy().dtype
    assert rel_err(got.astype(np.float64), want) <= tol


class _SpatialAttention(torch.nn.Module):
    """CBAM's spatial attention after a conv: the channels' mean and max (kept as one channel
    each), a 7x7 conv of the two, its sigmoid multiplied into every channel; and a one-channel
    slice added to a conv's output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.attend = torch.nn.Conv2d(2, 1, 7, padding=3)
        self.project = torch.nn.Conv2d(16, 16, 1)

    def forward(self, x):
        y = self.conv(x)
        pooled = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
        y = y * torch.sigmoid(self.attend(pooled))
        return self.project(y + x[:, :1])


def test_cbam_spatial_attention_builds_in_the_blocked_layout():
    """A reduction over the channels kept as one channel, and a one-channel map multiplied
    into (added to) a map of 16: ConvertLayout blocks the 16 channels and could do neither
    ("Could not normalize iterators", "Cannot broadcast from 5 to 4"). Now the reduction drops
    the axis and puts it back, and the one-channel operand is broadcast to 16 first. Against
    ORT, FuseOps and plan-driven."""
    check_module(_SpatialAttention(), (1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(_SpatialAttention().eval(), (x,)).graph
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()}, fuser.partition(graph, buffer="32KB"))


def test_a_softmax_over_an_inner_axis_is_computed_once():
    """YOLOv8's DFL: a softmax over the 16 bins of each box side, axis 1 of (1, 16, 4, A).
    dlight's CPU reduction rule parallelized the output's leading loops (16 x 4), which are
    not the reduction's, and recomputed the max and sum 16 times: 1,424 operations an element
    by TVM's count, 1.08 ms of YOLOv8n's 6.8 at 224. The axis now goes last and back: the
    count is that of the same softmax over the last axis. Output against ORT."""

    class DFL(torch.nn.Module):
        def forward(self, x):
            b, _, a = x.shape
            return x.view(b, 4, 16, a).transpose(2, 1).softmax(1)

    target = tb.make_target("llvm", threads=1)

    def softmax_flops(module, x):
        graph = fuser.optimize(module.eval(), (x,)).graph
        flops = tb.kernel_flops(tb.schedule(tb.fuse(tb.to_relax(graph), target), target))
        return graph, max(flops.values())

    x = torch.randn(1, 64, 1029, generator=torch.Generator().manual_seed(0))
    graph, inner = softmax_flops(DFL(), x)
    _, last = softmax_flops(torch.nn.Softmax(-1), torch.randn(1, 4, 1029, 16))
    assert inner == last
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()})


class _DenseLayer(torch.nn.Module):
    """DenseNet's pattern: a conv's 16 channels joined with another's 8 (and, second, with the
    3 input channels), each join feeding a conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c, self.d = torch.nn.Conv2d(24, 16, 1), torch.nn.Conv2d(19, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.c(torch.cat([self.a(x), self.b(x)], 1)))
        return self.d(torch.cat([y, x], 1))


def test_a_concat_of_channel_counts_with_different_blocks_builds():
    """16 channels come in blocks of 16 and 8 in blocks of 8, which ConvertLayout cannot join
    ("Invalid layout axis 16b"): a concat over channels now caps every count it joins at the
    block they share (8; with the input's 3 channels, plain). Against ORT."""
    check_module(_DenseLayer(), (1, 3, 16, 16))


@pytest.mark.parametrize("kernel", [2, 3])
def test_an_upsampling_transposed_conv_is_a_1x1_conv_and_a_depth_to_space(kernel):
    """A ConvTranspose whose stride is its kernel (PaddleOCR DB head's 2x2 stride 2) lowers to a
    1x1 conv to C_out x k x k channels then depth to space, no conv2d_transpose left (TVM's
    dilated the input with zeros and ran at 1 GFLOP/s: 529 ms of PP-OCRv4 det's 603 at 640);
    one with overlapping windows keeps conv2d_transpose. Both against ORT."""
    up = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ConvTranspose2d(8, 6, kernel, stride=kernel),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1),
    )
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(up.eval(), (x,)).graph
    assert graph.op_counts()["ConvTranspose"] == 2
    text = tb.to_relax(graph).script(show_meta=False)
    assert text.count("R.nn.conv2d_transpose(") == 1 and text.count("R.nn.conv2d(") == 2
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()})


class _LearnableAffine(torch.nn.Module):
    """PP-LCNetV3's learnable affine block after a conv: a weight of shape (1,) times the map,
    plus a bias of shape (1,), the weight written first."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 1)
        self.scale, self.bias = (
            torch.nn.Parameter(torch.tensor([1.5])),
            torch.nn.Parameter(torch.tensor([0.25])),
        )

    def forward(self, x):
        return self.head(torch.nn.functional.hardswish(self.scale * self.conv(x) + self.bias))


def test_a_scalar_weight_keeps_the_map_in_the_blocked_layout():
    """The (1,)-shaped scale and bias become 0-d before ConvertLayout, which could not block a
    rank-1 tensor and took the map back to NCHW around them: no layout transform between the
    two convs, the affine ops in the first conv's kernel. Against ORT."""
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(_LearnableAffine().eval(), (x,)).graph
    assert {n.op for n in graph.nodes} >= {"Mul", "Add", "HardSwish"}
    target = tb.make_target("llvm", threads=1)
    kernels = tb.kernel_names(tb.fuse(tb.to_relax(graph), target))
    transforms = [k for k in kernels if "layout_transform" in k]
    assert len(transforms) == 2, kernels  # the input's and the output's, none between the convs
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()})


def test_a_token_map_times_a_weight_is_one_matmul():
    """A Linear on a channels-last map (ConvNeXt's MLP: (1, 7, 7, C) x (C, 4C)) lowers to one
    (49, C) matmul, not a batch of 7 matmuls of 7 rows that each streamed all the weights
    (ConvNeXt-T's last stage at 37 GFLOP/s, 190 as one matmul), and its bias and GELU stay in
    its kernel (the reshape back sinks past them: FuseOps does not fuse across a reshape).
    Against ORT."""

    class TokenMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.up = torch.nn.Conv2d(3, 32, 1), torch.nn.Linear(32, 128)

        def forward(self, x):
            return torch.nn.functional.gelu(self.up(self.conv(x).permute(0, 2, 3, 1)))

    x = torch.randn(1, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    graph = fuser.optimize(TokenMLP().eval(), (x,)).graph
    assert "MatMul" in graph.op_counts()
    text = tb.to_relax(graph).script(show_meta=False)
    assert 'R.Tensor((49, 128), dtype="float32") = R.matmul(' in text
    # the bias and GELU run in the matmul's kernel, the reshape back moved after them
    kernels = tb.kernel_names(tb.fuse(tb.to_relax(graph), tb.make_target("llvm", threads=1)))
    assert any(k.startswith("fused_matmul") and k.endswith("_gelu") for k in kernels), kernels
    check_graph_matches_ort(graph, {graph.inputs[0].name: x.numpy()})


@pytest.mark.parametrize(
    ("parts", "limits"),
    [
        ((16, 8), {16: 8, 8: 8, 24: 8}),  # DenseNet: blocks of 16 and 8 cannot be joined
        ((24, 24), {24: 8, 48: 8}),  # PP-OCRv4 det: the result read in the parts' block
        ((116, 116), {}),  # ShuffleNet: plain parts, left alone (its 1x1 convs stay matmuls)
    ],
)
def test_concat_block_limits(parts, limits):
    """Which channel counts a concat over channels caps, on AVX-512 (16 lanes): only where
    its parts' layouts would differ or be blocked."""
    from fuser.backends.tvm.layout import group_limits

    class Join(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.branches = torch.nn.ModuleList(torch.nn.Conv2d(3, c, 1) for c in parts)

        def forward(self, x):
            return torch.cat([b(x) for b in self.branches], 1)

    graph = fuser.optimize(Join().eval(), (torch.randn(1, 3, 8, 8),)).graph
    assert group_limits(tb.to_relax(graph), 16) == limits


def test_a_float64_pointwise_conv_without_a_block_builds():
    """A 1x1 conv to 21 channels (no block: DeepLab's classes) runs as a matmul whose weight
    constant kept float32 of a float64 model ("Binary operators must have the same
    datatype"). Against eager, in float64."""
    torch.manual_seed(0)
    module = (
        torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 21, 1)).double().eval()
    )
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    graph = fuser.optimize(module, (x,)).graph
    (got,) = native.run_graph(graph, {graph.inputs[0].name: x.numpy()})
    with torch.no_grad():
        assert got.dtype == np.float64 and rel_err(got, module(x).numpy()) <= 1e-9
