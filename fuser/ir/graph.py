"""fuser's graph IR: Graph, Node and Value.

Op types and attributes follow ONNX names and conventions so ONNX maps one to
one. Every Value carries a static shape and a numpy dtype; constants (weights,
folded shape tensors) are Values with a numpy array in ``const`` and no
producer. Nodes are kept in a topological order in ``graph.nodes``.

The API is deliberately small, after torch.fx: ``replace_all_uses_with``,
``erase_node``, ``insert_node``, ``extract`` and a readable ``str(graph)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class FuserError(Exception):
    """A user-facing error: one line naming the file, node and op, and what to do."""


Shape = tuple  # of int (static) or str (a symbolic, still-dynamic dimension)


def is_splat(a: np.ndarray) -> bool:
    """One value broadcast to a shape (zero strides): what ConstantOfShape folds to."""
    return a.ndim == 0 or all(s == 0 for s in a.strides)


def constant_value(attrs: dict[str, Any], where: str = "Constant") -> np.ndarray:
    """The tensor a Constant node's (decoded) attributes hold."""
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs or "value_floats" in attrs:
        return np.asarray(attrs.get("value_float", attrs.get("value_floats")), dtype=np.float32)
    if "value_int" in attrs or "value_ints" in attrs:
        return np.asarray(attrs.get("value_int", attrs.get("value_ints")), dtype=np.int64)
    raise FuserError(f"{where}: Constant with attributes {sorted(attrs)} is not supported")


def stable_topological_order(count: int, edges: Iterable[tuple[int, int]], key=None) -> list[int] | None:
    """``range(count)`` ordered so that ``a`` comes before ``b`` for every edge (a, b),
    taking the smallest ``key`` (default: the index) among the ready ones, so that an
    order that is already legal is kept; None when the edges form a cycle."""
    import networkx as nx

    dag = nx.DiGraph()
    dag.add_nodes_from(range(count))
    dag.add_edges_from(edges)
    try:
        return list(nx.lexicographical_topological_sort(dag, key=key))
    except nx.NetworkXUnfeasible:
        return None


class Value:
    """A tensor in the graph: a graph input, a node output, or a constant."""

    def __init__(
        self, name: str, shape: Shape | None = None, dtype: Any = np.float32, const: np.ndarray | None = None
    ):
        self.name = name
        self.const = const
        # a constant computed from shapes and configuration alone (an anchor grid, a folded
        # Range), not from weights: analysis does not count it as a parameter
        self.derived = False
        if const is not None:
            shape, dtype = const.shape, const.dtype
        self.shape: Shape | None = tuple(shape) if shape is not None else None
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []  # (consumer, input index), in insertion order

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def users(self) -> list[Node]:
        """Distinct consuming nodes, in order of first use."""
        return list(dict.fromkeys(n for n, _ in self.uses))

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int:
        return math.prod(map(int, self.shape)) if self.is_static else 0  # exact: int64 wraps on huge shapes

    @property
    def nbytes(self) -> int:
        return self.numel * (self.dtype.itemsize if self.dtype is not None else 4)

    def type_str(self) -> str:
        dims = "?" if self.shape is None else ",".join(str(d) for d in self.shape)
        return f"{self.dtype.name if self.dtype is not None else '?'}[{dims}]"

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type_str()}"


class Node:
    """One operator. ``inputs`` may hold None for an omitted optional input."""

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        name: str = "",
        domain: str = "",
    ):
        self.op = op
        self.name = name
        self.domain = domain
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.inputs: list[Value | None] = []
        self.outputs: list[Value] = list(outputs)
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}  # annotations by passes (e.g. a fusion group); not exported
        for v in inputs:
            self.add_input(v)
        for v in self.outputs:
            v.producer = self

    def add_input(self, v: Value | None) -> None:
        self.inputs.append(v)
        if v is not None:
            v.uses.append((self, len(self.inputs) - 1))

    def set_input(self, index: int, v: Value | None) -> None:
        old = self.inputs[index]
        if old is not None:
            old.uses.remove((self, index))
        self.inputs[index] = v
        if v is not None:
            v.uses.append((self, index))

    def input(self, index: int) -> Value | None:
        """The index-th input, or None when it is absent."""
        return self.inputs[index] if index < len(self.inputs) else None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"<Node {self.name}: {self.op}>"


