"""gradlint.engine.recurrent against real backward passes of nn.RNN / nn.LSTM / nn.GRU.

Protocol (docs/design.md §1): x ~ N(0, 1), L = Σ g·y with g ~ N(0, 1),
train mode, float64 (gradients at lag 99 are 1e-22 … 1e-34, too small for float32 to keep
meaningfully), several seeds. Predictions use each seed's actual weight tensors and both
sides are compared as the seed mean of log10 RMS.

Every tolerance is a stated model accuracy plus three standard errors of the measured seed
mean (sd/√n): the accuracies are the brief's targets (0.1 decades per step near the end,
5% on the decay slope, 0.15 decades on parameter gradients) and docs/design.md's own verified
ranges (R1: 0.6 decades after 99 steps; R4: 1.9 decades after 99 steps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradlint.engine import recurrent as R
from gradlint.engine.recurrent import backward_pass, forward_pass, numerics

NEAR_END = 0.1  # decades per step, lags ≤ 20 (brief)
SLOPE_REL = 0.05  # relative error of the per-step decay slope (brief)
R1_LAG99 = 0.6  # doc 6 (R1): t = 0 after 99 steps within 0.6 decades
R4_LAG99 = 1.9  # doc 6 (R4): within 1.9 decades over 99 steps
R1W_SEED = 0.3  # decades, R1w's decay over a whole sequence, per seed (docs/design.md §6)
GRAD = 0.15  # decades, parameter-gradient RMS (brief)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The predictions are many tiny tensor ops; with more than one intra-op thread they
    # stall badly when another process holds a core. Restored afterwards.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------------------
# Measurement harness
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    input_size: int
    batch: int
    steps: int
    last_only: bool
    seeds: int
    forget_bias: float | None = None  # LSTM f / GRU z chunk of b_ih set to this, b_hh's to 0


@dataclass(frozen=True)
class Outcome:
    meas_x: torch.Tensor  # (seeds, T) log10 RMS of dL/dx_t
    est_x: torch.Tensor  # (seeds, T) R4 estimate
    bound_x: torch.Tensor  # (seeds, T) plain mean field
    meas_p: dict[str, torch.Tensor]  # name -> (seeds,) log10 RMS of the gradient
    est_p: dict[str, torch.Tensor]
    bound_p: dict[str, torch.Tensor]

    @property
    def n(self) -> int:
        return self.meas_x.shape[0]


def _log_rms(e2: torch.Tensor | float) -> torch.Tensor:
    return 0.5 * torch.log10(torch.as_tensor(e2, dtype=torch.float64))


def _lstm(i, h, **kw):
    return lambda: nn.LSTM(i, h, batch_first=True, **kw)


def _gru(i, h, **kw):
    return lambda: nn.GRU(i, h, batch_first=True, **kw)


def _rnn(i, h, **kw):
    return lambda: nn.RNN(i, h, batch_first=True, **kw)


CASES = {
    "rnn_tanh_last": Case(_rnn(128, 128), 128, 32, 100, True, 4),
    "rnn_tanh_all": Case(_rnn(64, 64), 64, 32, 60, False, 4),
    "rnn_relu_last": Case(_rnn(64, 64, nonlinearity="relu"), 64, 32, 50, True, 4),
    # R1w's widths and lengths (realworld.py's I = 32): the seeds' spread of the decay is
    # W_hh's own spectrum, which R1w follows seed by seed and R1 cannot
    "rnn_tanh_h64_t128": Case(_rnn(32, 64), 32, 16, 128, True, 4),
    "rnn_tanh_h128_t64": Case(_rnn(32, 128), 32, 16, 64, True, 4),
    "rnn_tanh_h256_t64": Case(_rnn(32, 256), 32, 16, 64, True, 4),
    "lstm_f0_long": Case(_lstm(128, 128), 128, 32, 100, True, 3),
    "lstm_f1_long": Case(_lstm(128, 128), 128, 32, 100, True, 3, forget_bias=1.0),
    "lstm_f3_long": Case(_lstm(128, 128), 128, 32, 100, True, 3, forget_bias=3.0),
    "gru_z0_long": Case(_gru(128, 128), 128, 32, 100, True, 3),
    "gru_z1_long": Case(_gru(128, 128), 128, 32, 100, True, 3, forget_bias=1.0),
    "lstm_f0_short": Case(_lstm(64, 64), 64, 32, 10, False, 4),
    "lstm_f1_short": Case(_lstm(64, 64), 64, 32, 10, False, 4, forget_bias=1.0),
    "gru_z0_short": Case(_gru(64, 64), 64, 32, 10, False, 4),
    "gru_z1_short": Case(_gru(64, 64), 64, 32, 10, False, 4, forget_bias=1.0),
    "lstm_stack_bidir_dropout": Case(
        _lstm(48, 64, num_layers=2, bidirectional=True, dropout=0.2), 48, 16, 20, False, 3
    ),
    "gru_stack_bidir_last": Case(_gru(48, 64, num_layers=2, bidirectional=True), 48, 16, 30, True, 3),
    "lstm_proj": Case(_lstm(48, 64, proj_size=32), 48, 16, 20, False, 3),
}


@functools.cache
def outcome(name: str) -> Outcome:
    case = CASES[name]
    T = case.steps
    meas_x, est_x, bound_x = [], [], []
    meas_p: dict[str, list] = {}
    est_p: dict[str, list] = {}
    bound_p: dict[str, list] = {}
    for seed in range(case.seeds):
        torch.manual_seed(seed)
        m = case.build().double().train()
        if case.forget_bias is not None:
            H = m.hidden_size
            with torch.no_grad():
                m.bias_ih_l0[H : 2 * H] = case.forget_bias  # LSTM f, GRU z
                m.bias_hh_l0[H : 2 * H] = 0.0
        gen = torch.Generator().manual_seed(1000 + seed)
        x = torch.randn(case.batch, T, case.input_size, generator=gen, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(2000 + seed)  # dropout masks
        y = m(x)[0]
        y = y[:, -1] if case.last_only else y
        (torch.randn(y.shape, generator=gen, dtype=torch.float64) * y).sum().backward()
        meas_x.append(_log_rms(x.grad.pow(2).mean(dim=(0, 2))))
        s_out = [0.0] * (T - 1) + [1.0] if case.last_only else 1.0
        pred = R.predict_module(m, case.batch, T, s_out=s_out)
        est_x.append(_log_rms(pred.s_x))
        bound_x.append(_log_rms(pred.s_x_bound))
        est, bound = pred.parameter_grads(), pred.parameter_grads(bound=True)
        for pname, p in m.named_parameters():
            meas_p.setdefault(pname, []).append(_log_rms(p.grad.pow(2).mean()))
            est_p.setdefault(pname, []).append(_log_rms(est[pname]))
            bound_p.setdefault(pname, []).append(_log_rms(bound[pname]))

    def stack(d):
        return {k: torch.stack(v) for k, v in d.items()}

    return Outcome(
        torch.stack(meas_x), torch.stack(est_x), torch.stack(bound_x), stack(meas_p), stack(est_p), stack(bound_p)
    )


def _se(values: torch.Tensor) -> torch.Tensor:
    """Standard error of the seed mean, per entry (dim 0 = seeds)."""
    return values.std(dim=0) / math.sqrt(values.shape[0])


# --------------------------------------------------------------------------------------
# nn.RNN (R1)
# --------------------------------------------------------------------------------------


def test_rnn_tanh_last_step_per_step_and_slope():
    o = outcome("rnn_tanh_last")
    T = o.meas_x.shape[1]
    meas, pred, se = o.meas_x.mean(0), o.est_x.mean(0), _se(o.meas_x)
    near = slice(T - 21, T)
    assert torch.all((pred[near] - meas[near]).abs() <= NEAR_END + 3 * se[near]), (pred[near] - meas[near])
    # decay slope over the last 20 steps, per seed (least squares in log10 RMS)
    t = torch.arange(20, dtype=torch.float64)

    def slope(y):
        tc = t - t.mean()
        return ((y - y.mean(-1, keepdim=True)) * tc).sum(-1) / (tc * tc).sum()

    s_meas, s_pred = slope(o.meas_x[:, T - 20 :]), slope(o.est_x[:, T - 20 :])
    rel = (s_pred.mean() - s_meas.mean()).abs() / s_meas.mean().abs()
    assert rel <= SLOPE_REL + 3 * _se(s_meas[:, None])[0] / s_meas.mean().abs(), rel
    # doc R1: λ ≈ 0.21 per step, −0.34 decades per step (the bound; R1w follows each W_hh)
    assert slope(o.bound_x[:, T - 20 :]).mean() == pytest.approx(0.341, abs=0.01)
    # lag 99 within docs/design.md's verified 0.6 decades (the seed spread grows to ~1.6 there)
    assert (pred[0] - meas[0]).abs() <= R1_LAG99 + 3 * se[0]
    # doc 10f measured −33.53 ± 1.18 (8 seeds): the protocol reproduces it
    assert (meas[0] + 33.53).abs() <= 3 * math.hypot(float(se[0]), 1.18 / math.sqrt(8))


R1W_CASES = ["rnn_tanh_last", "rnn_tanh_h64_t128", "rnn_tanh_h128_t64", "rnn_tanh_h256_t64"]


@pytest.mark.parametrize("name", R1W_CASES)
def test_rnn_tanh_long_range_decay_follows_each_weight_matrix(name):
    """R1w (§6): the decay over the whole sequence, seed by seed, against the backward pass.

    The measured decay spreads over seeds by 0.4–3.6 decades (W_hh's spectral edge at
    finite H); R1w reads it from each seed's W_hh and must land well inside that spread,
    closer to every seed than R1 on average.
    """
    o = outcome(name)
    meas = o.meas_x[:, 0] - o.meas_x[:, -1]
    est = o.est_x[:, 0] - o.est_x[:, -1]
    bound = o.bound_x[:, 0] - o.bound_x[:, -1]
    err = (est - meas).abs()
    spread = float(meas.std())
    assert float(err.max()) <= max(R1W_SEED, spread / 3), (est, meas)
    assert float(err.mean()) < float((bound - meas).abs().mean()), (est, bound, meas)


def test_rnn_tanh_whole_sequence_loss():
    o = outcome("rnn_tanh_all")
    diff = o.est_x.mean(0) - o.meas_x.mean(0)
    assert torch.all(diff.abs() <= NEAR_END + 3 * _se(o.meas_x)), diff


def test_rnn_relu_last_step():
    o = outcome("rnn_relu_last")
    T = o.meas_x.shape[1]
    diff = o.est_x.mean(0) - o.meas_x.mean(0)
    se = _se(o.meas_x)
    assert torch.all(diff[T - 21 :].abs() <= NEAR_END + 3 * se[T - 21 :]), diff[T - 21 :]


@pytest.mark.parametrize("name", ["rnn_tanh_last", "rnn_tanh_all", "rnn_relu_last"])
def test_rnn_parameter_gradients(name):
    _check_params(outcome(name))


def _check_params(o: Outcome, tol: float = GRAD) -> None:
    for pname, meas in o.meas_p.items():
        pred = o.est_p[pname]
        if torch.all(meas == -math.inf):  # gradient exactly 0 (reverse direction's W_hh
            assert torch.all(pred == -math.inf), pname  # seen only at its first step)
            continue
        diff = float(pred.mean() - meas.mean())
        assert abs(diff) <= tol + 3 * float(_se(meas)), (pname, diff)


# --------------------------------------------------------------------------------------
# nn.LSTM / nn.GRU (R2–R4)
# --------------------------------------------------------------------------------------

LONG = ["lstm_f0_long", "lstm_f1_long", "gru_z0_long", "gru_z1_long"]


@pytest.mark.parametrize("name", LONG)
def test_gated_long_range_input_gradient(name):
    o = outcome(name)
    meas, est, bound, se = o.meas_x.mean(0), o.est_x.mean(0), o.bound_x.mean(0), _se(o.meas_x)
    # R4 within docs/design.md's verified range at lag 99, and better than plain mean field
    assert (est[0] - meas[0]).abs() <= R4_LAG99 + 3 * se[0], (est[0], meas[0])
    assert (est[0] - meas[0]).abs() < (bound[0] - meas[0]).abs()
    # plain mean field is the pessimistic bound: below the estimate everywhere, below the
    # truth at long lags
    assert torch.all(bound <= est + 1e-9)
    assert bound[0] < meas[0] - 3 * se[0]
    # short lags: same criterion as for the RNN
    near = slice(-11, None)
    assert torch.all((est[near] - meas[near]).abs() <= NEAR_END + 3 * se[near]), est[near] - meas[near]


@pytest.mark.parametrize(("name", "doc_mean", "doc_sd"),
                         [("lstm_f0_long", -22.34, 0.11), ("lstm_f1_long", -9.74, 0.10)])
def test_protocol_reproduces_doc_10f(name, doc_mean, doc_sd):
    o = outcome(name)
    meas = o.meas_x.mean(0)[0]
    assert abs(float(meas) - doc_mean) <= 3 * math.hypot(float(_se(o.meas_x)[0]), doc_sd / math.sqrt(8))


@pytest.mark.parametrize("name", LONG + ["lstm_f0_short", "lstm_f1_short", "gru_z0_short", "gru_z1_short"])
def test_gated_parameter_gradients(name):
    _check_params(outcome(name))


def test_lstm_forget_bias_3_known_limit():
    # Outside what docs/design.md verifies closely: with E[f] ≈ 0.95 R4 is too optimistic over long
    # lags (docs/design.md §10f: −0.80 predicted vs −1.09 measured). The truth stays between the bound and
    # the estimate, for the input gradient at lag 99 and for the summed weight_ih gradient.
    o = outcome("lstm_f3_long")
    meas, est, bound, se = o.meas_x.mean(0), o.est_x.mean(0), o.bound_x.mean(0), _se(o.meas_x)
    assert bound[0] < meas[0] - 3 * se[0] and meas[0] < est[0] + 3 * se[0]
    assert (est[0] - meas[0]).abs() <= R4_LAG99 + 3 * se[0]
    w_meas, w_se = o.meas_p["weight_ih_l0"].mean(), _se(o.meas_p["weight_ih_l0"])
    assert o.bound_p["weight_ih_l0"].mean() < w_meas < o.est_p["weight_ih_l0"].mean() + 3 * w_se
    for pname in ("weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert abs(float(o.est_p[pname].mean() - o.meas_p[pname].mean())) <= GRAD + 3 * float(_se(o.meas_p[pname]))


# --------------------------------------------------------------------------------------
# Composition: stacked, bidirectional, projection
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm_stack_bidir_dropout", "gru_stack_bidir_last", "lstm_proj"])
def test_composed_modules(name):
    o = outcome(name)
    _check_params(o)
    diff = o.est_x.mean(0) - o.meas_x.mean(0)
    assert torch.all(diff[-11:].abs() <= NEAR_END + 3 * _se(o.meas_x)[-11:]), diff


def test_single_layer_module_equals_layer_call():
    torch.manual_seed(0)
    m = nn.GRU(8, 16)
    T = 7
    s_out = [0.0] * (T - 1) + [1.0]
    whole = R.predict_module(m, 5, T, s_out=s_out)
    one = R.predict(R.layer_stats(m), 1.0, s_out, 5)
    assert whole.s_x == one.estimate.s_x
    assert whole.parameter_grads()["weight_hh_l0"] == one.estimate.grad_weight_hh


def test_reverse_direction_sees_flipped_sequence():
    torch.manual_seed(0)
    m = nn.LSTM(8, 16, bidirectional=True)
    T = 9
    pred = R.predict_module(m, 4, T, s_out=[0.0] * (T - 1) + [1.0])
    fwd_dir, rev_dir = pred.layers[0]
    # the forward direction sees the loss at its last step, the reverse one at its first
    assert fwd_dir.estimate.s_h[-1] == pytest.approx(1.0)
    assert rev_dir.estimate.s_h[0] == pytest.approx(1.0)
    assert rev_dir.estimate.s_h[-1] == pytest.approx(0.0)
    # the reverse direction's W_hh only acts after its first step: its gradient is exactly 0
    assert pred.parameter_grads()["weight_hh_l0_reverse"] == 0.0


# --------------------------------------------------------------------------------------
# Pure math
# --------------------------------------------------------------------------------------


def test_activation_moments_match_doc_table():
    # docs/design.md §5.3 reference values (tanh, sigmoid at v = 0.25 / 1 / 4), 4 decimals
    for v, t2, td2, s2, sd2 in ((0.25, 0.1735, 0.7174, 0.2640, 0.0560), (1.0, 0.3943, 0.4644, 0.2934, 0.0448),
                                (4.0, 0.6353, 0.2560, 0.3486, 0.0290)):
        t, s = numerics.act_moments("tanh", 0.0, v), numerics.act_moments("sigmoid", 0.0, v)
        assert (t.second, t.dphi2, s.second, s.dphi2) == pytest.approx((t2, td2, s2, sd2), abs=6e-5)
    relu = numerics.act_moments("relu", 0.0, 1.0)
    assert (relu.mean, relu.second, relu.dphi2) == pytest.approx((0.3989, 0.5, 0.5), abs=1e-4)


def test_mehler_matches_2d_quadrature():
    z = torch.linspace(-8, 8, 401, dtype=torch.float64)
    w = torch.exp(-z * z / 2)
    w = w / w.sum()
    z1, z2 = torch.meshgrid(z, z, indexing="ij")
    w2 = w[:, None] * w[None, :]
    for name, f, (mu_a, v_a, mu_b, v_b, rho) in (
        ("tanh", torch.tanh, (0.1, 2.0, -0.2, 1.0, 0.9)),
        ("sigmoid", torch.sigmoid, (1.0, 0.3, 0.5, 0.5, -0.6)),
    ):
        a = mu_a + math.sqrt(v_a) * z1
        b = mu_b + math.sqrt(v_b) * (rho * z1 + math.sqrt(1 - rho * rho) * z2)
        exact = float((f(a) * f(b) * w2).sum())
        approx = float(numerics.mehler(numerics.hermite(name, mu_a, v_a), numerics.hermite(name, mu_b, v_b),
                                       torch.tensor(rho)))
        assert approx == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("shapes", [((), (), ()), ((5,), (5,), (5,)), ((7, 7), (7, 7), (7, 7)), ((6,), (), (6,)),
                                    ((6,), (), ()), ((3, 4, 2), (3, 4, 2), (3, 4, 2))])
def test_mehler_sums_in_order_of_n(shapes):
    # The same floating-point result as adding the terms one by one, in any broadcast.
    def one_by_one(d_a, d_b, rho):
        out, p = d_a[..., 0] * d_b[..., 0], torch.ones_like(rho)
        for n in range(1, d_a.shape[-1]):
            p = p * rho
            out = out + d_a[..., n] * d_b[..., n] * p
        return out

    g = torch.Generator().manual_seed(0)
    a_shape, b_shape, rho_shape = shapes
    for _ in range(10):
        d_a = torch.randn(*a_shape, numerics.N_HERMITE + 1, dtype=torch.float64, generator=g)
        d_b = torch.randn(*b_shape, numerics.N_HERMITE + 1, dtype=torch.float64, generator=g)
        rho = torch.rand(rho_shape, dtype=torch.float64, generator=g) * 2 - 1
        assert torch.equal(numerics.mehler(d_a, d_b, rho), one_by_one(d_a, d_b, rho))


@settings(max_examples=30, deadline=None)
@given(
    steps=st.integers(1, 30),
    coeffs=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 0.3), st.floats(0.0, 0.3), st.floats(0.0, 2.0)),
                    min_size=30, max_size=30),
)
def test_memory_channel_equals_doc_p_matrix(steps, coeffs):
    # R4's recursion over hop counts, P ← (f̄² + v_f + b_i)P + f̄√b_c(SP + PSᵀ) + b_c·SPSᵀ,
    # s = trace P, with a fresh source injected at every step, against the Fourier form
    mem = backward_pass._MemoryChannel(steps, coherent=True)
    P = torch.zeros(steps + 1, steps + 1, dtype=torch.float64)
    for f_mean, b_i, b_c, inj in coeffs[:steps]:
        f_second = f_mean * f_mean + 0.1 * f_mean * (1 - f_mean)
        new = (f_second + b_i) * P
        new[1:, :] += f_mean * math.sqrt(b_c) * P[:-1, :]
        new[:, 1:] += f_mean * math.sqrt(b_c) * P[:, :-1]
        new[1:, 1:] += b_c * P[:-1, :-1]
        P = new
        P[0, 0] += inj
        mem.step(f_mean, f_second, b_i, b_c)
        mem.inject(inj)
        assert mem.value() == pytest.approx(float(torch.trace(P)), rel=1e-10, abs=1e-300)


@st.composite
def gated_layers(draw):
    kind = draw(st.sampled_from(["lstm", "gru"]))
    n = 4 if kind == "lstm" else 3
    H = draw(st.integers(2, 48))
    n_in = draw(st.integers(1, 48))
    scale = st.floats(0.05, 3.0)
    stats = R.RecurrentLayerStats(
        kind=kind,
        input_size=n_in,
        hidden_size=H,
        var_ih=tuple(draw(scale) / n_in for _ in range(n)),
        var_hh=tuple(draw(scale) / H for _ in range(n)),
        bias_mean=tuple(draw(st.floats(-2.0, 2.0)) for _ in range(n)),
        bias_var=tuple(draw(st.floats(0.0, 0.2)) for _ in range(n)),
        hn_bias_mean=draw(st.floats(-1.0, 1.0)),
        hn_bias_var=draw(st.floats(0.0, 0.2)),
    )
    steps = draw(st.integers(2, 16))
    last_only = draw(st.booleans())
    return stats, steps, last_only


@settings(max_examples=25, deadline=None)
@given(gated_layers())
def test_reuse_estimate_never_below_mean_field_and_covariances_consistent(case):
    stats, T, last_only = case
    s_out = [0.0] * (T - 1) + [1.0] if last_only else 1.0
    pred = R.predict(stats, 1.0, s_out, 8, T)
    for a, b in zip(pred.estimate.s_x, pred.bound.s_x):
        assert a >= b * (1 - 1e-9)
    k = pred.forward.k_h
    assert torch.allclose(k, k.T)
    d = torch.sqrt(torch.diagonal(k))
    assert torch.all(k.abs() <= d[:, None] * d[None, :] * (1 + 1e-9) + 1e-300)
    grads = (pred.estimate.grad_weight_ih, pred.estimate.grad_weight_hh, pred.estimate.grad_bias_ih)
    assert all(math.isfinite(g) and g >= 0 for g in grads)


def test_dense_fallback_for_long_sequences(monkeypatch):
    stats = R.default_layer_stats("rnn_tanh", 16, 16)
    dense = R.predict(stats, 1.0, 1.0, 4, 12)
    monkeypatch.setattr(forward_pass, "DENSE_MAX_STEPS", 4)
    flat = R.predict(stats, 1.0, 1.0, 4, 12)
    assert flat.forward.k_h is None and flat.estimate.r_x is None
    # the vanilla RNN's marginals do not depend on the covariance across steps
    assert flat.estimate.s_x == pytest.approx(dense.estimate.s_x, rel=1e-12)
    assert flat.forward.q_h == pytest.approx(dense.forward.q_h, rel=1e-12)
    gated = R.predict(R.default_layer_stats("lstm", 16, 16), 1.0, 1.0, 4, 12)
    assert all(math.isfinite(x) and x > 0 for x in gated.estimate.s_x)


def test_layer_stats_defaults_and_meta_device():
    H, n_in = 128, 96
    with torch.device("meta"):
        meta = nn.LSTM(n_in, H, proj_size=32)
    assert R.layer_stats(meta) == R.default_layer_stats("lstm", n_in, H, proj_size=32)
    torch.manual_seed(0)
    real = R.layer_stats(nn.LSTM(n_in, H))
    default = R.default_layer_stats("lstm", n_in, H)
    # mean of squares of U(±a): relative sd sqrt(0.8 / n) for n = H·n_in entries per chunk
    rel = 4 * math.sqrt(0.8 / (H * n_in))
    assert real.var_ih == pytest.approx(default.var_ih, rel=rel)
    assert real.var_hh == pytest.approx(default.var_hh, rel=4 * math.sqrt(0.8 / (H * H)))
    # b_ih + b_hh: variance 2/(3H) per chunk, sampled from H units (relative sd ≈ sqrt(2/H))
    assert real.bias_var == pytest.approx(default.bias_var, rel=4 * math.sqrt(2 / H))


def test_gru_reads_b_hn_separately():
    m = nn.GRU(3, 4)
    with torch.no_grad():
        m.bias_ih_l0.copy_(torch.tensor([1.0] * 4 + [2.0] * 4 + [3.0] * 4))
        m.bias_hh_l0.copy_(torch.tensor([0.5] * 4 + [0.5] * 4 + [0.25, 0.75, 0.25, 0.75]))
    s = R.layer_stats(m)
    assert s.bias_mean == (1.5, 2.5, 3.0)  # r, z summed; n = b_in alone
    assert s.hn_bias_mean == 0.5 and s.hn_bias_var == pytest.approx(0.0625)


def test_argument_errors():
    with pytest.raises(ValueError, match="kind"):
        R.default_layer_stats("elman", 4, 4)
    with pytest.raises(ValueError, match="entries"):
        R.RecurrentLayerStats("lstm", 4, 4, (1.0,), (1.0,), (0.0,), (0.0,))
    stats = R.default_layer_stats("gru", 4, 4)
    with pytest.raises(ValueError, match="seq_len"):
        R.forward(stats, 1.0)
    fwd = R.forward(stats, 1.0, 5)
    with pytest.raises(ValueError, match="steps"):
        R.backward(stats, fwd, [1.0, 1.0], 2)
    with pytest.raises(TypeError):
        R.layer_stats(nn.Linear(3, 3))


def _table() -> str:
    """Predicted vs measured log10 RMS for every case (the numbers quoted in reviews)."""
    rows = ["case | step t | measured ± sd | R4 estimate | plain MF"]
    for name in CASES:
        o = outcome(name)
        T = o.meas_x.shape[1]
        m, sd, e, b = o.meas_x.mean(0), o.meas_x.std(0), o.est_x.mean(0), o.bound_x.mean(0)
        for t in sorted({T - 1, max(T - 11, 0), T // 2, 0}, reverse=True):
            rows.append(f"{name} | dL/dx_{t} | {m[t]:.2f} ± {sd[t]:.2f} | {e[t]:.2f} | {b[t]:.2f}")
        for pname, meas in o.meas_p.items():
            rows.append(
                f"{name} | {pname} | {meas.mean():.3f} ± {meas.std():.3f} | {o.est_p[pname].mean():.3f} | "
                f"{o.bound_p[pname].mean():.3f}"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(_table())
