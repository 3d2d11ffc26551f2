"""Exact Gaussian moments of piecewise activations (docs/design.md §5.1).

On each segment of ReLU, LeakyReLU, PReLU, Hardtanh, ReLU6, Hardsigmoid, Hardswish, identity
and the exponential-linear family (ELU, CELU, SELU), phi is a sum of terms
coef * h**n * exp(beta * h), whose truncated Gaussian expectations are combinations of Phi
and phi (the truncated-normal moment recursion). Scalar, pure Python floats.
"""

from __future__ import annotations

import functools
import math

from gradlint.engine.gaussian.activations import SPECS, Segment, Term
from gradlint.engine.gaussian.normal import LOG_SQRT_2PI, log_ndtr, mills_series, ndtr_diff, normal_pdf
from gradlint.engine.gaussian.results import Moments


@functools.lru_cache(maxsize=256)
def _segment_tables(name: str, p: tuple[float, ...], local: bool):
    """Per segment: (lo, hi, phi, phi^2, phi', phi'^2) term tuples, with merged like terms."""
    out = []
    for lo, hi, ft, dt in segments(name, p, local):
        out.append((lo, hi, ft, _square_terms(ft), dt, _square_terms(dt)))
    return tuple(out)


# Exponential pieces near h = 0. alpha (e^h - 1) evaluated as E[e^h 1] - P(.)
# cancels to absolute ~1e-16, i.e. relative 1e-4 in E[phi^2] at v = 1e-12 and
# worse below, where a vanishing deep ELU/SELU stack lives. When all the mass sits
# where |beta h| < 0.05, the exponentials are replaced by their Taylor polynomials
# (degree 10, remainder < 1e-22 relative); the constant terms then cancel exactly
# and every moment is a polynomial one, accurate to rounding.
_TAYLOR_RADIUS = 0.05
_TAYLOR_DEGREE = 10


@functools.lru_cache(maxsize=256)
def _max_beta(name: str, p: tuple[float, ...]) -> float:
    return max((abs(beta) for seg in SPECS[name].segments(p) for terms in seg[2:] for _, _, beta in terms), default=0.0)


def is_local(name: str, p: tuple[float, ...], mu: float, s: float) -> bool:
    beta = _max_beta(name, p)
    return beta > 0.0 and beta * (abs(mu) + 10.0 * s) < _TAYLOR_RADIUS


