"""HiGHS (``scipy.optimize.milp``) in a worker process, under a time limit that holds.

HiGHS takes its ``time_limit`` as a hint: it looks at the clock between nodes and simplex
iterations, and one MILP of PicoDet's block bound stayed 10 minutes past a 6-minute limit
inside a single call. A thread cannot be stopped; a process can. So every solve goes to a
worker process (one per solve running at once, kept for the next), and a worker still busy
``time_limit·OVERRUN + GRACE_S`` seconds after it was handed the model is killed. The caller
then gets what HiGHS gives when its limit stops it with nothing found: status 1, no solution,
no bound; every caller already handles that (a bound keeps its earlier rounds). The workers
also keep HiGHS's own debug prints (printf, on a MILP of PicoDet's: "HighsMipSolverData::
transformNewIntegerFeasibleSolution tmpSolver.run();", hundreds of lines) out of the terminal.

A worker ends when its parent does, even mid-solve (a killed ``fuser fuse`` leaves no HiGHS
running on). Run as a script, this file is the worker: it reads pickled models from stdin and writes
pickled answers to stdout until stdin closes.
"""

from __future__ import annotations

import atexit
import pickle
import selectors
import subprocess
import sys
import threading
from types import SimpleNamespace

# a worker still busy this long past its time limit is killed
OVERRUN = 1.1
GRACE_S = 5.0
# -P (Python 3.11+; fuser supports 3.10): the worker's folder (this package) is not put on
# sys.path, so no module here can shadow one that scipy imports (none does today)
WORKER_ARGS = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), __file__]

_idle: list[subprocess.Popen] = []
_lock = threading.Lock()


def solve_milp(c, a, row_lower, row_upper, integrality, lower, upper, options: dict) -> SimpleNamespace:
    """``scipy.optimize.milp(c, LinearConstraint(a, row_lower, row_upper), integrality,
    Bounds(lower, upper), options)`` (no rows when ``a`` is None), solved by a worker process:
    ``x``, ``fun``, ``status``, ``mip_dual_bound`` (None where HiGHS gives none). Killed past
    its time limit (see the module docstring): status 1 and all else None."""
    model = (c, a, row_lower, row_upper, integrality, lower, upper, options)
    worker = _take()
    answer = _exchange(worker, model, options["time_limit"] * OVERRUN + GRACE_S)
    if answer is None:
        return SimpleNamespace(x=None, fun=None, status=1, mip_dual_bound=None)
    with _lock:
        _idle.append(worker)
    return SimpleNamespace(**answer)


def _take() -> subprocess.Popen:
    with _lock:
        while _idle:
            worker = _idle.pop()
            if worker.poll() is None:
                return worker
    return subprocess.Popen(
        WORKER_ARGS, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


def _exchange(worker: subprocess.Popen, model, seconds: float) -> dict | None:
    """The worker's answer to ``model``, or None after killing it when it has not answered
    within ``seconds``."""
    try:
        pickle.dump(model, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        worker.stdin.flush()
        with selectors.DefaultSelector() as waiting:  # epoll: any fd number (select's stop at 1024)
            waiting.register(worker.stdout, selectors.EVENT_READ)
            ready = waiting.select(seconds)
        if ready:
            return pickle.load(worker.stdout)
    except (BrokenPipeError, EOFError, pickle.UnpicklingError):  # died before or while answering
        raise RuntimeError(f"the HiGHS worker process died (exit code {worker.wait()})") from None
    worker.kill()
    worker.wait()
    return None


@atexit.register
def _close() -> None:
    with _lock:
        for worker in _idle:
            worker.stdin.close()  # the worker's loop ends at end of input
            worker.wait()
        _idle.clear()


def _serve() -> None:
    import os
    import time

    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    parent = os.getppid()

    def end_with_the_parent() -> None:  # a killed parent leaves no solve running (HiGHS frees the GIL)
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=end_with_the_parent, daemon=True).start()

    # HiGHS prints some debug lines with C's printf: the answers get their own copy of stdout,
    # and the file descriptor HiGHS writes to goes nowhere
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    while True:
        try:
            c, a, row_lower, row_upper, integrality, lower, upper, options = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        res = milp(
            c,
            constraints=() if a is None else LinearConstraint(a, row_lower, row_upper),
            integrality=integrality,
            bounds=Bounds(lower, upper),
            options=options,
        )
        bound = getattr(res, "mip_dual_bound", None)
        answer = {
            "x": None if res.x is None else np.asarray(res.x),
            "fun": res.fun,
            "status": res.status,
            "mip_dual_bound": None if bound is None else float(bound),
        }
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


if __name__ == "__main__":
    _serve()
