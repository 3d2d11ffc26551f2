"""Moments of top-k selection and of mixture-of-experts routing weights.

* :func:`topk_normal_moments` -- the mean first and second moment of the k largest of n
  i.i.d. standard normals (``torch.topk`` values; k = 1 is the max of rule P3).
* :func:`router_moments` -- for the routing weights of a mixture of experts, the top k of
  ``softmax(z)`` over E experts with logits z ~ N(0, v) i.i.d. per expert (the softmax
  rule S1's assumption), optionally renormalized to sum to 1 (Mixtral): the weights' first
  and second moments, and E[||dw/dz||_F^2], which carries the gradient back to the logits.

Renormalized top-k probabilities are a softmax over the selected logits only:
w_j = exp(z_j) / sum_{i in T} exp(z_i), so dw_j/dz_i = w_j (1[i = j] - w_i) for i in T and 0
elsewhere. Without renormalization w_j = a_j (the full softmax) and
dw_j/dz_i = a_j (1[i = j] - a_i) over all E logits. Either way, with the gradients of the k
weights uncorrelated (each reaches its weight through a different expert) and second moment
s_w, the logits receive E[delta_z^2] = s_w * E[||J||_F^2] / E per element.

Both are deterministic and memoised (float64, CPU): order statistics by quadrature of
their densities on a uniform grid, routing moments by a fixed-seed Monte Carlo.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

_DTYPE = torch.float64
_GRID_POINTS = 2001
_GRID_HALF_WIDTH = 10.0
# Beyond this many order statistics per side the large-n limit (a normal truncated at the
# (1 - k/n) quantile) is used; its error is O(1/n) relative there.
_EXACT_MAX_TERMS = 2048
_ROUTER_SEED = 20250611
_ROUTER_LOGITS = 1 << 18  # logits drawn in total: 2^18 / E rows (sampling error < 0.5%)
_ROUTER_MIN_ROWS = 16384
_V_GRID = (1e-6, 1e6)  # logit variances interpolated on a grid; outside it, computed as given
_V_STEP = 0.05  # grid step in log10 v
_C_STEP = 0.02  # grid step in the logits' correlation between two tokens


class TopkMoments(NamedTuple):
    """Mean over the k selected entries of E[Z] and E[Z^2], Z standard normal order statistics."""

    e1: float
    e2: float


class RouterMoments(NamedTuple):
    """Routing-weight moments per selected slot, and the Jacobian's mean squared norm.

    Attributes:
        mean: E[w_j], averaged over the k slots.
        second: E[w_j^2], averaged over the k slots.
        jac: E[sum_{j, i} (dw_j/dz_i)^2] per token (k weights, E logits).
    """

    mean: float
    second: float
    jac: float


def _round_sig(x: float) -> float:
    return float(f"{x:.7g}") if math.isfinite(x) else x


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
    z = torch.linspace(-_GRID_HALF_WIDTH, _GRID_HALF_WIDTH, _GRID_POINTS, dtype=_DTYPE)
    log_phi = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    log_cdf = torch.special.log_ndtr(z)  # log P(other < z)
    log_sf = torch.special.log_ndtr(-z)  # log P(other > z)
    j = torch.arange(k, dtype=_DTYPE).unsqueeze(1)  # number of the others above z
    log_binom = (torch.lgamma(torch.tensor(float(n), dtype=_DTYPE)) - torch.lgamma(j + 1)
                 - torch.lgamma(n - j))
    log_terms = log_binom + j * log_sf + (n - 1 - j) * log_cdf
    dens = n * torch.exp(log_phi + torch.logsumexp(log_terms, dim=0))
    h = z[1] - z[0]
    w = torch.full_like(z, float(h))
    w[0] *= 0.5
    w[-1] *= 0.5
    e1 = float(torch.sum(w * dens * z)) / k
    e2 = float(torch.sum(w * dens * z * z)) / k
    return TopkMoments(e1, e2)


def _normal_quantile(p: float) -> float:
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(2.0 * p - 1.0, dtype=_DTYPE)))


def router_moments(experts: int, k: int, v: float, normalize: bool) -> RouterMoments:
    """Moments of the top-k routing weights of softmax(z) over ``experts`` logits.

    Args:
        experts: Number of experts E (softmax length).
        k: Experts chosen per token.
        v: Variance of the logits across experts (a shift common to a token's logits
            changes nothing).
        normalize: Whether the k chosen probabilities are divided by their sum.
    """
    e, k = max(int(experts), 1), max(int(k), 1)
    k = min(k, e)
    if v == math.inf or (isinstance(v, float) and math.isnan(v)):
        # One-hot softmax: one weight 1 (normalized: the top one), the rest 0, no gradient.
        return RouterMoments(1.0 / k, 1.0 / k, 0.0)
    v = max(float(v), 0.0)
    if not _V_GRID[0] < v < _V_GRID[1]:
        return _router_cached(e, k, _round_sig(v), bool(normalize))
    # Linear in log v between the nodes of a grid 10^0.05 apart: the layers of one model
    # (each its own v) share the nodes. The moments are smooth in v (the draws are common to
    # all v), and the interpolation error is below 0.5%.
    x = math.log10(v) / _V_STEP
    lo = math.floor(x)
    a = _router_cached(e, k, _round_sig(10 ** (lo * _V_STEP)), bool(normalize))
    b = _router_cached(e, k, _round_sig(10 ** ((lo + 1) * _V_STEP)), bool(normalize))
    t = x - lo
    return RouterMoments(*((1 - t) * p + t * q for p, q in zip(a, b)))


@functools.lru_cache(maxsize=16)
def _normals(e: int, stream: int = 0) -> torch.Tensor:
    # The same draws for every v (common random numbers): a model's layers differ in v only,
    # and each new v costs a softmax and a top-k, not a fresh sample.
    rows = max(_ROUTER_LOGITS // e, _ROUTER_MIN_ROWS)
    return torch.randn(rows, e, dtype=_DTYPE, generator=torch.Generator().manual_seed(_ROUTER_SEED + stream))


@functools.lru_cache(maxsize=1024)
def _router_cached(e: int, k: int, v: float, normalize: bool) -> RouterMoments:
    z = _normals(e) * math.sqrt(v)
    a = torch.softmax(z, dim=-1)
    top, idx = torch.topk(a, k, dim=-1)
    if normalize:
        w = top / top.sum(dim=-1, keepdim=True)
        # Softmax over the selected logits: ||J||^2 = sum_j w_j^2 ((1 - w_j)^2 + sum_{i != j} w_i^2).
        s2 = (w * w).sum(dim=-1, keepdim=True)
        jac = (w * w * (1 - 2 * w + s2)).sum(dim=-1)
    else:
        w = top
        s2 = (a * a).sum(dim=-1, keepdim=True)
        jac = (w * w * (1 - 2 * w + s2)).sum(dim=-1)
    return RouterMoments(float(w.mean()), float((w * w).mean()), float(jac.mean()))


def routing_overlap(experts: int, k: int, c: float) -> float:
    """E|T ∩ T'| / k² for the top-k expert sets T, T' of two tokens whose logits have
    correlation c: the probability that one of a token's k rows and one of another's meet
    the same expert. 1/E for independent tokens, 1/k for identical ones. The top-k set of
    softmax(z) is that of z, so the logit variance does not enter.
    """
    e, k = max(int(experts), 1), max(int(k), 1)
    k = min(k, e)
    c = min(max(float(c), 0.0), 1.0) if math.isfinite(c) else 1.0
    x = c / _C_STEP
    lo = min(math.floor(x), round(1 / _C_STEP) - 1)
    t = x - lo
    return (1 - t) * _overlap_cached(e, k, lo) + t * _overlap_cached(e, k, lo + 1)


@functools.lru_cache(maxsize=4096)
def _overlap_cached(e: int, k: int, step: int) -> float:
    c = min(step * _C_STEP, 1.0)
    if c >= 1.0:
        return 1.0 / k
    z = _normals(e)
    z2 = c * z + math.sqrt(1.0 - c * c) * _normals(e, 1)
    a = torch.zeros_like(z).scatter_(1, torch.topk(z, k, dim=-1).indices, 1.0)
    b = torch.zeros_like(z).scatter_(1, torch.topk(z2, k, dim=-1).indices, 1.0)
    return float((a * b).sum(dim=-1).mean()) / (k * k)
