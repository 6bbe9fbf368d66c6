"""TVM targets follow the CPU the OS reports, not LLVM's name for it.

The faked host is the CI machine of issue 11: an AMD EPYC VM that LLVM calls znver4
(a name that implies AVX-512) whose hypervisor hides AVX-512 (cpuinfo: avx2, no
avx512*). Code built for the name alone died there with SIGILL.
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

import fuser

pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")
from test_tvm_backend import Lambda, _small_cnn  # noqa: E402

from fuser.backends import tvm as tb  # noqa: E402
from fuser.backends.tvm import artifact as tvm_artifact  # noqa: E402
from fuser.backends.tvm import cpu as host  # noqa: E402
from fuser.backends.tvm import target as tvm_target  # noqa: E402
from fuser.cli import main  # noqa: E402

pytestmark = pytest.mark.skipif(not host.is_x86(), reason="x86 instruction sets")

# /proc/cpuinfo flags of an AMD EPYC (Zen 4) VM whose hypervisor hides AVX-512
EPYC_VM_CPUINFO = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology "
    "nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 "
    "x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy "
    "cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall fsgsbase tsc_adjust bmi1 "
    "avx2 smep bmi2 erms invpcid adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves "
    "clzero xsaveerptr arat umip vaes vpclmulqdq rdpid fsrm"
)
EPYC_VM_FLAGS = set(EPYC_VM_CPUINFO.split())
AVX512 = re.compile(r"avx512|avx10|amx")


@pytest.fixture
def epyc_vm(monkeypatch):
    """This process sees the AVX-512-less EPYC VM: LLVM name znver4, its cpuinfo flags,
    and numpy's detection agreeing (numpy checks the OS saves the zmm registers)."""
    monkeypatch.setattr(tvm_target, "host_cpu", lambda: "znver4")
    monkeypatch.setattr(host, "os_cpu_flags", lambda: set(EPYC_VM_FLAGS))
    real = host.numpy_cpu_features()
    monkeypatch.setattr(
        host, "numpy_cpu_features", lambda: {k: v and not k.startswith("AVX512") for k, v in real.items()}
    )


def test_host_features_come_from_cpuinfo_checked_by_numpy(monkeypatch):
    flags = {"pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "abm"}
    flags |= {"avx512f", "avx512_vp2intersect"}
    monkeypatch.setattr(host, "os_cpu_flags", lambda: flags)
    monkeypatch.setattr(host, "numpy_cpu_features", lambda: {"AVX2": True, "AVX512F": False})
    have = host.host_features()
    assert {"avx", "avx2", "fma", "lzcnt", "sse4.2", "crc32"} <= have  # cpuinfo names mapped
    assert "avx512f" not in have  # the kernel lists it, numpy says the OS does not enable it
    assert "avx512vp2intersect" not in have  # numpy does not know it, but it needs avx512f
    assert {"sse2", "cmov"} <= have  # the x86-64 baseline, whatever the sources say
    assert "bmi2" not in have


def test_every_llvm_x86_feature_is_classified():
    """Each feature any x86 CPU name implies is either an instruction set (ISA_FLAGS, turned
    off when the OS lacks it) or a tuning hint that never adds instructions. A new LLVM
    with a new instruction set fails here instead of building code the host cannot run."""
    import tvm

    tuning = re.compile(
        r"^(fast-|slow-|false-deps-|no-bypass-delay|prefer-|use-|tuning-|lea-|idiv[lq]-to-|"
        r"allow-light-|pad-short-|faster-)|^(64bit|64bit-mode|branchfusion|macrofusion|"
        r"sbb-dep-breaking|vzeroupper|nopl|ermsb|fsrm|branch-hint)$"
    )
    codegen = tvm.target.codegen
    unknown = set()
    for cpu in codegen.llvm_get_cpu_archlist(tvm.target.Target("llvm")):
        names = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": str(cpu)}))
        unknown |= {f for f in names if f not in host.ISA_FLAGS and not tuning.match(f)}
    assert not unknown


def test_default_target_on_a_vm_without_avx512(epyc_vm):
    target = tb.make_target("llvm")
    record = tb.target_record(target)
    assert record["cpu"] == "znver4"
    assert "-avx512f" in record["mattr"]
    assert {"avx2", "fma", "bmi2"} <= set(record["cpu_features"])
    assert not [f for f in record["cpu_features"] if AVX512.search(f)]
    assert tb.portable_cpu(tb.host_features()) == "x86-64-v3"
    # what the old default (the name alone) would have used on that machine
    assert "avx512f" in host.cpu_name_features("znver4")


def test_an_old_cpu_name_gives_way_to_the_generic_level(epyc_vm, monkeypatch):
    """An emulator (qemu -cpu max) reports an AVX2 CPU that LLVM names k8-sse3: the
    target is then x86-64-v3, not SSE3 code."""
    monkeypatch.setattr(tvm_target, "host_cpu", lambda: "k8-sse3")
    record = tb.target_record(tb.make_target("llvm"))
    assert record["cpu"] == "x86-64-v3" and record["mattr"] == []
    assert {"avx2", "fma"} <= set(record["cpu_features"]) <= tb.host_features()


def test_load_refuses_an_avx512_build_on_a_host_without_it(tmp_path, monkeypatch):
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 8, 8),)).graph
    target = tb.make_target("llvm", cpu="x86-64-v4")
    build = tmp_path / "v4"
    tvm_artifact.save(build, tb.build(tb.to_relax(graph), target), graph, target)
    meta = json.loads((build / tvm_artifact.METADATA).read_text())
    assert {"avx512f", "avx512bw", "avx512vl"} <= set(meta["cpu_features"])

    real_flags = host.os_cpu_flags()
    monkeypatch.setattr(host, "os_cpu_flags", lambda: set(EPYC_VM_FLAGS))
    with pytest.raises(fuser.FuserError, match=r"avx512bw, avx512cd.*--cpu x86-64-v3"):
        fuser.load(build)
    r = CliRunner().invoke(main, ["run", str(build), "--input", "x.npy"])
    assert r.exit_code == 2
    line = r.output.strip().replace("\n", " ")
    assert "avx512" in line and "--cpu x86-64-v3" in line and "Traceback" not in r.output

    monkeypatch.setattr(host, "os_cpu_flags", lambda: real_flags)
    if not host.missing_cpu_features(meta["cpu_features"]):
        tvm_artifact.check_cpu(meta, str(build))  # where the CPU has AVX-512, the check passes


