"""ONNX import of any standard op: opaque ops carried through every pass and back out,
names kept exactly, shapes fuser infers itself, value-dependent shapes refused or fixed."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from util import ort_run

import fuser
from fuser.backends.torch import run_torch
from fuser.frontends.normalize import ValueDependentShape
from fuser.frontends.onnx import from_onnx
from fuser.ir import FuserError
from fuser.ir.ops import Category, op_def
from fuser.pruning.deps import analyze_dependencies
from fuser.serde.onnx import to_onnx

RNG = np.random.default_rng(0)


def make_model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


F = TensorProto.FLOAT


def detector_head():
    """Conv -> TopK over scores -> GatherElements of the boxes, then Einsum and Trilu: opaque
    ops (and a Conv/BN that the pipeline folds) between a graph input and two outputs."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bn = [np.abs(RNG.standard_normal(4)).astype(np.float32) + 0.5 for _ in range(4)]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Reshape", ["bn", "flat"], ["scores"], name="flatten"),
        helper.make_node("TopK", ["scores", "k"], ["top", "idx"], name="topk", axis=1),
        helper.make_node("GatherElements", ["scores", "idx"], ["picked"], name="gather", axis=1),
        helper.make_node("Einsum", ["picked", "picked"], ["outer"], name="einsum", equation="bi,bj->bij"),
        helper.make_node("Trilu", ["outer"], ["tri"], name="trilu", upper=0),
    ]
    inits = [
        ("w", w),
        ("s", bn[0]),
        ("b", bn[1]),
        ("m", bn[2]),
        ("v", bn[3]),
        ("flat", np.array([1, -1], np.int64)),
        ("k", np.array([5], np.int64)),
    ]
    return make_model(
        nodes,
        [("x", F, [1, 3, 6, 6])],
        [("tri", F, [1, 5, 5]), ("top", F, [1, 5])],
        inits,
    )


def test_opaque_ops_are_admitted_with_schema_roles():
    assert op_def("TopK").category is Category.OPAQUE
    assert op_def("TopK").role(1).value == "config"
    assert op_def("GatherElements").role(1).value == "index"
    assert op_def("LessOrEqual").category is Category.ELEMENTWISE


