"""`fuser compile` / `fuser run` / `fuser bench` and the artifact's load: a build on disk
gives ONNX Runtime's numbers, refuses other versions, and follows a fusion plan; tuning
counts its trials and fails loudly. Compiled code runs in a child process
(tests/native.py), so a native crash fails one test and names the signal."""

from __future__ import annotations

import json
import os
import re
import signal

import native
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
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
    model = native.load(built[0])  # fuser.load (the public entry point) in the child
    assert rel_err(model(x)[0], ref) <= 1e-4
    assert rel_err(model(**{graph.inputs[0].name: x})[0], ref) <= 1e-4
    with pytest.raises(fuser.FuserError, match="expected float32"):
        model(x[:, :2])


def test_run_writes_npz(built, small_model, tmp_path):
    d, _, graph, _, ref = small_model
    out = tmp_path / "out.npz"
    r = native.run_cli("run", built[0], "--input", f"{graph.inputs[0].name}={d / 'x.npy'}", "--output", out)
    assert r.returncode == 0, r.stderr
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


def test_build_records_the_instruction_sets_it_may_use(built):
    from fuser.backends import tvm as tb

    meta = json.loads((built[0] / tvm_artifact.METADATA).read_text())
    assert meta["cpu"] == tb.host_cpu()  # LLVM's name for this CPU ...
    # ... minus what the OS does not report: every recorded instruction set is present here
    assert meta["cpu_features"] and set(meta["cpu_features"]) <= tb.host_features()
    assert all(f"-{f}" not in meta["mattr"] for f in meta["cpu_features"])


def test_build_for_a_cpu_this_machine_lacks_is_refused(built, tmp_path):
    import shutil

    copy = tmp_path / "future"
    shutil.copytree(built[0], copy)
    meta = json.loads((copy / tvm_artifact.METADATA).read_text())
    meta["cpu"], meta["cpu_features"] = "diamondrapids", meta["cpu_features"] + ["amx-fp8", "avx10.2"]
    (copy / tvm_artifact.METADATA).write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["run", str(copy), "--input", "x.npy"])
    assert r.exit_code == 2
    assert "code for CPU diamondrapids may use amx-fp8, avx10.2, which this CPU lacks" in r.output
    assert "--cpu x86-64" in r.output


def test_portable_cpu_build_matches_ort(small_model, tmp_path):
    _, path, _, x, ref = small_model
    r = invoke("compile", path, "-o", tmp_path / "x86", "--cpu", "x86-64", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["cpu"] == "x86-64"
    assert rel_err(native.load(tmp_path / "x86")(x)[0], ref) <= 1e-4
    r = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "b"), "--cpu", "z80"])
    assert r.exit_code == 2 and "--cpu z80" in r.output


def test_not_a_build_is_a_user_error(tmp_path):
    r = CliRunner().invoke(main, ["run", str(tmp_path), "--input", "x.npy"])
    assert r.exit_code == 2 and "not a fuser TVM build" in r.output


def test_compile_with_plan_has_one_kernel_per_group(small_model, tmp_path):
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
    assert summary["group_kernels"] == {str(g): f"fuser_group_{g}" for g in range(3)}
    assert summary["shared_kernels"] == {}
    assert rel_err(native.load(tmp_path / "b")(x)[0], ref) <= 1e-4


def test_bench_json_reports_ratios_and_kernels(small_model):
    _, path, *_ = small_model
    r = native.run_cli("bench", path, "--backends", "ort,tvm", "--repeat", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    by_backend = {t["backend"]: t for t in report["timings"]}
    assert by_backend["ort"]["vs_ort"] == 1.0
    tvm_t = by_backend["tvm"]
    assert tvm_t["min_ms"] <= tvm_t["median_ms"] <= tvm_t["max_ms"]
    # the hook's own cost is subtracted and clamped at 0: on a loaded machine, 3 runs, a tiny
    # kernel can come out 0 (this assertion once failed under the parallel suite)
    times = [k["median_ms"] for k in report["kernels"]]
    assert times and all(t >= 0 for t in times) and sum(times) > 0


def test_kernel_flops_are_the_hand_count_and_reach_the_bench_rows(tmp_path):
    """A bias-free conv (16 -> 32, 3x3 at 8x8) and a bias-free Linear (2048 -> 10): TVM's count
    of each kernel is two per multiply-add, 589,824 and 40,960; layout transforms and the
    reshape none. ``fuser bench --json`` gives every kernel row its count, the table its rate."""
    from fuser.backends import tvm as tb

    m = torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 3, padding=1, bias=False),
        torch.nn.Flatten(),
        torch.nn.Linear(2048, 10, bias=False),
    )
    graph = fuser.optimize(m.eval(), (torch.randn(1, 16, 8, 8),)).graph
    target = tb.make_target("llvm", threads=1)
    flops = tb.kernel_flops(tb.schedule(tb.fuse(tb.to_relax(graph), target), target))
    assert sorted(f for f in flops.values() if f) == [2 * 2048 * 10, 2 * 16 * 32 * 9 * 64]
    assert {k for k, f in flops.items() if f} == {"conv2d_nchwc", "matmul"}
    path = tmp_path / "m.onnx"
    fuser.save_onnx(graph, path)
    r = native.run_cli("bench", path, "--backends", "tvm", "--repeat", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = {k["kernel"]: k["flops"] for k in json.loads(r.stdout)["kernels"]}
    assert rows["conv2d_nchwc"] == 2 * 16 * 32 * 9 * 64 and rows["matmul"] == 2 * 2048 * 10
    r = native.run_cli("bench", path, "--backends", "tvm", "--repeat", "3", "--warmup", "1")
    assert r.returncode == 0 and "GFLOP/s" in r.stdout, r.stderr


def test_tuning_options_are_checked(small_model, tmp_path):
    _, path, *_ = small_model
    r = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "b"), "--tune-trials", "4"])
    assert r.exit_code == 2 and "--tuning-db" in r.output
    r = CliRunner().invoke(main, ["bench", str(path), "--backends", "ort,tvm-tuned"])
    assert r.exit_code == 2 and "--tune-trials" in r.output


