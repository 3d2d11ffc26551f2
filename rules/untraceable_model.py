"""GL901 untraceable-model."""

from __future__ import annotations

import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            x = self.a(x)
        return self.b(x)


class _TwoInputs(nn.Module):
    """A forward whose inputs gradlint cannot infer from its first layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x, scale):
        return self.b(self.a(x)) * scale


class UntraceableModel(Rule):
    """The model could not be traced fully; gradlint analyzed a simpler graph.

    ## What it finds
    Models that `torch.export` cannot trace (data-dependent control flow, unsupported
    Python), analyzed instead through `torch.fx` with layers as leaves or, failing that, as
    the chain of leaf modules in the order a meta-device forward calls them.

    ## Why it matters
    The fallback graphs lose residual paths and functional ops, so the prediction is less
    certain: a residual network read as a chain looks deeper than it is.

    ## Example
    A forward with `if x.sum() > 0:` cannot be exported.

    ## Fix
    Make forward traceable (`torch.cond` for data-dependent branches), or give gradlint the
    example inputs it needs (`@gradlint.target(inputs=...)`).

    ## Known limits
    The message quotes torch.export's first line of error, which is not always the cause.
    """

    code = "GL901"
    name = "untraceable-model"
    severity = Severity.INFO
    category = "trace"
    good = (Case(lambda: nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)), (8, 32)),)
    bad = (Case(_DataDependent, (8, 32), severity="info"),
           # No example inputs: torch.fx without shapes.
           Case(_TwoInputs, None, severity="info"))

    def check(self, result):
        if result.graph.analysis == "export":
            return
        why = "; ".join(result.trace_failures) or "no example inputs"
        path = {"fx": "torch.fx with layers as leaves (no shapes)",
                "module-order": "the leaf modules in call order (residual paths and functional ops are not seen)"}
        yield self.finding(result, f"analyzed through {path.get(result.graph.analysis, result.graph.analysis)}: {why}",
                           fix="make forward traceable by torch.export (torch.cond for data-dependent branches) "
                               "or declare inputs with @gradlint.target(inputs=...)",
                           analysis=result.graph.analysis, failures=list(result.trace_failures))
