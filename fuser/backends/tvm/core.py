"""Lower a fuser Graph to Apache TVM Relax, build it for llvm or cuda, and run it.

    from fuser.backends.tvm import core as tb
    mod = tb.to_relax(graph)                    # TVM's FuseOps decides the kernels
    mod = tb.to_relax(graph, groups=plan)       # one kernel per group of a fusion plan
    model = tb.compile_graph(graph, "llvm")     # TVMModel: model(x=array) -> [arrays]

Shapes are static in fuser's IR, so every reshaping op (Reshape, Flatten,
Squeeze, Unsqueeze, Expand) lowers to the output Value's known shape, and
attribute-like inputs (Reshape shapes, Slice bounds, Clip limits, Pad widths)
must be constants. Weights are embedded as Relax constants so FoldConstant
pre-computes weight-only work (e.g. Gemm's transposed B) at build time; the
compiled library carries them.

Grouping: when ``groups`` is given, each group becomes one Relax function marked
``Primitive``; TVM's FuseTIR merges each into exactly one TIR kernel and FuseOps
is not run, so the build has the plan's kernels. Nodes outside every group are
emitted one op per kernel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fuser.ir import FuserError, Graph, Node, Value, stable_topological_order

try:  # TVM is an optional extra: `pip install fuser[tvm]`
    import tvm
    from tvm import relax, topi
    from tvm.relax import op as R
except ImportError:  # pragma: no cover - exercised where tvm is absent
    tvm = relax = topi = R = None

GROUP_FUNC_PREFIX = "fuser_group_"


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


# ---- per-op lowering ------------------------------------------------------------
class _Lower:
    """What a converter sees of one node: its relax inputs, constants and attributes."""

    def __init__(self, bb, node: Node, args: list):
        self.bb, self.node, self.args = bb, node, args

    def attr(self, key: str, default: Any = None) -> Any:
        return self.node.attrs.get(key, default)

    def const(self, i: int) -> np.ndarray | None:
        v = self.node.input(i)
        return None if v is None else v.const

    def ints(self, i: int) -> list[int] | None:
        """A constant int input (shape, axes, pads) as a list; None when absent."""
        v = self.node.input(i)
        if v is None:
            return None
        if v.const is None:
            raise self.fail(f"input {i} ({v.name}) must be a constant")
        return [int(a) for a in np.asarray(v.const).reshape(-1)]

    def scalar(self, i: int, default: float | None = None) -> float | None:
        v = self.node.input(i)
        if v is None:
            return default
        if v.const is None:
            raise self.fail(f"input {i} ({v.name}) must be a constant")
        return float(np.asarray(v.const).reshape(-1)[0])

    @property
    def out_shape(self) -> list[int]:
        return [int(d) for d in self.node.output.shape]

    @property
    def rank(self) -> int:
        return len(self.node.input(0).shape)

    def fail(self, msg: str) -> FuserError:
        n = self.node
        src = n.graph.source if n.graph is not None else "<graph>"
        return FuserError(f"{src}: node {n.name} ({n.op}): {msg} (TVM backend)")


def _spatial_pads(
    c: _Lower,
    in_sp: Sequence[int],
    kernel: Sequence[int],
    strides,
    dilations,
    out_sp: Sequence[int] | None = None,
) -> list[int]:
    """ONNX pads [b1, b2, .., e1, e2, ..] with auto_pad resolved (SAME_* from the static shape)."""
    n = len(kernel)
    auto = c.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(c.attr("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for i in range(n):
        k_eff = (kernel[i] - 1) * dilations[i] + 1
        out = -(-in_sp[i] // strides[i])
        total = max((out - 1) * strides[i] + k_eff - in_sp[i], 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _channel_bias(x, b, rank: int):
    """x + b broadcast along axis 1 (conv bias)."""
    return R.add(x, R.reshape(b, [1, -1] + [1] * (rank - 2)))


def _conv(c: _Lower, x, w, b=None):
    rank = c.rank
    n = rank - 2
    wshape = c.node.input(1).shape
    kernel = c.attr("kernel_shape", list(wshape[2:]))
    strides = c.attr("strides", [1] * n)
    dil = c.attr("dilations", [1] * n)
    pads = _spatial_pads(c, c.node.input(0).shape[2:], kernel, strides, dil)
    group = c.attr("group", 1)
    if n == 2:
        y = R.nn.conv2d(x, w, strides, pads, dil, group)
    elif n == 1:
        y = R.nn.conv1d(x, w, strides, pads, dil, group)
    else:
        raise c.fail(f"{n}-d convolution is not supported")
    return _channel_bias(y, b, rank) if b is not None else y


def _conv_transpose(c: _Lower, x, w, b=None):
    n = c.rank - 2
    if n != 2:
        raise c.fail(f"{n}-d transposed convolution is not supported")
    if c.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "") or c.attr("output_shape"):
        raise c.fail("auto_pad/output_shape are not supported; give explicit pads")
    strides = c.attr("strides", [1] * n)
    y = R.nn.conv2d_transpose(
        x,
        w,
        strides,
        c.attr("pads", [0] * 2 * n),
        c.attr("output_padding", [0] * n),
        c.attr("dilations", [1] * n),
        c.attr("group", 1),
    )
    return _channel_bias(y, b, c.rank) if b is not None else y


def _gemm(c: _Lower, a, b, cc=None):
    if c.attr("transA", 0):
        a = R.permute_dims(a, [1, 0])
    if c.attr("transB", 0):
        b = R.permute_dims(b, [1, 0])
    y = R.matmul(a, b)
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if alpha != 1.0:
        y = R.multiply(y, relax.const(alpha, "float32"))
    if cc is not None and beta != 0.0:
        y = R.add(y, cc if beta == 1.0 else R.multiply(cc, relax.const(beta, "float32")))
    return y


def _pool(c: _Lower, x):
    n = c.rank - 2
    if n != 2:
        raise c.fail(f"{n}-d pooling is not supported")
    kernel = c.attr("kernel_shape")
    strides = c.attr("strides", [1] * n)
    dil = c.attr("dilations", [1] * n)
    pads = _spatial_pads(c, c.node.input(0).shape[2:], kernel, strides, dil)
    ceil = bool(c.attr("ceil_mode", 0))
    if c.node.op == "MaxPool":
        if len(c.node.outputs) > 1 and c.node.outputs[1].uses:
            raise c.fail("MaxPool indices output is not supported")
        return R.nn.max_pool2d(x, kernel, strides, pads, dil, ceil)
    return R.nn.avg_pool2d(x, kernel, strides, pads, dil, ceil, bool(c.attr("count_include_pad", 0)))


def _clip(c: _Lower, x, *_):
    if c.node.domain == "" and len(c.node.inputs) == 1 and "min" in c.node.attrs:
        lo, hi = c.attr("min"), c.attr("max")  # opset < 11
    else:
        lo, hi = c.scalar(1), c.scalar(2)
    big = float(np.finfo(np.float32).max)  # open bounds: clip needs numbers
    return R.clip(x, -big if lo is None else float(lo), big if hi is None else float(hi))


def _hard_sigmoid(c: _Lower, x, alpha: float | None = None, beta: float | None = None):
    alpha = float(c.attr("alpha", 0.2)) if alpha is None else alpha
    beta = float(c.attr("beta", 0.5)) if beta is None else beta
    y = R.add(R.multiply(x, relax.const(alpha, "float32")), relax.const(beta, "float32"))
    return R.clip(y, 0.0, 1.0)


def _hard_swish(c: _Lower, x):
    return R.multiply(x, _hard_sigmoid(c, x, 1.0 / 6.0, 0.5))


def _gelu(c: _Lower, x):
    approx = c.attr("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return R.nn.gelu_tanh(x) if approx == "tanh" else R.nn.gelu(x)


def _softmax(c: _Lower, x):
    return R.nn.softmax(x, c.attr("axis", -1))


def _layernorm(c: _Lower, x, scale, bias=None):
    axis = c.attr("axis", -1) % c.rank
    if bias is None:
        # zeros computed from scale, not an array: a plan group's primitive function may
        # not hold tensor constants (and TVM 0.27's center=False gives wrong results)
        bias = c.bb.emit(R.multiply(scale, relax.const(0.0, "float32")))
    return R.nn.layer_norm(x, scale, bias, list(range(axis, c.rank)), float(c.attr("epsilon", 1e-5)))


def _batchnorm(c: _Lower, x, scale, bias, mean, var, *_):
    """Inference BatchNormalization left after folding (no conv before it). Written with
    ops, not folded arrays: a plan group's function may not hold tensor constants, and
    outside groups FoldConstant pre-computes the weight-only part anyway."""
    shape = [1, int(c.node.input(0).shape[1])] + [1] * (c.rank - 2)
    eps = relax.const(float(c.attr("epsilon", 1e-5)), "float32")
    inv_std = R.divide(scale, R.sqrt(R.add(var, eps)))
    return R.add(
        R.multiply(R.subtract(x, R.reshape(mean, shape)), R.reshape(inv_std, shape)), R.reshape(bias, shape)
    )


def _reduce(fn: Callable) -> Callable:
    def lower(c: _Lower, x, axes_in=None):
        axes = c.attr("axes")
        if axes is None and c.node.input(1) is not None:
            axes = c.ints(1)
        if not axes:
            if c.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(c.rank))
        return fn(x, [a % c.rank for a in axes], bool(c.attr("keepdims", 1)))

    return lower


def _global_avgpool(c: _Lower, x):
    return R.mean(x, list(range(2, c.rank)), keepdims=True)


def _to_out_shape(c: _Lower, x, *_):
    """Reshape/Flatten/Squeeze/Unsqueeze: the output's static shape says it all."""
    return R.reshape(x, c.out_shape)


