"""Blocked (NCHW[x]c) layouts for CPU builds, chosen per convolution, with the weights
transformed once at build time.

``layout_passes(target)`` (before LegalizeOps), in order:

1. ``RewriteForLayout``: ops TVM 0.27's ConvertLayout cannot carry through a blocked layout
   (no FRelaxInferLayout) become ops it can: ``clip(x, lo, hi)`` ->
   ``minimum(maximum(x, lo), hi)``; ``leakyrelu(x, a)`` with 0 <= a <= 1 -> ``maximum(x, a*x)``.
   Both compute the same numbers (max and min are exact). A ``split`` at indices cutting
   equal parts becomes a split into sections (ConvertLayout gets blocked split indices
   wrong: YOLOv8's channel halves came out as all and nothing).
2. ``ConvertLayout`` with ``make_layout_cb``: a conv2d in NCHW/OIHW whose channel counts have
   a block (16, 8 or 4 channels, at most the target's float lanes; a count below the lanes is
   its own block; a block under 8 of a count of at least the lanes is refused unless a
   grouped conv needs it: ShuffleNet's 116 channels as 4-channel blocks filled a quarter of
   each 16-lane vector, and its 1x1 convs ran 3.5x faster as plain matmuls over the pixels;
   a depthwise conv keeps such a block, between layout transforms: plain it falls to the
   reduction rule, and ShuffleNet's 116-channel ones took 0.46 ms a run there, > 3x blocked)
   runs as ``NCHW{bi}c`` x ``OIHW{bi}i{bo}o`` -> ``NCHW{bo}c``; depthwise as
   ``NCHW{b}c`` x ``OIHW{b}o``; a grouped conv blocks within a group. One block per channel
   count for the whole model (``group_limits``): TVM cannot change between two blocked
   layouts, and a grouped conv caps the block of every channel count it touches at its
   per-group width. A conv with no block stays NCHW (``["NCHW", "OIHW", "NCHW"]``: returning
   nothing crashes ConvertLayout on a blocked input; so does a conv2d_transpose, which stays
   NCHW/IOHW: PaddleOCR's detector head); if it is 1x1, stride 1, unpadded and
   ungrouped it becomes ``W[O, C] @ X[N, C, H*W]`` (reshapes are free), which the matmul rule
   vectorizes over the pixels. Elementwise ops, pools, means, concat and split follow the
   layout of their input.
3. ``HoistLayoutsOutOfGroups``: plan groups (Primitive functions, converted one by one, so each
   starts and ends in the plain layout) exchange blocked tensors. A parameter read only by one
   ``layout_transform``, or given a constant by every call and read only by one op on it alone
   (Gemm's transpose), takes that op's result instead: the op moves to the calls, where pass 4
   prepacks a weight's layout and FoldConstant folds the rest. A function whose result is a
   ``layout_transform`` of a blocked tensor back to plain returns the blocked tensor; the
   transform moves to its calls. At a call, a transform that undoes the one its argument came
   from (a group's blocked result into a group that blocks it the same way) is dropped: the
   groups pass the blocked tensor; the transforms left in ``main`` are kernels of their own (at
   the model's input and output, or between groups with different blocks). Groups sharing one
   function (identical shapes) keep sharing it. Before it, ``TransformsBeforeEpilogues`` moves
   a transform into the blocked layout above a ReLU/max/min by scalars that only it reads, so a
   group starting with the previous conv's activation blocks its parameter directly.
4. ``PrepackWeights``: each ``layout_transform`` of a constant is done here, once, in numpy
   (the index map evaluated on index grids). FoldConstant would compile one TIR function per
   weight: most of the build time of a 150-conv model.

``legalize_map()`` gives LegalizeOps fuser's TE computes for blocked convolutions
(``conv2d_nchwc``, ``depthwise_nchwc``: separate reduction axes for input-channel chunk,
kernel row, kernel column and channel in block, which the window schedule rule tiles) and
the fast forms of softmax, exp, sigmoid, tanh, erf and GELU (TVM's ``topi.fast_*``: polynomial
approximations that vectorize; LLVM turns ``exp`` of a vector into one libm call per lane).
"""

from __future__ import annotations

import re

import numpy as np

from .common import relax, require_tvm, tvm

BLOCKS = (16, 8, 4)
MIN_BLOCK = 8  # smallest block of a count that has at least the lanes (not grouped)


