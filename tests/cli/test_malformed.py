"""Malformed models, hostile names and paths, and refused outputs through the CLI: each gives
exit 2 and one line on stderr, no traceback, nothing written, the inputs untouched.

Most cases run in-process (click's CliRunner; fast); a few run as real processes to see the
terminal's side (rich markup, control characters)."""

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fuser.cli.main import main
from fuser.serde import files

F = TensorProto.FLOAT


def conv_model(weight=None, group=None, x_type=F, x_channels=3, node_name="conv", extra_attr=None, opset=17):
    weight = np.ones((4, 3, 3, 3), np.float32) if weight is None else weight
    node = helper.make_node("Conv", ["x", "w"], ["y"], name=node_name, pads=[1, 1, 1, 1])
    for a in (group, extra_attr):
        if a is not None:
            node.attribute.append(a)
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", x_type, [1, x_channels, 8, 8])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def folding_model(nodes, inits, out_name="y"):
    """x + (something computed from constants), so that import folds it."""
    g = helper.make_graph(
        nodes + [helper.make_node("Add", ["x", "k"], [out_name], name="add")],
        "g",
        [helper.make_tensor_value_info("x", F, [1])],
        [helper.make_tensor_value_info(out_name, F, None)],
        [numpy_helper.from_array(a, n) for n, a in inits],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def write(tmp: Path, model, name="m.onnx") -> Path:
    p = tmp / name
    p.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return p


def short_raw_data():
    m = conv_model()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:10]
    return m


def unknown_data_type():
    m = conv_model()
    m.graph.initializer[0].data_type = 99
    return m


def non_utf8(field: bytes):
    m = conv_model(node_name="NODENAME", extra_attr=helper.make_attribute("ATTRNAME", 1))
    return m.SerializeToString().replace(field, b"N\xff\xfe" + field[3:])


def bad_reshape():
    return folding_model(
        [helper.make_node("Reshape", ["c", "s"], ["k"], name="reshape")],
        [("c", np.ones(6, np.float32)), ("s", np.array([4], np.int64))],
    )


def huge_constant_of_shape():
    return folding_model(
        [helper.make_node("ConstantOfShape", ["s"], ["k"], name="fill")],
        [("s", np.array([1 << 20, 1 << 20, 1 << 20], np.int64))],
    )


def with_opset(v):
    m = conv_model()
    m.opset_import[0].version = v
    return m


def with_ir(v):
    m = conv_model()
    m.ir_version = v
    return m