def _expand(c: _Lower, x, *_):
    return R.broadcast_to(x, c.out_shape)


def _transpose(c: _Lower, x):
    return R.permute_dims(x, c.attr("perm", list(range(c.rank))[::-1]))


def _concat(c: _Lower, *xs):
    return R.concat([x for x in xs if x is not None], c.attr("axis"))


def _split(c: _Lower, x, *_):
    axis = c.attr("axis", 0) % c.rank
    sizes = [int(o.shape[axis]) for o in c.node.outputs]
    parts = c.bb.emit(R.split(x, list(np.cumsum(sizes)[:-1].tolist()), axis))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


def _slice(c: _Lower, x, *_):
    if "starts" in c.node.attrs:  # opset < 10
        starts, ends = c.attr("starts"), c.attr("ends")
        axes, steps = c.attr("axes"), None
    else:
        starts, ends, axes, steps = c.ints(1), c.ints(2), c.ints(3), c.ints(4)
    shape = c.node.input(0).shape
    axes = [a % c.rank for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    begin, end, stride, taken = [], [], [], []
    for a, s, e, st in zip(axes, starts, ends, steps):
        lo, hi, st = slice(s, e, st).indices(shape[a])
        if st < 0:  # strided_slice reads a negative end as "from the back": gather instead
            taken.append((a, np.arange(lo, hi, st, dtype=np.int64)))
            continue
        begin.append(lo), end.append(hi), stride.append(st)
    kept = [a for a in axes if a not in {t[0] for t in taken}]
    y = R.strided_slice(x, kept, begin, end, stride, assume_inbound=True) if kept else x
    for a, idx in taken:
        y = R.take(y, _const(idx), a)
    return y


def _gather(c: _Lower, x, idx):
    axis = c.attr("axis", 0) % c.rank
    consts = c.const(1)
    if consts is not None:  # negative indices count from the back
        idx = _const(np.where(consts < 0, consts + c.node.input(0).shape[axis], consts).astype(np.int64))
    return R.reshape(R.take(x, idx, axis), c.out_shape)


def _resize(c: _Lower, x, *_):
    if c.rank != 4:
        raise c.fail("only 4-d (NCHW) Resize is supported")
    if c.out_shape[:2] != list(c.node.input(0).shape[:2]):
        raise c.fail("Resize may only scale the spatial (H, W) axes")
    mode = c.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    method = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}.get(mode)
    if method is None:
        raise c.fail(f"mode {mode!r} is not supported")
    ctm = c.attr("coordinate_transformation_mode", "half_pixel")
    nearest = c.attr("nearest_mode", "round_prefer_floor")
    ctm, nearest = (s.decode() if isinstance(s, bytes) else s for s in (ctm, nearest))
    if ctm == "tf_crop_and_resize":
        raise c.fail("coordinate_transformation_mode tf_crop_and_resize is not supported")
    return R.image.resize2d(
        x,
        c.out_shape[2:],
        None,
        "NCHW",
        method,
        ctm,
        nearest if method == "nearest_neighbor" else "",
        float(c.attr("cubic_coeff_a", -0.75)),
        int(c.attr("exclude_outside", 0)),
    )


