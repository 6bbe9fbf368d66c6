"""The learned explainer: a small GNN validity classifier and its gradient explanation.

Following the paper, a graph neural network learns whether a fusion group fits
the buffer, and the gradient of its "invalid" logit tells which ops and edges are
to blame.

**Data.** Random connected, convex groups of the model's own op graph (grown from
a random op by random neighbours, closed under paths), each labelled by the cost
model for several buffer sizes (32 KB ... 1 MB): fits iff F_β < β. Op features are
taken relative to β (log2 of bytes/β) so one network serves every buffer size:
weights, one output row, the whole output, one input row, the whole input, the
kernel and stride along rows, the row rule (window, same, full, accumulate,
other), barrier, whether the op reads from outside the group or writes out of it,
and its in- and out-degree inside the group.

**Network.** An embedding, three rounds of message passing with separate weights
for messages from producers and from consumers (rows are demanded backward,
barriers act forward), a per-op "log2 share of the buffer" head and a
log-sum-exp readout: z ≈ log2(F_β/β), logit(fits) = −s·z + b.

**Explanation.** Node and edge masks m (all 1) scale each op's share and each
message; the gradient of the invalid logit with respect to them (saliency at the
full graph) scores ops and edges. Op scores are rescaled to sum to F_β.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .cost import CostModel, make_cost_model
from .explain import Explainer, Explanation
from .opgraph import FusionGraph, bits

TRAIN_BUFFERS = tuple(k << 10 for k in (32, 64, 128, 256, 512, 1024))
RULE_KINDS = ("window", "same", "full", "accumulate")
N_FEATURES = 17


def op_features(cost: CostModel, mask: int, beta: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(features [N, F], edges [E, 2] as positions (producer, consumer), ops) of a group."""
    fg, e = cost.fg, cost.element_bytes
    ops = bits(mask)
    pos = {op: k for k, op in enumerate(ops)}
    x = np.zeros((len(ops), N_FEATURES), np.float32)
    edges = []

    def rel(nbytes: float) -> float:
        return math.log2((nbytes + 1) / beta)

    for k, op in enumerate(ops):
        outs = fg.op_outputs[op]
        ins = fg.op_inputs[op]
        rule = ins[0][1] if ins else None
        x[k, 0] = rel(fg.weight_numel[op] * e)
        x[k, 1] = rel(sum(fg.tensor_row_numel[t] for t in outs) * e)
        x[k, 2] = rel(sum(fg.tensor_numel[t] for t in outs) * e)
        x[k, 3] = rel(sum(fg.tensor_row_numel[t] for t, _ in ins) * e)
        x[k, 4] = rel(sum(fg.tensor_numel[t] for t, _ in ins) * e)
        x[k, 5] = (rule.kernel if rule else 1) / 8
        x[k, 6] = (rule.stride if rule else 1) / 4
        kind = rule.kind if rule else "full"
        x[k, 7 + (RULE_KINDS.index(kind) if kind in RULE_KINDS else len(RULE_KINDS))] = 1
        x[k, 12] = fg.barrier_mask >> op & 1
        x[k, 13] = any(fg.tensor_producer[t] < 0 or not mask >> fg.tensor_producer[t] & 1 for t, _ in ins)
        x[k, 14] = any(fg.tensor_is_output[t] or fg.tensor_consumer_mask[t] & ~mask for t in outs)
        inner_in = [p for p in fg.preds[op] if p in pos]
        inner_out = [s for s in fg.succs[op] if s in pos]
        x[k, 15] = len(inner_in) / 4
        x[k, 16] = len(inner_out) / 4
        edges += [(k, pos[s]) for s in inner_out]
    return x, np.array(edges, dtype=np.int64).reshape(-1, 2), ops


def sample_groups(fg: FusionGraph, count: int, rng: random.Random, max_size: int = 48) -> list[int]:
    """Random connected, convex groups of up to about ``max_size`` ops."""
    anc, desc = fg.ancestors(), fg.descendants()
    out = []
    while len(out) < count:
        target = int(round(math.exp(rng.uniform(math.log(2), math.log(max_size)))))
        start = rng.randrange(fg.n)
        group, frontier = 1 << start, fg.nbr_mask(start)
        while group.bit_count() < target and frontier:
            candidates = bits(frontier)
            pick = candidates[rng.randrange(len(candidates))]
            group |= 1 << pick
            frontier = (frontier | fg.nbr_mask(pick)) & ~group
        reach_down = reach_up = 0
        for i in bits(group):
            reach_down |= desc[i]
            reach_up |= anc[i]
        out.append(group | (reach_down & reach_up))  # convex hull: add the ops in between
    return out


