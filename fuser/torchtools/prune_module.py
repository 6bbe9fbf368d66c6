"""Structured pruning into the user's own module: the same object, its layers shrunk in place.

``shrink(module, example_inputs, graph, pruned, report, recapture)`` takes the graph captured
from ``module`` (``fuser.frontends.aten``: nodes named by module path, constants traced to
their parameters in ``Node.meta['weights']``) and the same graph after ``prune_graph``
(``pruned``, ``report``), and makes ``module`` compute the pruned graph. Rules:

  - Every constant the pruning sliced (a ``Member`` of the analysis) must be a parameter or
    buffer of the module (or a view of one: Linear weights held transposed, a broadcast
    class token), or one the capture made up (BatchNorm's default scale); a constant that
    forward() builds itself and that spans pruned channels refuses, naming the module.
  - Each such parameter or buffer takes the pruned graph's values, mapped back through the
    axes recorded at capture. Its ``.data`` is replaced, so the Parameter objects, their
    names and the ``state_dict`` keys stay; gradients are dropped (their shapes are gone).
    An optimizer must be created after pruning.
  - ``obs`` also changes constants it does not slice: it compensates every layer that reads
    pruned channels (new weights and bias, also where that layer's own outputs all stay).
    Every parameter the pruned graph holds with other values than the captured ones takes
    them (a parameter used by several layers must get the same values from all; one held
    only as a broadcast view, or a constant forward() builds, refuses by name). A bias the
    compensation adds to a torch Conv*/ConvTranspose*/Linear built with ``bias=False`` becomes
    a new ``nn.Parameter`` ``bias`` of that layer (a new ``state_dict`` key); a layer of
    another kind refuses, naming it (use another criterion, or give the layer a bias).
  - Layer attributes follow the new shapes: Conv*/ConvTranspose* in/out_channels and groups
    (the pruned graph's group: depthwise convs keep C_in = groups), Linear in/out_features,
    BatchNorm*/InstanceNorm* num_features, LayerNorm normalized_shape, GroupNorm num_channels,
    PReLU num_parameters, Embedding embedding_dim, MultiheadAttention embed_dim, kdim, vdim and
    head_dim (the head count stays).
  - Attention that scales by 1/sqrt(head size) without a ``scale=`` (torch derives it; the
    graph holds the number): nn.MultiheadAttention's query projection is multiplied by
    sqrt(new / old head size), so the logits are the pruned graph's; any other such call
    refuses, naming the module.
  - A module whose forward() builds a shape from an int attribute (ViT attention's
    ``num_heads`` / ``head_dim``) gets that attribute set to the pruned number when exactly
    one int attribute of the module held the number the pruned shape changed.
  - Check: the module runs once on ``example_inputs`` and is captured again; every node of
    the pruned graph must come back with the same op and output shapes (nodes match by name:
    module paths). The first one that does not, or the module whose forward() raised, names
    the layer that holds a fixed channel count. Last, its outputs must match the pruned
    graph's (``fuser.backends.torch``) to 1e-4 relative. On any failure the module is restored
    to its state before pruning and FuserError is raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fuser.ir import FuserError, Graph, Node, source_line


@dataclass
class InPlaceReport:
    """What ``fuser.prune_module`` changed in the module."""

    prune: object  # the graph path's PruneReport (without its analysis)
    tensors: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, old shape, new shape
    attributes: list[tuple[str, str, object, object]] = field(default_factory=list)  # module, attr, old, new

    def __str__(self) -> str:
        lines = [
            str(self.prune),
            f"  {len(self.tensors)} tensors and {len(self.attributes)} layer attributes shrunk",
        ]
        lines += [f"  {m or '<model>'}.{a}: {old} -> {new}" for m, a, old, new in self.attributes[:20]]
        if len(self.attributes) > 20:
            lines.append(f"  ... {len(self.attributes) - 20} more")
        return "\n".join(lines)


class _Undo:
    """Everything changed so far, to put back when the check fails."""

    def __init__(self):
        self.tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.attrs: list[tuple[object, str, object]] = []

    def set_data(self, t: torch.Tensor, data: torch.Tensor) -> None:
        self.tensors.append((t, t.data))
        t.data = data
        if isinstance(t, nn.Parameter):
            t.grad = None

    def set_attr(self, obj, name: str, value) -> None:
        self.attrs.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        for obj, name, value in reversed(self.attrs):
            setattr(obj, name, value)
        for t, data in reversed(self.tensors):
            t.data = data


def _where(node: Node) -> str:
    module = node.meta.get("module") or "<model>"
    src = source_line(node)
    return f"module '{module}' ({node.meta.get('module_type', '?')}{', ' + src if src else ''})"


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner), attr)


def _new_tensors(report) -> tuple[dict[str, np.ndarray], dict[str, dict[int, np.ndarray]]]:
    """The pruned values of every parameter/buffer the pruning sliced: (name -> array) where the
    graph holds the tensor itself or a transpose of it, else (name -> {axis: kept positions})
    where it holds a broadcast view of it."""
    full: dict[str, np.ndarray] = {}
    positions: dict[str, dict[int, np.ndarray]] = {}
    kept = report.kept_raw
    for m in report.analysis.members:
        if kept[m.ids].all():
            continue
        node = m.node
        origin = node.meta.get("weights", {}).get(m.index)
        if origin is None:
            if m.index in node.meta.get("literals", ()):
                continue  # a constant the capture made up (BatchNorm's default scale...)
            raise FuserError(
                f"prune in place: {_where(node)} holds a constant tensor of fixed size that spans "
                f"pruned channels (input {m.index} of {node.op} '{node.name}'); make it a parameter "
                "or buffer, or leave the layer out with ignored=[...]"
            )
        name, axes = origin
        if _whole(axes):
            full.setdefault(name, np.transpose(node.inputs[m.index].const, np.argsort(axes)))
        elif axes[m.axis] is not None:
            positions.setdefault(name, {})[axes[m.axis]] = report.kept_positions(m)
    return full, positions


def _whole(axes) -> bool:
    """Whether a constant recorded with ``axes`` is its parameter itself (or a transpose)."""
    return None not in axes and sorted(axes) == list(range(len(axes)))


def _compensated(pruned: Graph) -> tuple[dict[str, np.ndarray], list[tuple[Node, np.ndarray]]]:
    """What ``obs`` compensation changed beyond slicing (``Node.meta['compensated']``): the new
    values of the parameters it rewrote (name -> array, the parameter's layout), and the bias
    inputs it created where the layer had none, as (node, values)."""
    uses: dict[str, list[tuple[Node, int, np.ndarray]]] = {}
    for node in pruned.nodes:
        for index, (name, axes) in node.meta.get("weights", {}).items():
            v = node.input(index)
            if _whole(axes) and v is not None and v.is_const:
                uses.setdefault(name, []).append((node, index, np.transpose(v.const, np.argsort(axes))))
    values: dict[str, np.ndarray] = {}
    created: list[tuple[Node, np.ndarray]] = []
    for node in pruned.nodes:
        for index in node.meta.get("compensated", ()):
            origin = node.meta.get("weights", {}).get(index)
            if origin is None:
                if index == 2 and node.op in ("Conv", "ConvTranspose", "Gemm"):
                    created.append((node, node.inputs[index].const))
                    continue
                raise FuserError(
                    f"prune in place: criterion 'obs' compensates input {index} of {node.op} "
                    f"'{node.name}' in {_where(node)}, a constant forward() builds, not a parameter: "
                    "the module cannot take the compensated values; make it a parameter, use another "
                    "criterion, or leave the layers feeding it out with ignored=[...]"
                )
            name, axes = origin
            if not _whole(axes):
                raise FuserError(
                    f"prune in place: criterion 'obs' compensates input {index} of {node.op} "
                    f"'{node.name}' in {_where(node)}, a broadcast view of parameter '{name}': the "
                    "parameter cannot take the compensated values; use another criterion, or leave "
                    "the layers feeding it out with ignored=[...]"
                )
            first, first_index, value = uses[name][0]
            for other, other_index, v in uses[name][1:]:
                if v.shape != value.shape or not np.array_equal(v, value):
                    raise FuserError(
                        f"prune in place: parameter '{name}' is used by {first.op} '{first.name}' "
                        f"(input {first_index}) and {other.op} '{other.name}' (input {other_index}), "
                        "and criterion 'obs' compensates them differently: one parameter cannot hold "
                        "both; use another criterion, or leave the layers feeding them out with "
                        "ignored=[...]"
                    )
            values[name] = value
    return values, created


def _add_biases(module: nn.Module, created: list, undo: _Undo, changes: list) -> None:
    """Give each torch Conv*/Linear the bias ``obs`` compensation created for it."""
    from torch.nn.modules.conv import _ConvNd

    for node, value in created:
        weight = node.meta.get("weights", {}).get(1)
        path = weight[0].rpartition(".")[0] if weight is not None else None
        layer = module.get_submodule(path) if path is not None else None
        if (
            not isinstance(layer, (_ConvNd, nn.Linear))
            or not type(layer).__module__.startswith("torch.nn.")
            or getattr(layer, "bias", None) is not None
        ):
            raise FuserError(
                f"prune in place: criterion 'obs' adds a bias to {node.op} '{node.name}' in "
                f"{_where(node)} to compensate the pruned channels it reads, and the module has no "
                "bias parameter to hold it (only a torch Conv*/Linear layer gets one added); build "
                "the layer with a bias, use another criterion, or leave the layers feeding it out "
                "with ignored=[...]"
            )
        b = np.asarray(value, dtype=np.float64).reshape(-1)
        if node.op == "Gemm":
            b = b * node.attr("beta", 1.0)
        w = layer.weight
        bias = nn.Parameter(torch.from_numpy(b).to(dtype=w.dtype, device=w.device))
        changes.append((f"{path}.bias" if path else "bias", (), tuple(bias.shape)))
        undo.set_attr(layer, "bias", bias)


def _set_tensors(module: nn.Module, pruned: Graph, report, undo: _Undo, changes: list) -> None:
    full, positions = _new_tensors(report)
    compensated, created = _compensated(pruned)
    full.update(compensated)
    for name in [*full, *(n for n in positions if n not in full)]:
        t = _tensor(module, name)
        if name in full:
            data = torch.from_numpy(np.ascontiguousarray(full[name])).to(dtype=t.dtype, device=t.device)
        else:
            data = t.data
            for axis, idx in positions[name].items():
                data = data.index_select(axis, torch.as_tensor(idx, dtype=torch.long, device=data.device))
            data = data.contiguous()
        if tuple(data.shape) != tuple(t.shape):
            changes.append((name, tuple(t.shape), tuple(data.shape)))
        undo.set_data(t, data)
    _add_biases(module, created, undo, changes)


# ---- layer attributes ------------------------------------------------------------------------
def _conv_groups(pruned: Graph) -> dict[str, int]:
    """Conv weight name -> the pruned graph's group count."""
    groups = {}
    for node in pruned.nodes:
        if node.op in ("Conv", "ConvTranspose") and 1 in node.meta.get("weights", {}):
            groups[node.meta["weights"][1][0]] = int(node.attr("group", 1))
    return groups


def _first_input_shapes(pruned: Graph) -> dict[str, tuple]:
    """Module path -> input shape of the first node of its call (for layers without weights)."""
    shapes: dict[str, tuple] = {}
    for node in pruned.nodes:
        path = node.meta.get("module")
        if path and path not in shapes and node.inputs and node.inputs[0] is not None:
            shapes[path] = tuple(node.inputs[0].shape)
    return shapes


def _layer_attributes(module: nn.Module, path: str, groups: dict, shapes: dict) -> dict[str, object]:
    """The attributes layer ``module`` (at ``path``) must hold for its current tensors."""
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd

    w = getattr(module, "weight", None)
    if isinstance(module, _ConvNd):
        g = groups.get(f"{path}.weight" if path else "weight", module.groups)
        if module.transposed:
            return {"in_channels": w.shape[0], "out_channels": w.shape[1] * g, "groups": g}
        return {"in_channels": w.shape[1] * g, "out_channels": w.shape[0], "groups": g}
    if isinstance(module, nn.Linear):
        return {"in_features": w.shape[1], "out_features": w.shape[0]}
    if isinstance(module, _NormBase):  # BatchNorm*, InstanceNorm*
        t = w if w is not None else getattr(module, "running_mean", None)
        n = t.shape[0] if t is not None else shapes.get(path, (0, module.num_features))[1]
        return {"num_features": n}
    if isinstance(module, nn.LayerNorm):
        if w is not None:
            return {"normalized_shape": tuple(w.shape)}
        k = len(module.normalized_shape)
        return {"normalized_shape": tuple(shapes[path][-k:])} if path in shapes else {}
    if isinstance(module, nn.GroupNorm):
        return {
            "num_channels": w.shape[0] if w is not None else shapes.get(path, (0, module.num_channels))[1]
        }
    if isinstance(module, nn.PReLU):
        return {"num_parameters": w.numel()}
    if isinstance(module, nn.Embedding):
        return {"embedding_dim": w.shape[1]}
    if isinstance(module, nn.MultiheadAttention):
        inner = (
            module.in_proj_weight.shape[0] // 3
            if module.in_proj_weight is not None
            else module.q_proj_weight.shape[0]
        )
        embed = module.out_proj.weight.shape[0]
        kdim = module.k_proj_weight.shape[1] if module.k_proj_weight is not None else embed
        vdim = module.v_proj_weight.shape[1] if module.v_proj_weight is not None else embed
        if inner != embed:
            return {"embed_dim": -1}  # not representable; the check names it
        return {"embed_dim": embed, "kdim": kdim, "vdim": vdim, "head_dim": inner // module.num_heads}
    return {}


def _attention_scales(root: nn.Module, pruned: Graph, undo: _Undo) -> None:
    """Keep the logits of attention whose 1/sqrt(head size) torch derives from a pruned size."""
    done = set()
    for node in pruned.nodes:
        old = node.meta.get("head_size_scale")
        scores = node.inputs[0].producer if old else None
        if scores is None or scores.inputs[0].shape[-1] == old:
            continue
        new = scores.inputs[0].shape[-1]
        path = node.meta.get("module", "")
        m = root.get_submodule(path)
        if not isinstance(m, nn.MultiheadAttention):
            raise FuserError(
                f"prune in place: {_where(node)} calls scaled_dot_product_attention without scale=: "
                f"torch would scale by 1/sqrt({new}) after pruning where the pruned network keeps "
                f"1/sqrt({old}); pass scale= explicitly, or leave the layer out with ignored=[...]"
            )
        if path in done:
            continue
        done.add(path)
        factor = (new / old) ** 0.5
        q = m.in_proj_weight if m.in_proj_weight is not None else m.q_proj_weight
        inner = q.shape[0] // 3 if m.in_proj_weight is not None else q.shape[0]
        for t in (q, m.in_proj_bias):
            if t is not None:
                data = t.data.clone()
                data[:inner] *= factor
                undo.set_data(t, data)


def _set_layer_attributes(root: nn.Module, pruned: Graph, undo: _Undo, changes: list) -> None:
    groups, shapes = _conv_groups(pruned), _first_input_shapes(pruned)
    for path, m in root.named_modules():
        for attr, value in _layer_attributes(m, path, groups, shapes).items():
            value = int(value) if isinstance(value, (int, np.integer, torch.SymInt)) else value
            if getattr(m, attr) != value:
                if value == -1:
                    raise FuserError(
                        f"prune in place: module '{path}' (MultiheadAttention) cannot hold the pruned "
                        "network: its inner dimension must equal its embedding dimension; leave it out "
                        "with ignored=[...]"
                    )
                changes.append((path, attr, getattr(m, attr), value))
                undo.set_attr(m, attr, value)


# ---- checks ----------------------------------------------------------------------------------
def _failing_module(error: BaseException, root: nn.Module) -> tuple[str | None, str]:
    """The innermost module of ``root`` whose forward() is on the traceback of ``error``, and
    the ``file:line`` in that forward."""
    names = {id(m): name for name, m in root.named_modules()}
    found, line = None, ""
    tb = error.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in names:
            found, line = names[id(obj)], f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found, line


def _runtime_refusal(error: BaseException, root: nn.Module, pruned: Graph) -> FuserError:
    """Name the layer behind a forward() that fails on the pruned shapes: a user module where
    its own code fails; where a torch layer fails on its input, the op that fed it."""
    where, line = _failing_module(error, root)
    first = (str(error).strip().splitlines() or [""])[0][:200]
    failure = f"{type(error).__name__}: {first}"
    if where is not None and type(root.get_submodule(where)).__module__.startswith("torch.nn."):
        node = next((n for n in pruned.nodes if n.meta.get("module") == where), None)
        feeder = node.inputs[0].producer if node is not None and node.inputs[0] is not None else None
        if feeder is not None:
            return FuserError(
                f"prune in place: {_where(feeder)} holds a fixed channel count: it does not give "
                f"layer '{where}' the pruned {list(node.inputs[0].shape)} ({failure}); compute the "
                "count from the input's shape, or leave the layers it feeds out with ignored=[...]"
            )
    return FuserError(
        f"prune in place: module '{where or '<model>'}' ({line}) fails on the pruned shapes ({failure}); "
        "its forward() holds a fixed channel count: compute it from the input's shape, or leave the "
        "layer out with ignored=[...]"
    )


def _first_mismatch(pruned: Graph, again: Graph) -> tuple[Node, Node | None] | None:
    by_name = {n.name: n for n in again.nodes}
    for node in pruned.nodes:
        other = by_name.get(node.name)
        if (
            other is None
            or other.op != node.op
            or [v.shape for v in other.outputs] != [v.shape for v in node.outputs]
        ):
            return node, other
    return None


def _shape_numbers(node: Node) -> list[int]:
    """The ints of a node's shape-like constant inputs (Reshape's shape, Split's sizes...)."""
    out = []
    for v in node.inputs[1:]:
        if v is not None and v.is_const and v.const.dtype.kind == "i":
            out += [int(x) for x in np.asarray(v.const).reshape(-1)]
    return out


def _fix_int_attribute(root: nn.Module, before: Graph, node: Node, undo: _Undo, changes: list) -> bool:
    """Set the one int attribute of the node's module that held a number the pruning changed."""
    path = node.meta.get("module")
    try:
        old_node = before.node_by_name(node.name)
        owner = root.get_submodule(path) if path is not None else None
    except (KeyError, AttributeError):
        return False
    old, new = _shape_numbers(old_node), _shape_numbers(node)
    if owner is None or len(old) != len(new):
        return False
    fixed = False
    for a, b in dict.fromkeys((a, b) for a, b in zip(old, new) if a != b):
        attrs = [k for k, v in vars(owner).items() if type(v) is int and v == a and not k.startswith("_")]
        if len(attrs) == 1:
            changes.append((path, attrs[0], a, b))
            undo.set_attr(owner, attrs[0], b)
            fixed = True
    return fixed


def _describe_mismatch(node: Node, other: Node | None) -> str:
    want = ", ".join(str(list(v.shape)) for v in node.outputs)
    if other is None:
        return f"its {node.op} '{node.name}' does not come back when the pruned module is captured again"
    got = ", ".join(str(list(v.shape)) for v in other.outputs)
    return f"its {node.op} '{node.name}' makes {got} where the pruned network needs {want}"


def _check_outputs(module: nn.Module, example_inputs: tuple, pruned: Graph, tol: float = 1e-4) -> None:
    """The pruned module's outputs against the pruned graph's, on the example inputs."""
    from fuser.backends.torch import to_torch

    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            got = torch.utils._pytree.tree_leaves(module(*example_inputs))
            want = torch.utils._pytree.tree_leaves(to_torch(pruned)(*example_inputs))
    finally:
        for m, t in flags.items():
            m.training = t
    for g, w in zip(got, want):
        err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-30))
        if err > tol:
            raise FuserError(
                f"prune in place: the pruned module's output differs from the pruned network's by "
                f"{err:.2e} (relative) although every layer has the pruned shapes: its forward() "
                "computes a number from a pruned size (a scale, a count) that the pruned network "
                "holds fixed; leave that layer out with ignored=[...]"
            )


