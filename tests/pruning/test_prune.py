"""Structured pruning (fuser.pruning): coupled groups stay consistent, pruning channels that
contribute nothing changes no output, ratio 0 changes nothing, outputs run in ONNX Runtime
and as trainable torch modules; criteria, options and the blocked-op report."""

import numpy as np
import pytest
import torch
from util import ort_run, ort_run_graph, random_input, rel_err
from zoo_cache import zoo_case

import fuser
from fuser import prune
from fuser.analysis.shapes import infer_shapes
from fuser.ir import FuserError, Graph
from fuser.pruning import analyze_dependencies
from fuser.pruning.pruner import materialize_weight_views, random_channels


# ---- helpers (shared with test_prune_models.py and test_prune_cli.py) ----------------------
class Net:
    """A small IR graph built op by op, seeded weights: ``n.conv(x, 8)`` etc."""

    def __init__(self, shape=(1, 4, 8, 8), seed=0):
        self.g = Graph("net")
        self.rng = np.random.default_rng(seed)
        self.x = self.g.add_input("x", shape)

    def w(self, *shape):
        fan_in = int(np.prod(shape[1:])) or 1
        return self.g.const((self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))

    def op(self, op, *inputs, **attrs):
        return self.g.add_node(op, list(inputs), attrs=attrs).output

    def conv(self, x, c_out, c_in, k=3, group=1, bias=True):
        ins = [x, self.w(c_out, c_in // group, k, k)] + ([self.w(c_out)] if bias else [])
        return self.op("Conv", *ins, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    def bn(self, x, c):
        return self.op(
            "BatchNormalization",
            x,
            self.w(c),
            self.w(c),
            self.w(c),
            self.g.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32)),
        )

    def done(self, *outputs):
        self.g.outputs = list(outputs)
        return infer_shapes(self.g)


def ort_out(graph, x):
    graph = fuser.to_graph(graph)
    return ort_run_graph(graph, {graph.inputs[0].name: x})[0]


def zero_channels(graph, ratio, seed=0, heads=False):
    """A copy of ``graph`` in which, per prunable group, the channels a per-group ``ratio``
    removes (chosen at random) have every weight slice zero: they contribute nothing, so a
    magnitude criterion must pick exactly them."""
    graph = graph.copy()
    materialize_weight_views(graph)
    analysis = analyze_dependencies(graph, heads=heads)
    zero = random_channels(analysis, ratio, seed)
    arrays = {}
    for m in analysis.members:
        if m.role == "stat":  # BN's running variance must stay positive
            continue
        v = m.value
        a = arrays.setdefault(id(v), (v, v.const.copy()))[1]
        hit = np.isin(analysis.root_of[m.ids], list(zero))
        index = [slice(None)] * a.ndim
        index[m.axis] = hit
        a[tuple(index)] = 0
    for v, a in arrays.values():
        v.const = a
    return graph


def assert_prunes_exactly(graph, ratio=0.5, x=None, tol=1e-5, **options):
    """Removing channels whose contribution is exactly zero leaves the outputs allclose."""
    zeroed = zero_channels(graph, ratio, heads=options.get("heads", False))
    pruned = prune(zeroed, ratio, "l2", **options)
    assert pruned.report.channels_removed > 0
    x = random_input(graph.inputs[0].shape) if x is None else x
    want, got = ort_out(zeroed, x), ort_out(pruned, x)
    assert got.shape == want.shape
    assert rel_err(got, want) <= tol
    return pruned


def member_weights(original, pruned, member):
    """(original constant, the pruned graph's constant) for a member."""
    name = member.node.name
    return (
        original.node_by_name(name).inputs[member.index].const,
        pruned.graph.node_by_name(name).inputs[member.index].const,
    )


# ---- ratio 0 and exact removal -------------------------------------------------------------
def test_ratio_zero_is_bit_identical():
    _, x, graph = zoo_case("resnet18")
    pruned = prune(graph, 0.0)
    assert pruned.report.channels_removed == 0
    before = {v.name: v.const for v in graph.constants()}
    after = {v.name: v.const for v in pruned.graph.constants()}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert np.array_equal(ort_out(pruned, x.numpy()), ort_out(graph, x.numpy()))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0"])
def test_zero_contribution_channels_prune_exactly(name):
    """Residual adds, depthwise convs, channel shuffle with split/concat, squeeze-excite."""
    _, x, graph = zoo_case(name)
    assert_prunes_exactly(graph, 0.5, x.numpy())


def test_concat_with_itself():
    n = Net()
    a = n.op("Relu", n.conv(n.x, 8, 4))
    cat = n.op("Concat", a, a, axis=1)
    y = n.conv(cat, 6, 16)
    graph = n.done(y)
    pruned = assert_prunes_exactly(graph)
    report = pruned.report
    (inner,) = [m for m in report.analysis.members if m.role == "in" and len(m.ids) == 16]
    kept = report.kept_positions(inner)
    first, second = kept[kept < 8], kept[kept >= 8] - 8
    assert len(first) == 4 and np.array_equal(first, second)  # same channels from both copies
    w, w_pruned = member_weights(graph, pruned, inner)
    assert np.array_equal(w_pruned, w[:, kept])


def test_split_then_concat_offsets():
    n = Net()
    a = n.op("Relu", n.conv(n.x, 8, 4))
    lo, hi = n.g.add_node("Split", [a, n.g.const(np.array([3, 5]))], 2, {"axis": 1}).outputs
    y = n.conv(n.op("Concat", hi, lo, axis=1), 6, 8)  # channels reordered: 3..7, 0..2
    graph = n.done(y)
    pruned = assert_prunes_exactly(graph)
    report = pruned.report
    (producer,) = [
        m
        for m in report.analysis.members
        if m.role == "out"
        and m.index == 1
        and len(m.ids) == 8
        and m.node.name == a.producer.inputs[0].producer.name
    ]
    (consumer,) = [m for m in report.analysis.members if m.role == "in"]
    kept_out = report.kept_positions(producer)
    want = np.concatenate([kept_out[kept_out >= 3] - 3, kept_out[kept_out < 3] + 5])
    assert np.array_equal(report.kept_positions(consumer), np.sort(want))
    split = next(nd for nd in pruned.graph.nodes if nd.op == "Split")
    assert split.inputs[1].const.tolist() == [int((kept_out < 3).sum()), int((kept_out >= 3).sum())]


def test_grouped_conv_keeps_groups_equal():
    n = Net(shape=(1, 8, 8, 8))
    a = n.op("Relu", n.conv(n.x, 12, 8))
    b = n.op("Relu", n.conv(a, 12, 12, group=3))  # 3 groups of 4 in, 4 out
    graph = n.done(n.conv(b, 5, 12))
    pruned = assert_prunes_exactly(graph)
    grouped = next(nd for nd in pruned.graph.nodes if nd.op == "Conv" and nd.attr("group") == 3)
    assert grouped.inputs[1].shape == (6, 2, 3, 3)  # 2 in, 2 out per group


def test_flatten_into_gemm_prunes_feature_blocks():
    n = Net()
    a = n.op("Relu", n.conv(n.x, 6, 4))
    flat = n.op("Flatten", a, axis=1)  # channel c -> features [64c, 64c + 64)
    graph = n.done(n.op("Gemm", flat, n.w(10, 6 * 64), n.w(10), transB=1))
    pruned = assert_prunes_exactly(graph)
    gemm = next(nd for nd in pruned.graph.nodes if nd.op == "Gemm")
    assert gemm.inputs[1].shape == (10, 3 * 64)


def attention_net(seed=0):
    """A transformer block without LayerNorm (so zero channels stay exactly zero):
    qkv -> [B,T,3,H,D] -> heads -> softmax(q·kᵀ)·v -> proj, + residual, MLP."""
    n = Net(shape=(1, 5, 12), seed=seed)
    heads, dim = 2, 12
    qkv = n.op("Add", n.op("MatMul", n.x, n.w(dim, 3 * dim)), n.w(3 * dim))
    qkv = n.op("Reshape", qkv, n.g.const(np.array([1, 5, 3, heads, dim // heads])))
    qkv = n.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])
    q, k, v = (n.op("Gather", qkv, n.g.const(np.array(i)), axis=0) for i in range(3))
    scores = n.op(
        "MatMul", n.op("Mul", q, n.g.const(np.float32(0.4))), n.op("Transpose", k, perm=[0, 1, 3, 2])
    )
    ctx = n.op("MatMul", n.op("Softmax", scores, axis=-1), v)
    ctx = n.op("Reshape", n.op("Transpose", ctx, perm=[0, 2, 1, 3]), n.g.const(np.array([1, 5, dim])))
    h = n.op("Add", n.x, n.op("MatMul", ctx, n.w(dim, dim)))
    mlp = n.op("MatMul", n.op("Relu", n.op("MatMul", h, n.w(dim, 24))), n.w(24, dim))
    return n.done(n.op("Add", h, mlp))


@pytest.mark.parametrize("heads", [False, True], ids=["head_dim", "whole_heads"])
def test_attention_heads_stay_aligned(heads):
    graph = attention_net()
    pruned = assert_prunes_exactly(graph, 0.5, heads=heads)
    reshape = next(nd for nd in pruned.graph.nodes if nd.op == "Reshape")
    assert reshape.inputs[1].const.tolist() == ([1, 5, 3, 1, 6] if heads else [1, 5, 3, 2, 3])
    assert pruned.graph.outputs[0].shape == (1, 5, 12)  # the residual stream is a graph output


def test_groupnorm_keeps_groups_equal_and_matches_torch():
    """torch exports GroupNorm as Reshape [N,g,c·HW] -> InstanceNorm -> Reshape back: the
    same in-group channels go from every group, and the result is nn.GroupNorm on them."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    pruned = prune(fuser.from_torch(net, (x,)), 0.5)
    (group,) = [g for g in pruned.report.groups if g.kept < g.channels]
    assert (group.channels, group.kept) == (4, 2)  # an in-group index, for both groups
    kept = [c for c in range(8) if c % 4 not in group.removed]
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        for dst, src in ((small[0], net[0]), (small[1], net[1])):
            dst.weight.copy_(src.weight[kept])
            dst.bias.copy_(src.bias[kept])
        small[3].weight.copy_(net[3].weight[:, kept])
        small[3].bias.copy_(net[3].bias)
        want = small(x).numpy()
    assert rel_err(ort_out(pruned, x.numpy()), want) <= 1e-5


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_residual_groups_lose_the_same_channels(name):
    """Every member of a residual group (convs, BNs, the next blocks' inputs) keeps the same
    channel indices, and each pruned conv weight is the original at the kept rows/columns."""
    _, _, graph = zoo_case(name)
    pruned = prune(graph, 0.5)
    report = pruned.report
    residual = [g for g in report.analysis.prunable_groups if len(g.sources) > 1]
    assert residual
    for g in residual:
        one_to_one = [m for m in g.members if len(m.ids) == g.size]
        assert len(one_to_one) >= 2 * len(g.sources)  # producers and consumers
        kept = {tuple(report.kept_positions(m)) for m in one_to_one}
        assert len(kept) == 1 and len(next(iter(kept))) == g.size // 2
        for m in g.members:
            if m.role == "out" and m.node.op == "Conv":
                w, w_pruned = member_weights(graph, pruned, m)
                rows = np.take(w, report.kept_positions(m), axis=0)
                ins = [
                    i for i in report.analysis.members if i.node is m.node and i.index == 1 and i.axis == 1
                ]
                if ins:
                    rows = np.take(rows, report.kept_positions(ins[0]), axis=1)
                assert np.array_equal(rows, w_pruned)


# ---- outputs -------------------------------------------------------------------------------
def test_pruned_torch_module_trains_and_matches_ort():
    _, x, graph = zoo_case("resnet18")
    pruned = prune(graph, 0.5)
    module = fuser.to_torch(pruned)
    with torch.no_grad():
        got = module(x).numpy()
    assert rel_err(got, ort_out(pruned, x.numpy())) <= 1e-4
    params = [p for p in module.parameters()]
    assert sum(p.numel() for p in params) == pruned.report.params_after
    loss = module(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in params if p.requires_grad)


def test_prune_torch_module_returns_graph():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    pruned = prune(net, 0.5, example_inputs=(torch.randn(1, 3, 8, 8),))
    assert isinstance(pruned.graph, Graph)
    assert [n.inputs[1].shape[0] for n in pruned.graph.nodes if n.op == "Conv"] == [4, 4]


def test_raw_and_optimized_ir_prune_alike():
    """BN present (its four vectors pruned with the conv) or folded: the same sizes result."""
    _, x, graph = zoo_case("resnet18")
    raw = prune(graph, 0.5)
    folded = prune(fuser.optimize(graph).graph, 0.5)
    assert raw.report.macs_after == folded.report.macs_after
    assert [g.kept for g in raw.report.groups] == [g.kept for g in folded.report.groups]
    assert "BatchNormalization" in raw.graph.op_counts()
    assert "BatchNormalization" not in folded.graph.op_counts()
    assert ort_out(raw, x.numpy()).shape == ort_out(folded, x.numpy()).shape == (1, 1000)


# ---- criteria and options ------------------------------------------------------------------
def _small_cnn(seed=0):
    n = Net(shape=(1, 3, 8, 8), seed=seed)
    a = n.op("Relu", n.bn(n.conv(n.x, 16, 3, bias=False), 16))
    b = n.op("Relu", n.bn(n.conv(a, 16, 16, bias=False), 16))
    gap = n.op("GlobalAveragePool", n.op("Add", a, b))
    return n.done(n.op("Gemm", n.op("Flatten", gap, axis=1), n.w(5, 16), n.w(5), transB=1))


@pytest.mark.parametrize("criterion", ["l1", "l2", "obs", "taylor"])
def test_criteria_are_deterministic(criterion):
    graph = _small_cnn()
    data = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    kw = {"data": data} if criterion == "taylor" else {}
    a, b = (
        prune(graph, 0.5, criterion, **kw).to_onnx().SerializeToString(deterministic=True) for _ in range(2)
    )
    assert a == b


def test_taylor_uses_gradients_on_data():
    """Channels with zero weights have |w·dL/dw| = 0: Taylor removes exactly them."""
    graph = zero_channels(_small_cnn(), 0.5)
    data = (np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32), np.array([0, 1, 2, 3]))
    pruned = prune(graph, 0.5, "taylor", data=data)
    assert pruned.report.channels_removed == 8  # conv1 + conv2 tied by the residual add: 16
    x = random_input(graph.inputs[0].shape)
    assert rel_err(ort_out(pruned, x), ort_out(graph, x)) <= 1e-5
    with pytest.raises(FuserError, match="needs data"):
        prune(graph, 0.5, "taylor")


def test_obs_compensation_beats_magnitude_when_bn_statistics_are_the_data():
    """Data-free obs uses BN running statistics as the data's: where they are (BN
    calibrated on the data), its compensated model is closer to the original than l2's."""
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for c_in, c_out, k in ((3, 24, 3), (24, 32, 3), (32, 16, 1)):
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Conv2d(16, 10, 1))
    data = torch.randn(32, 3, 12, 12)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the exact statistics of ``data``
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
    net.train()
    with torch.no_grad():
        net(data)
    graph = fuser.from_torch(net.eval(), (data[:1],))
    with torch.no_grad():
        want = [net(data[i : i + 1]).numpy() for i in range(8)]

    def error(criterion):
        pruned = prune(graph, 0.5, criterion)
        return np.mean(
            [
                np.linalg.norm(ort_out(pruned, data[i : i + 1].numpy()) - w) / np.linalg.norm(w)
                for i, w in enumerate(want)
            ]
        )

    assert error("obs") < 0.8 * error("l2")


def test_global_pruning_and_round_to():
    _, _, graph = zoo_case("resnet18")
    pruned = prune(graph, 0.5, global_pruning=True, round_to=8)
    groups = [g for g in pruned.report.groups if g.prunable]
    assert all(g.kept % 8 == 0 and g.kept >= 8 for g in groups)
    removed = sum(g.channels - g.kept for g in groups)
    total = sum(g.channels for g in groups)
    assert 0.45 * total <= removed <= 0.5 * total
    assert len({g.kept / g.channels for g in groups}) > 1  # not the same ratio everywhere


def test_ignored_and_layer_ratios():
    _, _, graph = zoo_case("resnet18")
    pruned = prune(graph, 0.5, ignored=["layer4.0.conv1"], layer_ratios={"layer3.*": 0.25})
    by_layer = {g.layers[0]: g for g in pruned.report.groups}
    assert by_layer["layer4.0.conv1"].kept == 512 and not by_layer["layer4.0.conv1"].prunable
    assert by_layer["layer3.0.conv1"].kept == 192
    assert by_layer["layer2.0.conv1"].kept == 64


def test_unknown_op_blocks_and_is_reported():
    n = Net()
    a = n.op("Relu", n.conv(n.x, 8, 4))
    d2s = n.op("DepthToSpace", a, blocksize=2)  # mixes channels into space: no rule prunes it
    b = n.op("Relu", n.conv(a, 8, 8))
    graph = n.done(n.conv(b, 4, 8), d2s)
    pruned = prune(graph, 0.5)
    blocked = pruned.report.blocked
    assert [(b.node, b.op) for b in blocked] == [(d2s.producer.name, "DepthToSpace")]
    kept = {g.sources[0]: g.kept for g in pruned.report.groups}
    assert kept[a.producer.inputs[0].producer.name] == 8  # frozen by the blocked op
    assert kept[b.producer.inputs[0].producer.name] == 4  # the rest still prunes
    x = random_input(graph.inputs[0].shape)
    assert [o.shape for o in ort_run(fuser.to_onnx(pruned), {"x": x})] == [(1, 4, 8, 8), (1, 2, 16, 16)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ratio": 1.0}, "must be in"),
        ({"criterion": "l3"}, "choose one of"),
        ({"round_to": 0}, "positive integer"),
        ({"group_reduction": "median"}, "choose one of"),
    ],
)
def test_bad_options_raise_one_line(kwargs, match):
    args = {"ratio": 0.5, **kwargs}
    with pytest.raises(FuserError, match=match) as e:
        prune(_small_cnn(), **args)
    assert "\n" not in str(e.value)


def test_obs_scores_channels_a_conv_transpose_reads():
    """Conv -> ReLU -> ConvTranspose (stride 2) -> ReLU -> Conv with half the middle channels
    zero in every weight: obs removes exactly them (it scored no channel a ConvTranspose reads,
    kept dead ones and removed live ones: output changed by 0.77)."""
    n = Net(shape=(1, 3, 8, 8), seed=2)
    a = n.op("Relu", n.conv(n.x, 16, 3))
    t = n.op("Relu", n.op("ConvTranspose", a, n.w(16, 16, 2, 2), n.w(16), strides=[2, 2]))
    graph = zero_channels(n.done(n.conv(t, 4, 16)), 0.5)
    pruned = prune(graph, 0.5, "obs", round_to=1)
    assert pruned.report.channels_removed == 8 + 8
    x = random_input(graph.inputs[0].shape)
    assert rel_err(ort_out(pruned, x), ort_out(graph, x)) <= 1e-5


def test_a_pattern_that_names_no_layer_is_refused():
    """layer_ratios={'layr1': ...} or ignored=['layer9.conv'] pruned as if not given."""
    _, _, graph = zoo_case("resnet18")
    with pytest.raises(FuserError, match="layer_ratios pattern 'layr1' matches no node"):
        prune(graph, 0.5, layer_ratios={"layr1": 0.1})
    with pytest.raises(FuserError, match="ignored pattern 'layer9.conv' matches no node; nodes are named"):
        prune(graph, 0.5, ignored=["layer9.conv"])
    kept = prune(graph, 0.5, ignored=["layer1.*"], layer_ratios={"layer2": 0.1})
    assert kept.report.channels_removed > 0


def test_a_weight_two_convs_share_stays_one_constant():
    """A conv called twice (one weight and bias for both calls): the two calls lose the same
    channels, so the pruned graph keeps one weight and one bias for them (untied, it held two
    copies and counted both); its input channels, which the first call reads from the stem
    and the second from the first call, join them in one group. Outputs against the zeroed
    graph; parameters against a hand count."""
    n = Net(shape=(1, 3, 8, 8), seed=3)
    w, b = n.w(8, 8, 3, 3), n.w(8)
    a = n.op("Relu", n.conv(n.x, 8, 3))

    def shared(x):
        return n.op("Relu", n.op("Conv", x, w, b, kernel_shape=[3, 3], pads=[1] * 4))

    graph = n.done(n.conv(shared(shared(a)), 4, 8, k=1))
    analysis = analyze_dependencies(graph)
    assert len(analysis.prunable_groups) == 1  # stem + both calls: 8 channels
    pruned = assert_prunes_exactly(graph, 0.5)
    convs = [node for node in pruned.graph.nodes if node.op == "Conv"]
    assert convs[1].inputs[1] is convs[2].inputs[1] and convs[1].inputs[2] is convs[2].inputs[2]
    assert convs[1].inputs[1].shape == (4, 4, 3, 3)
    # stem 4x3x3x3 + 4, shared 4x4x3x3 + 4 once, head 4x4x1x1 + 4
    assert pruned.report.params_after == (108 + 4) + (144 + 4) + (16 + 4)
