"""fuser: graph compiler and operator-fusion optimizer for CNNs.

    import fuser
    g = fuser.from_onnx("model.onnx", input_shapes={"x": (1, 3, 224, 224)})
    g = fuser.optimize(g)            # cleanups + BN folding; g.report says what changed
    fuser.save_onnx(g, "out.onnx")   # or g.to_onnx(), g.to_torch()

Feature entry points (imported on first use, so ``import fuser`` stays light):
``fuser.tune_mode`` / ``fuser.convbn`` (ConvBN Tune mode), ``fuser.partition``
(fusion plans), ``fuser.prune`` (structured pruning), ``fuser.find_blocks`` (block
fusion), ``fuser.load`` (a compiled TVM artifact).
"""

import importlib

__version__ = "0.1.0"

from fuser.frontends.torch import from_torch  # noqa: E402
from fuser.serde.onnx import from_onnx, save_onnx, to_onnx  # noqa: E402

from .api import info, optimize, to_graph  # noqa: E402
from .ir import FuserError, Graph, Node, Value  # noqa: E402

_LAZY = {
    "tune_mode": "fuser.torchtools.convbn",
    "convbn": "fuser.torchtools.convbn",
    "partition": "fuser.fusion",
    "Plan": "fuser.fusion",
    "prune": "fuser.pruning",
    "find_blocks": "fuser.blockfusion",
    "blocks_report": "fuser.blockfusion",
    "load": "fuser.backends.tvm.artifact",
}


def __getattr__(name: str):
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
    "to_onnx",
    "save_onnx",
    "optimize",
    "info",
    "to_graph",
    "__version__",
    *_LAZY,
]
