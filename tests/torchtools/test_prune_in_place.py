"""Pruning into the user's own module (fuser.prune_module): the same object with its layers
shrunk, state_dict keys unchanged, the same outputs as the graph path's pruned network on the
same weights, one training step with an optimizer made afterwards; refusals name the module
and leave it as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from util import HEAVY, rel_err
from zoo_cache import zoo_case

import fuser
from fuser.ir import FuserError
from fuser.models import names

TOL = 1e-5
RATIO = 0.4
# The two zoo models over 50 M parameters (VGG16 also runs at 224 only) run with FUSER_HEAVY=1;
# their layer kinds are covered by ResNet-50 and SqueezeNet in the default run.
HEAVY_ZOO = {"resnet152", "vgg16"}
ONLY_HEAVY = pytest.mark.skipif(not HEAVY, reason="FUSER_HEAVY=1: the zoo models over 50 M parameters")
REFUSED = {  # the graph path prunes these; the module's own forward() cannot hold the result
    # chunk(2) splits equal halves; the pruning does not keep them equal
    "shufflenet_v2_x1_0": r"module 'stage2\.1' \(ShuffleUnit, .*shufflenet\.py:\d+\) holds a fixed "
    "channel count",
    "yolov8n": r"module 'model\.2' \(C2f, .*yolov8\.py:\d+\) holds a fixed channel count",
}


def graph_path(graph, x, ratio=RATIO, **options):
    """The graph path's pruned network and its output on ``x``."""
    result = fuser.prune(graph, ratio=ratio, **options)
    with torch.no_grad():
        return result, fuser.to_torch(result.graph)(x)


