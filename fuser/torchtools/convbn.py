"""ConvBN blocks in Tune mode (You et al., "Efficient ConvBN Blocks for Transfer Learning
and Beyond", ICLR 2024, arXiv 2305.11624).

A conv followed by a BatchNorm whose running statistics are frozen (BN in eval mode, all
parameters still trainable, the usual transfer-learning setup) computes

    s  = gamma * rsqrt(running_var + eps)            per output channel
    W' = W * s                                       (scales each output channel of W)
    b' = beta + s * (b - running_mean)
    bn(conv(x, W, b)) == conv(x, W', b')

Tune mode evaluates the right-hand side on every forward: the small per-channel ops are
differentiable, so gradients still reach W, b, gamma and beta, but the conv output is
never normalised as a separate tensor, so autograd does not keep the BN input alive
(Eval mode's extra activation memory) and the elementwise BN pass disappears. Missing
pieces default to b = 0 (conv without bias), gamma = 1 and beta = 0 (affine=False).
Autograd keeps W' (one weight-sized tensor per conv) instead, so the saving needs
activations larger than the weights (true for training batches, not for tiny inputs).
The output channels of a ConvTranspose weight (C_in, C_out/groups, *k) are dim 1 within
each group of rows. torch's Inductor has the same rewrite as an opt-in pass
(``torch._inductor.config.efficient_conv_bn_eval_fx_passes``).

Rule. ``convbn(model, mode)`` captures the model with ``torch.fx.symbolic_trace`` (a
``GraphModule`` with a copy of its graph, an ``ExportedProgram`` through ``.module()``) and
combines every conv node (exactly Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear, called with
its input positionally or as ``input=``) whose ONLY user is a BatchNorm with running
statistics and matching channel count: a BatchNorm1d/2d/3d module (called either way) or
``F.batch_norm(..., training=False)`` (positional or keyword arguments; its statistics,
weight and bias are read at run time, so they may be any tensors). Not combined (listed in
the summary with the reason): a conv output that has another user, a BN without running
statistics (track_running_stats=False, or ``F.batch_norm`` without them or with
``training=True``), a BN fed by another BN (``bn2(bn1(conv(x)))`` combines conv+bn1 only), a
BN whose input is not a conv module. A conv module that is also called elsewhere is
combined at this call site only.

Modes:
  * "tune": each pair becomes one ``tune_conv_bn(x, conv, bn)`` node that reads the
    ORIGINAL modules through get_attr nodes, so parameters, state_dict keys, .train()/
    .eval()/.to(), deepcopy and pickling are those of the traced model. The choice is
    made at run time: with ``bn.training`` False and running stats present it runs the
    single folded conv, otherwise plain ``bn(conv(x))``, so a BN switched back to
    .train() trains (and updates its statistics) as usual. Running statistics and
    num_batches_tracked are never written.
  * "deploy": folds once (no gradient to BN any more) into a copy: each conv gets the
    folded weights (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and its BN becomes
    ``nn.Identity``. The input model is not modified. Like torch's own fusion, a
    Linear+BatchNorm1d pair is assumed to see (N, C) input: a traced graph has no shapes,
    and tune mode's run-time check is gone (a (N, L, C) input with L == out_features
    would be folded wrongly).
  * "eval": returns the module unchanged (frozen-BN baseline).

In ``torch.export`` graphs (aten ops, training flag fixed at export time) the pattern
is ``aten.conv*/linear -> aten.batch_norm(training=False)``; tune mode inserts the fold
ops in front of the conv and deploy mode swaps in folded constant weights.

Summary. The returned module carries ``fuser_convbn_summary`` (``ConvBNSummary``: the pairs
combined, the pairs left and why, and, once shapes are known, the bytes Tune mode saves
for backward at a given batch; see ``fuser.torchtools.convbn_summary``) and
``fuser_convbn_pairs`` (the number combined), also logged at INFO level. Shapes come from
``example_inputs`` (a fake-tensor shape propagation, no compute) or, for an
ExportedProgram, from its metadata. Tune mode with shapes known warns
(``TuneModeWarning``) when it would not save memory at that batch: each pair saves its conv
output but keeps the folded weight W' instead, so small batches can come out behind.
A model the tracer cannot capture raises ``fuser.ir.FuserError``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.conv import _ConvTransposeNd
from torch.nn.utils.fusion import fuse_conv_bn_weights

from fuser.ir import FuserError

from .convbn_summary import ConvBNSummary, LeftPair, PairInfo, TuneModeWarning, batch_of, propagate_shapes

__all__ = [
    "ConvBN",
    "ConvBNSummary",
    "MODES",
    "TuneModeWarning",
    "convbn",
    "fold",
    "tune_conv_bn",
    "tune_conv_fbn",
    "tune_mode",
]

log = logging.getLogger(__name__)

MODES = ("tune", "deploy", "eval")
_CONVS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FBN_SIGNATURE = inspect.signature(F.batch_norm)
_aten = torch.ops.aten
_ATEN_CONVS = {
    _aten.conv1d: False,
    _aten.conv2d: False,
    _aten.conv3d: False,
    _aten.linear: False,
    _aten.conv_transpose1d: True,
    _aten.conv_transpose2d: True,
    _aten.conv_transpose3d: True,
}  # overload packet -> transposed


def fold(weight, bias, mean, var, eps, gamma=None, beta=None, transposed=False, groups=1):
    """(W', b') with W' = W*s per output channel, b' = beta + s*(b - mean), s = gamma*rsqrt(var+eps)."""
    s = torch.rsqrt(var + eps)
    if gamma is not None:
        s = gamma * s
    b = s * (bias - mean if bias is not None else -mean)
    if beta is not None:
        b = b + beta
    if not transposed:  # Conv (C_out, C_in/groups, *k), Linear (out, in)
        w = weight * s.reshape(-1, *[1] * (weight.dim() - 1))
    else:  # ConvTranspose (C_in, C_out/groups, *k): channel g*C_out/groups + j is group g, column j
        c_in, c_out_g, *k = weight.shape
        w = weight.reshape(groups, c_in // groups, c_out_g, *k) * s.reshape(groups, 1, c_out_g, *[1] * len(k))
        w = w.reshape(weight.shape)
    return w.to(weight.dtype), b.to(weight.dtype)


def _is_transposed(conv: nn.Module) -> bool:
    return isinstance(conv, _ConvTransposeNd)


def tune_conv_bn(x, conv, bn, *args, **kwargs):
    """``bn(conv(x, *args, **kwargs))``; one conv with folded weights while ``bn`` is frozen."""
    if isinstance(x, fx.Proxy):  # traced again (fx re-capture, unpickling): stay one node
        return x.tracer.create_proxy("call_function", tune_conv_bn, (x, conv, bn, *args), kwargs)
    frozen = (
        not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
    )
    if not frozen or x.dim() != conv.weight.dim():  # Linear+BN1d folds only for (N, C) input
        return bn(conv(x, *args, **kwargs))
    return _folded_call(x, conv, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias, args, kwargs)


def _folded_call(x, conv, mean, var, eps, gamma, beta, args, kwargs):
    transposed = _is_transposed(conv)
    w, b = fold(conv.weight, conv.bias, mean, var, eps, gamma, beta, transposed, getattr(conv, "groups", 1))
    if isinstance(conv, nn.Linear):
        return F.linear(x, w, b)
    if not transposed and not args and not kwargs:  # fast path, same as Conv*d.forward
        return conv._conv_forward(x, w, b)
    return functional_call(conv, {"weight": w, "bias": b}, (x, *args), kwargs)


def tune_conv_fbn(x, conv, running_mean, running_var, weight, bias, eps, *args, **kwargs):
    """``F.batch_norm(conv(x, ...), running_mean, running_var, weight, bias, False, eps=eps)``
    as one conv with folded weights (the statistics are frozen: training=False)."""
    if isinstance(x, fx.Proxy):  # traced again: stay one node
        stats = (running_mean, running_var, weight, bias, eps)
        return x.tracer.create_proxy("call_function", tune_conv_fbn, (x, conv, *stats, *args), kwargs)
    if x.dim() != conv.weight.dim():  # Linear+BN1d folds only for (N, C) input
        y = conv(x, *args, **kwargs)
        return F.batch_norm(y, running_mean, running_var, weight, bias, False, 0.0, eps)
    return _folded_call(x, conv, running_mean, running_var, eps, weight, bias, args, kwargs)


class ConvBN(nn.Module):
    """Eager conv+bn block in tune mode: ``ConvBN(conv, bn)(x) == bn(conv(x))``, sharing both modules.

    For hand-written models; ``convbn()`` rewrites traced graphs with ``tune_conv_bn`` instead,
    which keeps the modules at their original state_dict names.
    """

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x, *args, **kwargs):
        return tune_conv_bn(x, self.conv, self.bn, *args, **kwargs)


def _capture(module) -> fx.GraphModule:
    if isinstance(module, torch.export.ExportedProgram):
        return module.module()
    if isinstance(module, fx.GraphModule):  # a copy of the graph: the caller's stays as it was
        with warnings.catch_warnings():  # deep-copying export's pytree specs warns
            warnings.simplefilter("ignore", FutureWarning)
            graph = copy.deepcopy(module.graph)
        return fx.GraphModule(module, graph, module.__class__.__name__)
    try:
        return fx.symbolic_trace(module)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FuserError(
            f"convbn: cannot capture {type(module).__name__} with torch.fx.symbolic_trace "
            f"({type(e).__name__}: {msg}); make the control flow static or pass a "
            "torch.export ExportedProgram"
        ) from None


# ---- finding pairs ------------------------------------------------------------------------------
@dataclass
class _Pair:
    kind: str  # "module" (BN module), "functional" (F.batch_norm), "aten", "tuned" (a tune node)
    conv_node: fx.Node
    bn_node: fx.Node
    conv: str  # names for the summary
    bn: str
    conv_args: dict = field(default_factory=dict)  # bound call arguments
    bn_args: dict = field(default_factory=dict)


def _call_arguments(gm: fx.GraphModule, node: fx.Node) -> dict | None:
    """A call_module / call_function node's arguments by parameter name (keywords and
    positions alike), or None when they do not bind."""
    fn = gm.get_submodule(node.target).forward if node.op == "call_module" else node.target
    try:
        return dict(inspect.signature(fn).bind(*node.args, **node.kwargs).arguments)
    except (TypeError, ValueError):
        return None


def _bn_arguments(node: fx.Node) -> dict | None:
    """F.batch_norm's arguments by name, defaults filled in."""
    try:
        bound = _FBN_SIGNATURE.bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _describe(gm: fx.GraphModule, node) -> str:
    if not isinstance(node, fx.Node):
        return repr(node)
    if node.op == "call_module":
        return f"'{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"'{node.name}' ({getattr(node.target, '__name__', node.target)})"
    return f"'{node.name}' ({node.op})"


