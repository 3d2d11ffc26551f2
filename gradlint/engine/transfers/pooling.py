"""Reductions, pooling and softmax (docs/design.md §4.3: P1–P3; §4.5: S1)."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine import gaussian
from gradlint.engine.context import Context
from gradlint.engine.state import BATCH, POS, Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.roles import conv_roles, out_shape, softmax_dim_var, softmax_len


def _reduced_counts(x: Fwd, dims: list[int] | None):
    n = len(x.shape)
    roles = x.roles if len(x.roles) == n else default_roles(x.shape)
    red = list(range(n)) if not dims else sorted({d % n for d in dims}) if n else []
    nb = np_ = nf = 1
    for d in red:
        if roles[d] == BATCH:
            nb *= x.shape[d]
        elif roles[d] == POS:
            np_ *= x.shape[d]
        else:
            nf *= x.shape[d]
    return red, nb, np_, nf


def _mean_q(x: Fwd, nb: int, np_: int, nf: int) -> float:
    # Second moment of a mean over nb samples x np_ positions x nf features (P1), counting the
    # covariance of each kind of pair: different features (mu^2), positions (kt), samples (k).
    n = nb * np_ * nf
    same_f = nf * (nb * np_) ** 2
    total = (n * x.q + nf * nb * np_ * (np_ - 1) * x.kt + nf * nb * (nb - 1) * np_ * np_ * x.k
             + (n * n - same_f) * x.mu * x.mu)
    return total / (n * n)


@register("reduce")
class Reduce(Transfer):
    """mean / sum over dims (P1) and max over a dim (P3)."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        op = node.attrs.get("op")
        shape = out_shape(node, x)
        red, nb, np_, nf = _reduced_counts(x, node.attrs.get("dims"))
        n = nb * np_ * nf
        keep = [i for i in range(len(x.shape)) if i not in red]
        roles = "".join(x.roles[i] for i in keep) if len(x.roles) == len(x.shape) else default_roles(shape)
        if node.attrs.get("keepdim"):
            roles = x.roles if len(x.roles) == len(shape) else default_roles(shape)
        if op in ("max", "amax", "min", "amin"):
            e1, e2 = gaussian.max_normal_moments(max(n, 1))
            v = x.v
            sign = -1.0 if op in ("min", "amin") else 1.0
            return x.with_(q=x.mu * x.mu + 2 * sign * x.mu * math.sqrt(v) * e1 + v * e2,
                           mu=x.mu + sign * math.sqrt(v) * e1, shape=shape, roles=roles, origin=node.name)
        if op in ("var", "std") and n > 1:
            # A variance over n entries of one row is concentrated around the entries' variance:
            # E = v, Var = 2v²/(n − 1) for Gaussian entries; its square root has E ≈ √v and
            # Var ≈ v / (2(n − 1)). Rows share it to first order (k = kt = E²).
            v, m = x.v, x.v
            spread = 2 * v * v / (n - 1)
            if op == "std":
                m, spread = math.sqrt(v), v / (2 * (n - 1))
            return x.with_(q=m * m + spread, mu=m, k=m * m, kt=m * m, shape=shape, roles=roles, origin=node.name,
                           normed=0.0, scale=1.0)
        if op == "norm":
            # ‖x‖ over n entries: concentrated at √(n·q), Var ≈ (q_4 − q²)/(4q) → v/2 for
            # Gaussian entries; rows share it to first order.
            m2 = n * x.q
            return x.with_(q=m2, mu=math.sqrt(m2), k=m2, kt=m2, shape=shape, roles=roles, origin=node.name,
                           normed=0.0, scale=1.0)
        if op not in ("mean", "sum"):
            ctx.note_unknown(node)
            return x.with_(shape=shape, roles=roles)
        if n == 0:
            # Over zero elements: a sum is 0; a mean is NaN in torch, with no gradient either way.
            return x.with_(q=0.0, mu=0.0, k=0.0, kt=0.0, shape=shape, roles=roles, origin=node.name, normed=0.0)
        q = _mean_q(x, nb, np_, nf)
        k = (x.k + (nf - 1) * x.mu * x.mu) / nf
        kt = (x.kt + (nf - 1) * x.mu * x.mu) / nf if np_ == 1 else k
        mu = x.mu
        if op == "sum":
            q, k, kt, mu = q * n * n, k * n * n, kt * n * n, mu * n
        return x.with_(q=q, mu=mu, k=k, kt=kt, shape=shape, roles=roles, origin=node.name, normed=0.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        op = node.attrs.get("op")
        red, nb, np_, nf = _reduced_counts(x, node.attrs.get("dims"))
        n = max(nb * np_ * nf, 1)
        if op in ("max", "amax", "min", "amin"):
            return [g.scaled(1.0 / n)]
        if op in ("var", "std") and n > 1:
            # d var / dx_i = 2 (x_i − x̄) / (n − c), d std / dx_i = (x_i − x̄) / ((n − c) std).
            c = node.attrs.get("correction")
            dof = max(n - (1.0 if c is None else float(c)), 1.0)
            v = x.v
            f = 4 * v / (dof * dof) if op == "var" else 1.0 / (dof * dof)
            cen_t = max(x.kt - x.mu * x.mu, 0.0) / v if v > 0 else 0.0
            cen_b = max(x.k - x.mu * x.mu, 0.0) / v if v > 0 else 0.0
            return [Bwd(g.s * f, (g.s if np_ > 1 else g.r) * f * cen_t, 0.0, (g.s if nb > 1 else g.rb) * f * cen_b)]
        if op == "norm":
            # d‖x‖/dx_i = x_i/‖x‖: E = q/(n·q) = 1/n.
            return [Bwd(g.s / n, (g.s if np_ > 1 else g.r) / n, 0.0, (g.s if nb > 1 else g.rb) / n)]
        if op not in ("mean", "sum"):
            return [g]
        f = 1.0 / (n * n) if op == "mean" else 1.0
        s = g.s * f
        r = g.s * f if np_ > 1 else g.r * f
        return [Bwd(s, r, 0.0, (g.s if nb > 1 else g.rb) * f)]


@register("max_pool")
class MaxPool(Transfer):
    """Max pooling over windows of n entries (P3); gradient routed to one input each."""

    def _n(self, node: Node, x, out):
        ks = node.attrs.get("kernel_size") or []
        if node.attrs.get("adaptive"):
            nsp = len(ks) or 2
            return max(int(round(math.prod(x.shape[-nsp:]) / max(math.prod(out.shape[-nsp:]), 1))), 1)
        return max(math.prod(ks), 1) if ks else 1

    @staticmethod
    def _relu_input(ctx: Context, node: Node) -> Fwd | None:
        """The pre-activation when the pooled tensor is a ReLU's output. Max and ReLU commute,
        so the pool sees relu(max of Gaussian entries): the window's max is positive almost
        surely, not half the time (P3)."""
        src = node.inputs[0] if node.inputs else None
        prod = ctx.graph[src] if src is not None and src in ctx.forward else None
        if prod is None or prod.kind != "act" or prod.attrs.get("fn") != "relu" or not prod.inputs:
            return None
        pre = ctx.forward.get(prod.inputs[0])
        return pre if isinstance(pre, Fwd) and pre.v > 0 else None

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        shape = out_shape(node, x)
        n = self._n(node, x, Fwd(q=0.0, shape=shape))
        pre = self._relu_input(ctx, node)
        if pre is not None:
            mu, q, _ = gaussian.max_relu_moments(n, pre.mu, math.sqrt(pre.v))
        else:
            e1, e2 = gaussian.max_normal_moments(n)
            v, mu = x.v, x.mu
            q, mu = mu * mu + 2 * mu * math.sqrt(v) * e1 + v * e2, mu + math.sqrt(v) * e1
        # Windows in two samples (or two windows of one sample) keep the entries' centred
        # correlation; the common part becomes the max's mean.
        v_out = max(q - mu * mu, 0.0)
        k, kt = (mu * mu + _centred(c, x) * v_out for c in (x.k, x.kt))
        return x.with_(q=q, mu=mu, k=k, kt=kt, shape=shape, origin=node.name,
                       roles=x.roles if len(x.roles) == len(shape) else conv_roles(len(shape)))

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        frac = out.numel / x.numel if x.numel else 1.0
        # Each output sends its δ to one entry of its window, so the summed gradient is the same
        # on both sides: s_in = frac·s, and pairs of entries share r with probability frac².
        f = 1.0
        pre = self._relu_input(ctx, node)
        if pre is not None:
            # The ReLU below passes a δ where its input is positive: E[φ'²] for any δ, P(max > 0)
            # for the one this pool routes to the window's largest entry.
            _, _, p_open = gaussian.max_relu_moments(self._n(node, x, out), pre.mu, math.sqrt(pre.v))
            p_relu = gaussian.moments("relu", pre.mu, pre.v).dphi2
            f = p_open / p_relu if p_relu > 0 else 1.0
        return [Bwd(g.s * frac * f, g.r * frac * frac * f, 0.0, g.rb * frac * frac * f)]


def _centred(c: float, x: Fwd) -> float:
    """The centred correlation of a covariance c of x's entries, within [-1, 1]."""
    v = x.v
    return min(max((c - x.mu * x.mu) / v, -1.0), 1.0) if v > 0 else 0.0


@register("avg_pool")
class AvgPool(Transfer):
    """Average pooling (P1, P2): q' = (q - kt)/n + kt; s_in = s·n_w/n²."""

    def _n(self, node: Node, x, out):
        if node.attrs.get("adaptive") or not node.attrs.get("kernel_size"):
            n = max(math.prod(x.shape[2:]) / max(math.prod(out.shape[2:]), 1), 1.0) if len(x.shape) > 2 else 1.0
            return n, 1.0
        ks = node.attrs["kernel_size"]
        if len(ks) == 1 and len(x.shape) > 3:
            ks = ks * (len(x.shape) - 2)
        st = node.attrs.get("stride") or ks
        if len(st) == 1 and len(ks) > 1:
            st = st * len(ks)
        n = float(math.prod(ks))
        return n, n / float(math.prod(st))

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        shape = out_shape(node, x)
        n, _ = self._n(node, x, Fwd(q=0.0, shape=shape))
        return x.with_(q=(x.q - x.kt) / n + x.kt, shape=shape, origin=node.name,
                       roles=x.roles if len(x.roles) == len(shape) else conv_roles(len(shape)))

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        n, nw = self._n(node, x, out)
        if x.numel and out.numel:
            # Windows covering an element, on average: n per output over the input's elements.
            # n / Π stride counts an interior element of a large map; a window as large as the
            # map (AvgPool2d(8) at stride 1 on 8×8, GoogLeNet's head) has one output, not n.
            nw = n * out.numel / x.numel
        s = g.s * nw / (n * n)
        p_in = math.prod(x.shape[2:]) if len(x.shape) > 2 else 1
        p_out = math.prod(out.shape[2:]) if len(out.shape) > 2 else 1
        if p_in > 1:
            # Only the other entries of a window share its δ: r is the mean over all pairs of
            # positions. Every output's δ/n lands on its n entries, so the gradient summed over a
            # plane is the same on both sides (P2; as P4 for interpolation).
            r = (p_out * g.s + p_out * (p_out - 1) * g.r - p_in * s) / (p_in * (p_in - 1))
            r = max(r, -s / (p_in - 1))
        else:
            r = g.s / (n * n) + g.r * nw / (n * n)
        return [Bwd(s, r, 0.0, g.rb * nw / (n * n))]


@register("softmax")
class Softmax(Transfer):
    """Softmax over K entries (S1) with Monte Carlo moments; log_softmax approximately."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        dim = node.attrs["dim"]
        K = softmax_len(x, dim)
        v = softmax_dim_var(x, dim)
        if node.attrs.get("log"):
            return x.with_(q=v + math.log(max(K, 1)) ** 2, mu=-math.log(max(K, 1)), origin=node.name)
        s2, _, _ = gaussian.softmax_moments(K, v)
        return x.with_(q=s2 / K, mu=1.0 / K, k=1.0 / K ** 2, kt=1.0 / K ** 2, origin=node.name, normed=0.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        dim = node.attrs["dim"]
        K = softmax_len(x, dim)
        v = softmax_dim_var(x, dim)
        if node.attrs.get("log"):
            s2, _, _ = gaussian.softmax_moments(K, v)
            return [Bwd(g.s * (1 - 2 / K + s2 / K), g.r)]
        s2, s3, s22 = gaussian.softmax_moments(K, v)
        return [Bwd(g.s * (s2 - 2 * s3 + s22) / K, 0.0)]
