"""tests/native.py: compiled code runs in a child process, so a native crash fails the one
test that ran it, naming the signal, and the next call gets a fresh child."""

from __future__ import annotations

import os
import signal

import native
import pytest


def test_a_crash_in_the_child_is_reported_by_signal_name():
    parent = os.getpid()
    assert native.call(os.getpid) != parent  # the call really runs elsewhere
    with pytest.raises(native.NativeCrash, match="died with SIGILL"):
        native.call(signal.raise_signal, signal.SIGILL)
    with pytest.raises(native.NativeCrash, match="died with SIGSEGV"):
        native.call(signal.raise_signal, signal.SIGSEGV)
    assert native.call(abs, -3) == 3  # a fresh child serves the next call


def test_an_exception_in_the_child_is_raised_here():
    with pytest.raises(ZeroDivisionError):
        native.call(divmod, 1, 0)


def test_cli_child_death_names_the_signal(tmp_path, monkeypatch):
    """`python -m fuser` killed by a signal: NativeCrash names it (here SIGABRT, raised by
    a sitecustomize the child imports first)."""
    (tmp_path / "sitecustomize.py").write_text("import signal\nsignal.raise_signal(signal.SIGABRT)\n")
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), old]))
    with pytest.raises(native.NativeCrash, match="died with SIGABRT"):
        native.run_cli("--version")
    monkeypatch.setenv("PYTHONPATH", old)
    assert native.run_cli("--version").returncode == 0
