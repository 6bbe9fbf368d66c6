"""Files fuser writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fuser.ir import FuserError


def atomic_write(path: str | os.PathLike, data: bytes, *, protect: Sequence[str | os.PathLike] = ()) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; never over an input."""
    path = Path(path)
    for p in protect:
        if Path(p).exists() and path.exists() and path.resolve() == Path(p).resolve():
            raise FuserError(f"{path}: refusing to overwrite the input; choose another output path")
    if path.parent and not path.parent.exists():
        raise FuserError(f"{path}: folder '{path.parent}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
