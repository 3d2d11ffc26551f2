"""Cells of nn.RNNCell / GRUCell / LSTMCell, alone and unrolled by a Python loop.

A chain of cells that ``capture.loops`` fused into one ``rnn_loop`` node is predicted by the
recurrent engine exactly as nn.RNN / LSTM / GRU is (docs/design.md §6, R1–R4): the dense
forward over the steps, the weight-reuse estimate R4 for the gated cells, the parameter
gradients with the steps as positions (W1/W7), and the long-range gradient under a last-step
loss for the report. A cell used on its own (``rnn_cell``) is one step of the same rules.
"""

from __future__ import annotations

import math

from gradlint.base.report import RecurrentReport
from gradlint.capture.graph import Node
from gradlint.engine import recurrent
from gradlint.engine.context import Context
from gradlint.engine.recurrent.layers import tensor_stats
from gradlint.engine.recurrent.states import NUM_CHUNKS, RecurrentLayerStats
from gradlint.engine.state import Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import RECURRENCE, Transfer, register

_ROLES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def cell_stats(ctx: Context, node: Node) -> RecurrentLayerStats | None:
    """The cell's statistics from its weights: read from the tensors, or, on the meta device,
    from the parameters' recorded statistics (uniform over the gate chunks)."""
    mode = node.attrs["mode"]
    names = [node.params.get(r) for r in _ROLES]
    if not names[0] or not names[1] or any(n not in ctx.stats for n in names if n):
        return None
    tensors = []
    if ctx.model is not None:
        try:
            tensors = [ctx.model.get_parameter(n) if n else None for n in names]
        except AttributeError:
            tensors = []
    if tensors and not tensors[0].is_meta:
        return tensor_stats(mode, *tensors)
    w_ih, w_hh = ctx.stats[names[0]], ctx.stats[names[1]]
    n = NUM_CHUNKS[mode]
    hidden = w_ih.shape[0] // n
    b = [ctx.stats[x] for x in names[2:] if x]
    has_bias = len(b) == 2
    mean = sum(x.mean for x in b) if has_bias else 0.0
    var = sum(max(x.ms - x.mean * x.mean, 0.0) for x in b) if has_bias else 0.0
    bias_var = (var,) * n
    hn_var = hn_mean = 0.0
    if mode == "gru" and has_bias:
        bias_var = (var, var, max(b[0].ms - b[0].mean ** 2, 0.0))
        hn_mean, hn_var = b[1].mean, max(b[1].ms - b[1].mean ** 2, 0.0)
    return RecurrentLayerStats(kind=mode, input_size=w_ih.shape[1], hidden_size=hidden, var_ih=(w_ih.ms,) * n,
                               var_hh=(w_hh.ms,) * n, bias_mean=(mean,) * n, bias_var=bias_var, hn_bias_mean=hn_mean,
                               hn_bias_var=hn_var, has_bias=has_bias)


def _batch(x: Fwd) -> int:
    return x.shape[0] if len(x.shape) == 2 else 1


def _state(q: float, mu: float, shape) -> Fwd:
    shape = shape if isinstance(shape, tuple) else ()
    return Fwd(q=q, mu=mu, shape=shape, roles=default_roles(shape))


def _book(ctx: Context, node: Node, est) -> None:
    grads = {"weight_ih": est.grad_weight_ih, "weight_hh": est.grad_weight_hh,
             "bias_ih": est.grad_bias_ih, "bias_hh": est.grad_bias_hh}
    for role, e2 in grads.items():
        if node.params.get(role):
            ctx.param_grad(node.params[role], e2)


def _q(f) -> float:
    return f.q if isinstance(f, Fwd) else 0.0