def test_trials_split_exactly():
    from fuser.backends.tvm.tuning import split_trials

    assert split_trials(20, 33) == [1] * 20 + [0] * 13  # 20 trials, not 33
    assert split_trials(7, 2) == [4, 3]
    assert split_trials(0, 3) == [0, 0, 0]
    assert sum(split_trials(2000, 52)) == 2000


def test_tuning_database_is_reused_and_resumed(tmp_path):
    """7 trials over 2 kernels are 4 + 3. Tuning stopped after its first kernel resumes
    with the second and runs exactly its 3 trials; a third run finds both kernels in the
    database and tunes nothing; the tuned build gives ORT's numbers."""
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
        tvm_tuning.tune(fused, target, tmp_path, 7, on_plan=first.extend, on_progress=stop_after_first_batch)
    assert [(b.records, b.want) for b in first] == [(0, 4), (0, 3)]

    resumed, progress = [], []
    result = tvm_tuning.tune(
        fused, target, tmp_path, 7, on_plan=resumed.extend, on_progress=lambda *a: progress.append(a)
    )
    assert [b.tuned for b in resumed] == [True, False]  # first kernel kept, second tuned now
    assert progress[-1] == (3, 3, resumed[1].name)
    assert result.trials_requested == result.trials_run == 3
    assert result.run_errors == result.build_errors == 0

    again = []
    tuned = tvm_tuning.tune(
        fused,
        target,
        tmp_path,
        7,
        on_plan=again.extend,
        on_progress=lambda *a: pytest.fail("tuned a kernel again"),
    )
    assert len(again) == 2 and all(b.tuned for b in again) and tuned.trials_run == 0
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    feeds = {graph.inputs[0].name: x}
    got = native.run_executable(tb.build_fused(tuned.mod, target), graph, target, feeds)
    assert rel_err(got[0], ort_run_graph(graph, feeds)[0]) <= 1e-4


@pytest.mark.parametrize(
    "flags, failure",
    [
        # fuser's default schedules are measured first (the seeds of the search): they crash first
        ([], "tuning failed: the default schedules of 1 kernels failed to run"),
        (["--no-default-schedules"], "tuning failed: 1 of 1 trials failed (1 to run, 0 to build"),
    ],
    ids=["seeded", "metaschedule-space"],
)
def test_tuning_whose_trials_crash_is_reported_failed(tmp_path, monkeypatch, flags, failure):
    """MetaSchedule's runner process dies with SIGILL on every candidate (what a build for
    the wrong CPU did): `fuser compile --tune-trials` fails with the runner's error, exit 2,
    never 'tuning done', and writes no build."""
    from tvm.s_tir.meta_schedule import runner as ms_runner

    def crash(*_):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGILL)

    real = ms_runner.LocalRunner
    monkeypatch.setattr(ms_runner, "LocalRunner", lambda **kw: real(**kw, f_run_evaluator=crash))
    path, out = tmp_path / "linear.onnx", tmp_path / "b"  # one kernel, one trial: a short run
    fuser.save_onnx(fuser.optimize(torch.nn.Linear(16, 8).eval(), (torch.randn(2, 16),)), path)
    r = CliRunner().invoke(
        main,
        ["compile", str(path), "-o", str(out), "--tune-trials", "1", "--tuning-db", str(tmp_path / "db")]
        + flags,
    )
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert failure in text
    assert "first error: LocalRunner: An exception occurred" in text
    assert "tuning done" not in text and not (out / tvm_artifact.METADATA).exists()


