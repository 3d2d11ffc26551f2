"""GL601 vanilla-rnn-long-sequence, and the recurrent helpers GL602 and GL603 share."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch.nn as nn

from gradlint.engine import recurrent
from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.engine.state import Fwd

# Steps over which a counterfactual layer (another cell type, another forget bias) is
# predicted; longer sequences are extrapolated at the far-lag rate. The dense recurrent
# prediction costs O(T^3): 32 steps take about 0.5 s for an LSTM, 128 steps 5 s.
CF_MAX_STEPS = 32
_CHUNKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_CELL = {"rnn_tanh": "nn.RNN (tanh)", "rnn_relu": "nn.RNN (relu)", "lstm": "nn.LSTM", "gru": "nn.GRU"}


# -- shared helpers (GL601, GL602, GL603) -------------------------------------------------------

def threshold_of(rule: Rule, result) -> float:
    """The rule's ``threshold`` option, else the threshold the summary used."""
    thr = rule.opts.get("threshold")
    return float(thr) if thr is not None else float(result.summary.threshold)


def cell_name(mode: str) -> str:
    return _CELL.get(mode, mode or "recurrent layer")


def lag_log10(rec) -> list[float]:
    """log10 of the long-range gradient RMS at each input step (-inf where it underflows)."""
    return [math.log10(v) if v > 0 and math.isfinite(v) else (math.inf if v > 0 else -math.inf)
            for v in rec.lag_grad_rms]


def lag_decay(logs: list[float]) -> tuple[float, float]:
    """(decades the first step's gradient is below the last step's, decades per step).

    Where the early steps underflow to 0, the per-step rate comes from the steps that did
    not, and the total is extrapolated from it (a float64 RMS stops at 1e-308).
    """
    T = len(logs)
    if T < 2 or not math.isfinite(logs[-1]):
        return 0.0, 0.0
    first = next((i for i, v in enumerate(logs) if math.isfinite(v)), T - 1)
    if first >= T - 1:
        return math.inf, math.inf
    rate = (logs[-1] - logs[first]) / (T - 1 - first)
    total = logs[-1] - logs[0] if first == 0 else rate * (T - 1)
    return total, rate


def rnn_node(result, rec):
    return result.graph.by_name.get(rec.node)


def rnn_param(result, rec, stem: str, layer: int = 0, reverse: bool = False):
    """ParamStats of ``<module>.<stem>_l<layer>[_reverse]`` of a recurrent op, or None."""
    local = f"{stem}_l{layer}" + ("_reverse" if reverse else "")
    ps = result.propagation.param_stats
    node = rnn_node(result, rec)
    for name in (node.attrs.get("params") or []) if node is not None else []:
        if isinstance(name, str) and (name == local or name.endswith("." + local)) and name in ps:
            return ps[name]
    return ps.get(f"{rec.module}.{local}" if rec.module else local)


def rnn_sizes(result, rec) -> tuple[int, int] | None:
    """(input_size, hidden_size) of the first layer, from weight_ih_l0's shape."""
    w = rnn_param(result, rec, "weight_ih")
    n = _CHUNKS.get(rec.mode)
    if w is None or n is None or len(w.shape) != 2:
        return None
    return int(w.shape[1]), int(w.shape[0]) // n


def input_q(result, rec) -> float:
    """Second moment of the recurrent op's input (1 when unknown)."""
    node = rnn_node(result, rec)
    if node is None or not node.inputs or node.inputs[0] is None:
        return 1.0
    f = result.propagation.forward_state.get(node.inputs[0])
    q = f.q if isinstance(f, Fwd) else 1.0
    return q if q > 0 and math.isfinite(q) else 1.0


def recurrent_gain(result, rec) -> float | None:
    """RMS(weight_hh_l0)·sqrt(fan-in): 1 for an orthogonal matrix of gain 1."""
    w = rnn_param(result, rec, "weight_hh")
    if w is None or len(w.shape) != 2:
        return None
    return math.sqrt(max(w.ms, 0.0) * w.shape[1])


