"""The signal-propagation engine: one forward and one backward sweep over the graph.

Forward, in topological order, every node's statistics (q, mu, k, kt) come from its
inputs' through the node kind's transfer rule; backward, in reverse order, every tensor's
gradient moments (s, r) are the sum of what its consumers send back (docs/design.md §2.1),
and each rule books its parameters' gradients on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from gradlint.capture.graph import Graph, Node, Source
from gradlint.capture.params import ParamStats
from gradlint.engine.context import Context
from gradlint.engine.recurrent.node import step_calls
from gradlint.engine.recurrent.unrolled import loop_reports
from gradlint.engine.state import Bwd, Fwd, default_roles
from gradlint.engine.transfers import TRANSFERS

if TYPE_CHECKING:
    from gradlint.base.report import RecurrentReport


@dataclass(frozen=True, slots=True)
class NodeResult:
    """Prediction at one node's output.

    Attributes:
        name: Node name.
        kind: Transfer kind.
        op: Original op.
        module: Qualified module name.
        module_type: Module class name.
        call_site: Source line that ran the op.
        shape: Output shape.
        q: Forward second moment E[h²].
        mu: Forward mean.
        s: Backward second moment E[δ²] (0 when no gradient reaches it).
        blocked: No gradient can flow back through this value.
    """

    name: str
    kind: str
    op: str
    module: str
    module_type: str
    call_site: Source | None
    shape: tuple
    q: float
    mu: float
    s: float
    blocked: bool

    @property
    def grad_rms(self) -> float:
        return math.sqrt(max(self.s, 0.0))


@dataclass(frozen=True)
class Propagation:
    """Everything the engine predicted for one model.

    Attributes:
        graph: The graph the prediction ran over.
        nodes: Per node, in graph order.
        params: Per parameter name, E[(dL/dθ)²] (0.0: provably none reaches it; None: unknown).
        param_stats: The statistics the prediction used for each parameter.
        recurrent: Per recurrent op, the per-time-step gradients.
        unknown_ops: Nodes whose op had no transfer rule (what depends on them is unknown).
        forward_state: Full forward state per node (for rules that need k, kt, roles).
    """

    graph: Graph
    nodes: tuple[NodeResult, ...]
    params: dict[str, float | None]
    param_stats: dict[str, ParamStats]
    recurrent: tuple[RecurrentReport, ...] = ()
    unknown_ops: tuple[str, ...] = ()
    forward_state: dict[str, Any] = field(default_factory=dict, repr=False)
    backward_state: dict[str, Any] = field(default_factory=dict, repr=False)

    def node(self, name: str) -> NodeResult:
        return self._by_name[name]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})


def propagate(graph: Graph, stats: dict[str, ParamStats], model: nn.Module | None = None,
              transfers: dict | None = None) -> Propagation:
    """Run the forward and the backward sweep and collect the predictions.

    Args:
        graph: The model's graph.
        stats: Statistics of every parameter, by qualified name.
        model: The model itself, for layers whose rule reads the module (recurrent layers).
        transfers: Rules to lay over the built-in registry, by kind (user extensions).

    Returns:
        The immutable ``Propagation``.
    """
    table = dict(TRANSFERS)
    if transfers:
        table.update(transfers)
    ctx = Context(graph, stats, model)
    fwd: dict[str, Any] = ctx.forward
    overflowed: set[str] = set()
    for node in graph.nodes:
        rule = table.get(node.kind) or table["unknown"]
        ins = [fwd.get(i) if i is not None else None for i in node.inputs]
        if node.kind not in ("input", "const", "param") and not any(isinstance(f, (Fwd, tuple)) for f in ins):
            fwd[node.name] = Fwd(q=0.0, shape=node.shape if isinstance(node.shape, tuple) else (), const=True)
            continue
        if node.kind not in ("input", "const", "param") and node.dtype not in ("int", "bool") and _overflowed(ins):
            # Statistics that are a guess overflowing are still a guess, not a measured overflow.
            fwd[node.name] = _mark_unknown(_overflow(node, ins)) if _guessed(ins) else _overflow(node, ins)
            overflowed.add(node.name)
            continue
        out = rule.forward(ctx, node, ins)
        if node.name in ctx.unknown or _guessed(ins):
            out = _mark_unknown(out)
        fwd[node.name] = out

    # Backward: g per node is a Bwd, or a list of Bwd per output slot for tuple-valued nodes.
    grads: dict[str, Any] = {}
    for name in graph.outputs:
        f = fwd.get(name)
        if isinstance(f, Fwd) and f.dtype == "float" and not f.const:
            grads[name] = grads.get(name, Bwd()) + Bwd(1.0, 0.0)
    for node in reversed(graph.nodes):
        g = grads.get(node.name)
        if g is None:
            continue
        out = fwd[node.name]
        if isinstance(out, tuple):
            g = tuple(g) if isinstance(g, list) else tuple([g] + [None] * (len(out) - 1))
            if all(x is None for x in g):
                continue
        rule = table.get(node.kind) or table["unknown"]
        ins = [fwd.get(i) if i is not None else None for i in node.inputs]
        if node.name in overflowed:
            # A loss computed from overflowed values is inf or NaN, and so is every gradient.
            guess = is_unknown(out)
            back = [Bwd(math.inf, 0.0, unknown=guess) if isinstance(f, tuple) or (isinstance(f, Fwd) and
                    f.dtype == "float" and not f.const) else None for f in ins]
            ctx.tainted = guess
            for p in [*node.params.values(), *(node.attrs.get("params") or ())]:
                if isinstance(p, str):
                    ctx.param_grad(p, math.inf)
            ctx.tainted = False
        else:
            # On statistics that are a guess (an op without a rule, or fed by one), the rule's
            # numbers are a guess too: every gradient it sends back and books is unknown.
            ctx.tainted = is_unknown(g) or is_unknown(out) or _unknown_const_operand(node, ins)
            back = rule.backward(ctx, node, ins, out, g)
            if ctx.tainted:
                back = [b.as_unknown() if isinstance(b, Bwd) else b for b in back]
            ctx.tainted = False
        if node.kind == "getitem":
            src = node.inputs[0]
            if isinstance(fwd.get(src), tuple) and back and back[0] is not None:
                size = len(fwd[src])
                slots = grads.get(src)
                if not isinstance(slots, list):
                    slots = [None] * size
                idx = node.attrs["index"] % size
                slots[idx] = back[0] if slots[idx] is None else slots[idx] + back[0]
                grads[src] = slots
                continue
        for i, b in zip(node.inputs, back):
            if i is None or b is None:
                continue
            prev = grads.get(i)
            if isinstance(prev, list):
                prev[0] = b if prev[0] is None else prev[0] + b
            else:
                grads[i] = b if prev is None else prev + b

    # Loops written by hand stay unrolled: their long-range gradient is a sweep of its own.
    ctx.recurrent.extend(loop_reports(graph, fwd, table, ctx))
    ctx.recurrent[:] = step_calls(graph, ctx, ctx.recurrent)
    results = []
    for node in graph.nodes:
        f = fwd[node.name]
        g = grads.get(node.name)
        f0 = f[0] if isinstance(f, tuple) and f else f
        g0 = (g[0] if g else None) if isinstance(g, list) else g
        results.append(NodeResult(
            name=node.name, kind=node.kind, op=node.op, module=node.module, module_type=node.module_type,
            call_site=node.call_site, shape=f0.shape if isinstance(f0, Fwd) else (),
            q=f0.q if isinstance(f0, Fwd) else 0.0, mu=f0.mu if isinstance(f0, Fwd) else 0.0,
            s=g0.s if isinstance(g0, Bwd) else 0.0, blocked=bool(isinstance(f0, Fwd) and f0.blocked)))
    params = _param_predictions(graph, stats, ctx, grads)
    return Propagation(graph=graph, nodes=tuple(results), params=params, param_stats=stats,
                       recurrent=tuple(ctx.recurrent), unknown_ops=tuple(ctx.unknown),
                       forward_state=fwd, backward_state=grads)


def _param_predictions(graph: Graph, stats: dict[str, ParamStats], ctx: Context,
                       grads: dict[str, Any]) -> dict[str, float | None]:
    """Per parameter, E[(dL/dθ)²]: a number, 0.0 where no gradient can reach it (unused, or
    only behind ops that block), or None where the engine cannot tell (docs/design.md §2.2).

    Zero is a claim: it needs a graph that holds every use (export or fx) and no use whose
    node received a gradient its rule did not book. A tied tensor's gradient is the sum over
    all its uses, whatever name the graph used, and unknown when any use is.
    """
    exact = graph.analysis in ("export", "fx")
    reached: set[str] = set()  # parameters read by a node that some gradient reached
    for n in graph.nodes:
        g = grads.get(n.name)
        if g is not None and (not isinstance(g, list) or any(x is not None for x in g)):
            reached.update(node_params(n))
    used = _used_params(graph)
    params: dict[str, float | None] = {}
    for name in stats:
        if name in ctx.unknown_grads:
            params[name] = None
        elif name in ctx.grads:
            params[name] = ctx.grads[name]
        elif name in reached:
            params[name] = None  # a rule read it on a gradient path but booked nothing
        elif name in used or exact:
            params[name] = 0.0
        else:
            params[name] = None  # a fallback graph may miss functional uses
    for name, st in stats.items():
        if st.tied:
            names = (name, *st.tied)
            if any(n in ctx.unknown_grads for n in names):
                params[name] = None
            elif any(n in ctx.grads for n in names):
                params[name] = sum(ctx.grads.get(n, 0.0) for n in names)
    return params


def is_unknown(x: Any) -> bool:
    """Whether a forward or backward state (or any slot of a tuple of them) is a guess."""
    if isinstance(x, (tuple, list)):
        return any(is_unknown(v) for v in x)
    return bool(getattr(x, "unknown", False))


def _guessed(ins: list) -> bool:
    """A float operand that carries a signal and whose statistics are a guess. Constant
    operands (masks, position ids) are left out: the rules that read their values say so."""
    for f in ins:
        if isinstance(f, tuple):
            if _guessed(list(f)):
                return True
        elif isinstance(f, Fwd) and f.unknown and f.dtype == "float" and not f.const:
            return True
    return False


def _unknown_const_operand(node: Node, ins: list) -> bool:
    """A weighted layer applied to a constant whose values the engine does not know: its
    weight gradient follows from them, so it is unknown rather than zero."""
    return bool(node_params(node)) and any(isinstance(f, Fwd) and f.const and f.unknown and f.dtype == "float"
                                           for f in ins)


def _mark_unknown(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(_mark_unknown(f) for f in out)
    if isinstance(out, Fwd) and not out.unknown and out.dtype == "float" and not out.const:
        return out.with_(unknown=True)
    return out


def _overflowed(ins: list) -> bool:
    """Whether a float operand's statistics are inf or NaN: its values overflowed (a second
    moment beyond float64 means values beyond any float dtype), or a constant inf or NaN
    scaled them."""
    for f in ins:
        if isinstance(f, tuple):
            if _overflowed(list(f)):
                return True
        elif isinstance(f, Fwd) and f.dtype == "float" and not (
                math.isfinite(f.q) and math.isfinite(f.mu) and math.isfinite(f.k) and math.isfinite(f.kt)):
            return True
    return False


def _overflow(node: Node, ins: list) -> Fwd | tuple[Fwd, ...]:
    """The output of an op fed overflowed values: inf as well. The transfer rules' Gaussian
    maths has no value at infinite moments, and the real forward is inf or NaN from here on."""
    first = next((f for x in ins for f in (x if isinstance(x, tuple) else (x,)) if isinstance(f, Fwd)), Fwd(q=0.0))

    def one(shape: Any) -> Fwd:
        shape = shape if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape) else first.shape
        roles = first.roles if len(first.roles) == len(shape) else default_roles(shape)
        return Fwd(q=math.inf, k=math.inf, kt=math.inf, shape=shape, roles=roles, origin=node.name,
                   blocked=first.blocked)

    s = node.shape
    if isinstance(s, tuple) and s and all(isinstance(x, tuple) for x in s):
        return tuple(one(x) for x in s)
    return one(s)


def node_params(node: Node) -> list[str]:
    """The parameters ``node`` reads: by role, a recurrent op's list, or a ``param`` node's own."""
    names = [p for p in node.params.values() if isinstance(p, str)]
    names += [p for p in (node.attrs.get("params") or []) if isinstance(p, str)]
    if node.kind == "param" and isinstance(node.attrs.get("param"), str):
        names.append(node.attrs["param"])
    return names


def _used_params(graph: Graph) -> set[str]:
    used: set[str] = set()
    for n in graph.nodes:
        if n.kind == "param" and not graph.users.get(n.name):
            continue  # export lists every parameter; only operand uses count
        used.update(node_params(n))
    return used
