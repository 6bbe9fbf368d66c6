"""The data-free ``obs`` criterion: reconstruction damage and compensation without data.

In the spirit of OBSPA (Wang et al. 2024, "Structurally Prune Anything", arXiv 2403.18955):
removing input channels R of a layer y = W·a + b costs, after the best linear compensation
by the kept channels K, E‖W_R (a_R − â_R)‖²; with the channels' covariance Σ this is the
Optimal-Brain-Surgeon saliency Σ_rows W[row, c]² / (Σ⁻¹)_cc for one channel c, and the
compensation is W_K += W_R·B, b += W_R·(μ_R − B·μ_K), with B = Σ_RK·Σ_KK⁻¹ (the
regression of the removed channels on the kept ones). Both need only the activations' mean μ and
covariance Σ, which are estimated from the weights alone, by moment propagation:

  - graph inputs: mean 0, identity covariance (normalized data);
  - Conv / Gemm / MatMul (constant weight): μ' = W·μ + b, Σ' = Σ_taps W_t Σ W_tᵀ (spatial
    positions independent); ConvTranspose the same over the 1 / prod(strides) share of its
    taps that reach one output position on average; depthwise: Σ' = Σ ∘ (W Wᵀ); an input
    of unknown moments counts as mean 0, identity covariance;
  - BatchNormalization: its running statistics are the data's: μ' = β, var' = γ², with the
    correlation of the propagated Σ; LayerNormalization: the same with its scale and bias;
  - Relu, Clip(0, ·), HardSwish, Gelu: rectified Gaussian per channel (exact mean and
    variance), covariances scaled by the two channels' probabilities of being active;
  - Add of two activations: sums (branches independent); Add/Mul of a constant: shift/scale;
  - ops whose output channel axis carries exactly the input's labels (pools, Resize,
    Transpose, Identity, ...): unchanged; Concat / Split / Slice on channels: blocks.
Anything else has unknown moments. A channel's saliency is summed over every layer that
contracts it (Conv and ConvTranspose with group 1, Gemm, MatMul; a ConvTranspose's mean
compensation, a bias, is the average over output positions: exact at stride 1); layers
wider than ``MAX_DENSE`` inputs use the diagonal of Σ (no cross-channel compensation, the
mean is still compensated).
"""

from __future__ import annotations

import math

import numpy as np

from fuser.ir import Graph, Node, Value

from .deps import DependencyAnalysis, Member

MAX_DENSE = 4096  # widest input axis given a full covariance
DAMPING = 1e-2  # ridge on Σ_KK, relative to its mean variance
RECTIFIERS = {"Relu", "HardSwish", "Gelu"}
SAME_CHANNELS = {
    "Identity",
    "Dropout",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Resize",
    "Upsample",
    "Pad",
    "Cast",
    "Transpose",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "ReduceMean",
    "ReduceMax",
    "Expand",
}


class Moments:
    """Mean and covariance of the positions of one channel axis."""

    __slots__ = ("mean", "cov")

    def __init__(self, mean: np.ndarray, cov: np.ndarray):
        self.mean, self.cov = mean, cov  # cov: [C, C], or [C] (diagonal) when wide

    @classmethod
    def standard(cls, n: int) -> Moments:
        return cls(np.zeros(n), np.eye(n) if n <= MAX_DENSE else np.ones(n))

    @property
    def var(self) -> np.ndarray:
        return np.diag(self.cov) if self.cov.ndim == 2 else self.cov

    def correlation(self) -> np.ndarray:
        if self.cov.ndim == 1:
            return np.ones_like(self.cov)
        sd = np.sqrt(np.maximum(self.var, 1e-30))
        return self.cov / np.outer(sd, sd)

    def take(self, idx: np.ndarray) -> Moments:
        cov = self.cov[np.ix_(idx, idx)] if self.cov.ndim == 2 else self.cov[idx]
        return Moments(self.mean[idx], cov)


def _single_axis(analysis: DependencyAnalysis, v: Value) -> int | None:
    labels = analysis.labels_of(v)
    return next(iter(labels)) if len(labels) == 1 else None


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None or not v.is_const else v.const.astype(np.float64)


