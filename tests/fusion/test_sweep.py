"""`fuser sweep` on a local 2-worker Ray: the grid, the outputs, and resuming from the cache."""

import csv
import json

import pytest
from click.testing import CliRunner
from test_fusion_graphs import random_dag, residual_block

import fuser
from fuser.cli import main
from fuser.cli.commands.sweep import buffer_sizes, model_hash, run_sweep
from fuser.fusion import build_fusion_graph, partition_fusion_graph

ray = pytest.importorskip("ray")  # an optional extra: fuser[ray]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_buffer_ranges():
    assert buffer_sizes("32KB:256KB:x2") == [32768, 65536, 131072, 262144]
    assert buffer_sizes("64KB,1MB") == [65536, 1 << 20]


def test_sweep_cli_writes_table_csv_and_plots(local_ray, tmp_path):
    models = []
    for k, graph in enumerate((residual_block(), random_dag(3, 30))):
        path = tmp_path / f"m{k}.onnx"
        fuser.save_onnx(graph, path)
        models.append(str(path))
    args = ["sweep", *models, "--buffer", "2KB:16KB:x2", "--style", "lbdf,brr", "--split", "explain,random"]
    args += ["--budget", "20", "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "out")]
    r = CliRunner().invoke(main, [*args, "--plot-dir", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "out.json").read_text())
    assert len(rows) == 2 * 4 * 2 * 2
    with open(tmp_path / "out.csv") as f:
        assert [int(r["dram_bytes"]) for r in csv.DictReader(f)] == [r["dram_bytes"] for r in rows]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["m0.png", "m1.png"]
    # every point is the plan fuser fuse makes for it
    fg = build_fusion_graph(fuser.optimize(models[1]).graph)
    row = next(
        r for r in rows if r["model"] == models[1] and r["style"] == "brr" and r["buffer_bytes"] == 4096
    )
    plan, _ = partition_fusion_graph(
        fg, buffer=4096, style="brr", search="nsga2", split=row["split"], budget=20
    )
    assert row["dram_bytes"] == plan.dram_bytes and row["groups"] == len(plan.groups)


def test_interrupted_sweep_resumes_from_its_cache(local_ray, tmp_path):
    fg = build_fusion_graph(random_dag(4, 30))
    fgs = {"dag": (fg, model_hash(fg))}
    config = {"style": "lbdf", "split": "explain", "search": "local", "budget": 20, "seed": 0, "gap": False}
    points = [("dag", {**config, "buffer_bytes": b}) for b in (1024, 2048, 4096, 8192)]
    cache = tmp_path / "cache"
    first = run_sweep(points[:2], fgs, cache)  # the run that was interrupted after two points
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    done = []
    full = run_sweep(points, fgs, cache, on_done=done.append)
    assert full[:2] == first and len(done) == 4
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name in stamps} == stamps  # reused
    assert len(list(cache.iterdir())) == 4
    fresh = run_sweep(points, fgs, tmp_path / "fresh")
    assert [r["dram_bytes"] for r in fresh] == [r["dram_bytes"] for r in full]


def test_a_deep_zoo_model_sweeps_on_ray(local_ray, tmp_path):
    """MobileNetV2 (its Values and Nodes link 100 ops deep) goes to the Ray workers whole: its
    graph pickled past Python's recursion limit before the graph's state was made flat."""
    args = ["sweep", "zoo:mobilenet_v2", "--input-shape", "1,3,64,64", "--buffer", "64KB", "--style", "lbdf"]
    args += ["--budget", "20", "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "out")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "out.json").read_text())
    fg = build_fusion_graph(fuser.optimize("zoo:mobilenet_v2", input_shapes=(1, 3, 64, 64)).graph)
    plan, _ = partition_fusion_graph(fg, buffer="64KB", style="lbdf", search="nsga2", budget=20)
    assert row["dram_bytes"] == plan.dram_bytes and row["groups"] == len(plan.groups)
