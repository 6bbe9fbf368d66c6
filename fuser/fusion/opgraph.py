"""An indexed view of a Graph for fusion planning: ops, tensors, edges and row rules.

Fusion planning evaluates thousands of candidate groups, so everything the cost
models need is precomputed here once, with ops numbered 0..n-1 in the graph's
topological order and sets of ops held as Python ``int`` bitmasks (bit i = op i).

Tensors ("values") are the non-constant data tensors: graph inputs and op outputs.
Constants are weights (see ``fuser.analysis.node_weights``) or configuration
(shape tensors, scalars) that cost nothing.

Rows. Line-buffered execution streams a feature map row by row. The row axis of a
tensor of rank >= 4 is ``shape[-2]`` (H for NCHW, and H for ShuffleNet's 5-D
channel shuffle); a tensor of rank < 4 (Gemm/MatMul features, tokens) has a single
row, the whole tensor. ``RowRule`` says how many input rows an op needs to emit
``r`` output rows:

  window     Conv and pools (registry categories conv, pool): h_in = min((r - 1)·stride + k_eff, H_in),
             k_eff = dilation·(k - 1) + 1 along H.
  transposed ConvTranspose: h_in = min(ceil((r - 1 + k_eff) / stride), H_in).
  resize     Resize/Upsample by a factor f = H_out / H_in: h_in = min(ceil(r / f) + 1, H_in)
             (one extra row for linear interpolation).
  same       row-preserving ops: elementwise and broadcasting ops, LayerNormalization
             or Softmax over the last axis, Concat/Split/Slice not along the row axis,
             Reshape/Transpose/Squeeze/Unsqueeze/Identity that keep the last two axes:
             h_in = min(r, H_in).
  accumulate spatial reductions (GlobalAveragePool/GlobalMaxPool, Reduce* over the
             row axis): the op consumes one row at a time into an accumulator,
             h_in = 1, but its output exists only after its whole input was consumed.
             The op is a *barrier*; see ``fuser.fusion.cost`` for what that costs.
  full       everything else (Flatten or a Reshape that mixes rows into features,
             Gemm/MatMul on flattened features, Softmax over rows, ops along the row
             axis, unknown ops): the whole input is buffered, h_in = H_in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fuser.analysis import node_weights
from fuser.ir import FuserError, Graph, Node, Value
from fuser.ir.ops import Category, category, is_opaque, ops_in, reduction_axes

# Op kinds come from the op registry (fuser.ir.ops); the row rules add only what a
# category does not say: which axis an op works along.
ROW_PRESERVING_NORMS = frozenset({"BatchNormalization", "InstanceNormalization"})  # per channel
ELEMENTWISE = ops_in(Category.ELEMENTWISE) | ROW_PRESERVING_NORMS
GLOBAL_POOLS = frozenset(op for op in ops_in(Category.REDUCTION) if op.startswith("Global"))
REDUCTIONS = frozenset(op for op in ops_in(Category.REDUCTION) if op.startswith("Reduce"))
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})
LAST_AXIS_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax"})
AXIS_OPS = frozenset({"Concat", "Split", "Slice", "Gather"})


@dataclass(frozen=True)
class RowRule:
    """Input rows an op needs per ``r`` output rows (see the module docstring)."""

    kind: str  # window | transposed | resize | same | accumulate | full
    kernel: int = 1
    stride: int = 1
    scale: float = 1.0

    def rows(self, r: int, height: int) -> int:
        if height <= 1:
            return 1
        if self.kind == "same":
            need = r
        elif self.kind == "window":
            need = (r - 1) * self.stride + self.kernel
        elif self.kind == "accumulate":
            need = 1
        elif self.kind == "transposed":
            need = math.ceil((r - 1 + self.kernel) / self.stride)
        elif self.kind == "resize":
            need = math.ceil(r / self.scale) + 1
        else:
            need = height
        return max(1, min(need, height))


FULL = RowRule("full")
SAME = RowRule("same")


def row_height(v: Value) -> int:
    """Rows of a tensor: shape[-2] for rank >= 4, else 1 (the whole tensor is one row)."""
    shape = v.shape or ()
    return int(shape[-2]) if len(shape) >= 4 else 1


def row_rule(node: Node, index: int) -> RowRule:
    """How op ``node`` consumes the rows of its data input ``index``."""
    x, y = node.inputs[index], node.outputs[0]
    h_in = row_height(x)
    if h_in <= 1:
        return FULL  # one row: the whole tensor, whatever the op
    rank_in, rank_out = len(x.shape), len(y.shape or ())
    keeps_rows = rank_out >= 4 and row_height(y) == h_in
    op = node.op
    kind = category(op)
    if kind in (Category.CONV, Category.POOL) and index == 0 and rank_in == 4:
        kernel = node.attr("kernel_shape") or (
            list(node.inputs[1].shape[2:]) if kind is Category.CONV else [1]
        )
        dilation = (node.attr("dilations") or [1] * len(kernel))[0]
        stride = (node.attr("strides") or [1] * len(kernel))[0]
        rule = "transposed" if op == "ConvTranspose" else "window"
        return RowRule(rule, dilation * (int(kernel[0]) - 1) + 1, int(stride))
    if op in ("Resize", "Upsample") and index == 0 and rank_out >= 4:
        return RowRule("resize", scale=row_height(y) / h_in)
    if op in GLOBAL_POOLS:
        return RowRule("accumulate")
    if op in REDUCTIONS and index == 0:
        axes = reduction_axes(node, rank_in)
        if axes is None or rank_in - 2 in axes:
            return RowRule("accumulate")
        return SAME if keeps_rows else FULL
    if not keeps_rows:
        return FULL
    if op in ELEMENTWISE:
        return SAME
    if op in LAST_AXIS_OPS:
        axis = int(node.attr("axis", -1)) % rank_in
        return SAME if axis == rank_in - 1 else FULL
    if op in AXIS_OPS:
        axis = int(node.attr("axis", 0)) % rank_in
        if op == "Slice":
            axes = _slice_axes(node, rank_in)
            return SAME if rank_in - 2 not in axes else FULL
        return SAME if axis != rank_in - 2 else FULL
    if op in RESHAPES:
        if op == "Transpose":
            perm = node.attr("perm") or list(reversed(range(rank_in)))
            return SAME if list(perm[-2:]) == [rank_in - 2, rank_in - 1] else FULL
        return SAME if tuple(x.shape[-2:]) == tuple(y.shape[-2:]) else FULL
    if op == "MatMul" and index == 0:
        return SAME  # rows of A map to rows of A @ B
    return FULL


def _slice_axes(node: Node, rank: int) -> list[int]:
    axes = node.input(3)
    if axes is not None and axes.is_const:
        return [int(a) % rank for a in axes.const.reshape(-1)]
    starts = node.input(1)
    n = starts.numel if starts is not None else rank
    return list(range(n))


def is_barrier(node: Node) -> bool:
    """True for spatial reductions: their output exists only after all input rows."""
    return any(
        row_rule(node, i).kind == "accumulate"
        for i, v in enumerate(node.inputs)
        if v is not None and not v.is_const
    )


# per byte k of a mask and its value: the bit indices it holds (masks of up to TABLE_BITS ops)
_TABLE_BYTES = 64
TABLE_BITS = 8 * _TABLE_BYTES
CLOSURE_MATRIX_OPS = 1024  # FusionGraph.closure_matrices: two n × n float arrays (16 MB at this n)
_BYTE_BITS = [
    [tuple(8 * k + i for i in range(8) if b >> i & 1) for b in range(256)] for k in range(_TABLE_BYTES)
]


def bits(mask: int) -> list[int]:
    """Indices of the set bits of ``mask``, ascending (ops of a group in topological order)."""
    width = (mask.bit_length() + 7) // 8
    if width <= _TABLE_BYTES:  # a table lookup per byte: this runs for every new group
        out: list[int] = []
        for k, byte in enumerate(mask.to_bytes(width, "little")):
            if byte:
                out += _BYTE_BITS[k][byte]
        return out
    if mask.bit_count() > 32:  # numpy wins on big sets
        raw = np.frombuffer(mask.to_bytes((mask.bit_length() + 7) // 8, "little"), np.uint8)
        return np.flatnonzero(np.unpackbits(raw, bitorder="little")).tolist()
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def mask_of(indices) -> int:
    """The bitmask of op (or tensor) ``indices``; big sets through numpy (no n-bit int per index)."""
    indices = list(indices)
    if len(indices) <= 16:
        m = 0
        for i in indices:
            m |= 1 << i
        return m
    flags = np.zeros(max(indices) + 1, np.uint8)
    flags[indices] = 1
    return int.from_bytes(np.packbits(flags, bitorder="little").tobytes(), "little")


@dataclass
class FusionGraph:
    """Ops, tensors and edges of a Graph, precomputed for fast group evaluation.

    Sizes are in elements; cost models multiply by their element size.
    """

    graph: Graph
    names: list[str]
    ops: list[str]
    weight_numel: list[int]  # per op: elements of its weights
    weight_ids: list[tuple[int, ...]]  # per op: ids of its weight Values (for sharing)
    weight_numel_by_id: dict[int, int]
    shared_weights: bool  # some weight Value feeds several ops
    op_inputs: list[list[tuple[int, RowRule]]]  # per op: (tensor, rule) for data inputs
    op_outputs: list[list[int]]  # per op: tensors it produces
    op_input_mask: list[int]  # per op: bitmask over tensors it reads
    barrier_mask: int
    tensor_names: list[str]
    tensor_numel: list[int]
    tensor_height: list[int]
    tensor_row_numel: list[int]
    tensor_producer: list[int]  # -1 for graph inputs
    tensor_consumer_mask: list[int]
    tensor_is_output: list[bool]
    preds: list[list[int]]  # distinct producer ops, ascending
    succs: list[list[int]]
    pred_mask: list[int]
    succ_mask: list[int]
    edges: list[tuple[int, int]]  # (producer, consumer), sorted
    edge_tensors: dict[tuple[int, int], list[int]]
    edge_index: dict[tuple[int, int], int] = field(default_factory=dict)
    edge_array: np.ndarray | None = None  # edges as an (E, 2) array
    _anc: list[int] | None = None
    _desc: list[int] | None = None
    _convex_memo: dict[int, tuple[int, ...]] = field(default_factory=dict)
    _related_masks: list[int] | None = None
    _up_closed: list[int] | None = None
    _down_closed: list[int] | None = None
    _closure_matrices: tuple[np.ndarray, np.ndarray] | None = None
    images: int = 1  # tensor sizes are of one image of a batch of this many (build_fusion_graph)
    # per op of a graph of layers (``build_fusion_graph(layers=True)``): the graph's ops it
    # stands for, as (index in graph order, name); None: each op is one of the graph's
    members: list[list[tuple[int, str]]] | None = None
    op_level: FusionGraph | None = None  # a graph of layers: the graph of single ops it condenses

    def __post_init__(self):
        self.n = len(self.names)
        self.all_mask = (1 << self.n) - 1
        self._name_index = {name: i for i, name in enumerate(self.names)}
        for i, member in enumerate(self.members or ()):
            self._name_index.update((name, i) for _, name in member)

    def nbr_mask(self, i: int) -> int:
        return self.pred_mask[i] | self.succ_mask[i]

    def neighbours(self, mask: int) -> int:
        """The ops joined by an edge to an op of ``mask`` (ops of ``mask`` among them when
        they touch)."""
        near = 0
        for i in bits(mask):
            near |= self.pred_mask[i] | self.succ_mask[i]
        return near

    # ---- reachability -------------------------------------------------------------
    def ancestors(self) -> list[int]:
        """Per op: bitmask of its strict ancestors."""
        if self._anc is None:
            anc = [0] * self.n
            for i in range(self.n):
                for p in self.preds[i]:
                    anc[i] |= anc[p] | (1 << p)
            self._anc = anc
        return self._anc

    def descendants(self) -> list[int]:
        """Per op: bitmask of its strict descendants."""
        if self._desc is None:
            desc = [0] * self.n
            for i in reversed(range(self.n)):
                for s in self.succs[i]:
                    desc[i] |= desc[s] | (1 << s)
            self._desc = desc
        return self._desc

    # ---- group structure -------------------------------------------------------
    def _component(self, start: int, within: int) -> int:
        """The ops of ``within`` weakly connected to the op bit ``start`` (a BFS on bitmasks)."""
        seen, frontier = start, start
        while frontier:
            frontier = self.neighbours(frontier) & within & ~seen
            seen |= frontier
        return seen

    def is_connected(self, mask: int) -> bool:
        """Whether the ops of ``mask`` are weakly connected through edges among them."""
        return mask != 0 and self._component(mask & -mask, mask) == mask

    def components(self, mask: int) -> list[int]:
        """Weakly connected components of ``mask``, ordered by their first op."""
        out = []
        rest = mask
        while rest:
            seen = self._component(rest & -rest, rest)
            out.append(seen)
            rest &= ~seen
        return out

    def inner_edges(self, mask: int) -> list[tuple[int, int]]:
        return [(u, v) for u in bits(mask) for v in self.succs[u] if mask >> v & 1]

    def up_closed(self) -> list[int]:
        """Per op: itself and its ancestors (``closure_up`` before the AND)."""
        if self._up_closed is None:
            self._up_closed = [a | 1 << i for i, a in enumerate(self.ancestors())]
        return self._up_closed

    def down_closed(self) -> list[int]:
        """Per op: itself and its descendants (``closure_down`` before the AND)."""
        if self._down_closed is None:
            self._down_closed = [d | 1 << i for i, d in enumerate(self.descendants())]
        return self._down_closed

    def closure_matrices(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``up_closed`` and ``down_closed`` as 0/1 float rows (n × n), for sums over many
        closures in one product; None past CLOSURE_MATRIX_OPS ops (n² memory)."""
        if self.n > CLOSURE_MATRIX_OPS:
            return None
        if self._closure_matrices is None:
            self._closure_matrices = (
                self.member_matrix(self.up_closed()).astype(np.float64),
                self.member_matrix(self.down_closed()).astype(np.float64),
            )
        return self._closure_matrices

    def closure_up(self, op: int, mask: int) -> int:
        """``op`` and its ancestors inside the convex set ``mask``.

        Convex: no path leaves ``mask`` and comes back. Every group of a legal plan
        is convex (such a path would be a cycle of groups), and so is every down-set
        or up-set of a convex group, so the closures are plain bitmask ANDs.
        """
        return self.up_closed()[op] & mask

    def closure_down(self, op: int, mask: int) -> int:
        """``op`` and its descendants inside the convex set ``mask``."""
        return self.down_closed()[op] & mask

    def convex_components(self, mask: int) -> list[int]:
        """Weakly connected components of the convex set ``mask``: inside it, an op is
        connected to all its ancestors and descendants, so components grow by whole
        closures rather than edge by edge. Memoised: the splitter's cuts of different
        groups often share a side."""
        found = self._convex_memo.get(mask)
        if found is None:
            found = self._convex_memo[mask] = tuple(self._convex_components(mask))
        return list(found)

    def _convex_components(self, mask: int) -> list[int]:
        related = self._related()
        out = []
        rest = mask
        while rest:
            start = rest & -rest
            seen, frontier = start, start
            while frontier:
                grow = 0
                while frontier:  # the bits of the frontier, inline: this loop is hot
                    low = frontier & -frontier
                    grow |= related[low.bit_length() - 1]
                    frontier ^= low
                frontier = grow & rest & ~seen
                seen |= frontier
            out.append(seen)
            rest &= ~seen
        return out

    def _related(self) -> list[int]:
        """Per op: its ancestors and descendants (the ops a convex set links it to)."""
        if self._related_masks is None:
            self._related_masks = [a | d for a, d in zip(self.ancestors(), self.descendants())]
        return self._related_masks

    def member_vector(self, mask: int) -> np.ndarray:
        """``mask`` as a 0/1 vector over ops (for numpy sums over big groups)."""
        return self.member_matrix([mask])[0]

    def member_matrix(self, masks: list[int]) -> np.ndarray:
        """``masks`` as rows of 0/1 over ops (one numpy pass for many sums)."""
        width = (self.n + 7) // 8
        raw = np.frombuffer(b"".join(m.to_bytes(width, "little") for m in masks), np.uint8)
        return np.unpackbits(raw.reshape(len(masks), width), axis=1, count=self.n, bitorder="little")

    def layer_kernels(self) -> list[int]:
        """Per-layer fusion, what TVM's FuseOps and ONNX Runtime do without a plan, as group
        masks: an elementwise op joins the kernel of the producer of an input that it alone reads
        (conv -> bias -> ReLU; a residual Add into the conv before it), or, failing that, the one
        kernel all its inputs come from (SiLU's ``x * sigmoid(x)``), when its other inputs are
        made before that kernel's first op (so kernels keep a topological order). An opaque op
        takes none, and an op whose output is a graph output or one of several outputs ends its
        kernel."""
        owner = list(range(self.n))  # each kernel is named by its first op, its anchor
        for i, op in enumerate(self.ops):
            if op not in ELEMENTWISE:
                continue
            tensors = [t for t, _ in self.op_inputs[i]]
            producers = [self.tensor_producer[t] for t in tensors]
            if not producers or any(p >= 0 and is_opaque(self.ops[p]) for p in producers):
                continue
            extends = [
                p
                for t, p in zip(tensors, producers)
                if p >= 0
                and self.tensor_consumer_mask[t] == 1 << i
                and not self.tensor_is_output[t]
                and len(self.op_outputs[p]) == 1
            ]
            kernels = {owner[p] for p in producers if p >= 0}
            if not extends and len(kernels) == 1 and min(producers) >= 0:
                extends = [producers[0]]
            for p in extends:
                anchor = owner[p]
                if all(q < anchor or owner[q] == anchor for q in producers):
                    owner[i] = anchor
                    break
        kernels: dict[int, int] = {}
        for i, k in enumerate(owner):
            kernels[k] = kernels.get(k, 0) | 1 << i
        return list(kernels.values())

    def group_names(self, mask: int) -> list[str]:
        """The graph's ops in ``mask``, in graph order."""
        if self.members is None:
            return [self.names[i] for i in bits(mask)]
        return [name for _, name in sorted(m for i in bits(mask) for m in self.members[i])]

    def index_of(self, name: str) -> int:
        try:
            return self._name_index[name]
        except KeyError:
            raise FuserError(f"{self.graph.source}: no op named '{name}' in {self.graph.name}") from None


