"""Mean-field signal propagation through nn.RNN / nn.LSTM / nn.GRU unrolled in time.

Pure math: no model is run. One call describes one layer in one direction
(`RecurrentLayerStats`); stacked and bidirectional modules are composed from such calls by
`predict_module`. Rules cite ``shared/design/signal-propagation.md``: R1–R4 (section 6),
W1/W7 (section 3), E2/E4/E6 (section 4.2), defaults (section 8).

Notation as in the doc: q = E[h²] (mean over elements), μ = E[h], s = E[δ²] with
δ = ∂L/∂h. Per-step tuples are indexed by the layer's own processing order (a reverse
direction's step 0 is the last time step; `predict_module` re-aligns them).

Beyond the doc's per-step rules, the forward pass carries the same-unit covariance across
time steps, E[h_a h_b] (a "k_tok" over time). The same weights act at every step and the
biases are fixed per unit, so the gate pre-activations of one unit are correlated across
steps; the LSTM cell and the GRU state sum them with memory, coherently. R2/R3 treat every
step as fresh and under-predict q_h: measured 1.6–1.9× for an LSTM with forget bias +3,
and 2.7× in the second layer of a default 2-layer LSTM, whose small input leaves the per-unit
bias as the largest part of the gate variance. The covariance also gives the cross-step
terms of the parameter gradients (W1's (P−1)·r·k terms with time steps as positions).
The cost is O(T²) memory and O(T³) time (an LSTM layer: 0.9 s at T = 250, 6 s at T = 1000
on one CPU thread); beyond `DENSE_MAX_STEPS` steps the layer falls back to the doc's
per-step rules (off-diagonal covariances taken as 0, no cross-step gradient terms).

Two backward estimates exist for the gated cells (R4): plain mean field (R2/R3), which
treats W_hh as fresh at every step and is too pessimistic over long lags, and the
weight-reuse correction, which lets the h-path through the same W_hh add coherently to the
diagonal memory path. The correction is the estimate, plain mean field the pessimistic
bound. For nn.RNN both coincide (R1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from gradlint.engine import gaussian

__all__ = [
    "DENSE_MAX_STEPS",
    "KINDS",
    "LayerPrediction",
    "ModulePrediction",
    "RecurrentBackward",
    "RecurrentForward",
    "RecurrentLayerStats",
    "backward",
    "default_layer_stats",
    "forward",
    "layer_stats",
    "module_layer_stats",
    "predict",
    "predict_module",
]

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DENSE_MAX_STEPS = 1024
_NUM_CHUNKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_CHUNK_NAMES = {"rnn_tanh": ("h",), "rnn_relu": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
_F64 = torch.float64


# --------------------------------------------------------------------------------------
# Gaussian expectations (section 5): per-step moments come from gradlint.engine.gaussian; the
# Hermite coefficients for expectations across two steps (different mean and variance at
# each, which gaussian.cross does not cover) are integrated here on the section 5.3 grid.
# --------------------------------------------------------------------------------------


class _Moments(NamedTuple):
    """E[φ], E[φ²], E[φ'] and E[φ'²] for h ~ N(μ, v)."""

    mean: float
    second: float
    dmean: float
    dphi2: float


_N_HERMITE = 24  # bivariate tanh at v = 4, ρ = 0.99: 5e-4 relative error (v ≤ 0.3: 3e-8)
_GRID: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def _grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Section 5.3 grid (z in [-10, 10], 801 points, weights ∝ exp(-z²/2) summing to 1) and
    the normalised Hermite polynomials He_n(z)/√(n!) on it, n = 0.._N_HERMITE."""
    global _GRID
    if _GRID is None:
        z = torch.linspace(-10.0, 10.0, 801, dtype=_F64)
        w = torch.exp(-0.5 * z * z)
        he = [torch.ones_like(z), z.clone()]
        for n in range(1, _N_HERMITE):
            he.append((z * he[n] - math.sqrt(n) * he[n - 1]) / math.sqrt(n + 1))
        _GRID = (z, w / w.sum(), torch.stack(he))
    return _GRID


def _phi(name: str, h: torch.Tensor) -> torch.Tensor:
    """Activation values; the 'd' prefix gives the derivative."""
    if name in ("sigmoid", "dsigmoid"):
        y = torch.sigmoid(h)
        return y if name == "sigmoid" else y * (1.0 - y)
    if name in ("tanh", "dtanh"):
        # 2σ(2h) − 1 rather than torch.tanh: float64 tanh on CPU was measured up to 100×
        # slower under some thread settings; the two agree to 1e-16.
        y = 2.0 * torch.sigmoid(2.0 * h) - 1.0
        return y if name == "tanh" else 1.0 - y * y
    if name == "relu":
        return h.clamp_min(0.0)
    if name == "drelu":
        return (h > 0).to(h.dtype)
    raise ValueError(f"name={name!r} is not a supported activation")


def _act_moments(name: str, mu: float, v: float) -> _Moments:
    """Moments of an activation for h ~ N(mu, v), from gradlint.engine.gaussian (section 5).

    Args:
        name: 'sigmoid', 'tanh' or 'relu'.
        mu: mean of the pre-activation.
        v: variance of the pre-activation (rounding-level negative values are taken as 0).

    Returns:
        The four moments.
    """
    m = gaussian.moments(name, mu, max(float(v), 0.0))
    return _Moments(m.mean, m.second, m.dphi_mean, m.dphi2)


