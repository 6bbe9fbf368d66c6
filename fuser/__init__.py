"""fuser: graph compiler and operator-fusion optimizer for CNNs.

    import fuser
    g = fuser.from_onnx("model.onnx", input_shapes={"x": (1, 3, 224, 224)})
    opt = fuser.optimize(g)            # cleanups + BN folding: a Result (.graph, .report)
    print(opt.report)                  # what each pass changed
    fuser.save_onnx(opt, "out.onnx")   # or fuser.to_onnx(opt), fuser.to_torch(opt)

Feature entry points (imported on first use, so ``import fuser`` stays light):
``fuser.tune_mode`` / ``fuser.convbn`` (ConvBN Tune mode), ``fuser.partition``
(fusion plans), ``fuser.prune`` (structured pruning; ``fuser.prune_module`` shrinks the
user's own nn.Module in place), ``fuser.find_blocks`` (block fusion), ``fuser.load`` (a
compiled TVM artifact), ``fuser.report`` (the report page's data, and the page).
"""

import importlib

from . import api as _api  # noqa: E402
from ._version import __version__  # noqa: E402
from .api import *  # noqa: E402,F403  (the facade: its __all__ is fuser's public API)
from .frontends.onnx import from_onnx  # noqa: E402
from .frontends.torch import from_torch  # noqa: E402
from .ir import FuserError, Graph, Node, Value  # noqa: E402

_LAZY = {
    "tune_mode": "fuser.torchtools.convbn",
    "convbn": "fuser.torchtools.convbn",
    "Plan": "fuser.fusion",
    "blocks_report": "fuser.blockfusion",
    "load": "fuser.backends.tvm.artifact",
}


def __getattr__(name: str):
    if name == "models":  # fuser.models.names() after a plain `import fuser`, as the README writes it
        return importlib.import_module("fuser.models")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fuser' has no attribute '{name}'")


__all__ = [
    "FuserError",
    "Graph",
    "Node",
    "Value",
    "from_onnx",
    "from_torch",
    "__version__",
    *_api.__all__,
    *_LAZY,
]