@register("rnn_cell")
class Cell(Transfer):
    """One step of nn.RNNCell / GRUCell / LSTMCell (R1–R3 with T = 1): inputs (x, h[, c])."""

    cause = RECURRENCE

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        st = cell_stats(ctx, node)
        x = ins[0]
        if st is None or not isinstance(x, Fwd):
            ctx.note_unknown(node)
            return super().forward(ctx, node, ins)
        lstm = st.kind == "lstm"
        fwd = recurrent.forward(st, [x.q], 1, q_h0=_q(ins[1]) if len(ins) > 1 else 0.0,
                                q_c0=_q(ins[2]) if lstm and len(ins) > 2 else 0.0)
        ctx.memo[node.name] = (st, fwd, _batch(x))
        shapes = node.shape if isinstance(node.shape, tuple) else ()
        if lstm:
            hs, cs = (shapes[0], shapes[1]) if len(shapes) == 2 and isinstance(shapes[0], tuple) else (x.shape,) * 2
            return (_state(fwd.q_h[0], fwd.mu_h[0], hs), _state(fwd.q_c[0], fwd.mu_c[0], cs))
        return _state(fwd.q_h[0], fwd.mu_h[0], shapes)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out, g):
        if node.name not in ctx.memo:
            return super().backward(ctx, node, ins, out, g[0] if isinstance(g, tuple) else g)
        st, fwd, batch = ctx.memo[node.name]
        gs = g if isinstance(g, tuple) else (g,)
        s_h = gs[0].s if gs and gs[0] is not None else 0.0
        s_c = gs[1].s if len(gs) > 1 and gs[1] is not None else 0.0
        est = recurrent.backward(st, fwd, [s_h], batch, s_cn=s_c, reuse=False)
        _book(ctx, node, est)
        back = [Bwd(est.s_x[0]), Bwd(est.s_h0)]
        if st.kind == "lstm":
            back.append(Bwd(est.s_c0))
        return back[:len(ins)] + [None] * (len(ins) - len(back))


@register("rnn_loop")
class CellLoop(Transfer):
    """A Python loop over a cell, fused: inputs (x_0 … x_{T−1}, h_0[, c_0]); outputs h_0 … h_{T−1}
    and, for the LSTM, c_0 … c_{T−1} (docs/design.md §6)."""

    cause = RECURRENCE

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        st = cell_stats(ctx, node)
        T = int(node.attrs["steps"])
        xs = ins[:T]
        if st is None or not all(isinstance(x, Fwd) for x in xs):
            ctx.note_unknown(node)
            first = next((f for f in ins if isinstance(f, Fwd)), Fwd(q=0.0))
            return tuple(first for _ in (node.shape or ()))
        lstm = st.kind == "lstm"
        init = ins[T:]
        fwd = recurrent.forward(st, [x.q for x in xs], T, q_h0=_q(init[0]) if init else 0.0,
                                q_c0=_q(init[1]) if lstm and len(init) > 1 else 0.0)
        ctx.memo[node.name] = (st, fwd, _batch(xs[0]))
        shapes = node.shape if isinstance(node.shape, tuple) else ()
        outs = [_state(fwd.q_h[t], fwd.mu_h[t], shapes[t] if t < len(shapes) else ()) for t in range(T)]
        if lstm:
            outs += [_state(fwd.q_c[t], fwd.mu_c[t], shapes[T + t] if T + t < len(shapes) else ()) for t in range(T)]
        return tuple(outs)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out, g):
        T = int(node.attrs["steps"])
        if node.name not in ctx.memo:
            return [None] * len(ins)
        st, fwd, batch = ctx.memo[node.name]
        gs = list(g) if isinstance(g, (tuple, list)) else [g]
        s = [x.s if isinstance(x, Bwd) else 0.0 for x in gs] + [0.0] * (2 * T)
        s_out, s_cn = s[:T], (s[2 * T - 1] if st.kind == "lstm" else 0.0)
        # δ reaching an LSTM cell state c_t of an earlier step from outside the loop is not
        # modelled (the loop rules take it at the last step only): say so rather than drop it.
        if st.kind == "lstm" and any(s[T:2 * T - 1]):
            ctx.note_unknown(node)
        est = recurrent.backward(st, fwd, s_out, batch, s_cn=s_cn, reuse=True)
        _book(ctx, node, est)
        last = [0.0] * (T - 1) + [1.0]
        lag = recurrent.backward(st, fwd, last, batch, reuse=True)
        bound = recurrent.backward(st, fwd, last, batch, reuse=False)
        ctx.recurrent.append(RecurrentReport(
            node=node.name, module=node.module, mode=st.kind, steps=T,
            input_grad_rms=tuple(math.sqrt(max(v, 0.0)) for v in est.s_x),
            lag_grad_rms=tuple(math.sqrt(max(v, 0.0)) for v in lag.s_x),
            lag_grad_rms_bound=tuple(math.sqrt(max(v, 0.0)) for v in bound.s_x), form="loop"))
        back: list[Bwd | None] = [Bwd(v) for v in est.s_x]
        back.append(Bwd(est.s_h0))
        if st.kind == "lstm":
            back.append(Bwd(est.s_c0))
        return back[:len(ins)] + [None] * (len(ins) - len(back))
