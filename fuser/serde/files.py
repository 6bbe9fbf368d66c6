"""Files fuser writes: a temporary file in the same folder, then a rename.

``atomic_write`` refuses, with a FuserError and nothing written:
  - an empty path, or one that exists and is not a regular file (a folder, a device such as
    /dev/null, a FIFO, a socket);
  - a path that is a file fuser reads in this process (``protect_inputs``: the CLI registers
    each MODEL and its external-data files) or one of ``protect``: the same file by inode, so
    symlinks and hard links to an input count too;
  - a folder that is missing or not writable, and a disk that fills up (the temporary file is
    removed).
A symlink at the path is followed (its target is replaced, the link stays). The file gets
the mode of the file it replaces, or 0666 minus the umask for a new one (as ``open`` makes
it), not mkstemp's 0600.

A command with several outputs checks them all with ``check_outputs`` before it writes
any: two of its outputs that are the same file (one real path, or one inode through links)
are refused too, so a refusal leaves nothing half written.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from fuser.ir import FuserError

_INPUTS: set[str] = set()  # realpaths of files read in this process that no output may replace


def protect_inputs(paths: Iterable[str | os.PathLike]) -> None:
    """Register files (a model, its external data) that no later write may replace."""
    _INPUTS.update(os.path.realpath(p) for p in paths)


def _same_file(a: str, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | os.PathLike, protect: Sequence[str | os.PathLike] = ()) -> Path:
    """The real path an output will be written to, after the checks in the module docstring."""
    if not str(path):
        raise FuserError("the output path is empty; give a file name")
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise FuserError(f"{path}: cannot use it as an output ({e.strerror or e})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FuserError(f"{path}: is a folder; give a file name for the output")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise FuserError(
            f"{path}: is not a regular file (a device, FIFO or socket); fuser writes outputs only as "
            "regular files"
        )
    if st is not None:
        for p in list(protect) + sorted(_INPUTS):
            if _same_file(str(target), p):
                raise FuserError(
                    f"{path}: is an input of this command ({p}); refusing to overwrite it, choose another "
                    "output path"
                )
    if not target.parent.is_dir():
        raise FuserError(f"{path}: folder '{Path(path).parent}' does not exist")
    return target


def check_outputs(
    paths: Iterable[str | os.PathLike],
    protect: Sequence[str | os.PathLike] = (),
    *,
    new_folders: Iterable[str | os.PathLike] = (),
) -> None:
    """``check_output`` for each of one command's outputs, after refusing two of them that are
    the same file. ``new_folders``: folders the command makes before writing into them; while
    one is missing, the paths inside it can only clash with each other, so that is all that is
    checked of them."""
    paths = list(paths)
    for i, a in enumerate(paths):
        for b in paths[:i]:
            if _same_file(str(a), b):
                raise FuserError(
                    f"{a}: is also given as another output of this command ({b}); "
                    "choose a different path for each output"
                )
    missing = [Path(os.path.realpath(f)) for f in new_folders if not os.path.exists(f)]
    for p in paths:
        folder = Path(os.path.realpath(p)).parent
        if not any(folder == m or m in folder.parents for m in missing):
            check_output(p, protect)


def new_file_mode(executable: bool = False) -> int:
    """The mode of a new file: 0666 minus the umask (as ``open`` makes one), or 0777 minus it
    for an executable or shared library (as a linker makes one)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if executable else 0o666) & ~mask


def atomic_write(path: str | os.PathLike, data: bytes, *, protect: Sequence[str | os.PathLike] = ()) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (see the module docstring)."""
    target = check_output(path, protect)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = new_file_mode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise FuserError(
            f"{path}: cannot write in folder '{target.parent}' ({e.strerror or e}); "
            "choose another output path"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as e:
        _remove(tmp)
        raise FuserError(f"{path}: writing it failed ({e.strerror or e}); nothing was written") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)
