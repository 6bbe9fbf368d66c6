"""The op registry: every op the importer admits is known to every stage, by an
implementation or by a named refusal."""

import numpy as np
import pytest

import fuser.backends.torch  # noqa: F401  (registers "torch")
import fuser.pruning  # noqa: F401  (registers "prune")
from fuser.analysis import analyze
from fuser.analysis.costs import MAC_RULES
from fuser.backends import tvm  # noqa: F401  (registers "relax")
from fuser.ir import Graph
from fuser.ir.ops import (
    IMPORT_ONLY_OPS,
    OPS,
    SUPPORTED_OPS,
    Category,
    Role,
    implementation,
    op_def,
    ops_in,
    refusal,
)

GRAPH_OPS = sorted(SUPPORTED_OPS - IMPORT_ONLY_OPS)


@pytest.mark.parametrize("kind", ["torch", "relax", "prune"])
def test_every_admitted_op_is_implemented_or_refused_by_name(kind):
    missing = [op for op in GRAPH_OPS if implementation(kind, op) is None and not refusal(kind, op)]
    both = [op for op in GRAPH_OPS if implementation(kind, op) is not None and refusal(kind, op)]
    assert not missing, f"{kind}: neither an implementation nor a refusal for {missing}"
    assert not both, f"{kind}: an implementation and a refusal for {both}"


def test_every_admitted_op_has_a_mac_rule():
    assert all(OPS[op].macs in MAC_RULES for op in SUPPORTED_OPS)
    assert {op for op in SUPPORTED_OPS if OPS[op].macs != "none"} == {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
    }


def test_categories_and_roles_of_known_ops():
    assert ops_in(Category.CONV) == {"Conv", "ConvTranspose"}
    assert ops_in(Category.MATMUL) == {"Gemm", "MatMul"}
    assert op_def("BatchNormalization").inputs == (Role.DATA, Role.WEIGHT, Role.BIAS, Role.STAT, Role.STAT)
    assert op_def("Sum").role(5) is Role.DATA  # variadic: later inputs take the last role
    assert op_def("Slice").slots(Role.CONFIG) == {1, 2, 3, 4}
    assert op_def("Add").category is Category.ELEMENTWISE and op_def("Resize").category is Category.INJECTIVE


def test_roles_drive_parameter_counting_and_torch_parameters():
    """BN: scale/bias are parameters, mean/var buffers; Pad's constant value is configuration;
    a Gemm weight is a parameter. Hand count: 4 + 4 (BN) + 8*4 + 4 (Gemm) = 44 params, 8 buffers."""
    from fuser.backends.torch import to_torch

    g = Graph("roles")
    x = g.add_input("x", (1, 4, 2, 2))
    bn = g.add_node(
        "BatchNormalization", [x, *(g.const(np.full(4, k, np.float32)) for k in (1.0, 0.5, 0.1, 2.0))]
    ).output
    pad = g.add_node("Pad", [bn, g.const(np.zeros(8, np.int64)), g.const(np.float32(0.25))]).output
    flat = g.add_node("Flatten", [pad]).output
    gemm = g.add_node("Gemm", [flat, g.const(np.ones((16, 2), np.float32)), g.const(np.ones(2, np.float32))])
    g.outputs.append(gemm.output)
    from fuser.analysis.shapes import infer_shapes

    infer_shapes(g)
    info = analyze(g)
    assert info["params"] == 4 + 4 + 16 * 2 + 2 and info["buffers"] == 8
    module = to_torch(g)
    assert sum(p.numel() for p in module.parameters()) == info["params"]
    persistent = module.state_dict()
    assert sum(t.numel() for k, t in persistent.items() if k not in dict(module.named_parameters())) == 8
