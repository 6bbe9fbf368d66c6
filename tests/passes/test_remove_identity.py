"""remove_identity: every bypass rule of its docstring; ORT's results are unchanged."""

import numpy as np
import pytest
from util import ort_run_graph

from fuser.analysis.shapes import infer_shapes
from fuser.ir import Graph, check_graph
from fuser.passes import remove_identity

X = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)


def _through(op, *extra, attrs=None):
    g = Graph("identity", opset=17)
    x = g.add_input("x", X.shape)
    y = g.add_node(op, [x, *(g.const(e) if e is not None else None for e in extra)], attrs=attrs or {}).output
    g.outputs.append(g.add_node("Relu", [y]).output)
    infer_shapes(g)
    return g


CASES = {
    "Identity": ("Identity",),
    "Dropout": ("Dropout",),
    "Cast same type": ("Cast", {"to": 1}),
    "Reshape same shape": ("Reshape", np.array(X.shape, np.int64)),
    "Squeeze nothing": ("Unsqueeze", np.array([0], np.int64)),
    "Expand same shape": ("Expand", np.array(X.shape, np.int64)),
    "Transpose identity perm": ("Transpose", {"perm": [0, 1, 2, 3]}),
    "Slice whole": ("Slice", np.array([0], np.int64), np.array([4], np.int64), np.array([1], np.int64)),
    "Pad zero": ("Pad", np.zeros(8, np.int64)),
    "Concat one": ("Concat", {"axis": 1}),
    "Sum one": ("Sum",),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_passthrough_is_bypassed(case):
    op, *rest = CASES[case]
    attrs = rest.pop() if rest and isinstance(rest[-1], dict) else None
    g = _through(op, *rest, attrs=attrs)
    (want,) = ort_run_graph(g, {"x": X})
    result = remove_identity.run(g)
    check_graph(g)
    if case == "Squeeze nothing":  # Unsqueeze changes the rank: not a passthrough
        assert not result.changed and len(g.nodes) == 2
        return
    assert result.changed and [n.op for n in g.nodes] == ["Relu"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    (got,) = ort_run_graph(g, {"x": X})
    assert np.array_equal(got, want)


def test_a_reshape_that_changes_the_shape_stays():
    g = _through("Reshape", np.array([1, 36], np.int64))
    assert not remove_identity.run(g).changed and [n.op for n in g.nodes] == ["Reshape", "Relu"]


def test_a_bypassed_graph_output_keeps_its_name():
    g = Graph("out", opset=17)
    x = g.add_input("x", (2, 2))
    r = g.add_node("Relu", [x]).output
    out = g.add_node("Identity", [r], name="y").output
    g.outputs.append(out)
    out_name = out.name
    infer_shapes(g)
    remove_identity.run(g)
    assert [n.op for n in g.nodes] == ["Relu"] and g.outputs[0].name == out_name
    assert g.outputs[0].producer.op == "Relu"


def test_identity_from_input_to_output_is_kept():
    g = Graph("io", opset=17)
    x = g.add_input("x", (2, 2))
    g.outputs.append(g.add_node("Identity", [x]).output)
    infer_shapes(g)
    assert not remove_identity.run(g).changed  # x is a graph input: it cannot take y's name
