"""`fuser fuse`: JSON, saved plans, sweeps, plots, user errors, help."""

import json
import os

import pytest
from click.testing import CliRunner
from test_fusion_graphs import random_dag

import fuser
from fuser.cli import main
from fuser.fusion import Plan


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuse") / "dag.onnx"
    fuser.save_onnx(random_dag(6, n_ops=30), str(path))
    return path


def fuse(*args):
    return CliRunner().invoke(main, ["fuse", *map(str, args)], catch_exceptions=False)


def test_json_has_the_plan_and_is_deterministic(model, tmp_path):
    args = (model, "--buffer", "4KB", "--search", "nsga2", "--budget", "60", "--seed", "3", "--json")
    first, second = fuse(*args), fuse(*args)
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    data = json.loads(first.output)
    assert data["dram_bytes"] <= data["no_fusion_dram_bytes"]
    assert data["buffer_bytes"] == 4096 and data["style"] == "lbdf"
    assert all({"ops", "buffer_bytes", "dram_bytes", "valid"} <= set(g) for g in data["groups"])
    assert all(g["valid"] for g in data["groups"])
    assert isinstance(data["splits"], list) and data["pareto"]
    saved = tmp_path / "plan.json"
    r = fuse(*args[:-1], "--save-plan", saved)
    assert r.exit_code == 0 and "wrote" in r.output
    assert Plan.load(saved).to_dict() == data


def test_table_shows_plan_and_explained_splits(model):
    # --no-gap: with the gap on, the proven optimum (no splits: its groups are valid as found)
    # replaces this small search's plan
    args = ("--buffer", "3KB", "--search", "random", "--budget", "30", "--style", "brr", "--groups")
    r = fuse(model, *args, "--no-gap")
    assert r.exit_code == 0, r.output
    assert "no fusion" in r.output and "this plan" in r.output and "groups" in r.output
    assert "layer fusion" in r.output  # the compiler's own fusion: the bar a plan must clear
    assert "splits of invalid groups" in r.output


def test_buffer_sweep_table_json_and_plot(model, tmp_path):
    png = tmp_path / "sweep.png"
    r = fuse(model, "--buffer", "1KB,4KB,64KB", "--search", "greedy", "--plot", png)
    assert r.exit_code == 0, r.output
    assert "DRAM against buffer size" in r.output and "64KB" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(fuse(model, "--buffer", "1KB,64KB", "--search", "greedy", "--json").output)
    drams = [p["dram_bytes"] for p in data["sweep"]]
    assert len(drams) == 2 and drams[1] <= drams[0]  # a bigger buffer never hurts greedy here


@pytest.mark.parametrize(
    "args,message",
    [
        (("--buffer", "lots"), "buffer size 'lots'"),
        (("--buffer", "1KB,2KB", "--save-plan", "p.json"), "single --buffer"),
        (("--gap-time", "0"), "--gap-time"),
    ],
)
def test_user_errors_are_one_line(model, args, message):
    r = CliRunner().invoke(main, ["fuse", str(model), *args])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output


def test_missing_model_and_help():
    r = CliRunner().invoke(main, ["fuse", "nowhere.onnx"])
    assert r.exit_code == 2 and "no such file" in r.output
    h = CliRunner().invoke(main, ["fuse", "--help"])
    assert h.exit_code == 0
    for text in (
        "Examples:",
        "--buffer 64KB,128KB,256KB,1MB",
        "--style",
        "--split",
        "--save-plan",
        "--gap-time",
    ):
        assert text in h.output


def test_gap_time_is_the_proofs_time_limit_for_each_buffer(model, monkeypatch):
    from fuser.fusion import exact

    asked = []
    real = exact.optimum_and_plan

    def recorded(cost, dram_bytes, time_limit, *rest):
        asked.append((cost.buffer_bytes, time_limit))
        return real(cost, dram_bytes, time_limit, *rest)

    monkeypatch.setattr(exact, "optimum_and_plan", recorded)
    r = fuse(model, "--buffer", "4KB,8KB", "--search", "greedy", "--gap-time", "7.5", "--json")
    assert r.exit_code == 0, r.output
    assert asked == [(4096, 7.5), (8192, 7.5)]
    assert all(row["optimum"]["bytes"] <= row["dram_bytes"] for row in json.loads(r.output)["sweep"])


def test_gap_prices_keeps_a_price_file_per_buffer(model, monkeypatch, tmp_path):
    """``--gap-prices DIR`` hands the proof of each buffer size its own file in DIR (made when
    missing), named for the model, style and size, so a second run goes on from the first."""
    from fuser.fusion import exact

    asked = []
    real = exact.optimum_and_plan

    def recorded(cost, dram_bytes, time_limit, block_ops, price_rounds, prices, starts):
        asked.append(prices)
        return real(cost, dram_bytes, time_limit, block_ops, price_rounds, prices, starts)

    monkeypatch.setattr(exact, "optimum_and_plan", recorded)
    folder = tmp_path / "proofs"
    r = fuse(model, "--buffer", "4KB,8KB", "--search", "greedy", "--style", "brr", "--gap-prices", folder)
    assert r.exit_code == 0, r.output
    assert folder.is_dir() and len(set(asked)) == 2
    assert [os.path.dirname(p) for p in asked] == [str(folder)] * 2
    assert [os.path.basename(p).split("-", 1)[1] for p in asked] == ["brr-4KB.json", "brr-8KB.json"]
