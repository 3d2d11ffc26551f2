"""Gaussian expectations for mean-field signal propagation.

This module is the numerical core behind the activation, pooling, softmax and
recurrent rules of the design reference (``shared/design/signal-propagation.md``,
"the doc" below):

* :func:`moments` -- E[phi(h)], E[phi(h)^2], E[phi'(h)^2], E[phi'(h)] for
  h ~ N(mu, v) (doc section 5, rule E1).
* :func:`cross` -- E[phi(h) phi(h')] and E[phi'(h) phi'(h')] for jointly Gaussian
  h, h' with correlation c (doc 5.1, used for k' and r_in in E1).
* :func:`expect`, :func:`gate_moments`, :func:`tanh_moments` -- the gate moments of
  the LSTM/GRU rules R2/R3 (doc section 6).
* :func:`softmax_moments` -- S2, S3, S22 of rule S1 (doc 4.5, 4.6).
* :func:`max_normal_moments` -- e1(n), e2(n) of rule P3 (doc 4.3).

Evaluation strategy (doc 5.1 and 5.3):

* Piecewise-polynomial activations (ReLU, LeakyReLU, PReLU, Hardtanh, ReLU6,
  Hardsigmoid, Hardswish, identity) and the exponential-linear family (ELU, CELU,
  SELU) use exact closed forms for any mu: on each piece phi is a sum of terms
  coef * h**n * exp(beta * h), whose truncated Gaussian expectations are
  combinations of Phi and phi (truncated-normal moment recursion).
* Analytic activations (GELU, SiLU, Mish, sigmoid, tanh, softplus, logsigmoid)
  use the doc's recommended trapezoid grid: 801 uniform points on z in [-10, 10]
  with weights proportional to exp(-z^2/2), h = mu + sqrt(v) z. For very wide
  inputs (sqrt(v) much larger than the width of the activation's transition) the
  grid can no longer resolve the transition, so a graded composite Gauss-Legendre
  rule refined around h = 0 takes over.
* Softsign has a kink in phi'' at 0 and no elementary closed form: graded
  composite Gauss-Legendre split at the kink.
* Cross moments: arc-cosine kernel (ReLU family at mu = 0), closed-form inner
  conditional expectation under a graded outer rule (other piecewise
  activations), 2D trapezoid grid (analytic activations).
* Softmax moments: deterministic quadrature of a Laplace-transform identity
  rather than the doc's Monte Carlo, whose 4e5-logit budget is far from the
  claimed 1% once K and v are both large (see the comment in that section).

Every public function takes and returns Python floats and is memoised:
arguments are rounded to 7 significant decimal digits before the cached
computation, and a small front dictionary keyed on the raw arguments makes
repeated identical calls cost well under a microsecond.

The module uses torch (float64, CPU) as its only numeric dependency and never
changes torch's global state.
"""

from __future__ import annotations

import functools
import math
import operator
import types
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_PARAMS",
    "Cross",
    "GateMoments",
    "MaxNormalMoments",
    "Moments",
    "SoftmaxMoments",
    "TanhMoments",
    "cross",
    "expect",
    "expect_fn",
    "gate_moments",
    "max_normal_moments",
    "moments",
    "normal_cdf",
    "normal_pdf",
    "softmax_moments",
    "tanh_moments",
]

# ---------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------


class Moments(NamedTuple):
    """Gaussian moments of an activation phi for h ~ N(mu, v).

    Attributes:
        mean: E[phi(h)].
        second: E[phi(h)^2].
        dphi2: E[phi'(h)^2].
        dphi_mean: E[phi'(h)].
    """

    mean: float
    second: float
    dphi2: float
    dphi_mean: float


class Cross(NamedTuple):
    """Cross moments for jointly Gaussian h, h' (same mean and variance).

    Attributes:
        phi_phi: E[phi(h) phi(h')].
        dphi_dphi: E[phi'(h) phi'(h')].
    """

    phi_phi: float
    dphi_dphi: float


class GateMoments(NamedTuple):
    """Sigmoid-gate moments for a pre-activation ~ N(mu, v) (doc section 6).

    Attributes:
        mean: E[sigma].
        second: E[sigma^2].
        deriv_sq: E[(sigma (1 - sigma))^2] = E[sigma'^2].
    """

    mean: float
    second: float
    deriv_sq: float


class TanhMoments(NamedTuple):
    """Tanh moments for a pre-activation ~ N(mu, v) (doc section 6).

    Attributes:
        second: E[tanh^2].
        deriv_sq: E[(1 - tanh^2)^2] = E[tanh'^2].
    """

    second: float
    deriv_sq: float


class SoftmaxMoments(NamedTuple):
    """Softmax moments of rule S1 (doc 4.5), a = softmax(logits).

    Attributes:
        S2: E[sum_i a_i^2].
        S3: E[sum_i a_i^3].
        S22: E[(sum_i a_i^2)^2].
    """

    S2: float
    S3: float
    S22: float


class MaxNormalMoments(NamedTuple):
    """First two moments of the maximum of n i.i.d. standard normals (doc 4.3, P3).

    Attributes:
        e1: E[max].
        e2: E[max^2].
    """

    e1: float
    e2: float


# ---------------------------------------------------------------------------
# Scalar normal helpers
# ---------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_INF = math.inf


def normal_cdf(x: float) -> float:
    """Standard normal CDF Phi(x).

    Uses ``math.erfc`` rather than ``1 + erf`` so that the lower tail keeps its
    relative precision (Phi(-30) ~ 5e-198 instead of 0).

    Args:
        x: Point at which to evaluate; +-inf allowed.

    Returns:
        Phi(x) in [0, 1].
    """
    return 0.5 * math.erfc(-x / _SQRT2)


def normal_pdf(x: float) -> float:
    """Standard normal density phi(x) = exp(-x^2/2) / sqrt(2 pi).

    Args:
        x: Point at which to evaluate; +-inf allowed (gives 0).

    Returns:
        The density at x.
    """
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def _log_ndtr(x: float) -> float:
    """log Phi(x), accurate in both tails (used by the exponential closed forms)."""
    if x > 5.0:
        return math.log1p(-0.5 * math.erfc(x / _SQRT2))
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    # Asymptotic (Mills ratio) series; truncation error < 1e-14 for x <= -30,
    # where erfc itself would underflow further out.
    r = 1.0 / (x * x)
    series = 1.0 - r * (1.0 - 3.0 * r * (1.0 - 5.0 * r * (1.0 - 7.0 * r * (1.0 - 9.0 * r))))
    return -0.5 * x * x - math.log(-x) - _LOG_SQRT_2PI + math.log(series)


def _ndtr_diff(a: float, b: float) -> float:
    """Phi(b) - Phi(a) for a <= b, computed on the side that avoids cancellation."""
    if a > 0.0:
        return normal_cdf(-a) - normal_cdf(-b)
    return normal_cdf(b) - normal_cdf(a)


# ---------------------------------------------------------------------------
# Argument handling and caching
# ---------------------------------------------------------------------------

_CACHE_SIZE = 1 << 16
_NEG_V_TOL = 1e-12
_FRONT_MAX = 1 << 16


def _round_sig(x: float) -> float:
    # Decimal rounding to 7 significant digits (relative change <= 5e-7): inputs
    # that differ only by floating-point noise share a cache entry, and short
    # decimals (0.01, 0.25, 1/3 -> 0.3333333) stay exactly what the caller wrote.
    return float(f"{x:.7g}")


def _positive_int(label: str, x) -> int:
    try:
        if isinstance(x, bool):
            raise TypeError
        k = operator.index(x)
    except TypeError:
        raise ValueError(f"{label}={x!r} must be a positive integer") from None
    if k < 1:
        raise ValueError(f"{label}={x!r} must be a positive integer")
    return k


def _check_mu_v(mu: float, v: float) -> tuple[float, float]:
    mu = float(mu)
    v = float(v)
    if not math.isfinite(mu):
        raise ValueError(f"mu={mu!r} must be finite")
    if not (math.isfinite(v) and v >= 0.0):
        # Callers form v = q - mu^2; a rounding-level negative result means v = 0.
        if math.isfinite(v) and v >= -_NEG_V_TOL * max(1.0, mu * mu):
            return mu, 0.0
        raise ValueError(f"v={v!r} must be a finite variance >= 0")
    if v < 1e-250:
        # Subnormal variances overflow the grid's 1/sqrt(v) scalings; the distribution is a
        # point mass at this scale anyway.
        return mu, 0.0
    return mu, v