def _per_channel(c: np.ndarray, v: Value, axis: int, n: int) -> np.ndarray | None:
    """A broadcast constant as one value per position of ``v``'s ``axis``; None otherwise."""
    if c.size == 1:
        return np.full(n, float(c.reshape(-1)[0]))
    rank = len(v.shape)
    shape = (1,) * (rank - c.ndim) + c.shape
    if all(d == 1 for i, d in enumerate(shape) if i != axis) and shape[axis] == n:
        return c.reshape(-1)
    return None


def _linear(w_rows: np.ndarray, m_in: Moments, bias: np.ndarray | None, n_out: int, taps: int) -> Moments:
    """Moments of y = Σ_t W_t a (+ b); ``w_rows`` is [n_out·taps, C_in] (output-major)."""
    mean = w_rows.reshape(n_out, taps, -1).sum(axis=1) @ m_in.mean + (0 if bias is None else bias)
    if n_out > MAX_DENSE or m_in.cov.ndim == 1:
        var = ((w_rows**2) @ m_in.var).reshape(n_out, taps).sum(axis=1)
        return Moments(mean, var if n_out > MAX_DENSE else np.diag(var))
    # Σ_t W_t Σ W_tᵀ as two large products: (W Σ) reshaped [n_out, taps·C] times W ᵀ
    w32 = w_rows.astype(np.float32)
    ws = (w32 @ m_in.cov.astype(np.float32)).reshape(n_out, -1)
    cov = (ws @ w32.reshape(n_out, -1).T).astype(np.float64)
    return Moments(mean, (cov + cov.T) / 2)


def _rectify(m: Moments) -> Moments:
    """Moments of relu(a) for Gaussian a (per channel), covariances scaled by P(active)²."""
    sd = np.sqrt(np.maximum(m.var, 1e-30))
    z = m.mean / sd
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    mean = m.mean * cdf + sd * pdf
    second = (m.mean**2 + sd**2) * cdf + m.mean * sd * pdf
    var = np.maximum(second - mean**2, 0)
    if m.cov.ndim == 1:
        return Moments(mean, var)
    cov = m.cov * np.outer(cdf, cdf)
    np.fill_diagonal(cov, var)
    return Moments(mean, cov)


def _normalized(m_in: Moments | None, scale: np.ndarray, shift: np.ndarray) -> Moments:
    """Moments after a norm whose statistics are the data's: mean = shift, sd = |scale|."""
    n = len(scale)
    if m_in is None or m_in.cov.ndim == 1 or n > MAX_DENSE:
        var = scale**2
        return Moments(shift, var if n > MAX_DENSE else np.diag(var))
    corr = m_in.correlation()
    return Moments(shift, corr * np.outer(scale, scale))


def weight_rows(w: np.ndarray, axis: int, out_axis: int) -> tuple[np.ndarray, int, int]:
    """A weight as [rows, C_in] with rows output-major: (matrix, n_out, taps)."""
    moved = np.moveaxis(w, (out_axis, axis), (0, -1))
    n_out, n_in = moved.shape[0], moved.shape[-1]
    return moved.reshape(-1, n_in), n_out, moved.size // (n_out * n_in)


def _tap_share(node: Node) -> float:
    """The share of a layer's kernel taps that reach one output position on average: 1, but
    1 / prod(strides) for a ConvTranspose (each output gathers about k/s taps per dim)."""
    if node.op != "ConvTranspose":
        return 1.0
    return 1.0 / math.prod(node.attr("strides", [1] * (node.inputs[1].const.ndim - 2)))


def contraction(node: Node) -> tuple[int, int] | None:
    """(input axis, output axis) of the weight of a layer that contracts its input channels."""
    if node.op == "Conv" and node.attr("group", 1) == 1 and node.inputs[1].is_const:
        return 1, 0
    if node.op == "ConvTranspose" and node.attr("group", 1) == 1 and node.inputs[1].is_const:
        return 0, 1  # W [C_in, C_out, k...]
    if node.op == "Gemm" and not node.attr("transA", 0) and node.inputs[1].is_const:
        return (1, 0) if node.attr("transB", 0) else (0, 1)
    if node.op == "MatMul" and node.inputs[1].is_const and node.inputs[1].const.ndim == 2:
        return 0, 1
    return None


