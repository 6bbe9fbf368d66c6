"""Run compiled code in a child process, so a native crash fails one test, not the suite.

Generated code that uses an instruction this CPU lacks dies with SIGILL, and a bad
kernel with SIGSEGV; in pytest's own process either ends the whole run with no
summary. Tests that execute TVM builds therefore run them here:

    model = native.load(build_dir)        # fuser.load, in the child
    outputs = model(x)                    # a crash raises NativeCrash("... SIGILL")
    outputs = native.run_graph(graph, feeds, groups)   # compile here, run there
    result = native.run_cli("run", build_dir, "--input", "x.npy")  # `python -m fuser` child

One worker process (started with spawn: no fork of a process holding thread pools)
serves every call and is replaced after a crash; what the child raises (a FuserError
on bad input, say) is raised again here.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALL_TIMEOUT_S = 900


class NativeCrash(AssertionError):
    """The child running compiled code died (a signal, or an abnormal exit)."""


def describe_exit(code: int) -> str:
    """'SIGILL' for a death by signal 4 (exit code -4), else 'exit status N'."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _serve(conn) -> None:  # pragma: no cover - runs in the child
    models = {}  # build folder -> loaded model
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        try:
            if kind == "load":
                import fuser

                models[payload] = fuser.load(payload)
                value = None
            elif kind == "run":
                build_dir, args, kwargs = payload
                value = models[build_dir](*args, **kwargs)
            elif kind == "forget":
                models.pop(payload, None)
                value = None
            else:
                fn, args = payload
                value = fn(*args)
            conn.send(("ok", value))
        except Exception as e:  # handed back to the test
            conn.send(("raise", e))


class _Worker:
    def __init__(self):
        self.proc = self.conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def request(self, what: str, kind: str, payload):
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((kind, payload))
        waited = 0.0
        while waited <= CALL_TIMEOUT_S and self.proc.is_alive():
            if self.conn.poll(1.0):
                try:
                    status, value = self.conn.recv()
                except (EOFError, ConnectionError):  # the child died while answering
                    break
                if status == "raise":
                    raise value
                return value
            waited += 1.0
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        code, self.proc = self.proc.exitcode, None
        if waited > CALL_TIMEOUT_S:
            raise NativeCrash(f"{what}: no answer from the child process in {CALL_TIMEOUT_S} s")
        raise NativeCrash(f"{what}: the child process running compiled code died with {describe_exit(code)}")


_worker = _Worker()


def call(fn, *args):
    """``fn(*args)`` in the worker (fn and args picklable)."""
    return _worker.request(getattr(fn, "__name__", "call"), "call", (fn, args))


class ChildModel:
    """fuser.load(build_dir), living in the worker: call it like the model."""

    def __init__(self, build_dir):
        self.build_dir = str(build_dir)
        _worker.request(f"loading {self.build_dir}", "load", self.build_dir)

    def __call__(self, *args, **kwargs):
        return _worker.request(f"running {self.build_dir}", "run", (self.build_dir, args, kwargs))

    def close(self) -> None:
        """Unload the build in the worker."""
        _worker.request(f"unloading {self.build_dir}", "forget", self.build_dir)


def load(build_dir) -> ChildModel:
    """fuser.load(build_dir) in the worker (its checks run there too; a refused build
    raises the FuserError here)."""
    return ChildModel(build_dir)


def run_graph(graph, feeds: dict, groups=None, target: str = "llvm") -> list:
    """Compile ``graph`` here (to_relax + build), save it, and run it in the worker."""
    from fuser.backends import tvm as tb

    tvm_target = tb.make_target(target)
    executable = tb.build(tb.to_relax(graph, groups), tvm_target, planned=bool(groups))
    return run_executable(executable, graph, tvm_target, feeds)


def run_executable(executable, graph, tvm_target, feeds: dict) -> list:
    """Save ``executable`` (built from ``graph`` for ``tvm_target``) and run it in the worker."""
    from fuser.backends.tvm import artifact

    with tempfile.TemporaryDirectory(prefix="fuser-native-") as d:
        artifact.save(d, executable, graph, tvm_target)
        model = ChildModel(d)
        outputs = model(**feeds)
        model.close()
        return outputs


def run_cli(*args, timeout: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m fuser ARGS` in a child process (stdout and stderr captured as text);
    a death by signal raises NativeCrash naming it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "fuser", *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode < 0:
        raise NativeCrash(
            f"`fuser {' '.join(map(str, args))}` died with {describe_exit(result.returncode)}\n"
            + result.stderr[-2000:]
        )
    return result
