"""fold_conv_bn (deploy): outputs equal eval mode; folds only where the rules allow."""

import pytest
import torch
from torch import nn
from util import LIGHT_MODELS, PADDLE_MODELS, ort_run, ort_run_graph, paddle_model, real_model_input, rel_err
from zoo_cache import zoo_case, zoo_eager

import fuser
from fuser.models import names
from fuser.passes import fold_conv_bn


def randomize_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return module.eval()


def fold_and_compare(module, x, expect_folds, tol=1e-5):
    randomize_bn(module)
    graph = fuser.from_torch(module, (x,))
    n_bn = graph.op_counts().get("BatchNormalization", 0)
    result = fold_conv_bn.run(graph.copy())
    assert result.stats["folded"] == expect_folds
    assert result.graph.op_counts().get("BatchNormalization", 0) == n_bn - expect_folds
    with torch.no_grad():
        want = module(x)
    wants = want if isinstance(want, tuple) else (want,)
    gots = ort_run(fuser.to_onnx(result.graph), {result.graph.inputs[0].name: x.numpy()})
    for got, w in zip(gots, wants):
        assert rel_err(got, w.numpy()) <= tol
    return result.graph


class Seq(nn.Module):
    def __init__(self, *mods):
        super().__init__()
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize(
    "conv,bn,shape",
    [
        (nn.Conv1d(4, 6, 3, bias=True), nn.BatchNorm1d(6), (2, 4, 9)),
        (nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6), (1, 4, 9, 9)),
        (nn.Conv2d(8, 8, 3, groups=4, dilation=2), nn.BatchNorm2d(8), (1, 8, 9, 9)),
        (nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), (1, 2, 5, 5, 5)),
        (nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6), (1, 4, 5, 5)),
        (nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6), (1, 4, 5, 5)),
        (nn.ConvTranspose1d(4, 4, 3, groups=4), nn.BatchNorm1d(4), (1, 4, 7)),
        (nn.Linear(5, 7), nn.BatchNorm1d(7), (3, 5)),
        (nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6, affine=False), (1, 4, 5, 5)),
    ],
    ids=[
        "conv1d",
        "conv2d-nobias",
        "grouped-dilated",
        "conv3d",
        "convT",
        "convT-groups",
        "convT1d-depthwise",
        "linear-bn1d",
        "bn-affine-false",
    ],
)
def test_single_pair_folds(conv, bn, shape):
    fold_and_compare(Seq(conv, bn), torch.randn(shape), 1)


class MatMulBN(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 7))
        self.b = nn.Parameter(torch.randn(7)) if bias else None
        self.bn = nn.BatchNorm1d(7)

    def forward(self, x):
        y = x @ self.w
        return self.bn(y + self.b if self.b is not None else y)


@pytest.mark.parametrize("bias", [True, False])
def test_matmul_add_bn_folds(bias):
    g = fold_and_compare(MatMulBN(bias), torch.randn(4, 5), 1)
    assert "BatchNormalization" not in g.op_counts()


class SecondUser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_no_fold_when_conv_output_has_second_user():
    fold_and_compare(SecondUser(), torch.randn(1, 3, 8, 8), 0)


class TwiceBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.bn1(self.conv(x)))


def test_bn_applied_twice_folds_both_exactly():
    fold_and_compare(TwiceBN(), torch.randn(1, 3, 8, 8), 2)