def _pad(c: _Lower, x, *_):
    pads = c.ints(1) if c.node.input(1) is not None else list(c.attr("pads"))
    value = c.scalar(2, float(c.attr("value", 0.0)))
    axes = c.ints(3) or list(range(c.rank))
    begin, end = [0] * c.rank, [0] * c.rank
    for i, a in enumerate(axes):
        begin[a % c.rank], end[a % c.rank] = pads[i], pads[i + len(axes)]
    mode = c.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if any(p < 0 for p in begin + end):
        raise c.fail("negative pads (cropping) are not supported")
    if mode == "constant":
        return c.bb.emit_te(topi.nn.pad, x, begin, end, value)
    relax_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if relax_mode is None:
        raise c.fail(f"pad mode {mode!r} is not supported")
    return R.nn.pad(x, [p for be in zip(begin, end) for p in be], relax_mode)


def _cast(c: _Lower, x):
    return R.astype(x, str(c.node.output.dtype))


def _identity(c: _Lower, x, *_):
    return x


def _unary(fn: Callable) -> Callable:
    return lambda c, x: fn(x)


def _binary(fn: Callable) -> Callable:
    return lambda c, a, b: fn(a, b)


def _leaky_relu(c: _Lower, x):
    return R.nn.leakyrelu(x, float(c.attr("alpha", 0.01)))


