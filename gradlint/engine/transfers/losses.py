"""Loss functions (docs/design.md §4.9: the gradient a loss sends into its input).

A loss ``ℓ = reduce(f(x, t))`` sends ``dℓ/dx = g · c · d(x, t)`` back, with ``g`` the gradient
arriving at the loss (the scalar's, or one per element for ``reduction='none'``), ``d`` the
per-element derivative and ``c = 1/N`` for a mean over N terms (rows for the classification
losses, elements for the regression ones), 1 for a sum or none. Its mean square is
``E[g²] c² E[d²]``; ``d`` follows from the operands' statistics:

* cross-entropy: ``d = softmax(x) − y`` over a row of V logits, so per element
  ``E[d²] = (E[Σp²] − 2 E[Σ p·y] + Σy²) / V``, with ``E[Σp²]`` the softmax moment S2 of the
  logits' variance, ``E[p_t] = 1/V`` for a target independent of the logits, and y one-hot or
  label-smoothed. Near-uniform softmax (S2 = 1/V): ``(1 − 1/V) / V``;
* NLL on log-probabilities: ``d = −y``, ``E[d²] = 1/V``;
* MSE: ``d = 2(x − t)``; L1: ``sign(x − t)``; smooth L1 / Huber: ``x − t`` clamped, moments of
  a Gaussian ``x − t`` (the activation catalogue's hardtanh);
* binary cross-entropy on logits: ``d = σ(x) − y``; on probabilities: ``(p − y) / (p(1 − p))``.

Rows are independent given the targets: two positions of one sample share the mean part of d
only (zero for the classification losses, whose ``E[p_c] − E[y_c] = 0``). Class or positive
weights are not modelled: the gradient is then estimated without them and marked unknown.
"""

from __future__ import annotations

import math

import torch

from gradlint.capture.graph import Node
from gradlint.engine import gaussian
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.roles import corr, out_shape

NONE, MEAN, SUM = 0, 1, 2
CLASSIFICATION = ("cross_entropy", "nll")


def _classes(node: Node, x: Fwd) -> int:
    """V: the class dim is 1 for (N, C, ...) inputs, 0 for one unbatched row."""
    if not x.shape:
        return 1
    return max(x.shape[1] if len(x.shape) > 1 else x.shape[0], 1)


