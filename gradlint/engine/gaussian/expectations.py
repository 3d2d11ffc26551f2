"""One-dimensional Gaussian expectations: activation moments and the gate moments of §6.

* :func:`moments` -- E[phi(h)], E[phi(h)^2], E[phi'(h)^2], E[phi'(h)] of a catalogue
  activation for h ~ N(mu, v) (docs/design.md §5 (E1));
* :func:`expect`, :func:`expect_fn` -- E[f(h)] of a named or arbitrary function, and all four
  moments of an arbitrary elementwise callable with phi' by autograd;
* :func:`gate_moments`, :func:`tanh_moments` -- the LSTM/GRU gate moments of R2/R3 (§6).

Piecewise activations use the closed forms of ``closed_form``; analytic ones the uniform
801-point grid of §5.3, or a graded Gauss-Legendre rule once the transition at h = 0 is
narrower than a tenth of a standard deviation; softsign a graded rule split at its kink.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from gradlint.engine.gaussian.activations import SPECS, Spec, canon_params, spec_of
from gradlint.engine.gaussian.arguments import CACHE_SIZE, check_mu_v, front_cached, front_put, round_sig
from gradlint.engine.gaussian.closed_form import segments_moments
from gradlint.engine.gaussian.quadrature import DTYPE, GRID_MAX_RATIO, Grid, kink_rule, normal_grid, refinement_levels
from gradlint.engine.gaussian.results import GateMoments, Moments, TanhMoments


def _smooth_expect(fn: Callable[[torch.Tensor], torch.Tensor], mu: float, v: float, width: float) -> list[float]:
    """E[fn(h)] for h ~ N(mu, v); fn maps (N,) -> (k, N) or (N,). Returns k floats.

    Args:
        fn: Elementwise function(s) of h.
        mu: Mean.
        v: Variance (>= 0).
        width: Width of fn's transition region around h = 0, in h units.
    """
    if v == 0.0:
        out = fn(torch.tensor([mu], dtype=DTYPE))
        return out.reshape(-1).tolist()
    s = math.sqrt(v)
    z, w = _rule_1d(mu, s, width)
    vals = fn(z * s + mu)
    if vals.dim() == 1:
        return [torch.dot(vals, w).item()]
    return torch.mv(vals, w).tolist()


def _rule_1d(mu: float, s: float, width: float) -> Grid:
    """The 801-point grid of §5.3, or a graded rule once the transition at h = 0 is too narrow."""
    if s <= GRID_MAX_RATIO * width:
        return normal_grid()
    # Transition narrower than ~1/10 of a standard deviation: grade towards it.
    return kink_rule(-mu / s, refinement_levels(width / s))


def _kinked_expect(fn, mu: float, v: float, kink: float, width: float) -> list[float]:
    """Like _smooth_expect but for a kink at h = kink with analytic pieces (softsign)."""
    if v == 0.0:
        return fn(torch.tensor([mu], dtype=DTYPE)).reshape(-1).tolist()
    s = math.sqrt(v)
    z, w = kink_rule((kink - mu) / s, refinement_levels(width / s))
    vals = fn(z * s + mu)
    return torch.mv(vals, w).tolist()


def _moment_stack(pair: Callable, p) -> Callable:
    def fn(h):
        f, d = pair(h, p)
        return torch.stack((f, f * f, d * d, d))

    return fn


def _numeric_moments(name: str, spec: Spec, p, mu: float, v: float) -> Moments:
    if spec.kind == "softsign":
        # Poles of x/(1+|x|) sit at distance 1 from the kink: refine to that scale.
        vals = _kinked_expect(_moment_stack(spec.pair, p), mu, v, 0.0, 1.0)
    else:
        vals = _smooth_expect(_moment_stack(spec.pair, p), mu, v, spec.width(p))
    mean, second, d2, dmean = vals
    return Moments(mean, max(second, 0.0), max(d2, 0.0), dmean)


@functools.lru_cache(maxsize=CACHE_SIZE)
def moments_cached(name: str, mu: float, v: float, p: tuple[float, ...]) -> Moments:
    spec = SPECS[name]
    if spec.kind == "segments":
        return segments_moments(name, p, mu, v)
    return _numeric_moments(name, spec, p, mu, v)


@front_cached
def moments(name: str, mu: float, v: float, **params: float) -> Moments:
    """Gaussian moments of an activation for h ~ N(mu, v) (docs/design.md §5 (E1)).

    Piecewise-polynomial and exponential-linear activations use exact closed
    forms for any mu; analytic ones use the 801-point trapezoid grid of §5.3
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
    spec = spec_of(name)
    mu_f, v_f = check_mu_v(mu, v)
    p = canon_params(name, spec, params)
    return moments_cached(name, round_sig(mu_f), round_sig(v_f), p)


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


