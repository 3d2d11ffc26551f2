"""The activation catalogue: every activation the engine knows, in one table.

Each entry (:class:`Spec`) gives the activation's parameters with torch's defaults, phi and
phi' as torch functions, and how its Gaussian expectations are computed: exactly over
polynomial/exponential segments, on the uniform grid (smooth ones, with a fused (phi, phi')
``pair`` and the width of the transition at h = 0), or graded at a kink (softsign).

:func:`activation` binds an entry to its parameters (``.phi(h)``, ``.dphi(h)`` on tensors).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from gradlint.engine.gaussian.arguments import round_sig
from gradlint.engine.gaussian.normal import INV_SQRT_2PI

# torch.nn.functional.selu constants (torch/nn/functional.py, ATen Activation.cpp).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_GELU_TANH_K = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715

# A "term" is (coef, n, beta): coef * h**n * exp(beta * h). A segment is
# (lo, hi, phi_terms, dphi_terms) in h units. beta != 0 only with n == 0 and
# lo == -inf, which is all the exponential-linear units need.
Term = tuple[float, int, float]
Segment = tuple[float, float, tuple[Term, ...], tuple[Term, ...]]


def _segments_relu(p) -> tuple[Segment, ...]:
    return ((-math.inf, 0.0, (), ()), (0.0, math.inf, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)))


def _segments_leaky(p) -> tuple[Segment, ...]:
    (a,) = p
    return (
        (-math.inf, 0.0, ((a, 1, 0.0),), ((a, 0, 0.0),)),
        (0.0, math.inf, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_hardtanh(p) -> tuple[Segment, ...]:
    lo, hi = p
    return (
        (-math.inf, lo, ((lo, 0, 0.0),), ()),
        (lo, hi, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
        (hi, math.inf, ((hi, 0, 0.0),), ()),
    )


def _segments_relu6(p) -> tuple[Segment, ...]:
    return _segments_hardtanh((0.0, 6.0))


def _segments_hardsigmoid(p) -> tuple[Segment, ...]:
    return (
        (-math.inf, -3.0, (), ()),
        (-3.0, 3.0, ((1.0 / 6.0, 1, 0.0), (0.5, 0, 0.0)), ((1.0 / 6.0, 0, 0.0),)),
        (3.0, math.inf, ((1.0, 0, 0.0),), ()),
    )


def _segments_hardswish(p) -> tuple[Segment, ...]:
    # x * relu6(x + 3) / 6: quadratic on (-3, 3); phi' = x/3 + 1/2 there.
    return (
        (-math.inf, -3.0, (), ()),
        (-3.0, 3.0, ((1.0 / 6.0, 2, 0.0), (0.5, 1, 0.0)), ((1.0 / 3.0, 1, 0.0), (0.5, 0, 0.0))),
        (3.0, math.inf, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_elu(p) -> tuple[Segment, ...]:
    (a,) = p
    return (
        (-math.inf, 0.0, ((a, 0, 1.0), (-a, 0, 0.0)), ((a, 0, 1.0),)),
        (0.0, math.inf, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_celu(p) -> tuple[Segment, ...]:
    (a,) = p
    return (
        (-math.inf, 0.0, ((a, 0, 1.0 / a), (-a, 0, 0.0)), ((1.0, 0, 1.0 / a),)),
        (0.0, math.inf, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),
    )


def _segments_selu(p) -> tuple[Segment, ...]:
    sa = _SELU_SCALE * _SELU_ALPHA
    return (
        (-math.inf, 0.0, ((sa, 0, 1.0), (-sa, 0, 0.0)), ((sa, 0, 1.0),)),
        (0.0, math.inf, ((_SELU_SCALE, 1, 0.0),), ((_SELU_SCALE, 0, 0.0),)),
    )


def _segments_identity(p) -> tuple[Segment, ...]:
    return ((-math.inf, math.inf, ((1.0, 1, 0.0),), ((1.0, 0, 0.0),)),)


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
    pdf = torch.exp(-0.5 * h * h) * INV_SQRT_2PI
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


class Spec(NamedTuple):
    params: tuple[tuple[str, float], ...]  # (name, default) in canonical order
    phi: Callable
    dphi: Callable
    kind: Literal["segments", "smooth", "softsign"]
    segments: Callable | None = None  # params -> tuple[Segment, ...]
    pair: Callable | None = None  # (h, p) -> (phi, phi') sharing work
    width: Callable | None = None  # smooth: params -> transition width in h


def _unit_width(p) -> float:
    return 1.0


def _softplus_width(p) -> float:
    return 1.0 / p[0]


def _segmented(params, phi, dphi, segments) -> Spec:
    return Spec(params, phi, dphi, "segments", segments=segments)


def _smooth(params, phi, dphi, pair, width=_unit_width) -> Spec:
    return Spec(params, phi, dphi, "smooth", pair=pair, width=width)


SPECS: dict[str, Spec] = {
    "relu": _segmented((), _phi_relu, _dphi_relu, _segments_relu),
    "leaky_relu": _segmented((("negative_slope", 0.01),), _phi_leaky, _dphi_leaky, _segments_leaky),
    "prelu": _segmented((("slope", 0.25),), _phi_prelu, _dphi_leaky, _segments_leaky),
    "elu": _segmented((("alpha", 1.0),), _phi_elu, _dphi_elu, _segments_elu),
    "celu": _segmented((("alpha", 1.0),), _phi_celu, _dphi_celu, _segments_celu),
    "selu": _segmented((), _phi_selu, _dphi_selu, _segments_selu),
    "hardtanh": _segmented((("min_val", -1.0), ("max_val", 1.0)), _phi_hardtanh, _dphi_hardtanh, _segments_hardtanh),
    "relu6": _segmented((), _phi_relu6, _dphi_relu6, _segments_relu6),
    "hardsigmoid": _segmented((), _phi_hardsigmoid, _dphi_hardsigmoid, _segments_hardsigmoid),
    "hardswish": _segmented((), _phi_hardswish, _dphi_hardswish, _segments_hardswish),
    "identity": _segmented((), _phi_identity, _dphi_identity, _segments_identity),
    "softsign": Spec((), _phi_softsign, _dphi_softsign, "softsign", pair=_pair_softsign),
    "gelu": _smooth((), _phi_gelu, _dphi_gelu, _pair_gelu),
    "gelu_tanh": _smooth((), _phi_gelu_tanh, _dphi_gelu_tanh, _pair_gelu_tanh),
    "silu": _smooth((), _phi_silu, _dphi_silu, _pair_silu),
    "mish": _smooth((), _phi_mish, _dphi_mish, _pair_mish),
    "sigmoid": _smooth((), _phi_sigmoid, _dphi_sigmoid, _pair_sigmoid),
    "tanh": _smooth((), _phi_tanh, _dphi_tanh, _pair_tanh),
    "softplus": _smooth((("beta", 1.0), ("threshold", 20.0)), _phi_softplus, _dphi_softplus, _pair_softplus,
                        _softplus_width),
    "logsigmoid": _smooth((), _phi_logsigmoid, _dphi_logsigmoid, _pair_logsigmoid),
}

#: Names accepted by :func:`moments` and :func:`cross`.
ACTIVATIONS: frozenset[str] = frozenset(SPECS)

#: Keyword parameters (with torch's defaults) accepted per activation.
ACTIVATION_PARAMS: Mapping[str, Mapping[str, float]] = types.MappingProxyType(
    {name: types.MappingProxyType(dict(spec.params)) for name, spec in SPECS.items()}
)


def spec_of(name: str) -> Spec:
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation name={name!r}; supported: {sorted(SPECS)}") from None


def canon_params(name: str, spec: Spec, params: Mapping[str, Any]) -> tuple[float, ...]:
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
        values.append(round_sig(fval))
    p = tuple(values)
    if name == "hardtanh" and not p[0] < p[1]:
        raise ValueError(f"hardtanh needs min_val < max_val, got min_val={p[0]!r}, max_val={p[1]!r}")
    if name == "celu" and not p[0] > 0.0:
        raise ValueError(f"celu alpha={p[0]!r} must be > 0")
    if name == "softplus" and not p[0] > 0.0:
        raise ValueError(f"softplus beta={p[0]!r} must be > 0")
    return p


@dataclass(frozen=True)
class Activation:
    """One activation of the catalogue with its parameters bound (made by :func:`activation`).

    Attributes:
        name: One of :data:`ACTIVATIONS`.
        params: The parameters as given, for ``moments(name, mu, v, **params)`` and ``cross``.
        values: Every parameter's value (defaults filled in) in the catalogue's order.
    """

    name: str
    params: Mapping[str, float]
    values: tuple[float, ...]

    def phi(self, h: torch.Tensor) -> torch.Tensor:
        """phi(h), elementwise on a float tensor (torch's own functional form)."""
        return SPECS[self.name].phi(h, self.values)

    def dphi(self, h: torch.Tensor) -> torch.Tensor:
        """phi'(h), elementwise on a float tensor (the analytic derivative)."""
        return SPECS[self.name].dphi(h, self.values)


def activation(name: str, params: Mapping[str, Any] | None = None) -> Activation:
    """The catalogue's activation ``name`` with ``params`` (torch's defaults for the rest).

    Raises:
        ValueError: Unknown name or an invalid parameter value.
        TypeError: A parameter this activation does not take.
    """
    spec = spec_of(name)
    given = dict(params or {})
    return Activation(name, given, canon_params(name, spec, given))