def external_data_short(tmp: Path) -> Path:
    m = conv_model()
    onnx.save(m, tmp / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    with open(tmp / "w.bin", "r+b") as f:
        f.truncate(50)
    return tmp / "m.onnx"


# name -> model (or a function of the folder making the files; returns the model path), needle
MALFORMED = {
    "short raw_data": (short_raw_data(), "tensor 'w'"),
    "unknown data_type": (unknown_data_type(), "element type 99"),
    "external data shorter than declared": (external_data_short, "shorter than declared"),
    "non-UTF-8 node name": (non_utf8(b"NODENAME"), "not valid UTF-8"),
    "non-UTF-8 attribute name": (non_utf8(b"ATTRNAME"), "not valid UTF-8"),
    "bad Reshape while folding": (bad_reshape(), "node 'reshape' (Reshape)"),
    "huge ConstantOfShape": (huge_constant_of_shape(), "node 'fill' (ConstantOfShape)"),
    "opset 0": (with_opset(0), "opset 0"),
    "opset 99": (with_opset(99), "opset 99"),
    "IR version 99": (with_ir(99), "IR version 99"),
    "float64 Conv weight": (conv_model(np.ones((4, 3, 3, 3), np.float64)), "node 'conv' (Conv)"),
    "string group": (conv_model(group=helper.make_attribute("group", "two")), "node 'conv' (Conv)"),
    "channel mismatch": (conv_model(x_channels=5), "node 'conv' (Conv)"),
    "STRING input": (conv_model(x_type=TensorProto.STRING), "node 'conv' (Conv)"),
    "unknown attribute": (conv_model(extra_attr=helper.make_attribute("bogus", 3)), "node 'conv' (Conv)"),
    "not protobuf": (b"this is not a model", "not a readable ONNX model"),
    "truncated": (conv_model().SerializeToString()[:40], "m.onnx"),
}


def snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(autouse=True)
def fresh_inputs(monkeypatch):
    monkeypatch.setattr(files, "_INPUTS", set())


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# prune and fuse share the import with optimize and info: a sample of the cases is enough there
COMMAND_CASES = [(cmd, case) for cmd in ("optimize", "info") for case in sorted(MALFORMED)] + [
    (cmd, case)
    for cmd in ("prune", "fuse")
    for case in ("short raw_data", "opset 99", "channel mismatch", "truncated")
]


@pytest.mark.parametrize("command,case", COMMAND_CASES)
def test_malformed_models(tmp_path, case, command):
    made, needle = MALFORMED[case]
    model = made(tmp_path) if callable(made) else write(tmp_path, made)
    before = snapshot(tmp_path)
    args = {
        "optimize": ["optimize", model, tmp_path / "out.onnx"],
        "info": ["info", model],
        "prune": ["prune", model, tmp_path / "out.onnx", "--ratio", "0.5"],
        "fuse": ["fuse", model, "--buffer", "64KB", "--save-plan", tmp_path / "plan.json"],
    }[command]
    assert_clean_error(invoke(*args), needle)
    assert snapshot(tmp_path) == before


@pytest.fixture
def good_model(tmp_path) -> Path:
    return write(tmp_path, conv_model())


def test_refused_outputs_write_nothing(tmp_path, good_model):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    os.link(good_model, tmp_path / "hardlink.onnx")
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(conv_model(), ext / "e.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    before = snapshot(tmp_path)
    cases = [
        (good_model, fifo, "not a regular file"),
        (good_model, tmp_path / "folder", "is a folder"),
        (good_model, good_model, "refusing to overwrite"),
        (good_model, tmp_path / "hardlink.onnx", "refusing to overwrite"),
        (ext / "e.onnx", ext / "w.bin", "refusing to overwrite"),
        (good_model, "", "empty"),
        (good_model, tmp_path / "absent" / "o.onnx", "does not exist"),
        (good_model, "/proc/fuser-out.onnx", "cannot write in folder"),
        (good_model, "/dev/null", "not a regular file"),
    ]
    for model, output, needle in cases:
        assert_clean_error(invoke("optimize", model, output), needle)
        assert_clean_error(invoke("prune", model, output, "--ratio", "0.3"), needle)
    assert_clean_error(invoke("fuse", good_model, "--buffer", "64KB", "--save-plan", good_model), "overwrite")
    assert snapshot(tmp_path) == before
    assert os.stat("/dev/null").st_rdev and not Path("/dev/null").is_file()


def test_full_disk_is_one_line(tmp_path, good_model, monkeypatch):
    real_fdopen = os.fdopen

    def full(fd, mode):
        f = real_fdopen(fd, mode)
        f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(os, "fdopen", full)
    before = snapshot(tmp_path)
    assert_clean_error(invoke("optimize", good_model, tmp_path / "out.onnx"), "No space left")
    assert snapshot(tmp_path) == before


def test_model_path_errors(tmp_path):
    assert_clean_error(invoke("info", tmp_path), "is a folder")
    assert_clean_error(invoke("info", tmp_path / "absent.onnx"), "no such file")


@pytest.mark.parametrize(
    "shape,needle",
    [("x:1,3,99999999999999999999,8", "from 1 to"), ("x:1,-3,8,8", "from 1 to"), ("x:1,3,8", "3 dims")],
)
def test_out_of_range_input_shape(good_model, shape, needle):
    assert_clean_error(invoke("info", good_model, "--input-shape", shape), needle)


def test_output_mode_follows_the_umask(tmp_path, good_model):
    old = os.umask(0o027)
    try:
        assert invoke("optimize", good_model, tmp_path / "out.onnx").exit_code == 0
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "out.onnx").st_mode & 0o777) == 0o640


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fuser", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_markup_in_paths_is_text(tmp_path):
    """A model in a folder named 'x[', an output named 'o[/].onnx', '[bold]' in a missing path."""
    folder = tmp_path / "x["
    (folder / "o[").mkdir(parents=True)
    model = write(folder, conv_model())
    r = run_cli("optimize", model, folder / "o[/].onnx")
    assert r.returncode == 0 and (folder / "o[" / "].onnx").is_file(), r.stderr
    assert "x[/o[/].onnx" in r.stdout.replace("\n", ""), r.stdout
    r = run_cli("info", model)
    assert r.returncode == 0 and "x[/m.onnx" in r.stdout, r.stderr
    r = run_cli("info", tmp_path / "[bold]absent.onnx")
    assert r.returncode == 2 and "[bold]absent.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_control_characters_and_long_names_are_shown_escaped(tmp_path):
    evil = write(tmp_path, conv_model(x_channels=5, node_name="\x1b[31mred\nline\u202e"), "evil.onnx")
    r = run_cli("info", evil)
    line = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in line and "\x1b" not in line and "\u202e" not in line, line
    assert "\\x1b[31mred\\nline\\u202e" in line
    long = write(tmp_path, conv_model(x_channels=5, node_name="n" * 100_000), "long.onnx")
    r = run_cli("info", long)
    assert r.returncode == 2 and len(r.stderr) < 2500 and "...(+99802 chars)" in r.stderr, r.stderr[:300]