def _reciprocal(c: _Lower, x):
    return R.divide(relax.const(1.0, "float32"), x)


def _where(c: _Lower, cond, a, b):
    return R.where(cond, a, b)


def _matmul(c: _Lower, a, b):
    return R.matmul(a, b)


_CONVERTERS: dict[str, Callable] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _binary(R.add) if R else None,
    "Sub": _binary(R.subtract) if R else None,
    "Mul": _binary(R.multiply) if R else None,
    "Div": _binary(R.divide) if R else None,
    "Pow": _binary(R.power) if R else None,
    "Max": _binary(R.maximum) if R else None,
    "Min": _binary(R.minimum) if R else None,
    "Equal": _binary(R.equal) if R else None,
    "Less": _binary(R.less) if R else None,
    "Greater": _binary(R.greater) if R else None,
    "Where": _where,
    "Relu": _unary(R.nn.relu) if R else None,
    "Sigmoid": _unary(R.sigmoid) if R else None,
    "Tanh": _unary(R.tanh) if R else None,
    "Erf": _unary(R.erf) if R else None,
    "Exp": _unary(R.exp) if R else None,
    "Log": _unary(R.log) if R else None,
    "Sqrt": _unary(R.sqrt) if R else None,
    "Neg": _unary(R.negative) if R else None,
    "Abs": _unary(R.abs) if R else None,
    "Floor": _unary(R.floor) if R else None,
    "Ceil": _unary(R.ceil) if R else None,
    "Reciprocal": _reciprocal,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Gelu": _gelu,
    "Softmax": _softmax,
    "LayerNormalization": _layernorm,
    "BatchNormalization": _batchnorm,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_avgpool,
    "ReduceMean": _reduce(R.mean) if R else None,
    "ReduceSum": _reduce(R.sum) if R else None,
    "ReduceMax": _reduce(R.max) if R else None,
    "Reshape": _to_out_shape,
    "Flatten": _to_out_shape,
    "Squeeze": _to_out_shape,
    "Unsqueeze": _to_out_shape,
    "Expand": _expand,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Resize": _resize,
    "Pad": _pad,
    "Identity": _identity,
    "Dropout": _identity,
    "Cast": _cast,
}