@pytest.fixture(scope="module")
def elu_model(tmp_path_factory):
    """Conv -> CELU -> Conv -> PReLU: torch and ORT run it, TVM does not lower Celu (neither
    fuser nor TVM's ONNX frontend has a converter; Elu now goes through TVM's)."""
    path = tmp_path_factory.mktemp("elu") / "elu.onnx"
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.CELU(0.5), torch.nn.Conv2d(8, 4, 3), torch.nn.PReLU(4)
    )
    fuser.save_onnx(fuser.optimize(m.eval(), (torch.randn(1, 3, 16, 16),)), path)
    return path


def test_bench_keeps_the_rows_of_backends_that_work(elu_model):
    """TVM cannot lower the model: its row says why, torch and ORT are still timed, exit 3.
    (TVM fails before any compiled code runs, so this runs in-process.)"""
    args = ["bench", elu_model, "--backends", "torch,ort,tvm", "--repeat", "2", "--warmup", "1"]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--json"]])
    assert r.exit_code == 3, r.output
    report = json.loads(r.stdout)
    rows = {t["backend"]: t for t in report["timings"]}
    assert list(rows) == ["torch", "ort", "tvm"]
    assert rows["torch"]["median_ms"] > 0 and rows["ort"]["vs_ort"] == 1.0 and not rows["ort"]["error"]
    assert rows["tvm"]["median_ms"] is None and "op Celu has no Relax converter" in rows["tvm"]["error"]
    assert "1 of 3 backends failed: tvm" in r.stderr

    r = CliRunner().invoke(main, [str(a) for a in [*args, "--cpu", "x86-64"]])
    assert r.exit_code == 3
    assert "1.00x" in r.stdout and "failed" in r.stdout
    assert re.search(r"\ntvm: \S+elu.onnx: node \S+ \(Celu\): TVM backend: op Celu has no Relax", r.stdout)


def test_bench_refuses_a_cpu_this_machine_lacks(elu_model, monkeypatch):
    from fuser.backends.tvm import cpu as host

    monkeypatch.setattr(host, "host_features", lambda: host.cpu_name_features("x86-64-v3"))
    r = CliRunner().invoke(
        main, ["bench", str(elu_model), "--backends", "ort,tvm", "--cpu", "x86-64-v4", "--json"]
    )
    assert r.exit_code == 3
    tvm_row = json.loads(r.stdout)["timings"][1]
    assert (
        "code for CPU x86-64-v4 may use avx512" in tvm_row["error"] and "--cpu x86-64-v3" in tvm_row["error"]
    )


@pytest.fixture(scope="module")
def twin_blocks(tmp_path_factory):
    """Two identical conv+relu blocks (same shapes): a plan with one group per block gets
    one kernel TVM runs twice."""
    d = tmp_path_factory.mktemp("twins")
    m = torch.nn.Sequential(
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
    )
    graph = fuser.optimize(m.eval(), (torch.randn(1, 8, 12, 12),)).graph
    fuser.save_onnx(graph, d / "twins.onnx")
    from fuser.fusion.plan import PLAN_FORMAT

    names = [n.name for n in fuser.optimize(str(d / "twins.onnx")).graph.nodes]
    assert len(names) == 4
    plan = {"format": PLAN_FORMAT, "model": "twins", "style": "hand", "buffer_bytes": 0}
    plan["groups"] = [{"ops": names[:2], "dram_bytes": 100}, {"ops": names[2:], "dram_bytes": 200}]
    (d / "plan.json").write_text(json.dumps(plan))
    return d / "twins.onnx", d / "plan.json"


def test_compile_says_which_groups_share_a_kernel(twin_blocks, tmp_path):
    path, plan = twin_blocks
    r = invoke("compile", path, "-o", tmp_path / "b", "--plan", plan)
    text = " ".join(r.output.split())
    assert "1 for 2 plan groups" in text
    assert "fuser_group_0 runs groups 0, 1" in text
    meta = json.loads((tmp_path / "b" / tvm_artifact.METADATA).read_text())
    assert meta["kernels"] == ["fuser_group_0"] and meta["kernel_calls"] == {"fuser_group_0": 2}
    assert meta["group_kernels"] == {"0": "fuser_group_0", "1": "fuser_group_0"}
    assert meta["shared_kernels"] == {"fuser_group_0": [0, 1]}


