"""Mean-field signal propagation through nn.RNN / nn.LSTM / nn.GRU unrolled in time.

Pure math: no model is run. One call describes one layer in one direction
(`RecurrentLayerStats`); stacked and bidirectional modules are composed from such calls by
`predict_module`. Every rule cites ``shared/design/signal-propagation.md`` (R1–R4 in section
6, W1/W7 in section 3, E6 in section 4.2, defaults in section 8).

Quantities follow the doc's notation: q = E[h²] (second moment, mean over elements),
μ = E[h], s = E[δ²] with δ = ∂L/∂h. Per-step tuples are indexed by time t = 0..T-1 of the
layer's own processing order (a reverse direction's step 0 is the last time step; the
composition helper re-aligns it).

Two backward estimates exist for the gated cells (R4): the plain mean field of R2/R3,
which treats the recurrent weight as a fresh random matrix at every step and is therefore
too pessimistic over long lags, and the weight-reuse correction, which lets the h-path
through the same W_hh add coherently with the diagonal memory path. The correction is the
estimate; plain mean field is the pessimistic bound. For nn.RNN both coincide (R1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "KINDS",
    "LagCovariance",
    "LayerPrediction",
    "ModulePrediction",
    "RecurrentBackward",
    "RecurrentForward",
    "RecurrentLayerStats",
    "backward",
    "default_layer_stats",
    "forward",
    "layer_stats",
    "mix_lag_covariances",
    "module_layer_stats",
    "predict",
    "predict_module",
]

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
_NUM_CHUNKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_CHUNK_NAMES = {"rnn_tanh": ("h",), "rnn_relu": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


# --------------------------------------------------------------------------------------
# Gaussian expectations (section 5). Kept in one private function so that it can be
# replaced by gradlint.gaussian once that module exists.
# --------------------------------------------------------------------------------------


class _Moments(NamedTuple):
    """E[φ], E[φ²], E[φ'] and E[φ'²] for h ~ N(μ, v)."""

    mean: float
    second: float
    dmean: float
    dphi2: float


_GRID: tuple[torch.Tensor, torch.Tensor] | None = None


def _act_moments(name: str, mu: float, v: float) -> _Moments:
    """Moments of an activation for h ~ N(mu, v).

    Smooth φ (sigmoid, tanh) use the uniform trapezoid grid recommended in section 5.3
    (z in [-10, 10], 801 points, weights ∝ exp(-z²/2)); ReLU uses the closed forms of 5.1
    because the grid is only O(h²) accurate at a kink.

    Args:
        name: 'sigmoid', 'tanh' or 'relu'.
        mu: mean of the pre-activation.
        v: variance of the pre-activation (>= 0).

    Returns:
        The four moments.
    """
    v = max(float(v), 0.0)
    if name == "relu":
        if v == 0.0:
            pos = 1.0 if mu > 0 else 0.0
            return _Moments(max(mu, 0.0), max(mu, 0.0) ** 2, pos, pos)
        sd = math.sqrt(v)
        a = mu / sd
        cdf = 0.5 * math.erfc(-a / math.sqrt(2.0))
        pdf = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
        return _Moments(mu * cdf + sd * pdf, (mu * mu + v) * cdf + mu * sd * pdf, cdf, cdf)
    global _GRID
    if _GRID is None:
        z = torch.linspace(-10.0, 10.0, 801, dtype=torch.float64)
        w = torch.exp(-0.5 * z * z)
        _GRID = (z, w / w.sum())
    z, w = _GRID
    h = mu + math.sqrt(v) * z
    if name == "sigmoid":
        y = torch.sigmoid(h)
        dy = y * (1.0 - y)
    elif name == "tanh":
        # 2σ(2h) − 1 rather than torch.tanh: float64 tanh on CPU was measured up to 100×
        # slower on some thread settings; the two agree to 1e-16.
        y = 2.0 * torch.sigmoid(2.0 * h) - 1.0
        dy = 1.0 - y * y
    else:
        raise ValueError(f"name={name!r} must be 'sigmoid', 'tanh' or 'relu'")
    m = torch.stack((y, y * y, dy, dy * dy)) @ w
    return _Moments(*(float(x) for x in m))


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecurrentLayerStats:
    """Statistics of one layer, one direction, of nn.RNN / nn.LSTM / nn.GRU.

    Chunks are the gate blocks of rows of weight_ih / weight_hh in PyTorch's order: LSTM
    (i, f, g, o), GRU (r, z, n), RNN a single chunk.

    Attributes:
        kind: 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru'.
        input_size: I, number of columns of weight_ih.
        hidden_size: H, number of rows per chunk.
        var_ih: per chunk, mean of squares of that chunk of weight_ih.
        var_hh: per chunk, mean of squares of that chunk of weight_hh.
        bias_mean: per chunk, mean over units of b_ih + b_hh; for the GRU n chunk, of b_in
            (b_ih's n chunk) alone, because b_hn sits inside r ⊙ (W_hn h + b_hn).
        bias_var: per chunk, variance over units of the same summed bias.
        hn_bias_mean: GRU only, mean of b_hn (b_hh's n chunk).
        hn_bias_var: GRU only, variance over units of b_hn.
        has_bias: whether the module has bias vectors (bias gradients are reported only
            then).
        proj_size: LSTM projection size P (0: none). With P > 0, h = W_hr (o ⊙ tanh c) and
            weight_hh has P columns.
        var_hr: mean of squares of weight_hr (LSTM with proj_size > 0).
    """

    kind: str
    input_size: int
    hidden_size: int
    var_ih: tuple[float, ...]
    var_hh: tuple[float, ...]
    bias_mean: tuple[float, ...]
    bias_var: tuple[float, ...]
    hn_bias_mean: float = 0.0
    hn_bias_var: float = 0.0
    has_bias: bool = True
    proj_size: int = 0
    var_hr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
        n = _NUM_CHUNKS[self.kind]
        for name in ("var_ih", "var_hh", "bias_mean", "bias_var"):
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f"{name}={value!r} must have {n} entries (one per chunk) for kind={self.kind!r}")
            object.__setattr__(self, name, tuple(float(x) for x in value))
        if self.input_size <= 0 or self.hidden_size <= 0:
            raise ValueError(f"input_size={self.input_size!r} and hidden_size={self.hidden_size!r} must be positive")
        if self.proj_size and self.kind != "lstm":
            raise ValueError(f"proj_size={self.proj_size!r} is only supported for kind='lstm'")

    @property
    def out_size(self) -> int:
        """Number of features of h (P with a projection, else H)."""
        return self.proj_size or self.hidden_size

    @property
    def chunk_names(self) -> tuple[str, ...]:
        """Gate names of the chunks, in PyTorch's row order."""
        return _CHUNK_NAMES[self.kind]


@dataclass(frozen=True)
class LagCovariance:
    """Same-unit, same-sample second moment of a sequence across time steps.

    E[h_a h_b] = second[a] for a = b and, for a < b,
    Σ over terms (left, right, decay) of left[a]·right[b]·Π_{k=a+1..b} decay[k].
    Inputs drawn per the protocol are independent across steps (no terms). Recurrent
    outputs decay with the diagonal gate (LSTM E[f], GRU E[z]) and keep a constant μ_a·μ_b
    term for a non-zero mean.

    Attributes:
        second: E[h_t²] per step.
        terms: the off-diagonal terms, each three per-step tuples (left, right, decay).
    """

    second: tuple[float, ...]
    terms: tuple[tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]], ...] = ()

    @classmethod
    def independent(cls, second: Sequence[float]) -> LagCovariance:
        """Steps that are uncorrelated and zero-mean (the protocol's x ~ N(0, 1))."""
        return cls(second=tuple(float(x) for x in second))

    def reversed(self) -> LagCovariance:
        """The same sequence indexed in the opposite time order (for reverse directions).

        With a' = T−1−b, b' = T−1−a the product over k' = a'+1..b' becomes one over
        k = a..b−1, i.e. over a+1..b of the decay shifted by one step.
        """
        terms = tuple(
            (tuple(right[::-1]), tuple(left[::-1]), (1.0,) + tuple(decay[::-1][:-1])) for left, right, decay in self.terms
        )
        return LagCovariance(second=self.second[::-1], terms=terms)

    def lag(self, ell: int) -> torch.Tensor:
        """E[h_t h_{t+ell}] for t = 0..T-1-ell, as a float64 tensor."""
        T = len(self.second)
        if ell == 0:
            return torch.tensor(self.second, dtype=torch.float64)
        out = torch.zeros(max(T - ell, 0), dtype=torch.float64)
        for left, right, decay in self.terms:
            cl = _cumlog(torch.tensor(decay, dtype=torch.float64))
            left_t = torch.tensor(left, dtype=torch.float64)
            right_t = torch.tensor(right, dtype=torch.float64)
            out = out + left_t[: T - ell] * right_t[ell:] * torch.exp(cl[ell + 1 :] - cl[1 : T - ell + 1])
        return out