SUPPORTED_OPS = frozenset(_CONVERTERS)


# ---- graph -> IRModule -------------------------------------------------------------
def _sinfo(v: Value):
    return relax.TensorType([int(d) for d in v.shape], str(v.dtype))


def _emit_node(bb, node: Node, env: dict[int, Any]) -> None:
    """Lower one node, reading its inputs from and writing its outputs into ``env``."""
    conv = _CONVERTERS.get(node.op)
    src = node.graph.source if node.graph is not None else "<graph>"
    if conv is None or node.domain not in ("", "ai.onnx"):
        raise FuserError(
            f"{src}: node {node.name} ({node.op}): op not supported by the TVM "
            f"backend (it lowers {len(_CONVERTERS)} ops)"
        )
    args = []
    for v in node.inputs:
        if v is None:
            args.append(None)
        elif id(v) in env:
            args.append(env[id(v)])
        elif v.is_const:
            args.append(_const(v.const))
        else:
            raise FuserError(f"{src}: node {node.name} reads {v.name} before it is computed")
    result = conv(_Lower(bb, node, args), *args)
    results = result if isinstance(result, list) else [result]
    for v, r in zip(node.outputs, results):
        env[id(v)] = bb.emit(r, name_hint=_var_name(v.name))


def _const(a: np.ndarray):
    """A relax constant keeping the array's dtype (relax.const narrows int64 otherwise)."""
    a = np.ascontiguousarray(a)
    return relax.const(a, str(a.dtype))


def _lookup(env: dict[int, Any], v: Value):
    """The relax expression of ``v``: computed, an argument, or an inline constant."""
    return env[id(v)] if id(v) in env else _const(v.const)


def _var_name(name: str) -> str:
    clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return clean if clean and not clean[0].isdigit() else f"v_{clean}"


