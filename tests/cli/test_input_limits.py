"""Inputs at and past the limits: huge and zero-sized shapes, out-of-range seeds and times,
damaged external-data entries, inputs too small for a model. Each is either handled exactly or
refused with exit 2 and one line naming the file, node and value; none is an internal error."""

import os
import resource
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_errors import run_cli
from test_malformed import (  # noqa: F401 (fresh_inputs: an autouse fixture)
    F,
    assert_clean_error,
    conv_model,
    fresh_inputs,
    invoke,
    write,
)

from fuser.ir import FuserError, Value
from fuser.serde.onnx import checker_error

BIG = 2**31 - 1  # the largest dim --input-shape accepts


def dynamic_conv(shape=("N", 3, "H", "W")):
    """conv_model with the input's dims as given (names are dynamic)."""
    m = conv_model()
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", F, list(shape)))
    return m


def usage_error(result, option):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output


# ---- sizes ----------------------------------------------------------------------------------
def test_counts_are_exact_past_int64(tmp_path):
    model = write(tmp_path, dynamic_conv())
    r = invoke("info", model, "--input-shape", f"x:1,3,{BIG},{BIG}", "--json")
    assert r.exit_code == 0, r.output
    out_numel = 4 * BIG * BIG
    assert f'"macs": {out_numel * 3 * 3 * 3},' in r.output  # 4.98e20: past int64
    assert f'"activation_bytes": {out_numel * 4},' in r.output
    assert Value("v", (1, 4, BIG, BIG)).numel == out_numel


def test_fuse_refuses_a_tensor_over_the_limit(tmp_path):
    model = write(tmp_path, dynamic_conv())
    r = invoke("fuse", model, "--input-shape", f"x:1,3,{BIG},{BIG}", "--no-gap", "--budget", "10")
    assert_clean_error(r, str(model), "input 'x'", f"1x3x{BIG}x{BIG}", "over fusion's limit")