def image_count(graph: Graph) -> int:
    """The batch of ``graph``: the leading dim that all its inputs share (rank 2 or more), else 1."""
    leading = {
        v.shape[0] if v.shape is not None and len(v.shape) >= 2 and isinstance(v.shape[0], int) else 0
        for v in graph.inputs
    }
    return max(leading.pop(), 1) if len(leading) == 1 else 1


# The largest tensor fusion plans (2⁴⁰ elements, 1 TiB at one byte each): far above any CNN's
# feature maps, and low enough that DRAM sums over thousands of tensors stay within the
# int64 arrays the search uses.
MAX_PLANNED_ELEMENTS = 1 << 40


def check_plannable(graph: Graph, v: Value) -> None:
    """Refuse a tensor fusion cannot plan: one without elements (a row holds nothing) or one
    over ``MAX_PLANNED_ELEMENTS``."""
    if 0 < v.numel <= MAX_PLANNED_ELEMENTS:
        return
    node = v.producer
    holder = f"node '{node.name}' ({node.op}) output" if node is not None else "input"
    shape = "x".join(map(str, v.shape))
    if v.numel == 0:
        problem = "has no elements; fusion needs non-empty feature maps: fix the model's zero dims"
    else:
        problem = (
            f"has {v.numel:,} elements, over fusion's limit of {MAX_PLANNED_ELEMENTS:,}; "
            "give a smaller --input-shape"
        )
    raise FuserError(f"{graph.source}: {holder} '{v.name}' of shape {shape} {problem}")