def _taylor_terms(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    poly: dict[int, float] = {}
    for coef, n, beta in terms:
        if beta == 0.0:
            poly[n] = poly.get(n, 0.0) + coef
            continue
        term = coef
        for j in range(_TAYLOR_DEGREE + 1):  # coef * (beta h)^j / j!
            poly[j] = poly.get(j, 0.0) + term
            term *= beta / (j + 1)
    return tuple((c, n, 0.0) for n, c in sorted(poly.items()) if c != 0.0)


@functools.lru_cache(maxsize=256)
def segments(name: str, p: tuple[float, ...], local: bool) -> tuple[Segment, ...]:
    segs = SPECS[name].segments(p)
    if not local:
        return segs
    return tuple((lo, hi, _taylor_terms(ft), _taylor_terms(dt)) for lo, hi, ft, dt in segs)


def _square_terms(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    acc: dict[tuple[int, float], float] = {}
    for c1, n1, b1 in terms:
        for c2, n2, b2 in terms:
            key = (n1 + n2, b1 + b2)
            acc[key] = acc.get(key, 0.0) + c1 * c2
    return tuple((c, n, b) for (n, b), c in sorted(acc.items()) if c != 0.0)


def _zbound(x: float, mu: float, s: float) -> float:
    """Standardised bound (x - mu) / s; for s == 0 the v -> 0+ limit (0 on the boundary)."""
    if math.isinf(x):
        return x
    if s == 0.0:
        d = x - mu
        return 0.0 if d == 0.0 else math.copysign(math.inf, d)
    return (x - mu) / s


def _trunc_moments(a: float, b: float, nmax: int) -> list[float]:
    """M_k = E[z^k 1{a < z < b}], z ~ N(0, 1), k = 0..nmax.

    Recursion M_k = (k-1) M_{k-2} + a^{k-1} phi(a) - b^{k-1} phi(b)
    (integration by parts; standard truncated-normal moments).
    """
    pa = normal_pdf(a) if math.isfinite(a) else 0.0
    pb = normal_pdf(b) if math.isfinite(b) else 0.0
    m = [ndtr_diff(a, b)]
    if nmax >= 1:
        m.append(pa - pb)
    apow, bpow = 1.0, 1.0
    for k in range(2, nmax + 1):
        apow = apow * a if pa else 0.0
        bpow = bpow * b if pb else 0.0
        m.append((k - 1) * m[k - 2] + apow * pa - bpow * pb)
    return m


def _exp_term(beta: float, hi: float, mu: float, s: float, v: float) -> float:
    """E[exp(beta h) 1{h < hi}] for h ~ N(mu, v).

    Equals exp(beta mu + beta^2 v / 2) Phi((hi - mu - beta v) / s); evaluated in
    log space because for large v the prefactor overflows while Phi underflows.
    """
    if s == 0.0:
        if mu < hi:
            ind = 1.0
        elif mu == hi:
            ind = 0.5
        else:
            return 0.0
        return ind * math.exp(beta * mu)
    if math.isinf(hi):
        return _exp_or_inf(beta * mu + 0.5 * beta * beta * v)
    z = (hi - mu - beta * v) / s
    if z <= -30.0:
        # Deep in Phi's tail, log Phi(z) = -z^2/2 + O(log|z|), and the z^2/2 cancels the
        # beta^2 v/2 of the prefactor. Cancelled by algebra rather than in floating point,
        # because at v ~ 1e60 the rounding of either term alone exceeds exp's range.
        log_val = (beta * hi - (hi - mu) * (hi - mu) / (2.0 * v) - math.log(-z) - LOG_SQRT_2PI
                   + math.log(mills_series(z)))
    else:
        log_val = beta * mu + 0.5 * beta * beta * v + log_ndtr(z)
    return _exp_or_inf(log_val)


def _exp_or_inf(x: float) -> float:
    # A moment beyond float64 is inf (an overflowed signal), not an error.
    return math.exp(x) if x < 709.0 else math.inf


def _poly_expect(terms, moms, mu: float, s: float) -> float:
    total = 0.0
    for coef, n, beta in terms:
        if beta != 0.0:
            continue
        # E[h^n 1{seg}] with h = mu + s z, binomial expansion.
        acc = 0.0
        for k in range(n + 1):
            sk = s**k
            if sk == 0.0 and k > 0:
                continue
            acc += math.comb(n, k) * mu ** (n - k) * sk * moms[k]
        total += coef * acc
    return total


def segments_moments(name: str, p: tuple[float, ...], mu: float, v: float) -> Moments:
    s = math.sqrt(v)
    mean = second = dmean = d2 = 0.0
    for lo, hi, ft, ft2, dt, dt2 in _segment_tables(name, p, is_local(name, p, mu, s)):
        a = _zbound(lo, mu, s)
        b = _zbound(hi, mu, s)
        if not a < b:
            continue
        nmax = max((n for group in (ft, ft2, dt, dt2) for _, n, beta in group if beta == 0.0), default=0)
        moms = _trunc_moments(a, b, nmax)
        vals = []
        for group in (ft, ft2, dt, dt2):
            x = _poly_expect(group, moms, mu, s)
            for coef, _n, beta in group:
                if beta != 0.0:
                    x += coef * _exp_term(beta, hi, mu, s, v)
            vals.append(x)
        mean += vals[0]
        second += vals[1]
        dmean += vals[2]
        d2 += vals[3]
    # Cancellation in the tails can leave -1e-300-sized negatives.
    return Moments(mean, max(second, 0.0), max(d2, 0.0), dmean)
