"""The CLI on real inputs: info, optimize, zoo list/export, help."""

import json
import subprocess
import sys

import onnx
from click.testing import CliRunner
from util import LIGHT_MODELS, ort_run, paddle_model, random_input, rel_err

from fuser.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_info_resnet50_json():
    """The issue's check: 25,557,032 params and about 4.1 GMACs at 224x224."""
    r = invoke("info", "zoo:resnet50", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["params"] == 25_557_032
    assert 4.05e9 <= data["macs"] <= 4.15e9
    assert data["nodes"] == sum(data["ops"].values())
    assert data["ops"]["Conv"] == 53 and data["ops"]["BatchNormalization"] == 53


def test_info_table_and_input_shape():
    p = paddle_model("ch_PP-OCRv4_det_infer.onnx")
    r = invoke("info", p, "--input-shape", "x:1,3,320,320")
    assert r.exit_code == 0, r.output
    assert "Conv" in r.output and "total" in r.output
    small = json.loads(invoke("info", p, "--input-shape", "1,3,320,320", "--json").output)
    big = json.loads(invoke("info", p, "--input-shape", "1,3,640,640", "--json").output)
    # MACs scale with area, except the squeeze-and-excite convs after global pooling
    assert 3.99 * small["macs"] < big["macs"] < 4 * small["macs"]
    assert big["params"] == small["params"]


def test_optimize_writes_equivalent_model(tmp_path):
    src = next(p for p in LIGHT_MODELS if "inception_v1" in p.name)
    out = tmp_path / "opt.onnx"
    r = invoke("optimize", src, out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["nodes_after"] < summary["nodes_before"]  # its Dropout goes
    assert [s["name"] for s in summary["steps"]][0] == "fold_constants"
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    feeds = {model.graph.input[0].name: random_input((1, 3, 224, 224))}
    assert rel_err(ort_run(out, feeds)[0], ort_run(src, feeds)[0]) <= 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_optimize_skip_and_passes(tmp_path):
    src = next(p for p in LIGHT_MODELS if "inception_v1" in p.name)
    r = invoke("optimize", src, tmp_path / "a.onnx", "--skip", "remove_identity", "--json")
    steps = [s["name"] for s in json.loads(r.output)["steps"]]
    assert "remove_identity" not in steps
    r = invoke("optimize", src, tmp_path / "b.onnx", "--passes", "remove_identity", "--json")
    assert [s["name"] for s in json.loads(r.output)["steps"]] == ["remove_identity"]


def test_zoo_list_and_export(tmp_path):
    r = invoke("zoo", "list", "--json")
    rows = json.loads(r.output)
    assert {row["name"] for row in rows} >= {"resnet18", "mobilenet_v2", "vit_tiny_patch16_224"}
    out = tmp_path / "sq.onnx"
    r = invoke("zoo", "export", "squeezenet1_1", out, "--input-shape", "1,3,96,96")
    assert r.exit_code == 0, r.output
    model = onnx.load(str(out))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 96]


def test_zoo_export_keeps_batchnorm(tmp_path):
    out = tmp_path / "r18.onnx"
    assert invoke("zoo", "export", "resnet18", out, "--input-shape", "1,3,64,64").exit_code == 0
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("BatchNormalization") == 20


def test_help_teaches():
    r = subprocess.run([sys.executable, "-m", "fuser", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("info", "optimize", "zoo"):
        assert cmd in r.stdout
    assert "zoo:resnet50" in r.stdout
    r = invoke("optimize", "--help")
    assert "--input-shape" in r.output and "fold_constants" in r.output


def test_optimize_with_prune(tmp_path):
    """`fuser optimize --prune R` runs structured pruning after the cleanups and BN folding."""
    src = paddle_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    out = tmp_path / "pruned.onnx"
    r = invoke("optimize", src, out, "--input-shape", "1,3,48,192", "--prune", "0.3", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    steps = [s["name"] for s in summary["steps"]]
    assert steps[-1] == "prune_channels" and steps.index("fold_conv_bn") < steps.index("prune_channels")
    assert summary["macs_after"] < summary["macs_before"]
    assert summary["params_after"] < summary["params_before"]
    (y,) = ort_run(out, {"x": random_input((1, 3, 48, 192))})
    assert y.shape == (1, 2)
