"""Element-wise maximum and minimum of two tensors (docs/design.md §4.2: E9)."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.gaussian.normal import normal_cdf, normal_pdf
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.roles import broadcast_sum, out_shape, roles_like
from gradlint.engine.transfers.structural import Unknown


def _clark(a: Fwd, b: Fwd, sign: float) -> tuple[float, float, float] | None:
    """Clark's (1961) moments of max(a, b) (sign 1) or min(a, b) = -max(-a, -b) (sign -1) for
    independent Gaussians: (mean, second moment, P(a is the one taken)); None where neither
    operand varies (then max is a constant's and the rule cannot say which one wins)."""
    ma, mb = sign * a.mu, sign * b.mu
    theta = math.sqrt(max(a.v, 0.0) + max(b.v, 0.0))
    if theta <= 0:
        return None
    al = (ma - mb) / theta
    pa, pb, d = normal_cdf(al), normal_cdf(-al), normal_pdf(al)
    mean = ma * pa + mb * pb + theta * d
    second = (a.v + ma * ma) * pa + (b.v + mb * mb) * pb + (ma + mb) * theta * d
    return sign * mean, second, pa


@register("extremum")
class Extremum(Transfer):
    """z = max(a, b) or min(a, b) element-wise (E9): Clark's moments forward; backward each
    operand gets the gradient where it is the one taken, s·P(taken)."""

    def _parts(self, node: Node, ins: list[Fwd]):
        tensors = [f for f in ins if isinstance(f, Fwd)]
        if len(tensors) != 2:
            return None
        a, b = tensors
        if a.origin is not None and a.origin == b.origin and a.scale == b.scale:
            return a, b, None  # max(x, x) = x
        m = _clark(a, b, -1.0 if node.attrs.get("op") == "min" else 1.0)
        return (a, b, m) if m is not None else None

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        parts = self._parts(node, ins)
        tensors = [f for f in ins if isinstance(f, Fwd)]
        shape = out_shape(node, tensors[0])
        if parts is None:
            ctx.note_unknown(node)
            return tensors[0].with_(shape=shape)
        a, b, m = parts
        if m is None:
            return a.with_(shape=shape)
        mean, second, pa = m
        pb = 1.0 - pa
        # Across positions: each operand's covariance, where it is the one taken at both.
        k = mean * mean + (a.k - a.mu * a.mu) * pa * pa + (b.k - b.mu * b.mu) * pb * pb
        kt = mean * mean + (a.kt - a.mu * a.mu) * pa * pa + (b.kt - b.mu * b.mu) * pb * pb
        roles = a.roles if len(a.shape) == len(shape) else roles_like(shape, b)
        return Fwd(q=second, mu=mean, k=min(k, second), kt=min(kt, second), shape=shape, roles=roles,
                   dtype=a.dtype, const=a.const and b.const, blocked=a.blocked and b.blocked, origin=node.name)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        parts = self._parts(node, ins)
        res: list[Bwd | None] = [None] * len(ins)
        idx = [i for i, f in enumerate(ins) if isinstance(f, Fwd)]
        if parts is None:
            return Unknown().backward(ctx, node, ins, out, g)
        a, b, m = parts
        if m is None:
            res[idx[0]] = g
            return res
        pa = m[2]
        for i, f, p in ((idx[0], a, pa), (idx[1], b, 1.0 - pa)):
            if not f.const:
                res[i] = broadcast_sum(f, out, g.s * p, g.r * p * p)
        return res
