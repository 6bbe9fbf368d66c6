"""benchmarks/gpu_check.py, the prepared GPU run, through its flow on the CPU: the blocks it
lists are the model's, each one's stand-in kernel matches PyTorch eager, and what it writes is
what it measured. (On a GPU machine the same script times the CUDA and TVM kernels.)"""

import json

import gpu_check


def test_the_gpu_check_runs_its_whole_flow_on_the_cpu(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--quick", "--no-compile", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    template = [r for r in rows if r.get("kind") == "convfirst"]
    tvm = [r for r in rows if r.get("tvm")]
    end_to_end = [r for r in rows if r.get("end_to_end")]
    # ConvFirst at 64x64: 12 blocks (2+2+6+2 per stage), one kernel per stage's shapes
    assert len(template) == 4 and sum(r["shares"] for r in template) == 12
    assert all(r["err_fused"] <= 1e-5 and r["err_eager"] == 0 for r in template)  # fp32 tile loop
    assert all(1e-6 < r["err_fp16_simulated"] <= 1e-3 for r in template)  # fp16 storage, simulated
    assert len(tvm) == 4 and all(r["err_tvm"] <= 1e-4 and r["tvm_us"] > 0 for r in tvm)
    assert [r["model"] for r in end_to_end] == ["convfirst", "convnext_tiny"]
    assert all(r["eager_img_s"] > 0 and r["compile_img_s"] is None for r in end_to_end)
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "convfirst: 12 blocks fused, 0 refused" in text and "its time says nothing" in text


def test_the_gpu_check_asks_for_a_gpu_or_the_cpu_flow(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().out and not (tmp_path / "gpu_check.txt").exists()


def test_a_failing_block_is_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    """The run is one short lease on a GPU: a block whose kernel fails to build gets one line
    naming it, and the blocks and parts after it still run."""
    from fuser.blockfusion import verify

    def broken(*args, **kwargs):
        raise RuntimeError("nvcc: no such arch\nsecond line")

    monkeypatch.setattr(verify, "compile_block", broken)
    assert gpu_check.main(["--device", "cpu", "--quick", "--no-compile", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_check.txt").read_text()
    failed = [line for line in text.splitlines() if "FAILED" in line]
    assert len(failed) == 4 and all("RuntimeError: nvcc: no such arch" in line for line in failed)
    assert failed[0].startswith("convfirst block0: FAILED")
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not [r for r in rows if r.get("tvm")] and len([r for r in rows if r.get("end_to_end")]) == 2


def test_a_spent_budget_skips_the_parts_and_says_so(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--quick", "--budget", "0", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_check.txt").read_text()
    assert text.count("budget is spent") == 3 and json.loads((tmp_path / "gpu_check.json").read_text()) == []


def test_without_tvm_the_tvm_part_says_so_in_one_line(tmp_path, monkeypatch):
    """The lent GPU's image has no Apache TVM: that part is one line, the rest runs."""
    import importlib.util

    real = importlib.util.find_spec
    hidden = lambda name, *args: None if name == "tvm" else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    assert gpu_check.main(["--device", "cpu", "--quick", "--no-compile", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "Apache TVM is not installed here: no TVM kernels built" in text and "FAILED" not in text
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not [r for r in rows if r.get("tvm")]
    assert len([r for r in rows if r.get("kind") == "convfirst"]) == 4