def mix_lag_covariances(parts: Sequence[LagCovariance], weights: Sequence[float]) -> LagCovariance:
    """Feature-weighted average of several sequences' lag covariances (concatenation, E4).

    Args:
        parts: the pieces (same number of steps).
        weights: fraction of the features each piece holds (summing to 1).

    Returns:
        The lag covariance of the concatenated features.
    """
    T = len(parts[0].second)
    second = tuple(sum(w * p.second[t] for p, w in zip(parts, weights)) for t in range(T))
    terms = tuple((tuple(w * x for x in l), r, d) for p, w in zip(parts, weights) for l, r, d in p.terms)
    return LagCovariance(second=second, terms=terms)


def _cumlog(decay: torch.Tensor) -> torch.Tensor:
    """cl with cl[0] = 0, cl[k+1] = Σ_{j≤k} log decay[j]: Π_{k=a+1..b} = exp(cl[b+1] − cl[a+1])."""
    logs = torch.log(decay.clamp_min(1e-300))
    return torch.cat((torch.zeros(1, dtype=torch.float64), torch.cumsum(logs, 0)))


@dataclass(frozen=True)
class RecurrentForward:
    """Forward mean-field state per time step.

    Attributes:
        q_x: second moment of the input at each step.
        q_h: second moment of the output h_t.
        mu_h: mean of h_t (0 for tanh cells with zero-mean biases).
        q_c: LSTM cell second moment per step (empty for other kinds).
        mu_c: LSTM cell mean per step (empty for other kinds).
        q_h0: second moment of the initial hidden state.
        q_c0: second moment of the initial cell state (LSTM).
        pre_mean: per step, per chunk, mean of the gate pre-activation (GRU n chunk: of
            the whole n pre-activation, r ⊙ (W_hn h + b_hn) included).
        pre_var: per step, per chunk, variance of the gate pre-activation.
        moments: per step, per site, (E[φ], E[φ²], E[φ'], E[φ'²]) of the site's activation:
            the chunks in order, plus, for the LSTM, tanh(c_t) as a fifth site.
        lag: lag covariance of the output h_t (what a stacked layer above sees).
    """

    q_x: tuple[float, ...]
    q_h: tuple[float, ...]
    mu_h: tuple[float, ...]
    q_c: tuple[float, ...]
    mu_c: tuple[float, ...]
    q_h0: float
    q_c0: float
    pre_mean: tuple[tuple[float, ...], ...]
    pre_var: tuple[tuple[float, ...], ...]
    moments: tuple[tuple[tuple[float, float, float, float], ...], ...]
    lag: LagCovariance

    @property
    def seq_len(self) -> int:
        """Number of time steps T."""
        return len(self.q_x)


@dataclass(frozen=True)
class RecurrentBackward:
    """Backward mean-field state and parameter-gradient predictions.

    All gradient entries are E[(∂L/∂θ)²], mean over the elements of the tensor (or chunk);
    take 0.5·log10 for the log10 RMS the engine reports.

    Attributes:
        method: 'mean_field' (R1–R3, pessimistic bound for gated cells) or 'reuse' (R4).
        s_h: per step, s at the layer output h_t (loss term plus what flows back from t+1).
        s_c: LSTM, per step, s at c_t including the path through h_t (empty otherwise).
        s_x: per step, s at the input x_t.
        s_gates: per step, per chunk, s at the gate pre-activations (W_ih x + ...).
        s_h0: s at the initial hidden state.
        s_c0: s at the initial cell state (LSTM; 0 otherwise).
        grad_weight_ih_chunks: per chunk, E[(∂L/∂W_ih)²].
        grad_weight_hh_chunks: per chunk, E[(∂L/∂W_hh)²].
        grad_bias_ih_chunks: per chunk, E[(∂L/∂b_ih)²] (zeros when the layer has no bias).
        grad_bias_hh_chunks: per chunk, E[(∂L/∂b_hh)²] (differs from b_ih only for GRU n).
        grad_weight_hr: E[(∂L/∂W_hr)²] for an LSTM projection (0 without one).
    """

    method: str
    s_h: tuple[float, ...]
    s_c: tuple[float, ...]
    s_x: tuple[float, ...]
    s_gates: tuple[tuple[float, ...], ...]
    s_h0: float
    s_c0: float
    grad_weight_ih_chunks: tuple[float, ...]
    grad_weight_hh_chunks: tuple[float, ...]
    grad_bias_ih_chunks: tuple[float, ...]
    grad_bias_hh_chunks: tuple[float, ...]
    grad_weight_hr: float = 0.0

    @property
    def grad_weight_ih(self) -> float:
        """E[(∂L/∂weight_ih)²] over the whole tensor (chunks have equal size)."""
        return sum(self.grad_weight_ih_chunks) / len(self.grad_weight_ih_chunks)

    @property
    def grad_weight_hh(self) -> float:
        """E[(∂L/∂weight_hh)²] over the whole tensor."""
        return sum(self.grad_weight_hh_chunks) / len(self.grad_weight_hh_chunks)

    @property
    def grad_bias_ih(self) -> float:
        """E[(∂L/∂bias_ih)²] over the whole vector."""
        return sum(self.grad_bias_ih_chunks) / len(self.grad_bias_ih_chunks)

    @property
    def grad_bias_hh(self) -> float:
        """E[(∂L/∂bias_hh)²] over the whole vector."""
        return sum(self.grad_bias_hh_chunks) / len(self.grad_bias_hh_chunks)


