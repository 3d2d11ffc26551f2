"""GL101 vanishing-gradient."""

from __future__ import annotations

import math

import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.examples import RNNHead
from gradlint.lint.recurrence import (
    bias_suffixes,
    forget_bias_that_keeps,
    lag_decay,
    lag_log10,
    lstm_forget_fix,
    rnn_sizes,
)
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import trunk_crossing


def _sigmoid_mlp(depth: int = 20, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def _kaiming_mlp(depth: int = 20, width: int = 64) -> nn.Module:
    m = _sigmoid_mlp(depth, width)
    m = nn.Sequential(*[nn.ReLU() if isinstance(x, nn.Sigmoid) else x for x in m])
    for x in m:
        if isinstance(x, nn.Linear):
            nn.init.kaiming_normal_(x.weight, nonlinearity="relu")
            nn.init.zeros_(x.bias)
    return m


class VanishingGradient(Rule):
    """The gradient reaching the early layers is predicted to vanish.

    ## What it finds
    Models whose predicted gradient signal at some layer is more than `threshold` decades
    below the output's: along the trunk (the tensors every input-to-output path passes
    through), through a collapse of the forward signal, or over the time steps of a
    recurrent layer. The finding points at the first layer, going back from the output,
    where the loss crosses the threshold, and names the causes by their share.

    ## Why it matters
    Layers whose gradient is orders of magnitude smaller than the last layers' barely train
    with any single learning rate (Glorot & Bengio 2010; Hochreiter 1991; Bengio, Simard &
    Frasconi 1994 for recurrences).

    ## Example
    A 20-layer MLP of nn.Linear + nn.Sigmoid with PyTorch's default init: the gradient at
    the first layer is about 16 decades below the output's.

    ## Fix
    Depends on the dominant cause: ReLU-family activations with He init
    (`nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`), normalization between
    layers (`nn.LayerNorm`), residual connections, or LSTM/GRU for recurrences.

    ## Known limits
    Mean-field predictions assume wide layers with independent random weights; layers
    narrower than about 32 fluctuate by tenths of a decade around the prediction.
    """

    code = "GL101"
    name = "vanishing-gradient"
    severity = Severity.ERROR
    category = "vanishing"
    options = {"threshold": None}  # None: the run's --threshold
    good = (Case(_kaiming_mlp, (32, 64)),)
    bad = (Case(_sigmoid_mlp, (32, 64), severity="error"),
           # Over time: an nn.RNN read at the last of 32 steps.
           Case(lambda: RNNHead("rnn"), (4, 32, 32), at="rnn", severity="error"))

    def check(self, result):
        s = result.summary
        thr = self.threshold(result)
        if s.attenuation_decades < thr:
            return
        c = trunk_crossing(result, thr, vanishing=True)
        where = c.module or "the model"
        weakest = result.graph.by_name.get(s.weakest) if s.weakest else None
        rec = next((r for r in result.propagation.recurrent if r.node == s.weakest), None)
        fix = c.fix
        if rec is not None:
            msg = (f"gradient vanishes over time: in {where} the gradient from the last of {rec.steps} steps "
                   f"back to the first is 10^-{s.attenuation_decades:.1f}")
            fix = _recurrent_fix(result, rec, thr) or fix
        elif weakest is not None and weakest.module and weakest.module != c.module:
            msg = (f"gradient vanishes: it falls below 10^-{thr:g} of the output's at {where} "
                   f"and reaches 10^-{s.attenuation_decades:.1f} at {weakest.module}")
        else:
            msg = f"gradient vanishes: at {where} it is 10^-{s.attenuation_decades:.1f} of the output's"
        yield self.finding(result, c.message(msg), fix=fix, module=c.module, node=c.node, **c.evidence,
                           weakest=s.weakest, threshold=thr)


def _recurrent_fix(result, rec, thr: float) -> str | None:
    """A fix for a recurrence that loses its gradient over time, sized for this layer's steps so
    that applying it clears this finding (tests/test_truth.py measures it): the forget-gate bias
    an LSTM needs, or a gated cell with that bias; where no bias up to 5 keeps the gradient,
    truncated backpropagation through time."""
    keeps, kept, _ = forget_bias_that_keeps(result, rec, thr, 1.0)
    rate = lag_decay(lag_log10(rec))[1]
    steps = max(2, int(thr / rate)) if rate > 0 and math.isfinite(rate) else None
    tbptt = (f"truncate backpropagation through time to at most {steps} steps (carry the hidden state across "
             "chunks with h = h.detach())") if steps is not None and steps < rec.steps else ""
    if rec.mode == "lstm":
        if keeps is None:
            return (f"no forget-gate bias up to 5 keeps the gradient over {rec.steps} steps (bias 5 is predicted to "
                    f"lose {kept:.1f} decades): {tbptt or 'shorten the sequences'}, or add attention or skip "
                    "connections over time")
        return (f"set the forget-gate bias to {keeps:g}, predicted to lose {kept:.1f} decades over these "
                f"{rec.steps} steps:\n{lstm_forget_fix(result, rec, keeps, bias_suffixes(result, rec))}")
    sizes = rnn_sizes(result, rec)
    if keeps is None or sizes is None:
        return f"{tbptt}; or add attention or skip connections over time" if tbptt else None
    return (f"use a gated cell, nn.LSTM({sizes[0]}, {sizes[1]}, batch_first=True), with the forget-gate bias at "
            f"{keeps:g} (predicted to lose {kept:.1f} decades over these {rec.steps} steps):\n"
            f"h = lstm.hidden_size; lstm.bias_ih_l0.data[h:2*h].fill_({keeps:g}); lstm.bias_hh_l0.data[h:2*h].zero_()"
            + (f"\nor {tbptt}" if tbptt else ""))
