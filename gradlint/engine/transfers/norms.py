"""Normalization layers (docs/design.md §4.4: N1–N4)."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import BATCH, FEAT, Bwd, Fwd
from gradlint.engine.transfers.registry import NORMALIZATION, Transfer, register
from gradlint.engine.transfers.roles import conv_roles, corr, out_shape


def _affine(ctx: Context, node: Node):
    w = ctx.param_stats(node.params["weight"]) if "weight" in node.params else None
    b = ctx.param_stats(node.params["bias"]) if "bias" in node.params else None
    return (w.ms if w else 1.0), (b.ms if b else 0.0), (b.mean if b else 0.0)


class _RowNorm(Transfer):
    """Shared by LayerNorm (N1), RMSNorm (N2) and GroupNorm (N3)."""

    cause = NORMALIZATION
    centred = True

    def group(self, node: Node, x: Fwd) -> int:
        shape = node.attrs.get("normalized_shape") or ([x.shape[-1]] if x.shape else [1])
        return max(math.prod(shape), 1)

    def var(self, node: Node, x: Fwd) -> float:
        return x.v if self.centred else x.q

    def eps(self, node: Node) -> float:
        e = node.attrs.get("eps")
        return 1.1920928955078125e-07 if e is None else float(e)

    def rho(self, d: int, normed: float) -> float:
        # Finite-d Jacobian projection and E[1/σ̂²] (N1, N2): exact for Gaussian rows,
        # (d-2)/d for rows that are already normalized; interpolated by the normalized share.
        if self.centred:
            if d <= 3:
                return 1.0
            return (d - 2) / d * (1 + (1 - normed * normed) * 3 / (d - 3))
        if d <= 2:
            return 1.0
        return (d - 1) / d * (1 + (1 - normed * normed) * 2 / (d - 2))

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        g2, b2, bm = _affine(ctx, node)
        v = self.var(node, x)
        ve = v + self.eps(node)
        mu0 = x.mu if self.centred else 0.0
        k = g2 * (x.k - mu0 * x.mu) / ve + b2
        kt = g2 * (x.kt - mu0 * x.mu) / ve + b2
        return x.with_(q=g2 * v / ve + b2, mu=bm if self.centred else bm + (x.mu / math.sqrt(ve) if ve > 0 else 0.0),
                       k=k, kt=kt, origin=node.name, normed=1.0, scale=1.0, shape=out_shape(node, x))

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        g2, _, _ = _affine(ctx, node)
        v = self.var(node, x)
        ve = v + self.eps(node)
        d = self.group(node, x)
        rows = max(x.numel // d, 1) if x.numel else 1
        self.param_grads(ctx, node, x, g, rows, v / ve if ve > 0 else 1.0)
        f = g2 / ve if ve > 0 else 0.0
        return [self.centre(node, x, Bwd(g.s * f * self.rho(d, x.normed), g.r * f, 0.0, g.rb * f))]

    def centre(self, node: Node, x, b: Bwd) -> Bwd:
        """LayerNorm/RMSNorm centre the gradient across features: positions are untouched."""
        return b

    def param_grads(self, ctx: Context, node: Node, x, g, rows, xhat2):
        batch = ctx.batch_of(rows)
        pos = max(rows // batch, 1)
        kt_hat = corr(x.kt, x.mu if self.centred else 0.0, self.var(node, x)) * xhat2
        if "weight" in node.params:
            ctx.param_grad(node.params["weight"], rows * (g.s * xhat2 + (pos - 1) * g.r * kt_hat))
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], rows * (g.s + (pos - 1) * g.r))


@register("layer_norm")
class LayerNorm(_RowNorm):
    pass


@register("rms_norm")
class RMSNorm(_RowNorm):
    centred = False


@register("group_norm")
class GroupNorm(_RowNorm):
    """GroupNorm and InstanceNorm (N3): statistics per sample over (C/G)·H·W elements."""

    def group(self, node: Node, x):
        if len(x.shape) < 2:
            return 1
        return max(x.shape[1] // max(node.attrs.get("groups", 1), 1), 1) * max(math.prod(x.shape[2:]), 1)

    def _layout(self, node: Node, x: Fwd) -> tuple[int, int]:
        """(channels per group, positions per channel)."""
        cg = max(x.shape[1] // max(node.attrs.get("groups", 1), 1), 1) if len(x.shape) >= 2 else 1
        return cg, max(math.prod(x.shape[2:]), 1) if len(x.shape) > 2 else 1

    def _shared(self, node: Node, x: Fwd) -> float:
        """The covariance of two members of one statistics group (N3): positions of one channel
        share k_tok (the channel's own offset, a conv's bias and Σw·μ_x), channels only μ²."""
        cg, pos = self._layout(node, x)
        d = cg * pos
        return ((pos - 1) * x.kt + (cg - 1) * pos * x.mu * x.mu) / (d - 1) if d > 1 else x.mu * x.mu

    def var(self, node: Node, x: Fwd) -> float:
        return max(x.q - self._shared(node, x), 0.0)

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        # The group divides by its own variance, q less what its members share, and takes the
        # shared part away: with one channel per group (InstanceNorm) a channel's offset over
        # positions is gone, so positions keep no covariance (k_tok' = β²). Read as LayerNorm's
        # q - μ², TransformerNet's InstanceNorms divided by up to 4x their variance and passed a
        # growing k_tok on: every weight 0.3-0.5 decades low.
        x = ins[0]
        g2, b2, bm = _affine(ctx, node)
        v = self.var(node, x)
        ve = v + self.eps(node)
        cg, pos = self._layout(node, x)
        d = cg * pos
        # Another sample's group mean shares k with the same element, min(k, k_tok) with the
        # channel's other positions, μ² with the other channels.
        ck = (x.k + (pos - 1) * min(x.k, x.kt) + (cg - 1) * pos * x.mu * x.mu) / d
        kt = max(x.kt - self._shared(node, x), 0.0)
        return x.with_(q=g2 * v / ve + b2, mu=bm, k=g2 * max(x.k - ck, 0.0) / ve + b2, kt=g2 * kt / ve + b2,
                       origin=node.name, normed=1.0, scale=1.0, shape=out_shape(node, x))

    def centre(self, node: Node, x, b: Bwd) -> Bwd:
        # The gradient's mean over each statistics group (C/G channels x all positions of one
        # sample) is removed (N3): per element the mean part of r, per channel the share 1/cg of
        # its summed gradient. With one channel per group (InstanceNorm) the sum over a
        # channel's positions is exactly zero, so r = -s/(P-1): a bias added before the norm gets
        # no gradient (a provable zero, layers._bias_ms), as before a train-mode BatchNorm (N4).
        if len(x.shape) < 3:
            return b
        cg = max(x.shape[1] // max(node.attrs.get("groups", 1), 1), 1)
        pos = max(math.prod(x.shape[2:]), 1)
        return _centred_positions(b, cg, pos, self.rho(cg * pos, x.normed))

    def param_grads(self, ctx: Context, node: Node, x, g, rows, xhat2):
        if len(x.shape) < 2:
            return
        n_stat = x.numel // max(x.shape[1], 1)
        if "weight" in node.params:
            ctx.param_grad(node.params["weight"], n_stat * g.s * xhat2)
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], n_stat * g.s)


def _centred_positions(b: Bwd, cg: int, pos: int, rho: float) -> Bwd:
    """The gradient below a norm whose statistics group is ``cg`` channels x ``pos`` positions
    of one sample (N3). ``b`` is the gradient above scaled by the norm's factor: s by f·rho,
    where rho = (d-2)/d·(1+κ) counts the mean and x̂ projections of an uncorrelated gradient,
    r and rb by f. Positions that share their gradient (r) lose that shared part with the
    mean, and with x̂ too when the group is one channel (x̂ then sums to zero over the
    positions): s' = f(1+κ)(P-2)/P·(s - r), exact for InstanceNorm. The summed gradient of one
    channel keeps 1 - 1/cg of its square, none of it for cg = 1; r follows from that sum."""
    if pos < 2:
        return b
    d = cg * pos
    k1 = rho * d / (d - 2) if d > 3 else 1.0  # 1 + κ
    sp = b.s * d / (d - 2) if d > 3 else b.s  # f(1+κ)·s before the projections
    rp = k1 * b.r
    s = max(b.s - ((pos - 1) - (1 if cg == 1 else 0)) * rp / d, 0.0)
    total = (1 - 1 / cg) * (sp + (pos - 1) * rp)  # E[(Σ_p δ'_p)²] / P for one channel
    return Bwd(s, (total - s) / (pos - 1), 0.0, b.rb, 0.0, b.unknown)


def _group_cov(x: Fwd, n_b: int) -> float:
    """The covariance of two different members of a BatchNorm's statistics group (batch ×
    positions, N4), which the batch mean takes away. Of the N − 1 others, P − 1 share the
    sample (kt), B − 1 the position (k), the rest neither; those keep what both kinds of pair
    share, min(k, kt) (a padded conv's per-channel offset differs over positions: kt < k)."""
    pos = max(math.prod(x.shape[2:]), 1) if len(x.shape) > 2 else 1
    b = max(n_b // pos, 1)
    if n_b < 2:
        return x.k
    return ((pos - 1) * x.kt + (b - 1) * x.k + (b - 1) * (pos - 1) * min(x.k, x.kt)) / (n_b - 1)


@register("batch_norm")
class BatchNorm(Transfer):
    """BatchNorm (N4): in train mode divides by the batch variance q - k, which is what makes
    deep BN stacks' gradients grow toward the input (7.4, Yang et al. 2019)."""

    cause = NORMALIZATION

    def _stats(self, node: Node, x):
        c = x.shape[1] if len(x.shape) > 1 else (x.shape[0] if x.shape else 1)
        n_b = max(x.numel // max(c, 1), 1)
        return c, n_b

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        g2, b2, bm = _affine(ctx, node)
        eps = node.attrs.get("eps", 1e-5)
        _, n_b = self._stats(node, x)
        if not node.attrs.get("training", True):
            return x.with_(q=g2 * x.q / (1 + eps) + b2, k=g2 * x.k / (1 + eps) + b2, kt=g2 * x.kt / (1 + eps) + b2,
                           origin=node.name, roles=conv_roles(len(x.shape)) if len(x.shape) > 2 else x.roles)
        cov = _group_cov(x, n_b)  # the batch mean takes it away: BN divides by q - cov
        vb = max(x.q - cov, 0.0)
        ve = vb + eps
        share = vb / ve if ve > 0 else 0.0
        k = b2 - g2 * share / max(n_b - 1, 1)
        kt = g2 * (x.kt - cov) / ve + b2 if ve > 0 else b2
        roles = conv_roles(len(x.shape)) if len(x.shape) > 2 else (BATCH + FEAT if len(x.shape) == 2 else x.roles)
        return x.with_(q=g2 * share + b2, mu=bm, k=k, kt=kt, origin=node.name, normed=0.0, roles=roles, scale=1.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        g2, _, _ = _affine(ctx, node)
        eps = node.attrs.get("eps", 1e-5)
        c, n_b = self._stats(node, x)
        if not node.attrs.get("training", True):
            f = g2 / (1 + eps)
            xhat2 = x.q / (1 + eps)
        else:
            vb = max(x.q - _group_cov(x, n_b), 0.0)
            f = g2 / (vb + eps) * ((n_b - 2) / (n_b - 3) if n_b > 3 else 1.0)
            xhat2 = vb / (vb + eps)
        if "weight" in node.params:
            ctx.param_grad(node.params["weight"], n_b * g.s * xhat2)
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], n_b * g.s)
        if not node.attrs.get("training", True):
            return [Bwd(g.s * f, g.r * f, 0.0, g.rb * f)]
        # Train-mode BN subtracts the gradient's mean over its statistics group (batch x
        # positions): the gradients of different samples then sum to zero. The (N-2)/(N-3)
        # factor counts that for uncorrelated gradients; when positions share their gradient
        # (pooling downstream), the mean carries more of it and more is removed.
        pos = max(n_b // max(x.shape[0], 1), 1) if x.shape else 1
        # The projection on x_hat removes what the next activation's Stein term (coh) makes
        # coherent across positions.
        extra = ((pos - 1) * (g.r + g2 * g.coh) + (n_b - pos) * g.rb) / n_b
        base = f * (n_b - 3) / (n_b - 2) if n_b > 3 else f
        s_in = max(f * g.s - base * extra, 0.0)
        r_in = base * (g.r - (g.s + (pos - 1) * g.r + (n_b - pos) * g.rb) / n_b)
        rb = -(s_in + (pos - 1) * r_in) / max(n_b - pos, 1)
        return [Bwd(s_in, r_in, 0.0, rb)]
