"""Tune mode without gaps: every way of calling the conv and the BatchNorm, in torch.fx and
torch.export modes; the summary (pairs, pairs left and why, saved bytes against a measurement,
the small-batch warning); Tune -> fine-tune -> Deploy -> ONNX in ONNX Runtime, step by step."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_convbn_tune import assert_same_forward_and_gradients, randomize_bn, rel
from torch import nn
from util import ort_run

import fuser
from fuser.torchtools.convbn import TuneModeWarning, convbn, tune_mode

TOL = 1e-5
CONV_CALLS = ["positional", "keyword"]
BN_CALLS = ["module", "module_keyword", "functional", "functional_keyword"]


class Layout(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, each call written as ``conv_call`` / ``bn_call`` say."""

    def __init__(self, conv_call: str, bn_call: str):
        super().__init__()
        self.conv_call, self.bn_call = conv_call, bn_call
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, stride=2), nn.BatchNorm2d(6)

    def conv(self, conv, x):
        return conv(x) if self.conv_call == "positional" else conv(input=x)

    def bn(self, bn, y):
        if self.bn_call == "module":
            return bn(y)
        if self.bn_call == "module_keyword":
            return bn(input=y)
        if self.bn_call == "functional":
            return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, bn.eps)
        return F.batch_norm(
            y,
            running_mean=bn.running_mean,
            running_var=bn.running_var,
            weight=bn.weight,
            bias=bn.bias,
            training=False,
            eps=bn.eps,
        )

    def forward(self, x):
        x = torch.relu(self.bn(self.bn1, self.conv(self.conv1, x)))
        return self.bn(self.bn2, self.conv(self.conv2, x))


def layout(conv_call: str, bn_call: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(Layout(conv_call, bn_call)).eval()


def capture(model: nn.Module, how: str, x: torch.Tensor):
    return model if how == "fx" else torch.export.export(model, (x,))


@pytest.mark.parametrize("how", ["fx", "export"])
@pytest.mark.parametrize("conv_call, bn_call", list(itertools.product(CONV_CALLS, BN_CALLS)))
def test_every_layout_combines_in_tune_and_deploy(how, conv_call, bn_call):
    model = layout(conv_call, bn_call)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuneModeWarning)  # tiny inputs: Tune mode saves nothing here
        tuned = tune_mode(capture(model, how, x))
    summary = tuned.fuser_convbn_summary
    assert [(p.conv, p.channels) for p in summary.pairs] == [("conv1", 8), ("conv2", 6)]
    assert summary.left == []
    assert {p.kind for p in summary.pairs} == ({"aten"} if how == "export" else {bn_call.split("_")[0]})

    assert_same_forward_and_gradients(ref, tuned, x)

    deployed = convbn(capture(model, how, x), "deploy")
    assert deployed.fuser_convbn_pairs == 2
    assert rel(deployed(x), ref(x)) <= TOL
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())


