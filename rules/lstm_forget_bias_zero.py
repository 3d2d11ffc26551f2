"""GL602 lstm-forget-bias-zero."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.engine import recurrent
from gradlint.lint.examples import RNNHead
from gradlint.lint.recurrence import (
    CF_MAX_STEPS,
    counterfactual_decay,
    input_q,
    lag_decay,
    lag_log10,
    recurrence_name,
    rnn_param,
)
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import rounded


def _lstm_forget(forget_bias: float, size: int = 32) -> nn.Module:
    m = RNNHead("lstm", size)
    with torch.no_grad():
        m.rnn.bias_ih_l0[size:2 * size].fill_(forget_bias)
        m.rnn.bias_hh_l0[size:2 * size].zero_()
    return m


def _layer0_stats(result, rec, forget_bias: float) -> recurrent.RecurrentLayerStats | None:
    """The first layer of an LSTM as the engine saw it, with its forget-gate bias set.

    ParamStats hold whole-tensor moments only, so every chunk gets the tensor's mean
    square, and the bias spread within a chunk is estimated assuming that only the forget
    chunk is shifted: a chunk at ``b`` and three zero-mean chunks give a mean of b/4 and a
    spread between chunks of 3·mean², which is removed.
    """
    w_ih = rnn_param(result, rec, "weight_ih")
    w_hh = rnn_param(result, rec, "weight_hh")
    if w_ih is None or w_hh is None or len(w_ih.shape) != 2:
        return None
    w_hr = rnn_param(result, rec, "weight_hr")
    within = 0.0
    for b in (rnn_param(result, rec, "bias_ih"), rnn_param(result, rec, "bias_hh")):
        if b is not None:
            within += max(b.ms - 4.0 * b.mean * b.mean, 0.0)
    return recurrent.RecurrentLayerStats(
        kind="lstm", input_size=int(w_ih.shape[1]), hidden_size=int(w_ih.shape[0]) // 4,
        var_ih=(w_ih.ms,) * 4, var_hh=(w_hh.ms,) * 4, bias_mean=(0.0, float(forget_bias), 0.0, 0.0),
        bias_var=(within,) * 4, has_bias=True, proj_size=int(w_hr.shape[0]) if w_hr is not None else 0,
        var_hr=w_hr.ms if w_hr is not None else 0.0)


def _window_rate(logs: list[float], w: int) -> float:
    """Decades lost per step over the last ``w`` steps."""
    tail = logs[-w:]
    if len(tail) < 2 or not all(math.isfinite(v) for v in tail):
        return math.inf
    return (tail[-1] - tail[0]) / (len(tail) - 1)


class LstmForgetBiasZero(Rule):
    """An nn.LSTM's forget-gate bias is 0, so its memory decays at every step.

    ## What it finds
    `nn.LSTM` layers run over at least `min_steps` steps whose predicted long-range gradient
    decays at the rate of a zero forget-gate bias (about 0.21 decades per step at the
    default init) rather than the rate of bias 1 (about 0.09). Reports the decades lost from
    the last step to the first, and what forget-gate bias 1 would give over the same steps.
    Error when bias 1 would save at least `threshold` decades (default: the check's
    threshold, 2 decades); warning otherwise.

    ## Why it matters
    The LSTM's cell carries the gradient back by the forget gate f = σ(W x + U h + b_f) at
    every step; with b_f = 0, f ≈ 0.5 and the cell path halves the gradient per step.
    Initializing b_f to 1 lets the cell remember across long lags from the start (Gers,
    Schmidhuber & Cummins 2000; Jozefowicz, Zaremba & Sutskever 2015, "An Empirical
    Exploration of Recurrent Network Architectures"). PyTorch initializes every bias
    U(±1/√H), so b_f ≈ 0 (the effective bias is the sum of the f chunks of bias_ih and
    bias_hh).

    ## Example
    `nn.LSTM(128, 128, batch_first=True)` read at the last of 32 steps: the first step's
    gradient is 10^-6.7 of the last step's; with forget-gate bias 1 it would be 10^-3.0.

    ## Fix
    After building the LSTM, for every layer l:
    `h = lstm.hidden_size; lstm.bias_ih_l0.data[h:2*h].fill_(1.0); lstm.bias_hh_l0.data[h:2*h].zero_()`
    (Jozefowicz et al. 2015 use 1; larger values, up to 3, help over longer lags).

    ## Known limits
    The rule judges the forget bias from the predicted decay rate, compared with the first
    layer predicted at forget bias 0 and 1 (chunk statistics are approximated from whole
    tensors). Stacked layers and bidirectional modules are compared with that single
    layer. The R4 estimate lies 0.4–0.9 decades above measurements over 100 steps. GRUs (the
    analogous update-gate bias) are not judged.
    """

    code = "GL602"
    name = "lstm-forget-bias-zero"
    severity = Severity.ERROR
    category = "recurrent"
    options = {"threshold": None, "min_steps": 16, "forget_bias": 1.0}
    good = (Case(lambda: _lstm_forget(1.0), (4, 32, 32)), Case(lambda: RNNHead("lstm"), (4, 8, 32)))
    bad = (Case(lambda: RNNHead("lstm"), (4, 32, 32), at="rnn", severity="error"),)

    def check(self, result):
        thr = self.threshold(result)
        fb = float(self.opts["forget_bias"])
        for rec in result.propagation.recurrent:
            if rec.mode != "lstm" or rec.steps < int(self.opts["min_steps"]) or rec.steps < 3:
                continue
            logs = lag_log10(rec)
            total, rate = lag_decay(logs)
            if not total > 0:
                continue
            st0 = _layer0_stats(result, rec, 0.0)
            st1 = _layer0_stats(result, rec, fb)
            if st0 is None or st1 is None:
                continue
            # Compare per-step rates over the same window of steps: the engine's, and the first
            # layer's predicted at forget bias 0 and at ``fb``.
            w = min(rec.steps, CF_MAX_STEPS)
            q, batch = input_q(result, rec), result.graph.batch_size or 1
            r0 = counterfactual_decay(st0, q, w, batch)[0] / (w - 1)
            r1 = counterfactual_decay(st1, q, w, batch)[0] / (w - 1)
            r_obs = _window_rate(logs, w)
            # Closer to the zero-bias rate than to the bias-fb rate: the forget gate sits near 0.5.
            if not (r0 > r1 and r_obs >= 0.5 * (r0 + r1)):
                continue
            saved = (r_obs - r1) * (rec.steps - 1) if math.isfinite(r_obs) else math.inf
            fixed = max(total - saved, 0.0) if math.isfinite(total) and math.isfinite(saved) else \
                counterfactual_decay(st1, q, rec.steps, batch)[0]
            if not saved > 0:
                continue
            sev = self.escalate(saved, error_at=thr)
            first = "below 10^-300" if not math.isfinite(total) else f"10^-{total:.1f}"
            msg = (f"{recurrence_name(rec)} loses its gradient at the rate of a zero forget-gate bias: "
                   f"over {rec.steps} steps the gradient reaching the first "
                   f"step is {first} of the last step's ({rate:.2f} decades lost per step); with forget-gate bias "
                   f"{fb:g} it is predicted at 10^-{fixed:.1f}, {_fmt(saved)} decades more gradient")
            has_bias = rnn_param(result, rec, "bias_ih") is not None
            fix = ("" if has_bias else "build the LSTM with bias=True (without a bias its forget gate sits at "
                   "sigmoid(0) = 0.5), then\n")
            fix += (f"set the forget-gate bias to {fb:g} after building the LSTM (Jozefowicz et al. 2015):\n"
                   f"lstm = model.get_submodule({rec.module!r}); h = lstm.hidden_size\nwith torch.no_grad():\n"
                   + "\n".join(f"    lstm.bias_ih{sfx}[h:2*h].fill_({fb:g}); lstm.bias_hh{sfx}[h:2*h].zero_()"
                               for sfx in _bias_suffixes(result, rec)))
            yield self.finding(result, msg, fix=fix, module=rec.module, node=rec.node, severity=sev,
                               steps=rec.steps, decades=rounded(total), decades_per_step=rounded(rate),
                               decades_with_forget_bias=rounded(fixed), decades_saved=rounded(saved), forget_bias=fb,
                               rate_bias0=rounded(r0), rate_bias1=rounded(r1), threshold=thr)


def _bias_suffixes(result, rec) -> list[str]:
    """'_l0', '_l0_reverse', '_l1', ... for every bias_ih of the module (['_l0'] if none)."""
    prefix = f"{rec.module}.bias_ih" if rec.module else "bias_ih"
    if getattr(rec, "form", "module") == "loop":  # nn.LSTMCell: bias_ih, bias_hh
        return [""]
    out = [p[len(prefix):] for p in result.propagation.param_stats if p.startswith(prefix + "_l")]
    return out or ["_l0"]


def _fmt(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "more than 300"