def train_one_step(model: nn.Module, x: torch.Tensor, lr: float = 0.1) -> None:
    """One SGD step with an optimizer made after pruning (train mode, normalisation statistics
    frozen, batch 1 allows no more): every gradient has its parameter's new shape and the step
    is exactly p - lr * grad."""
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    loss = model(x).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert all(g.shape == before[k].shape for k, g in grads.items())
    assert sum(bool(g.any()) for g in grads.values()) > len(grads) // 2
    opt.step()
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k].add(grads[k], alpha=-lr)), k
    model.eval()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.heavy, ONLY_HEAVY]) if n in HEAVY_ZOO else n for n in names()]
)
def test_zoo_model_pruned_in_place_matches_graph_path(name):
    cached, x, graph = zoo_case(name)
    model = copy.deepcopy(cached)
    keys = list(model.state_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if name in REFUSED:
        with pytest.raises(FuserError, match=REFUSED[name]):
            fuser.prune_module(model, x, ratio=RATIO)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # restored
        return
    result, want = graph_path(graph, x)
    layers = {k: type(m) for k, m in model.named_modules()}
    assert fuser.prune(model, example_inputs=x, ratio=RATIO, in_place=True) is model
    assert {k: type(m) for k, m in model.named_modules()} == layers
    assert list(model.state_dict()) == keys
    assert sum(p.numel() for p in model.parameters()) == result.report.params_after
    assert result.report.params_after < result.report.params_before
    with torch.no_grad():
        assert rel_err(model(x).numpy(), want.numpy()) <= TOL
    report = model.fuser_prune_report
    assert report.tensors and report.attributes
    train_one_step(model, x)


class Layers(nn.Module):
    """Grouped and depthwise convs, BatchNorm1d/2d, LayerNorm, Linear on (N, C) and (N, L, C)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # multiplier 2
        self.pw = nn.Conv2d(32, 24, 1)
        self.norm = nn.LayerNorm(24)
        self.mix = nn.Linear(24, 20)
        self.fc = nn.Linear(20, 12)
        self.bn1d = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.pw(F.relu(self.depthwise(self.grouped(x)))))
        t = self.mix(self.norm(x.flatten(2).transpose(1, 2)))  # (N, L, C)
        return self.head(F.relu(self.bn1d(self.fc(t.mean(1)))))


def test_layer_kinds_shrink_with_their_attributes():
    torch.manual_seed(0)
    model = Layers().eval()
    x = torch.randn(2, 3, 8, 8)
    result, want = graph_path(model, x, 0.5, example_inputs=(x,))
    fuser.prune_module(model, x, ratio=0.5)
    with torch.no_grad():
        assert rel_err(model(x).numpy(), want.numpy()) <= TOL
    assert model.grouped.groups == 4 and model.grouped.in_channels == model.grouped.out_channels == 8
    assert model.grouped.weight.shape == (8, 2, 3, 3)  # the same in-group index left every group
    assert model.depthwise.groups == model.depthwise.in_channels == 8  # depthwise: group = C_in
    assert model.depthwise.out_channels == 16 and model.pw.in_channels == 16
    assert model.norm.normalized_shape == (12,) and model.mix.in_features == 12
    assert model.bn.num_features == 8 and model.bn.running_mean.shape == (8,)
    assert model.bn1d.num_features == model.fc.out_features == 6 and model.head.in_features == 6
    assert model.head.out_features == 5  # the output keeps its shape
    train_one_step(model, x)


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.embed(x)
        a, _ = self.attn(t, t, t, need_weights=False)
        return self.head((t + a).mean(1))


def test_multihead_attention_in_place():
    """Every head loses the same dims; MHA recomputes 1/sqrt(head_dim), so its query projection
    is rescaled and the logits stay the pruned network's."""
    torch.manual_seed(0)
    model = MHA().eval()
    x = torch.randn(2, 5, 8)
    result, want = graph_path(model, x, 0.5, example_inputs=(x,))
    fuser.prune_module(model, x, ratio=0.5)
    attn = model.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (8, 4, 2)
    assert attn.in_proj_weight.shape == (24, 8) and attn.out_proj.weight.shape == (8, 8)
    with torch.no_grad():
        assert rel_err(model(x).numpy(), want.numpy()) <= TOL
    train_one_step(model, x)


def test_vit_heads_in_place():
    """Whole heads go (heads=True, 3 heads at ratio 0.3 keep int(3 * 0.7) = 2): the attention
    modules' num_heads attribute follows."""
    cached, x, graph = zoo_case("vit_tiny_patch16_224")
    model = copy.deepcopy(cached)
    result, want = graph_path(graph, x, 0.3, heads=True)
    fuser.prune_module(model, x, ratio=0.3, heads=True)
    for block in model.blocks:
        assert (block.attn.num_heads, block.attn.head_dim) == (2, 64)
        assert block.attn.qkv.out_features == 3 * 2 * 64
    changed = {(m, a) for m, a, _, _ in model.fuser_prune_report.attributes}
    assert ("blocks.0.attn", "num_heads") in changed
    with torch.no_grad():
        assert rel_err(model(x).numpy(), want.numpy()) <= TOL


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1)
        self.block = FixedView()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(self.conv(x)))


class FixedView(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], 16, -1).mean(-1)  # 16 written down: the channel count is fixed


@torch.library.custom_op("fuser_test::scale", mutates_args=())
def custom_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@custom_scale.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(HardCoded):
    def __init__(self):
        super().__init__()
        self.block = CustomBlock()


class CustomBlock(nn.Module):
    def forward(self, x):
        return custom_scale(x).mean((2, 3))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            HardCoded,
            r"module 'block' \(FixedView, .*test_prune_in_place\.py:\d+\) holds a fixed channel count",
        ),
        (WithCustomOp, r"no direct converter for fuser_test\.scale.* in module 'block'"),
    ],
    ids=["hard_coded_channels", "custom_op"],
)
def test_refusals_name_the_module_and_leave_it_unchanged(make, message):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 4, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FuserError, match=message):
        fuser.prune_module(model, x, ratio=0.5)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.conv.out_channels == 16 and model.head.in_features == 16


