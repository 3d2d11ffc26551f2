"""GL905 invisible-backward."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32))


def _hooked() -> nn.Module:
    """A backward hook that scales the gradient leaving a block by 1e-6: the graph cannot show it."""
    model = nn.Sequential(nn.Sequential(nn.Linear(32, 32), nn.Tanh()), nn.Sequential(nn.Linear(32, 32), nn.Tanh()),
                          nn.Linear(32, 32))
    model[1].register_full_backward_hook(lambda m, grad_in, grad_out: (grad_in[0] * 1e-6,))
    return model


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times 1e-6 backward: the graph records only the forward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1e-6


class _FunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Sequential(nn.Linear(32, 32), nn.Tanh()), nn.Linear(32, 32)

    def forward(self, x):
        return self.b(_ScaleGrad.apply(self.a(x)))


class InvisibleBackward(Rule):
    """The model's own backward does something its captured graph does not show.

    ## What it finds
    On a gradient path: backward hooks on modules (`register_full_backward_hook`, its pre-hook
    and legacy forms) or on parameters (`register_hook`), hooks a forward registers on its
    intermediate tensors, and custom `torch.autograd.Function`s (info). The static prediction
    takes every op's backward to be the derivative of its forward, so it cannot see what these
    do: the verdict is `unknown` (exit 2) until `--probe` measures the model's own backward.
    After `--probe`: every parameter whose gradient from the model's own `loss.backward()`
    departs from the gradient the captured graph gives on the same draw (warning), whatever
    the cause (a hook, a Function whose backward is not its forward's derivative, an in-place
    update the capture does not reproduce); the measured verdict then counts them.

    ## Why it matters
    The static prediction follows the graph's derivatives. A hook that rescales or clips the
    gradient, or a custom backward (straight-through estimators, gradient reversal, gradient
    scaling), changes what the layers before it learn, and the prediction does not know it.
    A Function that only computes its forward's derivative more efficiently (a parallel scan,
    a fused kernel) looks the same from outside. The probe measures the model's own backward,
    so its measured verdict includes them.

    ## Example
    `block.register_full_backward_hook(lambda m, gi, go: (gi[0] * 1e-6,))`: every layer before
    the block gets a millionth of the gradient the graph predicts.

    ## Fix
    Run `gradlint check --probe` for this model: its measured verdict counts the hook or
    Function. When a hook or Function is not meant, remove it. When every custom Function of
    the model computes its forward's exact derivative, `trust-custom-backward = true` in
    `[tool.gradlint]` (or `trust_custom_backward=True`) lets the static verdict stand for them.

    ## Known limits
    Statically, hooks and Functions are seen, not what they do: a logging hook changes
    nothing and still makes the verdict unknown. Functions that torch defines (reentrant
    checkpointing) are trusted. Functions and forward-registered hooks are found from the
    capture's forward on fake tensors, so a forward that registers a hook only on real data
    is not seen.
    """

    code = "GL905"
    name = "invisible-backward"
    severity = Severity.INFO
    category = "trace"
    good = (Case(_mlp, (8, 32)),)
    bad = (Case(_hooked, (8, 32), at="1", severity="info"), Case(_FunctionNet, (8, 32), severity="info"))

    def check(self, result):
        if result.departures:
            stats = result.propagation.param_stats
            names = [n for n, _ in result.departures]
            first, d = result.departures[0]
            module = stats[first].module if first in stats else ""
            if math.isinf(d):
                how = "a gradient where the graph gives none" if d > 0 else "no gradient where the graph gives one"
            else:
                how = f"10^{d:+.1f} of the gradient the captured graph gives it"
            more = f" (and {len(names) - 1} more parameters)" if len(names) > 1 else ""
            yield self.finding(
                result, f"measured: the model's own backward gives {first} {how}{more}: a hook, a custom "
                "autograd.Function or an in-place update that the static prediction does not see; the measured "
                "verdict counts it", fix="nothing to change if it is meant: rely on gradlint check --probe for "
                "this model; otherwise remove the hook or Function", module=module, severity=Severity.WARNING,
                departures={n: (v if math.isfinite(v) else None) for n, v in result.departures[:50]})
            return
        for entry in result.custom_backward:
            what = "its backward" if entry.startswith("custom") else "what it does to the gradient"
            yield self.finding(
                result, f"a {entry} sits on a gradient path: the static prediction takes every op's backward to be "
                f"the derivative of its forward and cannot check {what}, so the verdict is unknown until "
                "gradlint check --probe measures the model's own backward",
                fix="run gradlint check --probe; if every custom Function computes its forward's exact derivative "
                    "(an efficient implementation), set trust-custom-backward = true in [tool.gradlint]"
                    if entry.startswith("custom") else "run gradlint check --probe", custom=entry)
        modules: dict[str, list[str]] = {}
        for entry in result.backward_hooks:
            where, _, kind = entry.rpartition(": ")
            modules.setdefault(where, []).append(kind)
        for where, kinds in modules.items():
            stats = result.propagation.param_stats
            module = stats[where].module if where in stats else ("" if where == "the model" else where)
            yield self.finding(
                result, f"{where} has a {' and a '.join(kinds)}: the static prediction follows the graph's "
                "derivatives and cannot see what it does to the gradient, so the verdict is unknown until "
                "gradlint check --probe measures the model's own backward, hook included",
                fix="run gradlint check --probe; remove the hook if it is not meant", module=module, hooks=kinds)
