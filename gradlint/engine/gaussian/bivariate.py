"""Cross moments E[phi(h) phi(h')], E[phi'(h) phi'(h')] of two correlated Gaussians (§5.1).

Arc-cosine kernel for the ReLU family at mu = 0; for other piecewise activations a graded
outer rule with the inner conditional expectation in closed form; for analytic ones the 2D
tensor-product trapezoid grid of docs/design.md §5.3, graded Gauss-Legendre in both
dimensions where the transition is too narrow for it (and for softsign).
"""

from __future__ import annotations

import functools
import math

import torch

from gradlint.engine.gaussian.activations import SPECS, Spec, canon_params, spec_of
from gradlint.engine.gaussian.arguments import CACHE_SIZE, check_mu_v, front_cached, round_sig
from gradlint.engine.gaussian.closed_form import is_local, segments
from gradlint.engine.gaussian.expectations import moments_cached
from gradlint.engine.gaussian.normal import INV_SQRT_2PI
from gradlint.engine.gaussian.quadrature import (
    BASE_PANEL_ENTIRE,
    DTYPE,
    GRID2D_HALF_WIDTH,
    GRID2D_MAX_RATIO,
    GRID2D_POINTS,
    SERIAL_CHUNK,
    graded_rule,
    kink_pattern,
    kink_rule_rows,
    normal_grid,
    refinement_levels,
)
from gradlint.engine.gaussian.results import Cross


def _arccos_relu(v: float, c: float) -> Cross:
    # Cho & Saul (2009) arc-cosine kernel of degree 1 and 0 (docs/design.md §5.1).
    theta = math.acos(c)
    return Cross(
        v / (2.0 * math.pi) * (math.sqrt(max(0.0, 1.0 - c * c)) + (math.pi - theta) * c),
        (math.pi - theta) / (2.0 * math.pi),
    )


def _arccos_leaky(v: float, c: float, alpha: float) -> Cross:
    # phi(h) = relu(h) - alpha relu(-h); -h' has correlation -c with h, so every
    # cross term is an arc-cosine kernel at +-c.
    kp, jp = _arccos_relu(v, c)
    km, jm = _arccos_relu(v, -c)
    return Cross((1.0 + alpha * alpha) * kp - 2.0 * alpha * km, (1.0 + alpha * alpha) * jp + 2.0 * alpha * jm)


def _cond_expect(segments: tuple, use_dphi: bool, m: torch.Tensor, s: float) -> torch.Tensor:
    """E[g(h') | h'] with h' ~ N(m, s^2) elementwise over m, g = phi or phi' (closed form)."""
    out = torch.zeros_like(m)
    ndtr = torch.special.ndtr
    for lo, hi, ft, dt in segments:
        terms = dt if use_dphi else ft
        if not terms:
            continue
        a = None if math.isinf(lo) else (lo - m) / s
        b = None if math.isinf(hi) else (hi - m) / s
        if a is None and b is None:
            m0 = torch.ones_like(m)
        elif a is None:
            m0 = ndtr(b)
        elif b is None:
            m0 = ndtr(-a)
        else:
            m0 = torch.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))
        pa = torch.exp(-0.5 * a * a) * INV_SQRT_2PI if a is not None else None
        pb = torch.exp(-0.5 * b * b) * INV_SQRT_2PI if b is not None else None
        nmax = max((n for _, n, beta in terms if beta == 0.0), default=0)
        moms = [m0]
        if nmax >= 1:
            m1 = torch.zeros_like(m)
            if pa is not None:
                m1 = m1 + pa
            if pb is not None:
                m1 = m1 - pb
            moms.append(m1)
        for k in range(2, nmax + 1):
            mk = (k - 1) * moms[k - 2]
            if pa is not None:
                mk = mk + a ** (k - 1) * pa
            if pb is not None:
                mk = mk - b ** (k - 1) * pb
            moms.append(mk)
        for coef, n, beta in terms:
            if beta == 0.0:
                val = sum(math.comb(n, k) * m ** (n - k) * (s**k) * moms[k] for k in range(n + 1))
            else:
                # Log-space exp-truncated term, as in _exp_term (lo is -inf here).
                log_phi = torch.special.log_ndtr((hi - m - beta * s * s) / s)
                val = torch.exp(beta * m + 0.5 * beta * beta * s * s + log_phi)
            out = out + coef * val
    return out


def _kinks(segments: tuple) -> list[float]:
    return sorted({x for lo, hi, _, _ in segments for x in (lo, hi) if math.isfinite(x)})


def _clip_corr(c: float) -> tuple[float, float]:
    # Keep the conditional standard deviation strictly positive; at |c| = 1 - 1e-12
    # the remaining smoothing (~1.4e-6 sd) is resolved by the graded outer rule.
    c = max(-1.0 + 1e-12, min(1.0 - 1e-12, c))
    return c, math.sqrt(max(0.0, 1.0 - c * c))


