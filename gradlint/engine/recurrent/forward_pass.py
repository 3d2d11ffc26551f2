"""The forward pass of one recurrent layer unrolled in time (docs/design.md §6: R1, R2, R3).

Beyond the per-step rules of §6, the forward pass carries the same-unit covariance across
time steps, E[h_a h_b] (a "k_tok" over time). The same weights act at every step and the
biases are fixed per unit, so the gate pre-activations of one unit are correlated across
steps; the LSTM cell and the GRU state sum them with memory, coherently. R2/R3 treat every
step as fresh and under-predict q_h: measured 1.6–1.9× for an LSTM with forget bias +3,
and 2.7× in the second layer of a default 2-layer LSTM, whose small input leaves the per-unit
bias as the largest part of the gate variance. The covariance also gives the cross-step
terms of the parameter gradients (W1's (P−1)·r·k terms with time steps as positions).
The cost is O(T²) memory and O(T³) time (an LSTM layer: 0.9 s at T = 250, 6 s at T = 1000
on one CPU thread); beyond `DENSE_MAX_STEPS` steps the layer falls back to the per-step
rules of §6 (off-diagonal covariances taken as 0, no cross-step gradient terms).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradlint.engine.recurrent.numerics import F64, N_HERMITE, ActMoments, act_moments, corr, hermite, mehler
from gradlint.engine.recurrent.states import DENSE_MAX_STEPS, NUM_CHUNKS, RecurrentForward, RecurrentLayerStats


def as_steps(value: float | Sequence[float], seq_len: int | None, name: str) -> tuple[float, ...]:
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
        self.moms: list[tuple[ActMoments, ...]] = []
        if dense:
            self.k_h = torch.zeros(T, T, dtype=F64)
            self.cov = torch.zeros(n_chunks, T, T, dtype=F64)
            self.coef = torch.zeros(n_chunks, T, N_HERMITE + 1, dtype=F64)

    def set_sym(self, mat: torch.Tensor, b: int, col: torch.Tensor) -> None:
        """Write column b (rows 0..b) and its mirror row."""
        mat[: b + 1, b] = col
        mat[b, : b + 1] = col

    def gate(self, j: int, b: int, name: str, mean: float, col: torch.Tensor) -> torch.Tensor:
        """Store chunk j's pre-activation covariance column at step b and return the
        bivariate E[φ(a_a)·φ(a_b)] for a < b (Mehler)."""
        self.set_sym(self.cov[j], b, col)
        self.coef[j, b] = hermite(name, mean, float(col[b]))
        rho = corr(col[:b], torch.diagonal(self.cov[j])[:b], col[b])
        return mehler(self.coef[j, :b], self.coef[j, b], rho)


def _prev_col(tr: _Trace, b: int, q_h0: float) -> torch.Tensor:
    """E[h_{a-1} h_{b-1}] for a = 0..b (h_{-1} = the initial state, uncorrelated)."""
    col = torch.zeros(b + 1, dtype=F64)
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
    qx = as_steps(q_x, seq_len, "q_x")
    T = len(qx)
    dense = T <= DENSE_MAX_STEPS
    kx = None
    if dense:
        kx = torch.zeros(T, T, dtype=F64) if k_x is None else k_x.detach().to(F64).clone()
        if kx.shape != (T, T):
            raise ValueError(f"k_x has shape {tuple(kx.shape)}, expected ({T}, {T})")
        kx.diagonal().copy_(torch.tensor(qx, dtype=F64))
    tr = _Trace(T, NUM_CHUNKS[stats.kind], dense)
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
        m = act_moments(act, st.bias_mean[0], var)
        if tr.dense:
            e = tr.gate(0, b, act, st.bias_mean[0], _pre_col(st, 0, kx, _prev_col(tr, b, q_h0), b))
            tr.set_sym(tr.k_h, b, torch.cat((e, torch.tensor([m.second], dtype=F64))))
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
        k_c = torch.zeros(T, T, dtype=F64)
        decay = torch.zeros(T, T, dtype=F64)  # decay[a, k] = Π_{m=k+1..a} E[f_m]
        coef_c = torch.zeros(T, N_HERMITE + 1, dtype=F64)
        var_c = torch.zeros(T, dtype=F64)
        mu_c_t = torch.zeros(T, dtype=F64)
    q_h_prev, q_c_prev, mu_c_prev = q_h0, q_c0, 0.0
    for b, qxt in enumerate(qx):
        var = [st.input_size * st.var_ih[j] * qxt + st.out_size * st.var_hh[j] * q_h_prev + st.bias_var[j]
               for j in range(4)]
        gi, gf, gg, go = (act_moments(names[j], st.bias_mean[j], var[j]) for j in range(4))
        if tr.dense:
            prev = _prev_col(tr, b, q_h0)
            e_i, _, e_g, e_o = (tr.gate(j, b, names[j], st.bias_mean[j], _pre_col(st, j, kx, prev, b))
                                for j in range(4))
            if b > 0:
                decay[b, :b] = gf.mean * decay[b - 1, :b]
            decay[b, b] = 1.0
            w = decay[:b, :b] @ (e_i * e_g)  # E[c_a·i_b g_b], a < b
            cross = float(w[b - 1]) if b > 0 else 0.0
        else:
            cross = mu_c_prev * gi.mean * gg.mean
        c_q = gf.second * q_c_prev + gi.second * gg.second + 2.0 * gf.mean * cross
        c_mu = gf.mean * mu_c_prev + gi.mean * gg.mean
        tc = act_moments("tanh", c_mu, c_q - c_mu * c_mu)
        q_new = proj_gain * go.second * tc.second
        if tr.dense:
            col = torch.empty(b + 1, dtype=F64)
            if b > 0:
                col[:b] = gf.mean * k_c[:b, b - 1] + w
            col[b] = c_q
            tr.set_sym(k_c, b, col)
            var_c[b], mu_c_t[b] = c_q - c_mu * c_mu, c_mu
            coef_c[b] = hermite("tanh", c_mu, c_q - c_mu * c_mu)
            rho = corr(col[:b] - mu_c_t[:b] * c_mu, var_c[:b], var_c[b])
            e_tc = mehler(coef_c[:b], coef_c[b], rho)
            tr.set_sym(tr.k_h, b, torch.cat((proj_gain * e_o * e_tc, torch.tensor([q_new], dtype=F64))))
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
        decay = torch.zeros(T, T, dtype=F64)  # Π_{m=k+1..a} E[z_m]
        e_nn = torch.zeros(T, T, dtype=F64)
        r_mean = torch.zeros(T, dtype=F64)
        one_mz = torch.zeros(T, dtype=F64)
    q_h_prev, mu_h_prev = q_h0, 0.0
    for b, qxt in enumerate(qx):
        var = [st.input_size * st.var_ih[j] * qxt + fan * st.var_hh[j] * q_h_prev + st.bias_var[j] for j in range(2)]
        gr = act_moments("sigmoid", st.bias_mean[0], var[0])
        gz = act_moments("sigmoid", st.bias_mean[1], var[1])
        # a has mean μ(b_hn) and second moment q_hn; r ⊙ a has mean E[r]μ_hn, second E[r²]q_hn
        hn2 = st.hn_bias_mean**2 + st.hn_bias_var
        q_hn = fan * st.var_hh[2] * q_h_prev + hn2
        mu_ra = gr.mean * st.hn_bias_mean
        n_mean = st.bias_mean[2] + mu_ra
        n_var = st.input_size * st.var_ih[2] * qxt + st.bias_var[2] + gr.second * q_hn - mu_ra * mu_ra
        gn = act_moments("tanh", n_mean, n_var)
        if tr.dense:
            prev = _prev_col(tr, b, q_h0)
            r_mean[b], one_mz[b] = gr.mean, 1.0 - gz.mean
            e_r = tr.gate(0, b, "sigmoid", st.bias_mean[0], _pre_col(st, 0, kx, prev, b))
            tr.gate(1, b, "sigmoid", st.bias_mean[1], _pre_col(st, 1, kx, prev, b))
            e_a = fan * st.var_hh[2] * prev + hn2  # E[a_a a_b]
            e_ra = torch.cat((e_r, torch.tensor([gr.second], dtype=F64))) * e_a
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
            col = torch.empty(b + 1, dtype=F64)
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
