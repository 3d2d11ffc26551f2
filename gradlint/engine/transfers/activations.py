"""Element-wise activations and maths, their moments from ``gaussian`` (docs/design.md §4.2, §5 (E1))."""

from __future__ import annotations

import math

import torch

from gradlint.capture.graph import Node
from gradlint.engine import gaussian
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import INIT, SATURATION, Transfer, register
from gradlint.engine.transfers.roles import corr, first_operand, out_shape

SATURATING = {"sigmoid", "tanh", "hardtanh", "softsign", "relu6", "hardsigmoid", "logsigmoid"}


@register("act")
class Activation(Transfer):
    """Element-wise activation (E1) with Gaussian expectations from ``gaussian``."""

    @staticmethod
    def _activation(ctx: Context, node: Node) -> gaussian.Activation:
        slope = None
        if node.attrs["fn"] == "prelu" and "weight" in node.params:
            slope = ctx.param_stats(node.params["weight"]).mean
        return gaussian.node_activation(node, slope)

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        act = self._activation(ctx, node)
        fn, params, v = act.name, act.params, x.v
        m = gaussian.moments(fn, x.mu, v, **params)
        ck = gaussian.cross(fn, x.mu, v, corr(x.k, x.mu, v), **params).phi_phi
        ckt = gaussian.cross(fn, x.mu, v, corr(x.kt, x.mu, v), **params).phi_phi
        return x.with_(q=m.second, mu=m.mean, k=ck, kt=ckt, origin=node.name, normed=0.0, scale=1.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        act = self._activation(ctx, node)
        fn, params, v = act.name, act.params, x.v
        m = gaussian.moments(fn, x.mu, v, **params)
        rr = gaussian.cross(fn, x.mu, v, corr(x.kt, x.mu, v), **params).dphi_dphi if g.r else 0.0
        rb = gaussian.cross(fn, x.mu, v, corr(x.k, x.mu, v), **params).dphi_dphi if g.rb else 0.0
        if node.attrs["fn"] == "prelu" and "weight" in node.params:
            w = ctx.param_stats(node.params["weight"])
            neg = gaussian.moments("relu", -x.mu, v).second  # E[min(h, 0)^2]
            ctx.param_grad(node.params["weight"], (x.numel / max(w.numel, 1)) * g.s * neg)
        coh = g.r * self._dphi_slope(fn, params, x) ** 2 if g.r > 0 else 0.0
        return [Bwd(g.s * m.dphi2, g.r * rr, 0.0, g.rb * rb, coh)]

    @staticmethod
    def _dphi_slope(fn, params, x: Fwd) -> float:
        """E[phi''(h)] as d/dmu E[phi'(h)], which also holds at a kink (ReLU: the density at 0)."""
        v = x.v
        if v <= 0:
            return 0.0
        eps = 1e-3 * math.sqrt(v)
        hi = gaussian.moments(fn, x.mu + eps, v, **params).dphi_mean
        lo = gaussian.moments(fn, x.mu - eps, v, **params).dphi_mean
        return (hi - lo) / (2 * eps)

    def cause_of(self, node: Node):
        return SATURATION if node.attrs["fn"] in SATURATING else INIT


@register("elementwise")
class Elementwise(Transfer):
    """Element-wise maths without a rule of its own, evaluated on the Gaussian grid."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        if not isinstance(x, Fwd):
            return first_operand(ins, node)
        m = self._moments(ctx, node, x)
        if m is None:
            return x.with_(shape=out_shape(node, x))
        d2 = m.dphi_mean * m.dphi_mean
        return x.with_(q=m.second, mu=m.mean, k=m.mean * m.mean + (x.k - x.mu * x.mu) * d2,
                       kt=m.mean * m.mean + (x.kt - x.mu * x.mu) * d2, origin=node.name, normed=0.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        m = self._moments(ctx, node, x)
        if m is None:
            return [g] + [None] * (len(ins) - 1)
        d2 = m.dphi_mean * m.dphi_mean
        return [Bwd(g.s * m.dphi2, g.r * d2, 0.0, g.rb * d2)] + [None] * (len(ins) - 1)

    def _moments(self, ctx: Context, node: Node, x: Fwd):
        """Grid moments, or None where the op is undefined on part of the Gaussian's support
        (rsqrt, log of a value that is positive only by construction): then pass through."""
        try:
            m = gaussian.node_moments(node, x.mu, x.v)
        except Exception:  # noqa: BLE001 - the node's own function may raise anything on the grid
            m = None
        if m is None or not all(math.isfinite(v) for v in m):
            m = _concentrated_moments(node, x)
        if m is None:
            ctx.note_unknown(node)
        return m


def _concentrated_moments(node: Node, x: Fwd) -> gaussian.Moments | None:
    """Moments of f(h) for h concentrated away from zero (|μ| ≥ 4σ: a mean of squares over a
    feature dim, a variance plus eps), where the Gaussian grid reaches outside f's domain
    (sqrt, rsqrt, log of a value positive by construction): the second-order delta method
    around μ, f's derivatives by central differences. None where f is not finite on μ ± 4σ."""
    mu, v = x.mu, x.v
    if mu == 0 or mu * mu < 16 * v:
        return None
    fn, _ = gaussian.node_function(node)
    if fn is None:
        return None
    sd = math.sqrt(v)
    h = max(1e-4 * abs(mu), 1e-3 * sd)
    pts = [mu - 2 * h, mu - h, mu, mu + h, mu + 2 * h, mu - 4 * sd, mu + 4 * sd]
    try:
        with torch.no_grad():
            f2, f1, f0, g1, g2, lo, hi = (float(y) for y in fn(torch.tensor(pts, dtype=torch.float64)))
    except Exception:  # noqa: BLE001 - the node's own function may raise anything
        return None
    if not all(math.isfinite(y) for y in (f2, f1, f0, g1, g2, lo, hi)):
        return None
    d1 = (g1 - f1) / (2 * h)
    d2 = (g1 - 2 * f0 + f1) / (h * h)
    d3 = (g2 - 2 * g1 + 2 * f1 - f2) / (2 * h ** 3)
    mean = f0 + d2 * v / 2
    second = f0 * f0 + (d1 * d1 + f0 * d2) * v
    return gaussian.Moments(mean, max(second, 0.0), d1 * d1 + (d2 * d2 + d1 * d3) * v, d1 + d3 * v / 2)


@register("act_module")
class ActivationModule(Transfer):
    """A parameter-free element-wise module, its moments from running it on the grid."""

    def _m(self, node: Node, x: Fwd) -> gaussian.Moments:
        return gaussian.node_moments(node, x.mu, x.v)

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        m = self._m(node, x)
        d2 = m.dphi_mean * m.dphi_mean
        return x.with_(q=m.second, mu=m.mean, k=m.mean * m.mean + (x.k - x.mu * x.mu) * d2,
                       kt=m.mean * m.mean + (x.kt - x.mu * x.mu) * d2, origin=node.name, normed=0.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        m = self._m(node, ins[0])
        return [Bwd(g.s * m.dphi2, g.r * m.dphi_mean * m.dphi_mean)]
