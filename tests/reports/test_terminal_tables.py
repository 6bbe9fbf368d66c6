"""Terminal output that reads at a glance: full names when piped, groups ranked by DRAM with
their fit, ops over the buffer never 'valid', the sweep plot with one buffer size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_report_cli import conv_bn_net
from util import ROOT

import fuser
from fuser.cli import main


@pytest.fixture(scope="module")
def long_named(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "long.onnx"
    fuser.save_onnx(conv_bn_net(long_names=True), path)
    return path


def test_piped_fuse_shows_every_name_in_full(long_named):
    """`fuser fuse ... | cat`: stdout is a pipe; names of 80+ characters come out whole."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuser",
            "fuse",
            str(long_named),
            "--buffer",
            "1KB",
            "--top",
            "0",
            "--budget",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    names = [n.name for n in fuser.optimize(fuser.from_onnx(long_named)).graph.nodes]
    assert min(map(len, names)) > 80
    plan = json.loads(
        CliRunner()
        .invoke(main, ["fuse", str(long_named), "--buffer", "1KB", "--budget", "50", "--json"])
        .output
    )
    for g in plan["groups"]:  # every group's first and last op, whole, on one line
        assert g["ops"][0] in run.stdout and g["ops"][-1] in run.stdout
    for s in plan["splits"]:
        for c in s["culprits"][:5]:
            assert c["op"] in run.stdout
    assert "…" not in run.stdout and max(map(len, run.stdout.splitlines())) > 160


def test_groups_ranked_by_dram_with_fit_and_over_buffer_not_valid(long_named):
    args = ["fuse", str(long_named), "--buffer", "1KB", "--budget", "50"]
    plan = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    text = CliRunner().invoke(main, [*args, "--top", "0"]).output
    over = [g for g in plan["groups"] if not g["fits"]]
    assert over, "the 16x16x3x3 convs need more than 1KB alone"
    rows = [line for line in text.splitlines() if line.startswith("│") and "/backbone" in line]
    rows = rows[: len(plan["groups"])]  # the groups table comes before the splits table
    table = [[c.strip() for c in line.strip("│").split("│")] for line in rows]
    # rank, group, ops, first .. last, buffer KB, fit %, DRAM KB, % of DRAM, fits
    assert [int(r[0]) for r in table] == list(range(1, len(plan["groups"]) + 1))
    drams = [float(r[6]) for r in table]
    assert drams == sorted(drams, reverse=True)
    for r in table:
        g = plan["groups"][int(r[1])]
        assert r[4] == f"{g['buffer_bytes'] / 1024:.1f}" and r[6] == f"{g['dram_bytes'] / 1024:.1f}"
        assert r[5] == f"{100 * g['buffer_bytes'] / plan['buffer_bytes']:.0f}"
        assert r[8].startswith("yes") == g["fits"]  # over the buffer: 'no', whatever 'valid' says
    assert all(int(r[5]) > 100 for r in table if r[8].startswith("no"))
    peak = max(g["buffer_bytes"] for g in plan["groups"])  # every group, the ones over included
    assert f"{peak / 1024:.1f}" in text.split("groups by DRAM")[0]
    top2 = CliRunner().invoke(main, [*args, "--top", "2"]).output
    assert f"top 2 of {len(plan['groups'])}" in top2


def test_sweep_plot_with_one_buffer_has_the_no_fusion_line():
    from fuser.reports.plots import sweep_figure

    rows = [{"buffer_bytes": 262144, "dram_bytes": 4_000_000, "no_fusion_dram_bytes": 29_000_000}]
    fig = sweep_figure(rows, "one size")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("no fusion") and "fused plan" in labels
    no_fusion = ax.get_lines()[0]
    assert list(no_fusion.get_ydata()) == [29.0, 29.0]  # a line across the plot, not a lone dot
    lo, hi = ax.get_xlim()
    assert lo < 256 < hi and hi / lo > 2  # the one size in the middle of a readable axis
