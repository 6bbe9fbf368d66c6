"""DRAM traffic of a TVM build, measured on a simulated cache (valgrind's cachegrind).

    traffic = simulate_dram("build/", {"x": x}, cache_bytes=128 * 1024)
    traffic.kernels["fuser_group_3"].dram_bytes      # bytes that went to or from DRAM

Hardware counters are not exposed on the VMs this project runs on, so the build runs once
under ``valgrind --tool=cachegrind --cache-sim=yes --LL=<cache_bytes>,<ways>,64``: python
itself, with ``--trace-children=yes`` (no shell shim), running ``cachesim_run.py``. Each TVM
kernel is a named function of ``model.so`` (its body, when TVM outlines it for the thread pool,
is ``<kernel>_compute_``), so ``cg_annotate`` attributes misses per kernel from one run.

Counting: a last-level read miss (DLmr) is one line read from DRAM; a last-level write miss
(DLmw) is one line the kernel writes that was not cached, which leaves the cache once, dirty:
one line written to DRAM (cachegrind does not simulate write-backs, and its write-allocate
fetch of that line is what a streaming store avoids). DRAM bytes = (DLmr + DLmw) x line.
Instruction misses (ILmr) are reported apart. Only the kernels' functions are counted: the
Relax VM, allocation and the copy of the inputs are not kernels.

Valgrind runs neither AVX-512 code nor every AVX encoding LLVM emits (valgrind 3.19 stops with
SIGILL on ``vmovq xmm, xmm`` in its 66 0F D6 form, which LLVM picks to shorten a VEX prefix):
build with ``cpu=SIMULATED_CPU`` (x86-64-v2: SSE4.2, no VEX) for a simulation. The tile loops,
and so the traffic, are those of the native build; vectors are 4 lanes wide instead of 8 or 16.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuser.ir import FuserError

SIMULATED_CPU = "x86-64-v2"
LINE = 64
_RUNNER = Path(__file__).with_name("cachesim_run.py")
_COUNT = r"([\d,]+)(?: \(\s*[\d.]+%\))?"
_ROW = re.compile(rf"^\s*{_COUNT}\s+{_COUNT}\s+{_COUNT}\s+{_COUNT}\s+(\S.*)$")
_SIZE = re.compile(r"^LL cache:\s+(\d+) B, (\d+) B, (\d+)-way")


@dataclass
class KernelTraffic:
    """One kernel's simulated last-level misses (lines) and instructions."""

    kernel: str
    read_misses: int = 0
    write_misses: int = 0
    instructions: int = 0
    instruction_misses: int = 0
    line: int = LINE

    @property
    def dram_bytes(self) -> int:
        return (self.read_misses + self.write_misses) * self.line

    def to_dict(self) -> dict:
        return {
            "kernel": self.kernel,
            "dram_bytes": self.dram_bytes,
            "read_misses": self.read_misses,
            "write_misses": self.write_misses,
            "instructions": self.instructions,
            "instruction_misses": self.instruction_misses,
        }


@dataclass
class Traffic:
    """Per-kernel traffic of one simulated run, and the cache it was simulated on."""

    cache_bytes: int
    ways: int
    line: int
    runs: int
    kernels: dict[str, KernelTraffic] = field(default_factory=dict)

    @property
    def dram_bytes(self) -> int:
        """All kernels, per run."""
        return sum(k.dram_bytes for k in self.kernels.values())

    def to_dict(self) -> dict:
        return {
            "cache_bytes": self.cache_bytes,
            "ways": self.ways,
            "line": self.line,
            "runs": self.runs,
            "dram_bytes": self.dram_bytes,
            "kernels": {k: v.to_dict() for k, v in self.kernels.items()},
        }


def default_ways(cache_bytes: int) -> int:
    """Associativity of the simulated last-level cache: 8 ways up to 256 KB, else 16."""
    return 8 if cache_bytes <= 256 * 1024 else 16