def test_fuse_plans_a_tall_tensor_without_a_table_per_row(tmp_path):
    """2³¹ rows: the row-need table of the cost model once took a tuple entry per row (minutes
    and tens of GB); under a 3 GiB address-space cap it must finish at once."""
    model = write(tmp_path, dynamic_conv())

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    # one BLAS/OpenMP thread: their per-thread buffers reserve address space by core count,
    # and CI's machine may have many more cores than this one
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run(
        [sys.executable, "-m", "fuser", "fuse", model, "--input-shape", f"x:1,3,{BIG},8", "--no-gap"]
        + ["--budget", "10", "--json"],
        capture_output=True,
        text=True,
        preexec_fn=cap_memory,
        env={**os.environ, **threads},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_zero_sized_tensor(tmp_path):
    """A dim 0 declared in the model: info reports it; fusion refuses it, naming the tensor."""
    model = write(tmp_path, dynamic_conv((1, 3, 0, 8)))
    r = invoke("info", model, "--json")
    assert r.exit_code == 0 and '"macs": 0,' in r.output, r.output
    for args in (["fuse", model, "--no-gap"], ["report", model, "--json", "--sweep", "none"]):
        assert_clean_error(invoke(*args), str(model), "input 'x'", "1x3x0x8", "no elements")


# ---- option ranges --------------------------------------------------------------------------
def test_seeds_are_bounded(tmp_path):
    model = write(tmp_path, conv_model())
    usage_error(invoke("fuse", model, "--no-gap", "--seed", "-1"), "--seed")
    usage_error(
        invoke("zoo", "export", "squeezenet1_1", tmp_path / "z.onnx", "--seed", str(10**23)), "--seed"
    )
    assert not (tmp_path / "z.onnx").exists()
    r = invoke("fuse", model, "--no-gap", "--search", "random", "--budget", "5", "--seed", str(2**63 - 1))
    assert r.exit_code == 0, r.output
    usage_error(invoke("sweep", model, "--buffer", "64KB", "--seed", "-1"), "--seed")


def test_thread_and_row_counts_are_bounded(tmp_path):
    """A huge --threads reached torch.set_num_threads and died ("double free or corruption",
    exit 134); a negative --kernels silently dropped the slowest row."""
    model = write(tmp_path, conv_model())
    usage_error(invoke("bench", model, "--backends", "tvm", "--threads", "100000"), "--threads")
    usage_error(invoke("report", model, "--threads", "100000"), "--threads")
    usage_error(invoke("bench", model, "--backends", "tvm", "--kernels", "-1"), "--kernels")


def test_a_graph_without_macs_says_0_macs(tmp_path):
    """human(0, 'MACs') is '0 MACs' (the totals wrote '0MACs')."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 3, 4, 4])],
    )
    model = write(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    r = invoke("info", model)
    assert r.exit_code == 0 and "1 nodes, 0 MACs," in r.output, r.output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    model = write(tmp_path, conv_model())
    usage_error(invoke("fuse", model, "--gap-time", value), "--gap-time")
    usage_error(invoke("optimize", model, tmp_path / "o.onnx", "--prune", value), "--prune")
    assert not (tmp_path / "o.onnx").exists()


# ---- external data --------------------------------------------------------------------------
def external_model(tmp_path, location="w.bin", **entry):
    """conv_model with its weight in ``location`` (432 bytes), the entry's keys overridden."""
    m = conv_model()
    w = m.graph.initializer[0]
    (tmp_path / "w.bin").write_bytes(w.raw_data or numpy_helper.to_array(w).tobytes())
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    w.ClearField("float_data")
    for key, value in {"location": location, "offset": "0", "length": "432", **entry}.items():
        e = w.external_data.add()
        e.key, e.value = key, value
    return write(tmp_path, m)


def test_external_data_entries(tmp_path):
    os.mkfifo(tmp_path / "pipe.bin")
    (tmp_path / "folder").mkdir()
    cases = [
        ({"length": "abc"}, "external data length 'abc' is not a number of bytes"),
        ({"offset": "-5"}, "external data offset -5 is negative"),
        ({"offset": "1x"}, "external data offset '1x' is not a number of bytes"),
        ({"location": "pipe.bin"}, "'pipe.bin', which is not a regular file"),
        ({"location": "folder"}, "'folder', which is a folder"),
        ({"location": "absent.bin"}, "'absent.bin', which is missing"),
        ({"offset": "100"}, "shorter than declared (432 bytes, needs 532)"),
    ]
    for entry, needle in cases:
        model = external_model(tmp_path, **entry)
        assert_clean_error(invoke("info", model), str(model), "tensor 'w'", needle)
    assert invoke("info", external_model(tmp_path)).exit_code == 0


# ---- models that are not what they claim ----------------------------------------------------
def test_missing_initializer_is_named(tmp_path):
    m = conv_model()
    del m.graph.initializer[:]
    model = write(tmp_path, m)
    assert_clean_error(
        invoke("info", model), "node 'conv' (Conv) reads 'w', which no node, input or initializer defines"
    )


def out_of_order():
    nodes = [
        helper.make_node("Relu", ["x2"], ["x1"], name="r1"),
        helper.make_node("Add", ["x", "x1"], ["x2"], name="a1"),
    ]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [vi("x", F, [1, 3, 8, 8])], [vi("x2", F, [1, 3, 8, 8])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_checker_message_names_node_and_op(tmp_path):
    with pytest.raises(onnx.checker.ValidationError) as caught:
        onnx.checker.check_model(out_of_order())
    assert "name: r1 OpType: Relu" in str(caught.value)  # onnx's own wording
    assert str(checker_error("m.onnx", caught.value)).startswith("m.onnx: node 'r1' (Relu): invalid model:")
    assert_clean_error(invoke("info", write(tmp_path, out_of_order())), "node 'r1' (Relu)")


def test_node_less_model(tmp_path):
    vi = helper.make_tensor_value_info("x", F, [1, 3, 8, 8])
    g = helper.make_graph([], "g", [vi], [vi])
    model = write(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert_clean_error(invoke("info", model), str(model), "has no nodes")


# ---- torch capture --------------------------------------------------------------------------
def test_input_too_small_for_a_torch_model(capfd):
    torch = pytest.importorskip("torch")
    from fuser.api import from_torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2))
    with pytest.raises(FuserError, match=r"input 1x3x3x3 is too small for this model: .*output size"):
        from_torch(net, torch.zeros(1, 3, 3, 3))
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "fake_tensor" not in captured.err, captured.err[:500]


def test_zoo_input_too_small(tmp_path):
    r = run_cli("zoo", "export", "squeezenet1_1", tmp_path / "z.onnx", "--input-shape", "1,3,8,8")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "input 1x3x8x8 is too small for this model" in lines[0], r.stderr[:2000]
    assert "data-dependent" not in lines[0] and not (tmp_path / "z.onnx").exists()


# ---- help -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["info"], ["optimize"], ["zoo", "list"], ["zoo", "export"]])
def test_help_has_examples(command):
    r = invoke(*command, "--help")
    assert r.exit_code == 0
    examples = r.output.split("Examples:", 1)[1].split("Options:")[0]
    lines = [ln.split("#")[0].split() for ln in examples.strip().splitlines()]
    assert lines and all(ln[: 1 + len(command)] == ["fuser", *command] for ln in lines), examples


def test_options_that_would_be_silently_ignored_are_refused(tmp_path):
    """An input shape given twice (the last one won), --data without taylor (ignored),
    --passes naming no pass (ran none)."""
    model = write(tmp_path, conv_model())
    r = invoke("info", model, "--input-shape", "x:1,3,8,8", "--input-shape", "x:1,3,16,16")
    assert_clean_error(r, "--input-shape", "'x' is given twice")
    data = tmp_path / "x.npy"
    data.write_bytes(b"")
    r = invoke("prune", model, tmp_path / "p.onnx", "--ratio", "0.5", "--data", data)
    assert_clean_error(r, "--data feeds --criterion taylor only")
    r = invoke("optimize", model, tmp_path / "o.onnx", "--passes", ",")
    assert_clean_error(r, "--passes: name at least one pass")
    assert not (tmp_path / "p.onnx").exists() and not (tmp_path / "o.onnx").exists()


def test_a_plan_with_an_op_in_two_groups_is_refused(tmp_path):
    import json

    model = write(tmp_path, conv_model())
    plan = tmp_path / "plan.json"
    r = invoke("fuse", model, "--no-gap", "--save-plan", plan)
    assert r.exit_code == 0, r.output
    data = json.loads(plan.read_text())
    data["groups"].append(dict(data["groups"][0]))
    plan.write_text(json.dumps(data))
    r = invoke("bench", model, "--backends", "ort,tvm", "--plan", plan, "--repeat", "1")
    assert_clean_error(r, "plan.json", "is in groups 0 and 1")
