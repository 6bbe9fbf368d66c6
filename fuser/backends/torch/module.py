"""Torch backend: run a fuser Graph as a ``torch.nn.Module``.

``to_torch(graph)`` builds a module whose ``forward(*inputs)`` computes what
ONNX Runtime computes for the same graph. Floating-point weights become
``nn.Parameter``s (so the module can be fine-tuned); BatchNormalization
running statistics, integer and shape constants become buffers.

Design: every ONNX op maps to one short function ``fn(op, *inputs)`` registered in
``fuser.ir.ops`` by its family module; ``op`` is an ``Op`` holding the node's attributes,
opset and the numpy values of its constant inputs (config inputs such as shapes and axes
are read from there, not from tensors). ``forward`` is a plain interpreter loop over a plan of
``(fn, op, input slots, output slots, slots to free)``; intermediate tensors
are dropped right after their last use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fuser.ir import FuserError, Graph, Value, constant_value
from fuser.ir.ops import OPS, Category, Role, implementation, implemented, op_def, refusal, refuse

from . import elementwise, index, recurrent, reduce, resize, shape
from . import nn as nn_family
from . import source as source_family
from .context import Op

# Importing each op family registers its implementations into fuser.ir.ops.
FAMILIES = (elementwise, index, nn_family, recurrent, reduce, resize, shape, source_family)
# Standard ops fuser knows by their schema only, and has no torch code for: named refusals.
refuse(
    "torch",
    sorted(n for n, d in OPS.items() if d.category is Category.OPAQUE and "torch" not in d.impls),
    "has no torch implementation in fuser; run the model with ONNX Runtime (fuser optimize exports it)",
)
# torch computes little on uint16/32/64 ("not implemented for 'UInt32'"); these ops only move data.
WIDE_UNSIGNED = {np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64)}
MOVES_DATA = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def _role(v: Value, array: np.ndarray) -> str:
    """'param', 'stat' (persistent buffer), 'shape' (non-persistent buffer) or 'buffer', from the
    registry's role of each input slot that reads ``v``."""
    roles = [d.role(i) if (d := op_def(n.op)) is not None else Role.DATA for n, i in v.uses]
    floating = np.issubdtype(array.dtype, np.floating)
    if floating and any(r in (Role.WEIGHT, Role.BIAS) for r in roles):
        return "param"
    if Role.STAT in roles:
        return "stat"
    if roles and all(r is Role.CONFIG for r in roles):
        return "shape"
    return "param" if floating and array.size > 1 else "buffer"


def sanitize_name(name: str) -> str:
    s = re.sub(r"\W", "_", name) or "const"
    return "c_" + s if s[0].isdigit() else s


def _to_tensor(a: np.ndarray, where: str) -> torch.Tensor:
    """A tensor owning a contiguous copy (splat constants, with zero strides, are materialised)."""
    if a.dtype.kind in "OUSV":
        raise FuserError(f"{where}: constants of dtype {a.dtype} are not supported by the torch backend")
    b = np.ascontiguousarray(a).reshape(a.shape)  # ascontiguousarray makes 0-d arrays 1-d
    if np.may_share_memory(a, b) or not b.flags.writeable:  # never alias the graph's arrays
        b = b.copy()
    return torch.from_numpy(b)


def _check_dtypes(node, where: str) -> None:
    """String tensors, and uint16/32/64 arithmetic, are refused by name (torch has no kernels)."""
    for v in list(node.inputs) + list(node.outputs):
        if v is None or v.dtype is None:
            continue
        if v.dtype.kind in "OUS":
            raise FuserError(f"{where}: torch backend: string tensors ('{v.name}') are not supported")
        if v.dtype in WIDE_UNSIGNED and node.op not in MOVES_DATA:
            raise FuserError(
                f"{where}: torch backend: {v.dtype} arithmetic ('{v.name}') is not supported by torch; "
                "run the model with ONNX Runtime"
            )