@functools.lru_cache(maxsize=64)
def _predicted_lag(stats: recurrent.RecurrentLayerStats, q_x: float, steps: int, batch: int) -> tuple[float, ...]:
    # The R4 estimate only (what the engine reports as lag_grad_rms); the bound is not needed.
    fwd = recurrent.forward(stats, q_x, steps)
    bwd = recurrent.backward(stats, fwd, [0.0] * (steps - 1) + [1.0], max(batch, 1), reuse=True)
    return tuple(0.5 * math.log10(s) if s > 0 else -math.inf for s in bwd.s_x)


def counterfactual_decay(stats: recurrent.RecurrentLayerStats, q_x: float, steps: int,
                         batch: int) -> tuple[float, float]:
    """Decades a single layer with ``stats`` loses from the last step to the first over
    ``steps`` steps (the long-range gradient, R4 estimate), and its per-step rate.

    Predicted over at most ``CF_MAX_STEPS`` steps; beyond, extrapolated at the rate of the
    far half of that window (the per-step decay settles after a few steps).
    """
    w = max(2, min(steps, CF_MAX_STEPS))
    logs = _predicted_lag(stats, float(f"{q_x:.6g}"), w, batch)
    total, rate = lag_decay(list(logs))
    if steps > w and math.isfinite(total):
        half = w // 2
        far = (logs[half] - logs[0]) / half if half > 0 and math.isfinite(logs[0]) else rate
        total += far * (steps - w)
    return total, rate


def lstm_counterfactual_stats(input_size: int, hidden_size: int, forget_bias: float) -> recurrent.RecurrentLayerStats:
    """PyTorch's default LSTM init with the forget-gate chunk of the bias set to ``forget_bias``."""
    st = recurrent.default_layer_stats("lstm", input_size, hidden_size)
    return dataclasses.replace(st, bias_mean=(0.0, float(forget_bias), 0.0, 0.0))


# -- examples ----------------------------------------------------------------------------------

class _RNNHead(nn.Module):
    """A recurrent layer read at its last step, as a sequence classifier does."""

    def __init__(self, cell: str = "rnn", size: int = 32):
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](size, size, batch_first=True)
        self.head = nn.Linear(size, size)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


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
    PyTorch's default init (U(±1/√H)) that is about 0.34 decades per step (R1 in the design
    note), so dependencies further back than a few steps get no learning signal (Hochreiter
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
    good = (Case(lambda: _RNNHead("rnn"), (4, 3, 32)), Case(lambda: _RNNHead("lstm"), (4, 32, 32)))
    bad = (Case(lambda: _RNNHead("rnn"), (4, 32, 32), at="rnn"),)

    def check(self, result):
        thr = threshold_of(self, result)
        warn = float(self.opts["warn_decades"])
        for rec in result.propagation.recurrent:
            if rec.mode not in ("rnn_tanh", "rnn_relu") or rec.steps < 2:
                continue
            total, rate = lag_decay(lag_log10(rec))
            if not total >= warn or rate <= 0:
                continue
            sev = Severity.ERROR if total >= thr else Severity.WARNING
            where = rec.module or "the model"
            first = f"10^-{total:.1f}" if math.isfinite(total) else "below 10^-300"
            msg = (f"{cell_name(rec.mode)} {where} over {rec.steps} steps: the gradient reaching the first step is "
                   f"{first} of the last step's ({rate:.2f} decades lost per step)")
            evidence: dict[str, Any] = {"steps": rec.steps, "decades": _round(total), "decades_per_step": _round(rate),
                                        "threshold": thr}
            gain = recurrent_gain(result, rec)
            if gain is not None:
                evidence["recurrent_gain"] = _round(gain)
            sizes = rnn_sizes(result, rec)
            if sizes is not None:
                lstm_total, _ = counterfactual_decay(lstm_counterfactual_stats(*sizes, 1.0), input_q(result, rec),
                                                     rec.steps, result.graph.batch_size or 1)
                if math.isfinite(lstm_total):
                    evidence["lstm_forget1_decades"] = _round(lstm_total)
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


def _round(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None