def _hermite(name: str, mu: float, v: float) -> torch.Tensor:
    """Normalised Hermite coefficients d_n = E[φ(μ + √v·Z)·He_n(Z)]/√(n!).

    Mehler's formula then gives, for jointly Gaussian pre-activations with correlation ρ,
    E[φ(a)·ψ(b)] = Σ_n d_n^φ(a)·d_n^ψ(b)·ρⁿ (the bivariate expectations of section 5.3
    without a 2D grid). Kinked φ converge slowly in n; their cross-step covariances are
    needed only to modest accuracy.
    """
    z, w, he = _grid()
    return he @ (_phi(name, mu + math.sqrt(max(float(v), 0.0)) * z) * w)


def _mehler(d_a: torch.Tensor, d_b: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Σ_n d_a[..., n]·d_b[..., n]·ρⁿ, elementwise over the leading dims."""
    out = d_a[..., 0] * d_b[..., 0]
    p = torch.ones_like(rho)
    for n in range(1, d_a.shape[-1]):
        p = p * rho
        out = out + d_a[..., n] * d_b[..., n] * p
    return out


def _corr(cov: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    den = torch.sqrt(var_a * var_b)
    return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov)).clamp(-1.0, 1.0)


def _hermite_steps(name: str, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """`_hermite` for many (mean, var) pairs at once: shape (len(mean), _N_HERMITE + 1)."""
    z, w, he = _grid()
    h = mean[:, None] + torch.sqrt(var.clamp_min(0.0))[:, None] * z[None, :]
    return (_phi(name, h) * w) @ he.T


def _mehler_matrix(d: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """E[ψ(a_t)·ψ(a_t')] for all pairs: Σ_n d[t, n]·d[t', n]·ρ[t, t']ⁿ."""
    return _mehler(d[:, None, :].expand(-1, d.shape[0], -1), d[None, :, :].expand(d.shape[0], -1, -1), rho)


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
class RecurrentForward:
    """Forward mean-field state per time step.

    The matrices are float64 tensors indexed [a, b] by step; they are None when the layer
    has more than DENSE_MAX_STEPS steps (then steps are treated as uncorrelated).

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
            the chunks in order and, for the LSTM, tanh(c_t) as a fifth site.
        k_x: (T, T) E[x_a x_b] for the same input feature (diagonal q_x).
        k_h: (T, T) E[h_a h_b] for the same unit (diagonal q_h): what a stacked layer sees.
        k_c: (T, T) E[c_a c_b], LSTM only.
        k_hn: (T, T) E[h_a n_b], GRU only (n = the candidate state).
        pre_cov: (chunks, T, T) covariance of each chunk's pre-activation across steps
            (diagonal pre_var).
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
    k_x: torch.Tensor | None = field(default=None, repr=False, compare=False)
    k_h: torch.Tensor | None = field(default=None, repr=False, compare=False)
    k_c: torch.Tensor | None = field(default=None, repr=False, compare=False)
    k_hn: torch.Tensor | None = field(default=None, repr=False, compare=False)
    pre_cov: torch.Tensor | None = field(default=None, repr=False, compare=False)

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
        r_x: (T, T) E[δx_t δx_t'] for one input feature (diagonal s_x): what the layer
            below receives as its `r_out`. None beyond DENSE_MAX_STEPS steps.
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
    r_x: torch.Tensor | None = field(default=None, repr=False, compare=False)

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
# Forward (R1, R2, R3 with the covariance across steps)
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


class _Trace:
    """Per-step records and covariance matrices filled by the forward loops."""

    def __init__(self, T: int, n_chunks: int, dense: bool) -> None:
        self.dense = dense
        self.q_h: list[float] = []
        self.mu_h: list[float] = []
        self.q_c: list[float] = []
        self.mu_c: list[float] = []
        self.pre_m: list[tuple[float, ...]] = []
        self.pre_v: list[tuple[float, ...]] = []
        self.moms: list[tuple[_Moments, ...]] = []
        if dense:
            self.k_h = torch.zeros(T, T, dtype=_F64)
            self.cov = torch.zeros(n_chunks, T, T, dtype=_F64)
            self.coef = torch.zeros(n_chunks, T, _N_HERMITE + 1, dtype=_F64)

    def set_sym(self, mat: torch.Tensor, b: int, col: torch.Tensor) -> None:
        """Write column b (rows 0..b) and its mirror row."""
        mat[: b + 1, b] = col
        mat[b, : b + 1] = col

    def gate(self, j: int, b: int, name: str, mean: float, col: torch.Tensor) -> torch.Tensor:
        """Store chunk j's pre-activation covariance column at step b and return the
        bivariate E[φ(a_a)·φ(a_b)] for a < b (Mehler)."""
        self.set_sym(self.cov[j], b, col)
        self.coef[j, b] = _hermite(name, mean, float(col[b]))
        rho = _corr(col[:b], torch.diagonal(self.cov[j])[:b], col[b])
        return _mehler(self.coef[j, :b], self.coef[j, b], rho)


def _prev_col(tr: _Trace, b: int, q_h0: float) -> torch.Tensor:
    """E[h_{a-1} h_{b-1}] for a = 0..b (h_{-1} = the initial state, uncorrelated)."""
    col = torch.zeros(b + 1, dtype=_F64)
    if b == 0:
        col[0] = q_h0
    else:
        col[1:] = tr.k_h[:b, b - 1]
    return col


def forward(
    stats: RecurrentLayerStats,
    q_x: float | Sequence[float],
    seq_len: int | None = None,
    *,
    q_h0: float = 0.0,
    q_c0: float = 0.0,
    k_x: torch.Tensor | None = None,
) -> RecurrentForward:
    """Propagate second moments (and their covariance across steps) forward through T steps.

    Pre-activations are Gaussian over (unit, sample), with the chunk's mean bias as mean
    and weight + bias-spread variance (R2: v_j = I·σ²_ih,j·q_x + fan·σ²_hh,j·q_h +
    Var(b)_j). Because the weights and the bias of a unit are the same at every step, the
    pre-activations of steps a and b of one unit have covariance
    I·σ²_ih,j·E[x_a x_b] + fan·σ²_hh,j·E[h_{a-1} h_{b-1}] + Var(b)_j; the LSTM cell and the
    GRU state add them up with memory, which R2/R3 miss (see the module docstring).

    Args:
        stats: the layer.
        q_x: input second moment, one value for every step or a sequence (one per step).
        seq_len: T; required when q_x is a scalar.
        q_h0: second moment of the initial hidden state (0 for zeros).
        q_c0: second moment of the initial cell state (LSTM).
        k_x: optional (T, T) E[x_a x_b] of one input feature across steps (only the
            off-diagonal is used; the diagonal is q_x). None: independent steps, as for the
            protocol's x ~ N(0, 1). A stacked layer passes the lower layer's k_h.

    Returns:
        The per-step forward state.
    """
    qx = _as_steps(q_x, seq_len, "q_x")
    T = len(qx)
    dense = T <= DENSE_MAX_STEPS
    kx = None
    if dense:
        kx = torch.zeros(T, T, dtype=_F64) if k_x is None else k_x.detach().to(_F64).clone()
        if kx.shape != (T, T):
            raise ValueError(f"k_x has shape {tuple(kx.shape)}, expected ({T}, {T})")
        kx.diagonal().copy_(torch.tensor(qx, dtype=_F64))
    tr = _Trace(T, _NUM_CHUNKS[stats.kind], dense)
    extra: dict[str, torch.Tensor] = {}
    if stats.kind in ("rnn_tanh", "rnn_relu"):
        _forward_rnn(stats, qx, kx, q_h0, tr)
    elif stats.kind == "lstm":
        extra["k_c"] = _forward_lstm(stats, qx, kx, q_h0, q_c0, tr)
    else:
        extra["k_hn"] = _forward_gru(stats, qx, kx, q_h0, tr)
    return RecurrentForward(
        q_x=qx,
        q_h=tuple(tr.q_h),
        mu_h=tuple(tr.mu_h),
        q_c=tuple(tr.q_c),
        mu_c=tuple(tr.mu_c),
        q_h0=float(q_h0),
        q_c0=float(q_c0),
        pre_mean=tuple(tr.pre_m),
        pre_var=tuple(tr.pre_v),
        moments=tuple(tuple(tuple(m) for m in site) for site in tr.moms),
        k_x=kx,
        k_h=tr.k_h if dense else None,
        k_c=extra.get("k_c") if dense else None,
        k_hn=extra.get("k_hn") if dense else None,
        pre_cov=tr.cov if dense else None,
    )


def _pre_col(st: RecurrentLayerStats, j: int, kx: torch.Tensor, prev: torch.Tensor, b: int) -> torch.Tensor:
    return st.input_size * st.var_ih[j] * kx[: b + 1, b] + st.out_size * st.var_hh[j] * prev + st.bias_var[j]


def _forward_rnn(st, qx, kx, q_h0, tr: _Trace) -> None:
    """R1 forward: v_t = I·σ²_ih·q_x + H·σ²_hh·q_{h,t−1} + Var(b); q_h = E[φ²], μ_h = E[φ]."""
    act = "tanh" if st.kind == "rnn_tanh" else "relu"
    q_prev = q_h0
    for b, qxt in enumerate(qx):
        var = st.input_size * st.var_ih[0] * qxt + st.out_size * st.var_hh[0] * q_prev + st.bias_var[0]
        m = _act_moments(act, st.bias_mean[0], var)
        if tr.dense:
            e = tr.gate(0, b, act, st.bias_mean[0], _pre_col(st, 0, kx, _prev_col(tr, b, q_h0), b))
            tr.set_sym(tr.k_h, b, torch.cat((e, torch.tensor([m.second], dtype=_F64))))
        tr.q_h.append(m.second)
        tr.mu_h.append(m.mean)
        tr.pre_m.append((st.bias_mean[0],))
        tr.pre_v.append((max(var, 0.0),))
        tr.moms.append((m,))
        q_prev = m.second


def _forward_lstm(st, qx, kx, q_h0, q_c0, tr: _Trace) -> torch.Tensor | None:
    """R2 forward, with the cell's covariance across steps.

    c_b = f_b·c_{b−1} + i_b·g_b, gates independent of each other and of the earlier cell
    (different weight rows; the own unit enters W_hh·h with weight O(1/√H)):
        E[c_b²] = E[f²]·E[c_{b−1}²] + E[i²]E[g²] + 2E[f]·E[c_{b−1}·i_b g_b]
        E[c_a c_b] = E[f_b]·E[c_a c_{b−1}] + E[c_a·i_b g_b]                      (a < b)
        E[c_a·i_b g_b] = Σ_{k≤a} Π_{m=k+1..a} E[f_m]·E[i_k i_b]·E[g_k g_b]
    R2 keeps only the first two terms of the first line. h = o·tanh(c):
    E[h_a h_b] = E[o_a o_b]·E[tanh c_a · tanh c_b], c taken as Gaussian.
    """
    T = len(qx)
    H = st.hidden_size
    proj_gain = H * st.var_hr if st.proj_size else 1.0  # h = W_hr m: E[h h'] = H·σ²_hr·E[m m']
    names = ("sigmoid", "sigmoid", "tanh", "sigmoid")
    if tr.dense:
        k_c = torch.zeros(T, T, dtype=_F64)
        decay = torch.zeros(T, T, dtype=_F64)  # decay[a, k] = Π_{m=k+1..a} E[f_m]
        coef_c = torch.zeros(T, _N_HERMITE + 1, dtype=_F64)
        var_c = torch.zeros(T, dtype=_F64)
        mu_c_t = torch.zeros(T, dtype=_F64)
    q_h_prev, q_c_prev, mu_c_prev = q_h0, q_c0, 0.0
    for b, qxt in enumerate(qx):
        var = [st.input_size * st.var_ih[j] * qxt + st.out_size * st.var_hh[j] * q_h_prev + st.bias_var[j] for j in range(4)]
        gi, gf, gg, go = (_act_moments(names[j], st.bias_mean[j], var[j]) for j in range(4))
        if tr.dense:
            prev = _prev_col(tr, b, q_h0)
            e_i, _, e_g, e_o = (tr.gate(j, b, names[j], st.bias_mean[j], _pre_col(st, j, kx, prev, b)) for j in range(4))
            if b > 0:
                decay[b, :b] = gf.mean * decay[b - 1, :b]
            decay[b, b] = 1.0
            w = decay[:b, :b] @ (e_i * e_g)  # E[c_a·i_b g_b], a < b
            cross = float(w[b - 1]) if b > 0 else 0.0
        else:
            cross = mu_c_prev * gi.mean * gg.mean
        c_q = gf.second * q_c_prev + gi.second * gg.second + 2.0 * gf.mean * cross
        c_mu = gf.mean * mu_c_prev + gi.mean * gg.mean
        tc = _act_moments("tanh", c_mu, c_q - c_mu * c_mu)
        q_new = proj_gain * go.second * tc.second
        if tr.dense:
            col = torch.empty(b + 1, dtype=_F64)
            if b > 0:
                col[:b] = gf.mean * k_c[:b, b - 1] + w
            col[b] = c_q
            tr.set_sym(k_c, b, col)
            var_c[b], mu_c_t[b] = c_q - c_mu * c_mu, c_mu
            coef_c[b] = _hermite("tanh", c_mu, c_q - c_mu * c_mu)
            rho = _corr(col[:b] - mu_c_t[:b] * c_mu, var_c[:b], var_c[b])
            e_tc = _mehler(coef_c[:b], coef_c[b], rho)
            tr.set_sym(tr.k_h, b, torch.cat((proj_gain * e_o * e_tc, torch.tensor([q_new], dtype=_F64))))
        tr.q_h.append(q_new)
        tr.mu_h.append(0.0 if st.proj_size else go.mean * tc.mean)
        tr.q_c.append(c_q)
        tr.mu_c.append(c_mu)
        tr.pre_m.append(tuple(st.bias_mean))
        tr.pre_v.append(tuple(max(v, 0.0) for v in var))
        tr.moms.append((gi, gf, gg, go, tc))
        q_h_prev, q_c_prev, mu_c_prev = q_new, c_q, c_mu
    return k_c if tr.dense else None


def _forward_gru(st, qx, kx, q_h0, tr: _Trace) -> torch.Tensor | None:
    """R3 forward, with the state's covariance across steps.

    a = W_hn h + b_hn (the same W_hn and b_hn at every step), n = tanh(W_in x + b_in + r ⊙ a),
    h_b = z_b·h_{b−1} + (1 − z_b)·n_b:
        E[h_b²] = E[z²]·E[h_{b−1}²] + E[(1−z)²]·E[n²] + 2E[z(1−z)]·E[h_{b−1} n_b]
        E[h_a h_b] = E[z_b]·E[h_a h_{b−1}] + E[1−z_b]·E[h_a n_b]                    (a < b)
        E[h_a n_b] = Σ_{k≤a} Π_{m=k+1..a} E[z_m]·E[1−z_k]·E[n_k n_b]
    R3 keeps E[h_{b−1} n_b] = μ_h·E[n] only.
    """
    T = len(qx)
    fan = st.out_size
    if tr.dense:
        decay = torch.zeros(T, T, dtype=_F64)  # Π_{m=k+1..a} E[z_m]
        e_nn = torch.zeros(T, T, dtype=_F64)
        r_mean = torch.zeros(T, dtype=_F64)
        one_mz = torch.zeros(T, dtype=_F64)
    q_h_prev, mu_h_prev = q_h0, 0.0
    for b, qxt in enumerate(qx):
        var = [st.input_size * st.var_ih[j] * qxt + fan * st.var_hh[j] * q_h_prev + st.bias_var[j] for j in range(2)]
        gr = _act_moments("sigmoid", st.bias_mean[0], var[0])
        gz = _act_moments("sigmoid", st.bias_mean[1], var[1])
        # a has mean μ(b_hn) and second moment q_hn; r ⊙ a has mean E[r]μ_hn, second E[r²]q_hn
        hn2 = st.hn_bias_mean**2 + st.hn_bias_var
        q_hn = fan * st.var_hh[2] * q_h_prev + hn2
        mu_ra = gr.mean * st.hn_bias_mean
        n_mean = st.bias_mean[2] + mu_ra
        n_var = st.input_size * st.var_ih[2] * qxt + st.bias_var[2] + gr.second * q_hn - mu_ra * mu_ra
        gn = _act_moments("tanh", n_mean, n_var)
        if tr.dense:
            prev = _prev_col(tr, b, q_h0)
            r_mean[b], one_mz[b] = gr.mean, 1.0 - gz.mean
            e_r = tr.gate(0, b, "sigmoid", st.bias_mean[0], _pre_col(st, 0, kx, prev, b))
            tr.gate(1, b, "sigmoid", st.bias_mean[1], _pre_col(st, 1, kx, prev, b))
            e_a = fan * st.var_hh[2] * prev + hn2  # E[a_a a_b]
            e_ra = torch.cat((e_r, torch.tensor([gr.second], dtype=_F64))) * e_a
            cov_n = st.input_size * st.var_ih[2] * kx[: b + 1, b] + st.bias_var[2] + e_ra
            cov_n = cov_n - r_mean[: b + 1] * gr.mean * st.hn_bias_mean**2
            cov_n[b] = n_var
            e_n = tr.gate(2, b, "tanh", n_mean, cov_n)
            e_nn[:b, b] = e_n
            e_nn[b, :b] = e_n
            e_nn[b, b] = gn.second
            if b > 0:
                decay[b, :b] = gz.mean * decay[b - 1, :b]
            decay[b, b] = 1.0
            w = decay[:b, :b] @ (one_mz[:b] * e_n)  # E[h_a n_b], a < b
            cross = float(w[b - 1]) if b > 0 else 0.0
        else:
            cross = mu_h_prev * gn.mean
        q_new = (1.0 - 2.0 * gz.mean + gz.second) * gn.second + gz.second * q_h_prev
        q_new += 2.0 * (gz.mean - gz.second) * cross
        mu_new = (1.0 - gz.mean) * gn.mean + gz.mean * mu_h_prev
        if tr.dense:
            col = torch.empty(b + 1, dtype=_F64)
            if b > 0:
                col[:b] = gz.mean * tr.k_h[:b, b - 1] + (1.0 - gz.mean) * w
            col[b] = q_new
            tr.set_sym(tr.k_h, b, col)
        tr.q_h.append(q_new)
        tr.mu_h.append(mu_new)
        tr.pre_m.append((st.bias_mean[0], st.bias_mean[1], n_mean))
        tr.pre_v.append(tuple(max(v, 0.0) for v in (*var, n_var)))
        tr.moms.append((gr, gz, gn))
        q_h_prev, mu_h_prev = q_new, mu_new
    if not tr.dense:
        return None
    # E[h_a n_b] for every pair (a ≥ b too: h_a then contains n_b itself)
    return decay @ (one_mz[:, None] * e_nn)


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
        self.cos = torch.cos(torch.arange(n, dtype=_F64) * (2.0 * math.pi / n))
        self.f = torch.zeros(n, dtype=_F64)

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
    y: torch.Tensor | None = None  # Y(t, t') = E[δin_t·D_t'] for t < t' (see _diag_sources)


def backward(
    stats: RecurrentLayerStats,
    fwd: RecurrentForward,
    s_out: float | Sequence[float],
    batch_size: int,
    *,
    s_hn: float = 0.0,
    s_cn: float = 0.0,
    reuse: bool = True,
    r_out: torch.Tensor | None = None,
) -> RecurrentBackward:
    """Propagate δ² backward through the unrolled layer and predict parameter gradients.

    The δ arriving from outside may be correlated across steps for one output feature
    (`r_out`): a layer above maps its gate δ's, which are correlated across steps, through
    the same W_ih at every step. Along the diagonal path (LSTM c, GRU h) such sources add
    coherently; this raises s itself, not only the gradient sums.

    Parameter gradients are W1 with the time steps as positions: the per-step terms
    B·s_y·q_x (W7: steps are separate uses of one weight) plus the cross-step terms
    B·Σ_{t≠t'} E[δ_t δ_t']·E[x_t x_t']. In gated cells the δ at one unit's gate at steps t
    and t' share the diagonal memory path (Π f or Π z) and the gate inputs are correlated
    across steps, so these terms are large: without them LSTM/GRU bias and weight_hh
    gradients were measured 0.1–0.35 decades low. nn.RNN has no diagonal path and none.

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
        r_out: optional (T, T) E[δ_t δ_t'] of one output feature from outside (only the
            off-diagonal is used; the diagonal is s_out). None: independent steps, as for
            the protocol's loss. A stacked layer passes the `r_x` of the layer above.

    Returns:
        The backward state and gradient predictions.
    """
    T = fwd.seq_len
    dense = fwd.k_h is not None
    r_in = None
    if dense and r_out is not None:
        r_in = r_out.detach().to(_F64).clone()
        if r_in.shape != (T, T):
            raise ValueError(f"r_out has shape {tuple(r_in.shape)}, expected ({T}, {T})")
        r_in.fill_diagonal_(0.0)
    so = _as_steps(s_out, T, "s_out")
    st = stats
    coherent = reuse and st.kind in ("lstm", "gru")
    if st.kind in ("rnn_tanh", "rnn_relu"):
        ps = _rnn_backward(st, fwd, so, s_hn)
    elif st.kind == "lstm":
        ps = _lstm_backward(st, fwd, so, s_hn, s_cn, coherent, r_in)
    else:
        ps = _gru_backward(st, fwd, so, s_hn, coherent, r_in)

    nch = _NUM_CHUNKS[st.kind]
    B = float(batch_size)
    q_h_prev = (fwd.q_h0,) + fwd.q_h[:-1]
    w_ih = [sum(ps.s_g[t][j] * fwd.q_x[t] for t in range(T)) for j in range(nch)]
    w_hh = [sum(ps.s_g[t][j] * ps.hh_factor[t][j] * q_h_prev[t] for t in range(T)) for j in range(nch)]
    b_ih = [sum(ps.s_g[t][j] for t in range(T)) for j in range(nch)]
    b_hh = [sum(ps.s_g[t][j] * ps.hh_factor[t][j] for t in range(T)) for j in range(nch)]
    r_x = None
    if dense:
        sums, r_x = _cross_step(st, fwd, ps, r_in)
        for acc, add in zip((w_ih, w_hh, b_ih, b_hh), sums):
            for j in range(nch):
                acc[j] += add[j]
        r_x.diagonal().copy_(torch.tensor(ps.s_x, dtype=_F64))
    if not st.has_bias:
        b_ih = b_hh = [0.0] * nch
    w_hr = 0.0
    if st.proj_size:
        # ∂W_hr = Σ_t δh_t m_tᵀ with m = o ⊙ tanh(c): W1 per step.
        w_hr = B * sum(ps.s_h[t] * fwd.moments[t][3][1] * fwd.moments[t][4][1] for t in range(T))
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
        r_x=r_x,
    )


def _diag_sources(r_in: torch.Tensor | None, e_mean: torch.Tensor, d_mean: torch.Tensor) -> torch.Tensor | None:
    """Y(t, t') = E[δin_t·D_t'] for t < t', for correlated outside sources.

    The memory-channel δ is D_t = d_{t+1}·D_{t+1} + e_t·δin_t (LSTM: d = f, e = o·tanh'(c),
    δin = δm; GRU: d = z, e = 1, δin = δh), so with mean-field factors
    Y(t, t') = E[e_t']·R_in(t, t') + E[d_{t'+1}]·Y(t, t'+1). The fresh source at step t then
    adds 2·E[d_{t+1}]·E[e_t]·Y(t, t+1) to s_D,t on top of E[e_t²]·s_in,t.
    """
    if r_in is None:
        return None
    T = r_in.shape[0]
    y = torch.zeros(T, T, dtype=_F64)
    for tp in range(T - 1, 0, -1):
        nxt = d_mean[tp + 1] * y[:tp, tp + 1] if tp + 1 < T else 0.0
        y[:tp, tp] = e_mean[tp] * r_in[:tp, tp] + nxt
    return y


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


def _lstm_backward(st, fwd, so, s_hn, s_cn, coherent, r_in) -> _Pass:
    """R2, and R4 when `coherent`."""
    T = fwd.seq_len
    H = st.hidden_size
    # With a projection, δm = W_hrᵀ δh: s_m = P·σ²_hr·s_h (P rows of W_hr, the same at
    # every step, so the covariance across steps scales alike).
    proj_gain = st.proj_size * st.var_hr if st.proj_size else 1.0
    mom = torch.tensor(fwd.moments, dtype=_F64)
    f_means = mom[:, 1, 0]
    e_means = mom[:, 3, 0] * mom[:, 4, 2]
    y = _diag_sources(None if r_in is None else proj_gain * r_in, e_means, f_means)
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
            coh = 2.0 * float(f_means[t + 1] * e_means[t] * y[t, t + 1]) if y is not None else 0.0
            mem.inject(a_t * (loss_t + o_path) + coh)
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
    return _Pass(s_h, s_c, s_x, s_g, hop_h + o_path, nxt[1] * s_c[0], [(1.0,) * 4] * T, y)


def _gru_backward(st, fwd, so, s_hn, coherent, r_in) -> _Pass:
    """R3, and R4 when `coherent`."""
    T = fwd.seq_len
    H = st.hidden_size
    z_mean = torch.tensor([m[1][0] for m in fwd.moments], dtype=_F64)
    y = _diag_sources(r_in, torch.ones(T, dtype=_F64), z_mean)
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
        coh = 2.0 * float(z_mean[t + 1] * y[t, t + 1]) if (y is not None and t < T - 1) else 0.0
        mem.inject(so[t] + (s_hn if t == T - 1 else 0.0) + coh)
        s = mem.value()
        s_h[t] = s
        q_hn = st.out_size * st.var_hh[2] * q_h_prev[t] + st.hn_bias_mean**2 + st.hn_bias_var
        one_mz, one_mz2 = 1.0 - gz.mean, 1.0 - 2.0 * gz.mean + gz.second
        # R3 backward; E[(h_{t−1} − n_t)²] = q_h + E[n²] − 2E[h_{t−1} n_t]
        h_n = float(fwd.k_hn[t - 1, t]) if (fwd.k_hn is not None and t > 0) else mu_h_prev[t] * gn.mean
        hn2 = q_h_prev[t] + gn.second - 2.0 * h_n
        rho_n = one_mz2 * gn.dphi2
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
    return _Pass(s_h, [], s_x, s_g, (nxt[1] + nxt[2] + nxt[3]) * s_h[0], 0.0, hh, y)


def _cross_step(st, fwd: RecurrentForward, ps: _Pass, r_in: torch.Tensor | None):
    """Cross-step terms Σ_{t≠t'} of the parameter gradients and the δ covariance at x.

    Returns ([w_ih, w_hh, b_ih, b_hh] per chunk, divided by B; r_x with a zero diagonal).
    With gradient independence per pair t < t', E[δ_j,t δ_j,t'] = E[D_t D_t']·E[u_j,t u_j,t']:
    D is the memory-channel δ (LSTM c, GRU h) and u_j the factor that turns D into the gate
    δ (LSTM g: i·(1−g²), i: g·i', f: c_{t−1}·f'; GRU n: (1−z)(1−n²), r: the same times
    (W_hn h + b_hn)·r', z: (h_{t−1} − n)·z'), whose lag moments come from the forward
    covariances. D's only same-unit links across steps are the diagonal path and correlated
    outside sources: E[D_t D_t'] = E[d_{t+1}]·E[D_{t+1} D_t'] + E[e_t]·Y(t, t'), with
    E[D_t'²] = s_D,t'. Gates fed by δh directly (LSTM o, the RNN pre-activation) correlate only
    through the outside sources; the within-layer h-path's own correlation is O(W_hh²) and
    left out. The weight terms multiply by E[x_t x_t'] (W_ih) or E[h_{t−1} h_{t'−1}] (W_hh),
    and δx_t = W_ihᵀ·δgates_t with the same W_ih at every step gives
    E[δx_t δx_t'] = H·Σ_j σ²_ih,j·E[δ_j,t δ_j,t'].
    """
    T = fwd.seq_len
    nch = _NUM_CHUNKS[st.kind]
    mean = torch.tensor(fwd.pre_mean, dtype=_F64)  # (T, chunks)
    var = torch.tensor(fwd.pre_var, dtype=_F64)
    mom = torch.tensor(fwd.moments, dtype=_F64)  # (T, sites, 4): mean, second, dmean, dphi2
    zeros = torch.zeros(T, T, dtype=_F64)

    def biv(j: int, name: str) -> torch.Tensor:
        # E[ψ(a_j,t)·ψ(a_j,t')] over all pairs, from chunk j's pre-activation covariance
        rho = _corr(fwd.pre_cov[j], var[:, j, None], var[None, :, j])
        return _mehler_matrix(_hermite_steps(name, mean[:, j], var[:, j]), rho)

    def shifted(k: torch.Tensor, k00: float) -> torch.Tensor:
        # E[y_{t−1} y_{t'−1}] from E[y_a y_b]; the initial state is uncorrelated with later
        # steps
        out = torch.zeros(T, T, dtype=_F64)
        out[1:, 1:] = k[:-1, :-1]
        out[0, 0] = k00
        return out

    k_prev = shifted(fwd.k_h, fwd.q_h0)
    if st.kind in ("rnn_tanh", "rnn_relu"):
        # δpre_t = φ'_t·δh_t: correlated only through outside sources
        d_act = "drelu" if st.kind == "rnn_relu" else "dtanh"
        r = zeros if r_in is None else r_in * biv(0, d_act)
        pairs = [(r, r)]
    else:
        lstm = st.kind == "lstm"
        d_mean = mom[:, 1, 0]  # E[f] or E[z]
        e_mean = mom[:, 3, 0] * mom[:, 4, 2] if lstm else torch.ones(T, dtype=_F64)
        s_mem = torch.tensor(ps.s_c if lstm else ps.s_h, dtype=_F64)
        edd = torch.zeros(T, T, dtype=_F64)
        for t in range(T - 2, -1, -1):
            row = torch.cat((s_mem[t + 1 : t + 2], edd[t + 1, t + 2 :])) * d_mean[t + 1]
            if ps.y is not None:
                row = row + e_mean[t] * ps.y[t, t + 1 :]
            edd[t, t + 1 :] = row
        if lstm:
            u = [
                biv(2, "tanh") * biv(0, "dsigmoid"),
                shifted(fwd.k_c, fwd.q_c0) * biv(1, "dsigmoid"),
                biv(0, "sigmoid") * biv(2, "dtanh"),
                None,
            ]
            pairs = [(edd * x, edd * x) if x is not None else (zeros, zeros) for x in u]
            if r_in is not None:
                # o gate: δo = δm·tanh(c)·o', with δm's outside part correlated
                mu_c = torch.tensor(fwd.mu_c, dtype=_F64)
                var_c = torch.tensor(fwd.q_c, dtype=_F64) - mu_c**2
                rho_c = _corr(fwd.k_c - mu_c[:, None] * mu_c[None, :], var_c[:, None], var_c[None, :])
                e_tc = _mehler_matrix(_hermite_steps("tanh", mu_c, var_c), rho_c)
                proj_gain = st.proj_size * st.var_hr if st.proj_size else 1.0
                r_o = torch.triu(proj_gain * r_in, diagonal=1) * e_tc * biv(3, "dsigmoid")
                pairs[3] = (r_o, r_o)
        else:
            e_1mz = 1.0 - d_mean[:, None] - d_mean[None, :] + biv(1, "sigmoid")
            u_n = e_1mz * biv(2, "dtanh")
            e_a = st.out_size * st.var_hh[2] * k_prev + st.hn_bias_mean**2 + st.hn_bias_var
            # E[(h_{t−1} − n_t)(h_{t'−1} − n_t')]; k_hn[a, b] = E[h_a n_b], h_{−1} uncorrelated
            h_n = torch.zeros(T, T, dtype=_F64)
            h_n[1:, :] = fwd.k_hn[:-1, :]
            x_z = k_prev - h_n - h_n.T + biv(2, "tanh")
            u_r = u_n * e_a * biv(0, "dsigmoid")
            pairs = [(edd * u_r, edd * u_r), (edd * x_z * biv(1, "dsigmoid"),) * 2, (edd * u_n, edd * u_n * biv(0, "sigmoid"))]
    sums = [[0.0] * nch for _ in range(4)]
    r_x = torch.zeros(T, T, dtype=_F64)
    for j, (r, r_hh) in enumerate(pairs):
        r = torch.triu(r, diagonal=1)
        r_hh = torch.triu(r_hh, diagonal=1)
        sums[0][j] = 2.0 * float((r * fwd.k_x).sum())
        sums[1][j] = 2.0 * float((r_hh * k_prev).sum())
        sums[2][j] = 2.0 * float(r.sum())
        sums[3][j] = 2.0 * float(r_hh.sum())
        r_x = r_x + st.hidden_size * st.var_ih[j] * r
    return sums, r_x + r_x.T


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
    k_x: torch.Tensor | None = None,
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
        k_x: optional (T, T) input covariance across steps (see `forward`).

    Returns:
        The layer prediction (estimate = R4, bound = plain mean field).
    """
    if seq_len is None and isinstance(q_x, (int, float)) and not isinstance(s_out, (int, float)):
        seq_len = len(s_out)
    fwd = forward(stats, q_x, seq_len, q_h0=q_h0, q_c0=q_c0, k_x=k_x)
    bound = backward(stats, fwd, s_out, batch_size, s_hn=s_hn, s_cn=s_cn, reuse=False)
    if stats.kind in ("lstm", "gru"):
        est = backward(stats, fwd, s_out, batch_size, s_hn=s_hn, s_cn=s_cn, reuse=True)
    else:
        est = bound
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
    stats = RecurrentLayerStats(
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
    numbers = (*stats.var_ih, *stats.var_hh, *stats.bias_mean, *stats.bias_var, hn_mean, hn_var, stats.var_hr)
    if not all(math.isfinite(x) for x in numbers):
        # NaN/inf weights (or a mean square beyond float64): as for every other layer
        # (params.collect, GL103), the layer is analyzed at its default init.
        return default_layer_stats(kind, w_ih.shape[1], module.hidden_size, bias=module.bias, proj_size=proj)
    return stats


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

    Layer l+1 reads the concatenation of layer l's directions (E4: q and the covariance
    across steps average over the concatenated features) after inter-layer dropout (E6:
    q/(1−p) and s/(1−p) in train mode; masks are independent across steps, so the
    off-diagonal covariance is unchanged). Backward, every feature of layer l's output
    receives the sum of what the directions of layer l+1 send to their input (E2), and the
    module input the sum over the first layer's directions. A reverse direction processes
    time backwards: its per-step sequences and covariance matrices are flipped when they
    are exchanged with neighbours.

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

    def flip(seq):
        return seq.flip(0, 1) if isinstance(seq, torch.Tensor) else seq[::-1]

    hn, cn = per_slice(s_hn, "s_hn"), per_slice(s_cn, "s_cn")
    q_in: tuple[float, ...] = _as_steps(q_x, T, "q_x")
    k_in: torch.Tensor | None = None
    fwds: list[list[RecurrentForward]] = []
    for dirs in layers:
        row = [
            forward(st, flip(q_in) if d else q_in, q_h0=q_h0, q_c0=q_c0, k_x=flip(k_in) if (d and k_in is not None) else k_in)
            for d, st in enumerate(dirs)
        ]
        fwds.append(row)
        # time-aligned output of the concatenated directions, then dropout
        q_out = tuple(sum((flip(f.q_h) if d else f.q_h)[t] for d, f in enumerate(row)) / D for t in range(T))
        q_in = tuple(q / keep for q in q_out)
        if row[0].k_h is not None:
            k_in = sum(flip(f.k_h) if d else f.k_h for d, f in enumerate(row)) / D

    def run_backward(reuse: bool) -> tuple[list[list[RecurrentBackward]], tuple[float, ...]]:
        res: list[list[RecurrentBackward]] = [[] for _ in range(L)]
        s_above = _as_steps(s_out, T, "s_out")
        r_above: torch.Tensor | None = None  # the loss is independent across steps
        for l in range(L - 1, -1, -1):
            s_below = [0.0] * T
            r_below: torch.Tensor | None = None
            for d, st in enumerate(layers[l]):
                bw = backward(
                    st,
                    fwds[l][d],
                    flip(s_above) if d else s_above,
                    batch_size,
                    s_hn=hn[l * D + d],
                    s_cn=cn[l * D + d],
                    reuse=reuse,
                    r_out=flip(r_above) if (d and r_above is not None) else r_above,
                )
                res[l].append(bw)
                s_below = [a + b for a, b in zip(s_below, flip(bw.s_x) if d else bw.s_x)]
                if bw.r_x is not None:
                    r_x = flip(bw.r_x) if d else bw.r_x
                    r_below = r_x if r_below is None else r_below + r_x
            # dropout masks are independent across steps: s/(1−p), off-diagonal unchanged
            s_above = tuple(s / keep for s in s_below)
            r_above = r_below
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
    return ModulePrediction(layers=preds, q_out=q_out, s_x=s_x, s_x_bound=s_x_bound)
