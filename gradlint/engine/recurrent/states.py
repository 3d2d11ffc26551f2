"""The statistics of one recurrent layer, and the states and predictions computed from them.

Notation as in docs/design.md §6: q = E[h²] (mean over elements), μ = E[h], s = E[δ²] with
δ = ∂L/∂h. Per-step tuples are indexed by the layer's own processing order (a reverse
direction's step 0 is the last time step; `predict_module` re-aligns them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DENSE_MAX_STEPS = 1024
# R1w propagates an H×H δ covariance through the layer's own W_hh: 2·T·H³ flops. Beyond this
# budget (H = 128 up to 4096 steps, H = 512 up to 64) nn.RNN falls back to R1.
REUSE_MAX_FLOPS = 2 ** 34
NUM_CHUNKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CHUNK_NAMES = {"rnn_tanh": ("h",), "rnn_relu": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


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
        weight_hh: the values of weight_hh (float64), kept for nn.RNN only, when they are
            known and the exact-in-W backward (R1w, §6) fits `REUSE_MAX_FLOPS`; None: R1.
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
    weight_hh: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
        n = NUM_CHUNKS[self.kind]
        for name in ("var_ih", "var_hh", "bias_mean", "bias_var"):
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f"{name}={value!r} must have {n} entries (one per chunk) for kind={self.kind!r}")
            object.__setattr__(self, name, tuple(float(x) for x in value))
        if self.input_size <= 0 or self.hidden_size <= 0:
            raise ValueError(f"input_size={self.input_size!r} and hidden_size={self.hidden_size!r} must be positive")
        if self.weight_hh is not None and (self.kind not in ("rnn_tanh", "rnn_relu")
                                           or tuple(self.weight_hh.shape) != (self.hidden_size,) * 2):
            raise ValueError("weight_hh values are kept only for nn.RNN, as an (H, H) matrix")
        if self.proj_size and self.kind != "lstm":
            raise ValueError(f"proj_size={self.proj_size!r} is only supported for kind='lstm'")

    @property
    def out_size(self) -> int:
        """Number of features of h (P with a projection, else H)."""
        return self.proj_size or self.hidden_size

    @property
    def chunk_names(self) -> tuple[str, ...]:
        """Gate names of the chunks, in PyTorch's row order."""
        return CHUNK_NAMES[self.kind]


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
        method: 'mean_field' (R1–R3, the pessimistic bound) or 'reuse' (R4, or R1w for nn.RNN).
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
