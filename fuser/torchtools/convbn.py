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
combines every conv node (exactly Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear) whose ONLY
user is a BatchNorm1d/2d/3d node with running statistics and matching channel count. Not combined:
a conv output that has another user, a BN without running statistics
(track_running_stats=False), a BN fed by another BN (``bn2(bn1(conv(x)))`` combines
conv+bn1 only). A conv module that is also called elsewhere is combined at this call
site only.

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

The returned module carries ``fuser_convbn_pairs`` (the number of pairs combined), also
logged at INFO level. A model the tracer cannot capture raises ``fuser.ir.FuserError``.
"""

from __future__ import annotations

import copy
import logging
import operator
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.conv import _ConvTransposeNd
from torch.nn.utils.fusion import fuse_conv_bn_weights

from fuser.ir import FuserError

__all__ = ["ConvBN", "convbn", "fold", "tune_conv_bn", "tune_mode", "MODES"]

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
    transposed = _is_transposed(conv)
    w, b = fold(
        conv.weight,
        conv.bias,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        bn.weight,
        bn.bias,
        transposed,
        getattr(conv, "groups", 1),
    )
    if isinstance(conv, nn.Linear):
        return F.linear(x, w, b)
    if not transposed and not args and not kwargs:  # fast path, same as Conv*d.forward
        return conv._conv_forward(x, w, b)
    return functional_call(conv, {"weight": w, "bias": b}, (x, *args), kwargs)


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


def _module_pairs(gm: fx.GraphModule):
    """(conv_node, bn_node) for call_module pairs."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        conv, (user,) = gm.get_submodule(node.target), node.users
        if type(conv) not in _CONVS or user.op != "call_module" or user.args != (node,) or user.kwargs:
            continue
        bn = gm.get_submodule(user.target)
        channels = conv.out_features if isinstance(conv, nn.Linear) else conv.out_channels
        if (
            type(bn) in _BNS
            and bn.track_running_stats
            and bn.running_mean is not None
            and bn.running_var is not None
            and bn.num_features == channels
        ):
            yield node, user


def _bind(node: fx.Node) -> dict:
    """Arguments of an aten call by schema name, defaults filled in."""
    arguments = node.target._schema.arguments
    bound = {a.name: a.default_value for a in arguments}
    bound.update(zip((a.name for a in arguments), node.args))
    bound.update(node.kwargs)
    return bound


def _aten_pairs(gm: fx.GraphModule):
    """(conv_node, bn_node, conv args, bn args) for aten conv -> batch_norm(training=False)."""
    for bn_node in gm.graph.nodes:
        if bn_node.op != "call_function" or bn_node.target is not _aten.batch_norm.default:
            continue
        bn_args = _bind(bn_node)
        conv_node = bn_args["input"]
        if (
            bn_args["training"] is not False
            or not isinstance(conv_node, fx.Node)
            or conv_node.op != "call_function"
            or len(conv_node.users) != 1
            or getattr(conv_node.target, "overloadpacket", None) not in _ATEN_CONVS
        ):
            continue
        conv_args = _bind(conv_node)
        stats = [bn_args[k] for k in ("running_mean", "running_var")]
        if not all(isinstance(s, fx.Node) and s.op == "get_attr" for s in stats):
            continue
        x, weight = conv_args["input"].meta.get("val"), conv_args["weight"].meta.get("val")
        if x is None or weight is None or x.dim() != weight.dim():  # Linear+BN1d only on (N, C)
            continue
        yield conv_node, bn_node, conv_args, bn_args


def _install(gm: fx.GraphModule, node: fx.Node, module: nn.Module, suffix: str) -> None:
    """Make ``node`` call ``module``: in place of its old module when no other node uses that
    (nor an enclosing module, which would be the caller's), else under a new name."""
    target = node.target
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
    node.target = target


