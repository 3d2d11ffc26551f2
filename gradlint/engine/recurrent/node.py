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
    from gradlint.capture.graph import Node
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


def rnn_forward(ctx: Context, node: Node, ins: list[Fwd]) -> tuple[Fwd, ...]:
    """The outputs (sequence, h_n[, c_n]) of an ``rnn`` node."""
    x = ins[0]
    mod = _module(ctx, node)
    batch, steps = _geometry(node, x)
    shapes = node.shape if isinstance(node.shape, tuple) else ()
    if mod is None:
        ctx.note_unknown(node)
        return tuple(x.with_(shape=s) for s in shapes) or (x,)
    if steps < 1 or batch < 1:
        # An empty sequence or batch: the output is empty, and h_n is the initial state,
        # which depends on no weight.
        return tuple(Fwd(q=0.0, shape=s, roles=default_roles(s), const=True) for s in shapes) or (
            Fwd(q=0.0, shape=x.shape, roles=x.roles, const=True),)
    pred = predict_module(mod, batch, steps, q_x=x.q)
    ctx.memo[node.name] = (mod, batch, steps, x.q)
    q_out = sum(pred.q_out) / len(pred.q_out)
    outs = []
    # Without shapes (a module-order graph from registration order) the output is still
    # a tuple whose first element is the sequence output.
    for i, s in enumerate(shapes or ((),)):
        roles = x.roles if i == 0 and len(x.roles) == len(s) else (
            "".join("B" if d == batch else "P" for d in s[:-1]) + "F" if s else "")
        outs.append(Fwd(q=q_out if i == 0 else pred.q_out[-1], shape=s, roles=roles, origin=f"{node.name}:{i}"))
    return tuple(outs)


def rnn_backward(ctx: Context, node: Node, ins: list[Fwd], out, g) -> list[Bwd | None]:
    """The gradient at an ``rnn`` node's input; books the module's parameter gradients."""
    if node.name not in ctx.memo:
        return [g[0] if isinstance(g, tuple) else g] + [None] * (len(ins) - 1)
    mod, batch, steps, qx = ctx.memo[node.name]
    g = g if isinstance(g, tuple) else (g,)
    s_out = g[0].s if g and g[0] is not None else 0.0
    s_hn = g[1].s if len(g) > 1 and g[1] is not None else 0.0
    s_cn = g[2].s if len(g) > 2 and g[2] is not None else 0.0
    pred = predict_module(mod, batch, steps, q_x=qx, s_out=s_out, s_hn=s_hn, s_cn=s_cn)
    for pname, e2 in pred.parameter_grads().items():
        ctx.param_grad(f"{node.module}.{pname}" if node.module else pname, e2)
    lag = predict_module(mod, batch, steps, q_x=qx, s_out=[0.0] * (steps - 1) + [1.0])
    ctx.recurrent.append(RecurrentReport(
        node=node.name, module=node.module, mode=node.attrs.get("mode", ""), steps=steps,
        input_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in pred.s_x),
        lag_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x),
        lag_grad_rms_bound=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x_bound)))
    s_x = sum(pred.s_x) / len(pred.s_x)
    return [Bwd(s_x, 0.0)] + [None] * (len(ins) - 1)