def _owner(node) -> str:
    """The module a get_attr node reads from ('layer1.0.bn1.running_mean' -> 'layer1.0.bn1')."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return node.target.rpartition(".")[0] or node.target
    return getattr(node, "name", "?")


def _conv_problem(gm: fx.GraphModule, x, channels: int | None) -> str | None:
    """Why the BN input ``x`` is not a conv module this BN can combine with, else None."""
    if isinstance(x, fx.Node) and x.op == "call_module":
        m = gm.get_submodule(x.target)
        if type(m) in _BNS:
            return f"its input is BatchNorm {_describe(gm, x)}: a BN after a BN is not folded"
        if type(m) in _CONVS:
            if len(x.users) != 1:
                return f"the output of conv '{x.target}' has another user"
            if _call_arguments(gm, x) is None:
                return f"the call of conv '{x.target}' does not bind to its forward()"
            out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            if channels is not None and channels != out:
                return f"conv '{x.target}' has {out} output channels, the BN {channels}"
            return None
    return f"its input {_describe(gm, x)} is not a conv module"


def _fx_candidates(gm: fx.GraphModule):
    """(pairs, left) over BN modules and F.batch_norm calls; left: (conv, bn, reason)."""
    pairs, left = [], []
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(gm.get_submodule(node.target)) in _BNS:
            bn = gm.get_submodule(node.target)
            args = _call_arguments(gm, node)
            name = node.target
            if args is None:
                left.append((None, name, "its call does not bind to BatchNorm.forward()"))
                continue
            if not (bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None):
                left.append((None, name, "it has no running statistics (track_running_stats=False)"))
                continue
            channels = bn.num_features
            kind = "module"
        elif node.op == "call_function" and node.target is F.batch_norm:
            args = _bn_arguments(node)
            name = f"F.batch_norm '{node.name}'"
            if args is None:
                left.append((None, name, "its arguments do not bind to F.batch_norm"))
                continue
            if args["training"] is not False:
                left.append((None, name, "training is not False (batch statistics)"))
                continue
            if args["running_mean"] is None or args["running_var"] is None:
                left.append((None, name, "it has no running statistics"))
                continue
            stats = _attr_value(gm, args["running_mean"])
            channels = stats.numel() if isinstance(stats, torch.Tensor) else None
            name = f"F.batch_norm of '{_owner(args['running_mean'])}'"
            kind = "functional"
        else:
            continue
        x = args["input"]
        problem = _conv_problem(gm, x, channels)
        conv = x.target if isinstance(x, fx.Node) and x.op == "call_module" else None
        if problem:
            left.append((conv, name, problem))
            continue
        pairs.append(_Pair(kind, x, node, conv, name, _call_arguments(gm, x), args))
    return pairs, left


def _bind(node: fx.Node) -> dict:
    """Arguments of an aten call by schema name, defaults filled in."""
    arguments = node.target._schema.arguments
    bound = {a.name: a.default_value for a in arguments}
    bound.update(zip((a.name for a in arguments), node.args))
    bound.update(node.kwargs)
    return bound


def _stack_name(node: fx.Node, fallback: str) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else fallback


def _aten_candidates(gm: fx.GraphModule):
    """(pairs, left) for aten conv -> batch_norm(training=False)."""
    pairs, left = [], []
    for bn_node in gm.graph.nodes:
        if bn_node.op != "call_function" or bn_node.target is not _aten.batch_norm.default:
            continue
        bn_args = _bind(bn_node)
        bn = _stack_name(bn_node, _owner(bn_args["running_mean"]))
        conv_node = bn_args["input"]
        is_conv = (
            isinstance(conv_node, fx.Node)
            and conv_node.op == "call_function"
            and getattr(conv_node.target, "overloadpacket", None) in _ATEN_CONVS
        )
        conv = _stack_name(conv_node, conv_node.name) if is_conv else None
        stats = [bn_args[k] for k in ("running_mean", "running_var")]
        if bn_args["training"] is not False:
            left.append((conv, bn, "the BatchNorm was exported in training mode"))
        elif not is_conv:
            left.append((None, bn, f"its input {_describe(gm, conv_node)} is not a conv"))
        elif len(conv_node.users) != 1:
            left.append((conv, bn, f"the output of conv '{conv}' has another user"))
        elif not all(isinstance(s, fx.Node) and s.op == "get_attr" for s in stats):
            left.append((conv, bn, "its running statistics are not the model's buffers"))
        else:
            conv_args = _bind(conv_node)
            x, weight = conv_args["input"].meta.get("val"), conv_args["weight"].meta.get("val")
            if x is None or weight is None or x.dim() != weight.dim():
                left.append((conv, bn, "a Linear+BatchNorm1d pair folds only for (N, C) input"))
                continue
            pairs.append(_Pair("aten", conv_node, bn_node, conv, bn, conv_args, bn_args))
    return pairs, left


def _tuned_candidates(gm: fx.GraphModule):
    """tune_conv_bn / tune_conv_fbn nodes of a module already in Tune mode (deploy folds them)."""
    pairs = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (tune_conv_bn, tune_conv_fbn):
            conv_ref = node.args[1]
            bn_ref = node.args[2]
            bn_name = bn_ref.target if node.target is tune_conv_bn else f"F.batch_norm of '{_owner(bn_ref)}'"
            pairs.append(_Pair("tuned", node, node, conv_ref.target, bn_name))
    return pairs


# ---- rewriting ----------------------------------------------------------------------------------
def _install(gm: fx.GraphModule, node: fx.Node, module: nn.Module, suffix: str) -> None:
    """Make ``node`` call ``module``: in place of its old module when no other node uses that
    (nor an enclosing module, which would be the caller's), else under a new name."""
    node.target = _install_at(gm, node.target, module, suffix, node)


def _install_at(gm: fx.GraphModule, target: str, module: nn.Module, suffix: str, node=None) -> str:
    shared = any(
        n is not node
        and n.op in ("call_module", "get_attr")
        and ((n.target + ".").startswith(target + ".") or target.startswith(n.target + "."))
        for n in gm.graph.nodes
    )
    if shared:
        target = f"{target.replace('.', '_')}_{suffix}"
        while hasattr(gm, target):
            target += "_"
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent), name, module)
    return target