def channel_block(c: int, lanes: int) -> int | None:
    """Channels per block for a tensor of ``c`` channels: the largest of 16/8/4 that is at
    most ``lanes`` and divides ``c``; ``c`` itself when smaller than ``lanes``; else None."""
    for b in BLOCKS:
        if b <= lanes and c % b == 0:
            return b
    return c if c < lanes else None


def _dims(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _calls(mod, op_name: str) -> list:
    op = tvm.ir.Op.get(op_name)
    found: list = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func.body, lambda e: found.append(e) if isinstance(e, relax.Call) and e.op == op else None
            )
    return found


def group_limits(mod, lanes: int) -> dict[int, int]:
    """Channel count -> largest block allowed: every grouped (not depthwise) conv caps the
    block of its input and output channel counts at its per-group width's block."""
    limits: dict[int, int] = {}
    for call in _calls(mod, "relax.nn.conv2d"):
        groups = int(call.attrs.groups)
        cin, cout = _dims(call.args[0])[1], _dims(call.args[1])[0]
        if groups == 1 or groups == cin == cout:
            continue
        for c in (cin, cout):
            limits[c] = min(limits.get(c, lanes), channel_block(c // groups, lanes) or 1)
    return limits


def make_layout_cb(lanes: int, limits: dict[int, int] | None = None):
    """ConvertLayout's per-call callback: the layouts for one conv2d (see the module doc)."""
    limits = limits or {}

    def block(c):
        b = channel_block(c, limits.get(c, lanes))
        if b is not None and c not in limits and c >= lanes and b < min(lanes, MIN_BLOCK):
            return None  # a quarter (half) vector: plain NCHW, its 1x1 convs as full-width matmuls
        return b

    def layout_cb(call):
        op = call.op.name
        if op == "relax.nn.conv2d_transpose":  # stays plain: {} crashes it on a blocked input
            return {op: ["NCHW", "IOHW", "NCHW"]}
        if op != "relax.nn.conv2d":
            return {}
        if call.attrs.data_layout != "NCHW" or call.attrs.kernel_layout != "OIHW":
            return {}
        cin, cout = _dims(call.args[0])[1], _dims(call.args[1])[0]
        groups = int(call.attrs.groups)
        if groups == cin == cout:  # depthwise: blocked, between plain layouts if need be
            bo = channel_block(cout, limits.get(cout, lanes))
            if bo is None or bo == 1:
                return {op: ["NCHW", "OIHW", "NCHW"]}
            return {op: [f"NCHW{bo}c", f"OIHW{bo}o", f"NCHW{bo}c"]}
        bi, bo = block(cin), block(cout)
        plain = {op: ["NCHW", "OIHW", "NCHW"]}
        if bi is None or bo is None or bi == 1 or bo == 1:
            return plain
        if groups > 1 and ((cin // groups) % bi or (cout // groups) % bo):
            return plain
        return {op: [f"NCHW{bi}c", f"OIHW{bi}i{bo}o", f"NCHW{bo}c"]}

    return layout_cb


# ---- pass 1: ops ConvertLayout can carry --------------------------------------------------
def _rewrite_call(call):
    """``call`` in ops that have layout inference, or None to keep it."""
    dtype = call.ty.dtype if isinstance(call.ty, relax.TensorType) else None
    if not dtype:
        return None
    R = relax.op
    if call.op.name == "relax.clip":
        lo, hi = (float(a.value) for a in call.args[1:3])
        return R.minimum(R.maximum(call.args[0], relax.const(lo, dtype)), relax.const(hi, dtype))
    if call.op.name == "relax.nn.leakyrelu" and 0.0 <= float(call.attrs.alpha) <= 1.0:
        x = call.args[0]
        return R.maximum(x, R.multiply(x, relax.const(float(call.attrs.alpha), dtype)))
    return None


def _split_sections(call):
    """``split`` at indices cutting equal parts -> ``split`` into that many sections:
    ConvertLayout keeps channel indices in channels on a blocked axis (YOLOv8's halves
    came out as 2 chunks and 0), while a section count needs no change."""
    if call.op.name != "relax.split" or isinstance(call.attrs.indices_or_sections, tvm.tirx.IntImm | int):
        return None
    indices = [int(i) for i in call.attrs.indices_or_sections]
    size = _dims(call.args[0])[int(call.attrs.axis)]
    cuts = [0, *indices, size]
    parts = {b - a for a, b in zip(cuts, cuts[1:])}
    if len(parts) != 1:
        return None
    return relax.op.split(call.args[0], len(cuts) - 1, int(call.attrs.axis))


def _rewrite_for_layout(call):
    new = _rewrite_call(call)
    return new if new is not None else _split_sections(call)


def _call_mutator(name: str, rewrite):
    """A module pass applying ``rewrite(call) -> Expr | None`` to every call of every Relax
    function, bottom up."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Mutator(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            new = rewrite(call) if isinstance(call.op, tvm.ir.Op) else None
            return call if new is None else new

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        m = _Mutator(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                m.builder_.update_func(gv, m.visit_expr(func))
        return m.builder_.get()

    return _pass


def _pointwise_as_matmul(call, layout_cb):
    """A 1x1, stride-1, unpadded, ungrouped NCHW conv that gets no blocked layout (a channel
    count with no block: ShuffleNet's 58, DeepLab's 21 classes) as W[O, C] @ X[N, C, H*W]:
    the matmul rule vectorizes it over the pixels."""
    if call.op.name != "relax.nn.conv2d" or layout_cb(call).get(call.op.name, [""])[0] != "NCHW":
        return None
    a = call.attrs
    x, w = call.args
    if (
        a.out_layout != "NCHW"
        or int(a.groups) != 1
        or any(int(s) != 1 for s in a.strides)
        or any(int(p) for p in a.padding)
        or _dims(w)[2:] != [1, 1]
        or not isinstance(w, tvm.ir.expr.Constant)
    ):
        return None
    n, c, h, wd = _dims(x)
    o = _dims(w)[0]
    R = relax.op
    weight = relax.const(w.value.numpy().reshape(o, c))
    y = R.matmul(weight, R.reshape(x, [n, c, h * wd]))
    return R.reshape(y, [n, o, h, wd])


# ---- pass 3: layouts out of plan groups ----------------------------------------------------
def _callers(mod) -> dict[str, list]:
    """Function name -> the calls of it in the module's Relax functions."""
    calls: dict[str, list] = {}

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar):
            calls.setdefault(e.op.name_hint, []).append(e)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return calls


def _hoistable(func, calls: list) -> dict[int, object]:
    """Parameter index -> the one binding reading it, an op on it alone (a layout_transform, a
    transpose), for parameters every call passes a constant."""
    uses: dict[int, list] = {}
    bindings = [b for block in func.body.blocks for b in block.bindings]
    for b in bindings:
        seen = _vars(b.value)
        for i, p in enumerate(func.params):
            uses.setdefault(i, []).extend(b for v in seen if v.same_as(p))
    out = {}
    for i, users in uses.items():
        if len(users) > 1 and _same_layout_transforms(users):
            users = users[:1]  # ConvertLayout blocks a tensor once per reader: one is enough
        if len(users) != 1 or not calls:
            continue
        value = users[0].value
        if (
            isinstance(value, relax.Call)
            and isinstance(value.op, tvm.ir.Op)
            and value.args
            and value.args[0].same_as(func.params[i])
            and not any(isinstance(a, relax.Var) for a in value.args[1:])
            and (_is_layout_transform(value) or all(_constant(c.args[i]) for c in calls))
        ):
            out[i] = users[0]
    return out


def _readers(func, param) -> list:
    """The bindings of ``func`` that read ``param``."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    return [b for b in bindings if any(v.same_as(param) for v in _vars(b.value))]


def _same_layout_transforms(bindings) -> bool:
    first = bindings[0].value
    return all(
        _is_layout_transform(b.value)
        and b.value.args[0].same_as(first.args[0])
        and b.value.attrs.index_map.is_equivalent_to(first.attrs.index_map)
        for b in bindings
    )


def _primitive(func) -> bool:
    return isinstance(func, relax.Function) and bool(func.attrs) and "Primitive" in func.attrs


def _boundaries(mod, callers: dict) -> tuple[dict, dict]:
    """(function name -> {parameter index: binding to hoist}, function name -> result binding to
    sink): weights' ops always; a layout_transform of a data parameter or of a result only where
    every tensor crossing that boundary goes from a sunk result straight into a hoisted
    parameter that undoes it, so no transform is left in ``main`` (plan groups stay exactly the
    kernels), found by dropping what fails until nothing changes."""
    prim = {gv.name_hint: f for gv, f in mod.functions_items() if _primitive(f)}
    hoists = {n: _hoistable(f, callers.get(n, [])) for n, f in prim.items()}
    results = {n: _blocked_result(f) for n, f in prim.items() if callers.get(n)}
    results = {n: b for n, b in results.items() if b is not None}
    produced: list = []  # (var in a caller, the group whose call it is bound to)
    uses: list = []  # (var, (group, parameter index) or None for any other use)
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or _primitive(func):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                v = b.value
                if (
                    isinstance(v, relax.Call)
                    and isinstance(v.op, tvm.ir.GlobalVar)
                    and v.op.name_hint in prim
                ):
                    produced.append((b.var, v.op.name_hint))
                    uses += [
                        (a, (v.op.name_hint, i)) for i, a in enumerate(v.args) if isinstance(a, relax.Var)
                    ]
                else:
                    uses += [(a, None) for a in _vars(v)]
        uses += [(a, None) for a in _vars(func.body.body)]

    def producer(var):
        return next((n for v, n in produced if v.same_as(var)), None)

    def cancels(group, i, var) -> bool:
        b, src = hoists.get(group, {}).get(i), producer(var)
        return (
            b is not None
            and src in results
            and _is_layout_transform(b.value)
            and _undoes(b.value.attrs.index_map, b.var.ty, results[src].value)
        )

    changed = True
    while changed:
        changed = False
        for name in list(results):
            mine = [v for v, n in produced if n == name]
            if not all(u is not None and cancels(*u, v) for v, u in uses if any(v.same_as(m) for m in mine)):
                del results[name]
                changed = True
        for name, hoisted in hoists.items():
            for i in list(hoisted):
                calls = callers.get(name, [])
                if all(_constant(c.args[i]) for c in calls):
                    continue
                if not all(cancels(name, i, c.args[i]) for c in calls):
                    del hoisted[i]
                    changed = True
    return hoists, results


def _is_layout_transform(expr) -> bool:
    return (
        isinstance(expr, relax.Call)
        and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name == "relax.layout_transform"
        and expr.attrs.pad_value is None
    )


def _blocked_result(func):
    """The binding of a Primitive function's result when it is a layout_transform of a blocked
    (5-D) tensor back to a plain one, else None."""
    result = func.body.body
    for block in func.body.blocks:
        for b in block.bindings:
            if b.var.same_as(result) and _is_layout_transform(b.value):
                shape = getattr(b.value.args[0].ty, "shape", None)
                return b if shape is not None and len(shape) == 5 else None
    return None


def _undoes(index_map, result_ty, inner) -> bool:
    """Whether a layout_transform by ``index_map`` giving ``result_ty`` undoes layout_transform
    ``inner``: its result is ``inner``'s input."""
    if not _is_layout_transform(inner):
        return False
    import tvm_ffi

    x = inner.args[0]
    if not isinstance(x.ty, relax.TensorType) or not tvm_ffi.structural_equal(x.ty, result_ty):
        return False
    back = inner.attrs.index_map.inverse(list(x.ty.shape))
    return bool(back.is_equivalent_to(index_map))


def _apply(call, arg):
    """``call`` (an op on one tensor) on ``arg`` instead."""
    return relax.Call(call.op, [arg, *call.args[1:]], call.attrs, call.ty_args)


def _vars(expr) -> list:
    seen: list = []
    relax.analysis.post_order_visit(expr, lambda e: seen.append(e) if isinstance(e, relax.Var) else None)
    return seen


def _constant(expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant) and isinstance(getattr(expr, "ty", None), relax.TensorType)


UNARY_EPILOGUE = ("relax.maximum", "relax.minimum", "relax.nn.relu")


def _scalar_epilogue(expr) -> bool:
    """An elementwise op of one tensor and scalar constants (ReLU, ReLU6 as max/min): it
    commutes with any layout_transform."""
    return (
        isinstance(expr, relax.Call)
        and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name in UNARY_EPILOGUE
        and isinstance(expr.args[0], relax.Var)
        and all(_constant(a) and len(a.ty.shape) == 0 for a in expr.args[1:])
    )


def transforms_before_epilogues():
    """Module pass: in a Primitive function, ``layout_transform(op(x, scalars))`` where the op's
    result has no other reader becomes ``op(layout_transform(x), scalars)``, repeated: a group
    that starts with the previous conv's activation (MobileNetV2 at batch 8: ReLU6, then a 1x1
    conv) then blocks its parameter itself, which pass 3 can hoist."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Swap(PyExprMutator):
        def __init__(self, moved: list):  # epilogue bindings to emit after their transform
            super().__init__()
            self.moved = moved

        def visit_var_binding_(self, binding):
            if any(binding.same_as(m) for m, _ in self.moved):
                return  # emitted below, after the transform of its input
            lt = next((t for m, t in self.moved if t.same_as(binding)), None)
            if lt is None:
                return super().visit_var_binding_(binding)
            epilogue = next(m for m, t in self.moved if t.same_as(binding)).value
            blocked = self.builder_.emit(_apply(lt.value, self.visit_expr(epilogue.args[0])))
            value = relax.Call(epilogue.op, [blocked, *epilogue.args[1:]], epilogue.attrs, epilogue.ty_args)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))

    def moves(func) -> list:
        bindings = [b for block in func.body.blocks for b in block.bindings]
        out = []
        for b in bindings:
            if not _is_layout_transform(b.value) or not isinstance(b.value.args[0], relax.Var):
                continue
            if len(b.value.args[0].ty.shape) != 4 or len(b.var.ty.shape) != 5:
                continue  # only a transform into the blocked layout moves up, towards a parameter
            src = next((e for e in bindings if e.var.same_as(b.value.args[0])), None)
            if src is not None and _scalar_epilogue(src.value) and len(_readers(func, src.var)) == 1:
                out.append((src, b))
        return out

    @tvm.transform.module_pass(opt_level=0, name="TransformsBeforeEpilogues")
    def _pass(mod, _ctx):
        for _ in range(4):  # one op per round: ReLU6 is two
            changed = False
            for gv, func in list(mod.functions_items()):
                moved = moves(func) if _primitive(func) else []
                if moved:
                    new = _Swap(moved).visit_expr(func)
                    mod[gv] = relax.Function(new.params, new.body, func.ret_ty, func.is_pure, func.attrs)
                    changed = True
            if not changed:
                break
        return mod

    return _pass


def hoist_group_layouts():
    """Pass 3 (module doc)."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Body(PyExprMutator):
        def __init__(self, hoisted: dict, result):  # binding var -> the new parameter
            super().__init__()
            self.hoisted, self.result = hoisted, result

        def visit_var_binding_(self, binding):
            new = next((p for v, p in self.hoisted.items() if v.same_as(binding.var)), None)
            if new is not None:
                self.set_var_remap(binding.var, new)
            elif binding.same_as(self.result):  # return the blocked tensor itself
                value = self.visit_expr(binding.value.args[0])
                out = relax.Var(binding.var.name, value.ty)
                self.builder_.emit_normalized(relax.VarBinding(out, value))
                self.set_var_remap(binding.var, out)
            else:
                super().visit_var_binding_(binding)

    @mutator
    class _Calls(PyExprMutator):
        def __init__(self, mod, moved: dict):  # function name -> (new gvar, {index: binding})
            super().__init__(mod)
            self.moved = moved

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.GlobalVar) or call.op.name_hint not in self.moved:
                return call
            gv, hoisted, result = self.moved[call.op.name_hint]
            args = list(call.args)
            for i, b in hoisted.items():
                # a group's blocked result going into a group that blocks it again: that tensor
                inner = self.lookup_binding(args[i]) if isinstance(args[i], relax.Var) else None
                if _is_layout_transform(b.value) and _undoes(b.value.attrs.index_map, b.var.ty, inner):
                    args[i] = inner.args[0]
                else:
                    args[i] = _apply(b.value, args[i])
            out = relax.Call(gv, args)
            return out if result is None else _apply(result.value, out)

    @tvm.transform.module_pass(opt_level=0, name="HoistLayoutsOutOfGroups")
    def _pass(mod, _ctx):
        callers = _callers(mod)
        hoists, results = _boundaries(mod, callers)
        funcs, moved = {}, {}
        for gv, func in mod.functions_items():
            if not _primitive(func):
                continue
            hoisted, result = hoists.get(gv.name_hint, {}), results.get(gv.name_hint)
            if not hoisted and result is None:
                continue
            params = list(func.params)
            for i, b in hoisted.items():
                params[i] = relax.Var(params[i].name, b.var.ty)
            readers = {b.var: params[i] for i in hoisted for b in _readers(func, func.params[i])}
            body = _Body(readers, result).visit_expr(func.body)
            ret = func.ret_ty if result is None else result.value.args[0].ty
            funcs[gv] = relax.Function(params, body, ret, func.is_pure, func.attrs)
            new = tvm.ir.GlobalVar(gv.name_hint)
            tvm.get_global_func("relax.UpdateType")(new, funcs[gv].ty)  # callers type-check on it
            moved[gv.name_hint] = (new, hoisted, result)
        if not moved:
            return mod
        mod = tvm.IRModule(
            {
                (moved[gv.name_hint][0] if gv in funcs else gv): funcs.get(gv, f)
                for gv, f in mod.functions_items()
            },
            attrs=mod.attrs,
            global_infos=mod.global_infos,
        )
        calls = _Calls(mod, moved)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and gv.name_hint not in moved:
                calls.builder_.update_func(gv, calls.visit_expr(func))
        return calls.builder_.get()

    return _pass


# ---- pass 4: weights transformed at build time ---------------------------------------------
def _eval_index(expr, env: dict):
    """A TIR index expression (vars, constants, + - * // %) on numpy index grids."""
    tirx = tvm.tirx
    if isinstance(expr, tvm.ir.expr.Var):
        return env[expr.name]
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    ops = {
        tirx.Add: np.add,
        tirx.Sub: np.subtract,
        tirx.Mul: np.multiply,
        tirx.FloorDiv: np.floor_divide,
        tirx.FloorMod: np.mod,
    }
    for kind, fn in ops.items():
        if isinstance(expr, kind):
            return fn(_eval_index(expr.a, env), _eval_index(expr.b, env))
    raise NotImplementedError(type(expr).__name__)


def transform_constant(array: np.ndarray, index_map) -> np.ndarray | None:
    """``array`` moved by a layout_transform's ``index_map`` (no padding), or None when the
    map uses more than + - * // %."""
    grids = np.indices(array.shape, sparse=True)
    env = {str(v.name): g for v, g in zip(index_map.initial_indices, grids)}
    try:
        where = [_eval_index(e, env) for e in index_map.final_indices]
    except NotImplementedError:
        return None
    shape = [int(d) for d in index_map.map_shape(list(array.shape))]
    out = np.empty(shape, array.dtype)
    out[tuple(np.broadcast_arrays(*where))] = array
    return out


def _prepack(call):
    if call.op.name != "relax.layout_transform" or not isinstance(call.args[0], tvm.ir.expr.Constant):
        return None
    if call.attrs.pad_value is not None:
        return None
    array = call.args[0].value.numpy()
    index_map = call.attrs.index_map
    if int(np.prod(index_map.map_shape(list(array.shape)))) != array.size:  # padded
        return None
    out = transform_constant(array, index_map)
    return None if out is None else relax.const(out)


def layout_passes(target) -> list:
    """Passes 1-4 (module doc) for an llvm target."""
    require_tvm()
    from .schedules.common import cpu_facts

    lanes = cpu_facts(target).lanes

    @tvm.transform.module_pass(opt_level=0, name="FuserConvertLayout")
    def convert_layout(mod, ctx):
        cb = make_layout_cb(lanes, group_limits(mod, lanes))
        mod = _call_mutator("PlainPointwiseAsMatmul", lambda call: _pointwise_as_matmul(call, cb))(mod)
        return relax.transform.ConvertLayout({}, cb)(mod)

    return [
        _call_mutator("RewriteForLayout", _rewrite_for_layout),
        relax.transform.Normalize(),
        convert_layout,
        relax.transform.Normalize(),
        transforms_before_epilogues(),
        hoist_group_layouts(),
        _call_mutator("PrepackWeights", _prepack),
    ]


# ---- legalization ---------------------------------------------------------------------------
_BLOCKED = re.compile(r"^NCHW(\d+)c$")


def _padded_window(data, kh: int, kw: int, strides, padding, dilation):
    """(data padded in H and W, output height, output width) of a KHxKW window over a blocked
    NCHW[x]c ``data``."""
    _, _, ih, iw, _ = (int(d) for d in data.shape)
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if pt or pl or pb or pr:
        data = tvm.topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, pb, pr, 0], name="data_pad")
    return data, oh, ow


