"""Lower a fuser Graph to Apache TVM Relax, build it for llvm or cuda, and run it.

    from fuser.backends import tvm as tb
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
emitted one op per kernel. Relax's BlockBuilder keeps one function for structurally
identical groups (same ops, shapes and attributes), so such groups share one kernel,
named after the first of them: ``group_kernels(mod)`` says which kernel runs each group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fuser.ir import FuserError, Graph, Node, Value, stable_topological_order
from fuser.ir.ops import implementation, implemented, refusal

from .common import relax, require_tvm
from .converters import Lowering, relax_const

GROUP_FUNC_PREFIX = "fuser_group_"
GROUP_KERNELS_ATTR = "fuser_group_kernels"  # module attribute: group id -> its function's name
GROUP_ORDER_ATTR = "fuser_group_order"  # module attribute: group ids in the order main calls them


def _sinfo(v: Value):
    return relax.TensorType([int(d) for d in v.shape], str(v.dtype))


def _not_lowered(node: Node, source: str) -> FuserError:
    why = (
        refusal("relax", node.op)
        or f"is not supported (the TVM backend lowers {len(implemented('relax'))} ops)"
    )
    return FuserError(f"{source}: node {node.name} ({node.op}): TVM backend: op {node.op} {why}")


def _emit_node(bb, node: Node, env: dict[int, Any]) -> None:
    """Lower one node, reading its inputs from and writing its outputs into ``env``."""
    conv = implementation("relax", node.op)
    src = node.graph.source if node.graph is not None else "<graph>"
    if conv is None or node.domain not in ("", "ai.onnx"):
        raise _not_lowered(node, src)
    args = []
    for v in node.inputs:
        if v is None:
            args.append(None)
        elif id(v) in env:
            args.append(env[id(v)])
        elif v.is_const:
            args.append(relax_const(v.const))
        else:
            raise FuserError(f"{src}: node {node.name} reads {v.name} before it is computed")
    result = conv(Lowering(bb, node, args), *args)
    results = result if isinstance(result, list) else [result]
    for v, r in zip(node.outputs, results):
        env[id(v)] = bb.emit(r, name_hint=_var_name(v.name))


def _lookup(env: dict[int, Any], v: Value):
    """The relax expression of ``v``: computed, an argument, or an inline constant."""
    return env[id(v)] if id(v) in env else relax_const(v.const)


def _var_name(name: str) -> str:
    clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return clean if clean and not clean[0].isdigit() else f"v_{clean}"


def _order_groups(
    graph: Graph, groups: list[tuple[int, Sequence[Node]]]
) -> list[tuple[int | None, list[Node]]]:
    """(group id, its nodes) in an order where each unit runs after those it reads from;
    a node in no group is a unit of its own with id None. Raises when the groups feed
    each other in a cycle, which no kernel order allows."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    unit_of: dict[int, int] = {}
    units: list[tuple[int | None, list[Node]]] = []
    for gid, members in groups:
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


def _calls_anything(func) -> bool:
    calls = []
    relax.analysis.post_order_visit(func.body, lambda e: isinstance(e, relax.Call) and calls.append(e))
    return bool(calls)


def to_relax(graph: Graph, groups: Sequence[Sequence[Node]] | Mapping[str, int] | None = None):
    """The Graph as a Relax IRModule whose ``main`` takes the graph inputs and returns a
    tuple of the graph outputs.

    ``groups``: a fusion plan (``fuser.partition``), lists of nodes (group ids 0, 1, ...) or
    node name -> group id, one group per fused kernel; group ``k``'s function is
    ``fuser_group_k``. A group of Identity-like ops only (the model returns its input) has
    nothing to fuse: its nodes run in ``main``.
    """
    require_tvm()
    if not all(v.is_static for v in graph.inputs):
        raise FuserError(
            f"{graph.source}: the TVM backend needs static input shapes; fix them with --input-shape"
        )
    for n in graph.nodes:
        if implementation("relax", n.op) is None:
            raise _not_lowered(n, graph.source)
    if hasattr(groups, "groups"):  # a fusion Plan (not imported: fusion sits above backends)
        groups = {op: gid for gid, g in enumerate(groups.groups) for op in g.ops}
    if isinstance(groups, Mapping):  # keep the given ids: reports join on them
        by_id: dict[int, list[Node]] = {}
        for n in graph.nodes:
            if n.name in groups:
                by_id.setdefault(int(groups[n.name]), []).append(n)
        numbered = sorted(by_id.items())
    else:
        numbered = list(enumerate(groups or ()))
    bb = relax.BlockBuilder()
    units = _order_groups(graph, numbered) if numbered else None
    calls = []
    kernel_of: dict[str, str] = {}
    aliases = set()
    for gid, members in units or ():
        if gid is None:  # a node in no group: emitted in main, one kernel of its own
            calls.append((None, None, None, members))
            continue
        gvar, ins, outs = _group_function(bb, graph, members, f"{GROUP_FUNC_PREFIX}{gid}")
        if not _calls_anything(bb.get()[gvar]):
            # only Identity-like ops (a model that returns its input): nothing to fuse, and
            # FuseTIR fails on a primitive function without a call; its nodes go to main
            aliases.add(gvar)
            calls += [(None, None, None, [n]) for n in members]
            continue
        kernel_of[str(gid)] = gvar.name_hint  # an earlier group's when the BlockBuilder shared it
        calls.append((gvar, ins, outs, members))
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
    mod = bb.get()
    for gvar in aliases:
        del mod[gvar]
    if not kernel_of:
        return mod
    order = [int(g) for g in kernel_of]  # dicts keep insertion order: the order of the calls
    return mod.with_attr(GROUP_KERNELS_ATTR, kernel_of).with_attr(GROUP_ORDER_ATTR, order)


def group_kernels(mod) -> dict[int, str]:
    """Plan group id -> the kernel (TIR function after ``fuse``) that runs it, for a
    module from ``to_relax(graph, groups)``; {} without groups."""
    attrs = mod.attrs or {}
    if GROUP_KERNELS_ATTR not in attrs:
        return {}
    return {int(k): str(v) for k, v in attrs[GROUP_KERNELS_ATTR].items()}


def group_order(mod) -> list[int]:
    """Plan group ids in the order ``main`` calls their kernels (the graph's order among groups
    ready together, not the ids'), for a module from ``to_relax(graph, groups)``."""
    attrs = mod.attrs or {}
    return [int(g) for g in attrs[GROUP_ORDER_ATTR]] if GROUP_ORDER_ATTR in attrs else []


def shared_kernels(kernel_of: Mapping[int, str]) -> dict[str, list[int]]:
    """Kernel -> the groups it runs, for kernels that run more than one group."""
    by_kernel: dict[str, list[int]] = {}
    for gid, kernel in sorted(kernel_of.items()):
        by_kernel.setdefault(kernel, []).append(gid)
    return {k: gids for k, gids in by_kernel.items() if len(gids) > 1}