def _cross_segments(name: str, p, mu: float, v: float, c: float) -> Cross:
    """Outer graded Gauss-Legendre over h, inner conditional expectation in closed form.

    E[phi(h) phi(h')] = E_h[ phi(h) E[phi(h') | h] ], h' | h ~ N(mu + c (h - mu), v (1 - c^2)).
    The inner expectation is exact (truncated-normal moments); the outer integrand
    has kinks where phi has them and smoothed kinks (width sqrt(1-c^2)/|c| in z)
    where the conditional mean crosses a kink, so the outer rule is graded there.
    """
    spec = SPECS[name]
    s = math.sqrt(v)
    segs = segments(name, p, is_local(name, p, mu, s))
    c, r = _clip_corr(c)
    centers = []
    layer_g = r / abs(c) if c != 0.0 else math.inf
    for b in _kinks(segs):
        centers.append(((b - mu) / s, 0))
        if c != 0.0:
            centers.append(((b - mu) / (s * c), refinement_levels(layer_g, BASE_PANEL_ENTIRE)))
    z, w = graded_rule(tuple(centers), BASE_PANEL_ENTIRE)
    h = z * s + mu
    m = (c * s) * z + mu
    sc = s * r
    g = _cond_expect(segs, False, m, sc)
    gd = _cond_expect(segs, True, m, sc)
    pp = torch.dot(w, spec.phi(h, p) * g).item()
    dd = torch.dot(w, spec.dphi(h, p) * gd).item()
    return Cross(pp, dd)


