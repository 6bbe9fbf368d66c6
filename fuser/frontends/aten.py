"""torch.export -> IR directly: one converter per ATen op, no ONNX exporter in between.

``convert_program(program, module)`` reads the graph ``torch.export.export`` returns (ATen
ops as traced, before ``run_decompositions``) and emits IR nodes with ONNX semantics
(opset 20; ``fuser.ir.ops``). Rules:

  - User inputs become graph inputs under their placeholder names (the forward's argument
    names); outputs are named ``output`` (``output{i}`` for several), as the exporter path
    names them.
  - Parameters, buffers and lifted constants become constant Values named by their
    fully-qualified names (``layer1.0.conv1.weight``); values keep torch.export's names
    (``conv2d_3``). A Linear on more than two dims is MatMul with the transposed weight,
    held as the constant ``<weight>.T``, then Add of the bias; on two dims it is
    Gemm(transB=1), as the exporter writes them.
  - Shapes and dtypes come from the exported graph's metadata (``val``): every value is
    static without shape inference. An fx node whose tensor inputs are all constants is
    evaluated at capture (by the ATen op itself) and becomes a constant.
  - Every node records in ``Node.meta``: ``module`` (the innermost ``nn_module_stack``
    path, ``""`` at the top), ``module_type``, ``source`` (``file:line`` of the innermost
    frame outside torch) and ``torch_op``; a node whose constant inputs come from
    parameters records ``weights``: input slot -> (parameter name, the parameter axis of
    each constant axis, or None where the constant broadcasts), which
    ``fuser.torchtools.prune_module`` reads to shrink the user's own layers, and
    ``literals``: the input slots holding constants the capture made up (scalars, shapes,
    BatchNorm's default scale); the Mul that scales attention by 1/sqrt(head size) where
    torch derives it records the head size as ``head_size_scale``.
  - Node names say where the op is in the user's code: the last node of a call of a leaf
    module (no children, or a ``torch.nn`` layer) is named by the module's path
    (``layer3.1.conv2``); other nodes are ``<module path>/<op>`` (``layer3.1/add``,
    ``features.1.0.block.0.2/sigmoid``), or ``<op>`` at the top; repeats get ``@1``,
    ``@2`` (torch's own mark for a module's second call).
  - An op without a converter, or one whose arguments fuser cannot express (a training-mode
    BatchNorm, an adaptive pool that does not tile its input, an attention mask), raises
    ``UnsupportedOp`` naming the op and module: ``fuser.frontends.torch`` then falls back
    to PyTorch's ONNX exporter for that model.

Ops converted (the ``.default`` / ``.Tensor`` / ``.Scalar`` overloads and their in-place
forms): conv1d/2d/3d, convolution, conv_transpose1d/2d/3d, linear, matmul, mm, bmm, addmm,
batch_norm, _native_batch_norm_legit_no_training, layer_norm, group_norm, instance_norm,
relu, relu6, hardtanh, clamp, clamp_min/max, sigmoid, silu, hardswish, hardsigmoid, gelu,
tanh, leaky_relu, prelu, elu, softplus, mish, exp, log, sqrt, rsqrt, reciprocal, neg, abs, erf,
sin, cos, floor, ceil, add, sub, rsub, mul, div, pow, maximum, minimum, eq, lt, gt, where,
max_pool1d/2d/3d, avg_pool1d/2d/3d, adaptive_avg_pool1d/2d, adaptive_max_pool2d (to 1),
mean, sum, amax, amin, softmax, log_softmax, view, reshape, _unsafe_view, flatten,
unflatten, squeeze, unsqueeze, permute, transpose, t, expand, cat, stack, split,
split_with_sizes, chunk, unbind, select, slice, narrow, pad, constant_pad_nd,
upsample_nearest2d, upsample_bilinear2d, pixel_shuffle, scaled_dot_product_attention
(no mask, not causal), embedding, _to_copy/to (dtype), dropout and other aliases
(clone, contiguous, alias, detach).
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fuser.ir import FuserError, Graph, Node, Value

OPSET = 20
_ALIASES = {
    "clone",
    "contiguous",
    "alias",
    "detach",
    "dropout",
    "feature_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "lift_fresh_copy",
}
_IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}


class UnsupportedOp(Exception):
    """An ATen op (or argument) without a converter; carries the op and where it is."""

    def __init__(self, op: str, module: str, why: str = ""):
        self.op, self.module, self.why = op, module, why
        where = f" in module '{module}'" if module else ""
        super().__init__(f"{op}{where}{': ' + why if why else ''}")


# ---- torch metadata -> IR -----------------------------------------------------------------------
def np_dtype(torch_dtype) -> np.dtype:
    import torch

    if torch_dtype == torch.bfloat16:
        raise FuserError("bfloat16 tensors cannot be held by fuser's IR (numpy); cast the model to float32")
    return torch.empty(0, dtype=torch_dtype).numpy().dtype


def to_numpy(t) -> np.ndarray:
    """A copy (the graph must not share memory with a module that keeps training)."""
    np_dtype(t.dtype)  # refuses bfloat16 in one line (numpy has no such type)
    return t.detach().cpu().numpy().copy()


def _module_info(node) -> tuple[str, str, str]:
    """(call key, module path, module type) of the innermost module on ``node``'s stack."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "", ""
    key, (path, kind) = next(reversed(stack.items()))
    kind = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
    return key, path, kind


_TORCH_DIR = None


def _source_line(node) -> str:
    return source_of_trace(node.meta.get("stack_trace") or "")


def source_of_trace(trace: str) -> str:
    """``file:line`` of the innermost frame of a stack trace outside torch itself."""
    global _TORCH_DIR
    if _TORCH_DIR is None:
        import torch

        _TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
    best = ""
    for line in trace.splitlines():
        line = line.strip()
        if not line.startswith('File "'):
            continue
        path, _, rest = line[6:].partition('", line ')
        if path.startswith(_TORCH_DIR) or path.startswith("<"):
            continue
        number = rest.split(",")[0]
        with contextlib.suppress(ValueError):  # another drive (Windows)
            path = os.path.relpath(path)
        best = f"{path}:{number}"
    return best