def propagate(graph: Graph, analysis: DependencyAnalysis) -> dict[int, Moments]:
    """Estimated moments of every activation with one channel axis, keyed by id(Value)."""
    known: dict[int, Moments] = {}

    def moments_in(v: Value, axis: int) -> Moments | None:
        return known.get(id(v)) if _single_axis(analysis, v) == axis else None

    for node in graph.nodes:
        y = node.outputs[0]
        ay = _single_axis(analysis, y)
        if ay is None:
            continue
        n = y.shape[ay]
        m = _moments_of(node, analysis, moments_in, ay, n)
        if m is not None and len(m.mean) == n:
            known[id(y)] = m
    return known


def _moments_of(node: Node, analysis: DependencyAnalysis, moments_in, ay: int, n: int):
    x = node.inputs[0]
    op = node.op
    ax = _single_axis(analysis, x) if x is not None and not x.is_const else None
    same = ax is not None and np.array_equal(
        analysis.labels_of(x)[ax], analysis.labels_of(node.outputs[0])[ay]
    )
    if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and contraction(node) is not None:
        in_axis, out_axis = contraction(node)
        w = node.inputs[1].const.astype(np.float64)
        x_axis = 1 if op != "MatMul" else len(x.shape) - 1
        m_in = moments_in(x, x_axis) or Moments.standard(x.shape[x_axis])
        rows, n_out, taps = weight_rows(w, in_axis, out_axis)
        bias = _const(node.input(2))
        if bias is not None:
            if op == "Gemm":
                bias = _per_channel(bias * node.attr("beta", 1.0), node.outputs[0], 1, n_out)
            else:
                bias = bias.reshape(-1) if bias.size == n_out else None
        if op == "Gemm" and node.attr("alpha", 1.0) != 1.0:
            rows = rows * node.attr("alpha", 1.0)
        m, share = _linear(rows, m_in, None, n_out, taps), _tap_share(node)
        return Moments(m.mean * share + (0 if bias is None else bias), m.cov * share)
    if op == "Conv" and node.attr("group", 1) == x.shape[1] == n:  # depthwise
        m_in = moments_in(x, 1) or Moments.standard(n)
        w = node.inputs[1].const.astype(np.float64).reshape(n, -1)
        b = _const(node.input(2))
        mean = w.sum(axis=1) * m_in.mean + (0 if b is None else b)
        cov = m_in.cov * (w @ w.T) if m_in.cov.ndim == 2 else m_in.cov * (w**2).sum(1)
        return Moments(mean, cov)
    if op == "BatchNormalization":
        gamma, beta = _const(node.input(1)), _const(node.input(2))
        return _normalized(moments_in(x, 1), np.abs(gamma), beta)
    if op == "LayerNormalization":
        gamma, beta = _const(node.input(1)), _const(node.input(2))
        if gamma is None or gamma.size != n:
            return None
        beta = np.zeros(n) if beta is None else beta.reshape(-1)
        return _normalized(moments_in(x, ay), np.abs(gamma.reshape(-1)), beta)
    if not same:
        if op == "Concat" and node.attr("axis") % len(node.outputs[0].shape) == ay:
            parts = [moments_in(v, ay) for v in node.inputs]
            if any(p is None for p in parts):
                return None
            mean = np.concatenate([p.mean for p in parts])
            if any(p.cov.ndim == 1 for p in parts) or n > MAX_DENSE:
                var = np.concatenate([p.var for p in parts])
                return Moments(mean, var if n > MAX_DENSE else np.diag(var))
            cov = np.zeros((n, n))
            o = 0
            for p in parts:
                k = len(p.mean)
                cov[o : o + k, o : o + k] = p.cov
                o += k
            return Moments(mean, cov)
        if op in ("Split", "Slice") and ax == ay and moments_in(x, ax) is not None:
            want = analysis.labels_of(node.outputs[0])[ay]
            have = analysis.labels_of(x)[ax]
            start = _find_run(have, want)
            return None if start is None else moments_in(x, ax).take(np.arange(start, start + n))
        return None
    m_in = moments_in(x, ax)
    if m_in is None:
        return None
    if op in SAME_CHANNELS:
        return m_in
    if op in RECTIFIERS or (op == "Clip" and _clip_at_zero(node)):
        return _rectify(m_in)
    if op in ("Add", "Sub", "Mul") and len(node.inputs) == 2:
        other = node.inputs[1]
        if not other.is_const:
            m_other = moments_in(other, ax)
            if op == "Add" and m_other is not None and other.shape == x.shape:
                return Moments(m_in.mean + m_other.mean, m_in.cov + m_other.cov)
            return None
        c = _per_channel(other.const.astype(np.float64), node.outputs[0], ay, n)
        if c is None:
            return None
        if op == "Add":
            return Moments(m_in.mean + c, m_in.cov)
        if op == "Sub":
            return Moments(m_in.mean - c, m_in.cov)
        cov = m_in.cov * np.outer(c, c) if m_in.cov.ndim == 2 else m_in.cov * c**2
        return Moments(m_in.mean * c, cov)
    return None


