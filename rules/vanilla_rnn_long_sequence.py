"""GL601 vanilla-rnn-long-sequence."""

from __future__ import annotations

import math
from typing import Any

from gradlint.base.findings import Severity
from gradlint.lint.examples import RNNHead
from gradlint.lint.recurrence import (
    counterfactual_decay,
    input_q,
    lag_decay,
    lag_log10,
    lstm_counterfactual_stats,
    recurrence_name,
    recurrent_gain,
    rnn_sizes,
)
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import rounded


class VanillaRnnLongSequence(Rule):
    """An nn.RNN is trained over more steps than its gradient survives.

    ## What it finds
    `nn.RNN` layers (tanh or ReLU) whose predicted long-range gradient, the gradient at
    each input step when only the last step carries the loss, falls by more than
    `warn_decades` between the last step and the first. Reports the decades lost over the
    sequence, the loss per step, and what an `nn.LSTM` with forget-gate bias 1 would lose
    over the same steps. Error when the loss reaches the threshold (`threshold`, default the
    check's threshold, 2 decades).

    ## Why it matters
    A vanilla RNN multiplies the gradient by the same recurrent Jacobian at every step; at
    PyTorch's default init (U(±1/√H)) that is about 0.34 decades per step (R1 in
    docs/design.md §6), so dependencies further back than a few steps get no learning signal (Hochreiter
    1991; Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013). Gated cells keep a
    near-identity memory path (Hochreiter & Schmidhuber 1997; Cho et al. 2014).

    ## Example
    `nn.RNN(128, 128, batch_first=True)` read at the last of 64 steps: the gradient reaching
    the first step is 10^-21.6 of the last step's, 0.34 decades per step.

    ## Fix
    `nn.LSTM(input_size, hidden_size, batch_first=True)` with the forget-gate bias at 1
    (`h = lstm.hidden_size; lstm.bias_ih_l0.data[h:2*h].fill_(1.0); lstm.bias_hh_l0.data[h:2*h].zero_()`),
    or `nn.GRU(...)`; or truncate backpropagation through time to the number of steps the
    gradient survives (carry the hidden state across chunks with `h = h.detach()`).

    ## Known limits
    Measures the gradient from the last output step back; a loss on every step also trains
    short-range dependencies, which this rule does not judge. Mean field is accurate for
    nn.RNN to about 0.03 decades per step; below width ~32 individual seeds scatter by about
    a decade over 100 steps. A ReLU RNN whose gradient grows instead is GL603's.
    """

    code = "GL601"
    name = "vanilla-rnn-long-sequence"
    severity = Severity.ERROR
    category = "recurrent"
    options = {"threshold": None, "warn_decades": 1.0}
    good = (Case(lambda: RNNHead("rnn"), (4, 3, 32)), Case(lambda: RNNHead("lstm"), (4, 32, 32)))
    bad = (Case(lambda: RNNHead("rnn"), (4, 32, 32), at="rnn", severity="error"),)

    def check(self, result):
        thr = self.threshold(result)
        warn = float(self.opts["warn_decades"])
        for rec in result.propagation.recurrent:
            if rec.mode not in ("rnn_tanh", "rnn_relu") or rec.steps < 2:
                continue
            total, rate = lag_decay(lag_log10(rec))
            if not total >= warn or rate <= 0:
                continue
            sev = self.escalate(total, error_at=thr)
            first = f"10^-{total:.1f}" if math.isfinite(total) else "below 10^-300"
            msg = (f"{recurrence_name(rec)} over {rec.steps} steps: the gradient reaching the first step is "
                   f"{first} of the last step's ({rate:.2f} decades lost per step)")
            evidence: dict[str, Any] = {"steps": rec.steps, "decades": rounded(total),
                                        "decades_per_step": rounded(rate), "threshold": thr}
            gain = recurrent_gain(result, rec)
            if gain is not None:
                evidence["recurrent_gain"] = rounded(gain)
            sizes = rnn_sizes(result, rec)
            if sizes is not None:
                lstm_total, _ = counterfactual_decay(lstm_counterfactual_stats(*sizes, 1.0), input_q(result, rec),
                                                     rec.steps, result.graph.batch_size or 1)
                if math.isfinite(lstm_total):
                    evidence["lstm_forget1_decades"] = rounded(lstm_total)
                    msg += (f"; an nn.LSTM with forget-gate bias 1 is predicted to lose {lstm_total:.1f} decades "
                            f"over the same steps")
            keep = max(2, int(thr / rate) + 1) if rate > 0 and math.isfinite(rate) else None
            size = f"{sizes[0]}, {sizes[1]}" if sizes else "input_size, hidden_size"
            fix = (f"use a gated cell: nn.LSTM({size}, batch_first=True) with the forget-gate bias at 1:\n"
                   "h = lstm.hidden_size; lstm.bias_ih_l0.data[h:2*h].fill_(1.0); lstm.bias_hh_l0.data[h:2*h].zero_()\n"
                   f"or nn.GRU({size}, batch_first=True)")
            if keep is not None and keep < rec.steps:
                evidence["max_steps_within_threshold"] = keep
                fix += (f"; or truncate backpropagation through time to at most {keep} steps (carry the hidden "
                        "state across chunks with h = h.detach())")
            yield self.finding(result, msg, fix=fix, module=rec.module, node=rec.node, severity=sev, **evidence)