def shrink(
    module: nn.Module,
    example_inputs: tuple,
    graph: Graph,
    pruned: Graph,
    report,
    recapture: Callable[[], Graph],
) -> InPlaceReport:
    """Make ``module`` compute ``pruned`` (see the module docstring); returns what changed."""
    undo = _Undo()
    result = InPlaceReport(dataclasses.replace(report, analysis=None, kept_raw=None))
    try:
        with torch.no_grad():
            _set_tensors(module, pruned, report, undo, result.tensors)
            _set_layer_attributes(module, pruned, undo, result.attributes)
            _attention_scales(module, pruned, undo)
        for _ in range(16):  # each round may fix one more int attribute
            try:
                flags = {m: m.training for m in module.modules()}
                module.eval()
                with torch.no_grad():
                    module(*example_inputs)
                again = recapture()
            except FuserError:
                raise
            except Exception as e:
                where, _ = _failing_module(e, module)
                if any(
                    _fix_int_attribute(module, graph, n, undo, result.attributes)
                    for n in pruned.nodes
                    if n.meta.get("module") == where
                ):
                    continue
                raise _runtime_refusal(e, module, pruned) from None
            finally:
                for m, t in flags.items():
                    m.training = t
            mismatch = _first_mismatch(pruned, again)
            if mismatch is None:
                _check_outputs(module, example_inputs, pruned)
                return result
            node, other = mismatch
            if not _fix_int_attribute(module, graph, node, undo, result.attributes):
                raise FuserError(
                    f"prune in place: {_where(node)} holds a fixed channel count: "
                    f"{_describe_mismatch(node, other)}; compute it from the input's shape, or leave "
                    "the layer out with ignored=[...]"
                )
        raise FuserError("prune in place: the pruned module does not settle on the pruned shapes")
    except BaseException:
        undo.restore()
        raise
