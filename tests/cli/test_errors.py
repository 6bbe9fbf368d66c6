"""Bad input: one-line errors naming file, node and op; CLI exit 2; nothing written."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from util import LIGHT_MODELS, paddle_model

from fuser.frontends.onnx import from_onnx
from fuser.ir import FuserError
from fuser.serde.onnx import save_onnx


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fuser", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def tiny_model(op="Relu", domain="", **attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node(op, ["x"], ["y"], name="the_node", domain=domain or None, **attrs)
    g = helper.make_graph([node], "tiny", [x], [y])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets)


def if_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    branch = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", ["x"], [f"{name}_out"])],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node(
        "If", ["c"], ["y"], name="branchy", then_branch=branch("then"), else_branch=branch("else")
    )
    return helper.make_model(
        helper.make_graph([node], "if", [x, c], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


def test_not_onnx_file(tmp):
    bad = tmp / "notes.onnx"
    bad.write_text("this is not a model")
    r = run_cli("optimize", bad, tmp / "out.onnx")
    assert_one_line_error(r, str(bad))
    assert not (tmp / "out.onnx").exists()


def test_truncated_file(tmp):
    src = LIGHT_MODELS[0].read_bytes()
    cut = tmp / "cut.onnx"
    cut.write_bytes(src[: len(src) // 2])
    r = run_cli("optimize", cut, tmp / "out.onnx")
    assert_one_line_error(r, str(cut))
    assert sorted(os.listdir(tmp)) == ["cut.onnx"]


def test_unknown_op(tmp):
    p = tmp / "custom.onnx"
    onnx.save(tiny_model("FancyOp"), p)
    r = run_cli("info", p)
    assert_one_line_error(r, str(p), "the_node", "FancyOp")
    p2 = tmp / "domain.onnx"
    onnx.save(tiny_model("Relu", domain="com.vendor"), p2)
    assert_one_line_error(run_cli("info", p2), "the_node", "com.vendor")


def test_if_node(tmp):
    p = tmp / "if.onnx"
    onnx.save(if_model(), p)
    r = run_cli("optimize", p, tmp / "out.onnx")
    assert_one_line_error(r, str(p), "branchy", "If")
    assert not (tmp / "out.onnx").exists()


def test_dynamic_dims_name_the_input():
    p = paddle_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    with pytest.raises(FuserError, match=r"input 'x' has dynamic dims .*--input-shape x:1,3,"):
        from_onnx(p)
    assert_one_line_error(run_cli("info", p), "input 'x'", "--input-shape")


def test_bad_input_shape_flag():
    p = LIGHT_MODELS[0]
    assert_one_line_error(run_cli("info", p, "--input-shape", "nope:1,3"), "nope")
    assert_one_line_error(run_cli("info", p, "--input-shape", "1,a,3"), "integers")


def test_a_shape_the_model_fixes_blames_the_shape_given(tmp):
    """A batch-1 Reshape is valid at the model's own input shape: a batch of 4 from
    --input-shape fails there, and the message says the model fixes that shape, not that the
    model is invalid."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 32])
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="flat")
    p = tmp / "batch1.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "b1", [x], [y], [shape])), p)
    assert from_onnx(p).outputs[0].shape == (1, 32)
    want = (
        r"node 'flat' \(Reshape\): reshapes 128 elements \[4, 2, 4, 4\] to \[1, 32\]: "
        r"the model fixes input 'x' at \[1, 2, 4, 4\], given \[4, 2, 4, 4\]; keep the declared shape"
    )
    with pytest.raises(FuserError, match=want) as e:
        from_onnx(p, input_shapes={"x": (4, 2, 4, 4)})
    assert "invalid model" not in str(e.value) and "fix the model" not in str(e.value)
    result = run_cli("fuse", p, "--input-shape", "x:4,2,4,4")
    assert_one_line_error(result, "the model fixes input 'x'", "flat")


def test_missing_file(tmp):
    assert_one_line_error(run_cli("info", tmp / "absent.onnx"), "absent.onnx")


def test_never_overwrites_input(tmp):
    p = tmp / "m.onnx"
    p.write_bytes(LIGHT_MODELS[0].read_bytes())
    before = p.read_bytes()
    assert_one_line_error(run_cli("optimize", p, p), "overwrite")
    assert p.read_bytes() == before
    with pytest.raises(FuserError, match="overwrite"):
        save_onnx(from_onnx(p), p, protect=[p])


def test_external_data_outside_folder_refused(tmp):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.ones(4, np.float32).tobytes(), raw=True)
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext", [x], [y], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    w = model.graph.initializer[0]
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    w.external_data.add(key="location", value="../../etc/passwd")
    inner = tmp / "inner"
    inner.mkdir()
    onnx.save(model, inner / "evil.onnx")
    r = run_cli("info", inner / "evil.onnx")
    assert_one_line_error(r, "outside the model's folder")


def test_external_data_inside_folder_loads(tmp):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32).tobytes(), raw=True)
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "ext", [x], [y], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(
        model,
        tmp / "ok.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ok.data",
        size_threshold=0,
    )
    graph = from_onnx(tmp / "ok.onnx")
    np.testing.assert_array_equal(graph.constants()[0].const, np.arange(4, dtype=np.float32))
