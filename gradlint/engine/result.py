"""What rules read: the propagation, its summary, and where things are in the source."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradlint.base.report import Summary
from gradlint.capture.graph import Graph, Source
from gradlint.engine.propagate import Propagation
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
    """

    graph: Graph
    propagation: Propagation
    summary: Summary
    definitions: dict[str, Source] = field(default_factory=dict)
    target_source: Source | None = None
    measured: dict[str, float] = field(default_factory=dict)
    trace_failures: tuple[str, ...] = ()
    nonfinite: tuple[str, str] | None = None

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


def build_summary(prop: Propagation, threshold: float) -> Summary:
    """Summarize a propagation with ``summarize``, from its per-node moments."""
    g = prop.graph
    q = {n.name: n.q for n in prop.nodes}
    s = {n.name: n.s for n in prop.nodes}
    numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in prop.nodes}
    causes = {n.name: cause_of(n) for n in g.nodes}
    rec = [(r.node, _lag_loss(r)) for r in prop.recurrent]
    return summarize(g, q, s, numel, causes, rec, prop.params, threshold, g.batch_size)


def _lag_loss(r) -> float:
    """Decades by which the long-range gradient at the first step is below the last step's
    (negative when it grows toward the first step: an exploding recurrence)."""
    first, last = r.lag_grad_rms[0], r.lag_grad_rms[-1]
    if last <= 0:
        return 0.0
    if first <= 0:
        return math.inf
    return math.log10(last / first)
