"""GL902 unknown-op."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule


class _Bessel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(torch.special.bessel_j0(self.a(x)))


class _Log(nn.Module):
    """torch.log of a layer's output: undefined on the negative half of its Gaussian, so the
    element-wise rule cannot evaluate it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(torch.log(self.a(x)))


class UnknownOp(Rule):
    """An op without a transfer rule: the statistics after it and the gradients through it are unknown.

    ## What it finds
    Ops in the traced graph that gradlint's engine has no rule for, or that its numeric rule
    could not evaluate. Its output's statistics, and every gradient that goes through it, are
    unknown: the parameters that depend on them get no prediction (`None`, shown as unknown),
    and a verdict that depends on them is `unknown`, which fails the gate. An op found at several
    places (once per layer) is one finding, at its first place, with the number of places.

    ## Why it matters
    gradlint does not guess: the predictions downstream of the op (forward) and upstream of it
    (gradient) are left unknown rather than made from an assumption.

    ## Example
    `torch.special.bessel_j0(h)` in a forward.

    ## Fix
    Nothing in the model needs to change. A custom transfer rule can be registered with
    `gradlint.engine.transfers.register`; or replace the op with a known one if the choice is free.

    ## Known limits
    Mask and index computations that reach no parameter's gradient are not reported.
    """

    code = "GL902"
    name = "unknown-op"
    severity = Severity.INFO
    category = "trace"
    good = (Case(lambda: nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32)), (8, 32)),)
    bad = (Case(_Bessel, (8, 32), severity="info"), Case(_Log, (8, 32), severity="info"))

    def check(self, result):
        prop = result.propagation
        places: dict[str, list] = {}  # op -> its nodes, in graph order
        for name in prop.unknown_ops:
            node = result.graph.by_name.get(name)
            if node is None:
                continue
            res = prop.node(name)
            if res.s <= 0 and not any(u for u in result.graph.users.get(name, [])
                                      if prop.node(u).s > 0):
                continue  # mask and index arithmetic that no gradient flows through
            op = node.attrs.get("target") if isinstance(node.attrs.get("target"), str) else node.op
            places.setdefault(str(op), []).append(node)
        # One finding per op, at its first place: a layer repeated 32 times is one gap in the
        # rules, not 32.
        for op, nodes in places.items():
            first = nodes[0]
            where = first.module or "the model"
            at = f"in {where}" if len(nodes) == 1 else f"at {len(nodes)} places, the first in {where}"
            yield self.finding(result, f"no transfer rule for {op} {at}: the statistics after it "
                                       "and the gradients through it are unknown", node=first.name, module=first.module,
                               op=op, places=len(nodes), modules=list(dict.fromkeys(n.module for n in nodes)))