def _terms(node: Node, x: Fwd) -> int:
    """N, the count a mean reduction divides by: rows for classification, elements otherwise."""
    n = max(x.numel, 1)
    return max(n // _classes(node, x), 1) if node.attrs.get("op") in CLASSIFICATION else n


def _target(ins: list) -> Fwd | None:
    t = ins[1] if len(ins) > 1 else None
    return t if isinstance(t, Fwd) and t.dtype == "float" else None


def _diff(x: Fwd, t: Fwd | None) -> tuple[float, float, float, float]:
    """Mean, variance, and the cross-position/-sample covariances (incl. the mean) of x − t,
    the target independent of x."""
    mt, qt, ktt, kt_ = (t.mu, t.q, t.kt, t.k) if t is not None else (0.0, 0.0, 0.0, 0.0)
    mu = x.mu - mt
    q = x.q + qt - 2 * x.mu * mt
    return mu, max(q - mu * mu, 0.0), x.kt + ktt - 2 * x.mu * mt, x.k + kt_ - 2 * x.mu * mt


def per_element(node: Node, x: Fwd, t: Fwd | None) -> tuple[float, float, float]:
    """(E[d²], E[d d'] across positions of one sample, across samples) of the loss's
    per-element derivative with respect to its input."""
    op = node.attrs.get("op")
    if op == "cross_entropy":
        v_cls = _classes(node, x)
        eps = float(node.attrs.get("label_smoothing") or 0.0)
        s2 = gaussian.softmax_moments(v_cls, x.v).S2
        y2 = (1 - eps) ** 2 + (2 * eps * (1 - eps) + eps * eps) / v_cls
        return max(s2 - 2 / v_cls + y2, 0.0) / v_cls, 0.0, 0.0
    if op == "nll":
        v_cls = _classes(node, x)
        return 1.0 / v_cls, 1.0 / v_cls ** 2, 1.0 / v_cls ** 2
    if op == "bce_logits":
        # d = σ(x) − y: E[σ(x)σ(x')] at the logits' correlation across positions / samples.
        mt, qt = (t.mu, t.q) if t is not None else (0.0, 0.0)
        mtt_pos, mtt_batch = (t.kt, t.k) if t is not None else (0.0, 0.0)
        m = gaussian.moments("sigmoid", x.mu, x.v)
        pos = gaussian.cross("sigmoid", x.mu, x.v, corr(x.kt, x.mu, x.v)).phi_phi
        batch = gaussian.cross("sigmoid", x.mu, x.v, corr(x.k, x.mu, x.v)).phi_phi
        return (max(m.second - 2 * mt * m.mean + qt, 0.0), pos - 2 * mt * m.mean + mtt_pos,
                batch - 2 * mt * m.mean + mtt_batch)
    if op == "bce":
        mt, qt = (t.mu, t.q) if t is not None else (0.0, 0.0)

        def dbce(p: torch.Tensor) -> torch.Tensor:
            p = p.clamp(1e-4, 1 - 1e-4)
            return (p * p - 2 * p * mt + qt).clamp_min(0).sqrt() / (p * (1 - p))
        m = gaussian.expect_fn(dbce, x.mu, x.v, key=("bce", mt, qt))
        # Across rows, (p − y)(p' − y') / (p(1 − p))² at p's mean: p's covariance, the target's.
        _, _, kt, k = _diff(x, t)
        w = 1 / max(x.mu * (1 - x.mu), 1e-4) ** 2
        return m.second, kt * w, k * w
    mu, v, kt, k = _diff(x, t)
    if op == "mse":
        return 4 * (mu * mu + v), 4 * kt, 4 * k
    lim = float(node.attrs.get("beta", 1.0) if op == "smooth_l1" else node.attrs.get("delta", 1.0))
    scale = lim * lim if op == "huber" else 1.0
    if op == "l1" or lim <= 0:
        # sign(z) as a clamp far narrower than z's spread (smooth L1 with beta = 0 is L1).
        lim, scale = 1e-3 * math.sqrt(v) if v > 0 else 1.0, 1.0
    # d = clamp(z / lim, −1, 1) (times lim for Huber), z = x − t ~ N(mu, v).
    z_mu, z_v = mu / lim, v / (lim * lim)
    m2 = gaussian.moments("hardtanh", z_mu, z_v).second
    pos = gaussian.cross("hardtanh", z_mu, z_v, corr(kt, mu, v)).phi_phi
    batch = gaussian.cross("hardtanh", z_mu, z_v, corr(k, mu, v)).phi_phi
    return scale * m2, scale * pos, scale * batch


def _mean_loss(node: Node, x: Fwd, t: Fwd | None) -> float:
    """E[ℓ] per term, to the order the forward statistics need (a loss is usually terminal)."""
    op = node.attrs.get("op")
    if op == "cross_entropy":
        return math.log(_classes(node, x)) + x.v / 2
    if op == "nll":
        return -x.mu
    if op in ("bce", "bce_logits"):
        return math.log(2.0)
    mu, v, _, _ = _diff(x, t)
    if op == "mse":
        return mu * mu + v
    return math.sqrt((mu * mu + v) * 2 / math.pi)


@register("loss")
class Loss(Transfer):
    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x, t = ins[0], _target(ins)
        shape = out_shape(node, x)
        m = _mean_loss(node, x, t)
        if node.attrs.get("reduction", MEAN) == SUM:
            m *= _terms(node, x)
        return Fwd(q=m * m, mu=m, k=m * m, kt=m * m, shape=shape, roles="" if not shape else x.roles[:len(shape)],
                   dtype="float", origin=node.name)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x, t = ins[0], _target(ins)
        red = node.attrs.get("reduction", MEAN)
        c = 1.0 / _terms(node, x) ** 2 if red == MEAN else 1.0
        e2, e_pos, e_batch = per_element(node, x, t)
        shared = red != NONE  # one scalar gradient g multiplies every term
        gx = Bwd(c * g.s * e2, c * (g.s if shared else g.r) * e_pos, 0.0, c * (g.s if shared else g.rb) * e_batch,
                 0.0, g.unknown)
        if node.attrs.get("weighted"):
            gx = gx.as_unknown()
        res: list[Bwd | None] = [gx if isinstance(x, Fwd) and not x.const else None] + [None] * (len(ins) - 1)
        if t is not None and not t.const and len(ins) > 1:
            op = node.attrs.get("op")
            if op in ("mse", "l1", "smooth_l1", "huber"):
                res[1] = gx  # d/dt = −d/dx
            elif op == "bce_logits":
                res[1] = Bwd(c * g.s * x.q, 0.0, 0.0, 0.0, 0.0, gx.unknown)  # d/dy = −x
            else:
                # Soft targets of cross-entropy: d/dy = −log p, about log V per element; a guess.
                lv = math.log(max(_classes(node, x), 2))
                res[1] = Bwd(c * g.s * lv * lv, 0.0).as_unknown()
        return res