# ---- conversion context -------------------------------------------------------------------------
class _Converter:
    def __init__(self, program, module, name: str):
        import torch

        self.torch = torch
        self.program = program
        self.module = module
        self.graph = Graph(name=name, opset=OPSET, source=f"<{name}>")
        self.env: dict[str, Any] = {}  # fx node name -> Value | list | python value
        self.real: dict[int, Any] = {}  # id(const Value) -> its torch tensor (for folding)
        self.origin: dict[int, tuple[str, tuple]] = {}  # id(const Value) -> (param name, axes)
        self.literals: set[int] = set()  # id(const Value) of constants fuser made up
        self.repeats: dict[str, int] = {}
        self.leaf_cache: dict[str, bool] = {}
        self.last_of_call: dict[str, str] = {}
        for n in program.graph.nodes:
            if n.op == "call_function":
                key = _module_info(n)[0]
                if key:
                    self.last_of_call[key] = n.name

    # names
    def unique_node_name(self, base: str) -> str:
        k = self.repeats.get(base, 0)
        self.repeats[base] = k + 1
        name = base if k == 0 else f"{base}@{k}"
        while name in self.graph._names:
            k += 1
            self.repeats[base] = k + 1
            name = f"{base}@{k}"
        self.graph._names.add(name)
        return name

    def is_leaf(self, path: str, kind: str) -> bool:
        if path not in self.leaf_cache:
            leaf = kind.startswith("torch.nn.modules.")
            if not leaf:
                try:
                    leaf = next(self.module.get_submodule(path).children(), None) is None
                except (AttributeError, TypeError):
                    leaf = False
            self.leaf_cache[path] = leaf
        return self.leaf_cache[path]

    # constants
    def param(self, name: str, tensor) -> Value:
        v = Value(self.graph.unique_name(name), const=to_numpy(tensor))
        self.real[id(v)] = tensor.detach()
        self.origin[id(v)] = (name, tuple(range(tensor.dim())))
        return v

    def literal(self, array, dtype, name: str) -> Value:
        """A constant fuser made up (scalars, shapes, axes, default scales). Its name has a '.':
        ONNX Runtime's optimizers add initializers under plain names such as 'squeeze_axes'
        without checking tensor names, and fail the session on a model that has one."""
        v = Value(self.graph.unique_name(f"{name}.const"), const=np.asarray(array, dtype=dtype))
        # not a parameter of the module (a non-affine norm's ones): analysis counts what torch does
        v.derived = True
        self.literals.add(id(v))
        return v

    # main loop
    def run(self) -> Graph:
        torch = self.torch
        sig = self.program.graph_signature
        state = self.program.state_dict
        constants = getattr(self.program, "constants", {})
        by_input = {spec.arg.name: spec for spec in sig.input_specs if hasattr(spec.arg, "name")}
        from torch.export.graph_signature import InputKind

        outputs = []
        for n in self.program.graph.nodes:
            if n.op == "placeholder":
                spec = by_input.get(n.name)
                if spec is None or spec.kind == InputKind.USER_INPUT:
                    val = n.meta.get("val")
                    if not isinstance(val, torch.Tensor):
                        raise FuserError(f"{self.graph.source}: input '{n.name}' is not a tensor")
                    self.env[n.name] = self.graph.add_input(n.name, tuple(val.shape), np_dtype(val.dtype))
                else:
                    tensor = state.get(spec.target) if spec.target in state else constants.get(spec.target)
                    if tensor is None:
                        raise UnsupportedOp("placeholder", "", f"no tensor for {spec.target}")
                    self.env[n.name] = self.param(spec.target, tensor)
            elif n.op == "call_function":
                self.call(n)
            elif n.op == "output":
                outputs = list(torch.utils._pytree.tree_leaves(n.args[0]))
            elif n.op == "get_attr":
                self.env[n.name] = self.param(n.target, getattr(self.program.graph_module, n.target))
        self.set_outputs([self.env[o.name] if hasattr(o, "name") else o for o in outputs])
        return self.graph

    def set_outputs(self, values: list) -> None:
        graph = self.graph
        for i, v in enumerate(values):
            if not isinstance(v, Value):
                raise UnsupportedOp("output", "", "the module returns a non-tensor value")
            name = "output" if len(values) == 1 else f"output{i}"
            if v.producer is None or graph.is_output(v) or any(v is x for x in graph.inputs):
                node = Node("Identity", [v], [Value(name, v.shape, v.dtype)], name=graph.unique_name(name))
                node.meta = {"module": "", "torch_op": "output"}
                graph.insert_node(node)
                v = node.outputs[0]
            else:
                v.name = name
            graph._names.add(name)
            graph.outputs.append(v)

    def call(self, n) -> None:
        torch = self.torch
        target = n.target
        if target is operator.getitem:
            seq, index = n.args
            self.env[n.name] = self.env[seq.name][index]
            return
        packet = getattr(target, "overloadpacket", None)
        op = getattr(packet, "__name__", getattr(target, "__name__", str(target)))
        base_op = op[:-1] if op.endswith("_") and not op.startswith("_") else op
        if base_op in _IGNORED:
            self.env[n.name] = None
            return
        key, path, kind = _module_info(n)
        if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
            raise UnsupportedOp(str(target), path, "not an ATen op (a custom op)")
        args = _bind(n)
        values = [self.env[a.name] for a in _flat_nodes(n) if isinstance(a, torch.fx.Node)]
        if all(isinstance(v, Value) and v.is_const for v in _leaves(values)) and base_op not in _NO_FOLD:
            self.fold(n, path)
            return
        fn = CONVERTERS.get(base_op)
        if fn is None:
            raise UnsupportedOp(str(target), path)
        call = _Call(self, n, args, path, kind, key, base_op)
        result = fn(call)
        call.finish(result)
        self.env[n.name] = result

    def fold(self, n, path: str) -> None:
        """Evaluate an op of constants with torch; the result is a constant Value."""
        torch = self.torch

        def real(a):
            if isinstance(a, torch.fx.Node):
                v = self.env[a.name]
                if isinstance(v, list):
                    return [self.real.get(id(x), None) for x in v]
                return self.real[id(v)] if isinstance(v, Value) else v
            if isinstance(a, (list, tuple)):
                return type(a)(real(x) for x in a)
            return a

        with torch.no_grad():
            out = n.target(*real(n.args), **{k: real(v) for k, v in n.kwargs.items()})
        sources = [self.env[a.name] for a in _flat_nodes(n) if isinstance(a, torch.fx.Node)]
        # computed from no parameter or buffer (an anchor grid from arange; literals are derived)
        derived = all(isinstance(v, Value) and v.derived for v in _leaves(sources))

        def wrap(t, i=None):
            name = n.name if i is None else f"{n.name}_{i}"
            v = Value(self.graph.unique_name(name), const=to_numpy(t))
            v.derived = derived
            self.real[id(v)] = t
            axes = _traced_axes(n, sources, self, i) if len(sources) == 1 else None
            if axes is not None:
                self.origin[id(v)] = axes
            return v

        self.env[n.name] = (
            [wrap(t, i) for i, t in enumerate(out)] if isinstance(out, (tuple, list)) else wrap(out)
        )


