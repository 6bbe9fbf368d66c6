"""HiGHS in a worker process: the same answers as scipy's milp in this process, and a time limit
that holds even when the solver does not answer."""

import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix

from fuser.fusion import milp as worker_milp


def knapsack(seed: int, n: int = 30):
    rng = np.random.default_rng(seed)
    value, weight = rng.integers(1, 50, n), rng.integers(1, 30, n)
    a = csr_matrix(weight.reshape(1, n).astype(float))
    return -value.astype(float), a, [-np.inf], [weight.sum() / 3], np.ones(n), np.zeros(n), np.ones(n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_worker_answers_as_scipys_milp_does_in_process(seed):
    c, a, row_lo, row_hi, integrality, lo, hi = knapsack(seed)
    options = {"time_limit": 30.0, "disp": False, "mip_rel_gap": 0}
    here = milp(
        c,
        constraints=LinearConstraint(a, row_lo, row_hi),
        integrality=integrality,
        bounds=Bounds(lo, hi),
        options=options,
    )
    there = worker_milp.solve_milp(c, a, row_lo, row_hi, integrality, lo, hi, options)
    assert there.status == here.status == 0
    assert there.fun == here.fun
    np.testing.assert_array_equal(there.x, here.x)
    assert there.mip_dual_bound == here.mip_dual_bound


def test_a_model_without_rows_solves_on_its_bounds():
    res = worker_milp.solve_milp(
        np.array([1.0, -2.0]),
        None,
        [],
        [],
        np.array([1, 0]),
        np.array([1.0, 0.0]),
        np.array([3.0, 2.5]),
        {"time_limit": 5.0},
    )
    assert res.status == 0
    np.testing.assert_array_equal(res.x, [1.0, 2.5])
    assert res.fun == -4.0


def test_workers_are_kept_for_the_next_solve():
    model = knapsack(3)
    worker_milp.solve_milp(*model, {"time_limit": 5.0})
    kept = list(worker_milp._idle)
    worker_milp.solve_milp(*model, {"time_limit": 5.0})
    assert kept and worker_milp._idle == kept


def test_a_worker_silent_past_its_time_limit_is_killed_and_the_answer_is_a_time_out(monkeypatch):
    # a worker that reads the model and never answers: HiGHS stuck inside one call
    silent = [sys.executable, "-c", "import sys, time; sys.stdin.buffer.read(1); time.sleep(120)"]
    monkeypatch.setattr(worker_milp, "WORKER_ARGS", silent)
    monkeypatch.setattr(worker_milp, "_idle", [])
    monkeypatch.setattr(worker_milp, "GRACE_S", 0.5)
    spawned = []
    popen = subprocess.Popen
    monkeypatch.setattr(
        worker_milp.subprocess, "Popen", lambda *a, **k: spawned.append(popen(*a, **k)) or spawned[-1]
    )
    start = time.perf_counter()
    res = worker_milp.solve_milp(*knapsack(4), {"time_limit": 0.5})
    took = time.perf_counter() - start
    assert (res.status, res.x, res.fun, res.mip_dual_bound) == (1, None, None, None)
    assert 0.5 * worker_milp.OVERRUN + 0.5 <= took < 10
    assert len(spawned) == 1 and spawned[0].poll() is not None  # killed, and not kept
    assert worker_milp._idle == []


def test_a_worker_that_dies_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(worker_milp, "WORKER_ARGS", [sys.executable, "-c", "import sys; sys.exit(3)"])
    monkeypatch.setattr(worker_milp, "_idle", [])
    with pytest.raises(RuntimeError, match="HiGHS worker process died \\(exit code 3\\)"):
        worker_milp.solve_milp(*knapsack(5), {"time_limit": 5.0})


NOISY_WORKER = """
import ctypes, runpy, sys
import scipy.optimize
real = scipy.optimize.milp
def noisy(*args, **kwargs):  # as HiGHS does on some MILPs: C's printf on standard output
    libc = ctypes.CDLL(None)
    libc.printf(b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\\n")
    libc.fflush(None)
    return real(*args, **kwargs)
scipy.optimize.milp = noisy
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_what_highs_prints_does_not_reach_the_answers(monkeypatch):
    monkeypatch.setattr(
        worker_milp, "WORKER_ARGS", [sys.executable, "-c", NOISY_WORKER, worker_milp.__file__]
    )
    monkeypatch.setattr(worker_milp, "_idle", [])
    c, a, row_lo, row_hi, integrality, lo, hi = model = knapsack(6)
    options = {"time_limit": 30.0, "disp": False}
    here = milp(
        c,
        constraints=LinearConstraint(a, row_lo, row_hi),
        integrality=integrality,
        bounds=Bounds(lo, hi),
        options=options,
    )
    for _ in range(2):
        assert worker_milp.solve_milp(*model, options).fun == here.fun


def test_a_process_with_many_open_files_still_solves(monkeypatch):
    # a worker's pipe numbered past 1024 (a Ray worker, a server): select() cannot wait on it
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"this process may open only {soft} files")
    monkeypatch.setattr(worker_milp, "_idle", [])
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        res = worker_milp.solve_milp(*knapsack(7), {"time_limit": 5.0})
        assert res.status == 0 and worker_milp._idle[0].stdout.fileno() > 1024
    finally:
        for fd in held:
            os.close(fd)
        for worker in worker_milp._idle:
            worker.kill()


SLOW_WORKER = """
import runpy, sys, time
import scipy.optimize
real, calls = scipy.optimize.milp, []
def slow(*args, **kwargs):  # the second solve runs on and on
    calls.append(1)
    return real(*args, **kwargs) if len(calls) == 1 else time.sleep(120)
scipy.optimize.milp = slow
runpy.run_path(sys.argv[1], run_name="__main__")
"""

PARENT = """
import os, subprocess, sys, threading, time
from fuser.fusion import milp
milp.WORKER_ARGS = [sys.executable, "-c", sys.argv[1], milp.__file__]
started, popen = [], subprocess.Popen
subprocess.Popen = lambda *args, **kwargs: started.append(popen(*args, **kwargs)) or started[-1]
model = ([1.0], None, [], [], [1], [0.0], [1.0], {"time_limit": 100.0})
milp.solve_milp(*model)  # the worker is up and serving
threading.Thread(target=milp.solve_milp, args=model, daemon=True).start()
print(started[0].pid, flush=True)
time.sleep(0.5)
os._exit(0)  # killed: no atexit, the worker still busy
"""


def test_a_busy_worker_ends_when_its_parent_is_killed():
    parent = subprocess.run(
        [sys.executable, "-c", PARENT, SLOW_WORKER], capture_output=True, text=True, timeout=60
    )
    pid = int(parent.stdout.split()[0])
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_worker_that_dies_mid_answer_is_a_clear_error(monkeypatch):
    half = "import sys; sys.stdin.buffer.read(1); sys.stdout.buffer.write(b'\\x80\\x05}q'); sys.exit(4)"
    monkeypatch.setattr(worker_milp, "WORKER_ARGS", [sys.executable, "-c", half])
    monkeypatch.setattr(worker_milp, "_idle", [])
    with pytest.raises(RuntimeError, match="HiGHS worker process died \\(exit code 4\\)"):
        worker_milp.solve_milp(*knapsack(8), {"time_limit": 5.0})
