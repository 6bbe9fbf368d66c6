"""The TVM import guard shared by the backend's modules (TVM is the optional extra ``tvm``)."""

from __future__ import annotations

from fuser.ir import FuserError

try:
    import tvm
    from tvm import relax, topi
    from tvm.relax import op as R
except ImportError:  # pragma: no cover - exercised where tvm is absent
    tvm = relax = topi = R = None


def require_tvm() -> None:
    """Raise a FuserError that says how to install TVM when it is missing."""
    if tvm is None:
        raise FuserError(
            "the TVM backend needs Apache TVM: pip install 'apache-tvm==0.27.*' "
            "'apache-tvm-ffi==0.1.14.post1'"
        )


def tvm_version() -> str:
    require_tvm()
    return tvm.__version__