@dataclass(frozen=True)
class LayerPrediction:
    """Forward state and both backward estimates of one layer and direction.

    Attributes:
        stats: the layer's statistics.
        forward: the forward state.
        estimate: R4 weight-reuse estimate (the same object as `bound` for nn.RNN).
        bound: plain mean field (R1–R3), the pessimistic bound for gated cells.
    """

    stats: RecurrentLayerStats
    forward: RecurrentForward
    estimate: RecurrentBackward
    bound: RecurrentBackward


@dataclass(frozen=True)
class ModulePrediction:
    """Prediction for a whole (stacked, possibly bidirectional) recurrent module.

    Attributes:
        layers: `layers[l][d]` for layer l and direction d (0 forward, 1 reverse); all
            per-step tuples inside are in the direction's own processing order.
        q_out: per time step, second moment of the module output (directions
            concatenated).
        s_x: per time step, s at the module input, R4 estimate.
        s_x_bound: per time step, s at the module input, plain mean field.
    """

    layers: tuple[tuple[LayerPrediction, ...], ...]
    q_out: tuple[float, ...]
    s_x: tuple[float, ...]
    s_x_bound: tuple[float, ...]

    def parameter_grads(self, bound: bool = False) -> dict[str, float]:
        """E[(∂L/∂θ)²] per parameter, keyed by PyTorch's parameter names.

        Args:
            bound: use the plain mean-field bound instead of the R4 estimate.

        Returns:
            A dict such as {'weight_ih_l0': ..., 'bias_hh_l1_reverse': ...}.
        """
        out: dict[str, float] = {}
        for layer, dirs in enumerate(self.layers):
            for d, pred in enumerate(dirs):
                b = pred.bound if bound else pred.estimate
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                out["weight_ih" + sfx] = b.grad_weight_ih
                out["weight_hh" + sfx] = b.grad_weight_hh
                if pred.stats.has_bias:
                    out["bias_ih" + sfx] = b.grad_bias_ih
                    out["bias_hh" + sfx] = b.grad_bias_hh
                if pred.stats.proj_size:
                    out["weight_hr" + sfx] = b.grad_weight_hr
        return out


# --------------------------------------------------------------------------------------
# Forward (R1, R2, R3)
# --------------------------------------------------------------------------------------