def _cross_grid(pair, mu: float, v: float, c: float, points: int = GRID2D_POINTS) -> Cross:
    """2D tensor-product trapezoid: h = mu + s z1, h' = mu + s (c z1 + sqrt(1-c^2) z2) (§5.3).

    Evaluated as E_z1[ f(h) E_z2[f(h') | z1] ] over row blocks of <= SERIAL_CHUNK
    elements (see there).
    """
    z, w = normal_grid(points, GRID2D_HALF_WIDTH)
    s = math.sqrt(v)
    r = math.sqrt(max(0.0, 1.0 - c * c))
    f1, d1 = pair(z * s + mu)
    m = z * (c * s) + mu
    sz = z * (r * s)
    n = z.shape[0]
    rows = max(1, SERIAL_CHUNK // n)
    gf = torch.empty(n, dtype=DTYPE)
    gd = torch.empty(n, dtype=DTYPE)
    for i in range(0, n, rows):
        f2, d2 = pair(m[i : i + rows, None] + sz)
        gf[i : i + rows] = torch.mv(f2, w)
        gd[i : i + rows] = torch.mv(d2, w)
    return Cross(torch.dot(w, f1 * gf).item(), torch.dot(w, d1 * gd).item())


def _cross_graded2d(pair, mu: float, v: float, c: float, kink: float, width: float) -> Cross:
    """Graded Gauss-Legendre in both dimensions, refined at a kink/transition at h = kink.

    Used for softsign and for analytic activations whose transition (width `width`
    in h) is too narrow for the uniform 2D grid. The outer rule is refined where
    phi has its transition and where the conditional mean of h' crosses it
    (a smoothed kink of width sqrt(1-c^2)/|c| in z1).
    """
    s = math.sqrt(v)
    c, r = _clip_corr(c)
    centers = [((kink - mu) / s, refinement_levels(width / s))]
    if c != 0.0:
        layer_g = max(r / abs(c), width / (s * abs(c)))
        centers.append(((kink - mu) / (s * c), refinement_levels(layer_g)))
    z1, w1 = graded_rule(tuple(centers))
    f1, d1 = pair(z1 * s + mu)
    m = z1 * (c * s) + mu
    sc = s * r
    levels = refinement_levels(width / sc)
    n = z1.shape[0]
    rows = max(1, SERIAL_CHUNK // kink_pattern(levels)[0].shape[0])
    gf = torch.empty(n, dtype=DTYPE)
    gd = torch.empty(n, dtype=DTYPE)
    for i in range(0, n, rows):
        mi = m[i : i + rows]
        z2, w2 = kink_rule_rows((kink - mi) / sc, levels)
        f2, d2 = pair(mi[:, None] + sc * z2)
        gf[i : i + rows] = (f2 * w2).sum(dim=1)
        gd[i : i + rows] = (d2 * w2).sum(dim=1)
    return Cross(torch.dot(w1, f1 * gf).item(), torch.dot(w1, d1 * gd).item())


def _cross_deterministic(name: str, spec: Spec, p, mu: float, c: float) -> Cross:
    """v == 0: h = h' = mu. On a kink of phi, the v -> 0+ limit uses orthant probabilities."""
    t = torch.tensor([mu], dtype=DTYPE)
    f = spec.phi(t, p).item()
    if spec.kind == "segments":
        segs = spec.segments(p)
        for i, (_lo, hi, _, dt) in enumerate(segs[:-1]):
            if hi == mu:
                d_left = _eval_terms(dt, mu)
                d_right = _eval_terms(segs[i + 1][3], mu)
                # P(z1 > 0, z2 > 0) = P(z1 < 0, z2 < 0) = 1/4 + asin(c) / (2 pi) (Sheppard).
                same = 0.25 + math.asin(max(-1.0, min(1.0, c))) / (2.0 * math.pi)
                mixed = 0.5 - same
                return Cross(f * f, same * (d_left**2 + d_right**2) + 2.0 * mixed * d_left * d_right)
    d = spec.dphi(t, p).item()
    return Cross(f * f, d * d)


def _eval_terms(terms, x: float) -> float:
    return sum(coef * x**n * math.exp(beta * x) for coef, n, beta in terms)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cross_cached(name: str, mu: float, v: float, c: float, p: tuple[float, ...]) -> Cross:
    spec = SPECS[name]
    if v == 0.0:
        return _cross_deterministic(name, spec, p, mu, c)
    if c == 1.0:
        mo = moments_cached(name, mu, v, p)
        return Cross(mo.second, mo.dphi2)
    if c == 0.0:
        mo = moments_cached(name, mu, v, p)
        return Cross(mo.mean * mo.mean, mo.dphi_mean * mo.dphi_mean)
    if name == "identity":
        return Cross(mu * mu + c * v, 1.0)
    if mu == 0.0 and name == "relu":
        return _arccos_relu(v, c)
    if mu == 0.0 and name in ("leaky_relu", "prelu"):
        return _arccos_leaky(v, c, p[0])
    if spec.kind == "segments":
        return _cross_segments(name, p, mu, v, c)

    def pair(h):
        return spec.pair(h, p)

    if spec.kind == "softsign":
        return _cross_graded2d(pair, mu, v, c, 0.0, 1.0)
    width = spec.width(p)
    if math.sqrt(v) <= GRID2D_MAX_RATIO * width:
        return _cross_grid(pair, mu, v, c)
    return _cross_graded2d(pair, mu, v, c, 0.0, width)


@front_cached
def cross(name: str, mu: float, v: float, c: float, **params: float) -> Cross:
    """Cross moments E[phi(h)phi(h')], E[phi'(h)phi'(h')] (docs/design.md §5.1, E1's k' and r_in).

    h and h' are jointly Gaussian, each N(mu, v), with correlation c (so
    Cov(h, h') = c v). Exact limits: c = 1 returns (second, dphi2) of
    :func:`moments`, c = 0 returns (mean^2, dphi_mean^2).

    Methods: arc-cosine kernel for ReLU/LeakyReLU/PReLU at mu = 0 (Cho & Saul
    2009); other piecewise activations: graded Gauss-Legendre outer integral
    with the inner conditional expectation in closed form (agrees with the
    arc-cosine kernel to 4e-15 for any c); analytic activations: 129 x 129
    tensor-product trapezoid grid (spacing 1/8 on [-8, 8]; <= 5.3e-7 for tanh
    up to v = 16 and <= 1e-10 for GELU/SiLU/Mish/sigmoid/softplus), and graded
    Gauss-Legendre in both dimensions beyond sqrt(v) = 4 transition widths and
    for softsign (~1e-9).

    Args:
        name: One of :data:`ACTIVATIONS`.
        mu: Common mean of h and h'.
        v: Common variance (>= 0).
        c: Correlation coefficient in [-1, 1].
        **params: Activation parameters, as for :func:`moments`.

    Returns:
        Cross(phi_phi=E[phi(h) phi(h')], dphi_dphi=E[phi'(h) phi'(h')]).

    Raises:
        ValueError: Unknown name, invalid mu/v/parameters, or c outside [-1, 1].
        TypeError: Unknown parameter for this activation.
    """
    spec = spec_of(name)
    mu_f, v_f = check_mu_v(mu, v)
    c_f = float(c)
    if not (-1.0 - 1e-9 <= c_f <= 1.0 + 1e-9):
        raise ValueError(f"c={c!r} must be a correlation in [-1, 1]")
    c_f = max(-1.0, min(1.0, c_f))
    if abs(c_f) < 1e-12:
        c_f = 0.0  # the result differs from c = 0 by O(c); avoids 1/c overflow
    p = canon_params(name, spec, params)
    return _cross_cached(name, round_sig(mu_f), round_sig(v_f), round_sig(c_f), p)
