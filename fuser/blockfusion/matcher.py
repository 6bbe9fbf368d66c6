"""The block matcher: each residual block that one generated CUDA kernel can compute.

Runs on a graph after fold_conv_bn (BN must already be inside the convs' weights and
biases). ``find_blocks(graph)`` returns the ``BlockSpec``s and the ``Rejected`` groups;
the ``fuse_blocks`` pass (fuser.passes.fuse_blocks) annotates the graph with them.

Patterns, matched in topological order, each node in at most one block. A
"unit" is a Conv (2-D, constant weights, constant or no bias, dilation 1,
auto_pad NOTSET, square kernel, equal strides) with the activation after it:
Relu; Clip(0, 6) (ReLU6); HardSwish; Mul(v, Sigmoid(v)) (SiLU: what the torch
exporter writes for nn.SiLU) — or none. Every value inside a block has exactly
one consumer (SiLU's v: its Sigmoid and Mul) and is not a graph output; the
block input x may have others.

  convfirst     U1 = k×k grouped conv (groups > 1, k > 1, stride 1, C→C, no act)
                → U2 = 1×1 conv (groups 1, C→H, act) → U3 = 1×1 conv (H→C, no act)
  mbconv        [U1 = 1×1 conv (groups 1, C→H, act)] → U2 = k×k depthwise (groups = H,
                k > 1, stride s, act) → U3 = 1×1 conv (H→C', no act)
  resnet_basic  U1 = k×k conv (groups 1, k > 1, stride s, act) → U2 = k×k conv
                (groups 1, stride 1, no act), Add with x or with a 1×1 conv
                (groups 1, stride s, pads 0, no act) of x

Then, for every kind, an optional residual ``Add(x, last)`` (either order; its
shapes equal) followed by an optional activation; resnet_basic requires the Add.
Tried at each unclaimed Conv in the order convfirst, mbconv with expand,
resnet_basic, mbconv without expand.

Not fused, reported with the reason:
  - an mbconv whose depthwise output also feeds GlobalAveragePool / ReduceMean /
    GlobalMaxPool (squeeze-and-excite): the scale needs the whole H×W map, so no
    output tile can be finished from its own input tile (not depth-first fusable);
  - a matched block with a channel count not a multiple of 8 (the kernel moves
    channels in 16-byte vectors), or for which no tile fits the target GPU's
    shared memory and register budget (``device``, default H100);
  - every other residual Add whose branch is no block above: the ops of its
    branch are named (e.g. ResNet-50's 1×1 → 3×3 → 1×1 bottleneck, ConvNeXt's
    LayerNorm/MatMul block), and global ops in it are called out.
"""

from __future__ import annotations

import numpy as np

from fuser.ir import Graph, Node, Value
from fuser.ir.ops import Category, ops_in

from .spec import BlockSpec, ConvLayer, Rejected

# Reductions over whole maps (global pools, Reduce*): no output tile finishes from its input tile.
GLOBAL_OPS = ops_in(Category.REDUCTION) - {"Softmax", "LogSoftmax", "ArgMax"}
CHANNEL_ALIGN = 8


class _Unit:
    """A Conv and its activation: the layer, the value it produces and its IR nodes."""

    def __init__(self, layer: ConvLayer, out: Value, nodes: list[Node]):
        self.layer, self.out, self.nodes = layer, out, nodes


def _const_scalar(v: Value | None):
    if v is None or not v.is_const or v.const.size != 1:
        return None
    return float(v.const.reshape(()))


def _activation(graph: Graph, v: Value) -> tuple[str, Value, list[Node]]:
    """The activation consuming ``v`` alone: (name, its output, its nodes); ('none', v, [])."""
    if graph.is_output(v):
        return "none", v, []
    users = v.users
    if len(v.uses) == 1:
        u = users[0]
        if u.op == "Relu":
            return "relu", u.output, [u]
        if u.op == "HardSwish":
            return "hardswish", u.output, [u]
        if u.op == "Clip":
            lo = _const_scalar(u.input(1)) if u.input(1) is not None else u.attr("min")
            hi = _const_scalar(u.input(2)) if u.input(2) is not None else u.attr("max")
            if lo == 0 and hi == 6:
                return "relu6", u.output, [u]
            if lo == 0 and hi is None:
                return "relu", u.output, [u]
    if len(v.uses) == 2 and len(users) == 2:
        sig = next((u for u in users if u.op == "Sigmoid"), None)
        mul = next((u for u in users if u.op == "Mul"), None)
        if (
            sig is not None
            and mul is not None
            and sig.output.users == [mul]
            and len(sig.output.uses) == 1
            and not graph.is_output(sig.output)
            and {id(i) for i in mul.inputs} == {id(v), id(sig.output)}
        ):
            return "silu", mul.output, [sig, mul]
    return "none", v, []