def conv2d_nchwc(data, kernel, strides, padding, dilation, groups=1):
    """data [N, Cc, H, W, cb], kernel [Oc, Cc/groups, KH, KW, cb, ob] -> [N, Oc, OH, OW, ob];
    output chunk oc reads the input chunks of its group."""
    te = tvm.te
    n, icb = int(data.shape[0]), int(data.shape[4])
    occ, icc_g, kh, kw, _, ocb = (int(d) for d in kernel.shape)
    oc_per_group = occ // groups
    (sh, sw), (dh, dw) = strides, dilation
    data, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation)
    rco = te.reduce_axis((0, icc_g), "rco")
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    rci = te.reduce_axis((0, icb), "rci")

    def chunk(oc):
        return (oc // oc_per_group) * icc_g + rco if groups > 1 else rco

    return te.compute(
        (n, occ, oh, ow, ocb),
        lambda b, oc, y, x, ob: te.sum(
            data[b, chunk(oc), y * sh + rkh * dh, x * sw + rkw * dw, rci]
            * kernel[oc, rco, rkh, rkw, rci, ob],
            axis=[rco, rkh, rkw, rci],
        ),
        name="conv2d_nchwc",
    )


def depthwise_nchwc(data, kernel, strides, padding, dilation):
    """data [N, Cc, H, W, cb], kernel [Cc, 1, KH, KW, cb] -> [N, Cc, OH, OW, cb]."""
    te = tvm.te
    n, cc, _, _, cb = (int(d) for d in data.shape)
    kh, kw = (int(d) for d in kernel.shape[2:4])
    (sh, sw), (dh, dw) = strides, dilation
    data, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation)
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    return te.compute(
        (n, cc, oh, ow, cb),
        lambda b, c, y, x, k: te.sum(
            data[b, c, y * sh + rkh * dh, x * sw + rkw * dw, k] * kernel[c, 0, rkh, rkw, k], axis=[rkh, rkw]
        ),
        name="depthwise_nchwc",
    )


