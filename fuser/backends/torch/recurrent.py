"""Torch implementations of ONNX's recurrent layers (LSTM, GRU, RNN), for static graphs.

One time step after another, forward, reverse or both ways, as ONNX defines them (gate
orders: LSTM i, o, f, c; GRU z, r, h), with the default activations (sigmoid and tanh; RNN
tanh), ``clip``, both ``layout`` values, peepholes and GRU's ``linear_before_reset``.
Refused by name at build time: other activations, LSTM ``input_forget``, and sequence
lengths that differ from the sequence (a value-dependent computation).
"""

from __future__ import annotations

import numpy as np
import torch

from fuser.ir import Node
from fuser.ir.ops import register

from .context import Op

_DEFAULT_ACTIVATIONS = {
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "RNN": ["Tanh"],
}


def _gate(c: Op, t: torch.Tensor) -> torch.Tensor:
    clip = c.attr("clip")
    return t.clamp(-clip, clip) if clip is not None else t


def _lstm_step(c: Op, x, h, cell, w, r, b, p, hidden):
    gates = _gate(c, x @ w.T + h @ r.T + b)
    i, o, f, g = gates.split(hidden, dim=-1)
    pi, po, pf = p.split(hidden) if p is not None else (0, 0, 0)
    i = torch.sigmoid(i + pi * cell)
    f = torch.sigmoid(f + pf * cell)
    cell = f * cell + i * torch.tanh(g)
    o = torch.sigmoid(o + po * cell)
    return o * torch.tanh(cell), cell


def _gru_step(c: Op, x, h, w, r, wb, rb, hidden):
    wz, wr, wh = (x @ w.T + wb).split(hidden, dim=-1)
    rz, rr, rh = r.split(hidden, dim=0)
    rbz, rbr, rbh = rb.split(hidden)
    z = torch.sigmoid(_gate(c, wz + h @ rz.T + rbz))
    reset = torch.sigmoid(_gate(c, wr + h @ rr.T + rbr))
    if c.attr("linear_before_reset", 0):
        cand = torch.tanh(_gate(c, wh + reset * (h @ rh.T + rbh)))
    else:
        cand = torch.tanh(_gate(c, wh + (reset * h) @ rh.T + rbh))
    return (1 - z) * cand + z * h


def _rnn_step(c: Op, x, h, w, r, b):
    return torch.tanh(_gate(c, x @ w.T + h @ r.T + b))


def _recurrent(c: Op, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    layout = c.attr("layout", 0)
    if layout:  # [batch, seq, input] -> [seq, batch, input]
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    seq, batch = x.shape[0], x.shape[1]
    dirs, hidden = w.shape[0], c.attr("hidden_size") or r.shape[-1]
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[c.op]
    if b is None:
        b = torch.zeros(dirs, 2 * gates * hidden, dtype=x.dtype, device=x.device)
    directions = ["forward"] if dirs == 1 and c.attr("direction", "forward") == "forward" else []
    if dirs == 1 and c.attr("direction", "forward") == "reverse":
        directions = ["reverse"]
    if dirs == 2:
        directions = ["forward", "reverse"]
    ys, hs, cs = [], [], []
    for d, direction in enumerate(directions):
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
        cell = c0[d] if c0 is not None else torch.zeros_like(h)
        wb, rb = b[d].split(gates * hidden)
        steps = range(seq - 1, -1, -1) if direction == "reverse" else range(seq)
        out = [None] * seq
        for t in steps:
            if c.op == "LSTM":
                h, cell = _lstm_step(
                    c, x[t], h, cell, w[d], r[d], wb + rb, p[d] if p is not None else None, hidden
                )
            elif c.op == "GRU":
                h = _gru_step(c, x[t], h, w[d], r[d], wb, rb, hidden)
            else:
                h = _rnn_step(c, x[t], h, w[d], r[d], wb + rb)
            out[t] = h
        ys.append(torch.stack(out) if seq else x.new_zeros(0, batch, hidden))
        hs.append(h)
        cs.append(cell)
    y = torch.stack(ys, 1)  # [seq, dirs, batch, hidden]
    y_h, y_c = torch.stack(hs), torch.stack(cs)  # [dirs, batch, hidden]
    if layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c)[: c.nout] if c.op == "LSTM" else (y, y_h)[: c.nout]


def _check_recurrent(c: Op, node: Node):
    acts = c.attr("activations")
    if (
        acts
        and [a if isinstance(a, str) else a.decode() for a in acts] != _DEFAULT_ACTIVATIONS[c.op][: len(acts)]
    ):
        raise c.fail(f"activations {list(acts)} are not supported (the defaults are)")
    if c.attr("activation_alpha") or c.attr("activation_beta"):
        raise c.fail("activation_alpha/activation_beta are not supported")
    if c.op == "LSTM" and c.attr("input_forget", 0):
        raise c.fail("input_forget=1 is not supported")
    lens = node.input(4)
    x = node.input(0)
    if lens is not None:
        seq = x.shape[1 if c.attr("layout", 0) else 0]
        if lens.const is None or not np.all(np.asarray(lens.const) == seq):
            raise c.fail(
                "sequence_lens shorter than the sequence are not supported (value-dependent lengths)"
            )


for _op in ("LSTM", "GRU", "RNN"):
    register("torch", _op, _recurrent)
    register("torch.check", _op, _check_recurrent)
