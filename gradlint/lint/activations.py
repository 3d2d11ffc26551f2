"""An activation node's function as the engine evaluates it, for the rules that weigh
activations (GL201, GL301): its Gaussian moments at any pre-activation mean and variance."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gradlint.engine import gaussian


@dataclass(frozen=True)
class Phi:
    """One activation node's function.

    Attributes:
        fn: The catalogue name (``gaussian.ACTIVATIONS``) of an ``act`` node, a PReLU read
            as the leaky ReLU of its slopes' mean as the engine does; None for activation
            modules and element-wise ops, which are run on the Gaussian grid.
        params: Keyword parameters of ``fn``.
    """

    fn: str | None
    params: Mapping[str, float]
    _moments: Callable[[float, float], gaussian.Moments] = field(repr=False, compare=False)
    _errors: tuple[type[BaseException], ...] = field(repr=False, compare=False)

    def moments(self, mu: float, v: float) -> gaussian.Moments | None:
        """E[phi], E[phi^2], E[phi'^2] and E[phi'] for h ~ N(mu, v); None where the
        function cannot be evaluated there."""
        try:
            return self._moments(mu, v)
        except self._errors:
            return None


# gaussian.moments refuses a mean or variance out of range (ValueError) and parameters the
# activation does not take (TypeError); its closed forms can overflow (ArithmeticError).
_CATALOGUE_ERRORS = (ValueError, TypeError, ArithmeticError)
# A module or element-wise op runs the user's own code on the grid, and what that raises
# is the user's: any failure means the op cannot be judged, not a bug here.
_USER_CODE_ERRORS = (Exception,)


def phi_of(node, param_stats: Mapping | None = None) -> Phi | None:
    """The function of an ``act``, ``act_module`` or ``elementwise`` node, as the engine's
    activation catalogue reads it (``gaussian.node_activation`` / ``node_function``), or None
    when it has none to evaluate (a module or op that is not callable). ``param_stats`` (a
    propagation's) gives a PReLU its slopes' mean; 0.25, PyTorch's init, without."""
    if node.kind == "act":
        slope = None
        if node.attrs.get("fn") == "prelu":
            w = (param_stats or {}).get(node.params.get("weight", ""))
            slope = w.mean if w is not None else None
        try:
            act = gaussian.node_activation(node, slope)
        except _CATALOGUE_ERRORS:  # parameters the catalogue refuses: the node cannot be judged
            return Phi(node.attrs.get("fn"), {}, _unknown, _CATALOGUE_ERRORS)
        return Phi(act.name, act.params, lambda mu, v: gaussian.moments(act.name, mu, v, **act.params),
                   _CATALOGUE_ERRORS)
    if node.kind not in ("act_module", "elementwise"):
        return None
    f, key = gaussian.node_function(node)
    if f is None:
        return None
    return Phi(None, {}, lambda mu, v: gaussian.expect_fn(f, mu, v, key=key), _USER_CODE_ERRORS)


def _unknown(mu: float, v: float) -> gaussian.Moments:
    raise ValueError("the activation's parameters are not the catalogue's")
