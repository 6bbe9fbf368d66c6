"""fuser: graph compiler and operator-fusion optimizer for CNNs.

    import fuser
    g = fuser.from_onnx("model.onnx", input_shapes={"x": (1, 3, 224, 224)})
    g = fuser.optimize(g)            # cleanups (+ later passes); g.report says what changed
    fuser.save_onnx(g, "out.onnx")   # or g.to_onnx(), g.to_torch()
"""
__version__ = "0.1.0"

from .ir import FuserError, Graph, Node, Value  # noqa: E402
from .onnx_io import from_onnx, save_onnx, to_onnx  # noqa: E402
from .capture import from_torch  # noqa: E402
from .api import info, optimize, to_graph  # noqa: E402


__all__ = ["FuserError", "Graph", "Node", "Value", "from_onnx", "from_torch", "to_onnx",
           "save_onnx", "optimize", "info", "to_graph", "__version__"]