def _conv_layer(node: Node, role: str, activation: str = "none", act_nodes=()) -> ConvLayer | None:
    """The ConvLayer of a supported Conv node, else None."""
    if node.op != "Conv" or len(node.output.shape or ()) != 4 or not node.output.is_static:
        return None
    x, w, b = node.input(0), node.input(1), node.input(2)
    if w is None or not w.is_const or (b is not None and not b.is_const) or not x.is_static:
        return None
    k = tuple(node.attr("kernel_shape", w.shape[2:]))
    strides = tuple(node.attr("strides", (1, 1)))
    pads = tuple(node.attr("pads", (0, 0, 0, 0)))
    if (
        len(k) != 2
        or k[0] != k[1]
        or strides[0] != strides[1]
        or any(d != 1 for d in node.attr("dilations", (1, 1)))
        or node.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
    ):
        return None
    c_out, c_in = node.output.shape[1], x.shape[1]
    bias = b.const.astype(np.float32).reshape(-1) if b is not None else np.zeros(c_out, np.float32)
    return ConvLayer(
        node=node.name,
        role=role,
        c_in=c_in,
        c_out=c_out,
        kernel=k[0],
        stride=strides[0],
        pad_top=int(pads[0]),
        pad_left=int(pads[1]),
        groups=int(node.attr("group", 1)),
        activation=activation,
        weight=w.const.astype(np.float32),
        bias=bias,
        in_hw=tuple(x.shape[2:]),
        out_hw=tuple(node.output.shape[2:]),
        act_nodes=tuple(n.name for n in act_nodes),
    )