def display_name(node: Node) -> str:
    """How reports name ``node``. A graph captured from torch names its nodes by the user's
    module path (``layer3.1.conv2``; ops inside a module's forward ``layer3.1/add``) and
    records the module in ``node.meta["module"]``; a node whose name does not say its module
    (one a pass added, or one the ONNX exporter named) reads ``<module>/<op>``. Otherwise
    (an ONNX model) the node's own name."""
    module = node.meta.get("module")
    if not module or node.name == module or node.name.startswith(module + "/"):
        return node.name
    return f"{module}/{node.op.lower()}"


def source_line(node: Node) -> str:
    """``file:line`` of the user's code that made ``node`` (graphs captured from torch), else ''."""
    return node.meta.get("source", "")


def _fmt_attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"tensor{list(v.shape)}" if v.size > 8 else repr(v.tolist())
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v)


@dataclass
class Graph:
    """A dataflow graph of Nodes over Values, kept in topological order."""

    name: str = "graph"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    opset: int = 17
    source: str = "<memory>"  # file or origin, named in error messages
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. "import": what import folded; not exported

    # ---- construction -------------------------------------------------
    def __post_init__(self):
        self._names: set[str] = set()
        self._counter = itertools.count()

    def unique_name(self, base: str) -> str:
        base = base or "v"
        name = base
        while name in self._names:
            name = f"{base}_{next(self._counter)}"
        self._names.add(name)
        return name

    def add_input(self, name: str, shape: Shape, dtype: Any = np.float32) -> Value:
        v = Value(self.unique_name(name), shape, dtype)
        self.inputs.append(v)
        return v

    def const(self, array: Any, name: str = "const") -> Value:
        """A new constant Value holding ``array``."""
        return Value(self.unique_name(name), const=np.asarray(array))

    def value(self, name: str, shape: Shape | None = None, dtype: Any = np.float32) -> Value:
        return Value(self.unique_name(name), shape, dtype)

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: int | Sequence[Value] = 1,
        attrs: dict[str, Any] | None = None,
        name: str = "",
        *,
        before: Node | None = None,
        domain: str = "",
    ) -> Node:
        """Create a node and insert it at the end, or just before ``before``."""
        node_name = self.unique_name(name or op.lower())
        if isinstance(outputs, int):
            outputs = [
                Value(self.unique_name(node_name if outputs == 1 else f"{node_name}_out{i}"), None, None)
                for i in range(outputs)
            ]
        node = Node(op, inputs, outputs, attrs, node_name, domain)
        self.insert_node(node, before=before)
        return node

    def insert_node(self, node: Node, before: Node | None = None) -> Node:
        node.graph = self
        for v in node.outputs:
            self._names.add(v.name)
        self._names.add(node.name)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    # ---- queries --------------------------------------------------------
    def values(self) -> list[Value]:
        """Every Value reachable from nodes, inputs and outputs, once each, in a stable order."""
        seen: dict[int, Value] = {}
        for v in self.inputs:
            seen[id(v)] = v
        for n in self.nodes:
            for v in itertools.chain(n.inputs, n.outputs):
                if v is not None:
                    seen.setdefault(id(v), v)
        for v in self.outputs:
            seen.setdefault(id(v), v)
        return list(seen.values())

    def constants(self) -> list[Value]:
        return [v for v in self.values() if v.is_const]

    def value_by_name(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def node_by_name(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def producers(self, node: Node) -> list[Node]:
        return list(dict.fromkeys(v.producer for v in node.inputs if v is not None and v.producer))

    def consumers(self, node: Node) -> list[Node]:
        return list(dict.fromkeys(u for v in node.outputs for u in v.users))

    def is_output(self, v: Value) -> bool:
        return any(v is o for o in self.outputs)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    # ---- mutation -------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value) -> int:
        """Point every consumer of ``old`` (and graph outputs) at ``new``; returns the count."""
        count = 0
        for node, index in list(old.uses):
            node.set_input(index, new)
            count += 1
        for i, o in enumerate(self.outputs):
            if o is old:
                self.outputs[i] = new
                count += 1
        return count

    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for v in node.outputs:
            if v.uses or self.is_output(v):
                raise ValueError(f"cannot erase {node.name}: output {v.name} is still used")
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses.remove((node, i))
        self.nodes.remove(node)
        node.graph = None

    def toposort(self) -> None:
        """Re-sort nodes topologically (stable: keeps the current order where it is legal)."""
        index = {id(n): i for i, n in enumerate(self.nodes)}
        order = stable_topological_order(
            len(self.nodes),
            (
                (index[id(p)], i)
                for i, n in enumerate(self.nodes)
                for p in self.producers(n)
                if id(p) in index
            ),
        )
        if order is None:
            raise FuserError(f"{self.source}: graph has a cycle")
        self.nodes = [self.nodes[i] for i in order]

    # ---- pickling ------------------------------------------------------
    # Nodes and Values link to each other (producer, uses, inputs), so pickle's default walk
    # recurses along the longest path: MobileNetV2 passed Python's recursion limit (fuser sweep
    # hands graphs to Ray). The state is flat instead: Values and Nodes as records that name
    # each other by index.
    def __getstate__(self) -> dict:
        nodes = {id(n): i for i, n in enumerate(self.nodes)}
        values: dict[int, int] = {}
        records: list[Value] = []

        def index(v: Value | None) -> int:
            if v is None:
                return -1
            if id(v) not in values:
                values[id(v)] = len(records)
                records.append(v)
            return values[id(v)]

        inputs, outputs = [index(v) for v in self.inputs], [index(v) for v in self.outputs]
        node_records = [
            (
                {k: x for k, x in vars(n).items() if k not in ("inputs", "outputs", "graph")},
                [index(v) for v in n.inputs],
                [index(v) for v in n.outputs],
            )
            for n in self.nodes
        ]
        value_records = [
            (
                {k: x for k, x in vars(v).items() if k not in ("producer", "uses")},
                nodes.get(id(v.producer), -1),
                [(nodes[id(u)], k) for u, k in v.uses if id(u) in nodes],
            )
            for v in records
        ]
        fields = {k: x for k, x in vars(self).items() if k not in ("inputs", "outputs", "nodes")}
        return {"fields": fields, "values": value_records, "nodes": node_records, "io": (inputs, outputs)}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state["fields"])
        values = []
        for attrs, _, _ in state["values"]:
            v = Value.__new__(Value)
            vars(v).update(attrs)
            values.append(v)
        self.nodes = []
        for attrs, ins, outs in state["nodes"]:
            n = Node.__new__(Node)
            vars(n).update(attrs)
            n.inputs = [values[i] if i >= 0 else None for i in ins]
            n.outputs = [values[i] for i in outs]
            n.graph = self
            self.nodes.append(n)
        for v, (_, producer, uses) in zip(values, state["values"]):
            v.producer = self.nodes[producer] if producer >= 0 else None
            v.uses = [(self.nodes[i], k) for i, k in uses]
        inputs, outputs = state["io"]
        self.inputs, self.outputs = [values[i] for i in inputs], [values[i] for i in outputs]

    def copy(self) -> Graph:
        """A structural copy; constant arrays are shared (treat them as immutable)."""
        vmap: dict[int, Value] = {}

        def cp(v: Value | None) -> Value | None:
            if v is None:
                return None
            if id(v) not in vmap:
                nv = Value(v.name, v.shape, v.dtype, v.const)
                nv.derived = v.derived
                vmap[id(v)] = nv
            return vmap[id(v)]

        g = Graph(self.name, [cp(v) for v in self.inputs], [], [], self.opset, self.source, dict(self.meta))
        g._names = set(self._names)
        for n in self.nodes:
            nn = Node(
                n.op, [cp(v) for v in n.inputs], [cp(v) for v in n.outputs], dict(n.attrs), n.name, n.domain
            )
            nn.meta = dict(n.meta)
            nn.graph = g
            g.nodes.append(nn)
        g.outputs = [cp(v) for v in self.outputs]
        return g

    def extract(self, nodes: Iterable[Node], name: str | None = None) -> Graph:
        """A new Graph holding copies of ``nodes``.

        Its inputs are the non-constant values the nodes consume but do not
        produce; its outputs are the values they produce that are used outside
        the set or are outputs of this graph.
        """
        chosen = {id(n) for n in nodes}
        sub_nodes = [n for n in self.nodes if id(n) in chosen]
        produced = {id(v) for n in sub_nodes for v in n.outputs}
        ins = list(
            {
                id(v): v
                for n in sub_nodes
                for v in n.inputs
                if v is not None and not v.is_const and id(v) not in produced
            }.values()
        )
        outs = [
            v
            for n in sub_nodes
            for v in n.outputs
            if self.is_output(v) or any(id(u) not in chosen for u in v.users)
        ]
        whole = Graph(name or f"{self.name}_sub", ins, outs, sub_nodes, self.opset, self.source)
        return whole.copy()

    # ---- views ----------------------------------------------------------
    def to_networkx(self):
        """A networkx.MultiDiGraph: one vertex per node (key: node name, attrs op/node),
        one edge per consumed value (attr ``value``: the Value)."""
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        for n in self.nodes:
            g.add_node(n.name, op=n.op, node=n)
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and v.producer is not None and v.producer.graph is self:
                    g.add_edge(v.producer.name, n.name, value=v, key=v.name)
        return g

    def __str__(self) -> str:
        def ref(v: Value | None) -> str:
            if v is None:
                return "_"
            return f"${v.name}" if v.is_const else f"%{v.name}"

        sig_in = ", ".join(f"%{v.name}: {v.type_str()}" for v in self.inputs)
        sig_out = ", ".join(f"%{v.name}: {v.type_str()}" for v in self.outputs)
        lines = [f"graph {self.name}({sig_in}) -> ({sig_out}) {{"]
        for n in self.nodes:
            outs = ", ".join(f"%{v.name}: {v.type_str()}" for v in n.outputs)
            args = ", ".join(ref(v) for v in n.inputs)
            attrs = ", ".join(f"{k}={_fmt_attr(a)}" for k, a in sorted(n.attrs.items()))
            lines.append(f"  {outs} = {n.op}({args})" + (f" {{{attrs}}}" if attrs else "") + f"  # {n.name}")
        lines.append("}")
        return "\n".join(lines)

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.nodes)} nodes, "
            f"{sum(v.numel for v in self.constants())} constant elements"
        )


def check_graph(graph: Graph) -> None:
    """Raise if the graph's bookkeeping is inconsistent (used by tests and after passes)."""
    seen: set[int] = {id(v) for v in graph.inputs}
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            if not v.is_const and id(v) not in seen:
                raise AssertionError(f"{n.name} uses {v.name} before it is defined")
            if (n, i) not in v.uses:
                raise AssertionError(f"{v.name} does not record its use by {n.name}")
        for v in n.outputs:
            if v.producer is not n:
                raise AssertionError(f"{v.name} does not name {n.name} as producer")
            seen.add(id(v))
    for v in graph.outputs:
        if id(v) not in seen and not v.is_const:
            raise AssertionError(f"output {v.name} is not produced")