class SharedBN(nn.Module):
    """One BN module after two convs, and one conv module feeding two BNs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.bn, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x)) + self.bn2(self.a(x * 2))


def test_shared_bn_and_shared_conv_weights():
    g = fold_and_compare(SharedBN(), torch.randn(1, 3, 8, 8), 3)
    weights = [n.inputs[1] for n in g.nodes if n.op == "Conv"]
    assert len({id(w) for w in weights}) == 3  # each fold made its own weight


def test_graph_output_name_kept():
    g = fold_and_compare(Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(1, 3, 6, 6), 1)
    assert g.outputs[0].name == "output"


def test_training_mode_bn_not_folded():
    g = fuser.from_torch(Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (torch.randn(1, 3, 6, 6),))
    bn = next(n for n in g.nodes if n.op == "BatchNormalization")
    bn.attrs["training_mode"] = 1
    assert fold_conv_bn.run(g).stats["folded"] == 0


@pytest.mark.parametrize("name", names())
def test_deploy_folding_matches_eval_on_zoo(name):
    module, x, graph = zoo_case(name)
    n_bn = graph.op_counts().get("BatchNormalization", 0)
    result = fold_conv_bn.run(graph.copy())
    assert result.stats["folded"] == n_bn  # every zoo BN follows a conv
    (got,) = ort_run_graph(result.graph, {graph.inputs[0].name: x.numpy()})
    assert rel_err(got, zoo_eager(name)) <= 1e-4


@pytest.mark.parametrize("name,shape", list(PADDLE_MODELS.items()))
def test_real_models_fold(name, shape):
    path = paddle_model(name)
    result = fuser.optimize(str(path), input_shapes=shape)
    graph = result.graph
    step = next(s for s in result.report.steps if s.name == "fold_conv_bn")
    assert (
        step.stats["folded"]
        == {"ch_PP-OCRv4_det_infer.onnx": 3, "ch_ppocr_mobile_v2.0_cls_infer.onnx": 35}[name]
    )
    feeds = {graph.inputs[0].name: real_model_input(path, shape)}
    assert rel_err(ort_run(fuser.to_onnx(graph), feeds)[0], ort_run(path, feeds)[0]) <= 1e-5


def test_light_models_fold_every_conv_bn():
    """Every BN right after a conv folds; DenseNet's pre-activation BNs (after Concat or
    pooling, BN-ReLU-Conv order) have nothing to fold into and stay."""
    remaining = {}
    for path in LIGHT_MODELS:
        before = fuser.from_onnx(path)
        unfoldable = sum(
            1
            for n in before.nodes
            if n.op == "BatchNormalization"
            and (
                n.inputs[0].producer is None or n.inputs[0].producer.op != "Conv" or len(n.inputs[0].uses) > 1
            )
        )
        after = fuser.optimize(before).graph
        remaining[path.stem] = after.op_counts().get("BatchNormalization", 0)
        assert remaining[path.stem] == unfoldable, path.name
    assert remaining["light_resnet50"] == 0 and remaining["light_densenet121"] > 0


@pytest.mark.parametrize("c_out", [4, 1])
def test_spatial_zero_bn_is_not_folded_and_the_model_still_matches_ort(tmp_path, c_out):
    """BatchNormalization-7 with spatial=0 has statistics per (channel, row, column), not a
    per-channel scale: folding them as one crashed (C_out 4) or wrote a model ORT refuses
    (C_out 1: a 16-channel bias on a 1-channel conv)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    stats = {
        "g": rng.random((c_out, 4, 4)) + 0.5,
        "b": rng.standard_normal((c_out, 4, 4)),
        "m": rng.standard_normal((c_out, 4, 4)),
        "v": rng.random((c_out, 4, 4)) + 0.1,
    }
    inits = [numpy_helper.from_array(rng.standard_normal((c_out, 3, 3, 3)).astype(np.float32), "W")]
    inits += [numpy_helper.from_array(a.astype(np.float32), n) for n, a in stats.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn", spatial=0),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    out = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c_out, 4, 4])
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [out], inits), opset_imports=[helper.make_opsetid("", 7)]
    )
    model.ir_version = 3
    path = tmp_path / "bn7.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    result = fuser.optimize(str(path))
    assert result.graph.op_counts().get("BatchNormalization") == 1
    assert rel_err(ort_run_graph(result.graph, {"x": x})[0], ort_run(str(path), {"x": x})[0]) <= 1e-5
