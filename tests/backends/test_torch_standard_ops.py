"""The torch backend on standard ops beyond the CNN core: against ONNX Runtime on the same
input, and named refusals where torch has no kernel."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from util import ort_run

from fuser.backends.torch import run_torch, to_torch
from fuser.frontends.onnx import from_onnx
from fuser.ir import FuserError

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def model(node, inputs, outputs, inits=(), opset=22):
    g = helper.make_graph(
        [node],
        "m",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def assert_matches_ort(m, feeds, atol=1e-5):
    want = ort_run(m, feeds)
    got = run_torch(from_onnx(m), feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_modes(mode):
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    m = model(
        helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode=mode),
        [("x", F, x.shape)],
        [("y", F)],
        opset=28,
    )
    want = x.reshape(2, 3, 2, 2, 3, 2)
    want = want.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else want.transpose(0, 1, 3, 5, 2, 4)
    np.testing.assert_array_equal(run_torch(from_onnx(m), {"x": x})[0], want.reshape(2, 12, 2, 3))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers(op, direction):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs, hidden, feat, seq, batch = 2 if direction == "bidirectional" else 1, 5, 3, 4, 2
    w = RNG.standard_normal((dirs, gates * hidden, feat)).astype(np.float32) * 0.5
    r = RNG.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5
    b = RNG.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.1
    outs = ["y", "y_h", "y_c"][: 3 if op == "LSTM" else 2]
    attrs = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(op, ["x", "w", "r", "b"], outs, **attrs)
    m = model(node, [("x", F, [seq, batch, feat])], [(o, F) for o in outs], [("w", w), ("r", r), ("b", b)])
    assert_matches_ort(m, {"x": RNG.standard_normal((seq, batch, feat)).astype(np.float32)})


def test_grid_sample_and_topk_ties():
    grid = RNG.uniform(-1.1, 1.1, (1, 3, 4, 2)).astype(np.float32)
    m = model(
        helper.make_node("GridSample", ["x", "g"], ["y"], mode="linear", padding_mode="border"),
        [("x", F, [1, 2, 5, 5])],
        [("y", F)],
        [("g", grid)],
    )
    assert_matches_ort(m, {"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)})
    m = model(
        helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=1),
        [("x", F, [2, 6])],
        [("v", F), ("i", TensorProto.INT64)],
        [("k", np.array([3], np.int64))],
    )
    assert_matches_ort(m, {"x": np.array([[1, 3, 3, 2, 3, 0], [5, 5, 5, 5, 1, 1]], np.float32)})


@pytest.mark.parametrize("dtype", [TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64])
def test_wide_unsigned_arithmetic_is_refused_by_name(dtype):
    m = model(
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        [("a", dtype, [3]), ("b", dtype, [3])],
        [("y", dtype)],
    )
    with pytest.raises(FuserError, match=r"node 'add' \(Add\): torch backend: uint\d+ arithmetic"):
        to_torch(from_onnx(m))


def test_string_tensors_are_refused_by_name():
    s = TensorProto.STRING
    m = model(helper.make_node("Identity", ["a"], ["y"], name="id"), [("a", s, [2])], [("y", s)])
    with pytest.raises(FuserError, match=r"node 'id' \(Identity\): torch backend: string tensors"):
        to_torch(from_onnx(m))


def test_an_op_without_torch_code_is_refused_by_name():
    m = model(
        helper.make_node("DFT", ["x"], ["y"], name="dft"),
        [("x", F, [1, 8, 1])],
        [("y", F)],
        opset=20,
    )
    with pytest.raises(
        FuserError, match=r"node 'dft' \(DFT\): torch backend: op 'DFT' has no torch implementation"
    ):
        to_torch(from_onnx(m))
