"""Top-k selection and mixture-of-experts layers (docs/design.md §4.3 ``topk``, §4.8)."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine import gaussian, routing
from gradlint.engine.context import Context
from gradlint.engine.state import FEAT, Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import INIT, Transfer, register
from gradlint.engine.transfers.roles import corr, out_shape, roles_like, softmax_dim_var


@register("topk")
class TopK(Transfer):
    """``topk`` and ``sort``: (values, indices). The values are the k largest (smallest) of the
    n entries along ``dim``, as order statistics of i.i.d. normals around the entries' common
    part; their gradient lands on k of n entries. The indices carry no gradient."""

    def _n_k(self, node: Node, x: Fwd) -> tuple[int, int, int]:
        dim = int(node.attrs.get("dim", -1))
        n = x.shape[dim] if x.shape and -len(x.shape) <= dim < len(x.shape) else 1
        k = node.attrs.get("k")
        k = n if k is None else min(int(k), n)
        return max(n, 1), max(k, 0), dim

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        s = node.shape
        pair = isinstance(s, tuple) and len(s) == 2 and all(isinstance(t, tuple) for t in s)
        shapes = s if pair else (x.shape, x.shape)
        n, k, dim = self._n_k(node, x)
        if x.dtype == "float" and k > 0 and x.shape:
            v = softmax_dim_var(x, dim)
            e1, e2 = gaussian.topk_normal_moments(n, k)
            sign = 1.0 if node.attrs.get("largest", True) else -1.0
            sd = math.sqrt(v)
            values = x.with_(q=max(x.q - v, 0.0) + 2 * sign * x.mu * sd * e1 + v * e2, mu=x.mu + sign * sd * e1,
                             shape=shapes[0], roles=roles_like(shapes[0], x), origin=node.name, normed=0.0)
        else:
            values = x.with_(shape=shapes[0], roles=roles_like(shapes[0], x))
        indices = Fwd(q=0.0, shape=shapes[1], roles=default_roles(shapes[1]), dtype="int", blocked=True,
                      const=x.const, origin=node.name)
        return values, indices

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        gv = g[0] if isinstance(g, tuple) else g
        if gv is None or x.dtype != "float":
            return [None]
        n, k, _ = self._n_k(node, x)
        frac = k / n
        return [Bwd(gv.s * frac, gv.r * frac, 0.0, gv.rb * frac)]


@register("router")
class Router(Transfer):
    """Mixture-of-experts routing weights (``fusion.fuse_router``): softmax over E logits, the
    top k of it, renormalized to sum 1 where the model does (Mixtral). Moments and the
    Jacobian's mean squared norm from ``routing.router_moments``; the k weights' gradients
    are uncorrelated (each reaches its weight through a different expert), so the logits get
    s_z = s_w·E‖∂w/∂z‖²/E per element."""

    def _moments(self, node: Node, z: Fwd):
        v = softmax_dim_var(z, int(node.attrs.get("dim", -1)))
        return routing.router_moments(node.attrs["experts"], node.attrs["k"], v, bool(node.attrs.get("normalize")))

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        z = ins[0]
        m = self._moments(node, z)
        var = max(m.second - m.mean * m.mean, 0.0)
        # Tokens whose logits are correlated are routed alike.
        ck = min(max(corr(z.k, z.mu, z.v), 0.0), 1.0)
        ckt = min(max(corr(z.kt, z.mu, z.v), 0.0), 1.0)
        shape = out_shape(node, z)
        return Fwd(q=m.second, mu=m.mean, k=m.mean * m.mean + ck * var, kt=m.mean * m.mean + ckt * var,
                   shape=shape, roles=roles_like(shape, z), origin=node.name, blocked=z.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        m = self._moments(node, ins[0])
        return [Bwd(g.s * m.jac / max(int(node.attrs["experts"]), 1), 0.0)]


@register("moe_linear")
class GroupedLinear(Transfer):
    """Expert layers of a mixture of experts run as one grouped matmul (transformers'
    ``grouped_mm_fallback``, ATen's ``_grouped_mm``): the S = N·k dispatched rows (token
    copies sorted by expert) each meet one expert's weight W[e], E experts in all.

    Forward and backward per row are (L1) with that expert's weight. Rows routed to different
    experts meet independent weights, so two rows' covariance (kt, k; r, rb going back)
    survives only when they share an expert: with probability ρ = E|T ∩ T'|/k² for the two
    tokens' expert sets T, T' (``routing.routing_overlap``), from the correlation of their
    router logits (the second input, linked by ``fusion.fuse_router``): 1/E for independent
    tokens, 1/k for identical ones. The weight gradient (W1) sums over the n_e rows expert e
    received; its mean square over the whole (E, ·, ·) tensor is (1/E)·Σ_e n_e·s·q =
    (S/E)·s·q whatever the balance, plus the r term for the (P − 1)·k·ρ rows of the other
    P − 1 tokens of the same sample that meet the same expert.
    """

    cause = INIT

    def _dims(self, ctx: Context, node: Node):
        w = ctx.param_stats(node.params["weight"])
        if node.attrs.get("layout") == "out_in":
            fan_out, fan_in = w.shape[-2], w.shape[-1]
        else:
            fan_in, fan_out = w.shape[-2], w.shape[-1]
        return w, max(w.shape[0], 1), fan_in, fan_out

    @staticmethod
    def _shares(node: Node, ins, groups: int) -> tuple[float, float]:
        """ρ for two tokens of one sample (kt) and of two samples (k)."""
        if not node.attrs.get("routed", True):
            return 1.0, 1.0
        z = ins[1] if len(ins) > 1 else None
        k = node.attrs.get("top_k")
        if not isinstance(z, Fwd) or not k:
            return 1.0 / groups, 1.0 / groups  # no router in sight: independent routing
        return (routing.routing_overlap(groups, k, corr(z.kt, z.mu, z.v)),
                routing.routing_overlap(groups, k, corr(z.k, z.mu, z.v)))

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        w, groups, fan_in, _ = self._dims(ctx, node)
        share_t, share_b = self._shares(node, ins, groups)
        b = ctx.param_stats(node.params["bias"]) if "bias" in node.params else None
        bq, bm = (b.ms, b.mean) if b else (0.0, 0.0)
        g = fan_in * w.ms
        shape = out_shape(node, x)
        roles = (x.roles[:-1] + FEAT) if len(x.roles) == len(shape) and shape else default_roles(shape)
        return Fwd(q=g * x.q + bq, mu=bm, k=share_b * (g * x.k + bq) + (1 - share_b) * bm * bm,
                   kt=share_t * (g * x.kt + bq) + (1 - share_t) * bm * bm,
                   shape=shape, roles=roles, origin=node.name, const=x.const, blocked=x.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        w, groups, fan_in, fan_out = self._dims(ctx, node)
        share_t, share_b = self._shares(node, ins, groups)
        rows = max(x.numel // fan_in, 1) if x.numel and fan_in else 1
        per_group = rows / groups
        if node.attrs.get("routed", True):
            per_sample = rows / ctx.batch_of(rows)
            k = node.attrs.get("top_k") or 1
            # The token's own other copies never meet the same expert.
            pairs = max(per_sample / k - 1, 0.0) * k * share_t
        else:  # (E, M, in) batched: group e is the M rows of x[e]
            pairs = 0.0
        ctx.param_grad(node.params["weight"], per_group * ((g.s + g.sw) * x.q + pairs * g.r * x.kt))
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], per_group * (g.s + pairs * g.r))
        f = fan_out * w.ms
        return [Bwd(f * g.s, share_t * f * g.r, 0.0, share_b * f * g.rb)] + [None] * (len(ins) - 1)
