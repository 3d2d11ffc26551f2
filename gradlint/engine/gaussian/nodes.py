"""What the element-wise nodes of a graph compute, and their Gaussian moments.

An ``act`` node names a catalogue activation (its parameters sit in the node's attrs, as
capture recorded them); an ``act_module`` node holds a parameter-free module and an
``elementwise`` node an aten function, both evaluated on the quadrature grid with phi' by
autograd. Rules and transfers read a node's moments here, so they agree on every value and
share the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from gradlint.engine.gaussian.activations import ACTIVATION_PARAMS, Activation, activation
from gradlint.engine.gaussian.expectations import expect_fn, moments
from gradlint.engine.gaussian.results import Moments

if TYPE_CHECKING:
    from gradlint.capture.graph import Node


def node_activation(node: Node, prelu_slope: float | None = None) -> Activation:
    """The activation an ``act`` node computes, with the parameters capture kept in its attrs.

    A PReLU is taken as a leaky ReLU whose slope is the mean of its learned slopes
    (``prelu_slope``; torch's initial 0.25 where it is not known).
    """
    fn = node.attrs["fn"]
    if fn == "prelu":
        return activation("leaky_relu", {"negative_slope": 0.25 if prelu_slope is None else prelu_slope})
    own = ACTIVATION_PARAMS.get(fn, {})
    return activation(fn, {k: v for k, v in node.attrs.items() if k in own})


def node_function(node: Node) -> tuple[Callable | None, Hashable]:
    """The element-wise function of an ``act_module`` or ``elementwise`` node and its cache key
    for :func:`expect_fn`; (None, None) when the node holds nothing callable."""
    if node.kind == "act_module":
        mod = node.attrs.get("module")
        return (mod, ("module", id(mod))) if callable(mod) else (None, None)
    target = node.attrs.get("target")
    if not callable(target):
        return None, None
    extra = node.attrs.get("extra", {}) or {}
    scalars = {k: v for k, v in extra.items() if isinstance(v, (int, float, bool)) or v is None}
    key = (str(target), repr(sorted(extra.items(), key=str)))
    return (lambda z: target(z, **scalars)), key


def node_moments(node: Node, mu: float, v: float, prelu_slope: float | None = None) -> Moments:
    """E[phi], E[phi^2], E[phi'^2], E[phi'] of an ``act``, ``act_module`` or ``elementwise``
    node's function for an input ~ N(mu, v) (see :func:`node_activation` for ``prelu_slope``).

    Raises:
        ValueError: Invalid mu/v or activation parameters, or a node of another kind.
        Whatever the node's own function raises on the grid.
    """
    if node.kind == "act":
        act = node_activation(node, prelu_slope)
        return moments(act.name, mu, v, **act.params)
    fn, key = node_function(node)
    if fn is None:
        raise ValueError(f"node {node.name!r} of kind {node.kind!r} holds no element-wise function")
    return expect_fn(fn, mu, v, key=key)