@functools.lru_cache(maxsize=CACHE_SIZE)
def _expect_cached(fn: Callable, mu: float, v: float) -> float:
    return _smooth_expect(fn, mu, v, 1.0)[0]


@front_cached
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
        if fn in SPECS:
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
    mu_f, v_f = check_mu_v(mu, v)
    return _expect_cached(fn, round_sig(mu_f), round_sig(v_f))


def _eval_with_grad(fn: Callable, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(h) and its elementwise derivative by autograd (fn must act elementwise)."""
    x = h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        # A copy that is not a leaf: an in-place activation (nn.ReLU(inplace=True)) may write it.
        y = fn(x.clone())
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y, dtype=x.dtype)
        if y.requires_grad:
            (d,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        else:
            d = None
    if d is None:  # piecewise-constant or non-differentiable: phi' = 0 a.e.
        d = torch.zeros_like(x)
    return y.detach().to(DTYPE).expand_as(x), d.detach().to(DTYPE)


_EXPECT_FN_CACHE: dict = {}


def _expect_fn_moments(fn: Callable, mu: float, v: float) -> Moments:
    if v == 0.0:
        z, w, s = torch.zeros(1, dtype=DTYPE), torch.ones(1, dtype=DTYPE), 0.0
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
    limit the accuracy to O(1e-3) (docs/design.md §5.3); prefer :func:`moments` for named
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
    mu_f, v_f = check_mu_v(mu, v)
    mu_r, v_r = round_sig(mu_f), round_sig(v_f)
    # Keyed on `key` only (not on fn), so rebuilt closures still hit the cache.
    cache_key = (fn if key is None else key, mu_r, v_r)
    try:
        hit = _EXPECT_FN_CACHE.get(cache_key)
    except TypeError:  # unhashable fn and no key: compute uncached
        return _expect_fn_moments(fn, mu_r, v_r)
    if hit is None:
        hit = _expect_fn_moments(fn, mu_r, v_r)
        front_put(_EXPECT_FN_CACHE, cache_key, hit)
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


@functools.lru_cache(maxsize=CACHE_SIZE)
def _gate_cached(mu: float, v: float) -> GateMoments:
    return GateMoments(*_smooth_expect(_gate_stack, mu, v, 1.0))


@functools.lru_cache(maxsize=CACHE_SIZE)
def _tanh_cached(mu: float, v: float) -> TanhMoments:
    return TanhMoments(*_smooth_expect(_tanh_stack, mu, v, 1.0))


@front_cached
def gate_moments(mu: float, v: float) -> GateMoments:
    """Sigmoid gate moments for LSTM/GRU rules R2/R3 (docs/design.md §6).

    Args:
        mu: Mean of the gate pre-activation (the chunk's bias mean).
        v: Variance of the gate pre-activation.

    Returns:
        GateMoments(mean=E[sigma], second=E[sigma^2], deriv_sq=E[(sigma(1-sigma))^2]).
    """
    mu_f, v_f = check_mu_v(mu, v)
    return _gate_cached(round_sig(mu_f), round_sig(v_f))


@front_cached
def tanh_moments(mu: float, v: float) -> TanhMoments:
    """Tanh moments for LSTM/GRU rules R2/R3 (docs/design.md §6).

    Args:
        mu: Mean of the pre-activation (0 for the LSTM cell state c_t).
        v: Variance of the pre-activation.

    Returns:
        TanhMoments(second=E[tanh^2], deriv_sq=E[(1 - tanh^2)^2]).
    """
    mu_f, v_f = check_mu_v(mu, v)
    return _tanh_cached(round_sig(mu_f), round_sig(v_f))
