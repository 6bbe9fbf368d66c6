"""`fuser prune` and the prune_channels pass on real files: JSON, tables, errors, data."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_prune import _small_cnn, ort_out
from util import ort_run, random_input

from fuser.cli import main
from fuser.passes import prune_channels
from fuser.serde.onnx import save_onnx


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "cnn.onnx"
    save_onnx(_small_cnn(), path)
    return path


def test_prune_json_and_written_model(model_file, tmp_path):
    out = tmp_path / "pruned.onnx"
    r = invoke("prune", model_file, out, "--ratio", "0.5", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert {"macs_before", "macs_after", "params_before", "params_after", "groups"} <= set(data)
    assert data["macs_after"] < data["macs_before"] and data["params_after"] < data["params_before"]
    (group,) = [g for g in data["groups"] if g["prunable"]]
    assert (group["channels"], group["kept"]) == (16, 8)
    assert group["macs_after"] < group["macs_before"]
    x = random_input((1, 3, 8, 8))
    (y,) = ort_run(onnx.load(str(out)), {"x": x})
    assert y.shape == (1, 5)


def test_prune_table(model_file, tmp_path):
    r = invoke(
        "prune", model_file, tmp_path / "p.onnx", "--ratio", "0.5", "--criterion", "obs", "--round-to", "4"
    )
    assert r.exit_code == 0, r.output
    assert "channel groups" in r.output and "16 -> 8" in r.output and "total" in r.output


def test_prune_taylor_with_data(model_file, tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=random_input((4, 3, 8, 8)), y=np.array([0, 1, 2, 3]))
    r = invoke(
        "prune",
        model_file,
        tmp_path / "p.onnx",
        "--ratio",
        "0.25",
        "--criterion",
        "taylor",
        "--data",
        data,
        "--round-to",
        "0",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["channels_removed"] == 4  # int(16 * 0.75) = 12 kept, no rounding


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ratio", "1.5"], "must be in [0, 1)"),
        (["--ratio", "0.5", "--round-to", "-1"], "--round-to -1"),
        (["--ratio", "0.5", "--criterion", "taylor"], "needs data"),
        (["--ratio", "0.5", "--layer-ratio", "conv"], "PATTERN=RATIO"),
    ],
)
def test_prune_user_errors_exit_2_with_one_line(model_file, tmp_path, args, message):
    r = CliRunner().invoke(main, ["prune", str(model_file), str(tmp_path / "p.onnx"), *args])
    assert r.exit_code == 2
    assert message in r.output and r.output.count("\n") <= 2  # one line (soft-wrapped)


def test_prune_rounds_to_8_by_default_and_prints_what_it_leaves(model_file, tmp_path, monkeypatch):
    """ratio 0.25 of 16 channels keeps int(16 * 0.75) = 12; the default --round-to 8 makes it 16
    (nothing pruned), --round-to 4 keeps 12, --round-to 0 keeps 12 too. The table names the count
    left, and a count that is not a multiple of the vector width (here faked as 8) is warned about."""
    from fuser.reports import hardware

    monkeypatch.setattr(hardware, "vector_isa", lambda: ("AVX2", 8))
    kept = {}
    for rt in ("8", "4", "0"):
        r = invoke("prune", model_file, tmp_path / "p.onnx", "--ratio", "0.25", "--round-to", rt, "--json")
        (group,) = [g for g in json.loads(r.output)["groups"] if g["prunable"]]
        kept[rt] = group["kept"]
    assert kept == {"8": 16, "4": 12, "0": 12}
    r = invoke("prune", model_file, tmp_path / "p.onnx", "--ratio", "0.25")
    assert r.exit_code == 0 and "16 -> 16" in r.output and "warning" not in r.output
    r = invoke("prune", model_file, tmp_path / "p.onnx", "--ratio", "0.25", "--round-to", "4")
    assert "channel counts left: 12" in r.output
    assert "not multiples of 8 (this CPU's AVX2 fp32 lanes" in r.output and "--round-to 8" in r.output


def test_prune_refuses_to_overwrite_input(model_file):
    r = CliRunner().invoke(main, ["prune", str(model_file), str(model_file), "--ratio", "0.5"])
    assert r.exit_code == 2 and "refusing to overwrite" in r.output


def test_prune_help_teaches():
    r = invoke("prune", "--help")
    assert r.exit_code == 0 and "Examples" in r.output and "--criterion" in r.output


def test_pass_prunes_in_place_and_ratio_zero_is_a_no_op():
    graph = _small_cnn()
    x = random_input((1, 3, 8, 8))
    want = ort_out(graph, x)
    same = prune_channels.run(graph.copy(), ratio=0.0)
    assert not same.changed and np.array_equal(ort_out(same.graph, x), want)
    result = prune_channels.run(graph, ratio=0.5, criterion="l1")
    assert result.changed and result.graph is graph
    assert result.stats["channels_removed"] == 8 and result.stats["groups_pruned"] == 1
    assert result.stats["params_after"] < result.stats["params_before"]
    assert ort_out(graph, x).shape == want.shape


def test_pass_in_the_optimize_pipeline():
    from fuser.passes.pipeline import run_passes

    graph, report = run_passes(_small_cnn(), ["fold_conv_bn", ("prune_channels", {"ratio": 0.5})])
    assert report.steps[-1].stats["channels_removed"] == 8


def test_a_refused_prune_prints_one_line_when_stderr_is_not_a_terminal(model_file, tmp_path):
    """The progress bar stays off when stderr is a pipe: the error is the only line (a blank
    line from the bar came first)."""
    import subprocess
    import sys

    args = [model_file, tmp_path / "p.onnx", "--ratio", "0.3", "--layer-ratio", "c*=1.5"]
    r = subprocess.run(
        [sys.executable, "-m", "fuser", "prune", *map(str, args)], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, repr(r.stderr)
