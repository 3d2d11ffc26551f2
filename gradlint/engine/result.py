"""What rules read: the propagation, its summary, and where things are in the source."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradlint.base.report import Summary
from gradlint.capture.graph import Graph, Source
from gradlint.engine.propagate import Propagation, is_unknown, node_params
from gradlint.engine.summary import summarize
from gradlint.engine.transfers import TRANSFERS


def cause_of(node) -> str | None:
    """The cause a node's gain is attributed to (None = benign)."""
    rule = TRANSFERS.get(node.kind)
    if rule is None:
        return None
    if hasattr(rule, "cause_of"):
        return rule.cause_of(node)
    return rule.cause


@dataclass(frozen=True)
class Result:
    """A prediction (or, after a probe, a measurement) for one model, as rules see it.

    Attributes:
        graph: The traced graph.
        propagation: Per-node and per-parameter predictions.
        summary: Verdict and attribution.
        definitions: Per module, where it was assigned in its parent's ``__init__``.
        target_source: Where the target itself is defined (fallback location).
        measured: Per parameter, measured gradient RMS after a probe (else empty).
        trace_failures: Why the better graph captures failed, when a fallback was used.
        nonfinite: After a probe, ``(node, "forward" | "backward")`` for the first node whose
            value (or, when every value was finite, whose gradient) held inf/nan.
        departures: After a probe, ``(parameter, log10 model / graph)`` where the model's own
            backward departs from its captured graph's (``Agreement.departures``).
        backward_hooks: Where the model holds backward hooks on a gradient path, which can
            change the gradient in ways the graph does not show (``module: kind`` or
            ``parameter: kind``).
        custom_backward: Custom autograd Functions and forward-registered tensor hooks on the
            gradient paths (``Graph.own_backward``, less the Functions trusted by
            ``trust-custom-backward``).
        sites: Per module and parameter, the user's lines that built or initialized it,
            innermost first, when gradlint built the model (``gradlint.capture.sites``).
    """

    graph: Graph
    propagation: Propagation
    summary: Summary
    definitions: dict[str, Source] = field(default_factory=dict)
    target_source: Source | None = None
    measured: dict[str, float] = field(default_factory=dict)
    trace_failures: tuple[str, ...] = ()
    nonfinite: tuple[str, str] | None = None
    departures: tuple[tuple[str, float], ...] = ()
    backward_hooks: tuple[str, ...] = ()
    custom_backward: tuple[str, ...] = ()
    sites: dict[str, tuple[Source, ...]] = field(default_factory=dict)

    def locate(self, node: str | None = None, module: str = "") -> tuple[str | None, int | None]:
        """The user's source line for a node or a module: its definition, else its call."""
        if node is not None and node in self.graph.by_name:
            n = self.graph.by_name[node]
            module = module or n.module
        else:
            n = None
        mod = module
        while mod:
            if mod in self.definitions:
                src = self.definitions[mod]
                return src.path, src.line
            mod = mod.rsplit(".", 1)[0] if "." in mod else ""
        if n is not None and n.call_site is not None:
            return n.call_site.path, n.call_site.line
        if self.target_source is not None:
            return self.target_source.path, self.target_source.line
        return None, None

    def grad_rms(self, param: str) -> float | None:
        e2 = self.propagation.params.get(param)
        return None if e2 is None else math.sqrt(max(e2, 0.0))

    def unknown_params(self) -> dict[str, str]:
        """Parameters whose predicted gradient is unknown, and why (see ``unknown_params``)."""
        return unknown_params(self.propagation)


def _gradient_path_unknown_ops(prop: Propagation) -> list[str]:
    """Nodes with no transfer rule that a gradient flows through (mask and index arithmetic,
    which no gradient crosses, does not count)."""
    g = prop.graph
    s = {n.name: n.s for n in prop.nodes}
    out = []
    for name in prop.unknown_ops:
        if name not in g.by_name:
            continue
        if s.get(name) is None or s[name] > 0 or any(s.get(u) is None or (s.get(u) or 0) > 0
                                                     for u in g.users.get(name, [])):
            out.append(name)
    return out


def unknown_gradient_nodes(prop: Propagation) -> dict[str, str]:
    """Nodes whose predicted gradient is unknown because it crosses an op with no transfer rule
    on a gradient path (the op itself and everything upstream of it), with that op's name."""
    g = prop.graph
    upstream: dict[str, str] = {}
    for name in _gradient_path_unknown_ops(prop):
        op = g.by_name[name]
        upstream[name] = str(op.attrs.get("target") if isinstance(op.attrs.get("target"), str) else op.op or op.kind)
    for n in reversed(g.nodes):
        if n.name in upstream:
            for i in n.inputs:
                if i is not None and i not in upstream:
                    upstream[i] = upstream[n.name]
    return upstream


