"""`fuser report` without a browser: its JSON against `fuser fuse` and hand counts, the same
bytes twice, a page that loads nothing from anywhere, the trace of measured times, and flags
refused before any capture."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from util import HEAVY

import fuser
from fuser.analysis import node_weights, peak_activation_bytes
from fuser.analysis.shapes import infer_shapes
from fuser.cli import main
from fuser.ir import Graph


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def conv_bn_net(long_names: bool = False, seed: int = 0) -> Graph:
    """x[1,3,16,16] -> 3 x (conv3x3 -> BN -> relu), a residual add, global pool, flatten, gemm: 13 nodes.
    With ``long_names`` every node is named like a deep module path (over 80 characters)."""
    rng = np.random.default_rng(seed)
    g = Graph("convbn")
    x = g.add_input("x", (1, 3, 16, 16))
    prefix = (
        "/backbone/stage_with_a_very_long_and_descriptive_module_name/residual_block_number_"
        if long_names
        else "n"
    )

    def const(*shape):
        return g.const(rng.standard_normal(shape).astype(np.float32) * 0.1)

    def unit(h, c_in, c_out, k):
        w = const(c_out, c_in, 3, 3)
        h = g.add_node(
            "Conv", [h, w], name=f"{prefix}{k}/conv", attrs={"kernel_shape": [3, 3], "pads": [1] * 4}
        )
        bn = [
            const(c_out),
            const(c_out),
            const(c_out),
            g.const(np.abs(rng.standard_normal(c_out)).astype(np.float32) + 0.5),
        ]
        h = g.add_node("BatchNormalization", [h.output, *bn], name=f"{prefix}{k}/bn").output
        return g.add_node("Relu", [h], name=f"{prefix}{k}/relu").output

    a = unit(x, 3, 16, 0)
    b = unit(a, 16, 16, 1)
    c = unit(b, 16, 16, 2)
    s = g.add_node("Add", [a, c], name=f"{prefix}3/add").output
    p = g.add_node("GlobalAveragePool", [s], name=f"{prefix}4/pool").output
    f = g.add_node("Flatten", [p], name=f"{prefix}5/flatten", attrs={"axis": 1}).output
    y = g.add_node("Gemm", [f, const(10, 16), const(10)], name=f"{prefix}6/fc", attrs={"transB": 1}).output
    g.outputs = [y]
    infer_shapes(g)
    return g


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "convbn.onnx"
    fuser.save_onnx(conv_bn_net(), path)
    return path


def no_fusion_dram(graph: Graph, element_bytes: int = 1) -> int:
    """The no-fusion baseline by hand: every op alone reads its weights and its distinct
    activation inputs and writes its outputs that anything reads (or the graph returns)."""
    outputs = {id(v) for v in graph.outputs}
    total = 0
    for n in graph.nodes:
        total += sum(v.numel for v, _ in node_weights(n))
        total += sum({id(v): v.numel for v in n.inputs if v is not None and not v.is_const}.values())
        total += sum(v.numel for v in n.outputs if v.uses or id(v) in outputs)
    return total * element_bytes


def test_json_equals_fuse_and_hand_counts(small_model):
    args = ("--budget", "150", "--buffer", "8KB", "--seed", "2")
    r = invoke("report", small_model, "--json", "--sweep", "4KB,8KB,64KB", *args)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    plan = json.loads(invoke("fuse", small_model, "--json", *args).output)
    # the report's plan is `fuser fuse`'s plan
    assert [g["ops"] for g in data["groups"]] == [g["ops"] for g in plan["groups"]]
    assert [g["dram_bytes"] for g in data["groups"]] == [g["dram_bytes"] for g in plan["groups"]]
    assert data["plan"]["dram_bytes"] == plan["dram_bytes"] == sum(g["dram_bytes"] for g in data["groups"])
    assert data["plan"]["peak_buffer_bytes"] == max(g["buffer_bytes"] for g in plan["groups"])
    ranks = sorted(data["groups"], key=lambda g: g["rank"])
    assert [g["dram_bytes"] for g in ranks] == sorted((g["dram_bytes"] for g in ranks), reverse=True)
    # before: the file as given (13 nodes, BN kept); after: BN folded (10 nodes)
    raw = fuser.from_onnx(small_model)
    given, optimized = data["summary"]["stages"]
    assert (given["nodes"], optimized["nodes"]) == (13, 10)
    assert given["macs"] == 1 * 16 * 16 * 16 * (3 * 9) + 2 * (16 * 16 * 16 * 16 * 9) + 10 * 16
    assert given["no_fusion_dram_bytes"] == no_fusion_dram(raw)
    assert optimized["no_fusion_dram_bytes"] == data["plan"]["no_fusion_dram_bytes"]
    assert data["summary"]["fused_dram_bytes"] == plan["dram_bytes"]
    assert [r["buffer_bytes"] for r in data["sweep"]] == [4096, 8192, 65536]
    # the picture: every op once, in its group
    owner = {op: g["index"] for g in data["groups"] for op in g["ops"]}
    assert {n["name"]: n["group"] for n in data["graph"]["nodes"]} == owner
    assert data["profile"] is None and data["latency"] is None  # nothing timed without --measure


def test_report_plans_over_layers_as_fuse_does(small_model, tmp_path):
    args = ("--budget", "150", "--buffer", "2KB", "--seed", "2")
    layered = json.loads(invoke("fuse", small_model, "--json", "--layers", *args).output)
    ops = json.loads(invoke("fuse", small_model, "--json", *args).output)
    page = tmp_path / "r.html"
    r = invoke(
        "report", small_model, "--json", "-o", page, "--sweep", "none", "--no-graph", "--layers", *args
    )
    data = json.loads(r.output)
    text = re.sub(r"<[^>]+>", "", page.read_text())
    assert f"{layered['layer_fusion_dram_bytes'] / 1e6:.2f} MB with layer fusion" in text
    assert "planned over such layers" in text
    assert [g["ops"] for g in data["groups"]] == [g["ops"] for g in layered["groups"]]
    assert data["plan"]["dram_bytes"] == layered["dram_bytes"] <= layered["layer_fusion_dram_bytes"]
    # at 2 KB a 3x3 conv and its ReLU do not fit as two ops (a row more): op by op the ReLUs
    # run alone and the plan moves more than layer fusion
    assert ops["dram_bytes"] > layered["layer_fusion_dram_bytes"] == ops["layer_fusion_dram_bytes"]


def test_same_inputs_same_bytes_and_nothing_loaded_from_anywhere(small_model, tmp_path, monkeypatch):
    pages = []
    for run in ("a", "b"):  # the same command (it is on the page) in two folders
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        r = invoke(
            "report", small_model, "-o", "r.html", "--budget", "100", "--sweep", "4KB,64KB", "--buffer", "8KB"
        )
        assert r.exit_code == 0, r.output
        assert "wrote r.html" in r.output and "before -> after" in r.output
        pages.append((tmp_path / run / "r.html").read_bytes())
    assert pages[0] == pages[1]
    html = pages[0].decode()
    # self-contained: no URL, stylesheet, script or font fetched at view time
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    assert not re.search(r"url\((?!#)", html)  # only references inside the page (SVG clip paths)
    assert html.count("<script>") == 1 and "<script src" not in html
    assert '<svg width="' in html  # the graph drawn by Graphviz, inline


def test_measure_latency_profile_and_trace(small_model, tmp_path):
    trace = tmp_path / "trace.json"
    r = invoke(
        "report", small_model, "--json", "--measure", "--repeat", "5", "--budget", "60", "--sweep", "none",
        "--buffer", "8KB", "--trace", trace, "--device", "cpu",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    rows = {(row["backend"], row["stage"]): row for row in data["latency"]["rows"]}
    assert {
        ("onnxruntime", "as given"),
        ("onnxruntime", "optimized"),
        ("torch (fuser's module)", "optimized"),
    } == set(rows)
    assert (
        rows[("onnxruntime", "optimized")]["vs_ort"] == 1.0 and rows[("onnxruntime", "as given")]["runs"] == 5
    )
    assert [s.get("ort_ms") for s in data["summary"]["stages"]] == [
        rows[("onnxruntime", "as given")]["median_ms"],
        rows[("onnxruntime", "optimized")]["median_ms"],
    ]
    owner = {op: g["index"] for g in data["groups"] for op in g["ops"]}
    events = json.loads(trace.read_text())["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and e["pid"] == 1 and e["cat"] != "fusion group"]
    # one call of the optimized model: every op exactly once, charged to its group
    assert sorted(e["args"]["node"] for e in ops) == sorted(owner)
    assert all(e["args"]["fusion_group"] == owner[e["args"]["node"]] for e in ops)
    spans = {e["name"]: e for e in events if e.get("cat") == "fusion group"}
    assert set(spans) == {f"G{k}" for k in set(owner.values())}
    for e in ops:  # each op inside its group's span
        span = spans[f"G{owner[e['args']['node']]}"]
        assert span["ts"] <= e["ts"] and e["ts"] + e["dur"] <= span["ts"] + span["dur"]
    assert all(g["measured_ms"] > 0 for g in data["groups"])


def test_flags_are_refused_before_any_capture(monkeypatch):
    from fuser.cli.commands import report
    from fuser.reports import dag

    def no_capture(*_):
        raise AssertionError("captured before checking the flags")

    monkeypatch.setattr(report, "load_graph", no_capture)
    for args, message in (
        (["--trace", "t.json", "-o", "r.html"], "--trace writes measured times"),
        (["--json", "--buffer", "lots"], "buffer size 'lots'"),
        (["--json", "--sweep", "64KB,x"], "buffer size 'x'"),
        ([], "say where the report goes"),
    ):
        r = CliRunner().invoke(main, ["report", "zoo:resnet18", *args])
        assert r.exit_code == 2 and message in r.output, r.output
        assert "Traceback" not in r.output
    monkeypatch.setattr(dag.shutil, "which", lambda _: None)  # no Graphviz on this machine
    r = CliRunner().invoke(main, ["report", "zoo:resnet18", "-o", "r.html"])
    assert r.exit_code == 2 and "apt-get install graphviz" in r.output and "--no-graph" in r.output


def test_model_text_is_escaped_on_the_page_and_in_the_terminal(tmp_path):
    g = conv_bn_net()
    g.nodes[0].name = '<script>alert(1)</script>"&'
    g.nodes[2].name = "[bold]relu[/]\x1b[31m"
    path = tmp_path / "odd.onnx"
    fuser.save_onnx(g, path)
    page = tmp_path / "odd.html"
    r = invoke("report", path, "-o", page, "--budget", "30", "--sweep", "none", "--buffer", "8KB")
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;" in html
    assert "\x1b" not in html and "[bold]relu[/]\\x1b[31m" in html  # the escape character shown, not sent
    assert '<script>alert(1)</script>"&' in r.output  # the terminal prints the name as it is, not as markup


@pytest.mark.heavy
@pytest.mark.skipif(not HEAVY, reason="FUSER_HEAVY=1: a TVM build")
def test_compile_times_every_group_in_tvm(small_model, tmp_path):
    import native  # the TVM build runs in a child process: a native crash fails this test only

    trace = tmp_path / "t.json"
    r = native.run_cli(
        "report", small_model, "--json", "--compile", "--repeat", "3", "--budget", "60", "--sweep", "none",
        "--buffer", "8KB", "--trace", trace,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    kernels = {k["group"]: k["median_ms"] for k in data["tvm_kernels"] if k["group"] is not None}
    assert {g["index"]: g["tvm_ms"] for g in data["groups"]} == kernels  # one TVM kernel per group
    # built as bench --plan builds it: the plan's groups get depth-first kernels (without the
    # plan's tile hints ResNet-18 at 64x64 ran 20x slower than bench --plan on the same plan)
    assert "depth-first" in {k["schedule"] for k in data["tvm_kernels"] if k["group"] is not None}
    tvm = [e for e in json.loads(trace.read_text())["traceEvents"] if e["pid"] == 2 and e["ph"] == "X"]
    assert sorted(e["args"]["fusion_group"] for e in tvm) == sorted(kernels)


def test_peak_activation_bytes_by_hand():
    """x(4 KB) -> a(8 KB) -> b(8 KB) -> add(a, b)(8 KB): while b runs, x is gone and a, b live;
    while add runs, a, b and the output live: 24 KB."""
    g = Graph("chain")
    x = g.add_input("x", (1, 1024))
    two = g.const(np.full((1, 2048), 1.0, np.float32))
    a = g.add_node("Mul", [g.add_node("Concat", [x, x], attrs={"axis": 1}).output, two]).output
    b = g.add_node("Relu", [a]).output
    g.outputs = [g.add_node("Add", [a, b]).output]
    infer_shapes(g)
    # concat: x (4 KB) + its output (8 KB) = 12 KB; mul: concat out + a = 16 KB; relu: a + b = 16 KB;
    # add: a + b + y = 24 KB
    assert peak_activation_bytes(g) == 24 * 1024


def test_optimize_counts_folding_at_import(tmp_path):
    from util import paddle_model

    path = paddle_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    model = onnx.load(str(path), load_external_data=False)
    in_file = len(model.graph.node)
    constants = sum(n.op_type == "Constant" for n in model.graph.node)
    r = invoke("optimize", path, tmp_path / "o.onnx", "--input-shape", "x:1,3,48,192", "--json")
    data = json.loads(r.output)
    assert data["import"]["nodes_in_file"] == in_file == 566 and data["import"]["constant_nodes"] == constants
    # the rest of the import's shrinkage is folded shape subgraphs
    assert in_file - constants - data["import"]["folded"] == data["nodes_before"] == data["import"]["nodes"]
    r = invoke("optimize", path, tmp_path / "o.onnx", "--input-shape", "x:1,3,48,192")
    assert (
        f"nodes {in_file} -> {data['nodes_after']} ({in_file} -> {data['nodes_before']} at import" in r.output
    )
