"""Every zoo model: torch -> IR -> ONNX in ONNX Runtime matches torch eager; ONNX -> IR -> ONNX
matches; IR -> torch module matches; parameter counts equal the module's."""
import numpy as np
import pytest
import torch

import fuser
from fuser.models import names
from util import ort_run, rel_err
from zoo_cache import zoo_case

TOL = 1e-4


@pytest.fixture(scope="module", params=names())
def case(request):
    return zoo_case(request.param)


def test_torch_to_ir_to_onnx_matches_eager(case):
    module, x, graph = case
    with torch.no_grad():
        want = module(x).numpy()
    (got,) = ort_run(graph.to_onnx(), {graph.inputs[0].name: x.numpy()})
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


def test_onnx_to_ir_to_onnx_matches(case):
    module, x, graph = case
    once = graph.to_onnx()
    again = fuser.from_onnx(once).to_onnx()
    feeds = {graph.inputs[0].name: x.numpy()}
    assert rel_err(ort_run(again, feeds)[0], ort_run(once, feeds)[0]) <= 1e-6
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in once.graph.node]


def test_ir_to_torch_matches_eager(case):
    module, x, graph = case
    rebuilt = graph.to_torch()
    with torch.no_grad():
        want = module(x)
        got = rebuilt(x)
    assert rel_err(got.numpy(), want.numpy()) <= TOL
    params = list(rebuilt.parameters())
    assert params and all(isinstance(p, torch.nn.Parameter) for p in params)


def test_params_equal_module(case):
    module, x, graph = case
    assert fuser.info(graph)["params"] == sum(p.numel() for p in module.parameters())


def test_batchnorm_kept(case):
    module, x, graph = case
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    assert graph.op_counts().get("BatchNormalization", 0) == n_bn


def test_optimize_preserves_outputs(case):
    module, x, graph = case
    opt = fuser.optimize(graph)
    feeds = {graph.inputs[0].name: x.numpy()}
    assert rel_err(ort_run(opt.to_onnx(), feeds)[0], ort_run(graph.to_onnx(), feeds)[0]) <= 1e-5
    assert len(opt.nodes) <= len(graph.nodes)