_NO_FOLD = {"dropout", "feature_dropout", "alpha_dropout"}


def _traced_axes(n, sources, conv: _Converter, index) -> tuple[str, tuple] | None:
    """Which parameter axis each axis of a folded constant is, when the op only views or
    broadcasts one parameter (expand, permute, unsqueeze, ...): the op is run on probe
    tensors counting along one parameter axis at a time."""
    torch = conv.torch
    (src,) = sources
    if not isinstance(src, Value) or id(src) not in conv.origin:
        return None
    name, src_axes = conv.origin[id(src)]
    base = conv.real[id(src)]
    if base.dim() == 0 or base.numel() > 1 << 20:
        return None
    out_axes = None
    for j in range(base.dim()):
        shape = [1] * base.dim()
        shape[j] = base.shape[j]
        probe = torch.arange(base.shape[j], dtype=torch.float64).reshape(shape).expand(base.shape)

        def sub(a, probe=probe):
            if isinstance(a, torch.fx.Node):
                return probe
            if isinstance(a, (list, tuple)):
                return type(a)(sub(x) for x in a)
            return a

        try:
            with torch.no_grad():
                out = n.target(*sub(n.args), **{k: sub(v) for k, v in n.kwargs.items()})
        except Exception:
            return None
        if index is not None:
            out = out[index]
        if out_axes is None:
            out_axes = [None] * out.dim()
        for i in range(out.dim()):
            if out.shape[i] != base.shape[j] or base.shape[j] == 1:
                continue
            shape = [1] * out.dim()
            shape[i] = out.shape[i]
            ramp = torch.arange(out.shape[i], dtype=torch.float64).reshape(shape).expand(out.shape)
            if torch.equal(out, ramp):
                out_axes[i] = src_axes[j]
    return (name, tuple(out_axes)) if out_axes is not None else None


def _bind(n) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in."""
    schema = n.target._schema
    bound = {}
    for i, a in enumerate(schema.arguments):
        if i < len(n.args):
            bound[a.name] = n.args[i]
        elif a.name in n.kwargs:
            bound[a.name] = n.kwargs[a.name]
        elif a.has_default_value():
            bound[a.name] = a.default_value
        else:
            bound[a.name] = None
    return bound


def _flat_nodes(n):
    out = []

    def walk(a):
        if isinstance(a, (list, tuple)):
            for x in a:
                walk(x)
        elif isinstance(a, dict):
            for x in a.values():
                walk(x)
        else:
            out.append(a)

    walk(n.args)
    walk(n.kwargs)
    return out


def _leaves(values):
    for v in values:
        if isinstance(v, list):
            yield from v
        else:
            yield v


class _Call:
    """One fx node being converted: its bound arguments and an ``emit`` for its IR nodes."""

    def __init__(self, conv: _Converter, n, args: dict, path: str, kind: str, key: str, op: str):
        self.conv, self.n, self.path, self.kind, self.key, self.op = conv, n, path, kind, key, op
        self.graph = conv.graph
        self.raw = args
        self.val = n.meta.get("val")
        self.emitted: list[Node] = []
        self.meta = {
            "module": path,
            "module_type": kind.rsplit(".", 1)[-1],
            "source": _source_line(n),
            "torch_op": str(n.target),
        }

    def fail(self, why: str) -> UnsupportedOp:
        return UnsupportedOp(str(self.n.target), self.path, why)

    # arguments
    def __getitem__(self, name: str):
        a = self.raw[name]
        torch = self.conv.torch
        if isinstance(a, torch.fx.Node):
            return self.conv.env[a.name]
        if isinstance(a, (list, tuple)):
            return [self.conv.env[x.name] if isinstance(x, torch.fx.Node) else x for x in a]
        return a

    def tensor(self, name: str) -> Value:
        v = self[name]
        if not isinstance(v, Value):
            raise self.fail(f"argument '{name}' is not a tensor")
        return v

    @property
    def _first(self):
        return self.val[0] if isinstance(self.val, (list, tuple)) else self.val

    @property
    def shape(self) -> tuple:
        return tuple(int(d) for d in self._first.shape)

    @property
    def dtype(self) -> np.dtype:
        return np_dtype(self._first.dtype)

    def scalar(self, x, dtype=None, name: str = "scalar") -> Value:
        """A 0-d constant of the output's dtype (or ``dtype``)."""
        if isinstance(x, Value):
            return x
        return self.conv.literal(x, dtype or self.dtype, f"{self.n.name}_{name}")

    def ints(self, values, name: str) -> Value:
        return self.conv.literal(
            np.asarray(values, dtype=np.int64).reshape(-1), np.int64, f"{self.n.name}_{name}"
        )

    # emitting
    def emit(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict | None = None,
        *,
        outputs: int = 1,
        shape: tuple | None = None,
        dtype=None,
    ):
        graph = self.graph
        outs = [
            Value(graph.unique_name(f"{self.n.name}_{op.lower()}"), shape, dtype or self.dtype)
            for _ in range(outputs)
        ]
        node = Node(op, inputs, outs, attrs)
        node.meta = dict(self.meta)
        weights = {
            i: self.conv.origin[id(v)]
            for i, v in enumerate(inputs)
            if v is not None and id(v) in self.conv.origin
        }
        if weights:
            node.meta["weights"] = weights
        literals = [i for i, v in enumerate(inputs) if v is not None and id(v) in self.conv.literals]
        if literals:
            node.meta["literals"] = literals
        graph.insert_node(node)
        self.emitted.append(node)
        return outs[0] if outputs == 1 else outs

    def finish(self, result) -> None:
        """Name the emitted nodes and give the fx node's outputs their names, shapes, dtypes."""
        conv = self.conv
        last = self.emitted[-1] if self.emitted else None
        leaf = bool(self.path) and conv.is_leaf(self.path, self.kind)
        for node in self.emitted:
            if leaf and node is last and conv.last_of_call.get(self.key) == self.n.name:
                base = self.path
            else:
                label = self.op if node is last else node.op.lower()
                base = f"{self.path}/{label}" if self.path else label
            node.name = conv.unique_node_name(base)
        vals = self.val if isinstance(self.val, (list, tuple)) else [self.val]
        results = result if isinstance(result, list) else [result]
        mine = {id(v) for node in self.emitted for v in node.outputs}
        for i, (v, val) in enumerate(zip(results, vals)):
            if not isinstance(v, Value) or val is None or not hasattr(val, "shape"):
                continue
            shape, dtype = tuple(int(d) for d in val.shape), np_dtype(val.dtype)
            if id(v) not in mine:  # an alias of an input: the shapes must agree
                if v.shape != shape:
                    raise self.fail(f"aliased output has shape {list(shape)}, input {list(v.shape)}")
                continue
            v.shape, v.dtype = shape, dtype
            name = self.n.name if len(results) == 1 else f"{self.n.name}_{i}"
            if v.name != name:
                v.name = name if name not in conv.graph._names else conv.graph.unique_name(f"{name}_out")
                conv.graph._names.add(v.name)


