"""The signal-propagation engine: one forward and one backward sweep over the graph.

Forward, in topological order, every node's statistics (q, mu, k, kt) come from its
inputs' through the node kind's transfer rule; backward, in reverse order, every tensor's
gradient moments (s, r) are the sum of what its consumers send back (section 2.1 of the
design note), and each rule books its parameters' gradients on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from gradlint.engine import recurrent
from gradlint.capture.graph import Graph, Node, Source
from gradlint.capture.params import ParamStats
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers import TRANSFERS, default_roles


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


@dataclass(frozen=True, slots=True)
class RecurrentResult:
    """Per-time-step gradient at the input of a recurrent layer.

    Attributes:
        node: Graph node of the recurrent op.
        module: Qualified module name.
        mode: ``lstm``, ``gru``, ``rnn_tanh`` or ``rnn_relu``.
        steps: Sequence length T.
        input_grad_rms: RMS of dL/dx_t for each t under the model's own loss.
        lag_grad_rms: RMS of dL/dx_t for each t when only the last step's output carries
            the loss: the long-range gradient, whose decay over t is the vanishing that
            the shared weights' gradients never show.
        lag_grad_rms_bound: The same under plain mean field, the pessimistic bound (R2/R3).
    """

    node: str
    module: str
    mode: str
    steps: int
    input_grad_rms: tuple[float, ...]
    lag_grad_rms: tuple[float, ...]
    lag_grad_rms_bound: tuple[float, ...]


@dataclass(frozen=True)
class Propagation:
    """Everything the engine predicted for one model.

    Attributes:
        graph: The graph the prediction ran over.
        nodes: Per node, in graph order.
        params: Per parameter name, E[(dL/dθ)²] (None: no gradient path reaches it).
        param_stats: The statistics the prediction used for each parameter.
        recurrent: Per recurrent op, the per-time-step gradients.
        unknown_ops: Nodes whose op had no transfer rule (passed through).
        forward_state: Full forward state per node (for rules that need k, kt, roles).
    """

    graph: Graph
    nodes: tuple[NodeResult, ...]
    params: dict[str, float | None]
    param_stats: dict[str, ParamStats]
    recurrent: tuple[RecurrentResult, ...] = ()
    unknown_ops: tuple[str, ...] = ()
    forward_state: dict[str, Any] = field(default_factory=dict, repr=False)
    backward_state: dict[str, Any] = field(default_factory=dict, repr=False)

    def node(self, name: str) -> NodeResult:
        return self._by_name[name]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})


class Context:
    """What transfer rules may read and write during one propagation."""

    def __init__(self, graph: Graph, stats: dict[str, ParamStats], model: nn.Module | None):
        self.graph = graph
        self.stats = stats
        self.model = model
        self.batch = graph.batch_size
        self.grads: dict[str, float] = {}
        self.unknown: dict[str, None] = {}  # ordered and de-duplicated in one, in constant time
        self.recurrent: list[RecurrentResult] = []
        self._rnn_cache: dict[str, Any] = {}

    def param_stats(self, name: str) -> ParamStats:
        return self.stats[name]

    def param_grad(self, name: str, e2: float) -> None:
        if name in self.stats:
            self.grads[name] = self.grads.get(name, 0.0) + max(e2, 0.0)

    def batch_of(self, rows: int) -> int:
        """The batch size, where ``rows`` rows of a layer's input split into samples."""
        b = self.batch or 1
        return b if rows % b == 0 else 1

    def distinct_values(self, buffer: str) -> int | None:
        """Number of distinct values of an integer buffer (None on the meta device)."""
        if self.model is None:
            return None
        try:
            b = self.model.get_buffer(buffer)
        except AttributeError:
            return None
        if b.is_meta or b.numel() == 0 or b.numel() > 1_000_000:
            return None
        return int(b.unique().numel())

    def note_unknown(self, node: Node) -> None:
        self.unknown.setdefault(node.name)

    # -- recurrent layers ------------------------------------------------------------------
    def _rnn_module(self, node: Node) -> nn.Module | None:
        if self.model is None:
            return None
        try:
            mod = self.model.get_submodule(node.module) if node.module else self.model
        except AttributeError:
            return None
        return mod if isinstance(mod, nn.RNNBase) else None

    def _rnn_geometry(self, node: Node, x: Fwd) -> tuple[int, int]:
        batch_first = node.attrs.get("batch_first", False)
        if len(x.shape) == 3:
            return (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
        return 1, x.shape[0] if x.shape else 1

    def rnn_forward(self, node: Node, ins: list[Fwd]):
        x = ins[0]
        mod = self._rnn_module(node)
        batch, steps = self._rnn_geometry(node, x)
        shapes = node.shape if isinstance(node.shape, tuple) else ()
        if mod is None:
            self.note_unknown(node)
            return tuple(x.with_(shape=s) for s in shapes) or (x,)
        if steps < 1 or batch < 1:
            # An empty sequence or batch: the output is empty, and h_n is the initial state,
            # which depends on no weight.
            return tuple(Fwd(q=0.0, shape=s, roles=default_roles(s), const=True) for s in shapes) or (
                Fwd(q=0.0, shape=x.shape, roles=x.roles, const=True),)
        pred = recurrent.predict_module(mod, batch, steps, q_x=x.q)
        self._rnn_cache[node.name] = (mod, batch, steps, x.q)
        q_out = sum(pred.q_out) / len(pred.q_out)
        outs = []
        # Without shapes (a module-order graph from registration order) the output is still
        # a tuple whose first element is the sequence output.
        for i, s in enumerate(shapes or ((),)):
            roles = x.roles if i == 0 and len(x.roles) == len(s) else (
                "".join("B" if d == batch else "P" for d in s[:-1]) + "F" if s else "")
            outs.append(Fwd(q=q_out if i == 0 else pred.q_out[-1], shape=s, roles=roles, origin=f"{node.name}:{i}"))
        return tuple(outs)

    def rnn_backward(self, node: Node, ins: list[Fwd], out, g):
        if node.name not in self._rnn_cache:
            return [g[0] if isinstance(g, tuple) else g] + [None] * (len(ins) - 1)
        mod, batch, steps, qx = self._rnn_cache[node.name]
        g = g if isinstance(g, tuple) else (g,)
        s_out = g[0].s if g and g[0] is not None else 0.0
        s_hn = g[1].s if len(g) > 1 and g[1] is not None else 0.0
        s_cn = g[2].s if len(g) > 2 and g[2] is not None else 0.0
        pred = recurrent.predict_module(mod, batch, steps, q_x=qx, s_out=s_out, s_hn=s_hn, s_cn=s_cn)
        for pname, e2 in pred.parameter_grads().items():
            self.param_grad(f"{node.module}.{pname}" if node.module else pname, e2)
        lag = recurrent.predict_module(mod, batch, steps, q_x=qx, s_out=[0.0] * (steps - 1) + [1.0])
        self.recurrent.append(RecurrentResult(
            node=node.name, module=node.module, mode=node.attrs.get("mode", ""), steps=steps,
            input_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in pred.s_x),
            lag_grad_rms=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x),
            lag_grad_rms_bound=tuple(math.sqrt(max(s, 0.0)) for s in lag.s_x_bound)))
        s_x = sum(pred.s_x) / len(pred.s_x)
        return [Bwd(s_x, 0.0)] + [None] * (len(ins) - 1)


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
    fwd: dict[str, Any] = {}
    overflowed: set[str] = set()
    for node in graph.nodes:
        rule = table.get(node.kind) or table["unknown"]
        ins = [fwd.get(i) if i is not None else None for i in node.inputs]
        if node.kind not in ("input", "const", "param") and not any(isinstance(f, (Fwd, tuple)) for f in ins):
            fwd[node.name] = Fwd(q=0.0, shape=node.shape if isinstance(node.shape, tuple) else (), const=True)
            continue
        if node.kind not in ("input", "const", "param") and node.dtype not in ("int", "bool") and _overflowed(ins):
            fwd[node.name] = _overflow(node, ins)
            overflowed.add(node.name)
            continue
        fwd[node.name] = rule.forward(ctx, node, ins)

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
            back = [Bwd(math.inf, 0.0) if isinstance(f, tuple) or (isinstance(f, Fwd) and f.dtype == "float"
                                                                   and not f.const) else None for f in ins]
            for p in [*node.params.values(), *(node.attrs.get("params") or ())]:
                if isinstance(p, str):
                    ctx.param_grad(p, math.inf)
        else:
            back = rule.backward(ctx, node, ins, out, g)
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
    used = _used_params(graph)
    params: dict[str, float | None] = {}
    for name, st in stats.items():
        if name in ctx.grads:
            params[name] = ctx.grads[name]
        elif name in used:
            params[name] = 0.0
        else:
            params[name] = None
    for name, st in stats.items():
        # A tied tensor's gradient is the sum over all its uses, whatever name the graph used.
        if st.tied:
            vals = [params.get(n) for n in (name, *st.tied)]
            if any(v is not None for v in vals):
                params[name] = sum(v for v in vals if v is not None)
    return Propagation(graph=graph, nodes=tuple(results), params=params, param_stats=stats,
                       recurrent=tuple(ctx.recurrent), unknown_ops=tuple(ctx.unknown),
                       forward_state=fwd, backward_state=grads)


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
