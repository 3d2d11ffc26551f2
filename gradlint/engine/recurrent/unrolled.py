"""The long-range gradient of a loop written by hand (docs/design.md §6, R6).

A loop over time steps that no fused unit covers (a cell written op by op) stays unrolled in
the graph, and the main sweeps predict it op by op. Its long-range gradient is a second
backward sweep over the loop's own nodes: s = 1 at the last step's state, nothing
anywhere else, each op's transfer rule taking it back, and at every step the gradient
reaching what the loop reads from outside at that step (its input x_t). The per-step
factor is therefore plain mean field, step by step: R1 for a vanilla cell, the R2/R3-like
pessimistic rule for gates written by hand (their weight-reuse correction, R4, needs the
cell's structure, which only ``rnn_loop`` knows).

A vanilla cell whose step is exactly h_t = φ(u_t + W·h_{t−1} [+ b]) (``Loop.elman``) with
W's values known is instead handed to the same backward as nn.RNN and nn.RNNCell loops: R1w,
the δ covariance carried through W itself. The op-by-op sweep treats W as fresh at every step
(R1), which misses the finite-width spectrum of the one W reused T times (§6, R1w; §11).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradlint.base.report import RecurrentReport
from gradlint.capture.graph import Graph
from gradlint.capture.loops import Loop
from gradlint.engine.context import Context
from gradlint.engine.recurrent.backward_pass import backward
from gradlint.engine.recurrent.forward_pass import forward
from gradlint.engine.recurrent.layers import tensor_stats
from gradlint.engine.state import Bwd, Fwd


def _numel(f: Any) -> int:
    return max(f.numel, 1) if isinstance(f, Fwd) else 1


def loop_reports(graph: Graph, fwd: dict[str, Any], table: dict, ctx: Context) -> list[RecurrentReport]:
    """One ``RecurrentReport`` per loop of ``graph.loops``, from the forward states ``fwd``.

    The sweep books no parameter gradient: it runs the rules with a scratch context that
    shares only what their forward passes left in ``ctx.memo``.
    """
    out = []
    for loop in graph.loops:
        lag, bound = _elman(loop, fwd, ctx), None
        if lag is not None:
            lag, bound = lag
        else:
            scratch = Context(graph, ctx.stats, ctx.model)
            scratch.memo = ctx.memo
            lag = bound = _sweep(graph, loop, fwd, table, scratch)
        if lag is None:
            continue
        rms = tuple(math.sqrt(max(v, 0.0)) for v in lag)
        out.append(RecurrentReport(node=loop.name, module=loop.module, mode=loop.mode, steps=loop.steps,
                                   input_grad_rms=(), lag_grad_rms=rms,
                                   lag_grad_rms_bound=tuple(math.sqrt(max(v, 0.0)) for v in bound), form="loop"))
    return out


def _elman(loop: Loop, fwd: dict[str, Any], ctx: Context) -> tuple[list[float], list[float]] | None:
    """The long-range s at each step's u_t of a vanilla cell h_t = φ(u_t + W·h_{t−1} + b):
    R1w with W's values, and R1 as the bound (as for an nn.RNNCell loop); None when W's values
    are not known (meta device) or the step does not have that form.

    The cell is nn.RNN's with W_ih = I on u_t: the pre-activation gets u_t's mean as its bias
    and u_t's variance as its input part, and s at u_t is s at the pre-activation,
    H·σ²_ih·s_pre with σ²_ih = 1/H.
    """
    el = loop.elman
    if el is None or ctx.model is None:
        return None
    drive = [fwd.get(u) for u in el.drive]
    if not all(isinstance(u, Fwd) and not u.blocked for u in drive):
        return None
    try:
        w = ctx.model.get_parameter(el.weight)
        b = ctx.model.get_parameter(el.bias) if el.bias else None
    except AttributeError:
        return None
    if w.is_meta or w.dim() != 2 or w.shape[0] != w.shape[1] or not bool(torch.isfinite(w).all()):
        return None
    H = w.shape[0]
    if any(not u.shape or u.shape[-1] != H for u in drive):
        return None
    w = w.detach().to(torch.float64)
    w = w.T if el.layout == "in_out" else w
    mu = sum(u.mu for u in drive) / len(drive)
    b_hh = b.detach().to(torch.float64) if b is not None and not b.is_meta else torch.zeros(H, dtype=torch.float64)
    st = tensor_stats(loop.mode, torch.eye(H, dtype=torch.float64), w, torch.full((H,), mu, dtype=torch.float64),
                      b_hh)
    if st.weight_hh is None:
        return None
    init = fwd.get(el.init) if el.init else None
    q_h0 = init.q if isinstance(init, Fwd) else 0.0
    f = forward(st, [max(u.q - mu * mu, 0.0) for u in drive], q_h0=q_h0)
    last = [0.0] * (loop.steps - 1) + [1.0]
    batch = drive[0].shape[0] if len(drive[0].shape) == 2 else 1
    lag = backward(st, f, last, batch, reuse=True)
    bound = backward(st, f, last, batch, reuse=False)
    return list(lag.s_x), list(bound.s_x)


def _sweep(graph: Graph, loop, fwd: dict[str, Any], table: dict, ctx: Context) -> list[float] | None:
    grads: dict[str, Any] = {loop.name: Bwd(1.0, 0.0)}
    inputs = {i for step in loop.inputs for i in step}
    reached: dict[str, Bwd] = {}
    for node in reversed(graph.nodes):
        if node.name not in loop.nodes:
            continue
        g = grads.get(node.name)
        if g is None:
            continue
        out = fwd.get(node.name)
        if isinstance(out, tuple):
            g = tuple(g) if isinstance(g, list) else tuple([g] + [None] * (len(out) - 1))
        ins = [fwd.get(i) if i is not None else None for i in node.inputs]
        rule = table.get(node.kind) or table["unknown"]
        back = rule.backward(ctx, node, ins, out, g)
        if node.kind == "getitem" and isinstance(fwd.get(node.inputs[0]), tuple) and back and back[0] is not None:
            size = len(fwd[node.inputs[0]])
            slots = grads.get(node.inputs[0])
            slots = slots if isinstance(slots, list) else [None] * size
            k = node.attrs["index"] % size
            slots[k] = back[0] if slots[k] is None else slots[k] + back[0]
            grads[node.inputs[0]] = slots
            continue
        for i, b in zip(node.inputs, back):
            if i is None or b is None:
                continue
            if i in inputs:
                reached[i] = reached.get(i, Bwd()) + b
            if i in loop.nodes:
                prev = grads.get(i)
                if isinstance(prev, list):
                    prev[0] = b if prev[0] is None else prev[0] + b
                else:
                    grads[i] = b if prev is None else prev + b
    lag = []
    for step in loop.inputs:
        if not step:
            lag.append(0.0)
            continue
        n = [_numel(fwd.get(i)) for i in step]
        lag.append(sum(reached.get(i, Bwd()).s * k for i, k in zip(step, n)) / sum(n))
    if not lag or lag[-1] <= 0 or not math.isfinite(lag[-1]):
        return None
    return lag
