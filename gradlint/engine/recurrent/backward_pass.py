"""The backward pass of one recurrent layer unrolled in time (docs/design.md §6: R1–R4).

Two backward estimates exist for the gated cells (R4): plain mean field (R2/R3), which
treats W_hh as fresh at every step and is too pessimistic over long lags, and the
weight-reuse correction, which lets the h-path through the same W_hh add coherently to the
diagonal memory path. The correction is the estimate, plain mean field the pessimistic
bound. For nn.RNN the estimate carries δ's covariance through the layer's own W_hh (R1w)
where its values are known, and both are R1 otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from gradlint.engine.recurrent.forward_pass import as_steps
from gradlint.engine.recurrent.numerics import F64, ActMoments, corr, hermite_steps, mehler_matrix
from gradlint.engine.recurrent.states import (
    NUM_CHUNKS,
    REUSE_MAX_FLOPS,
    RecurrentBackward,
    RecurrentForward,
    RecurrentLayerStats,
)


class _MemoryChannel:
    """The memory-channel δ² of R4, propagated exactly in the Fourier domain.

    R4 propagates a matrix P over hop counts with
    P ← (f̄² + v_f + b_i)·P + f̄·√b_c·(S·P + P·Sᵀ) + b_c·S·P·Sᵀ and reads s = trace(P).
    Every term is a polynomial in the shift S, so with p(z) = Σ_j α_j z^j for the hop
    amplitudes, Parseval gives trace(P) = mean over θ of F(θ) = E|p(e^{iθ})|², and the
    update becomes pointwise: F ← (f̄² + v_f + b_i + b_c + 2·f̄·√b_c·cos θ)·F. Fresh
    sources (the loss at a step, incoherent paths) enter with no hops: F += s. A uniform
    grid of n > T points integrates the degree-≤T trigonometric polynomial exactly, so this
    equals the recursion of R4 at O(T) cost per step instead of O(T²). With b_c = 0 it is
    the plain mean field (F constant in θ, one grid point suffices).
    """

    def __init__(self, seq_len: int, coherent: bool) -> None:
        n = seq_len + 2 if coherent else 1
        self.cos = torch.cos(torch.arange(n, dtype=F64) * (2.0 * math.pi / n))
        self.f = torch.zeros(n, dtype=F64)

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
        reuse: apply the weight-reuse correction: R4 for the gated cells, R1w for nn.RNN
            when its W_hh values are known (else R1 either way).
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
        r_in = r_out.detach().to(F64).clone()
        if r_in.shape != (T, T):
            raise ValueError(f"r_out has shape {tuple(r_in.shape)}, expected ({T}, {T})")
        r_in.fill_diagonal_(0.0)
    so = as_steps(s_out, T, "s_out")
    st = stats
    coherent = reuse and st.kind in ("lstm", "gru")
    exact_w = reuse and st.weight_hh is not None and 2.0 * T * st.hidden_size ** 3 <= REUSE_MAX_FLOPS
    if st.kind in ("rnn_tanh", "rnn_relu"):
        ps = _rnn_backward(st, fwd, so, s_hn, reuse)
    elif st.kind == "lstm":
        ps = _lstm_backward(st, fwd, so, s_hn, s_cn, coherent, r_in)
    else:
        ps = _gru_backward(st, fwd, so, s_hn, coherent, r_in)

    nch = NUM_CHUNKS[st.kind]
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
        r_x.diagonal().copy_(torch.tensor(ps.s_x, dtype=F64))
    if not st.has_bias:
        b_ih = b_hh = [0.0] * nch
    w_hr = 0.0
    if st.proj_size:
        # ∂W_hr = Σ_t δh_t m_tᵀ with m = o ⊙ tanh(c): W1 per step.
        w_hr = B * sum(ps.s_h[t] * fwd.moments[t][3][1] * fwd.moments[t][4][1] for t in range(T))
    return RecurrentBackward(
        method="reuse" if coherent or exact_w else "mean_field",
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
    y = torch.zeros(T, T, dtype=F64)
    for tp in range(T - 1, 0, -1):
        nxt = d_mean[tp + 1] * y[:tp, tp + 1] if tp + 1 < T else 0.0
        y[:tp, tp] = e_mean[tp] * r_in[:tp, tp] + nxt
    return y


def _rnn_backward(st, fwd, so, s_hn, reuse) -> _Pass:
    """R1, or R1w with the layer's own W_hh when its values are known and fit the budget.

    R1 treats W_hh as a fresh random matrix at every step. The same W_hh at every step makes
    the mean square of δ follow W_hh's own spectrum, whose edge sits a few percent above
    √(H·σ²_hh) at finite H (§6, R1w): R1 over-predicted the decay of a default nn.RNN with
    H = 128 over 64 steps by 0.75 decades on average, up to 1.1 for single seeds.
    """
    T = fwd.seq_len
    H = st.hidden_size
    if reuse and st.weight_hh is not None and 2.0 * T * H ** 3 <= REUSE_MAX_FLOPS:
        return _rnn_backward_reuse(st, fwd, so, s_hn)
    s_h, s_x, s_g = [0.0] * T, [0.0] * T, [(0.0,)] * T
    from_above = 0.0
    for t in range(T - 1, -1, -1):
        s_h[t] = so[t] + from_above + (s_hn if t == T - 1 else 0.0)
        s_pre = s_h[t] * fwd.moments[t][0][3]
        s_g[t] = (s_pre,)
        s_x[t] = H * st.var_ih[0] * s_pre
        from_above = H * st.var_hh[0] * s_pre
    return _Pass(s_h, [], s_x, s_g, from_above, 0.0, [(1.0,)] * T)


def _rnn_backward_reuse(st, fwd, so, s_hn) -> _Pass:
    """R1w: the δ covariance Σ_t = E[δh_t δh_tᵀ] carried through the layer's own W_hh.

    δh_{t−1} = W_hhᵀ·D_t·δh_t with D_t = diag(φ'(a_t)). The activation's derivative is taken
    independent of δ and across units (mean field): E[D Σ D] = E[φ']²·Σ off the diagonal,
    E[φ'²]·Σ_ii on it. W_hh is not averaged over: products of the same matrix are what R1
    misses. Sources from outside (the loss, s_hn) are isotropic. s is tr(Σ)/H; at the input,
    whose W_ih meets an independent x_t at every step, s_x = H·σ²_ih·s_pre as in R1.
    """
    T = fwd.seq_len
    H = st.hidden_size
    w = st.weight_hh
    eye = torch.eye(H, dtype=F64)
    s_h, s_x, s_g = [0.0] * T, [0.0] * T, [(0.0,)] * T
    sigma = torch.zeros(H, H, dtype=F64)
    for t in range(T - 1, -1, -1):
        src = so[t] + (s_hn if t == T - 1 else 0.0)
        if src:
            sigma = sigma + src * eye
        s_h[t] = float(sigma.diagonal().mean())
        _, _, d_mean, d_second = fwd.moments[t][0]
        sigma_pre = (d_mean * d_mean) * sigma
        sigma_pre.diagonal().copy_(d_second * sigma.diagonal())
        s_pre = float(sigma_pre.diagonal().mean())
        s_g[t] = (s_pre,)
        s_x[t] = H * st.var_ih[0] * s_pre
        sigma = w.T @ sigma_pre @ w
    return _Pass(s_h, [], s_x, s_g, float(sigma.diagonal().mean()), 0.0, [(1.0,)] * T)


def _lstm_backward(st, fwd, so, s_hn, s_cn, coherent, r_in) -> _Pass:
    """R2, and R4 when `coherent`."""
    T = fwd.seq_len
    H = st.hidden_size
    # With a projection, δm = W_hrᵀ δh: s_m = P·σ²_hr·s_h (P rows of W_hr, the same at
    # every step, so the covariance across steps scales alike).
    proj_gain = st.proj_size * st.var_hr if st.proj_size else 1.0
    mom = torch.tensor(fwd.moments, dtype=F64)
    f_means = mom[:, 1, 0]
    e_means = mom[:, 3, 0] * mom[:, 4, 2]
    y = _diag_sources(None if r_in is None else proj_gain * r_in, e_means, f_means)
    mem = _MemoryChannel(T, coherent)
    s_h, s_c, s_x, s_g = [0.0] * T, [0.0] * T, [0.0] * T, [()] * T
    hop_h = 0.0  # s reaching h_t from the i, f, g gates of step t+1 (R4's hop)
    o_path = 0.0  # s reaching h_t through the o gate of step t+1 (incoherent, small)
    nxt = None  # (E[f], E[f²], b_incoherent, b_coherent) of step t+1
    for t in range(T - 1, -1, -1):
        gi, gf, gg, go, tc = (ActMoments(*m) for m in fwd.moments[t])
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
    z_mean = torch.tensor([m[1][0] for m in fwd.moments], dtype=F64)
    y = _diag_sources(r_in, torch.ones(T, dtype=F64), z_mean)
    mem = _MemoryChannel(T, coherent)
    q_h_prev = (fwd.q_h0,) + fwd.q_h[:-1]
    mu_h_prev = (0.0,) + fwd.mu_h[:-1]
    s_h, s_x, s_g, hh = [0.0] * T, [0.0] * T, [()] * T, [()] * T
    nxt = None  # (E[z], E[z²], b_incoherent, b_coherent) of step t+1
    for t in range(T - 1, -1, -1):
        gr, gz, gn = (ActMoments(*m) for m in fwd.moments[t])
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
    nch = NUM_CHUNKS[st.kind]
    mean = torch.tensor(fwd.pre_mean, dtype=F64)  # (T, chunks)
    var = torch.tensor(fwd.pre_var, dtype=F64)
    mom = torch.tensor(fwd.moments, dtype=F64)  # (T, sites, 4): mean, second, dmean, dphi2
    zeros = torch.zeros(T, T, dtype=F64)

    def biv(j: int, name: str) -> torch.Tensor:
        # E[ψ(a_j,t)·ψ(a_j,t')] over all pairs, from chunk j's pre-activation covariance
        rho = corr(fwd.pre_cov[j], var[:, j, None], var[None, :, j])
        return mehler_matrix(hermite_steps(name, mean[:, j], var[:, j]), rho)

    def shifted(k: torch.Tensor, k00: float) -> torch.Tensor:
        # E[y_{t−1} y_{t'−1}] from E[y_a y_b]; the initial state is uncorrelated with later
        # steps
        out = torch.zeros(T, T, dtype=F64)
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
        e_mean = mom[:, 3, 0] * mom[:, 4, 2] if lstm else torch.ones(T, dtype=F64)
        s_mem = torch.tensor(ps.s_c if lstm else ps.s_h, dtype=F64)
        edd = torch.zeros(T, T, dtype=F64)
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
                mu_c = torch.tensor(fwd.mu_c, dtype=F64)
                var_c = torch.tensor(fwd.q_c, dtype=F64) - mu_c**2
                rho_c = corr(fwd.k_c - mu_c[:, None] * mu_c[None, :], var_c[:, None], var_c[None, :])
                e_tc = mehler_matrix(hermite_steps("tanh", mu_c, var_c), rho_c)
                proj_gain = st.proj_size * st.var_hr if st.proj_size else 1.0
                r_o = torch.triu(proj_gain * r_in, diagonal=1) * e_tc * biv(3, "dsigmoid")
                pairs[3] = (r_o, r_o)
        else:
            e_1mz = 1.0 - d_mean[:, None] - d_mean[None, :] + biv(1, "sigmoid")
            u_n = e_1mz * biv(2, "dtanh")
            e_a = st.out_size * st.var_hh[2] * k_prev + st.hn_bias_mean**2 + st.hn_bias_var
            # E[(h_{t−1} − n_t)(h_{t'−1} − n_t')]; k_hn[a, b] = E[h_a n_b], h_{−1} uncorrelated
            h_n = torch.zeros(T, T, dtype=F64)
            h_n[1:, :] = fwd.k_hn[:-1, :]
            x_z = k_prev - h_n - h_n.T + biv(2, "tanh")
            u_r = u_n * e_a * biv(0, "dsigmoid")
            pairs = [(edd * u_r, edd * u_r), (edd * x_z * biv(1, "dsigmoid"),) * 2,
                     (edd * u_n, edd * u_n * biv(0, "sigmoid"))]
    sums = [[0.0] * nch for _ in range(4)]
    r_x = torch.zeros(T, T, dtype=F64)
    for j, (r, r_hh) in enumerate(pairs):
        r = torch.triu(r, diagonal=1)
        r_hh = torch.triu(r_hh, diagonal=1)
        sums[0][j] = 2.0 * float((r * fwd.k_x).sum())
        sums[1][j] = 2.0 * float((r_hh * k_prev).sum())
        sums[2][j] = 2.0 * float(r.sum())
        sums[3][j] = 2.0 * float(r_hh.sum())
        r_x = r_x + st.hidden_size * st.var_ih[j] * r
    return sums, r_x + r_x.T
