"""What the Gaussian functions return: named tuples of Python floats."""

from __future__ import annotations

from typing import NamedTuple


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
    """Sigmoid-gate moments for a pre-activation ~ N(mu, v) (docs/design.md §6).

    Attributes:
        mean: E[sigma].
        second: E[sigma^2].
        deriv_sq: E[(sigma (1 - sigma))^2] = E[sigma'^2].
    """

    mean: float
    second: float
    deriv_sq: float


class TanhMoments(NamedTuple):
    """Tanh moments for a pre-activation ~ N(mu, v) (docs/design.md §6).

    Attributes:
        second: E[tanh^2].
        deriv_sq: E[(1 - tanh^2)^2] = E[tanh'^2].
    """

    second: float
    deriv_sq: float


class SoftmaxMoments(NamedTuple):
    """Softmax moments of rule S1 (docs/design.md §4.5), a = softmax(logits).

    Attributes:
        S2: E[sum_i a_i^2].
        S3: E[sum_i a_i^3].
        S22: E[(sum_i a_i^2)^2].
    """

    S2: float
    S3: float
    S22: float


class MaxNormalMoments(NamedTuple):
    """First two moments of the maximum of n i.i.d. standard normals (docs/design.md §4.3 (P3)).

    Attributes:
        e1: E[max].
        e2: E[max^2].
    """

    e1: float
    e2: float


class TopkMoments(NamedTuple):
    """Mean over the k selected entries of E[Z] and E[Z^2], Z standard normal order statistics."""

    e1: float
    e2: float