def test_in_place_needs_a_module_and_inputs():
    with pytest.raises(FuserError, match="nn.Module and its example_inputs"):
        fuser.prune("zoo:resnet18", ratio=0.5, in_place=True)


# ---- obs: the compensated weights and biases go into the module -------------------------------
class ConvBN(nn.Module):
    """Conv-BN-ReLU-Conv: obs compensates ``c2`` (new weights and bias) though its outputs stay."""

    def __init__(self, bias: bool):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 4, 3, padding=1, bias=bias)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x))))


class Residual(nn.Module):
    """A small ResNet: stem, one basic block with its skip, a downsampling block with a 1x1
    projection, a bias-free Linear head (obs adds it a bias)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.b1 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.proj = nn.Sequential(nn.Conv2d(16, 24, 1, 2, bias=False), nn.BatchNorm2d(24))
        self.head = nn.Linear(24, 5, bias=False)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.proj(x) + self.b2(self.b1(x)))
        return self.head(x.mean((2, 3)))


def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms (obs reads them as the data's moments)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize(
    "make",
    [lambda: ConvBN(True), lambda: ConvBN(False), Residual],
    ids=["conv_bn", "conv_bn_no_bias", "residual"],
)
def test_obs_in_place_takes_the_compensated_weights(make):
    torch.manual_seed(0)
    model = make().eval()
    _randomize_norms(model)
    x = torch.randn(2, 3, 8, 8)
    cls, layers = type(model), {k: type(m) for k, m in model.named_modules()}
    result, want = graph_path(model, x, 0.5, criterion="obs", example_inputs=(x,))
    assert fuser.prune_module(model, x, 0.5, "obs") is model
    assert type(model) is cls and {k: type(m) for k, m in model.named_modules()} == layers
    with torch.no_grad():
        assert rel_err(model(x).numpy(), want.numpy()) <= 1e-4
    assert model.fuser_prune_report.tensors
    if isinstance(model, ConvBN):
        assert model.c2.in_channels == 8 and model.c2.bias is not None  # made for the compensation
    else:
        assert model.head.in_features == 12 and model.head.bias is not None
        assert ("head.bias", (), (5,)) in model.fuser_prune_report.tensors
    train_one_step(model, x)


class FunctionalConv(nn.Module):
    """The second conv is F.conv2d on a bare weight: no bias parameter for obs to fill."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.w2 = nn.Parameter(torch.randn(4, 16, 3, 3) * 0.1)

    def forward(self, x):
        return F.conv2d(F.relu(self.c1(x)), self.w2, padding=1)


def test_obs_in_place_refuses_a_bias_it_cannot_hold():
    torch.manual_seed(0)
    model = FunctionalConv().eval()
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FuserError, match=r"criterion 'obs' adds a bias to Conv .*no bias parameter"):
        fuser.prune_module(model, x, 0.5, "obs")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.c1.out_channels == 16


class CalledTwice(nn.Module):
    """One conv module applied twice in forward(): its weight is shared by two graph nodes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.head(F.relu(self.shared(F.relu(self.shared(x)))))


def test_a_module_called_twice_shrinks_once():
    """Both calls of the shared conv lose the same channels, so the module shrinks once and
    matches the graph path's network (which keeps one weight for both calls); it trains."""
    torch.manual_seed(0)
    model = CalledTwice().eval()
    x = torch.randn(1, 3, 8, 8)
    result, want = graph_path(model, x, 0.5, example_inputs=(x,))
    fuser.prune_module(model, x, ratio=0.5)
    assert model.stem.out_channels == model.shared.in_channels == model.shared.out_channels == 4
    assert sum(p.numel() for p in model.parameters()) == result.report.params_after == 112 + 148 + 20
    with torch.no_grad():
        assert rel_err(model(x).numpy(), want.numpy()) <= TOL
    train_one_step(model, x)