class _Matcher:
    """Tries the patterns of the module docstring; each node joins at most one block or rejection."""

    def __init__(self, graph: Graph, device: str | None):
        self.graph = graph
        self.device = device
        self.claimed: set[int] = set()
        self.blocks: list[BlockSpec] = []
        self.rejected: list[Rejected] = []

    # ---- building blocks -------------------------------------------------------
    def unit(self, node: Node | None, role: str) -> _Unit | None:
        if node is None or id(node) in self.claimed or node.op != "Conv":
            return None
        act, out, act_nodes = _activation(self.graph, node.output)
        layer = _conv_layer(node, role, act, act_nodes)
        return None if layer is None else _Unit(layer, out, [node, *act_nodes])

    def sole_consumer(self, v: Value) -> Node | None:
        """The one node reading v, when v is internal to a block."""
        if self.graph.is_output(v) or len(v.uses) != 1:
            return None
        n = v.users[0]
        return None if id(n) in self.claimed else n

    def residual(self, x: Value, last: Value) -> tuple[Node, Value, str, list[Node]] | None:
        """Add(x, last) → (add, block output, final activation, its nodes)."""
        add = self.sole_consumer(last)
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            return None
        if {id(v) for v in add.inputs} != {id(x), id(last)} or x.shape != last.shape:
            return None
        act, out, act_nodes = _activation(self.graph, add.output)
        return add, out, act, act_nodes

    # ---- patterns --------------------------------------------------------------
    def convfirst(self, start: Node):
        u1 = self.unit(start, "spatial")
        if u1 is None:
            return None
        l1 = u1.layer
        if not (
            l1.groups > 1
            and l1.kernel > 1
            and l1.stride == 1
            and l1.c_in == l1.c_out
            and l1.activation == "none"
        ):
            return None
        u2 = self.unit(self.sole_consumer(u1.out), "expand")
        if u2 is None or not (
            u2.layer.kernel == 1
            and u2.layer.groups == 1
            and u2.layer.stride == 1
            and u2.layer.activation != "none"
        ):
            return None
        u3 = self.unit(self.sole_consumer(u2.out), "project")
        if u3 is None or not (
            u3.layer.kernel == 1
            and u3.layer.groups == 1
            and u3.layer.stride == 1
            and u3.layer.activation == "none"
            and u3.layer.c_out == l1.c_in
        ):
            return None
        return self.finish("convfirst", start.inputs[0], [u1, u2, u3])

    def mbconv(self, start: Node, with_expand: bool):
        units = []
        node = start
        if with_expand:
            ue = self.unit(start, "expand")
            if ue is None or not (
                ue.layer.kernel == 1
                and ue.layer.groups == 1
                and ue.layer.stride == 1
                and ue.layer.activation != "none"
            ):
                return None
            units.append(ue)
            node = self.sole_consumer(ue.out)
        ud = self.unit(node, "depthwise")
        if ud is None:
            return None
        ld = ud.layer
        if not (
            ld.kernel > 1 and ld.groups == ld.c_in == ld.c_out and ld.groups > 1 and ld.activation != "none"
        ):
            return None
        units.append(ud)
        se = next((u for u in ud.out.users if u.op in GLOBAL_OPS), None)
        if se is not None:
            nodes = [n for u in units for n in u.nodes] + self.squeeze_excite_nodes(se, ud.out)
            self.reject(
                nodes,
                "squeeze-and-excite: its " + se.op + " reads the whole H×W map "
                "before any output tile can be scaled, so the block is not depth-first fusable",
                "mbconv+se",
            )
            return "rejected"
        up = self.unit(self.sole_consumer(ud.out), "project")
        if up is None or not (
            up.layer.kernel == 1
            and up.layer.groups == 1
            and up.layer.stride == 1
            and up.layer.activation == "none"
        ):
            return None
        units.append(up)
        return self.finish("mbconv", start.inputs[0], units)

    def resnet_basic(self, start: Node):
        u1 = self.unit(start, "conv1")
        if u1 is None or not (u1.layer.groups == 1 and u1.layer.kernel > 1 and u1.layer.activation != "none"):
            return None
        c2 = self.sole_consumer(u1.out)
        if c2 is None or c2.op != "Conv" or id(c2) in self.claimed:
            return None
        layer2 = _conv_layer(c2, "conv2")
        if layer2 is None or not (layer2.groups == 1 and layer2.kernel > 1 and layer2.stride == 1):
            return None
        u2 = _Unit(layer2, c2.output, [c2])
        x = start.inputs[0]
        add = self.sole_consumer(c2.output)
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            return None
        other = add.inputs[1] if add.inputs[0] is c2.output else add.inputs[0]
        if other is x:
            return self.finish("resnet_basic", x, [u1, u2])
        sc = other.producer
        if sc is None or id(sc) in self.claimed or sc.inputs[0] is not x or len(other.uses) != 1:
            return None
        lsc = _conv_layer(sc, "shortcut")
        if lsc is None or not (
            lsc.kernel == 1
            and lsc.groups == 1
            and lsc.stride == u1.layer.stride
            and lsc.pad_top == lsc.pad_left == 0
            and other.shape == c2.output.shape
        ):
            return None
        return self.finish("resnet_basic", x, [u1, u2], shortcut=_Unit(lsc, other, [sc]), add=add)

    def finish(
        self, kind: str, x: Value, units: list[_Unit], shortcut: _Unit | None = None, add: Node | None = None
    ):
        last = units[-1].out
        nodes = [n for u in units for n in u.nodes]
        residual, final_act, out = "none", "none", last
        add_name = ""
        if shortcut is not None:
            act, out, act_nodes = _activation(self.graph, add.output)
            nodes += shortcut.nodes + [add, *act_nodes]
            residual, final_act, add_name = "projection", act, add.name
        else:
            res = self.residual(x, last)
            if res is not None:
                add, out, final_act, act_nodes = res
                nodes += [add, *act_nodes]
                residual, add_name = "identity", add.name
            elif kind == "resnet_basic":
                return None
        spec = BlockSpec(
            kind=kind,
            name=f"{kind}_{sum(b.kind == kind for b in self.blocks)}",
            batch=int(x.shape[0]),
            layers=[u.layer for u in units],
            residual=residual,
            final_activation=final_act,
            shortcut=shortcut.layer if shortcut else None,
            nodes=tuple(n.name for n in nodes),
            input_name=x.name,
            output_name=out.name,
            add_node=add_name,
        )
        reason = self.unsupported(spec)
        if reason:
            self.reject(nodes, reason, kind)
            return "rejected"
        self.claim(nodes)
        self.blocks.append(spec)
        return spec

    def unsupported(self, spec: BlockSpec) -> str:
        channels = sorted({c for layer in spec.all_layers() for c in (layer.c_in, layer.c_out)})
        odd = [c for c in channels if c % CHANNEL_ALIGN]
        if odd:
            return (
                f"channels {odd} are not multiples of {CHANNEL_ALIGN} (the kernel moves channels in "
                "16-byte vectors)"
            )
        if self.device is not None:
            from fuser.blockfusion.schedule import NoSchedule, choose_schedule

            try:
                choose_schedule(spec, self.device)
            except NoSchedule as e:
                return str(e)
        return ""

    # ---- bookkeeping -----------------------------------------------------------
    def claim(self, nodes):
        self.claimed.update(id(n) for n in nodes)

    def reject(self, nodes, reason: str, pattern: str):
        nodes = list(dict.fromkeys(nodes))
        self.claim(nodes)
        self.rejected.append(Rejected(tuple(n.name for n in nodes), reason, pattern))

    def squeeze_excite_nodes(self, pool: Node, scaled: Value) -> list[Node]:
        """The squeeze-and-excite branch from its global op to the Mul that scales ``scaled``, then the
        projection Conv and residual Add after it, in graph order."""
        scale = next((u for u in scaled.users if u.op == "Mul" and u is not pool), None)
        out, frontier, seen = [], [pool], set()
        while frontier:  # every node on a path from the pool to the scaling Mul
            n = frontier.pop()
            if id(n) in seen or id(n) in self.claimed:
                continue
            seen.add(id(n))
            out.append(n)
            if n is not scale:
                frontier.extend(u for v in n.outputs for u in v.users)
        if scale is not None:
            project = self.sole_consumer(scale.output)
            if project is not None and project.op == "Conv":
                out.append(project)
                add = self.sole_consumer(project.output)
                if add is not None and add.op == "Add":
                    out.append(add)
        order = {id(n): i for i, n in enumerate(self.graph.nodes)}
        return sorted(out, key=lambda n: order[id(n)])

    def report_other_residuals(self):
        """Residual Adds of two computed values that no block claimed: say what their branch is."""
        for add in self.graph.nodes:
            if add.op != "Add" or id(add) in self.claimed or len(add.inputs) != 2:
                continue
            a, b = add.inputs
            if a is None or b is None or a.is_const or b.is_const or a.shape != b.shape:
                continue
            branch = self.branch(a, b)
            if not branch or not any(n.op in ("Conv", "MatMul", "Gemm") for n in branch):
                continue
            if any(id(n) in self.claimed for n in branch):
                continue  # part of a block or of a group already reported
            globals_ = sorted({n.op for n in branch if n.op in GLOBAL_OPS})
            if globals_:
                reason = (
                    f"global op {', '.join(globals_)} in the branch needs the whole H×W map "
                    "(not depth-first fusable)"
                )
            else:
                reason = "no block-fusion template for this residual branch: " + " → ".join(
                    self.op_label(n) for n in branch
                )
            self.reject([*branch, add], reason, "residual")

    @staticmethod
    def _chain(v: Value, limit: int = 40) -> list[Value]:
        """v and the values it was computed from, following each producer's first computed input."""
        chain = [v]
        while len(chain) < limit and v.producer is not None:
            data = [i for i in v.producer.inputs if i is not None and not i.is_const]
            if not data:
                break
            v = data[0]
            chain.append(v)
        return chain

    def branch(self, a: Value, b: Value) -> list[Node] | None:
        """The nodes between the Add's inputs and the value both come from (the block input), in
        graph order; None when the chains do not meet."""
        chain_a, chain_b = self._chain(a), self._chain(b)
        in_b = {id(v) for v in chain_b}
        meet = next((v for v in chain_a if id(v) in in_b), None)
        if meet is None:
            return None
        nodes = {}
        for chain in (chain_a, chain_b):
            for v in chain[: next(i for i, c in enumerate(chain) if c is meet)]:
                nodes[id(v.producer)] = v.producer
        order = {id(n): i for i, n in enumerate(self.graph.nodes)}
        return sorted(nodes.values(), key=lambda n: order[id(n)])

    @staticmethod
    def op_label(n: Node) -> str:
        if n.op == "Conv":
            k = n.attr("kernel_shape", [1, 1])
            g = n.attr("group", 1)
            return f"Conv {k[0]}×{k[1]}" + (f"/g{g}" if g > 1 else "")
        return n.op


def find_blocks(graph: Graph, device: str | None = "h100") -> tuple[list[BlockSpec], list[Rejected]]:
    """The fusable blocks of ``graph`` (BN already folded) and the block-shaped groups that are not.

    ``device`` names the GPU whose shared-memory and register budget a block must fit
    (fuser.blockfusion.devices); None skips that check, an unknown name is refused.
    """
    if device is not None:
        from fuser.blockfusion.devices import schedule_target

        schedule_target(device)
    m = _Matcher(graph, device)
    for node in graph.nodes:
        if node.op != "Conv" or id(node) in m.claimed:
            continue
        for attempt in (
            m.convfirst,
            lambda n: m.mbconv(n, True),
            m.resnet_basic,
            lambda n: m.mbconv(n, False),
        ):
            if attempt(node) is not None:
                break
    m.report_other_residuals()
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    rejected = sorted(m.rejected, key=lambda r: order.get(r.nodes[0], 0))
    return m.blocks, rejected