# ---- converters -------------------------------------------------------------------------------
Converter = Callable[[_Call], Any]
CONVERTERS: dict[str, Converter] = {}


def converts(*names: str):
    def register(fn):
        for name in names:
            CONVERTERS[name] = fn
        return fn

    return register


def _n_ints(v, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = [int(x) for x in v]
    return v * n if len(v) == 1 and n > 1 else v


def _conv_attrs(x: Value, w: Value, stride, padding, dilation, groups) -> dict:
    k = list(w.shape[2:])
    nd = len(k)
    dil = _n_ints(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * nd
        else:  # "same": torch pads the extra element at the end
            total = [d * (kk - 1) for d, kk in zip(dil, k)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
            return {
                "auto_pad": "NOTSET",
                "dilations": dil,
                "group": int(groups),
                "kernel_shape": k,
                "pads": pads,
                "strides": _n_ints(stride, nd),
            }
    else:
        pads = _n_ints(padding, nd)
    return {
        "auto_pad": "NOTSET",
        "dilations": dil,
        "group": int(groups),
        "kernel_shape": k,
        "pads": pads + pads,
        "strides": _n_ints(stride, nd),
    }


@converts("conv1d", "conv2d", "conv3d")
def _conv(c: _Call):
    x, w, b = c.tensor("input"), c.tensor("weight"), c["bias"]
    attrs = _conv_attrs(x, w, c["stride"], c["padding"], c["dilation"], c["groups"])
    return c.emit("Conv", [x, w] + ([b] if b is not None else []), attrs)


def _conv_transpose_attrs(w: Value, stride, padding, output_padding, groups, dilation) -> dict:
    nd = len(w.shape) - 2
    pads = _n_ints(padding, nd)
    return {
        "dilations": _n_ints(dilation, nd),
        "group": int(groups),
        "kernel_shape": list(w.shape[2:]),
        "output_padding": _n_ints(output_padding, nd),
        "pads": pads + pads,
        "strides": _n_ints(stride, nd),
    }


@converts("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose(c: _Call):
    x, w, b = c.tensor("input"), c.tensor("weight"), c["bias"]
    attrs = _conv_transpose_attrs(
        w, c["stride"], c["padding"], c["output_padding"], c["groups"], c["dilation"]
    )
    return c.emit("ConvTranspose", [x, w] + ([b] if b is not None else []), attrs)


@converts("convolution", "_convolution")
def _convolution(c: _Call):
    x, w, b = c.tensor("input"), c.tensor("weight"), c["bias"]
    ins = [x, w] + ([b] if b is not None else [])
    if c["transposed"]:
        attrs = _conv_transpose_attrs(
            w, c["stride"], c["padding"], c["output_padding"], c["groups"], c["dilation"]
        )
        return c.emit("ConvTranspose", ins, attrs)
    if any(_n_ints(c["output_padding"], len(w.shape) - 2)):
        raise c.fail("output_padding on a forward convolution")
    return c.emit("Conv", ins, _conv_attrs(x, w, c["stride"], c["padding"], c["dilation"], c["groups"]))


def _transposed_const(c: _Call, w: Value) -> Value:
    """W^T of a constant 2-D weight, one constant per weight (shared by every use)."""
    conv = c.conv
    cache = conv.__dict__.setdefault("_transposed", {})
    if id(w) not in cache:
        t = Value(conv.graph.unique_name(f"{w.name}.T"), const=np.ascontiguousarray(w.const.T))
        if id(w) in conv.origin:
            name, axes = conv.origin[id(w)]
            conv.origin[id(t)] = (name, (axes[1], axes[0]))
        cache[id(w)] = t
    return cache[id(w)]


@converts("linear")
def _linear(c: _Call):
    x, w, b = c.tensor("input"), c.tensor("weight"), c["bias"]
    if len(x.shape) == 2 and len(w.shape) == 2:
        attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
        return c.emit("Gemm", [x, w] + ([b] if b is not None else []), attrs)
    if w.is_const:
        wt = _transposed_const(c, w)
    else:
        wt = c.emit("Transpose", [w], {"perm": [1, 0]}, shape=(w.shape[1], w.shape[0]))
    y = c.emit("MatMul", [x, wt], shape=c.shape if b is not None else None)
    return y if b is None else c.emit("Add", [y, b])


@converts("matmul", "mm", "bmm")
def _matmul(c: _Call):
    return c.emit("MatMul", [c.tensor("self"), c.tensor("mat2" if c.op != "matmul" else "other")])


@converts("addmm")
def _addmm(c: _Call):
    attrs = {"alpha": float(c["alpha"]), "beta": float(c["beta"]), "transA": 0, "transB": 0}
    return c.emit("Gemm", [c.tensor("mat1"), c.tensor("mat2"), c.tensor("self")], attrs)


@converts("t")
def _t(c: _Call):
    x = c.tensor("self")
    return x if len(x.shape) < 2 else c.emit("Transpose", [x], {"perm": [1, 0]})


# ---- normalisation ----
def _default(c: _Call, v, fill: float, n: int, tag: str) -> Value:
    return v if v is not None else c.conv.literal(np.full(n, fill), c.dtype, f"{c.n.name}_{tag}")


def _batch_norm(c: _Call, training: bool, momentum: float, eps: float):
    if training:
        raise c.fail("BatchNorm in training mode (batch statistics); fuser captures inference graphs")
    x = c.tensor("input")
    mean, var = c["running_mean"], c["running_var"]
    if mean is None or var is None:
        raise c.fail("BatchNorm without running statistics")
    ch = x.shape[1]
    scale, bias = _default(c, c["weight"], 1.0, ch, "scale"), _default(c, c["bias"], 0.0, ch, "bias")
    attrs = {"epsilon": float(eps), "momentum": 1.0 - float(momentum if momentum is not None else 0.1)}
    return c.emit("BatchNormalization", [x, scale, bias, mean, var], attrs)


@converts("batch_norm")
def _batch_norm_op(c: _Call):
    return _batch_norm(c, c["training"], c["momentum"], c["eps"])


@converts("_native_batch_norm_legit_no_training")
def _native_bn(c: _Call):
    y = _batch_norm(c, False, c["momentum"], c["eps"])
    return [y, None, None]


@converts("layer_norm", "native_layer_norm")
def _layer_norm(c: _Call):
    x = c.tensor("input")
    norm = list(c["normalized_shape"])
    w = (
        c["weight"]
        if c["weight"] is not None
        else c.conv.literal(np.ones(norm), c.dtype, f"{c.n.name}_scale")
    )
    ins = [x, w] + ([c["bias"]] if c["bias"] is not None else [])
    y = c.emit(
        "LayerNormalization",
        ins,
        {"axis": -len(norm), "epsilon": float(c["eps"]), "stash_type": 1},
        shape=x.shape,
    )
    return y if c.op == "layer_norm" else [y, None, None]


@converts("group_norm")
def _group_norm(c: _Call):
    """Reshape to (N, groups, -1), InstanceNormalization, back, then the per-channel affine
    (what the exporter writes; ONNX GroupNormalization's scale changed meaning in opset 21)."""
    x = c.tensor("input")
    g = int(c["num_groups"])
    n, ch = x.shape[0], x.shape[1]
    grouped = (n, g, int(np.prod(x.shape[1:])) // g)
    r = c.emit("Reshape", [x, c.ints(grouped, "groups")], shape=grouped)
    ones, zeros = (
        c.conv.literal(np.full(g, f), c.dtype, f"{c.n.name}_{t}") for f, t in ((1, "one"), (0, "zero"))
    )
    y = c.emit("InstanceNormalization", [r, ones, zeros], {"epsilon": float(c["eps"])}, shape=grouped)
    y = c.emit("Reshape", [y, c.ints(x.shape, "shape")], shape=x.shape)
    bcast = (ch,) + (1,) * (len(x.shape) - 2)
    for key, op in (("weight", "Mul"), ("bias", "Add")):
        p = c[key]
        if p is not None:
            y = c.emit(op, [y, _reshaped_const(c, p, bcast)], shape=x.shape)
    return y


def _reshaped_const(c: _Call, p: Value, shape: tuple) -> Value:
    """A per-channel constant reshaped to broadcast over (C, 1, 1...), keeping its origin."""
    if not p.is_const:
        return c.emit("Reshape", [p, c.ints(shape, "bshape")], shape=shape)
    v = Value(c.graph.unique_name(f"{p.name}_c11"), const=p.const.reshape(shape))
    if id(p) in c.conv.origin:
        name, axes = c.conv.origin[id(p)]
        c.conv.origin[id(v)] = (name, (axes[0],) + (None,) * (len(shape) - 1))
    return v


@converts("instance_norm")
def _instance_norm(c: _Call):
    x = c.tensor("input")
    ch = x.shape[1]
    if not c["use_input_stats"]:
        return _batch_norm(c, False, c["momentum"], c["eps"])
    scale, bias = _default(c, c["weight"], 1.0, ch, "scale"), _default(c, c["bias"], 0.0, ch, "bias")
    return c.emit("InstanceNormalization", [x, scale, bias], {"epsilon": float(c["eps"])})


# ---- activations ----
_UNARY = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "hardswish": "HardSwish",
    "mish": "Mish",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "reciprocal": "Reciprocal",
    "neg": "Neg",
    "abs": "Abs",
    "erf": "Erf",
    "sin": "Sin",
    "cos": "Cos",
    "floor": "Floor",
    "ceil": "Ceil",
    "logical_not": "Not",
}


def _unary(c: _Call):
    return c.emit(_UNARY[c.op], [c.tensor("self")])


for _name in _UNARY:
    CONVERTERS[_name] = _unary


@converts("silu")
def _silu(c: _Call):
    x = c.tensor("self")
    return c.emit("Mul", [x, c.emit("Sigmoid", [x], shape=x.shape)])


@converts("rsqrt")
def _rsqrt(c: _Call):
    x = c.tensor("self")
    return c.emit("Reciprocal", [c.emit("Sqrt", [x], shape=x.shape)])


@converts("hardsigmoid")
def _hardsigmoid(c: _Call):
    return c.emit("HardSigmoid", [c.tensor("self")], {"alpha": 1.0 / 6.0, "beta": 0.5})


@converts("gelu")
def _gelu(c: _Call):
    return c.emit("Gelu", [c.tensor("self")], {"approximate": c["approximate"]})


@converts("leaky_relu")
def _leaky_relu(c: _Call):
    return c.emit("LeakyRelu", [c.tensor("self")], {"alpha": float(c["negative_slope"])})


@converts("prelu", "_prelu_kernel")
def _prelu(c: _Call):
    """One slope per channel (axis 1) or one for all: reshaped to broadcast as ONNX's PRelu needs."""
    x, w = c.tensor("self"), c["weight"]
    if w.numel > 1 and len(x.shape) > 2:
        w = _reshaped_const(c, w, (w.numel,) + (1,) * (len(x.shape) - 2))
    return c.emit("PRelu", [x, w])


@converts("elu")
def _elu(c: _Call):
    if float(c["scale"]) != 1.0 or float(c["input_scale"]) != 1.0:
        raise c.fail("elu with scale or input_scale")
    return c.emit("Elu", [c.tensor("self")], {"alpha": float(c["alpha"])})


@converts("softplus")
def _softplus(c: _Call):
    if float(c["beta"]) != 1.0:
        raise c.fail("softplus with beta != 1")
    return c.emit("Softplus", [c.tensor("self")])


def _clip(c: _Call, lo, hi):
    x = c.tensor("self")
    ins = [
        x,
        None if lo is None else c.scalar(lo, name="min"),
        None if hi is None else c.scalar(hi, name="max"),
    ]
    while ins[-1] is None:
        ins.pop()
    return c.emit("Clip", ins)


@converts("hardtanh")
def _hardtanh(c: _Call):
    return _clip(c, c["min_val"], c["max_val"])


@converts("relu6")
def _relu6(c: _Call):
    return _clip(c, 0.0, 6.0)


@converts("clamp")
def _clamp(c: _Call):
    lo, hi = c["min"], c["max"]
    if isinstance(lo, Value) or isinstance(hi, Value):  # tensor bounds: ONNX Clip takes scalars only
        x = c.tensor("self")
        if lo is not None:
            x = c.emit("Max", [x, _operand(c, lo, x.dtype)])
        if hi is not None:
            x = c.emit("Min", [x, _operand(c, hi, x.dtype)])
        return x
    return _clip(c, lo, hi)


@converts("clamp_min")
def _clamp_min(c: _Call):
    return _clip(c, c["min"], None)


@converts("clamp_max")
def _clamp_max(c: _Call):
    return _clip(c, None, c["max"])


# ---- binary ----
def _operand(c: _Call, x, dtype) -> Value:
    if isinstance(x, Value):
        if x.dtype != dtype:
            return c.emit("Cast", [x], {"to": _onnx_dtype(dtype)}, shape=x.shape, dtype=dtype)
        return x
    return c.scalar(x, dtype)


def _binary(c: _Call, op: str, a, b, compute_dtype=None):
    dtype = compute_dtype or c.dtype
    return c.emit(op, [_operand(c, a, dtype), _operand(c, b, dtype)])


def _scaled_other(c: _Call):
    other, alpha = c["other"], c.raw.get("alpha", 1)
    if alpha is None or alpha == 1:
        return other
    if not isinstance(other, Value):
        return other * alpha
    return c.emit("Mul", [_operand(c, other, c.dtype), c.scalar(alpha, name="alpha")], shape=other.shape)


@converts("add")
def _add(c: _Call):
    return _binary(c, "Add", c["self"], _scaled_other(c))


@converts("sub")
def _sub(c: _Call):
    return _binary(c, "Sub", c["self"], _scaled_other(c))


@converts("rsub")
def _rsub(c: _Call):
    return _binary(c, "Sub", _scaled_other(c), c["self"])


@converts("mul")
def _mul(c: _Call):
    return _binary(c, "Mul", c["self"], c["other"])


@converts("div")
def _div(c: _Call):
    if c.raw.get("rounding_mode") is not None:
        raise c.fail(f"rounding_mode={c.raw['rounding_mode']!r}")
    return _binary(c, "Div", c["self"], c["other"])


@converts("pow")
def _pow(c: _Call):
    return _binary(c, "Pow", c["self"], c["exponent"])


@converts("maximum")
def _maximum(c: _Call):
    return _binary(c, "Max", c["self"], c["other"])


@converts("minimum")
def _minimum(c: _Call):
    return _binary(c, "Min", c["self"], c["other"])


def _compare(op: str):
    def convert(c: _Call):
        a, b = c["self"], c["other"]
        common = next(x.dtype for x in (a, b) if isinstance(x, Value))
        return _binary(c, op, a, b, compute_dtype=common)

    return convert


CONVERTERS["eq"], CONVERTERS["lt"], CONVERTERS["gt"] = (
    _compare("Equal"),
    _compare("Less"),
    _compare("Greater"),
)


@converts("where")
def _where(c: _Call):
    cond = c.tensor("condition")
    return c.emit("Where", [cond, _operand(c, c["self"], c.dtype), _operand(c, c["other"], c.dtype)])


# ---- pooling and reductions ----
def _pool_attrs(c: _Call, x: Value, kernel, stride, padding, ceil_mode: bool) -> dict:
    nd = len(x.shape) - 2
    k = _n_ints(kernel, nd)
    s = _n_ints(stride, nd) if stride else k
    p = _n_ints(padding, nd)
    return {"ceil_mode": int(bool(ceil_mode)), "kernel_shape": k, "pads": p + p, "strides": s}


@converts("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices")
def _max_pool(c: _Call):
    x = c.tensor("self")
    attrs = _pool_attrs(c, x, c["kernel_size"], c["stride"], c["padding"], c["ceil_mode"])
    attrs["dilations"] = _n_ints(c["dilation"], len(x.shape) - 2)
    if c.op.endswith("with_indices"):
        if _indices_used(c):
            raise c.fail("max-pool indices are used")
        return [c.emit("MaxPool", [x], attrs, shape=tuple(c.val[0].shape)), None]
    return c.emit("MaxPool", [x], attrs)


def _indices_used(c: _Call) -> bool:
    """Whether the indices output of a (..., indices) op is read."""
    return any(u.args[1] != 0 and u.users for u in c.n.users)


def _floor_out(x: int, k: int, s: int, p: int) -> int:
    return (x + 2 * p - k) // s + 1


@converts("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(c: _Call):
    x = c.tensor("self")
    divisor = c.raw.get("divisor_override")
    attrs = _pool_attrs(c, x, c["kernel_size"], c["stride"], c["padding"], c["ceil_mode"])
    floor_shape = [
        _floor_out(d, k, s, p)
        for d, k, s, p in zip(x.shape[2:], attrs["kernel_shape"], attrs["strides"], attrs["pads"])
    ]
    if attrs["ceil_mode"] and list(c.shape[2:]) != floor_shape:
        raise c.fail("ceil_mode average pooling with a partial last window")  # divisors differ from ONNX's
    attrs["ceil_mode"] = 0
    if divisor:  # window sums over divisor_override: the mean over the whole window, rescaled
        # (torch's ONNX exporter divides by the window instead; its fallback would be wrong)
        attrs["count_include_pad"] = 1
        mean = c.emit("AveragePool", [x], attrs)
        area = float(np.prod(attrs["kernel_shape"]))
        return c.emit("Mul", [mean, c.scalar(area / float(divisor), x.dtype, name="divisor")])
    attrs["count_include_pad"] = int(bool(c["count_include_pad"]))
    return c.emit("AveragePool", [x], attrs)


@converts("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d")
def _adaptive_avg_pool(c: _Call):
    x = c.tensor("self")
    out = list(c.shape[2:])
    spatial = list(x.shape[2:])
    if all(o == 1 for o in out):
        axes = list(range(2, len(x.shape)))
        return c.emit("ReduceMean", [x, c.ints(axes, "axes")], {"keepdims": 1, "noop_with_empty_axes": 0})
    if any(i % o for i, o in zip(spatial, out)):
        raise c.fail(f"adaptive pooling from {spatial} to {out} does not tile the input")
    k = [i // o for i, o in zip(spatial, out)]
    attrs = {
        "ceil_mode": 0,
        "count_include_pad": 1,
        "kernel_shape": k,
        "pads": [0] * (2 * len(k)),
        "strides": k,
    }
    return c.emit("AveragePool", [x], attrs)


@converts("adaptive_max_pool2d", "adaptive_max_pool1d")
def _adaptive_max_pool(c: _Call):
    x = c.tensor("self")
    if any(d != 1 for d in c.val[0].shape[2:]) or _indices_used(c):
        raise c.fail("adaptive max pooling to more than one position, or its indices")
    return [c.emit("GlobalMaxPool", [x], shape=tuple(c.val[0].shape)), None]


def _reduce(onnx_op: str):
    def convert(c: _Call):
        x = c.tensor("self")
        dims = c.raw.get("dim")
        if dims is None or (isinstance(dims, (list, tuple)) and not dims):
            dims = list(range(len(x.shape)))
        dims = [d % len(x.shape) for d in ([dims] if isinstance(dims, int) else dims)]
        if c.raw.get("dtype") is not None:
            raise c.fail("a reduction with a dtype")
        keep = int(bool(c.raw.get("keepdim", False)))
        if x.dtype != c.dtype:  # torch sums integers and bools as int64
            x = _operand(c, x, c.dtype)
        return c.emit(onnx_op, [x, c.ints(dims, "axes")], {"keepdims": keep, "noop_with_empty_axes": 0})

    return convert


CONVERTERS["mean"] = _reduce("ReduceMean")
CONVERTERS["sum"] = _reduce("ReduceSum")
CONVERTERS["amax"] = _reduce("ReduceMax")
CONVERTERS["amin"] = _reduce("ReduceMin")


@converts("softmax", "_softmax", "log_softmax", "_log_softmax")
def _softmax(c: _Call):
    x = c.tensor("self")
    if c.raw.get("dtype") is not None and np_dtype(c.raw["dtype"]) != x.dtype:
        raise c.fail("softmax with a dtype")
    op = "LogSoftmax" if "log" in c.op else "Softmax"
    return c.emit(op, [x], {"axis": int(c["dim"]) % len(x.shape)})


# ---- data movement ----
@converts("view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as")
def _reshape(c: _Call):
    x = c.tensor("self")
    if c.shape == x.shape:
        return x
    return c.emit("Reshape", [x, c.ints(c.shape, "shape")])


@converts("squeeze")
def _squeeze(c: _Call):
    x = c.tensor("self")
    if c.shape == x.shape:
        return x
    dims = c.raw.get("dim")
    if dims is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    else:
        axes = sorted({d % len(x.shape) for d in ([dims] if isinstance(dims, int) else dims)})
        axes = [a for a in axes if x.shape[a] == 1]
    return c.emit("Squeeze", [x, c.ints(axes, "axes")])


@converts("unsqueeze")
def _unsqueeze(c: _Call):
    x = c.tensor("self")
    axis = int(c["dim"]) % (len(x.shape) + 1)
    return c.emit("Unsqueeze", [x, c.ints([axis], "axes")])


@converts("permute")
def _permute(c: _Call):
    x = c.tensor("self")
    perm = [int(d) % len(x.shape) for d in c["dims"]]
    return x if perm == sorted(perm) else c.emit("Transpose", [x], {"perm": perm})


@converts("transpose")
def _transpose(c: _Call):
    x = c.tensor("self")
    a, b = int(c["dim0"]) % len(x.shape), int(c["dim1"]) % len(x.shape)
    if a == b:
        return x
    perm = list(range(len(x.shape)))
    perm[a], perm[b] = perm[b], perm[a]
    return c.emit("Transpose", [x], {"perm": perm})


@converts("expand")
def _expand(c: _Call):
    x = c.tensor("self")
    return x if c.shape == x.shape else c.emit("Expand", [x, c.ints(c.shape, "shape")])


@converts("cat", "concat", "concatenate")
def _cat(c: _Call):
    parts = [v for v in c["tensors"] if v.shape != (0,)]  # torch.cat skips empty 1-D tensors
    axis = int(c["dim"]) % len(c.shape)
    return parts[0] if len(parts) == 1 else c.emit("Concat", parts, {"axis": axis})


@converts("stack")
def _stack(c: _Call):
    axis = int(c["dim"]) % len(c.shape)
    parts = [
        c.emit("Unsqueeze", [v, c.ints([axis], "axes")], shape=c.shape[:axis] + (1,) + c.shape[axis + 1 :])
        for v in c["tensors"]
    ]
    return c.emit("Concat", parts, {"axis": axis})


@converts("split", "split_with_sizes", "chunk", "tensor_split")
def _split(c: _Call):
    x = c.tensor("self")
    axis = int(c["dim"]) % len(x.shape)
    sizes = [int(v.shape[axis]) for v in c.val]
    shapes = [tuple(int(d) for d in v.shape) for v in c.val]
    if len(sizes) == 1:
        return [x]
    outs = c.emit("Split", [x, c.ints(sizes, "sizes")], {"axis": axis}, outputs=len(sizes))
    for v, s in zip(outs, shapes):
        v.shape = s
    return outs


@converts("unbind")
def _unbind(c: _Call):
    x = c.tensor("self")
    axis = int(c["dim"]) % len(x.shape)
    n = x.shape[axis]
    piece = x.shape[:axis] + (1,) + x.shape[axis + 1 :]
    outs = c.emit("Split", [x, c.ints([1] * n, "sizes")], {"axis": axis}, outputs=n)
    for v in outs if n > 1 else [outs]:
        v.shape = piece
    outs = outs if n > 1 else [outs]
    return [
        c.emit("Squeeze", [v, c.ints([axis], "axes")], shape=tuple(c.val[i].shape))
        for i, v in enumerate(outs)
    ]


@converts("select")
def _select(c: _Call):
    x = c.tensor("self")
    axis = int(c["dim"]) % len(x.shape)
    index = int(c["index"]) % x.shape[axis]
    return c.emit("Gather", [x, c.conv.literal(index, np.int64, f"{c.n.name}_index")], {"axis": axis})


def _slice(c: _Call, x: Value, axis: int, start: int, end: int, step: int):
    size = x.shape[axis]
    start, end, _ = slice(start, end, step).indices(size)
    if start == 0 and end >= size and step == 1:
        return x
    return c.emit(
        "Slice",
        [
            x,
            c.ints([start], "starts"),
            c.ints([end], "ends"),
            c.ints([axis], "axes"),
            c.ints([step], "steps"),
        ],
    )


@converts("slice")
def _slice_op(c: _Call):
    x = c.tensor("self")
    step = int(c["step"])
    if step <= 0:
        raise c.fail("a slice step below 1")
    axis = int(c["dim"]) % len(x.shape)
    return _slice(c, x, axis, c["start"], c["end"], step)


@converts("narrow")
def _narrow(c: _Call):
    x = c.tensor("self")
    axis = int(c["dim"]) % len(x.shape)
    start = int(c["start"]) % x.shape[axis]
    return _slice(c, x, axis, start, start + int(c["length"]), 1)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@converts("pad", "constant_pad_nd")
def _pad(c: _Call):
    x = c.tensor("self")
    pad = [int(p) for p in c["pad"]]
    mode = c.raw.get("mode", "constant") or "constant"
    if mode not in _PAD_MODES or any(p < 0 for p in pad):
        raise c.fail(f"padding mode {mode!r} or negative padding")
    rank = len(x.shape)
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    value = c.raw.get("value")
    ins = [x, c.ints(begins + ends, "pads")]
    if mode == "constant":
        ins.append(c.scalar(float(value or 0.0), name="value"))
    return c.emit("Pad", ins, {"mode": _PAD_MODES[mode]})


def _scale_factors(c: _Call) -> list[float] | None:
    """An upsample call's scale factor per spatial dim (Python floats, as torch was given
    them), or None when it was given output sizes."""
    scales = c.raw.get("scale_factors")
    if scales is None:  # the per-dim overloads: scales_d, scales_h, scales_w, each optional
        given = [c.raw.get(k) for k in ("scales_d", "scales_h", "scales_w", "scales") if k in c.raw]
        scales = given if given and all(s is not None for s in given) else None
    return [float(f) for f in scales] if scales else None


def _torch_nearest_index(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """The input index torch's nearest upsampling reads for each output index (its CPU
    kernel's nearest_idx: floor(index · float32(1 / factor)), clamped)."""
    if n_out == n_in:
        return np.arange(n_out)
    step = np.float32(1.0 / scale)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * step).astype(np.int64), n_in - 1)


@converts("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d")
def _upsample_nearest(c: _Call):
    """Resize by output sizes; when a scale factor's float reciprocal picks other rows than
    out / in does (0.6 of 13 rows), one Gather of those rows per spatial axis, exactly."""
    x, scales = c.tensor("input" if "input" in c.raw else "self"), _scale_factors(c)
    if scales is not None:
        n_in, n_out = x.shape[2:], c.shape[2:]
        picks = [_torch_nearest_index(i, o, f) for i, o, f in zip(n_in, n_out, scales)]
        if any(not np.array_equal(p, (np.arange(o) * i) // o) for p, i, o in zip(picks, n_in, n_out)):
            for axis, index in enumerate(picks, start=2):
                shape = (*x.shape[:axis], len(index), *x.shape[axis + 1 :])
                literal = c.conv.literal(index, np.int64, f"{c.n.name}_rows")
                x = c.emit("Gather", [x, literal], {"axis": axis}, shape=shape, dtype=x.dtype)
            return x
    attrs = {"coordinate_transformation_mode": "asymmetric", "mode": "nearest", "nearest_mode": "floor"}
    return c.emit("Resize", [x, None, None, c.ints(c.shape, "sizes")], attrs)


@converts("upsample_bilinear2d", "upsample_linear1d", "upsample_trilinear3d")
def _upsample_linear(c: _Call):
    """Resize by the scale factors when torch was given them (it maps coordinates by the
    factor, not by output / input size: they differ at 1.5x of 13 rows), else by sizes."""
    x, scales = c.tensor("input" if "input" in c.raw else "self"), _scale_factors(c)
    mode = "align_corners" if c["align_corners"] else "half_pixel"
    attrs = {"coordinate_transformation_mode": mode, "mode": "linear"}
    if scales is not None:
        factors = c.conv.literal([1.0, 1.0, *scales], np.float32, f"{c.n.name}_scales")
        return c.emit("Resize", [x, None, factors], attrs)
    return c.emit("Resize", [x, None, None, c.ints(c.shape, "sizes")], attrs)


@converts("pixel_shuffle")
def _pixel_shuffle(c: _Call):
    x = c.tensor("self")
    if len(x.shape) != 4:
        raise c.fail("pixel_shuffle of a non-4-D tensor")
    return c.emit("DepthToSpace", [x], {"blocksize": int(c["upscale_factor"]), "mode": "CRD"})


@converts("scaled_dot_product_attention")
def _sdpa(c: _Call):
    q, k, v = c.tensor("query"), c.tensor("key"), c.tensor("value")
    if (
        c["attn_mask"] is not None
        or c["is_causal"]
        or float(c["dropout_p"]) != 0.0
        or c.raw.get("enable_gqa")
    ):
        raise c.fail("attention with a mask, causal masking, dropout or grouped queries")
    scale = c.raw.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    perm = list(range(len(k.shape)))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kt_shape = tuple(k.shape[i] for i in perm)
    kt = c.emit("Transpose", [k], {"perm": perm}, shape=kt_shape)
    scores_shape = tuple(np.broadcast_shapes(q.shape[:-2], k.shape[:-2])) + (q.shape[-2], k.shape[-2])
    s = c.emit("MatMul", [q, kt], shape=scores_shape)
    s = c.emit("Mul", [s, c.scalar(scale, name="scale")], shape=scores_shape)
    if c.raw.get("scale") is None:  # torch derives it from the head size, which pruning may change
        c.emitted[-1].meta["head_size_scale"] = q.shape[-1]
    p = c.emit("Softmax", [s], {"axis": len(scores_shape) - 1}, shape=scores_shape)
    return c.emit("MatMul", [p, v])


@converts("embedding")
def _embedding(c: _Call):
    return c.emit("Gather", [c.tensor("weight"), c.tensor("indices")], {"axis": 0})


@converts("_to_copy", "to", "type_as")
def _to(c: _Call):
    x = c.tensor("self")
    if c.dtype == x.dtype:
        return x
    return c.emit("Cast", [x], {"to": _onnx_dtype(c.dtype)})


def _alias(c: _Call):
    x = c.tensor("input" if "input" in c.raw else "self")
    if c.op in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout") and c.raw.get(
        "train"
    ):
        raise c.fail("dropout in training mode")
    return x


for _name in _ALIASES:
    CONVERTERS[_name] = _alias


def _onnx_dtype(dtype: np.dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# ---- entry point ------------------------------------------------------------------------------
def convert_program(program, module, name: str | None = None) -> Graph:
    """The ExportedProgram ``program`` (of ``module``) as a Graph; raises UnsupportedOp."""
    return _Converter(program, module, name or type(module).__name__).run()


def ops_of(program) -> list[str]:
    """The ATen ops of an exported program that have no converter, in order of appearance."""
    missing = []
    for n in program.graph.nodes:
        if n.op != "call_function" or n.target is operator.getitem:
            continue
        packet = getattr(n.target, "overloadpacket", None)
        op = getattr(packet, "__name__", "")
        base = op[:-1] if op.endswith("_") and not op.startswith("_") else op
        if base not in CONVERTERS and base not in _IGNORED and str(n.target) not in missing:
            missing.append(str(n.target))
    return missing
