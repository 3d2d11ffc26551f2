"""Dropout, sums and products (docs/design.md §4.2: E2, E3, E6)."""

from __future__ import annotations

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import RESIDUAL, Transfer, register
from gradlint.engine.transfers.roles import broadcast_sum, out_shape, roles_like


@register("dropout")
class Dropout(Transfer):
    """Dropout in train mode (E6): q and s scale by 1/(1-p)."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        p = node.attrs.get("p", 0.0) if node.attrs.get("train", True) else 0.0
        if p <= 0 or p >= 1:
            return x.with_(shape=out_shape(node, x))
        return x.with_(q=x.q / (1 - p), origin=node.name)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        p = node.attrs.get("p", 0.0) if node.attrs.get("train", True) else 0.0
        if p <= 0 or p >= 1:
            return [g]
        return [Bwd(g.s / (1 - p), g.r, 0.0, g.rb)]


@register("add")
class Add(Transfer):
    """Sums (E2): independent branches add their moments; x + x adds coherently."""

    cause = RESIDUAL

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        alpha = float(node.attrs.get("alpha", 1) or 1)
        tensors = [f for f in ins if isinstance(f, Fwd)]
        shape = out_shape(node, tensors[0])
        if len(tensors) == 1:
            x = tensors[0]
            a, c = self._affine(node)
            x = x.with_(q=a * a * x.q, mu=a * x.mu, k=a * a * x.k, kt=a * a * x.kt, scale=a * x.scale)
            if c:
                # A shifted tensor is a new variable: x + c is not a multiple of x, so products
                # with x (a gate times its complement, 1 - g) must not read as x * x.
                x = x.with_(origin=node.name, scale=1.0)
            return x.with_(q=x.q + 2 * c * x.mu + c * c, mu=x.mu + c, k=x.k + 2 * c * x.mu + c * c,
                           kt=x.kt + 2 * c * x.mu + c * c, shape=shape, roles=roles_like(shape, x))
        a, b = tensors[0], tensors[1]
        # A constant of unknown value (q = 0: created by the forward, or a mask) adds nothing the
        # engine can account for; one whose value is known (a position table) adds its moments.
        if a.const and not b.const and a.q == 0:
            return b.with_(shape=shape, roles=roles_like(shape, b))
        if b.const and not a.const and b.q == 0:
            return a.with_(shape=shape, roles=roles_like(shape, a))
        roles = a.roles if len(a.shape) == len(shape) else roles_like(shape, b)
        if a.origin is not None and a.origin == b.origin and not a.origin.startswith("const"):
            f = (a.scale + alpha * b.scale) / a.scale if a.scale else 1.0
            return a.with_(q=f * f * a.q, mu=f * a.mu, k=f * f * a.k, kt=f * f * a.kt, shape=shape, roles=roles,
                           scale=a.scale * f)
        qa, qb = a.q, alpha * alpha * b.q
        cross = 2 * alpha * a.mu * b.mu
        q = qa + qb + cross
        normed = (a.normed * qa + b.normed * qb) / q if q > 0 else 0.0
        return Fwd(q=q, mu=a.mu + alpha * b.mu, k=a.k + alpha * alpha * b.k + cross,
                   kt=a.kt + alpha * alpha * b.kt + cross, shape=shape, roles=roles, dtype=a.dtype,
                   const=a.const and b.const, blocked=a.blocked and b.blocked, origin=None, normed=normed)

    @staticmethod
    def _affine(node: Node) -> tuple[float, float]:
        """(a, c) of a one-tensor sum out = a * x + c: ``x + alpha * c`` (add, sub), or
        ``c + alpha * x`` with the scalar first (rsub: 1 - g)."""
        alpha = float(node.attrs.get("alpha", 1) or 1)
        c = node.attrs.get("scalar")
        c = float(c) if isinstance(c, (int, float)) else 0.0
        if node.attrs.get("scalar_first"):
            return alpha, c
        return 1.0, alpha * c

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        alpha = float(node.attrs.get("alpha", 1) or 1)
        tensors = [f for f in ins if isinstance(f, Fwd) and not f.const]
        if len(tensors) == 1 and len([f for f in ins if isinstance(f, Fwd)]) == 1:
            a, _ = self._affine(node)
            g = g.scaled(a * a)
        res: list[Bwd | None] = []
        first = True
        for f in ins:
            if not isinstance(f, Fwd) or f.const:
                res.append(None)
                continue
            gi = g if first else g.scaled(alpha * alpha)
            first = False
            b = broadcast_sum(f, out, gi.s, gi.r)
            if gi.coh and f.numel >= out.numel:
                # The activation after the sum reads every branch: its Stein term (W1) holds for
                # a layer at the head of either branch, E[φ'(a + Wx)·x_j] = w_j·E[φ'']·Var x_j.
                b = Bwd(b.s, b.r, b.sw, b.rb, gi.coh, b.unknown)
            res.append(b)
        return res


def _known(c: Fwd) -> bool:
    """A constant whose moments were read from the model (a table), not a mask or a value the
    forward makes (q = 0: unknown)."""
    return c.q > 0 and c.shape is not None and c.numel > 1 and not c.unknown


def _inverse_moments(d: Fwd) -> tuple[float, float, float] | None:
    """E[1/d], E[1/d²], E[1/d⁴] of a Gaussian d bounded away from zero (|μ| ≥ 4σ: a norm, an
    eps-shifted positive value), by the second-order delta method; None otherwise."""
    mu, v = d.mu, d.v
    if mu == 0 or mu * mu < 16 * v:
        return None
    r = v / (mu * mu)
    return (1 + r) / mu, (1 + 3 * r) / mu ** 2, (1 + 10 * r) / mu ** 4


@register("mul")
class Mul(Transfer):
    """Products (E3) and scaling by constants, parameters (LayerScale, SkipInit α) or tensors."""

    def _scalar(self, node: Node) -> float | None:
        c = node.attrs.get("scalar")
        if not isinstance(c, (int, float)):
            return None
        c = float(c)
        if node.attrs.get("op") == "div":
            if node.attrs.get("scalar_first"):
                return None
            return 1.0 / c if c else None
        return c

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        tensors = [f for f in ins if isinstance(f, Fwd)]
        x = tensors[0]
        shape = out_shape(node, x)
        if len(tensors) == 1:
            c = self._scalar(node)
            if c is None:
                return x.with_(shape=shape)
            return x.with_(q=c * c * x.q, mu=c * x.mu, k=c * c * x.k, kt=c * c * x.kt, shape=shape,
                           scale=x.scale * c)
        a, b = tensors[0], tensors[1]
        if node.attrs.get("op") == "div":
            inv = _inverse_moments(b)
            if a.const or inv is None:
                if inv is None and not b.const:
                    # 1/d has no finite moments where d reaches 0: what follows reads the
                    # numerator's statistics, a guess (RWKV-v1's wkv / cumsum(exp k): 1.5 decades).
                    ctx.note_unknown(node)
                return a.with_(shape=shape, roles=roles_like(shape, a)) if not a.const else b.with_(shape=shape)
            m1, m2, _ = inv
            # a / d = a * (1/d), d independent of a and bounded away from 0.
            return a.with_(q=a.q * m2, mu=a.mu * m1, k=a.k * m1 * m1, kt=a.kt * m1 * m1, shape=shape,
                           roles=roles_like(shape, a), origin=None, scale=1.0)
        if a.const != b.const:
            x, c = (b, a) if a.const else (a, b)
            if _known(c):
                # A fixed table read from the model (rotary's cos and sin) multiplies the moments
                # of an independent factor; one of unknown value (q = 0) passes x through.
                return x.with_(q=x.q * c.q, mu=x.mu * c.mu, k=x.k * c.k, kt=x.kt * c.kt, shape=shape,
                               roles=roles_like(shape, x), origin=None, scale=1.0)
            return x.with_(shape=shape, roles=roles_like(shape, x))
        roles = a.roles if len(a.shape) == len(shape) else roles_like(shape, b)
        if a.origin is not None and a.origin == b.origin:
            # x * x: fourth moment of a Gaussian.
            v, mu, sc = a.v, a.mu, a.scale * b.scale / (a.scale * a.scale) if a.scale else 1.0
            q4 = 3 * v * v + 6 * v * mu * mu + mu * mu * mu * mu
            return a.with_(q=sc * sc * q4, mu=sc * a.q, k=sc * sc * a.q * a.q, kt=sc * sc * a.q * a.q, shape=shape,
                           roles=roles, origin=node.name, scale=1.0)
        return Fwd(q=a.q * b.q, mu=a.mu * b.mu, k=a.k * b.k, kt=a.kt * b.kt, shape=shape, roles=roles,
                   dtype=a.dtype, blocked=a.blocked and b.blocked,
                   origin=a.origin if b.origin and b.origin.startswith("param:") else None,
                   scale=a.scale, normed=a.normed if b.origin and b.origin.startswith("param:") else 0.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        tensors = [(i, f) for i, f in enumerate(ins) if isinstance(f, Fwd)]
        res: list[Bwd | None] = [None] * len(ins)
        if len(tensors) == 1:
            i, x = tensors[0]
            c = self._scalar(node)
            res[i] = g if c is None else g.scaled(c * c)
            return res
        (ia, a), (ib, b) = tensors[0], tensors[1]
        if node.attrs.get("op") == "div":
            inv = _inverse_moments(b)
            if inv is None:
                # 1/d has no finite moments where d reaches 0: the numerator keeps today's
                # pass-through (a known approximation, E3), the denominator's gradient is unknown.
                res[ia] = g
                if not b.const:
                    res[ib] = broadcast_sum(b, out, g.s * a.q, 0.0).as_unknown()
                return res
            m1, m2, m4 = inv
            if not a.const:
                res[ia] = broadcast_sum(a, out, g.s * m2, g.r * m1 * m1)
            if not b.const:
                # d(a/d)/dd = -a/d²: E[(a/d²)²] = q_a·E[1/d⁴].
                res[ib] = broadcast_sum(b, out, g.s * a.q * m4, 0.0)
            return res
        if a.const != b.const:
            c = a if a.const else b
            res[ib if a.const else ia] = Bwd(g.s * c.q, g.r * c.kt, g.sw * c.q, g.rb * c.k, 0.0, g.unknown) \
                if _known(c) else g
            return res
        if a.origin is not None and a.origin == b.origin:
            res[ia] = Bwd(4 * g.s * a.q, 4 * g.r * a.kt)
            return res
        res[ia] = broadcast_sum(a, out, g.s * b.q, g.r * b.kt)
        res[ib] = broadcast_sum(b, out, g.s * a.q, g.r * a.kt)
        return res
