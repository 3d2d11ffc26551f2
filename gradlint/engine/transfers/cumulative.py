"""Running sums along one dim (docs/design.md §4.3: P4).

The state holds one number per moment for all positions, so the rule gives the moments of
``cumsum`` averaged over the n positions of its dim: element i sums i + 1 inputs (forward) and
its input receives the sum of n − i upstream gradients (backward), and over i both counts run
through 1..n. The averages are exact for inputs whose second moments are the same at every
position of the dim and for every pair of positions (the state's own model); the profile over
positions itself is lost.
"""

from __future__ import annotations

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import BATCH, POS, Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.roles import out_shape
from gradlint.engine.transfers.structural import Unknown


def ramp(n: int) -> tuple[float, float]:
    """(A, B) with mean over m = 1..n of m = A and of m(m − 1) = B: a sum of m exchangeable
    terms of second moment q and pair covariance c has second moment m·q + m(m − 1)·c."""
    return (n + 1) / 2.0, (n * n - 1) / 3.0


def pair_mean(n: int, m: int, q: float, c: float) -> float:
    """Mean of E[y_i y_j] over ordered pairs of distinct elements of the dim's role, y the
    running sum over n terms of second moment q and pair covariance c.

    Along the dim (i ≠ j) E[y_i y_j] = (min(i, j) + 1)(q − c) + (i + 1)(j + 1)·c, whose mean over
    the n(n − 1) ordered pairs is (n + 1)/3·(q − c) + (n + 1)(3n + 2)/12·c. Pairs that differ in
    another dim of the same role (``m`` = the product of those dims) share no input term and
    average (i + 1)(j + 1)·c = A²·c over all i, j."""
    a = (n + 1) / 2.0
    w_same, w_other = m * n * (n - 1), m * (m - 1) * n * n
    if w_same + w_other == 0:
        return c
    same = (n + 1) / 3.0 * (q - c) + (n + 1) * (3 * n + 2) / 12.0 * c if n > 1 else 0.0
    return (w_same * same + w_other * a * a * c) / (w_same + w_other)


def _geometry(node: Node, x: Fwd) -> tuple[int, str, int, int] | None:
    """(n, role of the dim, product of the other dims of that role, positions per sample), or
    None when the shape or the dim is not known."""
    dim = node.attrs.get("dim")
    if not x.shape or not isinstance(dim, int) or not -len(x.shape) <= dim < len(x.shape):
        return None
    d = dim % len(x.shape)
    roles = x.roles if len(x.roles) == len(x.shape) else default_roles(x.shape)
    m = p = 1
    for i, (size, role) in enumerate(zip(x.shape, roles)):
        if i != d and role == roles[d]:
            m *= size
        if role == POS:
            p *= size
    return x.shape[d], roles[d], m, p


@register("cumulative")
class Cumulative(Transfer):
    """y_i = Σ_{j ≤ i} x_j along one dim (P4): position-averaged moments forward; backward the
    same sums run the other way, δx_i = Σ_{j ≥ i} δy_j.

    k and rb (two samples) hold for any two positions of the two samples, and kt and r (two
    positions of one sample) for any two positions, as every rule reads them (W1, P1): a
    running sum over positions then gives two samples (i + 1)(j + 1) pairs of k, A²·k on
    average; one over samples gives two positions of one sample A·kt + B·k."""

    def _geo(self, node: Node, ins: list[Fwd]):
        x = ins[0]
        if not isinstance(x, Fwd) or x.dtype != "float" or x.const or node.attrs.get("op") != "cumsum":
            return None
        return _geometry(node, x)

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        geo = self._geo(node, ins)
        if geo is None:
            return Unknown().forward(ctx, node, ins)
        x = ins[0]
        n, role, m, p = geo
        shape = out_shape(node, x)
        if n <= 1:
            return x.with_(shape=shape)
        a, b = ramp(n)
        mu2 = x.mu * x.mu
        if role == POS:
            q, kt, k = a * x.q + b * x.kt, pair_mean(n, m, x.q, x.kt), a * a * x.k
        elif role == BATCH:
            same = (x.q + (p - 1) * x.kt) / p  # one sample with itself, over its position pairs
            q, k, kt = a * x.q + b * x.k, pair_mean(n, m, same, x.k), a * x.kt + b * x.k
        else:
            # Distinct features share only the common mean (the state's model, as in P1).
            q, k, kt = a * x.q + b * mu2, a * x.k + b * mu2, a * x.kt + b * mu2
        return x.with_(q=q, mu=a * x.mu, k=min(k, q), kt=min(kt, q), shape=shape, origin=node.name, scale=1.0,
                       normed=0.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        geo = self._geo(node, ins)
        if geo is None:
            return Unknown().backward(ctx, node, ins, out, g)
        n, role, m, p = geo
        if n <= 1:
            return [g]
        a, b = ramp(n)
        if role == POS:
            s, r, rb = a * g.s + b * g.r, pair_mean(n, m, g.s, g.r), a * a * g.rb
        elif role == BATCH:
            same = (g.s + (p - 1) * g.r) / p
            s, r, rb = a * g.s + b * g.rb, a * g.r + b * g.rb, pair_mean(n, m, same, g.rb)
        else:
            # The state carries no covariance between the gradients of two features.
            s, r, rb = a * g.s, a * g.r, a * g.rb
        return [Bwd(s, r, 0.0, rb)]