def check_geometry(cache_bytes: int, ways: int, line: int = LINE) -> None:
    """Cachegrind needs a power-of-two number of sets."""
    sets = cache_bytes // max(ways * line, 1)
    if sets < 1 or sets * ways * line != cache_bytes or sets & (sets - 1):
        raise FuserError(
            f"simulated cache {cache_bytes} B, {ways} ways, {line} B lines: cachegrind needs "
            "size = ways x line x a power of two (e.g. 128KB with 8 ways, 1MB with 16)"
        )


def valgrind_available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("cg_annotate") is not None


def simulate_dram(
    build_dir: str | os.PathLike,
    inputs: dict[str, np.ndarray],
    kernels: list[str],
    cache_bytes: int,
    ways: int | None = None,
    runs: int = 1,
    timeout: float = 3600.0,
) -> Traffic:
    """Run the build in ``build_dir`` ``runs`` times under cachegrind with a last-level cache of
    ``cache_bytes`` and return the misses of each kernel in ``kernels``, per run."""
    if not valgrind_available():
        raise FuserError("measuring DRAM traffic needs valgrind (apt-get install valgrind)")
    ways = ways or default_ways(cache_bytes)
    check_geometry(cache_bytes, ways)
    with tempfile.TemporaryDirectory(prefix="fuser-cachesim-") as tmp:
        feeds = Path(tmp) / "inputs.npz"
        np.savez(feeds, **{f"arg_{i}": np.ascontiguousarray(a) for i, a in enumerate(inputs.values())})
        cmd = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            f"--LL={cache_bytes},{ways},{LINE}",
            "--trace-children=yes",
            f"--cachegrind-out-file={tmp}/cachegrind.out.%p",
            sys.executable,
            str(_RUNNER),
            str(build_dir),
            str(feeds),
            str(runs),
        ]
        env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TVM_USE_RUNTIME_LIB": "1"}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise FuserError(f"cachegrind run of {build_dir} took over {timeout:.0f} s") from None
        if done.returncode != 0:
            # valgrind's own lines start with ==pid==; the program's error is among the others
            lines = (done.stderr or done.stdout).strip().splitlines()
            tail = [ln for ln in lines if not ln.startswith("==")][-8:] or lines[-3:]
            raise FuserError(
                f"cachegrind run of {build_dir} failed (exit {done.returncode}): {' / '.join(tail)}"
            )
        traffic = Traffic(cache_bytes, ways, LINE, runs)
        for out in sorted(Path(tmp).glob("cachegrind.out.*")):
            _add_annotation(traffic, _annotate(out), kernels)
    for k in traffic.kernels.values():
        k.read_misses //= runs
        k.write_misses //= runs
        k.instructions //= runs
        k.instruction_misses //= runs
    return traffic


def _annotate(path: Path) -> str:
    done = subprocess.run(
        ["cg_annotate", "--show=Ir,ILmr,DLmr,DLmw", "--threshold=0", "--auto=no", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def kernel_of(function: str, kernels: list[str]) -> str | None:
    """The kernel a function of model.so belongs to: the kernel itself, or the body TVM
    outlined from it for the thread pool (``<kernel>_compute_``)."""
    for k in kernels:
        if function == k or re.fullmatch(re.escape(k) + r"_compute_\d*", function):
            return k
    return None


def _add_annotation(traffic: Traffic, text: str, kernels: list[str]) -> None:
    for line in text.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        function = m.group(5).rsplit(":", 1)[-1].strip()
        kernel = kernel_of(function, kernels)
        if kernel is None:
            continue
        ir, ilmr, dlmr, dlmw = (int(m.group(i).replace(",", "")) for i in range(1, 5))
        k = traffic.kernels.setdefault(kernel, KernelTraffic(kernel))
        k.instructions += ir
        k.instruction_misses += ilmr
        k.read_misses += dlmr
        k.write_misses += dlmw