def _as_steps(value: float | Sequence[float], seq_len: int | None, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        if seq_len is None:
            raise ValueError(f"{name}={value!r} is a scalar: pass seq_len as well")
        return (float(value),) * seq_len
    out = tuple(float(x) for x in value)
    if seq_len is not None and len(out) != seq_len:
        raise ValueError(f"{name} has {len(out)} steps but seq_len={seq_len!r}")
    if not out:
        raise ValueError(f"{name} must have at least one step")
    return out


def forward(
    stats: RecurrentLayerStats,
    q_x: float | Sequence[float],
    seq_len: int | None = None,
    *,
    q_h0: float = 0.0,
    q_c0: float = 0.0,
) -> RecurrentForward:
    """Propagate second moments forward through T steps.

    Pre-activations are Gaussian over (unit, sample) with the chunk's mean bias as mean and
    weight + bias-spread variance (R2: v_j = I·σ²_ih,j·q_x + fan·σ²_hh,j·q_h + Var(b)_j).
    The input may have a non-zero mean: W x is zero-mean because W is, and q_x already
    contains μ_x².

    Args:
        stats: the layer.
        q_x: input second moment, one value for every step or a sequence (one per step).
        seq_len: T; required when q_x is a scalar.
        q_h0: second moment of the initial hidden state (0 for zeros).
        q_c0: second moment of the initial cell state (LSTM).

    Returns:
        The per-step forward state.
    """
    qx = _as_steps(q_x, seq_len, "q_x")
    st = stats
    fan_h = st.out_size
    q_h_prev, mu_h_prev = float(q_h0), 0.0
    q_c_prev, mu_c_prev = float(q_c0), 0.0
    q_h: list[float] = []
    mu_h: list[float] = []
    q_c: list[float] = []
    mu_c: list[float] = []
    pre_m: list[tuple[float, ...]] = []
    pre_v: list[tuple[float, ...]] = []
    moms: list[tuple[_Moments, ...]] = []
    for qxt in qx:
        var = [
            st.input_size * st.var_ih[j] * qxt + fan_h * st.var_hh[j] * q_h_prev + st.bias_var[j]
            for j in range(len(st.var_ih))
        ]
        mean = list(st.bias_mean)
        if st.kind in ("rnn_tanh", "rnn_relu"):
            # R1: a single pre-activation; q_h = E[φ²], μ_h = E[φ].
            m = _act_moments("tanh" if st.kind == "rnn_tanh" else "relu", mean[0], var[0])
            q_new, mu_new = m.second, m.mean
            site = (m,)
        elif st.kind == "lstm":
            # R2 forward; the cross term 2E[f]E[c]E[i]E[g] keeps a non-zero mean of the g
            # bias right (it vanishes at the default zero-mean init).
            gi, gf, gg, go = (_act_moments("tanh" if j == 2 else "sigmoid", mean[j], var[j]) for j in range(4))
            c_q = gf.second * q_c_prev + gi.second * gg.second + 2.0 * gf.mean * mu_c_prev * gi.mean * gg.mean
            c_mu = gf.mean * mu_c_prev + gi.mean * gg.mean
            tc = _act_moments("tanh", c_mu, c_q - c_mu * c_mu)
            q_m, mu_m = go.second * tc.second, go.mean * tc.mean
            # with a projection h = W_hr m: zero-mean weights of fan-in H
            q_new, mu_new = (st.hidden_size * st.var_hr * q_m, 0.0) if st.proj_size else (q_m, mu_m)
            q_c.append(c_q)
            mu_c.append(c_mu)
            q_c_prev, mu_c_prev = c_q, c_mu
            site = (gi, gf, gg, go, tc)
        else:
            # R3 forward. a = W_hn h + b_hn has mean μ(b_hn) and second moment q_hn; r ⊙ a
            # then has mean E[r]μ_hn and second moment E[r²]q_hn.
            gr = _act_moments("sigmoid", mean[0], var[0])
            gz = _act_moments("sigmoid", mean[1], var[1])
            q_hn = fan_h * st.var_hh[2] * q_h_prev + st.hn_bias_mean**2 + st.hn_bias_var
            mu_ra = gr.mean * st.hn_bias_mean
            mean[2] = st.bias_mean[2] + mu_ra
            var[2] = st.input_size * st.var_ih[2] * qxt + st.bias_var[2] + gr.second * q_hn - mu_ra * mu_ra
            gn = _act_moments("tanh", mean[2], var[2])
            q_new = (1.0 - 2.0 * gz.mean + gz.second) * gn.second + gz.second * q_h_prev
            q_new += 2.0 * (gz.mean - gz.second) * gn.mean * mu_h_prev
            mu_new = (1.0 - gz.mean) * gn.mean + gz.mean * mu_h_prev
            site = (gr, gz, gn)
        q_h.append(q_new)
        mu_h.append(mu_new)
        pre_m.append(tuple(mean))
        pre_v.append(tuple(max(v, 0.0) for v in var))
        moms.append(site)
        q_h_prev, mu_h_prev = q_new, mu_new
    return RecurrentForward(
        q_x=qx,
        q_h=tuple(q_h),
        mu_h=tuple(mu_h),
        q_c=tuple(q_c),
        mu_c=tuple(mu_c),
        q_h0=float(q_h0),
        q_c0=float(q_c0),
        pre_mean=tuple(pre_m),
        pre_var=tuple(pre_v),
        moments=tuple(tuple(tuple(m) for m in site) for site in moms),
        lag=_output_lag(st, q_h, mu_h, q_c, mu_c, moms),
    )


def _output_lag(st, q_h, mu_h, q_c, mu_c, moms) -> LagCovariance:
    """Lag covariance of h_t in mean field.

    The memory carries the centred part: LSTM Cov(c_a, c_b) = Π E[f]·Var(c_a), passed to h
    linearly (Cov(tanh c_a, tanh c_b) ≈ E[tanh'(c_a)]E[tanh'(c_b)]·Cov(c_a, c_b), first
    Hermite order); GRU Cov(h_a, h_b) = Π E[z]·Var(h_a). The vanilla RNN has no diagonal
    path, so only the mean product survives.
    """
    T = len(q_h)
    ones = (1.0,) * T
    mean_term = (tuple(mu_h), tuple(mu_h), ones)
    if st.kind in ("rnn_tanh", "rnn_relu"):
        terms = (mean_term,)
    elif st.kind == "lstm":
        u = [moms[t][3][0] * moms[t][4][2] for t in range(T)]
        var_c = [q_c[t] - mu_c[t] ** 2 for t in range(T)]
        decay = tuple(moms[t][1][0] for t in range(T))
        mu_m = tuple(moms[t][3][0] * moms[t][4][0] for t in range(T))
        g = st.hidden_size * st.var_hr if st.proj_size else 1.0
        terms = (
            (tuple(g * u[t] * var_c[t] for t in range(T)), tuple(u), decay),
            (tuple(g * x for x in mu_m), mu_m, ones),
        )
    else:
        decay = tuple(moms[t][1][0] for t in range(T))
        terms = ((tuple(q_h[t] - mu_h[t] ** 2 for t in range(T)), ones, decay), mean_term)
    return LagCovariance(second=tuple(q_h), terms=terms)


# --------------------------------------------------------------------------------------
# Backward (R1–R4)
# --------------------------------------------------------------------------------------


class _MemoryChannel:
    """The memory-channel δ² of R4, propagated exactly in the Fourier domain.

    R4 propagates a matrix P over hop counts with
    P ← (f̄² + v_f + b_i)·P + f̄·√b_c·(S·P + P·Sᵀ) + b_c·S·P·Sᵀ and reads s = trace(P).
    Every term is a polynomial in the shift S, so with p(z) = Σ_j α_j z^j for the hop
    amplitudes, Parseval gives trace(P) = mean over θ of F(θ) = E|p(e^{iθ})|², and the
    update becomes pointwise: F ← (f̄² + v_f + b_i + b_c + 2·f̄·√b_c·cos θ)·F. Fresh
    sources (the loss at a step, incoherent paths) enter with no hops: F += s. A uniform
    grid of n > T points integrates the degree-≤T trigonometric polynomial exactly, so this
    equals the doc's recursion at O(T) cost per step instead of O(T²). With b_c = 0 it is
    the plain mean field (F constant in θ, one grid point suffices).
    """

    def __init__(self, seq_len: int, coherent: bool) -> None:
        n = seq_len + 2 if coherent else 1
        self.cos = torch.cos(torch.arange(n, dtype=torch.float64) * (2.0 * math.pi / n))
        self.f = torch.zeros(n, dtype=torch.float64)

    def step(self, diag_mean: float, diag_second: float, b_incoherent: float, b_coherent: float) -> None:
        gain = diag_second + b_incoherent + b_coherent + 2.0 * diag_mean * math.sqrt(b_coherent) * self.cos
        self.f = gain * self.f

    def inject(self, s: float) -> None:
        self.f = self.f + s

    def value(self) -> float:
        return float(self.f.mean())


def _kappa(*factors: tuple[float, float]) -> float:
    """(E[u])²/E[u²] for u a product of independent factors given as (E[x], E[x²])."""
    num, den = 1.0, 1.0
    for m1, m2 in factors:
        num *= m1 * m1
        den *= m2
    return num / den if den > 0 else 0.0


class _Pass(NamedTuple):
    """Per-step backward quantities of one kind, before the parameter sums."""

    s_h: list[float]
    s_c: list[float]
    s_x: list[float]
    s_g: list[tuple[float, ...]]
    s_h0: float
    s_c0: float
    hh_factor: list[tuple[float, ...]]  # extra factor on s_g for b_hh / W_hh (GRU n: E[r²])


def backward(
    stats: RecurrentLayerStats,
    fwd: RecurrentForward,
    s_out: float | Sequence[float],
    batch_size: int,
    *,
    s_hn: float = 0.0,
    s_cn: float = 0.0,
    reuse: bool = True,
    k_x: LagCovariance | None = None,
) -> RecurrentBackward:
    """Propagate δ² backward through the unrolled layer and predict parameter gradients.

    Parameter gradients sum the per-step W1 terms (N = B rows per step; W7: the steps are
    separate uses of one weight) plus the cross-step terms of W1's (P−1)·r·k form: in
    gated cells the δ at a gate of unit i at steps t and t' share the diagonal memory path
    (Π f or Π z), and the gate inputs (c, h) are correlated across steps too. These terms
    were measured to be +0.1 to +0.35 decades on LSTM/GRU bias and weight_hh gradients, so
    they are not optional; nn.RNN has no diagonal path and gets none.

    Args:
        stats: the layer.
        fwd: its forward state (from `forward`).
        s_out: s arriving at the output h_t from outside (the loss or the next layer), a
            scalar for every step or one value per step. For a loss on the last step only
            pass (0, ..., 0, 1) or use s_hn.
        batch_size: B.
        s_hn: s arriving at the final hidden state h_n.
        s_cn: s arriving at the final cell state c_n (LSTM).
        reuse: apply the R4 weight-reuse correction (gated cells only; nn.RNN is R1 either
            way).
        k_x: lag covariance of the input across steps; None means independent steps (the
            protocol's input). A stacked layer passes the lower layer's `lag`.

    Returns:
        The backward state and gradient predictions.
    """
    T = fwd.seq_len
    so = _as_steps(s_out, T, "s_out")
    st = stats
    coherent = reuse and st.kind in ("lstm", "gru")
    if st.kind in ("rnn_tanh", "rnn_relu"):
        ps = _rnn_backward(st, fwd, so, s_hn)
    elif st.kind == "lstm":
        ps = _lstm_backward(st, fwd, so, s_hn, s_cn, coherent)
    else:
        ps = _gru_backward(st, fwd, so, s_hn, coherent)

    nch = _NUM_CHUNKS[st.kind]
    B = float(batch_size)
    q_h_prev = (fwd.q_h0,) + fwd.q_h[:-1]
    w_ih = [sum(ps.s_g[t][j] * fwd.q_x[t] for t in range(T)) for j in range(nch)]
    w_hh = [sum(ps.s_g[t][j] * ps.hh_factor[t][j] * q_h_prev[t] for t in range(T)) for j in range(nch)]
    b_ih = [sum(ps.s_g[t][j] for t in range(T)) for j in range(nch)]
    b_hh = [sum(ps.s_g[t][j] * ps.hh_factor[t][j] for t in range(T)) for j in range(nch)]
    if st.kind in ("lstm", "gru"):
        extra = _cross_step(st, fwd, ps, k_x)
        for acc, add in zip((w_ih, w_hh, b_ih, b_hh), extra):
            for j in range(nch):
                acc[j] += add[j]
    if not st.has_bias:
        b_ih = b_hh = [0.0] * nch
    w_hr = 0.0
    if st.proj_size:
        # ∂W_hr = Σ_t δh_t m_tᵀ with m = o ⊙ tanh(c): W1 per step.
        q_m = [fwd.moments[t][3][1] * fwd.moments[t][4][1] for t in range(T)]
        w_hr = B * sum(ps.s_h[t] * q_m[t] for t in range(T))
    return RecurrentBackward(
        method="reuse" if coherent else "mean_field",
        s_h=tuple(ps.s_h),
        s_c=tuple(ps.s_c),
        s_x=tuple(ps.s_x),
        s_gates=tuple(ps.s_g),
        s_h0=ps.s_h0,
        s_c0=ps.s_c0,
        grad_weight_ih_chunks=tuple(B * x for x in w_ih),
        grad_weight_hh_chunks=tuple(B * x for x in w_hh),
        grad_bias_ih_chunks=tuple(B * x for x in b_ih),
        grad_bias_hh_chunks=tuple(B * x for x in b_hh),
        grad_weight_hr=w_hr,
    )


def _rnn_backward(st, fwd, so, s_hn) -> _Pass:
    """R1: a single path; weight reuse adds nothing for the vanilla RNN (7.3)."""
    T = fwd.seq_len
    H = st.hidden_size
    s_h, s_x, s_g = [0.0] * T, [0.0] * T, [(0.0,)] * T
    from_above = 0.0
    for t in range(T - 1, -1, -1):
        s_h[t] = so[t] + from_above + (s_hn if t == T - 1 else 0.0)
        s_pre = s_h[t] * fwd.moments[t][0][3]
        s_g[t] = (s_pre,)
        s_x[t] = H * st.var_ih[0] * s_pre
        from_above = H * st.var_hh[0] * s_pre
    return _Pass(s_h, [], s_x, s_g, from_above, 0.0, [(1.0,)] * T)


def _lstm_backward(st, fwd, so, s_hn, s_cn, coherent) -> _Pass:
    """R2, and R4 when `coherent`."""
    T = fwd.seq_len
    H = st.hidden_size
    # With a projection, δm = W_hrᵀ δh: s_m = P·σ²_hr·s_h (P rows of W_hr).
    proj_gain = st.proj_size * st.var_hr if st.proj_size else 1.0
    mem = _MemoryChannel(T, coherent)
    s_h, s_c, s_x, s_g = [0.0] * T, [0.0] * T, [0.0] * T, [()] * T
    hop_h = 0.0  # s reaching h_t from the i, f, g gates of step t+1 (R4's hop)
    o_path = 0.0  # s reaching h_t through the o gate of step t+1 (incoherent, small)
    nxt = None  # (E[f], E[f²], b_incoherent, b_coherent) of step t+1
    for t in range(T - 1, -1, -1):
        gi, gf, gg, go, tc = (_Moments(*m) for m in fwd.moments[t])
        a_t = go.second * tc.dphi2 * proj_gain  # s at c_t per unit s at h_t (m = o·tanh c)
        loss_t = so[t] + (s_hn if t == T - 1 else 0.0)
        s_h[t] = loss_t + o_path + hop_h
        if nxt is None:
            mem.inject(s_cn + a_t * loss_t)
        else:
            # R4: δc_t = f_{t+1}·δc_{t+1} (diagonal) + o·tanh'(c_t)·δm_t; the part of δm_t
            # that came from δc_{t+1} through W_hh is the hop (gain b, coherent share b_c);
            # the loss and the o-gate path are fresh, incoherent sources.
            f_mean, f_second, b_inc, b_coh = nxt
            mem.step(f_mean, f_second, a_t * b_inc, a_t * b_coh)
            mem.inject(a_t * (loss_t + o_path))
        s_ct = mem.value()
        s_c[t] = s_ct
        q_c_prev = fwd.q_c[t - 1] if t > 0 else fwd.q_c0
        mu_c_prev = fwd.mu_c[t - 1] if t > 0 else 0.0
        # R2 gate rules: δf = δc·c_{t−1}·f', δi = δc·g·i', δg = δc·i·(1−g²), δo = δm·tanh(c)·o'
        rho = (gg.second * gi.dphi2, q_c_prev * gf.dphi2, gi.second * gg.dphi2)
        s_o = s_h[t] * proj_gain * tc.second * go.dphi2
        s_g[t] = (s_ct * rho[0], s_ct * rho[1], s_ct * rho[2], s_o)
        s_x[t] = H * sum(st.var_ih[j] * s_g[t][j] for j in range(4))
        b_j = [H * st.var_hh[j] * rho[j] for j in range(3)]
        hop_h = sum(b_j) * s_ct
        o_path = H * st.var_hh[3] * s_o
        b_coh = 0.0
        if coherent:
            # κ_j = (E u_j)²/E u_j² of each hop's diagonal factor u_j; coherent parts of
            # independent chunks add in power. g path: i·(1−g²) (the dominant one, as in
            # R4); i path: g·i' and f path: c_{t−1}·f' are coherent only through a non-zero
            # mean of g or c. The receiving factor o·tanh'(c_{t−1}) enters through a_t.
            kap = (
                _kappa((gg.mean, gg.second), (gi.dmean, gi.dphi2)),
                _kappa((mu_c_prev, q_c_prev), (gf.dmean, gf.dphi2)),
                _kappa((gi.mean, gi.second), (gg.dmean, gg.dphi2)),
            )
            b_coh = sum(k * b for k, b in zip(kap, b_j))
        nxt = (gf.mean, gf.second, sum(b_j) - b_coh, b_coh)
    # Initial states: c_{-1} gets f_0·δc_0 (its own o·tanh' does not exist), h_{-1} the hops.
    return _Pass(s_h, s_c, s_x, s_g, hop_h + o_path, nxt[1] * s_c[0], [(1.0,) * 4] * T)


def _gru_backward(st, fwd, so, s_hn, coherent) -> _Pass:
    """R3, and R4 when `coherent`."""
    T = fwd.seq_len
    H = st.hidden_size
    mem = _MemoryChannel(T, coherent)
    q_h_prev = (fwd.q_h0,) + fwd.q_h[:-1]
    mu_h_prev = (0.0,) + fwd.mu_h[:-1]
    s_h, s_x, s_g, hh = [0.0] * T, [0.0] * T, [()] * T, [()] * T
    nxt = None  # (E[z], E[z²], b_incoherent, b_coherent) of step t+1
    for t in range(T - 1, -1, -1):
        gr, gz, gn = (_Moments(*m) for m in fwd.moments[t])
        if nxt is not None:
            # R4 with the update gate as the diagonal: δh_t = z_{t+1}·δh_{t+1} + W_hhᵀ(...).
            mem.step(*nxt)
        mem.inject(so[t] + (s_hn if t == T - 1 else 0.0))
        s = mem.value()
        s_h[t] = s
        q_hn = st.out_size * st.var_hh[2] * q_h_prev[t] + st.hn_bias_mean**2 + st.hn_bias_var
        one_mz, one_mz2 = 1.0 - gz.mean, 1.0 - 2.0 * gz.mean + gz.second
        # R3 backward, with E[(h − n)²] = q_h + E[n²] − 2μ_h·E[n]
        rho_n = one_mz2 * gn.dphi2
        hn2 = q_h_prev[t] + gn.second - 2.0 * mu_h_prev[t] * gn.mean
        rho = (rho_n * q_hn * gr.dphi2, hn2 * gz.dphi2, rho_n)
        s_g[t] = tuple(s * r for r in rho)
        hh[t] = (1.0, 1.0, gr.second)  # b_hn and W_hn see r ⊙ δn
        s_x[t] = H * sum(st.var_ih[j] * s_g[t][j] for j in range(3))
        b_j = (H * st.var_hh[0] * rho[0], H * st.var_hh[1] * rho[1], H * st.var_hh[2] * gr.second * rho_n)
        b_coh = 0.0
        if coherent:
            # κ of each hop's diagonal factor: n path r·(1−z)·(1−n²) (the dominant one, as in
            # R4), r path (1−z)(1−n²)·(W_hn h + b_hn)·r', z path (h − n)·z'.
            dn = (gn.dmean, gn.dphi2)
            kap = (
                _kappa((one_mz, one_mz2), dn, (st.hn_bias_mean, q_hn), (gr.dmean, gr.dphi2)),
                _kappa((mu_h_prev[t] - gn.mean, hn2), (gz.dmean, gz.dphi2)),
                _kappa((gr.mean, gr.second), (one_mz, one_mz2), dn),
            )
            b_coh = sum(k * b for k, b in zip(kap, b_j))
        nxt = (gz.mean, gz.second, sum(b_j) - b_coh, b_coh)
    return _Pass(s_h, [], s_x, s_g, (nxt[1] + nxt[2] + nxt[3]) * s_h[0], 0.0, hh)


def _cross_step(st, fwd, ps: _Pass, k_x: LagCovariance | None):
    """Cross-step terms Σ_{t≠t'} of the gated cells' parameter gradients (per chunk, /B).

    Gradient independence per pair of steps (t < t'):
    E[δ_j,t δ_j,t'] = E[D_t D_t']·α_j,t·α_j,t'·X_j(t, t'), with D the memory-channel δ (LSTM
    c, GRU h), whose only same-unit link across steps is the diagonal path:
    E[D_t D_t'] = Π_{k=t+1..t'} E[diag_k]·s_D,t'. α_j is the mean of the factor that turns D
    into the gate δ and X_j the lag correlation of the rest of that factor. The weight
    terms multiply by the lag covariance of the layer input (x for W_ih, h_{t−1} for W_hh).
    Cross terms through δh (the o gate of the LSTM) are O(W_hh²) smaller and left out.
    """
    T = fwd.seq_len
    f64 = torch.float64
    mom = torch.tensor(fwd.moments, dtype=f64)  # (T, sites, 4): mean, second, dmean, dphi2
    lstm = st.kind == "lstm"
    s_mem = torch.tensor(ps.s_c if lstm else ps.s_h, dtype=f64)
    diag = mom[:, 1, 0]  # E[f] (LSTM) or E[z] (GRU)
    cl = _cumlog(diag)

    def prod(a_off: int, ell: int) -> torch.Tensor:
        # Π_{k=a+1..a+ell} diag[k] for a = t + a_off, t = 0..T-1-ell (a = -1 allowed)
        n = T - ell
        return torch.exp(cl[ell + a_off + 1 : ell + a_off + 1 + n] - cl[a_off + 1 : a_off + 1 + n])

    zero = torch.zeros(1, dtype=f64)
    if lstm:
        mi, mf, mg = mom[:, 0], mom[:, 1], mom[:, 2]
        alpha = (mg[:, 0] * mi[:, 2], mf[:, 2], mi[:, 0] * mg[:, 2], torch.zeros(T, dtype=f64))
        alpha_hh = alpha
        q_c = torch.tensor((fwd.q_c0,) + fwd.q_c[:-1], dtype=f64)  # c_{t-1}
        mu_c = torch.tensor((0.0,) + fwd.mu_c[:-1], dtype=f64)
        var_c = q_c - mu_c**2
    else:
        mr, mz, mn = mom[:, 0], mom[:, 1], mom[:, 2]
        a_n = (1.0 - mz[:, 0]) * mn[:, 2]
        alpha = (a_n * mr[:, 2], mz[:, 2], a_n)
        alpha_hh = (alpha[0], alpha[1], a_n * mr[:, 0])
        var_n = mn[:, 1] - mn[:, 0] ** 2
        mu_h_prev = torch.tensor((0.0,) + fwd.mu_h[:-1], dtype=f64)
        hn2 = st.hn_bias_mean**2 + st.hn_bias_var
    nch = len(alpha)
    out = [[0.0] * nch for _ in range(4)]  # w_ih, w_hh, b_ih, b_hh
    for ell in range(1, T):
        n = T - ell
        decay = prod(0, ell)
        if float(decay.max()) < 1e-17:
            break  # every later lag is smaller still (all diagonal factors are < 1)
        edd = decay * s_mem[ell:]
        # lag covariance of h_{t-1}, h_{t'-1}; the initial state is taken as uncorrelated
        k_h = torch.cat((zero, fwd.lag.lag(ell)[: n - 1]))
        k_in = k_x.lag(ell) if k_x is not None else None
        if lstm:
            # X_f = E[c_{t−1} c_{t'−1}] (R2 memory recursion); other chunks X = 1
            x_f = prod(-1, ell) * var_c[:n] + mu_c[:n] * mu_c[ell:]
            xs = (None, x_f, None, None)
            xs_hh = xs
        else:
            # r: a = W_hn h + b_hn with the same W_hn and b_hn at both steps
            x_r = st.out_size * st.var_hh[2] * k_h + hn2
            # z: E[(h_{t−1} − n_t)(h_{t'−1} − n_t')], with Cov(n_t, h_{t'−1}) carried by
            # h_{t'−1} ⊃ (1−z_t)·n_t·Π z, and n's at different steps uncorrelated
            cov_nh = prod(0, ell - 1)[:n] * (1.0 - mz[:n, 0]) * var_n[:n]
            mu_n = mn[:, 0]
            x_z = k_h - cov_nh - mu_n[:n] * torch.tensor(fwd.mu_h[ell - 1 : ell - 1 + n], dtype=f64)
            x_z = x_z - mu_h_prev[:n] * mu_n[ell:] + mu_n[:n] * mu_n[ell:]
            xs = (x_r, x_z, None)
            xs_hh = xs
        for j in range(nch):
            for which, (al, xj) in enumerate(((alpha[j], xs[j]), (alpha_hh[j], xs_hh[j]))):
                r = edd * al[:n] * al[ell:]
                if xj is not None:
                    r = r * xj
                if which == 0:
                    out[2][j] += 2.0 * float(r.sum())
                    if k_in is not None:
                        out[0][j] += 2.0 * float((r * k_in).sum())
                else:
                    out[3][j] += 2.0 * float(r.sum())
                    out[1][j] += 2.0 * float((r * k_h).sum())
    return out


# --------------------------------------------------------------------------------------
# One-call helpers
# --------------------------------------------------------------------------------------


def predict(
    stats: RecurrentLayerStats,
    q_x: float | Sequence[float],
    s_out: float | Sequence[float],
    batch_size: int,
    seq_len: int | None = None,
    *,
    q_h0: float = 0.0,
    q_c0: float = 0.0,
    s_hn: float = 0.0,
    s_cn: float = 0.0,
    k_x: LagCovariance | None = None,
) -> LayerPrediction:
    """Forward plus both backward estimates for one layer and direction.

    Args:
        stats: the layer.
        q_x: input second moment (scalar or per step).
        s_out: s arriving at each output step (scalar or per step).
        batch_size: B.
        seq_len: T (needed when both q_x and s_out are scalars).
        q_h0: second moment of the initial hidden state.
        q_c0: second moment of the initial cell state.
        s_hn: s arriving at h_n.
        s_cn: s arriving at c_n.
        k_x: lag covariance of the input (None: independent steps).

    Returns:
        The layer prediction (estimate = R4, bound = plain mean field).
    """
    if seq_len is None and isinstance(q_x, (int, float)) and not isinstance(s_out, (int, float)):
        seq_len = len(s_out)
    fwd = forward(stats, q_x, seq_len, q_h0=q_h0, q_c0=q_c0)
    kw = dict(s_hn=s_hn, s_cn=s_cn, k_x=k_x)
    bound = backward(stats, fwd, s_out, batch_size, reuse=False, **kw)
    est = backward(stats, fwd, s_out, batch_size, reuse=True, **kw) if stats.kind in ("lstm", "gru") else bound
    return LayerPrediction(stats=stats, forward=fwd, estimate=est, bound=bound)


# --------------------------------------------------------------------------------------
# Reading a module
# --------------------------------------------------------------------------------------


def _module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.RNN):
        return "rnn_tanh" if module.nonlinearity == "tanh" else "rnn_relu"
    raise TypeError(f"module of type {type(module).__name__} is not nn.RNN, nn.LSTM or nn.GRU")


