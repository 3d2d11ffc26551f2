"""Order statistics of i.i.d. standard normals (docs/design.md §4.3): the max (max pooling,
P3) and the mean of the k largest (``torch.topk`` values).

Both integrate the order statistic's density on a uniform grid. They give the same moments
for k = 1 to ~1e-14 but not to the last digit (the max weighs phi into the grid, the top k
carries it in the log-density), and predictions keep each one's digits.
"""

from __future__ import annotations

import functools
import math

import torch

from gradlint.engine.gaussian.arguments import front_cached, positive_int
from gradlint.engine.gaussian.quadrature import DTYPE, normal_grid, trapezoid
from gradlint.engine.gaussian.results import MaxNormalMoments, TopkMoments

_TOPK_POINTS = 2001
# Beyond this many order statistics per side the large-n limit (a normal truncated at the
# (1 - k/n) quantile) is used; its error is O(1/n) relative there.
_EXACT_MAX_TERMS = 2048


@functools.lru_cache(maxsize=1024)
def _max_normal_cached(n: int) -> MaxNormalMoments:
    if n == 1:
        return MaxNormalMoments(0.0, 1.0)
    z, w = normal_grid()
    # Density of the max is n phi(z) Phi(z)^(n-1); the grid weights carry phi(z).
    dens = n * torch.exp((n - 1) * torch.special.log_ndtr(z))
    e1 = torch.dot(w, dens * z).item()
    e2 = torch.dot(w, dens * z * z).item()
    return MaxNormalMoments(e1, e2)


@front_cached
def max_normal_moments(n: int) -> MaxNormalMoments:
    """First two moments of the max of n i.i.d. standard normals (§4.3 (P3)).

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
    return _max_normal_cached(positive_int("n", n))


def topk_normal_moments(n: int, k: int) -> TopkMoments:
    """Mean first and second moments of the k largest of n i.i.d. N(0, 1).

    The k largest have the summed density n phi(z) P(Binomial(n - 1, 1 - Phi(z)) <= k - 1)
    (z is among the top k when at most k - 1 of the others exceed it). For k > n/2 the
    complement is used: the n values sum to 0 and their squares to n in expectation.
    """
    n, k = int(n), int(k)
    if n < 1 or k < 1:
        return TopkMoments(0.0, 1.0)
    k = min(k, n)
    return _topk_cached(n, k)


@functools.lru_cache(maxsize=1024)
def _topk_cached(n: int, k: int) -> TopkMoments:
    if k == n:
        return TopkMoments(0.0, 1.0)
    if k > n - k:
        lo = _topk_cached(n, n - k)  # the n - k smallest are the n - k largest of -Z
        m = n - k
        return TopkMoments((0.0 + m * lo.e1) / k, (n - m * lo.e2) / k)
    if k > _EXACT_MAX_TERMS:
        f = k / n
        z = _normal_quantile(1.0 - f)
        pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return TopkMoments(pdf / f, 1.0 + z * pdf / f)
    z, w = trapezoid(_TOPK_POINTS)
    log_phi = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    log_cdf = torch.special.log_ndtr(z)  # log P(other < z)
    log_sf = torch.special.log_ndtr(-z)  # log P(other > z)
    j = torch.arange(k, dtype=DTYPE).unsqueeze(1)  # number of the others above z
    log_binom = (torch.lgamma(torch.tensor(float(n), dtype=DTYPE)) - torch.lgamma(j + 1)
                 - torch.lgamma(n - j))
    log_terms = log_binom + j * log_sf + (n - 1 - j) * log_cdf
    dens = n * torch.exp(log_phi + torch.logsumexp(log_terms, dim=0))
    e1 = float(torch.sum(w * dens * z)) / k
    e2 = float(torch.sum(w * dens * z * z)) / k
    return TopkMoments(e1, e2)


def _normal_quantile(p: float) -> float:
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(2.0 * p - 1.0, dtype=DTYPE)))


@functools.lru_cache(maxsize=1024)
def max_relu_moments(n: int, mu: float, sigma: float) -> tuple[float, float, float]:
    """relu of the max of n i.i.d. N(mu, sigma²), the output of a ReLU then a max pool
    (max and ReLU commute): (E[relu(M)], E[relu(M)²], P(M > 0)), docs/design.md §4.3 (P3).

    The density n phi(z) Phi(z)^(n-1) of the standard max is integrated by the trapezoid rule
    from the ReLU's kink z0 = -mu/sigma, where the integrand is smooth; P(M > 0) is exact."""
    n = positive_int("n", n)
    if not sigma > 0:
        m = max(mu, 0.0)
        return m, m * m, 1.0 if mu > 0 else 0.0
    z0 = max(-mu / sigma, -10.0)
    p_open = -math.expm1(n * float(torch.special.log_ndtr(torch.tensor(z0, dtype=DTYPE))))
    if z0 >= 10.0:
        return 0.0, 0.0, p_open
    z = torch.linspace(z0, 10.0, _TOPK_POINTS, dtype=DTYPE)
    dens = n * torch.exp(-0.5 * z * z + (n - 1) * torch.special.log_ndtr(z)) / math.sqrt(2 * math.pi)
    h = mu + sigma * z
    w = torch.full_like(z, (10.0 - z0) / (_TOPK_POINTS - 1))
    w[0] = w[-1] = w[1] / 2
    return torch.dot(w, dens * h).item(), torch.dot(w, dens * h * h).item(), p_open
