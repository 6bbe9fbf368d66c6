"""fold_constants: each rule of its docstring, and results equal to ONNX Runtime's."""

import numpy as np
from util import ort_run_graph

from fuser.analysis.shapes import infer_shapes
from fuser.ir import Graph, check_graph
from fuser.passes import fold_constants


def _graph():
    g = Graph("fold", opset=17)
    return g, g.add_input("x", (2, 3, 4))


def test_shape_and_size_of_a_static_value_become_constants():
    g, x = _graph()
    shape = g.add_node("Shape", [x], attrs={"start": 1}).output
    size = g.add_node("Size", [x]).output
    y = g.add_node(
        "Reshape",
        [x, g.add_node("Concat", [g.const(np.array([-1], np.int64)), shape], attrs={"axis": 0}).output],
    )
    g.outputs += [y.output, g.add_node("Cast", [size], attrs={"to": 1}).output]
    infer_shapes(g)
    want = ort_run_graph(g, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})
    result = fold_constants.run(g)
    check_graph(g)
    # Shape, Size and Concat folded; the Cast is a graph output, so it keeps its node (and name)
    assert result.changed and [n.op for n in g.nodes] == ["Reshape", "Cast"]
    assert g.nodes[1].inputs[0].const.tolist() == 24
    assert g.nodes[0].inputs[1].const.tolist() == [-1, 3, 4]
    got = ort_run_graph(g, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_constant_of_shape_and_expand_of_a_scalar_fold_to_splats():
    g, x = _graph()
    zeros = g.add_node(
        "ConstantOfShape",
        [g.const(np.array([2, 3, 4], np.int64))],
        attrs={"value": np.array([0.5], np.float32)},
    )
    ones = g.add_node("Expand", [g.const(np.float32(1.0)), g.const(np.array([2, 3, 4], np.int64))])
    y = g.add_node("Add", [g.add_node("Mul", [x, zeros.output]).output, ones.output])
    g.outputs.append(y.output)
    infer_shapes(g)
    fold_constants.run(g)
    consts = {n.op: [v for v in n.inputs if v.is_const] for n in g.nodes}
    assert [n.op for n in g.nodes] == ["Mul", "Add"]
    for (c,) in consts.values():  # one value broadcast: zero strides, no bytes of its own
        assert c.const.shape == (2, 3, 4) and all(s == 0 for s in c.const.strides)
    x_val = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    (got,) = ort_run_graph(g, {"x": x_val})
    assert np.array_equal(got, x_val * np.float32(0.5) + np.float32(1.0))


def test_cast_like_of_a_constant_takes_the_other_dtype():
    g, x = _graph()
    c = g.add_node("CastLike", [g.const(np.array([1, 2, 3, 4], np.int64)), x]).output
    g.outputs.append(g.add_node("Add", [x, c]).output)
    infer_shapes(g)
    fold_constants.run(g)
    (add,) = g.nodes
    assert add.inputs[1].const.dtype == np.float32 and add.inputs[1].const.tolist() == [1, 2, 3, 4]


def test_any_all_constant_node_is_evaluated_by_onnx_reference():
    g, x = _graph()
    w = g.add_node(
        "Transpose", [g.const(np.arange(12, dtype=np.float32).reshape(3, 4))], attrs={"perm": [1, 0]}
    )
    g.outputs.append(g.add_node("MatMul", [x, w.output]).output)
    infer_shapes(g)
    assert fold_constants.run(g).stats == {"folded": 1}
    (mm,) = g.nodes
    assert np.array_equal(mm.inputs[1].const, np.arange(12, dtype=np.float32).reshape(3, 4).T)


def test_graph_outputs_and_huge_results_are_not_folded():
    g, x = _graph()
    out = g.add_node("Add", [g.const(np.ones(3, np.float32)), g.const(np.ones(3, np.float32))]).output
    big = g.add_node(
        "ConstantOfShape", [g.const(np.array([fold_constants.MAX_FOLDED_ELEMENTS + 1], np.int64))]
    )
    tiled = g.add_node(
        "Tile",
        [
            g.const(np.arange(4, dtype=np.float32)),
            g.const(np.array([fold_constants.MAX_FOLDED_ELEMENTS], np.int64)),
        ],
    )
    g.outputs += [out, g.add_node("Add", [big.output, big.output]).output, tiled.output]
    infer_shapes(g)
    fold_constants.run(g)
    names = {v.name for v in g.outputs}
    assert out.name in names and any(n.output is out for n in g.nodes)  # the interface keeps its name
    assert any(n.op == "Tile" for n in g.nodes)  # would exceed MAX_FOLDED_ELEMENTS: kept


def test_a_training_mode_dropout_is_not_folded():
    """Dropout with training_mode true draws a new mask each run: folding would freeze one.
    With training_mode false (or absent) it is the identity and folds."""
    for mode, folded in ((True, 0), (False, 1)):
        g, x = _graph()
        ratio, training = g.const(np.array(0.5, np.float32)), g.const(np.array(mode))
        drop = g.add_node("Dropout", [g.const(np.ones((4, 3), np.float32)), ratio, training])
        g.outputs.append(g.add_node("MatMul", [x, drop.output]).output)
        infer_shapes(g)
        assert fold_constants.run(g).stats.get("folded", 0) == folded, mode
        assert any(n.op == "Dropout" for n in g.nodes) == (not folded)


def test_a_weight_cast_from_integers_is_still_a_parameter_and_a_range_grid_is_not():
    from fuser.analysis import analyze

    g = Graph("fold", opset=17)
    x = g.add_input("x", (1, 2, 5, 5))
    w8 = g.const(np.arange(-36, 36, dtype=np.int8).reshape(4, 2, 3, 3), "w8")
    w = g.add_node("Cast", [w8], attrs={"to": 1}).output
    conv = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1]}).output
    grid = g.add_node(
        "Cast",
        [g.add_node("Range", [g.const(np.int64(0)), g.const(np.int64(5)), g.const(np.int64(1))]).output],
        attrs={"to": 1},
    ).output
    g.outputs.append(g.add_node("Add", [conv, grid]).output)
    infer_shapes(g)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    want = ort_run_graph(g, feeds)
    assert fold_constants.run(g).changed and [n.op for n in g.nodes] == ["Conv", "Add"]
    assert not g.nodes[0].inputs[1].derived and g.nodes[1].inputs[1].derived
    assert analyze(g)["params"] == 4 * 2 * 3 * 3  # the int8 weights, not the 5-long grid
    assert np.array_equal(ort_run_graph(g, feeds)[0], want[0])