def _front_put(front: dict, key: tuple, value) -> None:
    if len(front) >= _FRONT_MAX:
        front.clear()
    front[key] = value


def _front_cached(fn: Callable) -> Callable:
    """A plain dict keyed on the raw arguments in front of a public function.

    Hits skip validation and rounding (the engine repeats the same (mu, v) across
    identical layers), costing a dict lookup. Cleared wholesale when full; the
    lru_caches behind it still hold the rounded results. Unhashable arguments
    bypass it.
    """
    front: dict = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        key = (*args, *kwargs.items()) if kwargs else args
        try:
            hit = front.get(key)
        except TypeError:
            return fn(*args, **kwargs)
        if hit is None:
            hit = fn(*args, **kwargs)
            _front_put(front, key, hit)
        return hit

    wrapper.cache_clear = front.clear  # type: ignore[attr-defined]
    return wrapper


# ---------------------------------------------------------------------------
# Quadrature rules
# ---------------------------------------------------------------------------

_DTYPE = torch.float64
_GRID_POINTS = 801  # doc 5.3: geometric convergence, <= 1e-15 for v in [0.01, 20]
_GRID_HALF_WIDTH = 10.0
# 2D tensor-product trapezoid, points per axis (spacing 1/8). The trapezoid error
# for an integrand analytic in |Im z| < d is ~exp(-2 pi d / spacing); tanh has
# poles at h = +-i pi/2, i.e. d = pi / (2 sqrt v) in z. Measured against a
# 1201^2 grid: <= 5.3e-7 for tanh at v <= 16 (worst at |c| -> 1), <= 1e-10 for
# GELU/SiLU/Mish/sigmoid/softplus there. Beyond sqrt(v) = 4 transition widths the
# graded Gauss-Legendre path takes over (measured <= 1e-11 up to v = 49).
_GRID2D_POINTS = 129  # on [-8, 8]: the mass beyond |z| = 8 is 1.2e-15
_GRID2D_HALF_WIDTH = 8.0
_GRID2D_MAX_RATIO = 4.0
# Elements per torch call in the larger kernels (2D grids, softmax Monte Carlo).
# ATen's vectorised unary ops (tanh, exp, ndtr, softplus, ...) open an OpenMP
# region above ~2048 elements; on a loaded machine each region can stall for
# milliseconds (measured 20-100x slowdowns on a busy 2-core box), while blocks
# below the threshold run serially at full speed.
_SERIAL_CHUNK = 2048
# Switch from the 1D uniform grid to graded Gauss-Legendre when sqrt(v) exceeds
# this many transition widths; the grid is still at 3e-15 for tanh at v = 100.
_GRID_MAX_RATIO = 10.0
# Composite Gauss-Legendre (kinks, narrow transitions): order per panel; base
# panels cover [-10, 10] and are refined geometrically towards kinks/transitions.
_GL_ORDER = 10
# Base panel length: 1 in general (softsign's pieces have poles one unit of h
# from the kink; GL-10 on length-2 panels left 9e-7 there), 2 where every piece
# is entire (polynomial / exponential segments: measured 4e-15 against the
# arc-cosine kernel), which halves the work of cross() for the ReLU family.
_BASE_PANEL = 1.0
_BASE_PANEL_ENTIRE = 2.0


class _Grid(NamedTuple):
    z: torch.Tensor
    w: torch.Tensor


@functools.cache
def _grid(points: int) -> _Grid:
    """Uniform trapezoid grid on [-10, 10] with normalised Gaussian weights (doc 5.3)."""
    z = torch.linspace(-_GRID_HALF_WIDTH, _GRID_HALF_WIDTH, points, dtype=_DTYPE)
    w = torch.exp(-0.5 * z * z)
    # Trapezoid end weights are halved; at |z| = 10 they are ~1e-22 anyway.
    w[0] *= 0.5
    w[-1] *= 0.5
    w = w / w.sum()
    return _Grid(z, w)


@functools.cache
def _grid_2d(points: int) -> _Grid:
    """Per-axis trapezoid grid for the 2D tensor product (same construction, [-8, 8])."""
    z = torch.linspace(-_GRID2D_HALF_WIDTH, _GRID2D_HALF_WIDTH, points, dtype=_DTYPE)
    w = torch.exp(-0.5 * z * z)
    w[0] *= 0.5
    w[-1] *= 0.5
    return _Grid(z, w / w.sum())


