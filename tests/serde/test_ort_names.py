"""to_onnx names constants so that ONNX Runtime's optimizers cannot add an initializer of
the same name: every model it writes loads at ORT_ENABLE_ALL.

ONNX Runtime's GatherSliceToSplitFusion (and other fusions) name the initializers they add
with Graph::GenerateNodeName('squeeze_axes'), which checks node names only; a model that
already has a tensor 'squeeze_axes' then fails the session with "AddInitializedOrtValue
Attempt to replace the existing tensor".
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuser

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
nn = torch.nn


def session(model: onnx.ModelProto, level=None):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.graph_optimization_level = level or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class SelfAttention(nn.Module):
    def __init__(self, heads: int, need_weights: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, heads, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


def modules():
    yield "mha2", lambda: SelfAttention(2, True)
    yield "mha4", lambda: SelfAttention(4, False)
    yield (
        "encoder",
        lambda: nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True),
    )


@pytest.mark.parametrize("make", [m for _, m in modules()], ids=[n for n, _ in modules()])
def test_attention_modules_load_in_ort_with_all_optimisations(make):
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        want = module(x).numpy()
    graph = fuser.from_torch(module, x)
    model = fuser.to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)  # raised "AddInitializedOrtValue Attempt to replace the existing tensor"
    (got,) = sess.run(None, {model.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # graph input and output names are those of the graph; the bytes do not change between calls
    assert [i.name for i in model.graph.input] == [v.name for v in graph.inputs]
    assert [o.name for o in model.graph.output] == [v.name for v in graph.outputs]
    assert fuser.to_onnx(graph).SerializeToString(deterministic=True) == model.SerializeToString(
        deterministic=True
    )


def _gather_model(axes_name: str, splits_name: str = "w") -> onnx.ModelProto:
    """x -> Unsqueeze -> Squeeze(axes_name) -> three scalar Gathers (ORT fuses them to a Split
    with Squeezes whose axes it names 'squeeze_axes')."""
    ints = lambda name, a: numpy_helper.from_array(np.array(a, np.int64), name)  # noqa: E731
    inits = [
        ints("unsqueeze_axes", [0]),
        ints(axes_name, [0]),
        ints("i0", 0),
        ints("i1", 1),
        ints("i2", 2),
        numpy_helper.from_array(np.arange(4, dtype=np.float32), splits_name),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "unsqueeze_axes"], ["u"], name="unsqueeze"),
        helper.make_node("Squeeze", ["u", axes_name], ["s"], name="squeeze"),
        helper.make_node("Gather", ["s", "i0"], ["g0"], name="g0", axis=0),
        helper.make_node("Gather", ["s", "i1"], ["g1"], name="g1", axis=0),
        helper.make_node("Gather", ["s", "i2"], ["g2"], name="g2", axis=0),
        helper.make_node("Add", ["g0", "g1"], ["a"], name="add"),
        helper.make_node("Add", ["a", "g2"], ["b"], name="add2"),
        helper.make_node("Mul", ["b", splits_name], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "gathers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_files_constant_names_are_kept():
    """Constants from an ONNX file keep their names, even one ONNX Runtime's optimizers would
    also make up ('squeeze_axes'): the file itself has that name (only fuser's own literals
    from torch capture get a '.const' name)."""
    graph = fuser.from_onnx(_gather_model("squeeze_axes", "w"))
    model = fuser.to_onnx(graph)
    assert {"squeeze_axes", "w"} <= {t.name for t in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]


def test_fills_export_the_same_bytes_every_time():
    """A splat constant goes out as ConstantOfShape; naming its shape and node must not change
    the graph, or a second export comes out different."""
    fill = numpy_helper.from_array(np.array([0.5], np.float32))
    source = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("ConstantOfShape", ["shape"], ["fill"], name="cos", value=fill),
                helper.make_node("Add", ["x", "fill"], ["y"], name="add"),
            ],
            "fill",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
            [numpy_helper.from_array(np.array([4, 8], np.int64), "shape")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = fuser.from_onnx(source)
    first = fuser.to_onnx(graph).SerializeToString(deterministic=True)
    model = fuser.to_onnx(graph)
    assert model.SerializeToString(deterministic=True) == first
    assert "ConstantOfShape" in [n.op_type for n in model.graph.node]
    (got,) = session(model).run(None, {"x": np.ones((4, 8), np.float32)})
    np.testing.assert_array_equal(got, np.full((4, 8), 1.5, np.float32))