def _order_groups(graph: Graph, groups: Sequence[Sequence[Node]]) -> list[tuple[int | None, list[Node]]]:
    """(group id, its nodes) in an order where each unit runs after those it reads from;
    a node in no group is a unit of its own with id None. Raises when the groups feed
    each other in a cycle, which no kernel order allows."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    unit_of: dict[int, int] = {}
    units: list[tuple[int | None, list[Node]]] = []
    for gid, members in enumerate(groups):
        for n in members:
            if id(n) not in index:
                raise FuserError(f"{graph.source}: plan names node {n.name}, not in this graph")
            if id(n) in unit_of:
                raise FuserError(f"{graph.source}: node {n.name} is in two plan groups")
            unit_of[id(n)] = len(units)
        if members:
            units.append((gid, sorted(members, key=lambda n: index[id(n)])))
    for n in graph.nodes:
        if id(n) not in unit_of:
            unit_of[id(n)] = len(units)
            units.append((None, [n]))
    first = [index[id(m[0])] for _, m in units]  # keep the graph's order among ready units
    order = stable_topological_order(
        len(units),
        (
            (unit_of[id(p)], u)
            for u, (_, members) in enumerate(units)
            for n in members
            for p in graph.producers(n)
            if unit_of[id(p)] != u
        ),
        key=first.__getitem__,
    )
    if order is None:
        raise FuserError(f"{graph.source}: the plan's groups depend on each other in a cycle")
    return [units[u] for u in order]


def _group_function(bb, graph: Graph, members: list[Node], name: str):
    """A Primitive Relax function computing ``members``; returns (gvar, inputs, outputs)."""
    chosen = {id(n) for n in members}
    # Every constant is an argument too: FuseTIR refuses tensor constants inside
    # primitive functions (main holds the small ones inline).
    inputs = list(
        {
            id(v): v
            for n in members
            for v in n.inputs
            if v is not None and (v.producer is None or id(v.producer) not in chosen)
        }.values()
    )
    outputs = [
        v
        for n in members
        for v in n.outputs
        if graph.is_output(v) or any(id(u) not in chosen for u in v.users)
    ]
    params = [relax.Var(_var_name(v.name), _sinfo(v)) for v in inputs]
    env = {id(v): p for v, p in zip(inputs, params)}
    with bb.function(name, params, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            for n in members:
                _emit_node(bb, n, env)
            res = [env[id(v)] for v in outputs]
            ret = bb.emit_output(res[0] if len(res) == 1 else relax.Tuple(res))
        gvar = bb.emit_func_output(ret)
    return gvar, inputs, outputs


def to_relax(graph: Graph, groups: Sequence[Sequence[Node]] | Mapping[str, int] | None = None):
    """The Graph as a Relax IRModule whose ``main`` takes the graph inputs and returns a
    tuple of the graph outputs.

    ``groups``: lists of nodes (or node name -> group id), one per fused kernel.
    """
    require_tvm()
    if not all(v.is_static for v in graph.inputs):
        raise FuserError(
            f"{graph.source}: the TVM backend needs static input shapes; fix them with --input-shape"
        )
    for n in graph.nodes:
        if n.op not in _CONVERTERS:
            raise FuserError(
                f"{graph.source}: node {n.name} ({n.op}): op not supported by the "
                f"TVM backend (it lowers {len(_CONVERTERS)} ops)"
            )
    if isinstance(groups, Mapping):
        by_id: dict[Any, list[Node]] = {}
        for n in graph.nodes:
            if n.name in groups:
                by_id.setdefault(groups[n.name], []).append(n)
        groups = list(by_id.values())
    bb = relax.BlockBuilder()
    units = _order_groups(graph, groups) if groups else None
    calls = []
    for gid, members in units or ():
        if gid is None:  # a node in no group: emitted in main, one kernel of its own
            calls.append((None, None, None, members))
        else:
            calls.append((*_group_function(bb, graph, members, f"{GROUP_FUNC_PREFIX}{gid}"), members))
    inputs = [relax.Var(_var_name(v.name), _sinfo(v)) for v in graph.inputs]
    env = {id(v): p for v, p in zip(graph.inputs, inputs)}
    with bb.function("main", inputs):
        with bb.dataflow():
            if units is None:
                for n in graph.nodes:
                    _emit_node(bb, n, env)
            else:
                for gvar, ins, outs, members in calls:
                    if gvar is None:
                        _emit_node(bb, members[0], env)
                        continue
                    res = bb.emit(relax.Call(gvar, [_lookup(env, v) for v in ins]))
                    for k, v in enumerate(outs):
                        env[id(v)] = res if len(outs) == 1 else bb.emit(relax.TupleGetItem(res, k))
            ret = bb.emit_output(relax.Tuple([_lookup(env, v) for v in graph.outputs]))
        bb.emit_func_output(ret)
    return bb.get()


# ---- build -------------------------------------------------------------------------
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (what ``-mcpu=native`` would pick)."""
    require_tvm()
    return tvm.target.codegen.llvm_get_system_cpu()


def make_target(target: str, threads: int | None = None, cpu: str | None = None):
    """A tvm.target.Target for 'llvm' (this CPU, or ``cpu`` by LLVM name such as
    'x86-64' for any x86 machine) or 'cuda' (sm_90 unless a GPU says otherwise).

    Without an mcpu LLVM emits baseline x86-64 (SSE2): MetaSchedule then tunes 128-bit
    vectors on an AVX-512 machine."""
    require_tvm()
    if target == "llvm":
        cpu = cpu or host_cpu()
        codegen = tvm.target.codegen
        if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
            raise FuserError(
                f"--cpu {cpu}: LLVM does not know this CPU (e.g. x86-64, skylake-avx512, {host_cpu()})"
            )
        # num-cores: MetaSchedule needs it, and it sizes the tuned parallel loops
        return tvm.target.Target(
            {"kind": "llvm", "mcpu": cpu, "num-cores": int(threads or os.cpu_count() or 1)}
        )
    if target == "cuda":
        arch = _cuda_arch()
        return tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    raise FuserError(f"--target {target}: choose llvm or cuda")