class FuserModule(nn.Module):
    """A fuser Graph as an nn.Module: ``forward(*inputs)`` in graph-input order."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph_name = graph.name
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self._slots: dict[int, int] = {}  # id(Value) -> env slot; slot 0 always holds None
        self._const_slots: list[tuple[int, str]] = []  # (slot, parameter or buffer name)
        self._taken: set[str] = set()
        arrays: dict[int, np.ndarray] = {}  # constants, including Constant-node outputs
        self._in_slots = [self._slot(v) for v in graph.inputs]
        self._captured_shapes = [
            tuple(int(d) for d in v.shape) if v.is_static else None for v in graph.inputs
        ]
        steps = []
        for node in graph.nodes:
            where = f"{graph.source}: node '{node.name}' ({node.op})"
            if node.op == "Constant":
                arrays[id(node.outputs[0])] = constant_value(node.attrs, where)
                self._const_slot(node.outputs[0], arrays[id(node.outputs[0])], graph.source)
                continue
            fn = implementation("torch", node.op)
            if fn is None or node.domain not in ("", "ai.onnx"):
                count = len(implemented("torch"))
                why = refusal("torch", node.op) or f"has no torch implementation ({count} ops have one)"
                raise FuserError(f"{where}: torch backend: op '{node.op}' {why}")
            _check_dtypes(node, where)
            ins = []
            for v in node.inputs:
                if v is not None and v.is_const:
                    arrays.setdefault(id(v), v.const)
                    ins.append(self._const_slot(v, v.const, graph.source))
                else:
                    ins.append(0 if v is None else self._slot(v))
            outs = tuple(self._slot(v) for v in node.outputs)
            used = [bool(v.uses) or graph.is_output(v) for v in node.outputs]
            # Ops read shape inputs and scalars as numpy; weights only ever as tensors.
            consts = [
                arrays.get(id(v))
                if v is not None
                and id(v) in arrays
                and (op_def(node.op).role(i) is Role.CONFIG or arrays[id(v)].size == 1)
                else None
                for i, v in enumerate(node.inputs)
            ]
            c = Op(node, graph.opset, used, consts)
            try:
                check = implementation("torch.check", node.op)
                if check is not None:
                    check(c, node)
            except FuserError as e:
                raise FuserError(f"{where}: {e}") from None
            steps.append((fn, c, tuple(ins), outs, where))
        produced = set(self._in_slots) | {s for step in steps for s in step[3]}
        for v in graph.outputs:
            if v.is_const:
                self._const_slot(v, v.const, graph.source)
            elif self._slots.get(id(v)) not in produced and id(v) not in arrays:
                raise FuserError(f"{graph.source}: graph output '{v.name}' is not produced")
        self._out_slots = [self._slots[id(v)] for v in graph.outputs]
        self._nslots = len(self._slots) + 1
        self._plan = self._with_frees(steps)
        del self._slots, self._taken  # construction-only bookkeeping

    def _slot(self, v: Value) -> int:
        if id(v) not in self._slots:
            self._slots[id(v)] = len(self._slots) + 1
        return self._slots[id(v)]

    def _const_slot(self, v: Value, array: np.ndarray, source: str) -> int:
        """The slot of a constant, registering it (once) as a parameter or buffer."""
        if id(v) in self._slots:
            return self._slots[id(v)]
        t = _to_tensor(array, f"{source}: constant '{v.name}'")
        role = _role(v, array)
        name = self._unique(sanitize_name(v.name))
        if role == "param":
            self.register_parameter(name, nn.Parameter(t))
        else:
            self.register_buffer(name, t, persistent=role != "shape")
        s = self._slot(v)
        self._const_slots.append((s, name))
        return s

    def _unique(self, name: str) -> str:
        base, i = name, 0
        while name in self._taken or hasattr(self, name):
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def _with_frees(self, steps):
        """Attach to each step the slots whose last use it is (never outputs or constants)."""
        keep = set(self._out_slots) | {s for s, _ in self._const_slots} | {0}
        last: dict[int, int] = {}
        for i, (_, _, ins, outs, _) in enumerate(steps):
            for s in outs:
                last[s] = i  # unused outputs die where they are made
            for s in ins:
                last[s] = i
        for s in self._in_slots:
            last.setdefault(s, -1)
        frees: dict[int, list[int]] = {}
        for s, i in last.items():
            if s not in keep:
                frees.setdefault(i, []).append(s)
        self._free_inputs_early = tuple(frees.get(-1, ()))
        return [
            (fn, c, ins, outs, tuple(frees.get(i, ())), where)
            for i, (fn, c, ins, outs, where) in enumerate(steps)
        ]

    def _refuse_other_shapes(self, inputs, where: str, error: Exception) -> None:
        """A node failing on inputs of other shapes than the capture's (a Reshape to the
        captured batch, say): the error says so instead of torch's, which names no cause."""
        got = [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in inputs]
        differ = [
            f"{name} {list(g)} (captured {list(c)})"
            for name, g, c in zip(self.input_names, got, self._captured_shapes)
            if c is not None and g is not None and g != c
        ]
        if differ:
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise FuserError(
                f"{where} failed on input shapes other than the captured ones: {', '.join(differ)} "
                f"({first}); this graph fixes its shapes at capture: capture it again at these shapes"
            ) from error

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self._in_slots):
            raise FuserError(
                f"{self.graph_name}: expected {len(self._in_slots)} inputs "
                f"{self.input_names}, got {len(inputs)}"
            )
        env: list[Any] = [None] * self._nslots
        for s, name in self._const_slots:
            env[s] = getattr(self, name)
        for s, x in zip(self._in_slots, inputs):
            env[s] = x
        for s in self._free_inputs_early:
            env[s] = None
        for fn, c, ins, outs, free, where in self._plan:
            try:
                res = fn(c, *[env[i] for i in ins])
            except FuserError as e:
                raise FuserError(f"{where}: {e}") from None
            except Exception as e:  # name the node in torch's own errors
                self._refuse_other_shapes(inputs, where, e)
                if hasattr(e, "add_note"):
                    e.add_note(f"while running {where}")
                raise
            if len(outs) == 1 and isinstance(res, torch.Tensor):
                env[outs[0]] = res
            else:
                for s, r in zip(outs, res):
                    env[s] = r
            for s in free:
                env[s] = None
        out = [env[s] for s in self._out_slots]
        return out[0] if len(out) == 1 else tuple(out)

    def extra_repr(self) -> str:
        return (
            f"graph={self.graph_name!r}, steps={len(self._plan)}, "
            f"inputs={self.input_names}, outputs={self.output_names}"
        )


def to_torch(graph: Graph) -> FuserModule:
    """Build an nn.Module computing ``graph``; weights are Parameters (trainable)."""
    return FuserModule(graph)


def run_torch(
    graph: Graph, inputs: Mapping[str, np.ndarray], *, module: FuserModule | None = None
) -> list[np.ndarray]:
    """Run ``graph`` (or a prebuilt ``module`` of it) on numpy inputs; returns numpy outputs."""
    module = module if module is not None else to_torch(graph)
    missing = [v.name for v in graph.inputs if v.name not in inputs]
    if missing:
        raise FuserError(
            f"{graph.source}: missing input(s) {missing}; "
            f"the graph's inputs are {[v.name for v in graph.inputs]}"
        )
    args = []
    for v in graph.inputs:
        a = np.asarray(inputs[v.name], dtype=v.dtype)
        a = np.ascontiguousarray(a).reshape(a.shape)  # ascontiguousarray makes 0-d arrays 1-d
        args.append(torch.from_numpy(a if a.flags.writeable else a.copy()))
    with torch.inference_mode():
        out = module(*args)
    out = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.detach().cpu().contiguous().numpy() for o in out]
