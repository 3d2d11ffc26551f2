"""An ``rnn`` node of the graph: the module it runs, predicted as a whole (docs/design.md §6).

The forward reads the nn.RNN / LSTM / GRU module from the model and predicts its output;
the backward predicts again with the gradient that reached the node, books every weight's
gradient, and records the per-time-step gradients at the input (``RecurrentReport``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch.nn as nn

from gradlint.base.report import RecurrentReport
from gradlint.engine.recurrent.module import predict_module
from gradlint.engine.state import Bwd, Fwd, default_roles

if TYPE_CHECKING:
    from gradlint.capture.graph import Graph, Node
    from gradlint.engine.context import Context


def _module(ctx: Context, node: Node) -> nn.RNNBase | None:
    if ctx.model is None:
        return None
    try:
        mod = ctx.model.get_submodule(node.module) if node.module else ctx.model
    except AttributeError:
        return None
    return mod if isinstance(mod, nn.RNNBase) else None


def _geometry(node: Node, x: Fwd) -> tuple[int, int]:
    batch_first = node.attrs.get("batch_first", False)
    if len(x.shape) == 3:
        return (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    return 1, x.shape[0] if x.shape else 1


def _groups(node: Node, x: Fwd) -> list[tuple[int, int]] | None:
    """(steps, samples) per distinct sequence length: one group for a padded batch; for a
    packed sequence each length of its ``batch_sizes`` (R7, docs/design.md §6: padding takes no
    part, and a sample of length L runs L steps). None when a packed sequence's batch sizes are
    unknown."""
    if "batch_sizes" in node.attrs and node.attrs["batch_sizes"] is not None:
        sizes = node.attrs["batch_sizes"]
        counts: dict[int, int] = {}
        for i in range(sizes[0] if sizes else 0):
            length = sum(1 for b in sizes if b > i)
            counts[length] = counts.get(length, 0) + 1
        return sorted(counts.items(), reverse=True)
    if node.attrs.get("batch_sizes", ()) is None:
        return None
    batch, steps = _geometry(node, x)
    return [(steps, batch)]


def _initial(ctx: Context, node: Node, ins: list[Fwd]) -> tuple[float, float]:
    """q of the initial hidden (and cell) state the forward passes (an encoder's final state, the
    previous call's h_n, a graph input drawn as the protocol draws it); 0 when it passes none or
    the example hands it in as zeros (``init_hidden``; docs/design.md §6, R7)."""
    names = node.inputs[1:1 + int(node.attrs.get("n_hx", 0))]
    hx = [f.q if isinstance(f, Fwd) and not getattr(ctx.graph.by_name.get(n or ""), "attrs", {}).get("zeros")
          else 0.0 for f, n in zip(ins[1:], names)]
    return (hx[0] if hx else 0.0), (hx[1] if len(hx) > 1 else 0.0)


def rnn_forward(ctx: Context, node: Node, ins: list[Fwd]) -> tuple[Fwd, ...]:
    """The outputs (sequence, h_n[, c_n]) of an ``rnn`` node."""
    x = ins[0]
    mod = _module(ctx, node)
    groups = _groups(node, x)
    shapes = node.shape if isinstance(node.shape, tuple) else ()
    if mod is None or groups is None:
        ctx.note_unknown(node)
        # Packed with batch sizes capture could not read: which steps ran is unknown too.
        unknown = groups is None or x.unknown
        return tuple(x.with_(shape=s, unknown=unknown) for s in shapes) or (x.with_(unknown=unknown),)
    if not groups or min(min(g) for g in groups) < 1:
        # An empty sequence or batch: the output is empty, and h_n is the initial state,
        # which depends on no weight.
        return tuple(Fwd(q=0.0, shape=s, roles=default_roles(s), const=True) for s in shapes) or (
            Fwd(q=0.0, shape=x.shape, roles=x.roles, const=True),)
    q_h0, q_c0 = _initial(ctx, node, ins)
    preds = [(steps, n, predict_module(mod, n, steps, q_x=x.q, q_h0=q_h0, q_c0=q_c0)) for steps, n in groups]
    ctx.memo[node.name] = (mod, groups, x.q, q_h0, q_c0)
    rows = sum(n * steps for steps, n, _ in preds)
    q_out = sum(n * sum(p.q_out) for _, n, p in preds) / rows
    q_last = sum(n * p.q_out[-1] for _, n, p in preds) / sum(n for _, n, _ in preds)
    batch = sum(n for _, n in groups)
    outs = []
    # Without shapes (a module-order graph from registration order) the output is still
    # a tuple whose first element is the sequence output.
    for i, s in enumerate(shapes or ((),)):
        roles = x.roles if i == 0 and len(x.roles) == len(s) else (
            "".join("B" if d == batch else "P" for d in s[:-1]) + "F" if s else "")
        outs.append(Fwd(q=q_out if i == 0 else q_last, shape=s, roles=roles, origin=f"{node.name}:{i}"))
    return tuple(outs)


def rnn_backward(ctx: Context, node: Node, ins: list[Fwd], out, g) -> list[Bwd | None]:
    """The gradient at an ``rnn`` node's input and initial state; books the module's parameter
    gradients."""
    if node.name not in ctx.memo:
        return [g[0] if isinstance(g, tuple) else g] + [None] * (len(ins) - 1)
    mod, groups, qx, q_h0, q_c0 = ctx.memo[node.name]
    g = g if isinstance(g, tuple) else (g,)
    s_out = g[0].s if g and g[0] is not None else 0.0
    s_hn = g[1].s if len(g) > 1 and g[1] is not None else 0.0
    s_cn = g[2].s if len(g) > 2 and g[2] is not None else 0.0
    grads: dict[str, float] = {}
    s_x = s_h0 = s_c0 = 0.0
    per_step: list[float] = []
    for steps, n in groups:
        pred = predict_module(mod, n, steps, q_x=qx, s_out=s_out, s_hn=s_hn, s_cn=s_cn, q_h0=q_h0, q_c0=q_c0)
        for pname, e2 in pred.parameter_grads().items():
            grads[pname] = grads.get(pname, 0.0) + e2  # the samples' gradients add, independent
        s_x += n * sum(pred.s_x)
        slices = [p.estimate for dirs in pred.layers for p in dirs]
        s_h0 += n * sum(b.s_h0 for b in slices) / len(slices)
        s_c0 += n * sum(b.s_c0 for b in slices) / len(slices)
        per_step = per_step or list(pred.s_x)
    for pname, e2 in grads.items():
        ctx.param_grad(f"{node.module}.{pname}" if node.module else pname, e2)
    steps, n = groups[0]
    # The long-range gradient over the longest sequences (a loss on their last step only).
    lag = predict_module(mod, n, steps, q_x=qx, s_out=[0.0] * (steps - 1) + [1.0], q_h0=q_h0, q_c0=q_c0)
    ctx.recurrent.append(RecurrentReport(
        node=node.name, module=node.module, mode=node.attrs.get("mode", ""), steps=steps,
        input_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in per_step),
        lag_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x),
        lag_grad_rms_bound=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x_bound)))
    batch = sum(n for _, n in groups)
    grads_in: list[Bwd | None] = [Bwd(s_x / sum(n * steps for steps, n in groups), 0.0)]
    hx = [Bwd(s_h0 / batch, 0.0), Bwd(s_c0 / batch, 0.0)][:int(node.attrs.get("n_hx", 0))]
    grads_in += [h if isinstance(f, Fwd) else None for h, f in zip(hx, ins[1:])]
    return grads_in + [None] * (len(ins) - len(grads_in))


def _state_source(graph: Graph, name: str | None) -> Node | None:
    """The ``rnn`` node whose h_n ``name`` is (through casts and views), or None."""
    n = graph.by_name.get(name) if name else None
    while n is not None and n.kind == "identity" and n.inputs:
        n = graph.by_name.get(n.inputs[0])
    if n is None or n.kind != "getitem" or n.attrs.get("index") != 1 or not n.inputs:
        return None
    src = graph.by_name.get(n.inputs[0])
    return src if src is not None and src.kind == "rnn" else None


def step_calls(graph: Graph, ctx: Context, reports: list[RecurrentReport]) -> list[RecurrentReport]:
    """R7 (docs/design.md §6): one nn.RNN / LSTM / GRU called once per step by a Python loop
    (a decoder fed its own output: one step per call, h_n handed to the next call as hx) is one
    recurrence over the calls, as the module run over that many steps. Its calls' reports (one
    step each) become one, whose long-range gradient is the module's over the calls."""
    chains: dict[str, list[Node]] = {}
    single = {r.node for r in reports if r.form == "module" and r.steps == 1}
    follows: dict[str, str] = {}
    for n in graph.nodes:
        if n.kind != "rnn" or n.name not in single or n.name not in ctx.memo:
            continue
        src = _state_source(graph, n.inputs[1] if len(n.inputs) > 1 else None)
        if src is not None and src.name in single and src.module == n.module:
            follows[n.name] = src.name
    heads = [n for n in graph.nodes if n.name in single and n.name not in follows and n.name in follows.values()]
    after = {v: k for k, v in follows.items()}
    for head in heads:
        chain = [head]
        while chain[-1].name in after:
            chain.append(graph.by_name[after[chain[-1].name]])
        if len(chain) >= 3:
            chains[chain[-1].name] = chain
    if not chains:
        return reports
    merged = {n.name for c in chains.values() for n in c}
    out = [r for r in reports if r.node not in merged]
    for last, chain in chains.items():
        mod, groups, _, q_h0, q_c0 = ctx.memo[chain[0].name]
        q_x = [ctx.memo[n.name][2] for n in chain]
        steps, batch = len(chain), groups[0][1]
        lag = predict_module(mod, batch, steps, q_x=q_x, s_out=[0.0] * (steps - 1) + [1.0], q_h0=q_h0, q_c0=q_c0)
        out.append(RecurrentReport(
            node=last, module=chain[0].module, mode=chain[0].attrs.get("mode", ""), steps=steps,
            input_grad_rms=(), lag_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x),
            lag_grad_rms_bound=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x_bound)))
    return out