_ISA_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "bmi", "amx", "vnni", "popcnt", "lzcnt")


def missing_cpu_features(cpu: str) -> list[str]:
    """Instruction sets code built for ``cpu`` may use that this machine lacks."""
    require_tvm()
    features = tvm.target.codegen.llvm_get_cpu_features

    def isa(name: str) -> set[str]:
        return {
            f
            for f in features(tvm.target.Target({"kind": "llvm", "mcpu": name}))
            if f.startswith(_ISA_PREFIXES)
        }

    return sorted(isa(cpu) - isa(host_cpu()))


def _cuda_arch() -> str:
    try:
        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no driver: compile for the H100 class the project targets
        pass
    return "sm_90"


def fuse_passes(target, planned: bool) -> list:
    """Legalize to TIR and form kernels: FuseOps unless a plan already grouped the ops."""
    seq = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    if not planned:
        seq.append(relax.transform.FuseOps())
    seq += [relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
    if target.kind.name == "cuda":
        from tvm.s_tir import dlight as dl

        seq.append(
            dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(),
                dl.gpu.GEMV(),
                dl.gpu.Reduction(),
                dl.gpu.GeneralReduction(),
                dl.gpu.Fallback(),
            )
        )
    return seq


def fuse(mod, target, planned: bool | None = None):
    """The IRModule after legalization and kernel formation (one PrimFunc per kernel)."""
    if planned is None:
        planned = any(
            isinstance(f, relax.Function) and f.attrs and "Primitive" in f.attrs
            for f in mod.functions.values()
        )
    with target:
        return tvm.transform.Sequential(fuse_passes(target, planned))(mod)


def kernel_names(fused_mod) -> list[str]:
    """The TIR kernels ``main`` calls (after ``fuse``)."""
    return sorted(gv.name_hint for gv, f in fused_mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def _finalize_pipeline(target):
    if target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline as be
    else:
        from tvm.relax.backend.cpu_generic import pipeline as be
    return tvm.transform.Sequential(be.dataflow_lower_passes(target) + be.finalize_passes(target))


def build(mod, target: str | Any = "llvm", planned: bool | None = None):
    """Compile a Relax module (from ``to_relax``) to a tvm Executable for llvm or cuda."""
    require_tvm()
    if isinstance(target, str):
        target = make_target(target)
    return build_fused(fuse(mod, target, planned), target)


def build_fused(fused, target):
    """Compile a module already through ``fuse`` (its kernels fixed) to an Executable."""
    if isinstance(target, str):
        target = make_target(target)
    if target.kind.name != "cuda":
        return tvm.compile(fused, target, relax_pipeline=_finalize_pipeline(target))
    # TVM compiles CUDA with NVRTC by default (a Python extra); nvcc is what this
    # project's machines have. An explicit TVM_CUDA_COMPILE_MODE wins.
    mode = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = mode or "nvcc"
    try:
        return tvm.compile(fused, target, relax_pipeline=_finalize_pipeline(target))
    finally:
        if mode is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)


def _modules(mod):
    yield mod
    for sub in mod.imports:
        yield from _modules(sub)


