"""GL603 exploding-recurrence."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.examples import RNNHead
from gradlint.lint.recurrence import recurrence_name, recurrent_gain
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import rounded


def _orthogonal_rnn(gain: float, size: int = 32) -> nn.Module:
    m = RNNHead("rnn", size)
    with torch.no_grad():
        nn.init.orthogonal_(m.rnn.weight_hh_l0, gain=gain)
    return m


def _growth(values) -> tuple[float, int]:
    """Largest decades by which an earlier step's gradient exceeds the last step's, and where."""
    last = values[-1] if values else 0.0
    if not values or not last > 0:
        return 0.0, 0
    best, at = 0.0, len(values) - 1
    for t, v in enumerate(values[:-1]):
        g = math.inf if not math.isfinite(v) else (math.log10(v / last) if v > 0 else -math.inf)
        if g > best:
            best, at = g, t
    return best, at


class ExplodingRecurrence(Rule):
    """The gradient of a recurrent layer grows as it goes back in time.

    ## What it finds
    `nn.RNN` / `nn.LSTM` / `nn.GRU` layers whose predicted long-range gradient (the gradient
    at each input step when only the last step carries the loss) is larger at earlier steps
    than at the last one: the recurrent Jacobian has gain above 1 (a ReLU RNN, or weight_hh
    scaled up, e.g. an orthogonal init with gain > 1). Reports the growth over the sequence,
    per step, and the recurrent weight's gain. Error when the growth reaches `threshold`
    (default: the check's threshold, 2 decades), warning from `warn_decades`.

    ## Why it matters
    The gradient at lag k is a product of k Jacobians; with spectral radius above 1 it grows
    exponentially in k and the first updates overshoot or overflow (Pascanu, Mikolov & Bengio
    2013, "On the difficulty of training recurrent neural networks"). Gradient clipping
    bounds the step; an orthogonal recurrent matrix of gain 1 keeps the product's norm
    (Saxe et al. 2014; Le, Jaitly & Hinton 2015 for ReLU RNNs).

    ## Example
    `nn.RNN(128, 128)` with `nn.init.orthogonal_(rnn.weight_hh_l0, gain=3.0)` over 32
    steps: the first step's gradient is 10^4.4 of the last step's.

    ## Fix
    `nn.init.orthogonal_(rnn.weight_hh_l0)` (gain 1), and clip gradients in the training
    loop: `torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)`. The gradient
    then no longer grows; a tanh RNN at gain 1 loses it slowly instead (tanh' < 1), which
    GL601 reports over longer sequences (12 steps at width 32: a warning), and whose fix,
    an LSTM, applies.

    ## Known limits
    For gated cells (LSTM, GRU) the weight-reuse estimate R4 over-predicts growth (by up to
    1.6 decades over 32 steps for a GRU with orthogonal gain 3) and plain mean field
    under-predicts it, so their findings are errors only when the midpoint of the two
    reaches the threshold. Forward explosion of the hidden state (a ReLU RNN's h growing without bound) is the
    exploding-gradient rule's.
    """

    code = "GL603"
    name = "exploding-recurrence"
    severity = Severity.ERROR
    category = "exploding"
    options = {"threshold": None, "warn_decades": 1.0}
    good = (Case(lambda: _orthogonal_rnn(1.0), (4, 32, 32)), Case(lambda: RNNHead("lstm"), (4, 16, 32)))
    bad = (Case(lambda: _orthogonal_rnn(3.0), (4, 24, 32), at="rnn", severity="error"),)

    def check(self, result):
        thr = self.threshold(result)
        warn = float(self.opts["warn_decades"])
        for rec in result.propagation.recurrent:
            if rec.steps < 2:
                continue
            growth, at = _growth(rec.lag_grad_rms)
            if not growth >= warn:
                continue
            gated = rec.mode in ("lstm", "gru")
            bound, _ = _growth(rec.lag_grad_rms_bound) if gated else (growth, at)
            # Gated cells: the truth lies between the bound and the estimate (R4), so judge the midpoint.
            judged = 0.5 * (growth + bound) if gated else growth
            sev = self.escalate(judged, error_at=thr)
            lag = rec.steps - 1 - at
            rate = growth / lag if lag > 0 and math.isfinite(growth) else math.inf
            size = "more than 300" if not math.isfinite(growth) else f"{growth:.1f}"
            msg = (f"{recurrence_name(rec)}: the gradient grows going back in time; at step {at} it is "
                   f"10^{size} of the last step's over {rec.steps} steps (+{rate:.2f} decades per step)")
            evidence = {"steps": rec.steps, "growth_decades": rounded(growth), "decades_per_step": rounded(rate),
                        "step": at, "threshold": thr}
            if gated:
                msg += f"; the plain mean-field bound predicts {bound:+.1f}"
                evidence["growth_decades_bound"] = rounded(bound)
            gain = recurrent_gain(result, rec)
            if gain is not None:
                evidence["recurrent_gain"] = rounded(gain)
                msg += f" (weight_hh RMS·sqrt(fan-in) = {gain:.2f})"
            init = ("nn.init.orthogonal_(w)" if not gated else
                    f"[nn.init.orthogonal_(c) for c in w.data.chunk({4 if rec.mode == 'lstm' else 3})]")
            fix = (f"rescale the recurrent weights to gain <= 1:\nrnn = model.get_submodule({rec.module!r})\n"
                   f"for n, w in rnn.named_parameters():\n    if n.startswith(\"weight_hh\"): {init}\n"
                   "and clip gradients after backward(): torch.nn.utils.clip_grad_norm_(model.parameters(), "
                   "max_norm=1.0)")
            if rec.mode == "rnn_relu":
                fix += "\nor use nn.RNN(..., nonlinearity=\"tanh\"), nn.LSTM or nn.GRU"
            elif rec.mode == "rnn_tanh":
                fix += ("\n(at gain 1 a tanh RNN's gradient fades over long sequences instead, GL601: nn.LSTM keeps "
                        "it)")
            yield self.finding(result, msg, fix=fix, module=rec.module, node=rec.node, severity=sev, **evidence)

