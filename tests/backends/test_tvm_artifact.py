"""`fuser compile` / `fuser run` and the artifact's load: a build on disk gives ONNX
Runtime's numbers, refuses other versions, and follows a fusion plan."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from util import ort_run_graph, rel_err

import fuser

pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")
from test_tvm_backend import _small_cnn  # noqa: E402

from fuser.backends.tvm import artifact as tvm_artifact  # noqa: E402
from fuser.cli import main  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small CNN saved as ONNX (BN-free after optimize), an input and ORT's output."""
    d = tmp_path_factory.mktemp("tvm_art")
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 16, 16),)).graph
    path = d / "small.onnx"
    fuser.save_onnx(graph, path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(d / "x.npy", x)
    ref = ort_run_graph(graph, {graph.inputs[0].name: x})[0]
    return d, path, graph, x, ref


@pytest.fixture(scope="module")
def built(small_model):
    d, path, *_ = small_model
    r = invoke("compile", path, "-o", d / "build", "--json")
    assert r.exit_code == 0, r.output
    return d / "build", json.loads(r.output)


def test_compile_writes_library_and_metadata(built, small_model):
    build_dir, summary = built
    graph = small_model[2]
    assert (build_dir / tvm_artifact.LIBRARY).is_file()
    meta = json.loads((build_dir / tvm_artifact.METADATA).read_text())
    assert meta["inputs"] == [{"name": graph.inputs[0].name, "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert meta["outputs"][0]["shape"] == [1, 4]
    assert set(meta["versions"]) == {"fuser", "tvm", "tvm_ffi"}
    assert summary["kernels"] == meta["kernels"] and meta["kernels"]


def test_load_matches_ort(built, small_model):
    _, _, graph, x, ref = small_model
    model = fuser.load(built[0])  # the public entry point (fuser.backends.tvm.artifact.load)
    assert rel_err(model(x)[0], ref) <= 1e-4
    assert rel_err(model(**{graph.inputs[0].name: x})[0], ref) <= 1e-4
    with pytest.raises(fuser.FuserError, match="expected float32"):
        model(x[:, :2])


def test_run_writes_npz(built, small_model, tmp_path):
    d, _, graph, _, ref = small_model
    out = tmp_path / "out.npz"
    r = invoke("run", built[0], "--input", f"{graph.inputs[0].name}={d / 'x.npy'}", "--output", out)
    assert r.exit_code == 0, r.output
    got = np.load(out)[graph.outputs[0].name]
    assert rel_err(got, ref) <= 1e-4


def test_version_mismatch_is_a_clear_error(built, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(built[0], copy)
    meta_path = copy / tvm_artifact.METADATA
    meta = json.loads(meta_path.read_text())
    meta["versions"]["tvm"] = "0.1.0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(fuser.FuserError, match="tvm 0.1.0"):
        tvm_artifact.load(copy)
    r = CliRunner().invoke(main, ["run", str(copy), "--input", "x.npy"])
    assert r.exit_code == 2 and "rebuild" in r.output


def test_build_for_a_cpu_this_machine_lacks_is_refused(built, tmp_path):
    import shutil

    from fuser.backends import tvm as tb

    meta = json.loads((built[0] / tvm_artifact.METADATA).read_text())
    assert meta["cpu"] == tb.host_cpu()  # built for this machine by default
    if not tb.missing_cpu_features("sapphirerapids"):
        pytest.skip("this CPU has every instruction set of sapphirerapids")
    copy = tmp_path / "spr"
    shutil.copytree(built[0], copy)
    meta["cpu"] = "sapphirerapids"
    (copy / tvm_artifact.METADATA).write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["run", str(copy), "--input", "x.npy"])
    assert r.exit_code == 2 and "built for CPU sapphirerapids" in r.output and "amx" in r.output


def test_portable_cpu_build_matches_ort(small_model, tmp_path):
    _, path, _, x, ref = small_model
    r = invoke("compile", path, "-o", tmp_path / "x86", "--cpu", "x86-64", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["cpu"] == "x86-64"
    assert rel_err(fuser.load(tmp_path / "x86")(x)[0], ref) <= 1e-4
    r = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "b"), "--cpu", "z80"])
    assert r.exit_code == 2 and "--cpu z80" in r.output


def test_not_a_build_is_a_user_error(tmp_path):
    r = CliRunner().invoke(main, ["run", str(tmp_path), "--input", "x.npy"])
    assert r.exit_code == 2 and "not a fuser TVM build" in r.output


def test_compile_with_plan_has_one_kernel_per_group(small_model, tmp_path):
    pytest.importorskip("fuser.fusion.plan")
    from fuser.fusion.plan import PLAN_FORMAT

    _, path, graph, x, ref = small_model
    names = [n.name for n in fuser.optimize(str(path)).graph.nodes]
    plan = {
        "format": PLAN_FORMAT,
        "model": "small",
        "style": "hand",
        "buffer_bytes": 0,
        "groups": [{"ops": names[:2]}, {"ops": names[2:-1]}, {"ops": names[-1:]}],
    }
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    r = invoke("compile", path, "-o", tmp_path / "b", "--plan", plan_path, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert len(summary["kernels"]) == summary["plan_groups"] == 3
    assert rel_err(tvm_artifact.load(tmp_path / "b")(x)[0], ref) <= 1e-4


def test_bench_json_reports_ratios_and_kernels(small_model):
    _, path, *_ = small_model
    r = invoke("bench", path, "--backends", "ort,tvm", "--repeat", "3", "--warmup", "1", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{") :])
    by_backend = {t["backend"]: t for t in report["timings"]}
    assert by_backend["ort"]["vs_ort"] == 1.0
    tvm_t = by_backend["tvm"]
    assert tvm_t["min_ms"] <= tvm_t["median_ms"] <= tvm_t["max_ms"]
    assert report["kernels"] and all(k["median_ms"] > 0 for k in report["kernels"])


def test_tuning_options_are_checked(small_model, tmp_path):
    _, path, *_ = small_model
    r = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "b"), "--tune-trials", "4"])
    assert r.exit_code == 2 and "--tuning-db" in r.output
    r = CliRunner().invoke(main, ["bench", str(path), "--backends", "ort,tvm-tuned"])
    assert r.exit_code == 2 and "--tune-trials" in r.output


def test_tuning_database_is_reused_and_resumed(tmp_path):
    """Tuning stopped after its first kernel resumes with the second; a third run finds
    both kernels in the database and tunes nothing; the tuned build gives ORT's numbers."""
    from fuser.backends import tvm as tb
    from fuser.backends.tvm import tuning as tvm_tuning

    mlp = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    graph = fuser.optimize(mlp.eval(), (torch.randn(4, 64),)).graph
    target = tb.make_target("llvm", 2)
    fused = tb.fuse(tb.to_relax(graph), target)

    def stop_after_first_batch(done, total, kernel):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: tuning stops once this batch is stored

    first = []
    with pytest.raises(KeyboardInterrupt):
        tvm_tuning.tune(fused, target, tmp_path, 8, on_plan=first.extend, on_progress=stop_after_first_batch)
    assert [(b.records, b.want) for b in first] == [(0, 4), (0, 4)]

    resumed, progress = [], []
    tvm_tuning.tune(
        fused, target, tmp_path, 8, on_plan=resumed.extend, on_progress=lambda *a: progress.append(a)
    )
    assert [b.tuned for b in resumed] == [True, False]  # first kernel kept, second tuned now
    assert progress[-1][:2] == (4, 4) and progress[-1][2] == resumed[1].name

    again = []
    tuned = tvm_tuning.tune(
        fused,
        target,
        tmp_path,
        8,
        on_plan=again.extend,
        on_progress=lambda *a: pytest.fail("tuned a kernel again"),
    )
    assert len(again) == 2 and all(b.tuned for b in again)
    model = tb.TVMModel(
        tb.build_fused(tuned, target), tb.value_specs(graph.inputs), tb.value_specs(graph.outputs)
    )
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    assert rel_err(model(x)[0], ort_run_graph(graph, {graph.inputs[0].name: x})[0]) <= 1e-4