def test_opaque_ops_round_trip_through_optimize_and_match_ort():
    model = detector_head()
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    want = ort_run(model, {"x": x})
    result = fuser.optimize(model)
    assert "BatchNormalization" not in result.graph.op_counts()  # the pipeline still works around them
    assert {"TopK", "GatherElements", "Einsum", "Trilu"} <= set(result.graph.op_counts())
    got = ort_run(to_onnx(result.graph), {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    torch_out = run_torch(result.graph, {"x": x})
    for g, w in zip(torch_out, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_fusion_runs_an_opaque_op_alone():
    from fuser.fusion import build_fusion_graph, make_cost_model

    graph = fuser.optimize(detector_head()).graph
    fg = build_fusion_graph(graph)
    cost = make_cost_model(fg, "lbdf", 1 << 30)  # a buffer so large that everything else fits
    topk = fg.names.index("topk")
    trilu = fg.names.index("trilu")
    assert not cost.fusable_mask >> topk & 1
    assert not cost.valid((1 << topk) | (1 << fg.names.index("gather")))
    assert any("opaque" in why for i, why in cost.unfusable() if i == trilu)
    conv_reshape = [i for i, op in enumerate(fg.ops) if op in ("Conv", "Reshape")]
    assert len(conv_reshape) == 2 and cost.valid(sum(1 << i for i in conv_reshape))


def test_pruning_stops_at_an_opaque_op_and_says_so():
    graph = fuser.optimize(detector_head()).graph
    analysis = analyze_dependencies(graph)
    (group,) = analysis.groups
    assert group.layers == ["conv"] and not group.prunable.any()
    assert group.frozen_reason == "topk (TopK): no channel rule for this op"
    assert [str(b) for b in analysis.blocked] == [
        "topk (TopK): no channel rule for this op",
        "gather (GatherElements): no channel rule for this op",
    ]


def test_constant_folding_evaluates_an_opaque_op_with_the_reference():
    """Trilu of a constant folds to the reference's value; the graph keeps only the Add."""
    c = np.arange(9, dtype=np.float32).reshape(3, 3)
    model = make_model(
        [
            helper.make_node("Trilu", ["c"], ["t"], name="trilu"),
            helper.make_node("Add", ["x", "t"], ["y"], name="add"),
        ],
        [("x", F, [3, 3])],
        [("y", F, [3, 3])],
        [("c", c)],
    )
    graph = from_onnx(model)
    assert graph.op_counts() == {"Add": 1}
    (folded,) = [v for v in graph.constants()]
    np.testing.assert_array_equal(folded.const, np.triu(c))


def test_zero_size_tensors_are_static():
    model = make_model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        [("x", F, [2, 0, 4])],
        [("y", F, [2, 1, 4])],
        [("axes", np.array([1], np.int64))],
    )
    graph = from_onnx(model)
    assert graph.inputs[0].shape == (2, 0, 4)
    x = np.zeros((2, 0, 4), np.float32)
    np.testing.assert_array_equal(ort_run(to_onnx(graph), {"x": x})[0], np.zeros((2, 1, 4), np.float32))
    np.testing.assert_array_equal(run_torch(graph, {"x": x})[0], np.zeros((2, 1, 4), np.float32))


def test_group_normalization_has_fusers_own_shape_rule():
    scale, bias = np.full(6, 1.5, np.float32), np.full(6, 0.25, np.float32)
    model = make_model(
        [
            helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=3),
            helper.make_node("Relu", ["g"], ["y"]),
        ],
        [("x", F, [2, 6, 4, 4])],
        [("y", F, None)],
        [("s", scale), ("b", bias)],
        opset=21,
    )
    graph = from_onnx(model)
    assert graph.outputs[0].shape == (2, 6, 4, 4)
    x = RNG.standard_normal((2, 6, 4, 4)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    np.testing.assert_allclose(ort_run(to_onnx(fuser.optimize(graph).graph), {"x": x})[0], want, atol=1e-5)
    np.testing.assert_allclose(run_torch(graph, {"x": x})[0], want, atol=1e-5)


def test_an_input_that_is_also_an_output():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [("x", F, [2, 3])],
        [("y", F, [2, 3]), ("x", F, [2, 3])],
    )
    result = fuser.optimize(model)
    exported = to_onnx(result.graph)
    assert [o.name for o in exported.graph.output] == ["y", "x"]
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    y, echo = ort_run(exported, {"x": x})
    np.testing.assert_array_equal(echo, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def mtcnn_like():
    """tf2onnx/Keras style: the node that makes output 'conv2d_4' is itself named 'conv2d_4'."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bn = [np.full(4, v, np.float32) for v in (1.0, 0.0, 0.0, 1.0)]
    nodes = [
        helper.make_node("Conv", ["input_1", "w"], ["conv2d_4/BiasAdd"], name="conv2d_4", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv2d_4/BiasAdd", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["conv2d_4"], name="prob"),
        helper.make_node("Softmax", ["conv2d_4"], ["prob"], name="conv2d_4_1", axis=1),
    ]
    inits = [("w", w), ("s", bn[0]), ("b", bn[1]), ("m", bn[2]), ("v", bn[3])]
    return make_model(
        nodes, [("input_1", F, [1, 3, 8, 8])], [("conv2d_4", F, None), ("prob", F, None)], inits
    )


def test_output_names_survive_optimize_and_prune():
    model = mtcnn_like()
    names = ["conv2d_4", "prob"]
    graph = from_onnx(model)
    assert [v.name for v in graph.outputs] == names
    optimized = fuser.optimize(model)
    assert "BatchNormalization" not in optimized.graph.op_counts()
    exported = to_onnx(optimized.graph)
    assert [o.name for o in exported.graph.output] == names
    assert [i.name for i in exported.graph.input] == ["input_1"]
    pruned = fuser.prune(optimized, ratio=0.5)
    assert [o.name for o in to_onnx(pruned.graph).graph.output] == names
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = dict(zip(names, ort_run(model, {"input_1": x})))
    sess_out = ort_run(exported, {"input_1": x})
    for name, got in zip(names, sess_out):
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-5)


def test_value_dependent_shape_is_refused_by_name_and_fixed_by_value():
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        [("x", F, [2, 6]), ("shape", TensorProto.INT64, [2])],
        [("y", F, None)],
    )
    with pytest.raises(ValueDependentShape, match=r"value-dependent.*'shape'.*--input-value shape:") as e:
        from_onnx(model)
    assert e.value.inputs == ["shape"]
    graph = from_onnx(model, input_values={"shape": [3, 4]})
    assert [v.name for v in graph.inputs] == ["x"] and graph.outputs[0].shape == (3, 4)
    nonzero = make_model(
        [helper.make_node("NonZero", ["x"], ["y"], name="nz")],
        [("x", F, [4])],
        [("y", TensorProto.INT64, None)],
    )
    with pytest.raises(ValueDependentShape, match="value-dependent output shapes are not supported"):
        from_onnx(nonzero)


@pytest.mark.parametrize(
    "op,message",
    [("Loop", "control flow"), ("SequenceEmpty", "sequences"), ("FancyOp", "not a standard ONNX op")],
)
def test_refusals_say_why(op, message):
    model = make_model([helper.make_node(op, [], ["y"], name="n")], [], [("y", F, [1])])
    if op == "Loop":
        model.graph.node[0].attribute.append(
            helper.make_attribute("body", helper.make_graph([], "body", [], []))
        )
    with pytest.raises(FuserError, match=message):
        from_onnx(model)


@pytest.mark.parametrize(
    "weight,message",
    [
        (np.ones((4, 3, 3, 3), np.float64), "invalid model"),  # onnx's checker: a float64 weight
        (np.ones((4, 5, 3, 3), np.float32), "invalid model: input has 3 channels"),  # fuser's rules
    ],
)
def test_invalid_models_are_refused_naming_node_and_op(weight, message):
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [("x", F, [1, 3, 8, 8])],
        [("y", F, None)],
        [("w", weight)],
    )
    with pytest.raises(FuserError, match=rf"node 'conv' \(Conv\): {message}"):
        from_onnx(model)


def test_exported_attributes_keep_their_declared_types():
    """An empty FLOATS attribute and an integral FLOAT stay floats (schema-typed on export)."""
    model = make_model(
        [helper.make_node("LeakyRelu", ["x"], ["y"], name="lr", alpha=1.0)],
        [("x", F, [2])],
        [("y", F, [2])],
    )
    graph = from_onnx(model)
    graph.nodes[0].attrs["alpha"] = 2  # a pass may write an int
    (attr,) = to_onnx(graph).graph.node[0].attribute
    assert attr.type == onnx.AttributeProto.FLOAT and attr.f == 2.0


def test_sparse_initializers_and_constants_are_made_dense():
    vals = numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "sp")
    sparse = helper.make_sparse_tensor(vals, numpy_helper.from_array(np.array([1, 5], np.int64), "i"), [2, 3])
    nodes = [
        helper.make_node("Constant", [], ["c"], sparse_value=sparse),
        helper.make_node("Add", ["x", "c"], ["y"]),
        helper.make_node("Mul", ["x", "sp"], ["z"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [helper.make_tensor_value_info(n, F, [2, 3]) for n in ("y", "z")],
        sparse_initializer=[sparse],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    want = ort_run(model, {"x": x})
    got = ort_run(to_onnx(fuser.optimize(model).graph), {"x": x})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_an_input_with_an_initializer_is_taken_as_its_default_and_reported(tmp_path):
    """IR 4+: a graph input that also has an initializer is an overridable default. fuser
    takes the default (what the deployed model computes), so the input is gone from what it
    writes: import lists it and `fuser optimize` says so (it said nothing)."""
    from click.testing import CliRunner

    from fuser.cli import main

    w = numpy_helper.from_array(np.full((4, 3, 1, 1), 0.5, np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    graph = from_onnx(path)
    assert [v.name for v in graph.inputs] == ["x"] and graph.meta["import"]["defaults_taken"] == ["W"]
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(to_onnx(graph), {"x": x})[0], ort_run(str(path), {"x": x})[0])
    r = CliRunner().invoke(main, ["optimize", str(path), str(tmp_path / "o.onnx")])
    assert r.exit_code == 0, r.output
    assert "inputs with initializers taken as constants, no longer inputs: W" in r.output, r.output