class Unfusable(nn.Module):
    """Four BNs that stay, each for its own reason."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.bn_after_bn = nn.BatchNorm2d(4)
        self.free = nn.BatchNorm2d(4, track_running_stats=False)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a = self.bn_after_bn(self.bn(y)) + y  # conv output used twice
        b = F.batch_norm(self.conv2(a), None, None, training=True)  # batch statistics
        return self.free(torch.relu(b))  # input is not a conv; no running statistics


@pytest.mark.parametrize("how", ["fx", "export"])
def test_pairs_left_and_why(how):
    model = randomize_bn(Unfusable()).eval()
    x = torch.randn(2, 3, 6, 6)
    tuned = tune_mode(capture(model, how, x))
    summary = tuned.fuser_convbn_summary
    assert summary.pairs == []
    reasons = " | ".join(str(x) for x in summary.left)
    assert "has another user" in reasons
    assert rel(tuned(x), model(x)) <= TOL
    if how == "fx":  # the export graph has no BN module calls left for these
        assert "a BN after a BN is not folded" in reasons
        assert "training is not False" in reasons
        assert "no running statistics" in reasons
        assert len(summary.left) == 4


class Wide(nn.Module):
    """Large weights on small maps: Tune mode's folded weights outweigh the activations at
    small batches (the ResNet-50 stage-4 situation)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(64, 256, 3, padding=1), nn.BatchNorm2d(256)
        self.conv2, self.bn2 = nn.Conv2d(256, 64, 3, padding=1), nn.BatchNorm2d(64)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def measured_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward (storages counted once, the model's
    parameters and buffers excluded): what benchmarks/convbn_tune.py measures."""
    own = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x.requires_grad_())
    return sum(seen.values())


@pytest.mark.parametrize("how", ["fx", "export"])
def test_saved_bytes_estimate_matches_measurement_and_warns_at_small_batch(how):
    torch.manual_seed(0)
    model = randomize_bn(Wide()).eval()
    # W' elements 2 * 147456 (+4 per channel: 1280) = 296192 kept; conv outputs 256*64 + 64*64 =
    # 20480 per sample no longer kept: saves from batch 296192 // 20480 + 1 = 15
    small, large = torch.randn(2, 64, 8, 8), torch.randn(16, 64, 8, 8)
    for x in (small, large):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TuneModeWarning)
            tuned = convbn(capture(model, how, x), "tune", example_inputs=x if how == "fx" else None)
        summary = tuned.fuser_convbn_summary
        assert summary.batch == x.shape[0] and summary.break_even_batch() == 15
        messages = [str(w.message) for w in caught if w.category is TuneModeWarning]
        if x is small:
            assert len(messages) == 1 and "would not save memory at batch 2" in messages[0]
            assert "saves from batch 15 on" in messages[0] and "warning" in str(summary)
            assert summary.saved_bytes() < 0
        else:
            assert messages == [] and summary.saved_bytes() > 0
        measured = measured_saved_bytes(model, x.clone()) - measured_saved_bytes(tuned, x.clone())
        assert abs(summary.saved_bytes() - measured) <= 0.02 * abs(measured), (x.shape[0], measured)


def test_summary_without_shapes_has_no_estimate():
    tuned = tune_mode(layout("positional", "module"))
    summary = tuned.fuser_convbn_summary
    assert summary.saved_bytes(8) is None and summary.warning(8) is None
    assert summary.to_dict()["pairs"][0]["conv"] == "conv1"


def test_tune_finetune_deploy_onnx_step_by_step():
    """Fine-tune in Tune mode (train mode, BN frozen) alongside the same steps in Eval mode; the
    weights stay in parity; Deploy folds the tuned module; its ONNX export runs in ONNX Runtime
    and matches the deployed module and the fine-tuned reference."""
    model = layout("keyword", "module_keyword")
    ref = copy.deepcopy(model)
    tuned = tune_mode(model)
    for net in (tuned, ref):  # transfer learning: train mode, BN statistics frozen
        net.train()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    opt_tune = torch.optim.SGD(tuned.parameters(), lr=0.05, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    stats = {k: v.clone() for k, v in model.named_buffers()}
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 10, 10)
        for net, opt in ((tuned, opt_tune), (ref, opt_ref)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    # step 1: Tune-mode fine-tuning == Eval-mode fine-tuning, statistics untouched
    ref_params = dict(ref.named_parameters())
    for k, p in model.named_parameters():
        assert rel(p, ref_params[k]) <= 1e-5, k
    assert rel(model.conv1.weight, layout("keyword", "module_keyword").conv1.weight) > 1e-3
    assert all(torch.equal(v, stats[k]) for k, v in model.named_buffers())

    # step 2: Deploy folds the tuned module (its tune nodes) once
    x = torch.randn(2, 3, 10, 10)
    deployed = convbn(tuned.eval(), "deploy")
    assert deployed.fuser_convbn_pairs == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    with torch.no_grad():
        want = ref.eval()(x)
        assert rel(deployed(x), want) <= 1e-5

    # step 3: the deployed module through fuser to ONNX: no BatchNormalization, ORT matches
    graph = fuser.from_torch(deployed, (x,))
    assert "BatchNormalization" not in graph.op_counts()
    (got,) = ort_run(fuser.to_onnx(graph), {graph.inputs[0].name: x.numpy()})
    assert rel(torch.from_numpy(got), want) <= 1e-5