def _torch():
    import torch

    return torch


@contextmanager
def one_thread():
    """Run torch on one thread: these tensors are tiny, and on a loaded machine a
    second OpenMP thread spinning for a core slows every op tenfold."""
    torch = _torch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_model(hidden: int = 48, rounds: int = 3):
    torch = _torch()
    nn = torch.nn

    class ValidityGNN(nn.Module):
        """Message passing over a batch of groups (one disjoint graph); returns
        logit(fits) per group and each op's predicted log2 share of the buffer."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(N_FEATURES, hidden)
            self.own = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(rounds))
            self.from_producers = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(rounds))
            self.from_consumers = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(rounds))
            self.share = nn.Sequential(
                nn.Linear(hidden + N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )
            self.scale = nn.Parameter(torch.tensor(4.0))
            self.bias = nn.Parameter(torch.tensor(0.0))

        def forward(self, batch: GroupBatch, node_mask=None, edge_mask=None):
            x, src, dst = batch.x, batch.src, batch.dst
            weight = edge_mask.unsqueeze(-1) if edge_mask is not None else 1.0
            h = torch.relu(self.embed(x))
            for own, fp, fc in zip(self.own, self.from_producers, self.from_consumers):
                from_p = torch.zeros_like(h).index_add_(0, dst, h[src] * weight)
                from_c = torch.zeros_like(h).index_add_(0, src, h[dst] * weight)
                h = torch.relu(own(h) + fp(from_p) + fc(from_c))
            log_share = self.share(torch.cat([h, x], dim=-1)).squeeze(-1)  # log2(op's bytes / β)
            if node_mask is not None:
                log_share = log_share + torch.log2(node_mask)
            padded = torch.full((batch.size, batch.longest), -1e4).index_put(
                (batch.graph, batch.position), log_share
            )
            z = torch.logsumexp(padded * math.log(2), dim=1) / math.log(2)  # ≈ log2(F_β / β)
            return -self.scale.abs() * z + self.bias, log_share

    return ValidityGNN()


@dataclass
class GroupBatch:
    """Groups as one disjoint graph: features, edges (src -> dst), and each op's group and slot."""

    x: object
    src: object
    dst: object
    graph: object
    position: object
    size: int
    longest: int


def _batch(samples) -> GroupBatch:
    torch = _torch()
    xs, srcs, dsts, graphs, positions = [], [], [], [], []
    offset = 0
    for k, (feat, edges, *_rest) in enumerate(samples):
        n = len(feat)
        xs.append(torch.from_numpy(feat))
        if len(edges):
            srcs.append(torch.from_numpy(edges[:, 0] + offset))
            dsts.append(torch.from_numpy(edges[:, 1] + offset))
        graphs.append(torch.full((n,), k, dtype=torch.long))
        positions.append(torch.arange(n))
        offset += n
    empty = torch.zeros(0, dtype=torch.long)
    return GroupBatch(
        torch.cat(xs),
        torch.cat(srcs) if srcs else empty,
        torch.cat(dsts) if dsts else empty,
        torch.cat(graphs),
        torch.cat(positions),
        len(samples),
        max(len(s[0]) for s in samples),
    )


@dataclass
class TrainingReport:
    samples: int
    heldout: int
    train_accuracy: float
    heldout_accuracy: float
    valid_fraction: float
    buffers: tuple[int, ...]


def make_dataset(cost_models: list[CostModel], groups: list[int], rng: random.Random):
    """(features, edges, label) per group, each under one random buffer size."""
    data = []
    for g in groups:
        cost = cost_models[rng.randrange(len(cost_models))]
        x, edges, _ = op_features(cost, g, cost.buffer_bytes)
        data.append((x, edges, float(cost.cost(g).fits)))
    return data


