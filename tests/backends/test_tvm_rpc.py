"""Tuning over TVM's RPC tracker: a tracker and two RPC servers on 127.0.0.1 (started
here, each bounded in time and torn down at the end, with their children), a two-kernel
model tuned through them by `fuser compile --rpc-tracker` (MetaSchedule's RPC runner), and
the refusals of a bad tracker address."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import native
import pytest
import torch
from util import ROOT, ort_run_graph, rel_err

import fuser
from fuser.ir import FuserError

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed (pip install fuser[tvm])")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install fuser[tvm])")

from fuser.backends.tvm import tuning  # noqa: E402

KEY = "fuser-test"
START_TIMEOUT_S = 120  # TVM's import takes seconds per server on a loaded 2-core machine
LIFETIME_S = 900  # no process of this test outlives this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # timeout(1) bounds the process even if this test dies; a session of its own lets the
    # teardown kill the server's forked workers too
    return subprocess.Popen(
        ["timeout", str(LIFETIME_S), sys.executable, "-m", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def tracker():
    """'127.0.0.1:PORT' of a tracker with two servers registered under KEY."""
    from tvm import rpc

    port = _free_port()
    procs = [
        _spawn(
            "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)
        )
    ]
    try:
        for _ in range(2):
            server_port = _free_port()
            procs.append(
                _spawn(
                    "tvm.exec.rpc_server",
                    "--tracker",
                    f"127.0.0.1:{port}",
                    "--key",
                    KEY,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(server_port),
                    "--port-end",
                    str(server_port + 1),
                )
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                summary = rpc.connect_tracker("127.0.0.1", port).summary()
                if summary["queue_info"].get(KEY, {}).get("free", 0) >= 2:
                    break
            except RuntimeError:  # the tracker is not listening yet
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail(f"the RPC tracker and two servers did not come up in {START_TIMEOUT_S} s")
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class TwoConvs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_compile_cli_tunes_through_rpc_tracker(tracker, tmp_path):
    """`fuser compile --rpc-tracker`: 2 trials over the two tunable kernels (the layout
    transforms around them are one-point spaces) are 1 + 1, both default schedules are
    measured on the servers first, both kernels end tuned, and the build gives ORT's numbers."""
    x = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    graph = fuser.optimize(TwoConvs().eval(), (x,)).graph
    model = tmp_path / "two.onnx"
    fuser.save_onnx(graph, str(model))
    db, out = tmp_path / "db", tmp_path / "build"
    result = native.run_cli(
        "compile", model, "-o", out, "--tune-trials", "2", "--tuning-db", db,
        "--rpc-tracker", tracker, "--rpc-key", KEY, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    import json

    meta = json.loads(result.stdout)
    tuned = meta["tuning"]
    assert tuned["rpc_tracker"] == tracker and tuned["rpc_key"] == KEY
    assert sorted(tuned["kernels"].values()) == [1, 1]
    assert tuned["seeded"] == 2
    assert tuned["trials_run"] == 2 and tuned["build_errors"] == 0  # a run error fails the command
    schedules = meta["kernel_schedules"]
    assert sorted(schedules.values()).count("tuned") == 2 and "naive" not in schedules.values()
    feeds = {graph.inputs[0].name: x.numpy()}
    assert rel_err(native.load(out)(**feeds)[0], ort_run_graph(graph, feeds)[0]) <= 1e-4


def test_rpc_tracker_refusals(tmp_path):
    with pytest.raises(FuserError, match="give HOST:PORT"):
        tuning.rpc_runner("localhost", KEY)
    with pytest.raises(FuserError, match="cannot reach the RPC tracker"):
        tuning.rpc_runner(f"127.0.0.1:{_free_port()}", KEY)
    result = native.run_cli("compile", "zoo:resnet18", "-o", tmp_path / "o", "--rpc-key", KEY)
    assert result.returncode == 2 and "add --tune-trials N and --tuning-db" in result.stderr
    result = native.run_cli(
        "compile", "zoo:resnet18", "-o", tmp_path / "o", "--rpc-key", KEY,
        "--tune-trials", "1", "--tuning-db", tmp_path / "db",
    )  # fmt: skip
    assert result.returncode == 2 and "--rpc-tracker and --rpc-key go together" in result.stderr
    assert not (tmp_path / "o").exists()
