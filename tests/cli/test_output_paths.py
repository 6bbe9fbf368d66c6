"""Where commands write: never over an input (by inode), never two outputs to one file, every
output checked before any is written, new files with the umask's mode, and paths and names
printed as text (no markup, no control characters, no wrapping when piped)."""

import os
import stat

import native
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import fuser
from fuser.blockfusion.synthetic import block_graph
from fuser.cli import main
from fuser.cli.commands import sweep as sweep_command

# a folder name with markup, an OSC sequence (ESC ] 0 ; title BEL) and spaces, long enough that an
# 80-column console would wrap a line holding it
ODD_NAME = "[red]b\x1b]0;t\x07 " + "long name " * 12
ODD_NAME_SHOWN = "[red]b\\x1b]0;t\\x07 " + "long name " * 12


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, *needles):
    """Exit 2 with a one-line message naming ``needles``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def conv_onnx(path, input_name="x"):
    """One 3x3 Conv (3 -> 4 channels) on a 1x3x8x8 input."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A TVM build of the tiny Conv (llvm), in a folder whose name is markup and control characters."""
    pytest.importorskip("tvm")
    folder = tmp_path_factory.mktemp("build")
    out = folder / ODD_NAME
    r = invoke("compile", conv_onnx(folder / "m.onnx"), "-o", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32))
    return path


# ---- fuser run -------------------------------------------------------------------------------
def test_run_prints_paths_as_text_unwrapped(build, npy, tmp_path):
    """The title holds the build folder and the output path: escaped, on one line in a pipe."""
    out = tmp_path / "o.npz"
    r = native.run_cli("run", build, "--input", f"x={npy}", "--output", out)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout, r.stdout
    title = r.stdout.splitlines()[0]
    assert ODD_NAME_SHOWN.strip() in title and f"-> {out}" in title, r.stdout
    assert set(np.load(out)) == {"y"}


def test_run_refuses_to_write_over_its_input_array(build, npy, tmp_path):
    before = npy.read_bytes()
    assert_refused(
        invoke("run", build, "--input", f"x={npy}", "--output", npy), "is an input of this command"
    )
    link = tmp_path / "link.npz"
    link.symlink_to(npy)
    assert_refused(invoke("run", build, "--input", npy, "--output", link), "is an input of this command")
    assert npy.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "x.npy"]


@pytest.mark.parametrize("name", ["model.so", "metadata.json"])
def test_run_refuses_to_write_over_the_build(build, npy, name):
    before = (build / name).read_bytes()
    r = invoke("run", build, "--input", f"x={npy}", "--output", build / name)
    assert_refused(r, "is an input of this command")
    assert (build / name).read_bytes() == before