def train_validity_gnn(
    fg: FusionGraph,
    style: str,
    element_bytes: int = 1,
    *,
    samples: int = 3000,
    epochs: int = 40,
    seed: int = 0,
    buffers=TRAIN_BUFFERS,
    heldout_fraction: float = 0.2,
):
    """Train the classifier on sampled groups of ``fg``; returns (model, TrainingReport)."""
    torch = _torch()
    rng = random.Random(seed)
    costs = [make_cost_model(fg, style, b, element_bytes) for b in buffers]
    data = make_dataset(costs, sample_groups(fg, samples, rng), rng)
    rng.shuffle(data)
    n_held = max(1, int(len(data) * heldout_fraction))
    held, train = data[:n_held], data[n_held:]
    # group samples of similar size into batches: less padding
    train.sort(key=lambda s: len(s[0]))
    batches = [train[i : i + 64] for i in range(0, len(train), 64)]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    tensors = [(_batch(b), torch.tensor([s[2] for s in b])) for b in batches]
    for _ in range(epochs):
        for k in torch.randperm(len(tensors), generator=generator).tolist():
            batch, y = tensors[k]
            optimizer.zero_grad()
            logit, _ = model(batch)
            loss_fn(logit, y).backward()
            optimizer.step()

    def accuracy(part):
        correct = 0
        with torch.no_grad():
            for i in range(0, len(part), 256):
                chunk = part[i : i + 256]
                logit, _ = model(_batch(chunk))
                correct += int(((logit > 0).float() == torch.tensor([s[2] for s in chunk])).sum())
        return correct / max(len(part), 1)

    report = TrainingReport(
        len(train),
        len(held),
        accuracy(train),
        accuracy(held),
        sum(s[2] for s in data) / len(data),
        tuple(buffers),
    )
    model.eval()
    return model, report


_TRAINED: dict[tuple, tuple] = {}


class GNNExplainer(Explainer):
    """Gradient saliency of a trained validity GNN (see the module docstring)."""

    name = "gnn"

    def __init__(self, cost: CostModel, model, report: TrainingReport):
        self.cost = cost
        self.model = model
        self.report = report

    @classmethod
    def for_cost_model(cls, cost: CostModel, seed: int = 0, **train_kw) -> GNNExplainer:
        """Train (or reuse, per graph, style and element size) the classifier."""
        fg = cost.fg
        key = (
            fg.graph.name,
            tuple(fg.names),
            tuple(fg.edges),
            cost.name,
            cost.element_bytes,
            seed,
            tuple(sorted(train_kw.items())),
        )
        if key not in _TRAINED:
            with one_thread():
                _TRAINED[key] = train_validity_gnn(fg, cost.name, cost.element_bytes, seed=seed, **train_kw)
        model, report = _TRAINED[key]
        return cls(cost, model, report)

    def predict_fits(self, mask: int) -> bool:
        torch = _torch()
        x, edges, _ = op_features(self.cost, mask, self.cost.buffer_bytes)
        with torch.no_grad(), one_thread():
            logit, _ = self.model(_batch([(x, edges)]))
        return bool(logit[0] > 0)

    def explain(self, mask: int) -> Explanation:
        torch = _torch()
        fg = self.cost.fg
        x, edges, ops = op_features(self.cost, mask, self.cost.buffer_bytes)
        node_mask = torch.ones(len(ops), requires_grad=True)
        edge_mask = torch.ones(len(edges), requires_grad=True)
        with one_thread():
            logit, _ = self.model(_batch([(x, edges)]), node_mask=node_mask, edge_mask=edge_mask)
            (-logit.sum()).backward()  # the "invalid" logit
        node_grad = node_mask.grad.clamp(min=0).numpy()
        edge_grad = {(int(a), int(b)): float(g) for (a, b), g in zip(edges, edge_mask.grad.numpy())}
        total = node_grad.sum()
        buffer = self.cost.cost(mask).buffer_bytes
        shares = node_grad / total if total > 0 else np.full(len(ops), 1 / len(ops))
        op_scores = {op: float(shares[k] * buffer) for k, op in enumerate(ops)}
        pos = {op: k for k, op in enumerate(ops)}
        edge_scores = {}
        for u in ops:
            for v in fg.succs[u]:
                if v in pos:
                    saliency = abs(edge_grad[(pos[u], pos[v])])
                    edge_scores[(u, v)] = (op_scores[u] + op_scores[v]) * (1 + saliency)
        return Explanation(op_scores, edge_scores)