@functools.cache
def _gauss_legendre(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [-1, 1] (Golub-Welsch)."""
    k = torch.arange(1, order, dtype=_DTYPE)
    off = k / torch.sqrt(4.0 * k * k - 1.0)
    jac = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jac)
    weights = 2.0 * vecs[0, :] ** 2
    return nodes, weights


def _base_edges(half_width: float, base: float) -> list[float]:
    n = math.ceil(half_width / base)
    return [k * base for k in range(-n, n + 1)]


def _levels(layer: float | None, base: float = _BASE_PANEL) -> int:
    """Number of geometric refinement levels for a transition of width `layer` (z units)."""
    if layer is None or layer >= base:
        return 0
    # Smallest panel next to the center <= layer / 4.
    return min(50, max(1, math.ceil(math.log2(4.0 * base / max(layer, 1e-300)))))


@functools.cache
def _offsets(levels: int, base: float) -> tuple[float, ...]:
    out = [0.0]
    for j in range(levels):
        d = base * 2.0 ** (-j - 1)
        out.extend((-d, d))
    return tuple(sorted(out))


def _panel_rule(edges: list[float]) -> _Grid:
    """Composite Gauss-Legendre on consecutive edges, Gaussian weight included, normalised."""
    t, wr = _gauss_legendre(_GL_ORDER)
    e = torch.tensor(edges, dtype=_DTYPE)
    lo, hi = e[:-1], e[1:]
    half = 0.5 * (hi - lo)
    mid = 0.5 * (hi + lo)
    z = (mid[:, None] + half[:, None] * t[None, :]).reshape(-1)
    w = (half[:, None] * wr[None, :]).reshape(-1) * torch.exp(-0.5 * z * z)
    return _Grid(z, w / w.sum())


def _graded_rule(centers: tuple[tuple[float, int], ...], base: float = _BASE_PANEL) -> _Grid:
    """Graded composite Gauss-Legendre rule on [-10, 10] for a standard normal z.

    Panels of length `base` are refined geometrically (ratio 2) towards each center, down to
    the requested level. Gauss-Legendre converges exponentially on each panel of a
    piecewise-analytic integrand, and the geometric grading resolves boundary
    layers of any width (hp-refinement), which a uniform trapezoid grid cannot do
    at kinks (O(h^2), doc 5.3).

    Args:
        centers: (z, levels) pairs; z is placed on a panel edge.

    Returns:
        Nodes and normalised weights.
    """
    L = _GRID_HALF_WIDTH
    edges = _base_edges(L, base)
    for zc, lev in centers:
        if not (-L - 1.0 < zc < L + 1.0):
            continue
        edges.extend(zc + o for o in _offsets(lev, base))
    edges = sorted(min(L, max(-L, e)) for e in edges)
    kept = [edges[0]]
    for e in edges[1:]:
        if e - kept[-1] > 1e-12:
            kept.append(e)
    return _panel_rule(kept)


# A kink-centred pattern: base panels on [-21, 21] around the kink, refined
# geometrically towards it. Shifted to the kink (clamped to [-11, 11], which
# keeps [-10, 10] covered; a kink further out is outside the Gaussian mass and
# the integrand is analytic there), it needs no per-call edge sorting, and rows
# with different kink positions (inner integral of cross()) share one pattern.
_PATTERN_HALF_WIDTH = 21
_PATTERN_CLAMP = 11.0


@functools.cache
def _kink_pattern(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, wr = _gauss_legendre(_GL_ORDER)
    edges = sorted(set(_base_edges(_PATTERN_HALF_WIDTH, _BASE_PANEL)) | set(_offsets(levels, _BASE_PANEL)))
    e = torch.tensor(edges, dtype=_DTYPE)
    half = 0.5 * (e[1:] - e[:-1])
    mid = 0.5 * (e[1:] + e[:-1])
    nodes = (mid[:, None] + half[:, None] * t[None, :]).reshape(-1)
    weights = (half[:, None] * wr[None, :]).reshape(-1)
    return nodes, weights


def _kink_rule(center: float, levels: int) -> _Grid:
    """Graded Gauss-Legendre rule for N(0, 1) refined at one point (see _kink_pattern)."""
    t, wb = _kink_pattern(levels)
    z = t + max(-_PATTERN_CLAMP, min(_PATTERN_CLAMP, center))
    w = wb * torch.exp(-0.5 * z * z)
    return _Grid(z, w / w.sum())


def _kink_rule_rows(centers: torch.Tensor, levels: int) -> _Grid:
    """Row-wise :func:`_kink_rule`: nodes and weights of shape (N, P), rows normalised."""
    t, wb = _kink_pattern(levels)
    z = centers.clamp(-_PATTERN_CLAMP, _PATTERN_CLAMP)[:, None] + t
    w = wb * torch.exp(-0.5 * z * z)
    return _Grid(z, w / w.sum(dim=1, keepdim=True))


# ---------------------------------------------------------------------------
# Activation definitions
# ---------------------------------------------------------------------------

# torch.nn.functional.selu constants (torch/nn/functional.py, ATen Activation.cpp).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_GELU_TANH_K = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715

# A "term" is (coef, n, beta): coef * h**n * exp(beta * h). A segment is
# (lo, hi, phi_terms, dphi_terms) in h units. beta != 0 only with n == 0 and
# lo == -inf, which is all the exponential-linear units need.
_Term = tuple[float, int, float]
_Segment = tuple[float, float, tuple[_Term, ...], tuple[_Term, ...]]


def _segments_relu(p) -> tuple[_Segment, ...]:
    return ((-_INF, 0.0, (), ()), (0.0, _INF, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)))


def _segments_leaky(p) -> tuple[_Segment, ...]:
    (a,) = p
    return (
        (-_INF, 0.0, ((a, 1, 0.0),), ((a, 0, 0.0),)),
        (0.0, _INF, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_hardtanh(p) -> tuple[_Segment, ...]:
    lo, hi = p
    return (
        (-_INF, lo, ((lo, 0, 0.0),), ()),
        (lo, hi, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
        (hi, _INF, ((hi, 0, 0.0),), ()),
    )


def _segments_relu6(p) -> tuple[_Segment, ...]:
    return _segments_hardtanh((0.0, 6.0))


def _segments_hardsigmoid(p) -> tuple[_Segment, ...]:
    return (
        (-_INF, -3.0, (), ()),
        (-3.0, 3.0, ((1.0 / 6.0, 1, 0.0), (0.5, 0, 0.0)), ((1.0 / 6.0, 0, 0.0),)),
        (3.0, _INF, ((1.0, 0, 0.0),), ()),
    )


def _segments_hardswish(p) -> tuple[_Segment, ...]:
    # x * relu6(x + 3) / 6: quadratic on (-3, 3); phi' = x/3 + 1/2 there.
    return (
        (-_INF, -3.0, (), ()),
        (-3.0, 3.0, ((1.0 / 6.0, 2, 0.0), (0.5, 1, 0.0)), ((1.0 / 3.0, 1, 0.0), (0.5, 0, 0.0))),
        (3.0, _INF, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_elu(p) -> tuple[_Segment, ...]:
    (a,) = p
    return (
        (-_INF, 0.0, ((a, 0, 1.0), (-a, 0, 0.0)), ((a, 0, 1.0),)),
        (0.0, _INF, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_celu(p) -> tuple[_Segment, ...]:
    (a,) = p
    return (
        (-_INF, 0.0, ((a, 0, 1.0 / a), (-a, 0, 0.0)), ((1.0, 0, 1.0 / a),)),
        (0.0, _INF, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_selu(p) -> tuple[_Segment, ...]:
    sa = _SELU_SCALE * _SELU_ALPHA
    return (
        (-_INF, 0.0, ((sa, 0, 1.0), (-sa, 0, 0.0)), ((sa, 0, 1.0),)),
        (0.0, _INF, ((_SELU_SCALE, 1, 0.0),), ((_SELU_SCALE, 0, 0.0),)),
    )


def _segments_identity(p) -> tuple[_Segment, ...]:
    return ((-_INF, _INF, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),)


# phi and phi' as torch functions of (h, params). phi is torch's own functional
# form (the fused `pair` versions of the analytic ones use an algebraically equal
# expression, equal to ~1e-15); phi' is the analytic derivative, written so that
# no inf * 0 can occur for any finite h. Tests compare both with torch/autograd.


def _phi_relu(h, p):
    return F.relu(h)


def _dphi_relu(h, p):
    return (h > 0).to(h.dtype)


def _phi_leaky(h, p):
    return F.leaky_relu(h, p[0])


def _dphi_leaky(h, p):
    return torch.where(h > 0, torch.ones_like(h), torch.full_like(h, p[0]))


def _phi_prelu(h, p):
    return F.prelu(h, torch.tensor([p[0]], dtype=h.dtype))


def _phi_elu(h, p):
    return F.elu(h, p[0])


def _dphi_elu(h, p):
    return torch.where(h > 0, torch.ones_like(h), p[0] * torch.exp(h.clamp(max=0.0)))


def _phi_celu(h, p):
    return F.celu(h, p[0])


def _dphi_celu(h, p):
    return torch.where(h > 0, torch.ones_like(h), torch.exp(h.clamp(max=0.0) / p[0]))


def _phi_selu(h, p):
    return F.selu(h)


def _dphi_selu(h, p):
    return _SELU_SCALE * torch.where(h > 0, torch.ones_like(h), _SELU_ALPHA * torch.exp(h.clamp(max=0.0)))


def _phi_hardtanh(h, p):
    return F.hardtanh(h, p[0], p[1])


def _dphi_hardtanh(h, p):
    return ((h > p[0]) & (h < p[1])).to(h.dtype)


def _phi_relu6(h, p):
    return F.relu6(h)


def _dphi_relu6(h, p):
    return ((h > 0.0) & (h < 6.0)).to(h.dtype)


def _phi_hardsigmoid(h, p):
    return F.hardsigmoid(h)


def _dphi_hardsigmoid(h, p):
    return ((h > -3.0) & (h < 3.0)).to(h.dtype) / 6.0


def _phi_hardswish(h, p):
    return F.hardswish(h)


def _dphi_hardswish(h, p):
    inner = ((h > -3.0) & (h < 3.0)).to(h.dtype)
    return inner * (h.clamp(-3.0, 3.0) / 3.0 + 0.5) + (h >= 3.0).to(h.dtype)


def _phi_identity(h, p):
    return h


def _dphi_identity(h, p):
    return torch.ones_like(h)


def _phi_softsign(h, p):
    return F.softsign(h)


def _dphi_softsign(h, p):
    return (1.0 + h.abs()).reciprocal().square()


def _pair_softsign(h, p):
    return F.softsign(h), _dphi_softsign(h, p)


def _pair_gelu(h, p):
    cdf = torch.special.ndtr(h)
    pdf = torch.exp(-0.5 * h * h) * _INV_SQRT_2PI
    return h * cdf, cdf + h * pdf


def _phi_gelu(h, p):
    return F.gelu(h)


def _dphi_gelu(h, p):
    return _pair_gelu(h, p)[1]


def _phi_gelu_tanh(h, p):
    return F.gelu(h, approximate="tanh")


def _dphi_gelu_tanh(h, p):
    return _pair_gelu_tanh(h, p)[1]


def _pair_gelu_tanh(h, p):
    # F.gelu(approximate="tanh") = x/2 (1 + tanh(y)) = x sigmoid(2y), y = k (x + c x^3),
    # so phi' = sg + 2k x sg (1 - sg) (1 + 3c x^2) with sg = sigmoid(2y). Beyond
    # |h| = 30, sg is exactly 0 or 1 in float64; clamping the argument keeps x^3
    # finite for any finite h. addcmul fuses a + b * c: on 801 points the cost is
    # per-call overhead, not arithmetic.
    x = h.clamp(-30.0, 30.0)
    u = x * x
    sg = torch.sigmoid(torch.addcmul(x, x, u, value=_GELU_TANH_C).mul_(2.0 * _GELU_TANH_K))
    a = x * (sg * (1.0 - sg))
    d = torch.add(sg, torch.addcmul(a, a, u, value=3.0 * _GELU_TANH_C), alpha=2.0 * _GELU_TANH_K)
    return h * sg, d


def _pair_silu(h, p):
    sg = torch.sigmoid(h)
    return h * sg, sg * (1.0 + h * (1.0 - sg))


def _phi_silu(h, p):
    return F.silu(h)


def _dphi_silu(h, p):
    return _pair_silu(h, p)[1]


def _pair_mish(h, p):
    t = torch.tanh(F.softplus(h))
    return h * t, t + h * torch.sigmoid(h) * (1.0 - t * t)


def _phi_mish(h, p):
    return F.mish(h)


def _dphi_mish(h, p):
    return _pair_mish(h, p)[1]


def _pair_sigmoid(h, p):
    sg = torch.sigmoid(h)
    return sg, sg * (1.0 - sg)


def _phi_sigmoid(h, p):
    return torch.sigmoid(h)


def _dphi_sigmoid(h, p):
    return _pair_sigmoid(h, p)[1]


def _pair_tanh(h, p):
    t = torch.tanh(h)
    return t, 1.0 - t * t


def _phi_tanh(h, p):
    return torch.tanh(h)


def _dphi_tanh(h, p):
    return _pair_tanh(h, p)[1]


def _phi_softplus(h, p):
    return F.softplus(h, p[0], p[1])


def _dphi_softplus(h, p):
    bh = p[0] * h
    # torch's softplus is linear above the threshold, so its derivative is 1 there.
    return torch.where(bh > p[1], torch.ones_like(h), torch.sigmoid(bh))


def _pair_softplus(h, p):
    return F.softplus(h, p[0], p[1]), _dphi_softplus(h, p)


def _phi_logsigmoid(h, p):
    # = F.logsigmoid(h) to rounding. ATen's log_sigmoid kernel opens an OpenMP
    # region even for a few hundred elements (stalls of milliseconds on a busy
    # machine, measured); this stable form uses plain elementwise ops.
    return h.clamp(max=0.0) - torch.log1p(torch.exp(-h.abs()))


def _dphi_logsigmoid(h, p):
    return torch.sigmoid(-h)


def _pair_logsigmoid(h, p):
    return _phi_logsigmoid(h, p), torch.sigmoid(-h)


class _Spec(NamedTuple):
    params: tuple[tuple[str, float], ...]  # (name, default) in canonical order
    phi: Callable
    dphi: Callable
    kind: str  # "segments" | "smooth" | "softsign"
    segments: Callable | None = None  # params -> tuple[_Segment, ...]
    pair: Callable | None = None  # smooth: (h, p) -> (phi, phi') sharing work
    width: Callable | None = None  # smooth: params -> transition width in h


def _unit_width(p) -> float:
    return 1.0


def _softplus_width(p) -> float:
    return 1.0 / p[0]


_SPECS: dict[str, _Spec] = {
    "relu": _Spec((), _phi_relu, _dphi_relu, "segments", _segments_relu),
    "leaky_relu": _Spec((("negative_slope", 0.01),), _phi_leaky, _dphi_leaky, "segments", _segments_leaky),
    "prelu": _Spec((("slope", 0.25),), _phi_prelu, _dphi_leaky, "segments", _segments_leaky),
    "elu": _Spec((("alpha", 1.0),), _phi_elu, _dphi_elu, "segments", _segments_elu),
    "celu": _Spec((("alpha", 1.0),), _phi_celu, _dphi_celu, "segments", _segments_celu),
    "selu": _Spec((), _phi_selu, _dphi_selu, "segments", _segments_selu),
    "hardtanh": _Spec(
        (("min_val", -1.0), ("max_val", 1.0)), _phi_hardtanh, _dphi_hardtanh, "segments", _segments_hardtanh
    ),
    "relu6": _Spec((), _phi_relu6, _dphi_relu6, "segments", _segments_relu6),
    "hardsigmoid": _Spec((), _phi_hardsigmoid, _dphi_hardsigmoid, "segments", _segments_hardsigmoid),
    "hardswish": _Spec((), _phi_hardswish, _dphi_hardswish, "segments", _segments_hardswish),
    "identity": _Spec((), _phi_identity, _dphi_identity, "segments", _segments_identity),
    "softsign": _Spec((), _phi_softsign, _dphi_softsign, "softsign"),
    "gelu": _Spec((), _phi_gelu, _dphi_gelu, "smooth", None, _pair_gelu, _unit_width),
    "gelu_tanh": _Spec((), _phi_gelu_tanh, _dphi_gelu_tanh, "smooth", None, _pair_gelu_tanh, _unit_width),
    "silu": _Spec((), _phi_silu, _dphi_silu, "smooth", None, _pair_silu, _unit_width),
    "mish": _Spec((), _phi_mish, _dphi_mish, "smooth", None, _pair_mish, _unit_width),
    "sigmoid": _Spec((), _phi_sigmoid, _dphi_sigmoid, "smooth", None, _pair_sigmoid, _unit_width),
    "tanh": _Spec((), _phi_tanh, _dphi_tanh, "smooth", None, _pair_tanh, _unit_width),
    "softplus": _Spec(
        (("beta", 1.0), ("threshold", 20.0)),
        _phi_softplus,
        _dphi_softplus,
        "smooth",
        None,
        _pair_softplus,
        _softplus_width,
    ),
    "logsigmoid": _Spec((), _phi_logsigmoid, _dphi_logsigmoid, "smooth", None, _pair_logsigmoid, _unit_width),
}

#: Names accepted by :func:`moments` and :func:`cross`.
ACTIVATIONS: frozenset[str] = frozenset(_SPECS)

#: Keyword parameters (with torch's defaults) accepted per activation.
ACTIVATION_PARAMS: Mapping[str, Mapping[str, float]] = types.MappingProxyType(
    {name: types.MappingProxyType(dict(spec.params)) for name, spec in _SPECS.items()}
)


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation name={name!r}; supported: {sorted(_SPECS)}") from None


def _canon_params(name: str, spec: _Spec, params: dict) -> tuple[float, ...]:
    """Validate keyword parameters and return their values in canonical order, rounded."""
    allowed = dict(spec.params)
    for key in params:
        if key not in allowed:
            raise TypeError(f"activation {name!r} got unexpected parameter {key}={params[key]!r}; "
                            f"accepted: {sorted(allowed) or 'none'}")
    values = []
    for key, default in spec.params:
        val = params.get(key, default)
        try:
            fval = float(val)
        except (TypeError, ValueError):
            raise TypeError(f"{name} parameter {key}={val!r} must be a real number") from None
        if not math.isfinite(fval):
            raise ValueError(f"{name} parameter {key}={val!r} must be finite")
        values.append(_round_sig(fval))
    p = tuple(values)
    if name == "hardtanh" and not p[0] < p[1]:
        raise ValueError(f"hardtanh needs min_val < max_val, got min_val={p[0]!r}, max_val={p[1]!r}")
    if name == "celu" and not p[0] > 0.0:
        raise ValueError(f"celu alpha={p[0]!r} must be > 0")
    if name == "softplus" and not p[0] > 0.0:
        raise ValueError(f"softplus beta={p[0]!r} must be > 0")
    return p


# ---------------------------------------------------------------------------
# Closed forms over segments (scalar, pure Python floats)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _segment_tables(name: str, p: tuple[float, ...], local: bool):
    """Per segment: (lo, hi, phi, phi^2, phi', phi'^2) term tuples, with merged like terms."""
    out = []
    for lo, hi, ft, dt in _segments(name, p, local):
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
    return max((abs(beta) for seg in _SPECS[name].segments(p) for terms in seg[2:] for _, _, beta in terms), default=0.0)


def _is_local(name: str, p: tuple[float, ...], mu: float, s: float) -> bool:
    beta = _max_beta(name, p)
    return beta > 0.0 and beta * (abs(mu) + 10.0 * s) < _TAYLOR_RADIUS


def _taylor_terms(terms: tuple[_Term, ...]) -> tuple[_Term, ...]:
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
def _segments(name: str, p: tuple[float, ...], local: bool) -> tuple[_Segment, ...]:
    segs = _SPECS[name].segments(p)
    if not local:
        return segs
    return tuple((lo, hi, _taylor_terms(ft), _taylor_terms(dt)) for lo, hi, ft, dt in segs)


def _square_terms(terms: tuple[_Term, ...]) -> tuple[_Term, ...]:
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
        return 0.0 if d == 0.0 else math.copysign(_INF, d)
    return (x - mu) / s


def _trunc_moments(a: float, b: float, nmax: int) -> list[float]:
    """M_k = E[z^k 1{a < z < b}], z ~ N(0, 1), k = 0..nmax.

    Recursion M_k = (k-1) M_{k-2} + a^{k-1} phi(a) - b^{k-1} phi(b)
    (integration by parts; standard truncated-normal moments).
    """
    pa = normal_pdf(a) if math.isfinite(a) else 0.0
    pb = normal_pdf(b) if math.isfinite(b) else 0.0
    m = [_ndtr_diff(a, b)]
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
        r = 1.0 / (z * z)
        series = 1.0 - r * (1.0 - 3.0 * r * (1.0 - 5.0 * r * (1.0 - 7.0 * r * (1.0 - 9.0 * r))))
        log_val = beta * hi - (hi - mu) * (hi - mu) / (2.0 * v) - math.log(-z) - _LOG_SQRT_2PI + math.log(series)
    else:
        log_val = beta * mu + 0.5 * beta * beta * v + _log_ndtr(z)
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


def _segments_moments(name: str, p: tuple[float, ...], mu: float, v: float) -> Moments:
    s = math.sqrt(v)
    mean = second = dmean = d2 = 0.0
    for lo, hi, ft, ft2, dt, dt2 in _segment_tables(name, p, _is_local(name, p, mu, s)):
        a = _zbound(lo, mu, s)
        b = _zbound(hi, mu, s)
        if not a < b:
            continue
        nmax = max((n for group in (ft, ft2, dt, dt2) for _, n, beta in group if beta == 0.0), default=0)
        moms = _trunc_moments(a, b, nmax)
        vals = []
        for group in (ft, ft2, dt, dt2):
            x = _poly_expect(group, moms, mu, s)
            for coef, n, beta in group:
                if beta != 0.0:
                    x += coef * _exp_term(beta, hi, mu, s, v)
            vals.append(x)
        mean += vals[0]
        second += vals[1]
        dmean += vals[2]
        d2 += vals[3]
    # Cancellation in the tails can leave -1e-300-sized negatives.
    return Moments(mean, max(second, 0.0), max(d2, 0.0), dmean)


# ---------------------------------------------------------------------------
# Numerical 1D expectations
# ---------------------------------------------------------------------------


def _smooth_expect(fn: Callable[[torch.Tensor], torch.Tensor], mu: float, v: float, width: float) -> list[float]:
    """E[fn(h)] for h ~ N(mu, v); fn maps (N,) -> (k, N) or (N,). Returns k floats.

    Args:
        fn: Elementwise function(s) of h.
        mu: Mean.
        v: Variance (>= 0).
        width: Width of fn's transition region around h = 0, in h units.
    """
    if v == 0.0:
        out = fn(torch.tensor([mu], dtype=_DTYPE))
        return out.reshape(-1).tolist()
    s = math.sqrt(v)
    z, w = _rule_1d(mu, s, width)
    vals = fn(z * s + mu)
    if vals.dim() == 1:
        return [torch.dot(vals, w).item()]
    return torch.mv(vals, w).tolist()


def _rule_1d(mu: float, s: float, width: float) -> _Grid:
    """The doc's 801-point grid, or a graded rule once the transition at h = 0 is too narrow."""
    if s <= _GRID_MAX_RATIO * width:
        return _grid(_GRID_POINTS)
    # Transition narrower than ~1/10 of a standard deviation: grade towards it.
    return _kink_rule(-mu / s, _levels(width / s))


def _kinked_expect(fn, mu: float, v: float, kink: float, width: float) -> list[float]:
    """Like _smooth_expect but for a kink at h = kink with analytic pieces (softsign)."""
    if v == 0.0:
        return fn(torch.tensor([mu], dtype=_DTYPE)).reshape(-1).tolist()
    s = math.sqrt(v)
    z, w = _kink_rule((kink - mu) / s, _levels(width / s))
    vals = fn(z * s + mu)
    return torch.mv(vals, w).tolist()


def _moment_stack(pair: Callable, p) -> Callable:
    def fn(h):
        f, d = pair(h, p)
        return torch.stack((f, f * f, d * d, d))

    return fn


def _numeric_moments(name: str, spec: _Spec, p, mu: float, v: float) -> Moments:
    if spec.kind == "softsign":
        # Poles of x/(1+|x|) sit at distance 1 from the kink: refine to that scale.
        vals = _kinked_expect(_moment_stack(_pair_softsign, p), mu, v, 0.0, 1.0)
    else:
        vals = _smooth_expect(_moment_stack(spec.pair, p), mu, v, spec.width(p))
    mean, second, d2, dmean = vals
    return Moments(mean, max(second, 0.0), max(d2, 0.0), dmean)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _moments_cached(name: str, mu: float, v: float, p: tuple[float, ...]) -> Moments:
    spec = _SPECS[name]
    if spec.kind == "segments":
        return _segments_moments(name, p, mu, v)
    return _numeric_moments(name, spec, p, mu, v)


@_front_cached
def moments(name: str, mu: float, v: float, **params: float) -> Moments:
    """Gaussian moments of an activation for h ~ N(mu, v) (doc section 5, rule E1).

    Piecewise-polynomial and exponential-linear activations use exact closed
    forms for any mu; analytic ones use the doc's 801-point trapezoid grid
    (graded Gauss-Legendre once sqrt(v) exceeds 10 transition widths); softsign
    uses graded Gauss-Legendre split at its kink.

    At v == 0 the result is the v -> 0+ limit: phi and phi' at mu, except that
    when mu sits exactly on a kink of phi the derivative moments average the two
    one-sided derivatives (E[phi'] = (d- + d+)/2, E[phi'^2] = (d-^2 + d+^2)/2).

    Args:
        name: One of :data:`ACTIVATIONS`.
        mu: Mean of the pre-activation.
        v: Variance of the pre-activation (>= 0; 0 means deterministic; a
            rounding-level negative value, >= -1e-12 max(1, mu^2), counts as 0).
        **params: Activation parameters, see :data:`ACTIVATION_PARAMS`
            (e.g. ``negative_slope`` for leaky_relu, ``slope`` for prelu, ``alpha``
            for elu/celu, ``min_val``/``max_val`` for hardtanh, ``beta``/``threshold``
            for softplus). Defaults are torch's.

    Returns:
        Moments(mean=E[phi], second=E[phi^2], dphi2=E[phi'^2], dphi_mean=E[phi']).

    Raises:
        ValueError: Unknown name, non-finite mu, negative or non-finite v, or an
            invalid parameter value.
        TypeError: Unknown parameter for this activation.
    """
    spec = _spec(name)
    mu_f, v_f = _check_mu_v(mu, v)
    p = _canon_params(name, spec, params)
    return _moments_cached(name, _round_sig(mu_f), _round_sig(v_f), p)


# ---------------------------------------------------------------------------
# Cross moments
# ---------------------------------------------------------------------------


def _arccos_relu(v: float, c: float) -> Cross:
    # Cho & Saul (2009) arc-cosine kernel of degree 1 and 0 (doc 5.1).
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
        pa = torch.exp(-0.5 * a * a) * _INV_SQRT_2PI if a is not None else None
        pb = torch.exp(-0.5 * b * b) * _INV_SQRT_2PI if b is not None else None
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
    spec = _SPECS[name]
    s = math.sqrt(v)
    segs = _segments(name, p, _is_local(name, p, mu, s))
    c, r = _clip_corr(c)
    centers = []
    layer_g = r / abs(c) if c != 0.0 else _INF
    for b in _kinks(segs):
        centers.append(((b - mu) / s, 0))
        if c != 0.0:
            centers.append(((b - mu) / (s * c), _levels(layer_g, _BASE_PANEL_ENTIRE)))
    z, w = _graded_rule(tuple(centers), _BASE_PANEL_ENTIRE)
    h = z * s + mu
    m = (c * s) * z + mu
    sc = s * r
    g = _cond_expect(segs, False, m, sc)
    gd = _cond_expect(segs, True, m, sc)
    pp = torch.dot(w, spec.phi(h, p) * g).item()
    dd = torch.dot(w, spec.dphi(h, p) * gd).item()
    return Cross(pp, dd)


def _cross_grid(pair, mu: float, v: float, c: float, points: int = _GRID2D_POINTS) -> Cross:
    """2D tensor-product trapezoid: h = mu + s z1, h' = mu + s (c z1 + sqrt(1-c^2) z2) (doc 5.3).

    Evaluated as E_z1[ f(h) E_z2[f(h') | z1] ] over row blocks of <= _SERIAL_CHUNK
    elements (see there).
    """
    z, w = _grid_2d(points)
    s = math.sqrt(v)
    r = math.sqrt(max(0.0, 1.0 - c * c))
    f1, d1 = pair(z * s + mu)
    m = z * (c * s) + mu
    sz = z * (r * s)
    n = z.shape[0]
    rows = max(1, _SERIAL_CHUNK // n)
    gf = torch.empty(n, dtype=_DTYPE)
    gd = torch.empty(n, dtype=_DTYPE)
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
    centers = [((kink - mu) / s, _levels(width / s))]
    if c != 0.0:
        layer_g = max(r / abs(c), width / (s * abs(c)))
        centers.append(((kink - mu) / (s * c), _levels(layer_g)))
    z1, w1 = _graded_rule(tuple(centers))
    f1, d1 = pair(z1 * s + mu)
    m = z1 * (c * s) + mu
    sc = s * r
    levels = _levels(width / sc)
    n = z1.shape[0]
    rows = max(1, _SERIAL_CHUNK // _kink_pattern(levels)[0].shape[0])
    gf = torch.empty(n, dtype=_DTYPE)
    gd = torch.empty(n, dtype=_DTYPE)
    for i in range(0, n, rows):
        mi = m[i : i + rows]
        z2, w2 = _kink_rule_rows((kink - mi) / sc, levels)
        f2, d2 = pair(mi[:, None] + sc * z2)
        gf[i : i + rows] = (f2 * w2).sum(dim=1)
        gd[i : i + rows] = (d2 * w2).sum(dim=1)
    return Cross(torch.dot(w1, f1 * gf).item(), torch.dot(w1, d1 * gd).item())


def _cross_deterministic(name: str, spec: _Spec, p, mu: float, c: float) -> Cross:
    """v == 0: h = h' = mu. On a kink of phi, the v -> 0+ limit uses orthant probabilities."""
    t = torch.tensor([mu], dtype=_DTYPE)
    f = spec.phi(t, p).item()
    if spec.kind == "segments":
        segs = spec.segments(p)
        for i, (lo, hi, _, dt) in enumerate(segs[:-1]):
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


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cross_cached(name: str, mu: float, v: float, c: float, p: tuple[float, ...]) -> Cross:
    spec = _SPECS[name]
    if v == 0.0:
        return _cross_deterministic(name, spec, p, mu, c)
    if c == 1.0:
        mo = _moments_cached(name, mu, v, p)
        return Cross(mo.second, mo.dphi2)
    if c == 0.0:
        mo = _moments_cached(name, mu, v, p)
        return Cross(mo.mean * mo.mean, mo.dphi_mean * mo.dphi_mean)
    if name == "identity":
        return Cross(mu * mu + c * v, 1.0)
    if mu == 0.0 and name == "relu":
        return _arccos_relu(v, c)
    if mu == 0.0 and name in ("leaky_relu", "prelu"):
        return _arccos_leaky(v, c, p[0])
    if spec.kind == "segments":
        return _cross_segments(name, p, mu, v, c)

    if spec.kind == "softsign":
        return _cross_graded2d(lambda h: _pair_softsign(h, p), mu, v, c, 0.0, 1.0)

    def pair(h):
        return spec.pair(h, p)

    width = spec.width(p)
    if math.sqrt(v) <= _GRID2D_MAX_RATIO * width:
        return _cross_grid(pair, mu, v, c)
    return _cross_graded2d(pair, mu, v, c, 0.0, width)


@_front_cached
def cross(name: str, mu: float, v: float, c: float, **params: float) -> Cross:
    """Cross moments E[phi(h)phi(h')], E[phi'(h)phi'(h')] (doc 5.1, rule E1's k' and r_in).

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
    spec = _spec(name)
    mu_f, v_f = _check_mu_v(mu, v)
    c_f = float(c)
    if not (-1.0 - 1e-9 <= c_f <= 1.0 + 1e-9):
        raise ValueError(f"c={c!r} must be a correlation in [-1, 1]")
    c_f = max(-1.0, min(1.0, c_f))
    if abs(c_f) < 1e-12:
        c_f = 0.0  # the result differs from c = 0 by O(c); avoids 1/c overflow
    p = _canon_params(name, spec, params)
    return _cross_cached(name, _round_sig(mu_f), _round_sig(v_f), _round_sig(c_f), p)


# ---------------------------------------------------------------------------
# Generic expectations and gate moments (doc section 6)
# ---------------------------------------------------------------------------


def _sigmoid_sq(h):
    return torch.sigmoid(h).square()


def _sigmoid_deriv_sq(h):
    sg = torch.sigmoid(h)
    return (sg * (1.0 - sg)).square()


def _tanh_sq(h):
    return torch.tanh(h).square()


def _tanh_deriv_sq(h):
    t = torch.tanh(h)
    return (1.0 - t * t).square()


_EXPECT_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid_sq": _sigmoid_sq,
    "sigmoid_deriv_sq": _sigmoid_deriv_sq,
    "tanh_sq": _tanh_sq,
    "tanh_deriv_sq": _tanh_deriv_sq,
}


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _expect_cached(fn: Callable, mu: float, v: float) -> float:
    return _smooth_expect(fn, mu, v, 1.0)[0]


@_front_cached
def expect(fn: str | Callable[[torch.Tensor], torch.Tensor], mu: float, v: float) -> float:
    """Generic Gaussian expectation E[f(h)], h ~ N(mu, v).

    Args:
        fn: Either a name -- an activation from :data:`ACTIVATIONS` (gives
            ``moments(name, mu, v).mean``, closed form where available), or one of
            ``"sigmoid_sq"``, ``"sigmoid_deriv_sq"`` ((sigma(1-sigma))^2),
            ``"tanh_sq"``, ``"tanh_deriv_sq"`` ((1-tanh^2)^2) -- or a torch
            elementwise callable mapping a float64 tensor to a tensor of the same
            shape. Callables are evaluated on the 801-point grid (graded
            Gauss-Legendre around h = 0 once sqrt(v) > 10), so they should be
            smooth with their features on the unit scale; results are cached per
            callable object.
        mu: Mean.
        v: Variance (>= 0; 0 evaluates f(mu)).

    Returns:
        E[f(h)] as a float.

    Raises:
        ValueError: Unknown name or invalid mu/v.
        TypeError: fn is neither a name nor a callable.
    """
    if isinstance(fn, str):
        if fn in _SPECS:
            return moments(fn, mu, v).mean
        try:
            fn = _EXPECT_FUNCTIONS[fn]
        except KeyError:
            raise ValueError(
                f"unknown function name fn={fn!r}; use an activation name, one of "
                f"{sorted(_EXPECT_FUNCTIONS)}, or a callable"
            ) from None
    elif not callable(fn):
        raise TypeError(f"fn={fn!r} must be a name or a callable")
    mu_f, v_f = _check_mu_v(mu, v)
    return _expect_cached(fn, _round_sig(mu_f), _round_sig(v_f))


def _eval_with_grad(fn: Callable, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(h) and its elementwise derivative by autograd (fn must act elementwise)."""
    x = h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y, dtype=x.dtype)
        if y.requires_grad:
            (d,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        else:
            d = None
    if d is None:  # piecewise-constant or non-differentiable: phi' = 0 a.e.
        d = torch.zeros_like(x)
    return y.detach().to(_DTYPE).expand_as(x), d.detach().to(_DTYPE)


_EXPECT_FN_CACHE: dict = {}


def _expect_fn_moments(fn: Callable, mu: float, v: float) -> Moments:
    if v == 0.0:
        z, w, s = torch.zeros(1, dtype=_DTYPE), torch.ones(1, dtype=_DTYPE), 0.0
    else:
        s = math.sqrt(v)
        z, w = _rule_1d(mu, s, 1.0)
    h = z * s + mu
    try:
        f, d = _eval_with_grad(fn, h)
    except RuntimeError:
        # Modules holding float32 parameters reject float64 input.
        f, d = _eval_with_grad(fn, h.to(torch.float32))
    mean, second, d2, dmean = torch.mv(torch.stack((f, f * f, d * d, d)), w).tolist()
    return Moments(mean, max(second, 0.0), max(d2, 0.0), dmean)


def expect_fn(fn: Callable[[torch.Tensor], torch.Tensor], mu: float, v: float, *, key=None) -> Moments:
    """All four moments of an arbitrary elementwise torch callable, phi' by autograd.

    For ops without a rule of their own (a user activation module, ``torch.exp``,
    a lambda wrapping an aten op): E[f], E[f^2], E[f'^2], E[f'] for h ~ N(mu, v)
    on the 801-point grid (graded Gauss-Legendre once sqrt(v) > 10). Kinks in f
    limit the accuracy to O(1e-3) (doc 5.3); prefer :func:`moments` for named
    activations.

    Args:
        fn: Elementwise callable (function or parameter-free module); it is run on
            a float64 tensor (float32 if float64 raises) under ``enable_grad``.
        mu: Mean.
        v: Variance (>= 0).
        key: Hashable cache key identifying fn; defaults to fn itself. Pass one
            when fn is rebuilt on every call (a fresh lambda) or unhashable.

    Returns:
        Moments(mean, second, dphi2, dphi_mean) of f.

    Raises:
        ValueError: Invalid mu/v.
        TypeError: fn is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn={fn!r} must be callable")
    mu_f, v_f = _check_mu_v(mu, v)
    mu_r, v_r = _round_sig(mu_f), _round_sig(v_f)
    # Keyed on `key` only (not on fn), so rebuilt closures still hit the cache.
    cache_key = (fn if key is None else key, mu_r, v_r)
    try:
        hit = _EXPECT_FN_CACHE.get(cache_key)
    except TypeError:  # unhashable fn and no key: compute uncached
        return _expect_fn_moments(fn, mu_r, v_r)
    if hit is None:
        hit = _expect_fn_moments(fn, mu_r, v_r)
        _front_put(_EXPECT_FN_CACHE, cache_key, hit)
    return hit


def _gate_stack(h):
    sg = torch.sigmoid(h)
    d = sg * (1.0 - sg)
    return torch.stack((sg, sg * sg, d * d))


def _tanh_stack(h):
    t = torch.tanh(h)
    t2 = t * t
    d = 1.0 - t2
    return torch.stack((t2, d * d))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _gate_cached(mu: float, v: float) -> GateMoments:
    return GateMoments(*_smooth_expect(_gate_stack, mu, v, 1.0))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _tanh_cached(mu: float, v: float) -> TanhMoments:
    return TanhMoments(*_smooth_expect(_tanh_stack, mu, v, 1.0))


@_front_cached
def gate_moments(mu: float, v: float) -> GateMoments:
    """Sigmoid gate moments for LSTM/GRU rules R2/R3 (doc section 6).

    Args:
        mu: Mean of the gate pre-activation (the chunk's bias mean).
        v: Variance of the gate pre-activation.

    Returns:
        GateMoments(mean=E[sigma], second=E[sigma^2], deriv_sq=E[(sigma(1-sigma))^2]).
    """
    mu_f, v_f = _check_mu_v(mu, v)
    return _gate_cached(_round_sig(mu_f), _round_sig(v_f))


@_front_cached
def tanh_moments(mu: float, v: float) -> TanhMoments:
    """Tanh moments for LSTM/GRU rules R2/R3 (doc section 6).

    Args:
        mu: Mean of the pre-activation (0 for the LSTM cell state c_t).
        v: Variance of the pre-activation.

    Returns:
        TanhMoments(second=E[tanh^2], deriv_sq=E[(1 - tanh^2)^2]).
    """
    mu_f, v_f = _check_mu_v(mu, v)
    return _tanh_cached(_round_sig(mu_f), _round_sig(v_f))


# ---------------------------------------------------------------------------
# Softmax moments (doc 4.5, rule S1; causal variant for 4.6)
# ---------------------------------------------------------------------------
#
# The doc prescribes Monte Carlo with ~4e5 logits. Measured against 4e7-logit
# runs, that budget leaves relative errors of 3-10% in S3/S22 at K = 128, v = 1
# and 20-100% at K = 4096, v = 4 (the e^{kx} weights are heavy-tailed), so the
# moments are computed deterministically instead, from the Laplace identity
#
#     1/y^p = 1/(p-1)! * int_0^inf t^(p-1) e^{-t y} dt,   y = sum_j e^{x_j},
#
# which factorises over the i.i.d. logits x_j ~ N(0, v). With t = e^u and
# A_k(u) = E[exp(k (x+u) - e^{x+u})], L(u) = E[exp(-e^{x+u})]:
#
#     S2(n)  = n       int A2 L^{n-1} du
#     S3(n)  = n / 2   int A3 L^{n-1} du
#     S22(n) = 1 / 6   int (n A4 L^{n-1} + n (n-1) A2^2 L^{n-2}) du
#
# A_k and L are 1D Gaussian expectations (trapezoid in z, spacing <= 0.3/sqrt(v):
# the integrand is analytic in a strip of half-width pi/(2 sqrt v)); the u
# integrand is doubly-exponentially decaying and analytic in |Im u| < pi/2, so a
# trapezoid with spacing 1/4 converges to ~1e-12 (measured against halved
# spacings). One set of A_k, L serves every n, which makes the causal average
# over prefix lengths cheap. Monte Carlo remains only for v > 400, where the
# softmax is essentially one-hot and sampling is accurate.

_SOFTMAX_QUAD_MAX_V = 400.0
_SOFTMAX_U_STEP = 0.25
_SOFTMAX_Z_HALF_WIDTH = 9.0
# Causal average: prefix lengths up to this many are summed exactly, longer ones
# by the midpoint rule sum_{n=a..b} f(n) ~ int_{a-1/2}^{b+1/2} f (relative error
# ~1/(24 a^2)) with Gauss-Legendre in log n.
_SOFTMAX_EXACT_PREFIX = 256
_SOFTMAX_TAIL_NODES = 48

_SOFTMAX_SEED = 20240531
_SOFTMAX_LOGITS = 400_000
_SOFTMAX_MIN_ROWS = 64
_SOFTMAX_POOL_CHUNK = 400_000
_softmax_pool: list[torch.Tensor] = []
_softmax_gen: list[torch.Generator] = []


class _Laplace(NamedTuple):
    log_l: torch.Tensor  # log L(u), clamped away from -inf
    a2: torch.Tensor
    a3: torch.Tensor
    a4: torch.Tensor


def _softmax_laplace(v: float, n_max: int) -> _Laplace:
    """A_2, A_3, A_4 and log L on the u grid (see the block comment above)."""
    s = math.sqrt(v)
    hz = min(0.5, 0.3 / s)
    nz = math.ceil(_SOFTMAX_Z_HALF_WIDTH / hz)
    z = torch.arange(-nz, nz + 1, dtype=_DTYPE) * hz
    wz = torch.exp(-0.5 * z * z)
    wz = wz / wz.sum()
    x = z * s
    # Below u_lo every A_k is < (e^-25 / n)^k; above u_hi, exp(-e^{x+u}) < e^-400.
    u_lo = -math.log(n_max) - _SOFTMAX_Z_HALF_WIDTH * s - 25.0
    u_hi = _SOFTMAX_Z_HALF_WIDTH * s + 6.0
    nu = math.ceil((u_hi - u_lo) / _SOFTMAX_U_STEP)
    u = u_lo + torch.arange(nu + 1, dtype=_DTYPE) * _SOFTMAX_U_STEP
    out = torch.empty(4, u.numel(), dtype=_DTYPE)
    rows = max(1, _SERIAL_CHUNK // x.numel())
    for i in range(0, u.numel(), rows):
        y = u[i : i + rows, None] + x
        e = torch.exp(y)  # inf for y > 709 is fine: every use is exp(k y - e)
        out[0, i : i + rows] = torch.mv(torch.expm1(-e).neg_(), wz)  # 1 - L, no cancellation
        for k in (2, 3, 4):
            out[k - 1, i : i + rows] = torch.mv(torch.exp(k * y - e), wz)
    # 1 - L is a weighted mean of values <= 1 whose weights sum to 1: rounding can push it a
    # hair above 1, where log1p gives NaN.
    log_l = torch.log1p(-out[0].clamp(max=1.0)).clamp(min=-1e300)  # -1e300 * 0 = 0 at n = 1
    return _Laplace(log_l, out[1], out[2], out[3])


def _softmax_from_laplace(lap: _Laplace, ns: torch.Tensor) -> torch.Tensor:
    """(3, N) tensor of S2, S3, S22 for the key counts ns (float tensor)."""
    hu = _SOFTMAX_U_STEP
    a22 = lap.a2 * lap.a2
    out = torch.empty(3, ns.numel(), dtype=_DTYPE)
    rows = max(1, _SERIAL_CHUNK // lap.log_l.numel())
    for i in range(0, ns.numel(), rows):
        n = ns[i : i + rows]
        p1 = torch.exp((n - 1.0)[:, None] * lap.log_l)
        p2 = torch.exp((n - 2.0).clamp(min=0.0)[:, None] * lap.log_l)
        out[0, i : i + rows] = n * hu * torch.mv(p1, lap.a2)
        out[1, i : i + rows] = n * (0.5 * hu) * torch.mv(p1, lap.a3)
        out[2, i : i + rows] = (hu / 6.0) * (n * torch.mv(p1, lap.a4) + n * (n - 1.0) * torch.mv(p2, a22))
    return out


@functools.lru_cache(maxsize=256)
def _causal_nodes(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key counts n and weights w with sum_n w_n f(n) ~ sum_{n=1..k} f(n)."""
    a = _SOFTMAX_EXACT_PREFIX
    if k <= 2 * a:
        ns = torch.arange(1, k + 1, dtype=_DTYPE)
        return ns, torch.ones_like(ns)
    t, wr = _gauss_legendre(_SOFTMAX_TAIL_NODES)
    lo, hi = math.log(a + 0.5), math.log(k + 0.5)
    x = torch.exp(0.5 * (hi + lo) + 0.5 * (hi - lo) * t)
    wx = 0.5 * (hi - lo) * wr * x  # dx = x d(log x)
    ns = torch.cat((torch.arange(1, a + 1, dtype=_DTYPE), x))
    return ns, torch.cat((torch.ones(a, dtype=_DTYPE), wx))


def _softmax_quadrature(k: int, v: float, causal: bool) -> SoftmaxMoments:
    lap = _softmax_laplace(v, k)
    if not causal:
        s2, s3, s22 = _softmax_from_laplace(lap, torch.tensor([float(k)], dtype=_DTYPE))[:, 0].tolist()
        return SoftmaxMoments(s2, s3, s22)
    ns, wn = _causal_nodes(k)
    s2, s3, s22 = (torch.mv(_softmax_from_laplace(lap, ns), wn) / k).tolist()
    return SoftmaxMoments(s2, s3, s22)


def _normal_pool(n: int) -> torch.Tensor:
    """The first n draws of a fixed-seed standard-normal stream (grown in fixed chunks)."""
    if not _softmax_gen:
        _softmax_gen.append(torch.Generator().manual_seed(_SOFTMAX_SEED))
    have = sum(t.numel() for t in _softmax_pool)
    while have < n:
        chunk = torch.randn(_SOFTMAX_POOL_CHUNK, dtype=_DTYPE, generator=_softmax_gen[0])
        _softmax_pool.append(chunk)
        have += chunk.numel()
    if len(_softmax_pool) > 1:
        merged = torch.cat(_softmax_pool)
        _softmax_pool.clear()
        _softmax_pool.append(merged)
    return _softmax_pool[0][:n]


def _softmax_rows(k: int) -> int:
    return max(-(-_SOFTMAX_LOGITS // k), _SOFTMAX_MIN_ROWS)


def _softmax_mc(k: int, v: float, causal: bool) -> SoftmaxMoments:
    """Deterministic Monte Carlo (fixed-seed stream), for v beyond the quadrature's range.

    Causal: all prefixes of a row at once from prefix sums of e^x, e^2x, e^3x,
    in log space (v > 400 makes the one-shift-per-row form underflow).
    """
    rows = _softmax_rows(k)
    z = _normal_pool(rows * k).view(rows, k)
    sd = math.sqrt(v)
    step = max(1, _SERIAL_CHUNK // k)
    acc = torch.zeros(3, dtype=_DTYPE)
    for i in range(0, rows, step):
        x = z[i : i + step] * sd
        if causal:
            l1 = torch.logcumsumexp(x, dim=1)
            s2 = torch.exp(torch.logcumsumexp(2.0 * x, dim=1) - 2.0 * l1)
            s3 = torch.exp(torch.logcumsumexp(3.0 * x, dim=1) - 3.0 * l1)
        else:
            a = torch.softmax(x, dim=1)
            a2 = a * a
            s2 = a2.sum(dim=1)
            s3 = (a2 * a).sum(dim=1)
        acc += torch.stack((s2.sum(), s3.sum(), (s2 * s2).sum()))
    s2, s3, s22 = (acc / (rows * k if causal else rows)).tolist()
    return SoftmaxMoments(s2, s3, s22)


def _harmonic_sums(k: int) -> tuple[float, float]:
    """(sum_{n<=k} 1/n, sum_{n<=k} 1/n^2): exact loop for small k, Euler-Maclaurin above."""
    if k <= 4096:
        return math.fsum(1.0 / n for n in range(1, k + 1)), math.fsum(1.0 / (n * n) for n in range(1, k + 1))
    x = float(k)
    harmonic = math.log(x) + 0.5772156649015329 + 1.0 / (2 * x) - 1.0 / (12 * x * x) + 1.0 / (120 * x**4)
    tail2 = 1.0 / x - 1.0 / (2 * x * x) + 1.0 / (6 * x**3) - 1.0 / (30 * x**5)
    return harmonic, math.pi**2 / 6.0 - tail2


@functools.lru_cache(maxsize=1024)
def _softmax_cached(k: int, v: float, causal: bool) -> SoftmaxMoments:
    if k == 1:
        return SoftmaxMoments(1.0, 1.0, 1.0)
    if v == 0.0:
        # Uniform attention: S2 = 1/n, S3 = S22 = 1/n^2 exactly.
        if not causal:
            return SoftmaxMoments(1.0 / k, 1.0 / k**2, 1.0 / k**2)
        inv1, inv2 = _harmonic_sums(k)
        return SoftmaxMoments(inv1 / k, inv2 / k, inv2 / k)
    if v <= _SOFTMAX_QUAD_MAX_V:
        return _softmax_quadrature(k, v, causal)
    return _softmax_mc(k, v, causal)


@_front_cached
def softmax_moments(K: int, v: float, causal: bool = False) -> SoftmaxMoments:
    """Softmax moments S2, S3, S22 for rule S1 (doc 4.5) and attention (doc 4.6).

    The K logits of a row are i.i.d. N(0, v): v is the variance of the part of
    the scores that varies across keys (a shift common to the row does not
    change the softmax). Computed deterministically by quadrature of a Laplace
    transform identity (accurate to ~1e-10, 1-3 ms for any K; see the comment
    above the implementation), because the doc's ~4e5-logit Monte Carlo is off
    by 3-100% in S3/S22 once K and v are both large. For v > 400 (essentially
    one-hot attention) a fixed-seed Monte Carlo with max(ceil(4e5 / K), 64)
    rows is used instead. Cached by (K, v rounded to ~7 digits, causal).

    With ``causal=True`` the result is the average over query positions
    t = 0..K-1 of the moments with t + 1 keys.

    Args:
        K: Number of keys (softmax length), >= 1.
        v: Logit variance (>= 0; inf gives the one-hot limit).
        causal: Average over causal prefixes instead of full rows.

    Returns:
        SoftmaxMoments(S2=E[sum a^2], S3=E[sum a^3], S22=E[(sum a^2)^2]).

    Raises:
        ValueError: K not a positive integer, or invalid v.
    """
    k = _positive_int("K", K)
    if v == math.inf:
        # Scores whose variance overflowed float64: one-hot attention, the v -> inf limit.
        return SoftmaxMoments(1.0, 1.0, 1.0)
    _, v_f = _check_mu_v(0.0, v)
    return _softmax_cached(k, _round_sig(v_f), bool(causal))


# ---------------------------------------------------------------------------
# Max of normals (doc 4.3, rule P3)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _max_normal_cached(n: int) -> MaxNormalMoments:
    if n == 1:
        return MaxNormalMoments(0.0, 1.0)
    z, w = _grid(_GRID_POINTS)
    # Density of the max is n phi(z) Phi(z)^(n-1); the grid weights carry phi(z).
    dens = n * torch.exp((n - 1) * torch.special.log_ndtr(z))
    e1 = torch.dot(w, dens * z).item()
    e2 = torch.dot(w, dens * z * z).item()
    return MaxNormalMoments(e1, e2)


@_front_cached
def max_normal_moments(n: int) -> MaxNormalMoments:
    """First two moments of the max of n i.i.d. standard normals (doc 4.3, rule P3).

    Computed by 1D quadrature of n z^k phi(z) Phi(z)^(n-1) on the 801-point grid
    (log Phi for accuracy at large n). Max-pool output: q' = mu^2 + 2 mu sqrt(v) e1
    + v e2 for window entries i.i.d. N(mu, v).

    Args:
        n: Window size (number of elements), >= 1.

    Returns:
        MaxNormalMoments(e1=E[max], e2=E[max^2]); n=2: (0.5642, 1), n=4:
        (1.0294, 1.5513), n=9: (1.4850, 2.5626).

    Raises:
        ValueError: n is not a positive integer.
    """
    return _max_normal_cached(_positive_int("n", n))