# ---- fuser compile (fuser.backends.tvm.artifact.save) ------------------------------------------
def test_compile_refuses_a_model_named_model_so_in_its_output_folder(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    from fuser.backends import tvm as tb

    model = conv_onnx(tmp_path / "model.so")
    before = model.read_bytes()

    def no_build(*args, **kwargs):  # the refusal comes before the (slow) build
        raise AssertionError("compile built a model whose output it must refuse")

    monkeypatch.setattr(tb, "to_relax", no_build)
    assert_refused(invoke("compile", model, "-o", tmp_path), "is an input of this command")
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so"]  # no metadata.json, no temp file


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_compile_writes_with_the_umask_a_linker_would(tmp_path, umask):
    pytest.importorskip("tvm")
    model = conv_onnx(tmp_path / "m.onnx")
    old = os.umask(umask)
    try:
        r = invoke("compile", model, "-o", tmp_path / "b")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert mode_of(tmp_path / "b" / "model.so") == 0o777 & ~umask  # 0755 under 022
    assert mode_of(tmp_path / "b" / "metadata.json") == 0o666 & ~umask


# ---- fuser report ----------------------------------------------------------------------------
REPORT_ARGS = ["--sweep", "none", "--measure", "--repeat", "1", "--budget", "5", "--no-graph"]


def test_report_refuses_two_outputs_to_one_file(tmp_path):
    model = conv_onnx(tmp_path / "m.onnx")
    same = tmp_path / "same.html"
    assert_refused(invoke("report", model, "-o", same, "--trace", same, *REPORT_ARGS), "another output")
    assert not same.exists()
    # the same file by inode: a hard link
    page = tmp_path / "page.html"
    page.write_text("old page")
    os.link(page, tmp_path / "trace.json")
    r = invoke("report", model, "-o", page, "--trace", tmp_path / "trace.json", *REPORT_ARGS)
    assert_refused(r, "another output")
    assert page.read_text() == "old page"


def test_report_refuses_an_output_over_its_model_through_a_link(tmp_path):
    """A guard: the up-front check (the model and its data files) still refuses the model."""
    model = conv_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    (tmp_path / "page.html").symlink_to(model)
    r = invoke("report", model, "-o", tmp_path / "page.html", "--json", *REPORT_ARGS)
    assert_refused(r, "input")
    assert model.read_bytes() == before


# ---- fuser sweep -----------------------------------------------------------------------------
SWEEP_ARGS = ["--buffer", "1KB,4KB", "--style", "lbdf", "--budget", "5", "--workers", "1"]


@pytest.fixture
def sweep_in_process(monkeypatch):
    """Plan every point here, without Ray: what is tested is what the command writes and prints."""

    def run_here(points, fgs, cache_dir, *args, **kwargs):
        return [sweep_command.plan_task(fgs[m][0], m, fgs[m][1], config) for m, config in points]

    monkeypatch.setattr(sweep_command, "run_sweep", run_here)


def test_sweep_checks_every_output_before_writing_any(tmp_path, sweep_in_process):
    model = conv_onnx(tmp_path / "mm2.csv")  # an ONNX file that -o mm2 would write as its CSV
    before = model.read_bytes()
    r = invoke("sweep", model, *SWEEP_ARGS, "--cache", tmp_path / "cache", "-o", tmp_path / "mm2")
    assert_refused(r, "is an input of this command")
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm2.csv"]  # no mm2.json, no cache


def test_sweep_refuses_two_models_plotted_to_one_png(tmp_path, sweep_in_process):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    models = [conv_onnx(tmp_path / "a" / "m.onnx"), conv_onnx(tmp_path / "b" / "m.onnx")]
    r = invoke("sweep", *models, *SWEEP_ARGS, "-o", tmp_path / "s", "--plot-dir", tmp_path / "plots")
    assert_refused(r, "m.png")
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "plots").exists()


def test_sweep_refuses_an_empty_buffer_list(tmp_path):
    model = conv_onnx(tmp_path / "m.onnx")
    r = invoke("sweep", model, "--buffer", "", "--workers", "1", "-o", tmp_path / "s")
    assert_refused(r, "--buffer", "at least one size")
    assert not (tmp_path / "s.json").exists()


def test_sweep_prints_its_summary_as_text_unwrapped(tmp_path, sweep_in_process):
    folder = tmp_path / ODD_NAME
    folder.mkdir()
    model = conv_onnx(tmp_path / "m.onnx")
    r = invoke("sweep", model, *SWEEP_ARGS, "--cache", tmp_path / "cache", "-o", folder / "s")
    assert r.exit_code == 0, r.output
    assert (folder / "s.json").is_file() and (folder / "s.csv").is_file()
    assert "\x1b" not in r.output and "\x07" not in r.output, r.output
    assert any("wrote" in line and ODD_NAME_SHOWN.strip() in line for line in r.output.splitlines()), r.output


# ---- fuser blocks ----------------------------------------------------------------------------
@pytest.fixture
def residual_block_onnx(tmp_path):
    """A ResNet basic block: one kernel to emit."""
    folder = tmp_path / "D"
    folder.mkdir()
    path = folder / "manifest.json"
    fuser.save_onnx(block_graph("resnet_basic", channels=16, hw=(8, 8)), path)
    return path


def test_blocks_checks_every_emitted_file_before_writing_any(residual_block_onnx):
    """The model is D/manifest.json and --emit-cuda D would write it last: nothing is written."""
    folder = residual_block_onnx.parent
    before = residual_block_onnx.read_bytes()
    r = invoke("blocks", residual_block_onnx, "--emit-cuda", folder)
    assert_refused(r, "is an input of this command")
    assert residual_block_onnx.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]  # no .cu files


def test_blocks_refuses_a_plot_over_an_emitted_kernel(residual_block_onnx, tmp_path):
    model = residual_block_onnx.rename(tmp_path / "m.onnx")
    r = invoke("blocks", model, "--emit-cuda", tmp_path / "cu", "--json")
    assert r.exit_code == 0, r.output
    (kernel,) = sorted((tmp_path / "cu").glob("*.cu"))
    before = kernel.read_bytes()
    r = invoke("blocks", model, "--emit-cuda", tmp_path / "cu2", "--plot", tmp_path / "cu2" / kernel.name)
    assert_refused(r, "another output")
    assert not (tmp_path / "cu2").exists() and kernel.read_bytes() == before
