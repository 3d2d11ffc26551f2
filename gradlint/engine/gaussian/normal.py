"""The standard normal's density and distribution function, accurate in both tails."""

from __future__ import annotations

import math

SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_cdf(x: float) -> float:
    """Standard normal CDF Phi(x).

    Uses ``math.erfc`` rather than ``1 + erf`` so that the lower tail keeps its
    relative precision (Phi(-30) ~ 5e-198 instead of 0).

    Args:
        x: Point at which to evaluate; +-inf allowed.

    Returns:
        Phi(x) in [0, 1].
    """
    return 0.5 * math.erfc(-x / SQRT2)


def normal_pdf(x: float) -> float:
    """Standard normal density phi(x) = exp(-x^2/2) / sqrt(2 pi).

    Args:
        x: Point at which to evaluate; +-inf allowed (gives 0).

    Returns:
        The density at x.
    """
    return INV_SQRT_2PI * math.exp(-0.5 * x * x)


def mills_series(x: float) -> float:
    """The asymptotic (Mills ratio) series of Phi(x) / (phi(x) / -x) for x <= -30.

    Phi(x) = phi(x) / -x * series, with truncation error < 1e-14 there, where erfc itself
    would underflow further out.
    """
    r = 1.0 / (x * x)
    return 1.0 - r * (1.0 - 3.0 * r * (1.0 - 5.0 * r * (1.0 - 7.0 * r * (1.0 - 9.0 * r))))


def log_ndtr(x: float) -> float:
    """log Phi(x), accurate in both tails (used by the exponential closed forms)."""
    if x > 5.0:
        return math.log1p(-0.5 * math.erfc(x / SQRT2))
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / SQRT2))
    return -0.5 * x * x - math.log(-x) - LOG_SQRT_2PI + math.log(mills_series(x))


def ndtr_diff(a: float, b: float) -> float:
    """Phi(b) - Phi(a) for a <= b, computed on the side that avoids cancellation."""
    if a > 0.0:
        return normal_cdf(-a) - normal_cdf(-b)
    return normal_cdf(b) - normal_cdf(a)
