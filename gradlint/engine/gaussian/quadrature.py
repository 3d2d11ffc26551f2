"""Quadrature rules for expectations over a standard normal z (docs/design.md §5.3).

* :func:`normal_grid` -- the uniform grid with Gaussian weights (801 points on [-10, 10]
  for 1D expectations, 129 per axis on [-8, 8] for the 2D tensor product);
* :func:`trapezoid` -- the plain trapezoid rule, for integrands that carry their own density
  (order statistics);
* graded composite Gauss-Legendre rules refined towards kinks and narrow transitions, where a
  uniform grid converges only as O(h^2).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

DTYPE = torch.float64
GRID_POINTS = 801  # docs/design.md §5.3: geometric convergence, <= 1e-15 for v in [0.01, 20]
GRID_HALF_WIDTH = 10.0
# 2D tensor-product trapezoid, points per axis (spacing 1/8). The trapezoid error
# for an integrand analytic in |Im z| < d is ~exp(-2 pi d / spacing); tanh has
# poles at h = +-i pi/2, i.e. d = pi / (2 sqrt v) in z. Measured against a
# 1201^2 grid: <= 5.3e-7 for tanh at v <= 16 (worst at |c| -> 1), <= 1e-10 for
# GELU/SiLU/Mish/sigmoid/softplus there. Beyond sqrt(v) = 4 transition widths the
# graded Gauss-Legendre path takes over (measured <= 1e-11 up to v = 49).
GRID2D_POINTS = 129  # on [-8, 8]: the mass beyond |z| = 8 is 1.2e-15
GRID2D_HALF_WIDTH = 8.0
GRID2D_MAX_RATIO = 4.0
# Elements per torch call in the larger kernels (2D grids, softmax Monte Carlo).
# ATen's vectorised unary ops (tanh, exp, ndtr, softplus, ...) open an OpenMP
# region above ~2048 elements; on a loaded machine each region can stall for
# milliseconds (measured 20-100x slowdowns on a busy 2-core box), while blocks
# below the threshold run serially at full speed.
SERIAL_CHUNK = 2048
# Switch from the 1D uniform grid to graded Gauss-Legendre when sqrt(v) exceeds
# this many transition widths; the grid is still at 3e-15 for tanh at v = 100.
GRID_MAX_RATIO = 10.0
# Composite Gauss-Legendre (kinks, narrow transitions): order per panel; base
# panels cover [-10, 10] and are refined geometrically towards kinks/transitions.
GL_ORDER = 10
# Base panel length: 1 in general (softsign's pieces have poles one unit of h
# from the kink; GL-10 on length-2 panels left 9e-7 there), 2 where every piece
# is entire (polynomial / exponential segments: measured 4e-15 against the
# arc-cosine kernel), which halves the work of cross() for the ReLU family.
BASE_PANEL = 1.0
BASE_PANEL_ENTIRE = 2.0


class Grid(NamedTuple):
    z: torch.Tensor
    w: torch.Tensor


@functools.cache
def _uniform(points: int, half_width: float, halve_ends: bool) -> Grid:
    """Nodes on [-half_width, half_width] and unscaled weights: 1, the trapezoid's ends 1/2."""
    z = torch.linspace(-half_width, half_width, points, dtype=DTYPE)
    ends = torch.ones_like(z)
    if halve_ends:
        ends[0] = ends[-1] = 0.5
    return Grid(z, ends)


@functools.cache
def normal_grid(points: int = GRID_POINTS, half_width: float = GRID_HALF_WIDTH, halve_ends: bool = True) -> Grid:
    """Uniform trapezoid grid with normalised Gaussian weights: E[f(z)] ~ sum w f(z) (§5.3).

    The trapezoid's end weights are halved; at |z| = 10 they are ~1e-22 anyway. The
    recurrent Hermite coefficients use ``halve_ends=False``: the end weights hardly matter,
    but in the high-order coefficients (He_n(10) is large) they move the last digits.
    """
    z, ends = _uniform(points, half_width, halve_ends)
    w = torch.exp(-0.5 * z * z) * ends
    return Grid(z, w / w.sum())