def _clip_at_zero(node: Node) -> bool:
    lo = _const(node.input(1))
    if lo is None:
        lo = node.attr("min")
    return lo is not None and float(np.asarray(lo).reshape(-1)[0]) == 0.0


def _find_run(have: np.ndarray, want: np.ndarray) -> int | None:
    n = len(want)
    for s in range(len(have) - n + 1):
        if have[s] == want[0] and np.array_equal(have[s : s + n], want):
            return s
    return None


# ---- saliency and compensation ------------------------------------------------------------
def _terminals(analysis: DependencyAnalysis) -> list[Member]:
    """The input-axis member of every layer that contracts its input channels."""
    out: dict[int, Member] = {}
    for m in analysis.members:
        if m.role == "in" and contraction(m.node) is not None and m.axis == contraction(m.node)[0]:
            out.setdefault(id(m.node), m)
    return list(out.values())


def _input_moments(m: Member, known: dict[int, Moments]) -> Moments:
    x = m.node.inputs[0]
    got = known.get(id(x))
    n = len(m.ids)
    return got if got is not None and len(got.mean) == n else Moments.standard(n)


def _precision_diag(cov: np.ndarray) -> np.ndarray:
    if cov.ndim == 1:
        return 1.0 / np.maximum(cov, 1e-12)
    damp = DAMPING * max(float(np.mean(np.diag(cov))), 1e-12)
    inv = np.linalg.inv((cov + damp * np.eye(len(cov))).astype(np.float32))
    return np.diag(inv).astype(np.float64)


def saliency(analysis: DependencyAnalysis, known: dict[int, Moments]) -> dict[int, np.ndarray]:
    """OBS saliency per channel, for every prunable group, keyed by group index."""
    lookup = {int(r): (g.index, k) for g in analysis.prunable_groups for k, r in enumerate(g.channels)}
    out = {g.index: np.zeros(g.size) for g in analysis.prunable_groups}
    for m in _terminals(analysis):
        in_axis, out_axis = contraction(m.node)
        rows, _, _ = weight_rows(m.value.const.astype(np.float64), in_axis, out_axis)
        prec = _precision_diag(_input_moments(m, known).cov)
        per_pos = (rows**2).sum(axis=0) / prec
        for pos, root in enumerate(analysis.root_of[m.ids].tolist()):
            hit = lookup.get(root)
            if hit is not None:
                out[hit[0]][hit[1]] += per_pos[pos]
    return out