def _erase_if_unused(gm: fx.GraphModule, node) -> None:
    """Erase a dead get_attr node, and its attribute once no node reads or calls it any more."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or node.users:
        return
    gm.graph.erase_node(node)
    target = node.target
    if not any(
        n.op in ("get_attr", "call_module") and (n.target == target or n.target.startswith(target + "."))
        for n in gm.graph.nodes
    ):
        parent, _, name = node.target.rpartition(".")
        delattr(gm.get_submodule(parent), name)


def _attr_value(gm: fx.GraphModule, node):
    """The tensor a get_attr node reads (a plain value stays as it is; other nodes: None)."""
    if not isinstance(node, fx.Node):
        return node
    if node.op != "get_attr":
        return None
    parent, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(parent), name)


def _deploy_weights(w, b, mean, var, eps, gamma, beta, transposed, groups):
    """Folded (weight, bias) Parameters, computed once."""
    if transposed and groups > 1:  # fuse_conv_bn_weights scales dim 1 as if it held all C_out channels
        with torch.no_grad():
            fw, fb = fold(w, b, mean, var, eps, gamma, beta, transposed, groups)
        return nn.Parameter(fw, w.requires_grad), nn.Parameter(fb, b is not None and b.requires_grad)
    return fuse_conv_bn_weights(w, b, mean, var, eps, gamma, beta, transpose=transposed)


def _fused_conv(conv: nn.Module, mean, var, eps, gamma, beta) -> nn.Module:
    fused = copy.deepcopy(conv, {id(conv.weight): conv.weight, id(conv.bias): conv.bias})
    fused.weight, fused.bias = _deploy_weights(
        conv.weight, conv.bias, mean, var, eps, gamma, beta, _is_transposed(conv), getattr(conv, "groups", 1)
    )
    return fused


def _tune_fx(gm: fx.GraphModule, pair: _Pair) -> None:
    graph = gm.graph
    conv_args = dict(pair.conv_args)
    x = conv_args.pop("input")
    with graph.inserting_before(pair.bn_node):  # after every input of both calls
        conv_ref = graph.get_attr(pair.conv_node.target)
        if pair.kind == "module":
            bn_ref = graph.get_attr(pair.bn_node.target)
            tuned = graph.call_function(tune_conv_bn, (x, conv_ref, bn_ref), conv_args)
        else:
            b = pair.bn_args
            stats = (b["running_mean"], b["running_var"], b["weight"], b["bias"], b["eps"])
            tuned = graph.call_function(tune_conv_fbn, (x, conv_ref, *stats), conv_args)
    pair.bn_node.replace_all_uses_with(tuned)
    graph.erase_node(pair.bn_node)
    graph.erase_node(pair.conv_node)


_COMPUTED = "its statistics, weight or bias are computed in forward(): folding once needs the model's tensors"


def _deploy_fx(gm: fx.GraphModule, pair: _Pair) -> str | None:
    """Fold one fx pair into its conv; returns why it cannot, or None."""
    conv = gm.get_submodule(pair.conv_node.target)
    if pair.kind == "module":
        bn = gm.get_submodule(pair.bn_node.target)
        fused = _fused_conv(conv, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        _install(gm, pair.conv_node, fused, "bnfold")
        _install(gm, pair.bn_node, nn.Identity(), "identity")
        return None
    b = pair.bn_args
    keys = ("running_mean", "running_var", "weight", "bias", "eps")
    values = [_attr_value(gm, b[k]) for k in keys]
    if any(v is None and b[k] is not None for v, k in zip(values, keys)):
        return _COMPUTED
    mean, var, gamma, beta, eps = values
    _install(gm, pair.conv_node, _fused_conv(conv, mean, var, eps, gamma, beta), "bnfold")
    pair.bn_node.replace_all_uses_with(pair.conv_node)
    gm.graph.erase_node(pair.bn_node)
    for k in ("running_mean", "running_var", "weight", "bias"):
        _erase_if_unused(gm, b[k])
    return None


def _deploy_tuned(gm: fx.GraphModule, pair: _Pair) -> str | None:
    """A tune node (from an earlier ``convbn(..., "tune")``) folded once into a conv module call."""
    node, graph = pair.conv_node, gm.graph
    x, conv_ref, *rest = node.args
    conv = _attr_value(gm, conv_ref)
    if node.target is tune_conv_bn:
        bn_ref, *conv_rest = rest
        bn = _attr_value(gm, bn_ref)
        if not (bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None):
            return "it has no running statistics"
        values = (bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        refs = [bn_ref]
    else:
        mean, var, gamma, beta, eps, *conv_rest = rest
        refs = [mean, var, gamma, beta]
        tensors = [_attr_value(gm, r) for r in refs]
        if any(t is None and r is not None for t, r in zip(tensors, refs)):
            return _COMPUTED
        values = (tensors[0], tensors[1], eps, tensors[2], tensors[3])
    target = _install_at(gm, conv_ref.target, _fused_conv(conv, *values), "bnfold", conv_ref)
    with graph.inserting_before(node):
        call = graph.call_module(target, (x, *conv_rest), dict(node.kwargs))
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    if node.target is tune_conv_bn and not any(
        n.op == "get_attr" and n.target == bn_ref.target and n is not bn_ref for n in graph.nodes
    ):
        _install_at(gm, bn_ref.target, nn.Identity(), "identity", bn_ref)
    for r in [conv_ref, *refs]:
        _erase_if_unused(gm, r)
    return None


def _rewrite_aten(gm: fx.GraphModule, pair: _Pair, mode: str) -> str | None:
    graph = gm.graph
    conv_node, bn_node, conv_args, bn_args = pair.conv_node, pair.bn_node, pair.conv_args, pair.bn_args
    transposed = _ATEN_CONVS[conv_node.target.overloadpacket]
    args = (
        conv_args["weight"],
        conv_args["bias"],
        bn_args["running_mean"],
        bn_args["running_var"],
        bn_args["eps"],
        bn_args["weight"],
        bn_args["bias"],
        transposed,
        conv_args.get("groups") or 1,
    )
    if mode == "deploy" and any(isinstance(a, fx.Node) and a.op != "get_attr" for a in args):
        return "its weights are computed in forward(): folding once needs the model's own tensors"
    with graph.inserting_before(conv_node):
        if mode == "tune":
            folded = graph.call_function(fold, args)
            weight, bias = (graph.call_function(operator.getitem, (folded, i)) for i in (0, 1))
        else:
            w, b = _deploy_weights(*(_attr_value(gm, a) for a in args))
            owner = conv_args["weight"].target.rpartition(".")[0]
            base = (owner.replace(".", "_") + "_bnfold").lstrip("_")
            while hasattr(gm, base + "_weight"):
                base += "_"
            gm.register_parameter(base + "_weight", w)
            gm.register_parameter(base + "_bias", b)
            weight, bias = graph.get_attr(base + "_weight"), graph.get_attr(base + "_bias")
    conv_node.args, conv_node.kwargs = (), {**conv_args, "weight": weight, "bias": bias}
    bn_node.replace_all_uses_with(conv_node)
    graph.erase_node(bn_node)
    if mode == "deploy":
        for n in dict.fromkeys((conv_args["weight"], conv_args["bias"], *bn_args.values())):
            _erase_if_unused(gm, n)
    return None


def convbn(module, mode: str = "tune", example_inputs=None) -> nn.Module:
    """Rewrite conv->BN pairs of ``module`` for ``mode`` ("tune", "deploy" or "eval"); see module doc.

    ``example_inputs`` (a tensor or a tuple of them) gives the shapes behind the summary's
    byte estimates and the small-batch warning."""
    if mode not in MODES:
        raise FuserError(f"convbn: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "eval":
        if isinstance(module, torch.export.ExportedProgram):
            module = module.module()
        module.fuser_convbn_pairs = 0
        module.fuser_convbn_summary = ConvBNSummary(mode, [], [])
        return module
    name = type(module).__name__
    gm = _capture(module)  # new containers: installing modules in it leaves ``module`` as it was
    inputs = _as_tuple(example_inputs)
    if inputs and not isinstance(module, torch.export.ExportedProgram):
        propagate_shapes(gm, inputs)
    fx_pairs, left = _fx_candidates(gm)
    aten_pairs, aten_left = _aten_candidates(gm)
    left += aten_left
    tuned = _tuned_candidates(gm) if mode == "deploy" else []
    done: list[PairInfo] = []
    for pair in fx_pairs + aten_pairs + tuned:
        info = _pair_info(gm, pair)
        _rebind(gm, pair)  # earlier rewrites may have replaced the nodes these arguments named
        if pair.kind == "aten":
            why = _rewrite_aten(gm, pair, mode)
        elif pair.kind == "tuned":
            why = _deploy_tuned(gm, pair)
        elif mode == "tune":
            why = _tune_fx(gm, pair)
        else:
            why = _deploy_fx(gm, pair)
        if why:
            left.append((pair.conv, pair.bn, why))
        else:
            done.append(info)
    if mode == "deploy":  # e.g. exported num_batches_tracked reads of the removed BNs
        for n in [n for n in gm.graph.nodes if n.op == "get_attr"]:
            _erase_if_unused(gm, n)
    gm.graph.lint()
    gm.recompile()
    batch = batch_of(inputs, [p.conv_node for p in aten_pairs])
    summary = ConvBNSummary(mode, done, [LeftPair(*item) for item in left], batch)
    gm.fuser_convbn_pairs = len(done)
    gm.fuser_convbn_summary = summary
    log.info("convbn(%s): %s: combined %d conv+bn pair(s), left %d", mode, name, len(done), len(left))
    if mode == "tune" and summary.batch:
        message = summary.warning(summary.batch)
        if message:
            warnings.warn(f"convbn: {name}: {message}", TuneModeWarning, stacklevel=2)
    return gm


def _rebind(gm: fx.GraphModule, pair: _Pair) -> None:
    if pair.kind == "aten":
        pair.conv_args, pair.bn_args = _bind(pair.conv_node), _bind(pair.bn_node)
    elif pair.kind in ("module", "functional"):
        pair.conv_args = _call_arguments(gm, pair.conv_node)
        pair.bn_args = (
            _call_arguments(gm, pair.bn_node) if pair.kind == "module" else _bn_arguments(pair.bn_node)
        )


def _pair_info(gm: fx.GraphModule, pair: _Pair) -> PairInfo:
    """Channels, folded-weight size and conv-output size per sample of a pair (before rewriting)."""
    if pair.kind == "aten":
        weight = _attr_value(gm, pair.conv_args["weight"])
        if weight is None:
            weight = pair.conv_args["weight"].meta["val"]
        out = pair.conv_node.meta.get("val")
    else:
        conv = (
            _attr_value(gm, pair.conv_node.args[1])
            if pair.kind == "tuned"
            else gm.get_submodule(pair.conv_node.target)
        )
        weight = conv.weight
        meta = pair.conv_node.meta.get("tensor_meta")
        out = meta if meta is not None and hasattr(meta, "shape") else None
    per_sample = None
    if out is not None and len(out.shape) > 0 and out.shape[0]:
        per_sample = int(torch.Size(out.shape).numel()) // int(out.shape[0])
    transposed = pair.kind == "aten" and _ATEN_CONVS[pair.conv_node.target.overloadpacket]
    transposed = transposed or (pair.kind != "aten" and _is_transposed(conv))
    groups = int(pair.conv_args.get("groups") or 1) if pair.kind == "aten" else getattr(conv, "groups", 1)
    channels = weight.shape[1] * groups if transposed else weight.shape[0]
    return PairInfo(
        pair.conv, pair.bn, pair.kind, int(channels), int(weight.numel()), per_sample, weight.element_size()
    )


def _as_tuple(example_inputs) -> tuple:
    if example_inputs is None:
        return ()
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def tune_mode(module) -> nn.Module:
    """``convbn(module, "tune")``."""
    return convbn(module, "tune")
