"""Gaussian expectations of the recurrent rules (docs/design.md §5).

Per-step moments come from :mod:`gradlint.engine.gaussian`; the Hermite coefficients for
expectations across two steps (a different mean and variance at each, which
``gaussian.cross`` does not cover) are integrated here on the §5.3 grid, and Mehler's
formula turns them into bivariate expectations.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from gradlint.engine.gaussian import activation, moments
from gradlint.engine.gaussian.quadrature import normal_grid

F64 = torch.float64
N_HERMITE = 24  # bivariate tanh at v = 4, ρ = 0.99: 5e-4 relative error (v ≤ 0.3: 3e-8)


class ActMoments(NamedTuple):
    """E[φ], E[φ²], E[φ'] and E[φ'²] for h ~ N(μ, v)."""

    mean: float
    second: float
    dmean: float
    dphi2: float


@functools.cache
def _basis() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The §5.3 grid (z in [-10, 10], 801 points, weights ∝ exp(-z²/2) summing to 1, ends not
    halved) and the normalised Hermite polynomials He_n(z)/√(n!) on it, n = 0..N_HERMITE."""
    z, w = normal_grid(801, halve_ends=False)
    he = [torch.ones_like(z), z.clone()]
    for n in range(1, N_HERMITE):
        he.append((z * he[n] - math.sqrt(n) * he[n - 1]) / math.sqrt(n + 1))
    return z, w, torch.stack(he)


_CATALOGUE = {name: activation(name) for name in ("sigmoid", "relu")}


def _phi(name: str, h: torch.Tensor) -> torch.Tensor:
    """Activation values; the 'd' prefix gives the derivative."""
    if name in ("tanh", "dtanh"):
        # 2σ(2h) − 1 rather than torch.tanh: float64 tanh on CPU was measured up to 100×
        # slower under some thread settings; the two agree to 1e-16.
        y = 2.0 * torch.sigmoid(2.0 * h) - 1.0
        return y if name == "tanh" else 1.0 - y * y
    act = _CATALOGUE.get(name.removeprefix("d"))
    if act is None:
        raise ValueError(f"name={name!r} is not a supported activation")
    return act.dphi(h) if name.startswith("d") else act.phi(h)


def act_moments(name: str, mu: float, v: float) -> ActMoments:
    """Moments of an activation for h ~ N(mu, v), from gradlint.engine.gaussian (§5).

    Args:
        name: 'sigmoid', 'tanh' or 'relu'.
        mu: mean of the pre-activation.
        v: variance of the pre-activation (rounding-level negative values are taken as 0).

    Returns:
        The four moments.
    """
    m = moments(name, mu, max(float(v), 0.0))
    return ActMoments(m.mean, m.second, m.dphi_mean, m.dphi2)


def hermite(name: str, mu: float, v: float) -> torch.Tensor:
    """Normalised Hermite coefficients d_n = E[φ(μ + √v·Z)·He_n(Z)]/√(n!).

    Mehler's formula then gives, for jointly Gaussian pre-activations with correlation ρ,
    E[φ(a)·ψ(b)] = Σ_n d_n^φ(a)·d_n^ψ(b)·ρⁿ (the bivariate expectations of §5.3
    without a 2D grid). Kinked φ converge slowly in n; their cross-step covariances are
    needed only to modest accuracy.
    """
    z, w, he = _basis()
    return he @ (_phi(name, mu + math.sqrt(max(float(v), 0.0)) * z) * w)


def mehler(d_a: torch.Tensor, d_b: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Σ_n d_a[..., n]·d_b[..., n]·ρⁿ, elementwise over the leading dims.

    Summed in order of n (``cumsum``, sequential on the CPU): the same floating-point result as
    adding the terms one by one, in three ops instead of seventy (an LSTM's check makes ~850 calls).
    """
    n = d_a.shape[-1]
    powers = torch.cumprod(rho[..., None].expand(*rho.shape, n - 1), -1)
    terms = d_a * d_b * torch.cat([torch.ones_like(powers[..., :1]), powers], -1)
    return torch.cumsum(terms, -1)[..., -1]


def corr(cov: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    den = torch.sqrt(var_a * var_b)
    return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov)).clamp(-1.0, 1.0)


def hermite_steps(name: str, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """`hermite` for many (mean, var) pairs at once: shape (len(mean), N_HERMITE + 1)."""
    z, w, he = _basis()
    h = mean[:, None] + torch.sqrt(var.clamp_min(0.0))[:, None] * z[None, :]
    return (_phi(name, h) * w) @ he.T


def mehler_matrix(d: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """E[ψ(a_t)·ψ(a_t')] for all pairs: Σ_n d[t, n]·d[t', n]·ρ[t, t']ⁿ."""
    return mehler(d[:, None, :].expand(-1, d.shape[0], -1), d[None, :, :].expand(d.shape[0], -1, -1), rho)