def build_fusion_graph(graph: Graph, per_image: bool = True, layers: bool = False) -> FusionGraph:
    """Index ``graph`` (all of ``graph.nodes``, in their topological order).

    ``per_image``: sizes are those of one image of the batch (``FusionGraph.images`` of them),
    because fuser's group kernels tile images outermost (a tile holds one image's rows): the
    buffer a group needs is one image's, and a plan made for one image is the plan at any
    batch. A tensor whose leading dim is not a multiple of the batch keeps its whole size.
    ``per_image=False`` plans the whole batch as one image.

    ``layers``: each op with the elementwise ops that only extend it is one op of the graph
    (``FusionGraph.layer_kernels``, ``members``), as a compiler fuses them whatever the
    buffer: a plan over layers never moves more than layer fusion."""
    nodes = graph.nodes
    images = image_count(graph) if per_image else 1
    op_index = {id(n): i for i, n in enumerate(nodes)}
    tensor_index: dict[int, int] = {}
    t_names, t_numel, t_height, t_row, t_prod, t_out = [], [], [], [], [], []
    outputs = {id(v) for v in graph.outputs}

    def tensor(v: Value) -> int:
        key = id(v)
        if key not in tensor_index:
            if not v.is_static:
                raise FuserError(
                    f"{graph.source}: tensor {v.name} has no static shape; "
                    "fix dynamic dims with --input-shape"
                )
            check_plannable(graph, v)
            tensor_index[key] = len(t_names)
            height = row_height(v)
            numel = v.numel // images if images > 1 and v.shape and v.shape[0] % images == 0 else v.numel
            t_names.append(v.name)
            t_numel.append(numel)
            t_height.append(height)
            t_row.append(numel // height)
            t_prod.append(op_index.get(id(v.producer), -1) if v.producer is not None else -1)
            t_out.append(key in outputs)
        return tensor_index[key]

    for v in graph.inputs:
        tensor(v)
    n = len(nodes)
    weight_ids, weight_by_id = [()] * n, {}
    op_inputs: list[list[tuple[int, RowRule]]] = [[] for _ in range(n)]
    op_outputs: list[list[int]] = [[] for _ in range(n)]
    barrier_mask = 0
    for i, node in enumerate(nodes):
        for v in node.outputs:
            op_outputs[i].append(tensor(v))
        weights = node_weights(node)
        weight_ids[i] = tuple(id(v) for v, _ in weights)
        weight_by_id.update((id(v), v.numel) for v, _ in weights)
        for k, v in enumerate(node.inputs):
            if v is not None and not v.is_const:  # weights and configuration constants cost nothing
                op_inputs[i].append((tensor(v), row_rule(node, k)))
        if is_barrier(node):
            barrier_mask |= 1 << i
    fg = _indexed(
        graph,
        [nd.name for nd in nodes],
        [nd.op for nd in nodes],
        weight_ids,
        weight_by_id,
        op_inputs,
        op_outputs,
        barrier_mask,
        (t_names, t_numel, t_height, t_row, t_prod, t_out),
        images,
    )
    return _layered(fg) if layers else fg


def _indexed(
    graph,
    names,
    ops,
    weight_ids,
    weight_by_id,
    op_inputs,
    op_outputs,
    barrier_mask,
    tensors,
    images,
    members=None,
) -> FusionGraph:
    """The FusionGraph of ops given by their weights, (tensor, rule) inputs and outputs; tensors
    as (names, numel, height, row numel, producer, is graph output) lists."""
    t_names, t_numel, t_height, t_row, t_prod, t_out = tensors
    n = len(names)
    t_cons = [0] * len(t_names)
    preds: list[set[int]] = [set() for _ in range(n)]
    succs: list[set[int]] = [set() for _ in range(n)]
    edge_tensors: dict[tuple[int, int], list[int]] = {}
    for i, ins in enumerate(op_inputs):
        for t, _ in ins:
            t_cons[t] |= 1 << i
            p = t_prod[t]
            if p >= 0:
                preds[i].add(p)
                succs[p].add(i)
                edge_tensors.setdefault((p, i), []).append(t)
    weight_users: dict[int, int] = {}
    for ids in weight_ids:
        for w in ids:
            weight_users[w] = weight_users.get(w, 0) + 1
    pred_l = [sorted(x) for x in preds]
    succ_l = [sorted(x) for x in succs]
    edges = sorted(edge_tensors)
    fg = FusionGraph(
        graph=graph,
        names=names,
        ops=ops,
        weight_numel=[sum(weight_by_id[w] for w in ids) for ids in weight_ids],
        weight_ids=weight_ids,
        weight_numel_by_id=weight_by_id,
        shared_weights=any(c > 1 for c in weight_users.values()),
        op_inputs=op_inputs,
        op_outputs=op_outputs,
        op_input_mask=[mask_of(t for t, _ in ins) for ins in op_inputs],
        barrier_mask=barrier_mask,
        tensor_names=t_names,
        tensor_numel=t_numel,
        tensor_height=t_height,
        tensor_row_numel=t_row,
        tensor_producer=t_prod,
        tensor_consumer_mask=t_cons,
        tensor_is_output=t_out,
        preds=pred_l,
        succs=succ_l,
        pred_mask=[mask_of(p) for p in pred_l],
        succ_mask=[mask_of(x) for x in succ_l],
        edges=edges,
        edge_tensors=edge_tensors,
        images=images,
        members=members,
    )
    fg.edge_index = {e: k for k, e in enumerate(edges)}
    fg.edge_array = np.array(edges, dtype=np.int64).reshape(-1, 2)
    fg.ancestors(), fg.descendants()
    return fg


def _layered(fg: FusionGraph) -> FusionGraph:
    """``fg`` with each of its ``layer_kernels`` one op: the tensors inside a layer are gone
    (a compiler computes an elementwise tail in registers, as its op emits rows), its inputs
    keep the row rules of the ops that read them, and it emits what is read outside it."""
    layers = sorted(fg.layer_kernels(), key=lambda m: m & -m)  # by anchor: a topological order
    layer_of = {}
    for j, mask in enumerate(layers):
        for i in bits(mask):
            layer_of[i] = j
    kept, tensors = {}, ([], [], [], [], [], [])

    def tensor(t: int) -> int:
        if t not in kept:
            kept[t] = len(tensors[0])
            p = fg.tensor_producer[t]
            for column, value in zip(
                tensors,
                (
                    fg.tensor_names[t],
                    fg.tensor_numel[t],
                    fg.tensor_height[t],
                    fg.tensor_row_numel[t],
                    layer_of[p] if p >= 0 else -1,
                    fg.tensor_is_output[t],
                ),
            ):
                column.append(value)
        return kept[t]

    for t, p in enumerate(fg.tensor_producer):
        if p < 0:
            tensor(t)
    op_inputs, op_outputs, weight_ids, members, barrier_mask = [], [], [], [], 0
    for j, mask in enumerate(layers):
        ops = bits(mask)
        op_inputs.append(
            [
                (tensor(t), rule)
                for i in ops
                for t, rule in fg.op_inputs[i]
                if fg.tensor_producer[t] not in ops
            ]
        )
        op_outputs.append(
            [
                tensor(t)
                for i in ops
                for t in fg.op_outputs[i]
                if fg.tensor_is_output[t] or fg.tensor_consumer_mask[t] & ~mask
            ]
        )
        weight_ids.append(tuple(dict.fromkeys(w for i in ops for w in fg.weight_ids[i])))
        members.append([(i, fg.names[i]) for i in ops])
        if fg.barrier_mask & mask:
            barrier_mask |= 1 << j
    layered = _indexed(
        fg.graph,
        [fg.names[bits(m)[0]] for m in layers],
        [fg.ops[bits(m)[0]] for m in layers],
        weight_ids,
        fg.weight_numel_by_id,
        op_inputs,
        op_outputs,
        barrier_mask,
        tensors,
        fg.images,
        members,
    )
    layered.op_level = fg
    return layered