def test_bench_with_plan_reports_each_group(twin_blocks):
    path, plan = twin_blocks
    r = native.run_cli("bench", path, "--backends", "tvm", "--plan", plan, "--repeat", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = sorted(json.loads(r.stdout)["kernels"], key=lambda k: k["group"])
    assert [(k["group"], k["kernel"], k["calls"], k["shared_with"]) for k in rows] == [
        (0, "fuser_group_0", 1, [1]),
        (1, "fuser_group_0", 1, [0]),
    ]
    assert rows[0]["median_ms"] > 0 and rows[1]["median_ms"] > 0  # each group its own call
    assert [k["dram_bytes"] for k in rows] == [100, 200]


def test_bench_lists_a_plan_group_that_became_no_kernel(tmp_path):
    """Conv -> Reshape -> Relu in three groups: TVM runs the Reshape group as a view of its
    input, with no kernel. bench --plan still lists that group (0 calls), and times the others
    less the VM hook's cost measured on the emptied build, which does call the reshape."""
    from fuser.backends.latency import NO_KERNEL
    from fuser.fusion.plan import PLAN_FORMAT

    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32), "w"
    )
    shape = numpy_helper.from_array(np.array([1, 8, 256], dtype=np.int64), "shape")
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["c", "shape"], ["r"], name="resh"),
            helper.make_node("Relu", ["r"], ["y"], name="relu"),
        ],
        "crr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 256])],
        [w, shape],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "crr.onnx")
    plan = {"format": PLAN_FORMAT, "model": "crr", "style": "hand", "buffer_bytes": 0}
    plan["groups"] = [{"ops": [op], "dram_bytes": 1} for op in ("conv", "resh", "relu")]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    r = native.run_cli(
        "bench",
        tmp_path / "crr.onnx",
        "--backends",
        "tvm",
        "--plan",
        tmp_path / "plan.json",
        "--repeat",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = {k["group"]: k for k in json.loads(r.stdout)["kernels"]}
    assert sorted(rows) == [0, 1, 2]
    assert (rows[1]["kernel"], rows[1]["calls"], rows[1]["median_ms"]) == (NO_KERNEL, 0, 0.0)
    assert rows[0]["calls"] == rows[2]["calls"] == 1


def _conv_relu_onnx(path, dtype=TensorProto.FLOAT, input_name="x", node_name="conv", op="Relu"):
    """Conv (3 -> 4, 3x3) then ``op`` on a 1x3x8x8 input, as an ONNX file."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(helper.tensor_dtype_to_np_dtype(dtype))
    g = helper.make_graph(
        [
            helper.make_node("Conv", [input_name, "w"], ["c"], name=node_name, pads=[1, 1, 1, 1]),
            helper.make_node(op, ["c"], ["y"], name=f"{node_name}/act"),
        ],
        "g",
        [helper.make_tensor_value_info(input_name, dtype, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", dtype, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_bench_feeds_the_models_own_input_dtype(tmp_path):
    """A float16 model: every backend is timed on a float16 input (a float32 one failed all three)."""
    model = _conv_relu_onnx(tmp_path / "f16.onnx", TensorProto.FLOAT16)
    args = ["--backends", "ort,torch,tvm", "--repeat", "2", "--warmup", "1", "--json"]
    r = native.run_cli("bench", model, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)["timings"]
    assert [t["backend"] for t in rows] == ["ort", "torch", "tvm"]
    assert all(not t["error"] and t["median_ms"] > 0 for t in rows), rows


@pytest.mark.parametrize(("option", "value"), [("--repeat", "0"), ("--threads", "0"), ("--warmup", "-1")])
def test_bench_refuses_counts_out_of_range(tmp_path, option, value):
    model = _conv_relu_onnx(tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["bench", str(model), "--backends", "ort", option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output, r.output


def test_compile_and_bench_print_a_models_names_and_paths_as_text(tmp_path):
    """Markup and control characters in the model's folder, its input name and a node name
    reach compile's and bench's tables escaped: an OSC sequence (ESC ] 0 ; title BEL) would
    retitle the terminal, and '[red]' would vanish as markup."""
    folder = tmp_path / "[red]d"
    folder.mkdir()
    model = _conv_relu_onnx(folder / "m.onnx", input_name="in[bold]put\x1b]0;title\x07")
    r = native.run_cli("compile", model, "-o", tmp_path / "[bold]b")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout, r.stdout
    assert "[red]d/m.onnx" in r.stdout and "[bold]b" in r.stdout, r.stdout
    assert "in[bold]put\\x1b]0;title\\x07" in r.stdout, r.stdout
    # TVM cannot lower Celu: the tvm row's reason names the node, escaped (in-process: nothing runs)
    celu = _conv_relu_onnx(folder / "celu.onnx", node_name="\x1b]0;pwned\x07[red]x[/red]", op="Celu")
    args = ["--backends", "ort,tvm", "--repeat", "2", "--warmup", "1"]
    r = CliRunner().invoke(main, ["bench", str(celu), *args])
    assert r.exit_code == 3, r.output
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout, r.stdout
    assert "\\x1b]0;pwned\\x07[red]x[/red]/act" in r.stdout and "[red]d/celu.onnx" in r.stdout, r.stdout
