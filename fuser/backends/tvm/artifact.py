"""A deployable TVM build on disk: the compiled library (weights inside) and metadata.

    OUT_DIR/
      model.so        tvm Executable.export_library (host code + kernels + weights)
      metadata.json   inputs/outputs (name, shape, dtype), target (llvm: CPU, mattr and
                      the instruction sets the code may use; cuda: arch and its limits),
                      kernels, versions

``save`` checks both files as outputs first (``fuser.serde.files.check_outputs``: neither
may be a file this command reads, such as a MODEL named model.so in OUT_DIR), then writes
the library and the metadata last, each through a rename, so a folder with metadata.json
holds a complete build. model.so gets 0777 minus the umask, the mode a linker gives a
shared library (``cc -shared`` makes 0755 under umask 022), and metadata.json 0666 minus it.
``load`` refuses a build made with another TVM or fuser version: TVM's runtime ABI is not
stable across releases, and a silent mismatch crashes instead of failing cleanly. It also refuses
an llvm build that may use an instruction set this CPU lacks (it would die with
SIGILL), naming the fix.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from fuser.ir import FuserError, Graph
from fuser.serde.files import atomic_write, check_outputs, new_file_mode

from .common import require_tvm
from .runtime import TVMModel, value_specs

LIBRARY = "model.so"
METADATA = "metadata.json"
FORMAT = 2  # 2: llvm builds record cpu_features


def versions() -> dict[str, str]:
    """The versions a build depends on: fuser, TVM and TVM's FFI."""
    from fuser._version import __version__

    require_tvm()
    import tvm
    import tvm_ffi

    return {
        "fuser": __version__,
        "tvm": tvm.__version__,
        "tvm_ffi": getattr(tvm_ffi, "__version__", "unknown"),
    }


def check_build_outputs(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The real paths of OUT_DIR's model.so and metadata.json, created OUT_DIR included, after
    the checks of ``check_outputs``; a FuserError, with nothing written, for either one."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FuserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    check_outputs([out / LIBRARY, out / METADATA])
    # written where a symlink points, as atomic_write does
    return Path(os.path.realpath(out / LIBRARY)), Path(os.path.realpath(out / METADATA))


def save(out_dir: str | os.PathLike, executable, graph: Graph, target, *, extra: dict | None = None) -> dict:
    """Write ``executable`` (built from ``graph`` for the tvm Target ``target``) to
    ``out_dir``; returns the metadata written."""
    from .target import target_record

    library, metadata = check_build_outputs(out_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{LIBRARY}.", suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        executable.export_library(tmp)
        os.chmod(tmp, new_file_mode(executable=True))  # mkstemp made it 0600
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {
        "format": FORMAT,
        "model": graph.name,
        "source": graph.source,
        "target": target.kind.name,
        **target_record(target),
        "inputs": value_specs(graph.inputs),
        "outputs": value_specs(graph.outputs),
        "versions": versions(),
        **(extra or {}),
    }
    atomic_write(metadata, (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def read_metadata(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / METADATA
    if not path.is_file():
        raise FuserError(
            f"{out_dir}: not a fuser TVM build (no {METADATA}); make one with `fuser compile MODEL -o DIR`"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FuserError(f"{path}: unreadable metadata ({e})") from None


def check_versions(meta: dict, where: str) -> None:
    """Raise a FuserError naming each version that differs from this installation."""
    built, here = meta.get("versions", {}), versions()
    diff = [f"{k} {built.get(k)} (here {v})" for k, v in here.items() if built.get(k) != v]
    if diff or meta.get("format") != FORMAT:
        raise FuserError(
            f"{where}: built with "
            + ", ".join(diff or ["another format"])
            + "; rebuild it with `fuser compile`"
        )


def check_cpu(meta: dict, where: str) -> None:
    """Raise a FuserError when an llvm build may use an instruction set this CPU lacks."""
    from .cpu import check_features

    check_features(meta.get("cpu"), meta.get("cpu_features") or [], where)


def load(out_dir: str | os.PathLike) -> TVMModel:
    """A build written by ``save`` / `fuser compile`, as a callable on numpy arrays:
    ``model(x)`` or ``model(name=array)`` -> list of output arrays."""
    require_tvm()
    import tvm

    meta = read_metadata(out_dir)
    check_versions(meta, str(out_dir))
    lib = Path(out_dir) / LIBRARY
    if not lib.is_file():
        raise FuserError(f"{out_dir}: {LIBRARY} is missing; rebuild with `fuser compile`")
    check_cpu(meta, str(out_dir))
    if meta["target"] == "cuda":
        from .target import cuda_available

        if not cuda_available():
            raise FuserError(f"{out_dir}: a cuda build needs a CUDA GPU, and none is visible")
    module = tvm.runtime.load_module(str(lib))
    model = TVMModel(module, meta["inputs"], meta["outputs"], "cuda" if meta["target"] == "cuda" else "cpu")
    model.metadata = meta
    return model
