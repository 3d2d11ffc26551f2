"""GL905 invisible-backward."""

from __future__ import annotations

import math

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


class InvisibleBackward(Rule):
    """The model's own backward does something its captured graph does not show.

    ## What it finds
    Backward hooks on modules (`register_full_backward_hook`, its pre-hook and legacy forms)
    or on parameters (`register_hook`), which the static prediction cannot see (info); and,
    after `--probe`, every parameter whose gradient from the model's own `loss.backward()`
    departs from the gradient the captured graph gives on the same draw (warning): a hook, a
    custom `torch.autograd.Function` whose backward is not the derivative of its forward, an
    in-place update the capture does not reproduce.

    ## Why it matters
    The static prediction follows the graph's derivatives. A hook that rescales or clips the
    gradient, or a custom backward (straight-through estimators, gradient reversal, gradient
    scaling), changes what the layers before it learn, and the prediction does not know it.
    The probe measures the model's own backward, so its measured verdict includes them.

    ## Example
    `block.register_full_backward_hook(lambda m, gi, go: (gi[0] * 1e-6,))`: every layer before
    the block gets a millionth of the gradient the graph predicts.

    ## Fix
    Nothing to change when the hook or Function is meant: rely on `gradlint check --probe`
    for this model, whose measured verdict counts it. When it is not meant, remove it.

    ## Known limits
    Statically, only hooks are seen, not what they do (a logging hook changes nothing), and a
    custom autograd Function is seen only by the probe; tensor hooks registered on
    activations inside `forward` are seen only by the probe too.
    """

    code = "GL905"
    name = "invisible-backward"
    severity = Severity.INFO
    category = "trace"
    good = (Case(_mlp, (8, 32)),)
    bad = (Case(_hooked, (8, 32), at="1", severity="info"),)

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
        modules: dict[str, list[str]] = {}
        for entry in result.backward_hooks:
            where, _, kind = entry.rpartition(": ")
            modules.setdefault(where, []).append(kind)
        for where, kinds in modules.items():
            stats = result.propagation.param_stats
            module = stats[where].module if where in stats else ("" if where == "the model" else where)
            yield self.finding(
                result, f"{where} has a {' and a '.join(kinds)}: the static prediction follows the graph's "
                "derivatives and cannot see what it does to the gradient",
                fix="nothing to change if it only watches the gradient; if it changes it, gradlint check --probe "
                    "measures the model's own backward, hook included", module=module, hooks=kinds)
