"""drop_zero_bias: a broadcast-zero Conv/Gemm bias goes; a real bias array stays."""

import numpy as np
from util import ort_run_graph

from fuser.analysis.shapes import infer_shapes
from fuser.ir import Graph
from fuser.passes import drop_zero_bias


def _conv(bias):
    g = Graph("conv", opset=17)
    x = g.add_input("x", (1, 2, 4, 4))
    w = g.const(np.random.default_rng(0).standard_normal((3, 2, 1, 1)).astype(np.float32))
    g.outputs.append(g.add_node("Conv", [x, w, bias(g)]).output)
    infer_shapes(g)
    return g


def test_splat_zero_bias_is_dropped_and_the_result_is_equal():
    g = _conv(lambda g: g.const(np.broadcast_to(np.float32(0), (3,))))
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    (want,) = ort_run_graph(g, {"x": x})
    result = drop_zero_bias.run(g)
    assert result.changed and result.stats == {"dropped": 1}
    assert len(g.nodes[0].inputs) == 2
    (got,) = ort_run_graph(g, {"x": x})
    assert np.array_equal(got, want)


def test_gemm_splat_zero_c_is_dropped():
    g = Graph("gemm", opset=17)
    x = g.add_input("x", (2, 3))
    c = g.const(np.broadcast_to(np.float32(0), (4,)))
    g.outputs.append(g.add_node("Gemm", [x, g.const(np.ones((3, 4), np.float32)), c]).output)
    infer_shapes(g)
    assert drop_zero_bias.run(g).changed and len(g.nodes[0].inputs) == 2


def test_a_real_zero_array_and_a_nonzero_splat_are_kept():
    for bias in (np.zeros(3, np.float32), np.broadcast_to(np.float32(0.5), (3,))):
        g = _conv(lambda g, b=bias: g.const(b))
        assert not drop_zero_bias.run(g).changed and len(g.nodes[0].inputs) == 3
