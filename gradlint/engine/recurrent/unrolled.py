"""The long-range gradient of a loop written by hand (docs/design.md §6, R6).

A loop over time steps that no fused unit covers (a cell written op by op) stays unrolled in
the graph, and the main sweeps predict it op by op. Its long-range gradient is a second
backward sweep over the loop's own nodes: s = 1 at the last step's state, nothing
anywhere else, each op's transfer rule taking it back, and at every step the gradient
reaching what the loop reads from outside at that step (its input x_t). The per-step
factor is therefore plain mean field, step by step: R1 for a vanilla cell, the R2/R3-like
pessimistic rule for gates written by hand (their weight-reuse correction, R4, needs the
cell's structure, which only ``rnn_loop`` knows).
"""

from __future__ import annotations

import math
from typing import Any

from gradlint.base.report import RecurrentReport
from gradlint.capture.graph import Graph
from gradlint.engine.context import Context
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
        scratch = Context(graph, ctx.stats, ctx.model)
        scratch.memo = ctx.memo
        lag = _sweep(graph, loop, fwd, table, scratch)
        if lag is None:
            continue
        rms = tuple(math.sqrt(max(v, 0.0)) for v in lag)
        out.append(RecurrentReport(node=loop.name, module=loop.module, mode=loop.mode, steps=loop.steps,
                                   input_grad_rms=(), lag_grad_rms=rms, lag_grad_rms_bound=rms, form="loop"))
    return out


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
