"""Weights computed in forward from parameters: weight normalization (docs/design.md §3, W8).

A layer whose weight is such a tensor is a ``linear_w``/``conv_w`` node: it books the weight's
E[(dL/dW)²] as the gradient of its weight operand, and the rules here carry it back to the
parameters the weight was made from.
"""

from __future__ import annotations

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.roles import out_shape


@register("weight_norm")
class WeightNorm(Transfer):
    """w = g · v / ||v|| (``torch.nn.utils.weight_norm`` and its parametrization), the norm taken
    over each slice of n elements that one entry of g scales (W8).

    Forward: every slice of w has norm |g_i|, so q_w = E[g²]/n. Backward, with the weight's
    gradient δ (E[δ²] = s per element, independent of the direction v̂):
    ∂L/∂g_i = <δ_i, v̂_i>, E[(∂L/∂g)²] = s; ∂L/∂v_i = g_i/||v_i||·(δ_i − <δ_i, v̂_i>·v̂_i),
    E[(∂L/∂v)²] = s·E[g²]/(n·E[v²])·(1 − 1/n).
    """

    def _parts(self, ins: list[Fwd]) -> tuple[Fwd, Fwd, float]:
        v, g = ins[0], ins[1]
        n = max(v.numel / max(g.numel, 1), 1.0)
        return v, g, n

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        v, g, n = self._parts(ins)
        q = g.q / n
        mu = g.mu * v.mu / (n * v.q) ** 0.5 if v.q > 0 else 0.0
        return v.with_(q=q, mu=mu, k=q, kt=q, shape=out_shape(node, v), origin=node.name, scale=1.0)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, grad: Bwd):
        v, g, n = self._parts(ins)
        s_v = grad.s * g.q / (n * v.q) * (1 - 1 / n) if v.q > 0 else 0.0
        return [Bwd(s_v), Bwd(grad.s)] + [None] * (len(ins) - 2)
