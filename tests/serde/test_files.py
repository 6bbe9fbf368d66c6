"""Outputs are regular files written by rename, with the umask's mode, never over an input."""

import errno
import os
import stat

import pytest

from fuser.ir import FuserError
from fuser.serde import files
from fuser.serde.files import atomic_write, check_output, protect_inputs


@pytest.fixture(autouse=True)
def no_registered_inputs(monkeypatch):
    monkeypatch.setattr(files, "_INPUTS", set())


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.onnx", b"data")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "out.onnx") == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_a_replaced_file_keeps_its_mode(tmp_path):
    p = tmp_path / "out.onnx"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    atomic_write(p, b"new")
    assert p.read_bytes() == b"new" and mode_of(p) == 0o640


def test_a_symlink_is_followed_and_kept(tmp_path):
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    atomic_write(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_refuses_a_fifo_a_folder_and_an_empty_path(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FuserError, match="not a regular file"):
        atomic_write(fifo, b"x")
    with pytest.raises(FuserError, match="is a folder"):
        atomic_write(tmp_path, b"x")
    with pytest.raises(FuserError, match="empty"):
        atomic_write("", b"x")
    assert sorted(os.listdir(tmp_path)) == ["pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_refuses_a_device_before_touching_it():
    """/dev/null is only checked (check_output writes nothing); rename would replace it as root."""
    with pytest.raises(FuserError, match="not a regular file"):
        check_output("/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_refuses_inputs_by_inode(tmp_path):
    model, data = tmp_path / "m.onnx", tmp_path / "w.bin"
    model.write_bytes(b"model")
    data.write_bytes(b"weights")
    hard = tmp_path / "hard.bin"
    os.link(data, hard)
    with pytest.raises(FuserError, match="input"):
        atomic_write(model, b"x", protect=[model])
    protect_inputs([model, data])
    for target in (data, hard, tmp_path / "." / "w.bin"):
        with pytest.raises(FuserError, match="refusing to overwrite"):
            atomic_write(target, b"x")
    assert model.read_bytes() == b"model" and data.read_bytes() == b"weights"
    assert sorted(os.listdir(tmp_path)) == ["hard.bin", "m.onnx", "w.bin"]


def test_missing_and_unwritable_folders(tmp_path):
    with pytest.raises(FuserError, match="does not exist"):
        atomic_write(tmp_path / "absent" / "out.onnx", b"x")
    with pytest.raises(FuserError, match="cannot write in folder"):  # read-only even for root
        atomic_write("/proc/fuser-out.onnx", b"x")


def test_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(FuserError, match="No space left on device.*nothing was written"):
        atomic_write(tmp_path / "out.onnx", b"x" * 100)
    assert os.listdir(tmp_path) == []
