"""Moments of mixture-of-experts routing weights (docs/design.md §4.8).

* :func:`router_moments` -- for the routing weights of a mixture of experts, the top k of
  ``softmax(z)`` over E experts with logits z ~ N(0, v) i.i.d. per expert (the softmax
  rule S1's assumption), optionally renormalized to sum to 1 (Mixtral): the weights' first
  and second moments, and E[||dw/dz||_F^2], which carries the gradient back to the logits.
* :func:`routing_overlap` -- how often two tokens' top-k expert sets meet.

Renormalized top-k probabilities are a softmax over the selected logits only:
w_j = exp(z_j) / sum_{i in T} exp(z_i), so dw_j/dz_i = w_j (1[i = j] - w_i) for i in T and 0
elsewhere. Without renormalization w_j = a_j (the full softmax) and
dw_j/dz_i = a_j (1[i = j] - a_i) over all E logits. Either way, with the gradients of the k
weights uncorrelated (each reaches its weight through a different expert) and second moment
s_w, the logits receive E[delta_z^2] = s_w * E[||J||_F^2] / E per element.

Both are deterministic and memoised (float64, CPU): a fixed-seed Monte Carlo whose draws are
shared by every logit variance. The order statistics of the top k themselves are
``gaussian.topk_normal_moments``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from gradlint.engine.gaussian.arguments import round_sig

_DTYPE = torch.float64
_ROUTER_SEED = 20250611
_ROUTER_LOGITS = 1 << 18  # logits drawn in total: 2^18 / E rows (sampling error < 0.5%)
_ROUTER_MIN_ROWS = 16384
_V_GRID = (1e-6, 1e6)  # logit variances interpolated on a grid; outside it, computed as given
_V_STEP = 0.05  # grid step in log10 v
_C_STEP = 0.02  # grid step in the logits' correlation between two tokens


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
        return _router_cached(e, k, round_sig(v), bool(normalize))
    # Linear in log v between the nodes of a grid 10^0.05 apart: the layers of one model
    # (each its own v) share the nodes. The moments are smooth in v (the draws are common to
    # all v), and the interpolation error is below 0.5%.
    x = math.log10(v) / _V_STEP
    lo = math.floor(x)
    a = _router_cached(e, k, round_sig(10 ** (lo * _V_STEP)), bool(normalize))
    b = _router_cached(e, k, round_sig(10 ** ((lo + 1) * _V_STEP)), bool(normalize))
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
