"""The report page in a real browser (headless Chromium): every group present with the numbers
of `--json`, the graph's boxes in their groups, a click on the graph selecting a group, the
same page with JavaScript off; screenshots kept under out/test-artifacts/ (not committed).

Default run: zoo MobileNetV2 at 64x64 (the session's captured graph, as an ONNX file) and
the PP-OCRv4 detector at 320x320, small search budgets. FUSER_HEAVY=1: `fuser report
zoo:mobilenet_v2` itself (captured at 224x224) and the detector at 640x640.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from browser import Browser
from click.testing import CliRunner
from util import HEAVY, ROOT, paddle_model
from zoo_cache import zoo_case

import fuser
from fuser.cli import main
from fuser.reports.summary import before_after

ARTIFACTS = Path(os.environ.get("FUSER_ARTIFACTS", ROOT / "out" / "test-artifacts"))

DOM_GROUPS = """[...document.querySelectorAll('article.group')].map(a => ({
  group: +a.dataset.group, rank: +a.dataset.rank, dram: +a.dataset.dramBytes, buffer: +a.dataset.bufferBytes,
  fits: a.dataset.fits === 'true', ops: +a.dataset.ops, macs: +a.dataset.macs,
  listed: a.querySelectorAll('ol.ops li').length}))"""
DOM_ROWS = """[...document.querySelectorAll('tr.group-row')].map(r => ({
  group: +r.dataset.group, rank: +r.dataset.rank, cells: [...r.cells].map(c => c.textContent.trim())}))"""
DOM_NODES = """[...document.querySelectorAll('.dag g.node')].map(n => ({
  id: n.id, cls: n.getAttribute('class'), fill: n.querySelector('path, polygon').getAttribute('fill')}))"""
DOM_SUMMARY = """Object.fromEntries([...document.querySelectorAll('table.before-after tr[data-quantity]')]
  .map(r => [r.dataset.quantity, [+r.dataset.before, +r.dataset.after]]))"""


def report(model, *args) -> tuple[Path, dict]:
    page = ARTIFACTS / f"{Path(str(model)).stem.replace(':', '_')}.html"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    r = CliRunner().invoke(main, ["report", str(model), "-o", str(page), "--json", *map(str, args)])
    assert r.exit_code == 0, r.output
    return page, json.loads(r.output)


def check_static(b: Browser, data: dict) -> None:
    """What the page shows without any script: groups, ranking, graph, summary, splits."""
    groups = {g["index"]: g for g in data["groups"]}
    dom = b.eval(DOM_GROUPS)
    assert sorted(d["group"] for d in dom) == sorted(groups)
    for d in dom:
        g = groups[d["group"]]
        assert (d["rank"], d["dram"], d["buffer"], d["fits"], d["macs"]) == (
            g["rank"], g["dram_bytes"], g["buffer_bytes"], g["fits"], g["macs"],
        )  # fmt: skip
        assert d["ops"] == d["listed"] == len(g["ops"])
    rows = b.eval(DOM_ROWS)
    assert [r["rank"] for r in rows] == list(range(1, len(groups) + 1))
    for r in rows:  # what a reader sees: KB of the exact bytes, fit in %
        g = groups[r["group"]]
        assert r["cells"][1] == f"G{g['index']}" and r["cells"][2] == str(len(g["ops"]))
        assert (
            r["cells"][4] == f"{g['buffer_bytes'] / 1024:.1f}"
            and r["cells"][6] == f"{g['dram_bytes'] / 1024:.1f}"
        )
        assert r["cells"][5] == f"{100 * g['fit']:.0f}%"
    nodes = b.eval(DOM_NODES)
    picture = data["graph"]["nodes"]
    assert len(nodes) == len(picture)
    fills: dict[int, set] = {}
    for n in nodes:
        i = int(n["id"].split("-")[1])
        assert f" g{picture[i]['group']}" in f" {n['cls']}"
        fills.setdefault(picture[i]["group"], set()).add(n["fill"])
    assert all(len(f) == 1 for f in fills.values())  # one colour per group
    assert b.eval(DOM_SUMMARY) == {k: list(v) for k, v in before_after(data).items()}
    assert b.eval("document.querySelectorAll('article.split').length") == len(data["splits"])
    assert b.eval("document.querySelectorAll('table.sweep tbody tr').length") == len(data["sweep"])
    figures = set(
        b.eval("[...document.querySelectorAll('figure')].filter(f => f.querySelector('svg')).map(f => f.id)")
    )
    assert ("sweep-plot" in figures) == bool(data["sweep"])
    assert {"roofline", "efficiency-gap", "waterline"} <= figures or not data["blocks"]["blocks"]


def fused_group_op(data: dict) -> tuple[int, int]:
    """(op index in the picture, its group) for the first op of the largest group."""
    g = max(data["groups"], key=lambda g: (len(g["ops"]), -g["index"]))
    first = g["ops"][0]
    return next(i for i, n in enumerate(data["graph"]["nodes"]) if n["name"] == first), g["index"]


def check_page(page: Path, data: dict) -> None:
    op, k = fused_group_op(data)
    members = sum(1 for n in data["graph"]["nodes"] if n["group"] == k)
    with Browser() as b:
        b.open(page)
        assert b.eval("document.documentElement.classList.contains('js')")
        check_static(b, data)
        b.screenshot(page.with_suffix(".png"))
        b.click(f"#op-{op}")  # a real click on the box in the SVG
        b.wait_for(f"document.body.dataset.selected === '{k}'")  # the hashchange handler ran
        assert b.eval("location.hash") == f"#group-{k}"
        assert b.eval(f"document.querySelectorAll('.dag .op.g{k}.hl').length") == members
        b.wait_for("!document.getElementById('card').hidden")  # the pointer is on the box
        assert b.eval("document.getElementById('card').textContent").startswith(f"G{k} ·")
        b.screenshot(page.with_name(page.stem + "-selected.png"))

        b.open(page, javascript=False)
        assert not b.eval("document.documentElement.classList.contains('js')")
        assert b.eval("getComputedStyle(document.querySelector('button.zoom')).display") == "none"
        check_static(b, data)
        b.click(f"#op-{op}")  # the SVG link alone selects the group's section
        b.wait_for(f"location.hash === '#group-{k}'")
        assert b.eval("document.querySelector(':target').id") == f"group-{k}"
        b.screenshot(page.with_name(page.stem + "-nojs.png"))


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "mobilenet_v2.onnx"
    fuser.save_onnx(zoo_case("mobilenet_v2")[2], path)
    return path


def test_mobilenet_page(mobilenet_file):
    page, data = report(mobilenet_file, "--budget", "200", "--sweep", "128KB,256KB,1MB")
    assert data["blocks"]["blocks"]  # MobileNetV2's MBConv blocks: the Lavin plots are drawn
    check_page(page, data)


def test_ppocr_detector_page():
    shape = "x:1,3,640,640" if HEAVY else "x:1,3,320,320"
    budget = "1000" if HEAVY else "150"
    page, data = report(
        paddle_model("ch_PP-OCRv4_det_infer.onnx"), "--input-shape", shape, "--budget", budget
    )
    assert data["import"]["nodes_in_file"] == 672
    check_page(page, data)


@pytest.mark.heavy
@pytest.mark.skipif(not HEAVY, reason="captures zoo MobileNetV2 at 224x224 (FUSER_HEAVY=1)")
def test_zoo_mobilenet_report_as_a_user_runs_it():
    page, data = report("zoo:mobilenet_v2")
    assert data["model"]["inputs"][0]["shape"] == [1, 3, 224, 224]
    check_page(page, data)


def test_an_unknown_report_option_is_named_with_the_ones_there_are():
    import fuser

    with pytest.raises(
        TypeError, match=r"fuser\.report\(\) got an unknown option 'bufer'; options: .*\bbuffer\b"
    ):
        fuser.report("zoo:resnet18", bufer="128KB")