def _erase_if_unused(gm: fx.GraphModule, node) -> None:
    """Erase a dead get_attr node, and its attribute once no node reads it any more."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or node.users:
        return
    gm.graph.erase_node(node)
    if not any(n.op == "get_attr" and n.target == node.target for n in gm.graph.nodes):
        parent, _, name = node.target.rpartition(".")
        delattr(gm.get_submodule(parent), name)


def _getattr(gm: fx.GraphModule, node):
    if not isinstance(node, fx.Node):  # None, or a constant
        return node
    parent, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(parent), name)


def _deploy_weights(w, b, mean, var, eps, gamma, beta, transposed, groups):
    """Folded (weight, bias) Parameters, computed once."""
    if transposed and groups > 1:  # fuse_conv_bn_weights scales dim 1 as if it held all C_out channels
        with torch.no_grad():
            fw, fb = fold(w, b, mean, var, eps, gamma, beta, transposed, groups)
        return nn.Parameter(fw, w.requires_grad), nn.Parameter(fb, b is not None and b.requires_grad)
    return fuse_conv_bn_weights(w, b, mean, var, eps, gamma, beta, transpose=transposed)


def convbn(module, mode: str = "tune") -> nn.Module:
    """Rewrite conv->BN pairs of ``module`` for ``mode`` ("tune", "deploy" or "eval"); see module doc."""
    if mode not in MODES:
        raise FuserError(f"convbn: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "eval":
        if isinstance(module, torch.export.ExportedProgram):
            module = module.module()
        module.fuser_convbn_pairs = 0
        return module
    name = type(module).__name__
    gm = _capture(module)  # new containers: installing modules in it leaves ``module`` as it was
    graph, pairs = gm.graph, 0

    for conv_node, bn_node in list(_module_pairs(gm)):
        conv, bn = gm.get_submodule(conv_node.target), gm.get_submodule(bn_node.target)
        pairs += 1
        if mode == "deploy":
            fused = copy.deepcopy(conv, {id(conv.weight): conv.weight, id(conv.bias): conv.bias})
            fused.weight, fused.bias = _deploy_weights(
                conv.weight,
                conv.bias,
                bn.running_mean,
                bn.running_var,
                bn.eps,
                bn.weight,
                bn.bias,
                _is_transposed(conv),
                getattr(conv, "groups", 1),
            )
            _install(gm, conv_node, fused, "bnfold")
            _install(gm, bn_node, nn.Identity(), "identity")
            continue
        with graph.inserting_before(conv_node):
            conv_ref = graph.get_attr(conv_node.target)
            bn_ref = graph.get_attr(bn_node.target)
            x, *rest = conv_node.args
            tuned = graph.call_function(tune_conv_bn, (x, conv_ref, bn_ref, *rest), dict(conv_node.kwargs))
        bn_node.replace_all_uses_with(tuned)
        graph.erase_node(bn_node)
        graph.erase_node(conv_node)

    for conv_node, bn_node, conv_args, bn_args in list(_aten_pairs(gm)):
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
            continue  # folding once needs the weights and statistics to be the model's own tensors
        pairs += 1
        with graph.inserting_before(conv_node):
            if mode == "tune":
                folded = graph.call_function(fold, args)
                weight, bias = (graph.call_function(operator.getitem, (folded, i)) for i in (0, 1))
            else:
                w, b = _deploy_weights(*(_getattr(gm, a) for a in args))
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
    if mode == "deploy":  # e.g. exported num_batches_tracked reads of the removed BNs
        for n in [n for n in graph.nodes if n.op == "get_attr"]:
            _erase_if_unused(gm, n)

    graph.lint()
    gm.recompile()
    gm.fuser_convbn_pairs = pairs
    log.info("convbn(%s): %s: combined %d conv+bn pair(s)", mode, name, pairs)
    return gm


def tune_mode(module) -> nn.Module:
    """``convbn(module, "tune")``."""
    return convbn(module, "tune")