def unknown_params(prop: Propagation) -> dict[str, str]:
    """Parameters whose predicted gradient is unknown, with the reason.

    * the engine's own None for a parameter the graph uses;
    * every parameter upstream of an op with no transfer rule on a gradient path: its gradient
      crosses an op whose derivative gradlint cannot account for;
    * in a module-order analysis, a predicted zero: that fallback cannot see every path, so it
      cannot prove that none reaches the parameter.
    """
    g = prop.graph
    used = {p for n in g.nodes for p in node_params(n) if not (n.kind == "param" and not g.users.get(n.name))}
    out: dict[str, str] = {}
    ops = _gradient_path_unknown_ops(prop)
    if ops:
        places: dict[str, list[str]] = {}  # op -> the modules it is in, in graph order
        for name in ops:
            op = g.by_name[name]
            what = op.attrs.get("target") if isinstance(op.attrs.get("target"), str) else op.op or op.kind
            places.setdefault(str(what), []).append(op.module or "the model")
        upstream = unknown_gradient_nodes(prop)  # node -> the op with no rule it feeds
        for n in g.nodes:
            if n.name in upstream:
                what = upstream[n.name]
                mods = places[what]
                where = f"in {mods[0]}" if len(mods) == 1 else f"at {len(mods)} places, the first in {mods[0]}"
                for p in node_params(n):
                    out.setdefault(p, f"upstream of {what} ({where}), which has no transfer rule")
    for name, e2 in prop.params.items():
        if name in used and e2 is None:
            out.setdefault(name, "no prediction")
        elif g.analysis in ("module-order", "fx") and e2 == 0.0:
            out.setdefault(name, f"predicted zero by the {g.analysis} fallback, which cannot see every path")
    return out


def unknown_reasons(prop: Propagation, trace_failures: tuple[str, ...] = ()) -> list[str]:
    """Why the verdict cannot rest on known numbers, one line per reason (empty: it can)."""
    g = prop.graph
    reasons = []
    if g.analysis == "module-order":
        why = f" ({trace_failures[0]})" if trace_failures else ""
        reasons.append("analyzed from the leaf modules in call order, which cannot see functional ops and "
                       f"residual paths{why}")
    elif g.analysis == "fx":
        reasons.append("analyzed from parameter shapes only (torch.fx, without example inputs), which leaves out "
                       "every estimate that needs a forward pass: declare the inputs")
    unknown = unknown_params(prop)
    if unknown:
        by_reason: dict[str, list[str]] = {}
        for p, why in unknown.items():
            by_reason.setdefault(why, []).append(p)
        for why, ps in by_reason.items():
            more = f" and {len(ps) - 1} more" if len(ps) > 1 else ""
            reasons.append(f"the gradient of {ps[0]}{more} is unknown: {why}")
    if not prop.param_stats:
        reasons.append("the model has no parameters, so no gradient to predict (a quantized model keeps its "
                       "weights packed, outside nn.Parameter: check the float model before quantizing)")
    return reasons


def build_summary(prop: Propagation, threshold: float, trace_failures: tuple[str, ...] = (),
                  unknown: tuple[str, ...] = ()) -> Summary:
    """Summarize a propagation with ``summarize``, from its per-node moments; ``unknown``: the
    caller's reasons why the verdict cannot rest on them, besides the propagation's own."""
    g = prop.graph
    # Statistics downstream of an op without a rule (forward) or upstream of it (backward) are
    # guesses: the verdict reads them as unknown, so no verdict rests on them.
    fwd, bwd = prop.forward_state, prop.backward_state
    q = {n.name: None if is_unknown(fwd.get(n.name)) else n.q for n in prop.nodes}
    s = {n.name: None if is_unknown(bwd.get(n.name)) else n.s for n in prop.nodes}
    numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in prop.nodes}
    causes = {n.name: cause_of(n) for n in g.nodes}
    rec = [(r.node, _lag_loss(r)) for r in prop.recurrent]
    return summarize(g, q, s, numel, causes, rec, prop.params, threshold, g.batch_size,
                     unknown=[*unknown_reasons(prop, trace_failures), *unknown])


def _lag_loss(r) -> float:
    """Decades by which the long-range gradient at the first step is below the last step's
    (negative when it grows toward the first step: an exploding recurrence)."""
    first, last = r.lag_grad_rms[0], r.lag_grad_rms[-1]
    if last <= 0:
        return 0.0
    if first <= 0:
        return math.inf
    return math.log10(last / first)
