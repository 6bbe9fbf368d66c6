"""Every zoo model: torch -> IR -> ONNX in ONNX Runtime matches torch eager; ONNX -> IR -> ONNX
matches; IR -> torch module matches; parameter counts equal the module's."""

import pytest
import torch
from util import ort_run, ort_run_graph, rel_err
from zoo_cache import zoo_case, zoo_eager

import fuser
from fuser.models import names

TOL = 1e-4


@pytest.fixture(scope="module", params=names())
def name(request):
    return request.param


def test_torch_to_ir_to_onnx_matches_eager(name):
    module, x, graph = zoo_case(name)
    want = zoo_eager(name)
    (got,) = ort_run(fuser.to_onnx(graph), {graph.inputs[0].name: x.numpy()})
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


def test_onnx_to_ir_to_onnx_matches(name):
    """Serialised ONNX -> IR -> ONNX keeps ops, and the result still computes the module."""
    module, x, graph = zoo_case(name)
    once = fuser.to_onnx(graph)
    again = fuser.from_onnx(once)
    assert [n.op for n in again.nodes] == [n.op for n in graph.nodes]
    (got,) = ort_run_graph(again, {graph.inputs[0].name: x.numpy()})
    assert rel_err(got, zoo_eager(name)) <= TOL


def test_ir_to_torch_matches_eager(name):
    module, x, graph = zoo_case(name)
    rebuilt = fuser.to_torch(graph)
    with torch.no_grad():
        got = rebuilt(x)
    assert rel_err(got.numpy(), zoo_eager(name)) <= TOL
    params = list(rebuilt.parameters())
    assert params and all(isinstance(p, torch.nn.Parameter) for p in params)


def test_params_equal_module(name):
    module, x, graph = zoo_case(name)
    assert fuser.info(graph)["params"] == sum(p.numel() for p in module.parameters())


def test_batchnorm_kept(name):
    module, x, graph = zoo_case(name)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    assert graph.op_counts().get("BatchNormalization", 0) == n_bn


def test_optimize_preserves_outputs(name):
    module, x, graph = zoo_case(name)
    opt = fuser.optimize(graph).graph
    (got,) = ort_run_graph(opt, {graph.inputs[0].name: x.numpy()})
    assert rel_err(got, zoo_eager(name)) <= TOL
    n_bn = graph.op_counts().get("BatchNormalization", 0)
    assert len(opt.nodes) <= len(graph.nodes) - n_bn  # every zoo BN follows a conv and folds