def compensate(
    graph: Graph, analysis: DependencyAnalysis, known: dict[int, Moments], kept_raw: np.ndarray
) -> list[Member]:
    """Fold the removed inputs' predictable part into each contracting layer's kept weights
    and bias (new constants, same shapes, listed in ``node.meta['compensated']``). Returns
    bias members created for the slicer."""
    new_members: list[Member] = []
    for m in _terminals(analysis):
        keep = kept_raw[m.ids]
        if keep.all():
            continue
        node = m.node
        in_axis, out_axis = contraction(node)
        w = m.value.const.astype(np.float64)
        rows, n_out, taps = weight_rows(w, in_axis, out_axis)
        mom = _input_moments(m, known)
        k_idx, r_idx = np.flatnonzero(keep), np.flatnonzero(~keep)
        if len(k_idx) == 0:
            continue
        w_r = rows[:, r_idx]
        if mom.cov.ndim == 2:
            s_kk = mom.cov[np.ix_(k_idx, k_idx)]
            damp = DAMPING * max(float(np.mean(np.diag(s_kk))), 1e-12)
            beta = np.linalg.solve(
                (s_kk + damp * np.eye(len(k_idx))).astype(np.float32),
                mom.cov[np.ix_(k_idx, r_idx)].astype(np.float32),
            ).T
            beta = beta.astype(np.float64)
            rows = rows.copy()
            rows[:, k_idx] += w_r @ beta
            shift = mom.mean[r_idx] - beta @ mom.mean[k_idx]
        else:
            shift = mom.mean[r_idx]
        delta = (w_r @ shift).reshape(n_out, taps).sum(axis=1) * _tap_share(node)
        moved_shape = list(np.moveaxis(w, (out_axis, in_axis), (0, -1)).shape)
        new_w = np.moveaxis(rows.reshape(moved_shape), (0, -1), (out_axis, in_axis))
        _replace_const(graph, node, 1, new_w.astype(m.value.dtype), "obs")
        created = _add_bias(graph, analysis, node, delta)
        if created is not None:
            new_members.append(created)
    return new_members


def _replace_const(graph: Graph, node: Node, index: int, array: np.ndarray, tag: str) -> None:
    """Set input ``index`` of ``node`` to a new constant; ``node.meta['compensated']`` lists
    the inputs so replaced (``fuser.torchtools.prune_module`` writes them back to the module)."""
    while len(node.inputs) <= index:
        node.add_input(None)
    node.set_input(index, graph.const(array, f"{node.name}_{tag}"))
    done = node.meta.get("compensated", ())
    if index not in done:
        node.meta["compensated"] = (*done, index)  # a new tuple: copies of the graph share meta values


def _add_bias(graph: Graph, analysis: DependencyAnalysis, node: Node, delta: np.ndarray) -> Member | None:
    """Add ``delta`` (one value per output channel) to the layer's bias; a bias input made
    here gets a Member, so that pruning the layer's own outputs slices it too."""
    if not np.any(delta):
        return None
    y = node.outputs[0]
    dtype = node.inputs[1].dtype
    if node.op in ("Conv", "Gemm"):
        b = node.input(2)
        scale = node.attr("beta", 1.0) if node.op == "Gemm" else 1.0
        if b is None:
            _replace_const(graph, node, 2, (delta / scale).astype(dtype), "obs_bias")
            out_ids = analysis.labels_of(y).get(1)
            return None if out_ids is None else Member(node, 2, 0, out_ids, "bias")
        c = b.const.astype(np.float64)
        if c.size == 1:
            c = np.full(len(delta), float(c.reshape(-1)[0]))
        elif c.size == len(delta):
            c = c.reshape(-1)
        else:
            return None
        if b.const.size == 1 and analysis.labels_of(y).get(1) is not None:
            return None  # a scalar bias was not sliced; keep it rather than grow it
        _replace_const(
            graph,
            node,
            2,
            (c + delta / scale)
            .reshape(b.shape if b.const.size == len(delta) else (len(delta),))
            .astype(dtype),
            "obs_bias",
        )
        return None
    users = y.users  # MatMul: its sole user must be Add(y, constant bias)
    if len(users) != 1 or users[0].op != "Add" or graph.is_output(y):
        return None
    add = users[0]
    k = 1 if add.inputs[0] is y else 0
    bias = add.inputs[k]
    if not bias.is_const or bias.const.size != len(delta):
        return None
    c = bias.const.astype(np.float64).reshape(-1) + delta
    _replace_const(graph, add, k, c.reshape(bias.shape).astype(bias.dtype), "obs_bias")
    return None
