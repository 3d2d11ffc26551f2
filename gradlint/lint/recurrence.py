"""Recurrent layers, for the rules about them (GL601, GL602, GL603): the long-range gradient
over the steps, the layer's parameters and sizes, and what another cell type or forget-gate
bias would be predicted to lose."""

from __future__ import annotations

import dataclasses
import functools
import math

from gradlint.engine import recurrent
from gradlint.engine.state import Fwd

# Steps over which a counterfactual layer (another cell type, another forget bias) is
# predicted; longer sequences are extrapolated at the far-lag rate. The dense recurrent
# prediction costs O(T^3): 32 steps take about 0.5 s for an LSTM, 128 steps 5 s.
CF_MAX_STEPS = 32
_CHUNKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_CELL = {"rnn_tanh": "nn.RNN (tanh)", "rnn_relu": "nn.RNN (relu)", "lstm": "nn.LSTM", "gru": "nn.GRU"}


_LOOP = {"rnn_tanh": "a tanh RNN step", "rnn_relu": "a ReLU RNN step", "lstm": "an LSTM cell", "gru": "a GRU cell",
         "wkv": "an RWKV time-mixing step"}


def cell_name(mode: str) -> str:
    return _CELL.get(mode, mode or "recurrent layer")


def recurrence_name(rec) -> str:
    """How a finding names a recurrence: ``nn.RNN (tanh) rnn`` for a module, ``a GRU cell run
    in a Python loop over 64 steps in cell`` for a loop, ``a diagonal scan ...`` for a scan."""
    where = rec.module or "the model"
    form = getattr(rec, "form", "module")
    if form == "module":
        return f"{cell_name(rec.mode)} {where}"
    if form == "scan":
        return f"a diagonal linear recurrence (scan) in {where}"
    return f"{_LOOP.get(rec.mode, 'a recurrent step')} run in a Python loop in {where}"


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
    found = ps.get(f"{rec.module}.{local}" if rec.module else local)
    if found is None and getattr(rec, "form", "module") == "loop" and layer == 0 and not reverse:
        # nn.RNNCell / LSTMCell / GRUCell: the same tensors without the layer suffix.
        found = ps.get(f"{rec.module}.{stem}" if rec.module else stem)
    return found


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


def lstm_layer0_stats(result, rec, forget_bias: float) -> recurrent.RecurrentLayerStats | None:
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


# Forget-gate biases a fix may propose, smallest first.
FORGET_BIASES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
# Decades of margin below the threshold a proposed bias must keep: the R4 estimate lies 0.3 to
# 0.9 decades on the optimistic side of measurements (docs/design.md §6).
FIX_MARGIN = 1.0


def forget_bias_that_keeps(result, rec, threshold: float, start: float = 1.0) -> tuple[float | None, float, float]:
    """The smallest forget-gate bias, from ``start`` up, whose predicted long-range decay over
    the layer's steps stays within ``threshold - FIX_MARGIN`` decades either way: for an LSTM,
    the layer itself with that bias; for another cell, an ``nn.LSTM`` of its sizes at PyTorch's
    default init with that bias.

    Returns:
        (that bias or None when none up to the largest in ``FORGET_BIASES`` does, the decay
        predicted at that bias (or at the largest tried), the decay predicted at ``start``).
    """
    batch = result.graph.batch_size or 1
    q = input_q(result, rec)
    keep = max(threshold - FIX_MARGIN, 0.5)
    at_start = math.nan
    last = math.nan
    sizes = rnn_sizes(result, rec)
    for b in sorted({start, *(x for x in FORGET_BIASES if x >= start)}):
        if rec.mode == "lstm":
            st = lstm_layer0_stats(result, rec, b)
        else:
            st = lstm_counterfactual_stats(*sizes, b) if sizes is not None else None
        if st is None:
            return None, math.nan, math.nan
        last = counterfactual_decay(st, q, rec.steps, batch)[0]
        if b == start:
            at_start = last
        if abs(last) <= keep:
            return b, last, at_start
    return None, last, at_start


def lstm_forget_fix(result, rec, bias: float, suffixes: list[str]) -> str:
    """The code that sets an LSTM's forget-gate bias (the bias_ih chunk; bias_hh's zeroed)."""
    return (f"lstm = model.get_submodule({rec.module!r}); h = lstm.hidden_size\nwith torch.no_grad():\n"
            + "\n".join(f"    lstm.bias_ih{sfx}[h:2*h].fill_({bias:g}); lstm.bias_hh{sfx}[h:2*h].zero_()"
                        for sfx in suffixes))


def bias_suffixes(result, rec) -> list[str]:
    """'_l0', '_l0_reverse', '_l1', ... for every bias_ih of the module (['_l0'] if none)."""
    prefix = f"{rec.module}.bias_ih" if rec.module else "bias_ih"
    if getattr(rec, "form", "module") == "loop":  # nn.LSTMCell: bias_ih, bias_hh
        return [""]
    out = [p[len(prefix):] for p in result.propagation.param_stats if p.startswith(prefix + "_l")]
    return out or ["_l0"]