@functools.cache
def trapezoid(points: int, half_width: float = GRID_HALF_WIDTH) -> Grid:
    """The plain trapezoid rule on [-half_width, half_width], for an integrand with its own density."""
    z, ends = _uniform(points, half_width, True)
    return Grid(z, float(z[1] - z[0]) * ends)


@functools.cache
def gauss_legendre(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [-1, 1] (Golub-Welsch)."""
    k = torch.arange(1, order, dtype=DTYPE)
    off = k / torch.sqrt(4.0 * k * k - 1.0)
    jac = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jac)
    weights = 2.0 * vecs[0, :] ** 2
    return nodes, weights


def _base_edges(half_width: float, base: float) -> list[float]:
    n = math.ceil(half_width / base)
    return [k * base for k in range(-n, n + 1)]


def refinement_levels(layer: float | None, base: float = BASE_PANEL) -> int:
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


def _panel_rule(edges: list[float]) -> Grid:
    """Composite Gauss-Legendre on consecutive edges, Gaussian weight included, normalised."""
    t, wr = gauss_legendre(GL_ORDER)
    e = torch.tensor(edges, dtype=DTYPE)
    lo, hi = e[:-1], e[1:]
    half = 0.5 * (hi - lo)
    mid = 0.5 * (hi + lo)
    z = (mid[:, None] + half[:, None] * t[None, :]).reshape(-1)
    w = (half[:, None] * wr[None, :]).reshape(-1) * torch.exp(-0.5 * z * z)
    return Grid(z, w / w.sum())


def graded_rule(centers: tuple[tuple[float, int], ...], base: float = BASE_PANEL) -> Grid:
    """Graded composite Gauss-Legendre rule on [-10, 10] for a standard normal z.

    Panels of length `base` are refined geometrically (ratio 2) towards each center, down to
    the requested level. Gauss-Legendre converges exponentially on each panel of a
    piecewise-analytic integrand, and the geometric grading resolves boundary
    layers of any width (hp-refinement), which a uniform trapezoid grid cannot do
    at kinks (O(h^2), §5.3).

    Args:
        centers: (z, levels) pairs; z is placed on a panel edge.

    Returns:
        Nodes and normalised weights.
    """
    L = GRID_HALF_WIDTH
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
def kink_pattern(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, wr = gauss_legendre(GL_ORDER)
    edges = sorted(set(_base_edges(_PATTERN_HALF_WIDTH, BASE_PANEL)) | set(_offsets(levels, BASE_PANEL)))
    e = torch.tensor(edges, dtype=DTYPE)
    half = 0.5 * (e[1:] - e[:-1])
    mid = 0.5 * (e[1:] + e[:-1])
    nodes = (mid[:, None] + half[:, None] * t[None, :]).reshape(-1)
    weights = (half[:, None] * wr[None, :]).reshape(-1)
    return nodes, weights


def kink_rule(center: float, levels: int) -> Grid:
    """Graded Gauss-Legendre rule for N(0, 1) refined at one point (see kink_pattern)."""
    t, wb = kink_pattern(levels)
    z = t + max(-_PATTERN_CLAMP, min(_PATTERN_CLAMP, center))
    w = wb * torch.exp(-0.5 * z * z)
    return Grid(z, w / w.sum())


def kink_rule_rows(centers: torch.Tensor, levels: int) -> Grid:
    """Row-wise :func:`kink_rule`: nodes and weights of shape (N, P), rows normalised."""
    t, wb = kink_pattern(levels)
    z = centers.clamp(-_PATTERN_CLAMP, _PATTERN_CLAMP)[:, None] + t
    w = wb * torch.exp(-0.5 * z * z)
    return Grid(z, w / w.sum(dim=1, keepdim=True))
