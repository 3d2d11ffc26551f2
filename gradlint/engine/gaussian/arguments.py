"""Argument checks and the two-level cache in front of every public Gaussian function.

Arguments are rounded to 7 significant decimal digits before the memoised computation
(``functools.lru_cache`` of ``CACHE_SIZE`` entries), and a plain dict keyed on the raw
arguments in front of it makes repeated identical calls cost well under a microsecond.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable

CACHE_SIZE = 1 << 16
_NEG_V_TOL = 1e-12
_FRONT_MAX = 1 << 16


def round_sig(x: float) -> float:
    """x rounded to 7 significant decimal digits (relative change <= 5e-7); inf and nan unchanged.

    Inputs that differ only by floating-point noise share a cache entry, and short decimals
    (0.01, 0.25, 1/3 -> 0.3333333) stay exactly what the caller wrote.
    """
    return float(f"{x:.7g}")


def positive_int(label: str, x) -> int:
    try:
        if isinstance(x, bool):
            raise TypeError
        k = operator.index(x)
    except TypeError:
        raise ValueError(f"{label}={x!r} must be a positive integer") from None
    if k < 1:
        raise ValueError(f"{label}={x!r} must be a positive integer")
    return k


def check_mu_v(mu: float, v: float) -> tuple[float, float]:
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


def front_put(front: dict, key: tuple, value) -> None:
    if len(front) >= _FRONT_MAX:
        front.clear()
    front[key] = value


def front_cached(fn: Callable) -> Callable:
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
            front_put(front, key, hit)
        return hit

    wrapper.cache_clear = front.clear  # type: ignore[attr-defined]
    return wrapper