EVEX_ONLY = re.compile(
    r"%zmm\d|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}|\{z\}|"
    r"\b(vpternlog|vpermt2|vpermi2|valign[dq]|vp?compress|vp?expand|vrndscale|vgetexp|vgetmant|"
    r"vscalef|vfixupimm|vrange|vreduce|vpconflict|vplzcnt|vpmov[a-z]*2m|vpmovm2|vpabsq|vpmaxsq|"
    r"vpminsq|vpmaxuq|vpminuq|vpsraq|vprol|vpror|vpermw|vpmullq|vcvt[a-z]*2u[dq]q|k(mov|and|or|not|"
    r"shift|test|xor|add)[bwdq])"
)


def executable_asm(executable) -> str:
    from fuser.backends.tvm.build import _modules

    return "\n".join(m.inspect_source("asm") for m in _modules(executable.mod) if m.kind == "llvm")


def _asm(graph, target) -> str:
    return executable_asm(tb.build(tb.to_relax(graph), target))


def test_code_for_a_vm_without_avx512_has_no_avx512_instructions(epyc_vm):
    """Built here for the faked VM, the generated assembly has no zmm/mask registers and no
    EVEX-only instruction; built for the name alone (the old default) it has them: this
    test fails on the code that died with SIGILL."""
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 16, 16),)).graph
    asm = _asm(graph, tb.make_target("llvm"))
    assert "vfmadd" in asm and "%ymm" in asm  # AVX2 + FMA are used, so vectors were emitted
    assert not EVEX_ONLY.findall(asm)
    old_default = _asm(graph, tvm_target.tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    assert len(EVEX_ONLY.findall(old_default)) > 10


def _squeeze_excite():
    """A squeeze-excite block: its 1x1 convs on a 1x1 map are GEMVs, whose dlight GPU
    schedule reads the target's shared-memory limit."""
    return Lambda(
        lambda m, x: x * torch.sigmoid(m[1](torch.relu(m[0](x.mean((2, 3), keepdim=True))))),
        torch.nn.Conv2d(64, 16, 1),
        torch.nn.Conv2d(16, 64, 1),
    ).eval()


def _smem_warnings(caplog, graph, target) -> int:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tb.fuse(tb.to_relax(graph), target)
    return sum("max_shared_memory_per_block" in r.getMessage() for r in caplog.records)


def test_cuda_target_limits_come_from_the_arch_table(caplog):
    target = tb.make_target("cuda")  # no GPU here: sm_90
    arch = str(target.attrs["arch"])
    assert arch in tvm_target.CUDA_ARCHES or tb.cuda_available()
    assert int(target.attrs["max_shared_memory_per_block"]) == 48 * 1024
    assert int(target.attrs["max_threads_per_block"]) == 1024
    assert tb.target_record(target)["cuda_arch"] == arch
    graph = fuser.optimize(_squeeze_excite(), (torch.randn(1, 64, 8, 8),)).graph
    bare = tvm_target.tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    assert _smem_warnings(caplog, graph, bare) >= 2  # TVM guesses, once per kernel
    assert _smem_warnings(caplog, graph, target) == 0


def test_unknown_cuda_arch_warns_once(caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            attrs = tvm_target.cuda_target_attrs("sm_75")
    assert attrs["max_shared_memory_per_block"] == 48 * 1024
    assert sum("sm_75" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_build_records_its_arch(tmp_path):
    graph = fuser.optimize(_small_cnn(), (torch.randn(1, 3, 16, 16),)).graph
    target = tb.make_target("cuda")
    meta = tvm_artifact.save(tmp_path / "b", tb.build(tb.to_relax(graph), target), graph, target)
    assert meta["target"] == "cuda" and meta["cuda_arch"] == str(target.attrs["arch"])
    assert meta["cuda_limits"]["max_shared_memory_per_block"] == 48 * 1024


def test_compile_refuses_an_unknown_cpu_before_reading_the_model(tmp_path):
    # The model path does not exist: the --cpu error must come first (before a slow capture).
    r = CliRunner().invoke(
        main, ["compile", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "b"), "--cpu", "pentium-x"]
    )
    assert r.exit_code == 2
    assert "--cpu pentium-x: LLVM does not know this CPU" in r.output.replace("\n", " ")
    assert "Traceback" not in r.output and not (tmp_path / "b").exists()


def _fake_cpus(root, cores: list[tuple[int, int]]):
    """A /sys/devices/system/cpu with one (package, core) per logical CPU."""
    for cpu, (package, core) in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return str(root)


def test_physical_cores_count_smt_siblings_once(tmp_path):
    smt = _fake_cpus(tmp_path / "smt", [(0, 0), (0, 1), (0, 0), (0, 1)])  # 2 cores x 2 threads
    assert host.physical_cores(range(4), smt) == 2
    assert host.physical_cores([0, 2], smt) == 1  # an affinity of two siblings: one core
    vm = _fake_cpus(tmp_path / "vm", [(0, 0), (0, 1)])  # 2 vCPUs, one thread per core
    assert host.physical_cores(range(2), vm) == 2
    assert host.physical_cores(range(3), str(tmp_path / "none")) == 3  # no topology: each CPU


def _threads_in_child(env: dict) -> list[str]:
    import os
    import subprocess
    import sys

    code = (
        "import os, tvm\nimport fuser.backends.tvm as tb\ncores = tb.physical_cores()\n"
        "print(os.environ.get('TVM_NUM_THREADS'), tvm.runtime.num_threads(), cores)"
    )  # cores first: a pool of one thread pins the main thread to one core
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_tvm_runs_kernels_on_every_physical_core():
    """TVM's own default halves the logical CPUs on x86 (for hyper-threads): on a VM with one
    thread per core it ran every kernel on half the cores. fuser's TVM backend sizes the pool
    to the physical cores, unless TVM_NUM_THREADS or OMP_NUM_THREADS says otherwise."""
    variable, threads, cores = _threads_in_child({})
    assert variable == threads == cores
    assert _threads_in_child({"OMP_NUM_THREADS": "1"}) == ["None", "1", cores]
    assert _threads_in_child({"TVM_NUM_THREADS": "1"})[:2] == ["1", "1"]


@pytest.mark.parametrize("value", ["", "abc", "-1", "0"])
def test_a_thread_count_that_is_no_number_is_warned_and_read_as_tvm_reads_it(value, caplog, monkeypatch):
    """TVM reads TVM_NUM_THREADS when it is set at all, and a value that is no positive number
    gives one thread: the target's num-cores says the same, and fuser warns once."""
    monkeypatch.setenv("TVM_NUM_THREADS", value)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # not read: TVM_NUM_THREADS is set
    assert host.runtime_threads() == 1
    assert int(tb.make_target("llvm").attrs["num-cores"]) == 1
    with caplog.at_level(logging.WARNING, logger="fuser"):
        host.default_thread_pool()
    assert f"TVM_NUM_THREADS={value!r} is not a positive number" in caplog.text
    monkeypatch.setenv("TVM_NUM_THREADS", " 3")
    assert host.runtime_threads() == 3 and int(tb.make_target("llvm").attrs["num-cores"]) == 3