def default_layer_stats(
    kind: str, input_size: int, hidden_size: int, *, bias: bool = True, proj_size: int = 0
) -> RecurrentLayerStats:
    """Statistics of PyTorch's default init (section 8): every tensor U(±1/√H).

    Weights have variance 1/(3H) (H = hidden_size, also for weight_ih and weight_hr); each
    bias vector has mean 0 and variance 1/(3H), so b_ih + b_hh has variance 2/(3H).

    Args:
        kind: one of KINDS.
        input_size: I.
        hidden_size: H.
        bias: whether the module has biases.
        proj_size: LSTM projection size (0: none).

    Returns:
        The statistics.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KINDS}")
    n = _NUM_CHUNKS[kind]
    var = 1.0 / (3.0 * hidden_size)
    one = var if bias else 0.0
    bvar = (2.0 * one,) * n
    if kind == "gru":
        bvar = bvar[:2] + (one,)  # b_in alone; b_hn is carried separately
    return RecurrentLayerStats(
        kind=kind,
        input_size=input_size,
        hidden_size=hidden_size,
        var_ih=(var,) * n,
        var_hh=(var,) * n,
        bias_mean=(0.0,) * n,
        bias_var=bvar,
        hn_bias_var=one if kind == "gru" else 0.0,
        has_bias=bias,
        proj_size=proj_size,
        var_hr=var if proj_size else 0.0,
    )


def _chunk_mean_sq(w: torch.Tensor, n: int) -> tuple[float, ...]:
    return tuple(float(c.double().pow(2).mean()) for c in w.detach().chunk(n, 0))


def layer_stats(module: nn.Module, layer: int = 0, reverse: bool = False) -> RecurrentLayerStats:
    """Read the statistics of one layer and direction from nn.RNN / nn.LSTM / nn.GRU.

    Parameters on the meta device (no values) fall back to the default init
    (`default_layer_stats`).

    Args:
        module: the recurrent module.
        layer: layer index (0 .. num_layers-1).
        reverse: the reverse direction of a bidirectional module.

    Returns:
        The statistics.
    """
    kind = _module_kind(module)
    if not 0 <= layer < module.num_layers:
        raise ValueError(f"layer={layer!r} must be in 0..{module.num_layers - 1}")
    if reverse and not module.bidirectional:
        raise ValueError("reverse=True needs a bidirectional module")
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    n = _NUM_CHUNKS[kind]
    proj = getattr(module, "proj_size", 0) or 0
    w_ih = getattr(module, "weight_ih" + sfx)
    if w_ih.is_meta:
        return default_layer_stats(kind, w_ih.shape[1], module.hidden_size, bias=module.bias, proj_size=proj)
    bias_mean = bias_var = (0.0,) * n
    hn_mean = hn_var = 0.0
    if module.bias:
        b_ih = getattr(module, "bias_ih" + sfx).detach().double().chunk(n)
        b_hh = getattr(module, "bias_hh" + sfx).detach().double().chunk(n)
        summed = [a + b for a, b in zip(b_ih, b_hh)]
        if kind == "gru":
            summed[2] = b_ih[2]
            hn_mean, hn_var = float(b_hh[2].mean()), float(b_hh[2].var(unbiased=False))
        bias_mean = tuple(float(c.mean()) for c in summed)
        bias_var = tuple(float(c.var(unbiased=False)) for c in summed)
    return RecurrentLayerStats(
        kind=kind,
        input_size=w_ih.shape[1],
        hidden_size=module.hidden_size,
        var_ih=_chunk_mean_sq(w_ih, n),
        var_hh=_chunk_mean_sq(getattr(module, "weight_hh" + sfx), n),
        bias_mean=bias_mean,
        bias_var=bias_var,
        hn_bias_mean=hn_mean,
        hn_bias_var=hn_var,
        has_bias=bool(module.bias),
        proj_size=proj,
        var_hr=_chunk_mean_sq(getattr(module, "weight_hr" + sfx), 1)[0] if proj else 0.0,
    )


def module_layer_stats(module: nn.Module) -> tuple[tuple[RecurrentLayerStats, ...], ...]:
    """Statistics of every layer and direction: `result[layer][direction]`.

    Args:
        module: nn.RNN, nn.LSTM or nn.GRU.

    Returns:
        One tuple per layer with one (unidirectional) or two (bidirectional) entries.
    """
    dirs = (False, True) if module.bidirectional else (False,)
    return tuple(tuple(layer_stats(module, l, r) for r in dirs) for l in range(module.num_layers))


def predict_module(
    module: nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    q_x: float | Sequence[float] = 1.0,
    s_out: float | Sequence[float] = 1.0,
    s_hn: float | Sequence[float] = 0.0,
    s_cn: float | Sequence[float] = 0.0,
    q_h0: float = 0.0,
    q_c0: float = 0.0,
    train: bool = True,
) -> ModulePrediction:
    """Compose per-layer, per-direction predictions for a whole recurrent module.

    Layer l+1 reads the concatenation of layer l's directions (E4: q and the lag
    covariance average over the concatenated features) after inter-layer dropout (E6:
    q/(1−p) and s/(1−p) in train mode; independent masks leave the cross-step covariance
    unchanged). Backward, every feature of layer l's output receives the sum of what the
    directions of layer l+1 send to their input (E2), and the module input the sum over
    the first layer's directions. A reverse direction processes time backwards, so its
    per-step sequences are flipped when they are exchanged with neighbours.

    Args:
        module: nn.RNN, nn.LSTM or nn.GRU (batch_first does not matter).
        batch_size: B.
        seq_len: T.
        q_x: second moment of the module input (scalar or per time step); the input is
            taken as independent across steps (the protocol's x ~ N(0, 1)).
        s_out: s arriving at every element of the module output at each time step (scalar
            or per step); 1 for a loss on all steps, (0, ..., 0, 1) for the last step only.
        s_hn: s arriving at h_n, one scalar for all (layer, direction) slices or one value
            per slice in h_n's order (layer-major, direction-minor).
        s_cn: the same for c_n (LSTM).
        q_h0: second moment of every initial hidden state.
        q_c0: second moment of every initial cell state.
        train: whether inter-layer dropout is active (the protocol uses train mode).

    Returns:
        The composed prediction.
    """
    layers = module_layer_stats(module)
    L, D, T = len(layers), len(layers[0]), seq_len
    keep = 1.0 - (float(module.dropout) if (train and L > 1) else 0.0)

    def per_slice(v: float | Sequence[float], name: str) -> list[float]:
        if isinstance(v, (int, float)):
            return [float(v)] * (L * D)
        out = [float(x) for x in v]
        if len(out) != L * D:
            raise ValueError(f"{name} has {len(out)} entries, expected num_layers*num_directions={L * D}")
        return out

    hn, cn = per_slice(s_hn, "s_hn"), per_slice(s_cn, "s_cn")
    q_in = _as_steps(q_x, T, "q_x")
    k_in: LagCovariance | None = None
    fwds: list[list[RecurrentForward]] = []
    k_ins: list[LagCovariance | None] = []
    for l, dirs in enumerate(layers):
        row = [forward(st, q_in[::-1] if d else q_in, q_h0=q_h0, q_c0=q_c0) for d, st in enumerate(dirs)]
        fwds.append(row)
        k_ins.append(k_in)
        # time-aligned output of the concatenated directions
        lags = [f.lag.reversed() if d else f.lag for d, f in enumerate(row)]
        k_out = mix_lag_covariances(lags, [1.0 / D] * D)
        q_in = tuple(q / keep for q in k_out.second)
        k_in = LagCovariance(second=q_in, terms=k_out.terms)

    def run_backward(reuse: bool) -> tuple[list[list[RecurrentBackward]], tuple[float, ...]]:
        res: list[list[RecurrentBackward]] = [[] for _ in range(L)]
        s_above = _as_steps(s_out, T, "s_out")
        for l in range(L - 1, -1, -1):
            s_below = [0.0] * T
            for d, st in enumerate(layers[l]):
                k = k_ins[l].reversed() if (d and k_ins[l] is not None) else k_ins[l]
                bw = backward(
                    st,
                    fwds[l][d],
                    s_above[::-1] if d else s_above,
                    batch_size,
                    s_hn=hn[l * D + d],
                    s_cn=cn[l * D + d],
                    reuse=reuse,
                    k_x=k,
                )
                res[l].append(bw)
                s_below = [a + b for a, b in zip(s_below, bw.s_x[::-1] if d else bw.s_x)]
            s_above = tuple(s / keep for s in s_below)
        return res, tuple(s_below)

    est, s_x = run_backward(True)
    bound, s_x_bound = run_backward(False)
    preds = tuple(
        tuple(
            LayerPrediction(stats=layers[l][d], forward=fwds[l][d], estimate=est[l][d], bound=bound[l][d])
            for d in range(D)
        )
        for l in range(L)
    )
    q_out = tuple(q * keep for q in q_in) if L > 1 else q_in
    return ModulePrediction(layers=preds, q_out=q_out, s_x=s_x, s_x_bound=s_x_bound)
