"""ConvBN Tune mode (fuser.convbn): parity with Eval mode, the no-fold cases, Deploy folding."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.fx as fx
from torch import nn

from fuser.ir import FuserError
from fuser.torchtools.convbn import ConvBN, convbn, tune_mode

TOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, b the reference."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running stats, gamma and beta, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                    m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=g))
                    m.num_batches_tracked.fill_(7)
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


class Pair(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module, **conv_kwargs):
        super().__init__()
        self.conv, self.bn, self.conv_kwargs = conv, bn, conv_kwargs

    def forward(self, x):
        return self.bn(self.conv(x, **self.conv_kwargs))


# (conv, bn, input shape[, extra conv call kwargs])
CASES = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), lambda: nn.BatchNorm1d(6), (2, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), lambda: nn.BatchNorm2d(6), (2, 4, 9, 9)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, groups=2), lambda: nn.BatchNorm2d(6), (2, 4, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(4, 6, 3), lambda: nn.BatchNorm3d(6), (2, 4, 5, 5, 5)),
    "convT1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2), lambda: nn.BatchNorm1d(6), (2, 4, 7)),
    "convT2d_groups": (
        lambda: nn.ConvTranspose2d(4, 6, 3, groups=2),
        lambda: nn.BatchNorm2d(6),
        (2, 4, 5, 5),
    ),
    "convT3d_groups": (
        lambda: nn.ConvTranspose3d(6, 9, 2, stride=2, groups=3),
        lambda: nn.BatchNorm3d(9),
        (2, 6, 3, 3, 3),
    ),
    "linear": (lambda: nn.Linear(5, 6), lambda: nn.BatchNorm1d(6), (3, 5)),
    "conv2d_nobias": (lambda: nn.Conv2d(4, 6, 3, bias=False), lambda: nn.BatchNorm2d(6), (2, 4, 7, 7)),
    "convT2d_groups_nobias_noaffine": (
        lambda: nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False),
        lambda: nn.BatchNorm2d(6, affine=False),
        (2, 4, 5, 5),
    ),
    "bn_noaffine": (lambda: nn.Conv2d(4, 6, 1), lambda: nn.BatchNorm2d(6, affine=False), (2, 4, 5, 5)),
    "conv2d_reflect": (
        lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        lambda: nn.BatchNorm2d(6),
        (2, 4, 6, 6),
    ),
    "convT2d_output_size": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
        lambda: nn.BatchNorm2d(6),
        (2, 4, 5, 5),
        {"output_size": [12, 12]},
    ),
}


def make_case(name: str, seed: int = 0):
    conv, bn, shape, *kwargs = CASES[name]
    torch.manual_seed(seed)
    model = randomize_bn(Pair(conv(), bn(), **(kwargs[0] if kwargs else {})), seed).eval()
    return model, torch.randn(shape)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradient_parity(case):
    model, x = make_case(case)
    ref = copy.deepcopy(model)
    tuned = tune_mode(model)
    assert tuned.fuser_convbn_pairs == 1
    assert params(tuned).keys() == params(model).keys()
    assert all(p is params(model)[k] for k, p in params(tuned).items())  # shared, not copied
    assert list(tuned.state_dict()) == list(model.state_dict())

    assert_same_forward_and_gradients(ref, tuned, x)


def assert_same_forward_and_gradients(ref: nn.Module, tuned: nn.Module, x: torch.Tensor) -> None:
    """Outputs, input gradients and every parameter's gradient agree (conv W, b and BN gamma,
    beta, those that exist)."""
    x_ref, x_tune = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_tune = ref(x_ref), tuned(x_tune)
    assert rel(y_tune, y_ref) <= TOL
    grad_out = torch.randn_like(y_ref)
    y_ref.backward(grad_out)
    y_tune.backward(grad_out)
    assert rel(x_tune.grad, x_ref.grad) <= TOL
    ref_params = params(ref)
    for k, p in params(tuned).items():
        assert rel(p.grad, ref_params[k].grad) <= TOL, k


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, groups=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )
    ).eval()


def test_sgd_steps_stay_in_parity_and_stats_are_frozen():
    model = small_cnn()
    ref = copy.deepcopy(model)
    tuned = tune_mode(model)
    assert tuned.fuser_convbn_pairs == 2
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt_tune = torch.optim.SGD(tuned.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    for _ in range(3):
        x, target = torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4,))
        losses = []
        for net, opt in ((ref, opt_ref), (tuned, opt_tune)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        assert rel(losses[1], losses[0]) <= TOL
        for (k, p), q in zip(model.named_parameters(), ref.parameters()):
            assert rel(p, q) <= TOL, k
    weight = dict(model.named_parameters())["0.weight"]
    assert rel(weight, small_cnn()[0].weight) > 1e-3  # the steps really changed the weights
    for k, v in model.named_buffers():  # running stats and num_batches_tracked untouched
        assert torch.equal(v, buffers[k]), k


def test_bn_switched_to_train_at_run_time():
    model = small_cnn()
    ref = copy.deepcopy(model).train()
    tuned = tune_mode(model).train()
    x = torch.randn(4, 3, 12, 12)
    for _ in range(2):
        assert rel(tuned(x), ref(x)) <= TOL
    for (k, v), w in zip(model.named_buffers(), ref.buffers()):
        assert torch.allclose(v, w, rtol=TOL, atol=1e-7), k
    assert int(model[1].num_batches_tracked) == 9
    tuned.eval()  # and back: tune mode again, with the updated statistics
    assert rel(tuned(x), ref.eval()(x)) <= TOL


class OtherUserOfConvOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ConvCalledTwice(OtherUserOfConvOutput):
    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class TwoBNs(OtherUserOfConvOutput):
    def __init__(self, same: bool):
        super().__init__()
        self.bn2 = self.bn if same else nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn2(self.bn(self.conv(x)))


class NoRunningStats(OtherUserOfConvOutput):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3, track_running_stats=False)


class LinearOn3D(nn.Module):  # BatchNorm1d normalises dim 1 (6 rows), Linear's outputs are dim 2
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(5, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(x))


@pytest.mark.parametrize(
    "make, pairs, shape",
    [
        (OtherUserOfConvOutput, 0, (2, 3, 6, 6)),
        (NoRunningStats, 0, (2, 3, 6, 6)),
        (ConvCalledTwice, 1, (2, 3, 6, 6)),
        (lambda: TwoBNs(same=False), 1, (2, 3, 6, 6)),
        (lambda: TwoBNs(same=True), 1, (2, 3, 6, 6)),
        (LinearOn3D, 1, (2, 6, 5)),  # combined in the graph, but runs as bn(fc(x)) for 3-D input
    ],
    ids=[
        "conv_output_reused",
        "no_running_stats",
        "conv_called_twice",
        "bn_bn",
        "same_bn_twice",
        "linear_3d_input",
    ],
)
def test_cases_that_do_not_fold(make, pairs, shape):
    torch.manual_seed(0)
    model = randomize_bn(make()).eval()
    ref = copy.deepcopy(model)
    tuned = tune_mode(model)
    assert tuned.fuser_convbn_pairs == pairs
    x = torch.randn(shape)
    assert rel(tuned(x), ref(x)) <= TOL
    if make is not LinearOn3D:  # deploy has no run-time check; see the fuser.convbn docstring
        assert rel(convbn(model, "deploy")(x), ref(x)) <= TOL
    called = [n.target for n in tuned.graph.nodes if n.op == "call_module"]
    if make is ConvCalledTwice:
        assert called == ["conv"]  # the other call site still runs the plain conv
    if pairs == 0:
        assert len(called) == len([n for n in fx.symbolic_trace(model).graph.nodes if n.op == "call_module"])


def test_eager_convbn_module():
    model, x = make_case("conv2d")
    block = ConvBN(model.conv, model.bn)
    assert rel(block(x), model(x)) <= TOL
    assert block.conv is model.conv and block.bn is model.bn


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            x = -x
        return self.bn(self.conv(x))


@pytest.mark.parametrize("mode", ["tune", "deploy"])
def test_untraceable_module_raises_fuser_error(mode):
    with pytest.raises(FuserError, match=r"Untraceable.*symbolic_trace.*control flow"):
        convbn(Untraceable(), mode)


def test_unknown_mode():
    with pytest.raises(FuserError, match="unknown mode"):
        convbn(small_cnn(), "fast")


def test_graphmodule_input():
    model = small_cnn()
    gm = fx.symbolic_trace(model)
    before = str(gm.graph)
    tuned = tune_mode(gm)
    assert tuned.fuser_convbn_pairs == 2
    assert str(gm.graph) == before  # the caller's graph is left alone
    x = torch.randn(2, 3, 12, 12)
    assert rel(tuned(x), model(x)) <= TOL
    assert tune_mode(tuned).fuser_convbn_pairs == 0  # idempotent


def test_exported_program_input():
    model = small_cnn()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 12, 12)
    ep = torch.export.export(model, (x,))
    tuned = tune_mode(ep)
    assert tuned.fuser_convbn_pairs == 2
    x_ref, x_tune = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_tune = ref(x_ref), tuned(x_tune)
    assert rel(y_tune, y_ref) <= TOL
    y_ref.sum().backward()
    y_tune.sum().backward()
    assert rel(x_tune.grad, x_ref.grad) <= TOL
    for (k, p), q in zip(tuned.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) <= TOL, k
    deployed = convbn(ep, "deploy")
    assert deployed.fuser_convbn_pairs == 2
    assert rel(deployed(x), ref(x)) <= TOL
    assert not any("running" in k for k in deployed.state_dict())


@pytest.mark.parametrize("case", ["convT2d_groups_nobias_noaffine", "linear"])
@pytest.mark.filterwarnings("ignore::fuser.torchtools.convbn.TuneModeWarning")  # tiny export batch
def test_exported_program_layer_kinds(case):
    model, x = make_case(case)
    ep = torch.export.export(copy.deepcopy(model), (x,))
    for mode in ("tune", "deploy"):
        converted = convbn(ep, mode)
        assert converted.fuser_convbn_pairs == 1, mode
        assert rel(converted(x), model(x)) <= TOL, mode


def test_deepcopy_and_pickle_of_tuned_module(tmp_path):
    model = small_cnn()
    tuned = tune_mode(model)
    x = torch.randn(2, 3, 12, 12)
    path = tmp_path / "tuned.pt"
    torch.save(tuned, path)
    for clone in (copy.deepcopy(tuned), torch.load(path, weights_only=False)):
        assert list(clone.state_dict()) == list(model.state_dict())
        assert rel(clone(x), model(x)) <= TOL
    assert fx.symbolic_trace(tuned).graph is not None  # re-capture keeps tune_conv_bn as one node


@pytest.mark.parametrize("case", sorted(CASES))
def test_deploy_matches_eval(case):
    model, x = make_case(case)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = convbn(model, "deploy")
    assert deployed.fuser_convbn_pairs == 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    assert rel(deployed(x), model(x)) <= TOL
    for k, v in model.state_dict().items():  # the input model is not modified
        assert torch.equal(v, state[k]), k


def test_eval_mode_is_identity():
    model = small_cnn()
    assert convbn(model, "eval") is model


# ---- the model zoo -----------------------------------------------------------------------------

try:
    from fuser import models as zoo

    ZOO = zoo.names()
except Exception:  # the zoo is optional here
    zoo, ZOO = None, []
HEAVY_ZOO = {"resnet152", "vgg16", "efficientnet_b3", "convnext_tiny", "deeplabv3plus_mobilenet_v3"}


def zoo_input(name: str) -> torch.Tensor:
    shape = list(zoo.input_shape(name))
    fixed = zoo.info(name)["fixed_resolution"] if hasattr(zoo, "info") else name.startswith("vit")
    if not fixed and os.environ.get("FUSER_HEAVY") != "1":
        shape[-2:] = [64, 64]
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.heavy) if n in HEAVY_ZOO else n for n in ZOO]
)
def test_zoo_deploy_and_tune_match_eval(name):
    model = zoo.create(name, seed=0).eval()
    x = zoo_input(name)
    with torch.no_grad():
        ref = model(x)
        deployed = convbn(model, "deploy")
        tuned = tune_mode(model)
        assert rel(deployed(x), ref) <= 1e-4
        assert rel(tuned(x), ref) <= 1e-4
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert deployed.fuser_convbn_pairs == tuned.fuser_convbn_pairs <= n_bn
    assert (tuned.fuser_convbn_pairs > 0) == (n_bn > 0)