def cuda_source(executable) -> str:
    """The CUDA C source TVM generated for a cuda build ('' for other targets)."""
    return "\n".join(m.inspect_source("") for m in _modules(executable.mod) if m.kind == "cuda")


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible to TVM here."""
    require_tvm()
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


class TVMModel:
    """A compiled graph: call it with numpy arrays (by position or input name) to get the
    outputs as a list of numpy arrays."""

    def __init__(self, executable, inputs: list[dict], outputs: list[dict], device: str = "cpu"):
        require_tvm()
        self.device = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        self.vm = relax.VirtualMachine(executable, self.device)
        self.inputs, self.outputs = inputs, outputs

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    def _args(self, args, kwargs) -> list:
        if args and kwargs:
            raise FuserError("pass inputs either by position or by name, not both")
        if kwargs:
            missing = [n for n in self.input_names if n not in kwargs]
            extra = [k for k in kwargs if k not in self.input_names]
            if missing or extra:
                raise FuserError(f"inputs {self.input_names} expected; missing {missing}, unknown {extra}")
            args = [kwargs[n] for n in self.input_names]
        if len(args) != len(self.inputs):
            raise FuserError(f"{len(self.inputs)} inputs expected ({self.input_names}), got {len(args)}")
        out = []
        for spec, a in zip(self.inputs, args):
            a = np.asarray(a)
            if list(a.shape) != list(spec["shape"]) or str(a.dtype) != spec["dtype"]:
                raise FuserError(
                    f"input {spec['name']}: expected {spec['dtype']}{spec['shape']}, "
                    f"got {a.dtype}{list(a.shape)}"
                )
            out.append(tvm.runtime.tensor(np.ascontiguousarray(a), self.device))
        return out

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        res = self.vm["main"](*self._args(args, kwargs))
        return [res[i].numpy() for i in range(len(self.outputs))]

    def time_main(self, *args, number: int = 10, repeat: int = 3, **kwargs):
        """tvm time_evaluator over main: a ProfileResult (seconds)."""
        f = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return f(*self._args(args, kwargs))


def value_specs(values: Sequence[Value]) -> list[dict]:
    return [{"name": v.name, "shape": [int(d) for d in v.shape], "dtype": str(v.dtype)} for v in values]


def compile_graph(graph: Graph, target: str = "llvm", groups=None) -> TVMModel:
    """to_relax + build + TVMModel in one call (the graph is run as given: call
    fuser.optimize first to fold BatchNorm)."""
    mod = to_relax(graph, groups)
    ex = build(mod, target, planned=bool(groups))
    return TVMModel(
        ex, value_specs(graph.inputs), value_specs(graph.outputs), "cuda" if target == "cuda" else "cpu"
    )


def plan_groups(plan_path, graph: Graph) -> tuple[dict[str, int], list[dict]]:
    """A fusion plan file (`fuser.fusion.plan` JSON) as node name -> group id for
    ``to_relax``, plus the plan's group records (ops, dram_bytes, ...) for reports."""
    from fuser.fusion.plan import Plan

    plan = Plan.load(plan_path)
    names = {n.name for n in graph.nodes}
    owner: dict[str, int] = {}
    for gid, group in enumerate(plan.groups):
        for op in group["ops"]:
            if op not in names:
                raise FuserError(
                    f"{plan_path}: plan op {op!r} is not a node of {graph.name} "
                    "(was the plan made for this model and input shape?)"
                )
            owner[op] = gid
    return owner, plan.groups


def time_kernels(executable, fused, number: int = 10, device: str = "cpu") -> list:
    """Median time of each TIR kernel of a build, alone, on random arguments of its
    buffer shapes: where the build spends its time. (time_evaluator looks functions up
    only in the top module, and a Relax build keeps its kernels in an import, so we
    time the looked-up kernel directly.)"""
    import time

    from .latency import KernelTiming

    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    lib = executable.jit()
    rng = np.random.default_rng(0)
    timings = []
    for gv, func in fused.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        args = []
        for buf in func.params:  # in this TVM, PrimFunc params are the Buffers
            shape = [int(d) for d in buf.shape]
            dtype = str(buf.dtype)
            data = (rng.standard_normal(shape) if "float" in dtype else np.zeros(shape)).astype(dtype)
            args.append(tvm.runtime.tensor(data, dev))
        kernel = lib.get_function(gv.name_hint, query_imports=True)
        kernel(*args)  # warm-up
        runs = []
        for _ in range(3):
            dev.sync()
            start = time.perf_counter()
            for _ in range(number):
                kernel(*args)
            dev.sync()
            runs.append((time.perf_counter() - start) / number)
        timings.append(KernelTiming(gv.name_hint, float(np.median(runs)) * 1e3))
    return timings