def _legalize_conv2d(bb, call):
    a = call.attrs
    if not _BLOCKED.match(a.data_layout) or not _BLOCKED.match(a.out_layout):
        from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

        return _nn_conv2d(bb, call)
    args = {
        "strides": [int(s) for s in a.strides],
        "padding": [int(p) for p in a.padding],
        "dilation": [int(d) for d in a.dilation],
    }
    x, w = call.args
    if len(w.ty.shape) == 6:
        return bb.call_te(conv2d_nchwc, x, w, groups=int(a.groups), primfunc_name_hint="conv2d_nchwc", **args)
    return bb.call_te(depthwise_nchwc, x, w, primfunc_name_hint="dwconv_nchwc", **args)


def _fast(name: str, fn):
    def legalize(bb, call):
        return bb.call_te(fn, call.args[0], primfunc_name_hint=name)

    return legalize


def fast_math() -> dict:
    """LegalizeOps entries: softmax, exp, sigmoid, tanh, erf and GELU through topi's
    fast_softmax, fast_exp, fast_tanh and fast_erf (relative error ~1e-7 on float32)."""
    te, topi = tvm.te, tvm.topi

    def sigmoid(x):
        one = tvm.tirx.const(1.0, x.dtype)
        e = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="neg"))
        return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="sigmoid")

    def gelu(x):
        half, root = tvm.tirx.const(0.5, x.dtype), tvm.tirx.const(0.7071067811865476, x.dtype)
        erf = topi.fast_erf(te.compute(x.shape, lambda *i: x(*i) * root, name="scaled"))
        return te.compute(
            x.shape, lambda *i: half * x(*i) * (tvm.tirx.const(1.0, x.dtype) + erf(*i)), name="gelu"
        )

    def softmax(bb, call):
        return bb.call_te(
            topi.nn.fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax"
        )

    return {
        "relax.nn.softmax": softmax,
        "relax.exp": _fast("fast_exp", topi.fast_exp),
        "relax.tanh": _fast("fast_tanh", topi.fast_tanh),
        "relax.erf": _fast("fast_erf", topi.fast_erf),
        "relax.sigmoid": _fast("sigmoid", sigmoid),
        "relax.nn.gelu": _fast("gelu", gelu),
    }


def legalize_map() -> dict:
    """LegalizeOps' customize_legalize_map for CPU builds with fuser's schedules."""
    return {"relax.nn.conv2d": _legalize_conv2d, **fast_math()}