def test_hostile_names_in_a_valid_model_print_as_text(tmp_path):
    """Markup and control characters in node, value and file names: every report command
    succeeds and shows them literally (escaped), in-process and with a real terminal stream."""
    w = np.ones((4, 3, 3, 3), np.float32)
    nodes = [
        helper.make_node("Conv", ["x[/]", "w"], ["c"], name="[bold]conv[/]", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["out\x1b[2J"], name="relu\nnext"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x[/]", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out\x1b[2J", F, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = write(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "[red]m.onnx")
    for args in (
        ["info", model, "--nodes"],
        ["optimize", model, tmp_path / "o[x].onnx"],
        ["prune", model, tmp_path / "p.onnx", "--ratio", "0.5"],
        ["fuse", model, "--buffer", "64KB", "--groups"],
    ):
        r = invoke(*args)
        assert r.exit_code == 0 and "\x1b" not in r.output, (args, r.output, r.exception)
        if args[0] == "info":  # (fuser.reports keeps a newline in a name as a line break in its cell)
            assert "[bold]conv[/]" in r.output and "out\\x1b[2J" in r.output, r.output
    r = run_cli("info", model, "--nodes")
    assert r.returncode == 0 and "[red]m.onnx" in r.stdout and "\\x1b[2J" in r.stdout, r.stdout + r.stderr
    assert "\x1b[2J" not in r.stdout


def test_input_value_fixes_a_value_dependent_shape(tmp_path):
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        "g",
        [
            helper.make_tensor_value_info("x", F, [2, 6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", F, None)],
    )
    model = write(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert_clean_error(invoke("info", model), "value-dependent", "--input-value shape:")
    r = invoke("info", model, "--input-value", "shape:3,4", "--json")
    assert r.exit_code == 0, r.output
    assert '"name": "y"' in r.output and "[\n        3,\n        4\n      ]" in r.output
    assert_clean_error(invoke("info", model, "--input-value", "shape:3,x"), "numbers")
    assert_clean_error(invoke("info", model, "--input-value", "nope:1"), "unknown input")
