"""Scaled dot-product attention and other products of two activations (docs/design.md §4.6)."""

from __future__ import annotations

import math

from gradlint.capture import einsum
from gradlint.capture.graph import Node
from gradlint.engine import gaussian
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import ATTENTION, Transfer, register
from gradlint.engine.transfers.roles import broadcast_sum, out_shape, roles_like


def _scaled(x: float, f: float) -> float:
    """x·f, and 0 where f is: a one-hot softmax's factors (F, the alignment term) vanish
    faster than the overflowed score variance multiplying them grows, and inf·0 is NaN."""
    return x * f if f else 0.0


@register("attention")
class Attention(Transfer):
    """Scaled dot-product attention (4.6), including the value-key alignment term.

    ``node.attrs``: ``scale`` (None = 1/sqrt(d)), ``causal``, ``dropout``, and ``e_in``, the
    width of the tensor K and V were both projected from (0 when they are not).
    """

    cause = ATTENTION

    def _moments(self, node: Node, Q: Fwd, K: Fwd, V: Fwd, extra_var: float = 0.0):
        d = Q.shape[-1] if Q.shape else 1
        kdim = -1 if node.attrs.get("k_transposed") else -2
        # A zero-length key axis has no moments: one key stands in (the output is empty anyway).
        t_k = max(K.shape[kdim], 1) if len(K.shape) >= 2 else 1
        scale = node.attrs.get("scale")
        sc2d = (scale * scale * d) if scale is not None else 1.0
        vs = sc2d * Q.q * max(K.q - K.kt, 0.0) + extra_var
        s2, s3, s22 = gaussian.softmax_moments(t_k, vs, bool(node.attrs.get("causal")))
        e_in = node.attrs.get("e_in") or 0
        a = (1 - s2) ** 2 / e_in if e_in else 0.0
        return d, t_k, sc2d, s2, s3, s22, a

    @staticmethod
    def _extra(ins) -> float:
        # Additive score biases that depend on parameters (T5's relative position bias)
        # widen the score distribution by their variance across keys.
        return sum(max(b.q - b.kt, 0.0) for b in ins[4:] if isinstance(b, Fwd))

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        Q, K, V = ins[0], ins[1], ins[2]
        d, t_k, sc2d, s2, s3, s22, a = self._moments(node, Q, K, V, self._extra(ins))
        p = node.attrs.get("dropout", 0.0)
        s2d = s2 / (1 - p) if 0 < p < 1 else s2
        qv, kv = V.q, V.kt
        q_o = (qv - kv) * s2d + kv + _scaled(sc2d * Q.q * max(K.q - K.kt, 0.0) * (qv - kv), a)
        kt_o = kv + (qv - kv) / max(t_k, 1)
        # Across samples, only what every position shares survives the average over keys.
        common = min(V.k, V.kt)
        k_o = (V.k - common) * s2 + common
        shape = out_shape(node, Q)
        return Fwd(q=q_o, mu=V.mu, k=min(k_o, q_o), kt=min(kt_o, q_o), shape=shape, roles=roles_like(shape, Q),
                   origin=node.name, blocked=Q.blocked and K.blocked and V.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        Q, K, V = ins[0], ins[1], ins[2]
        d, t_k, sc2d, s2, s3, s22, a = self._moments(node, Q, K, V, self._extra(ins))
        p = node.attrs.get("dropout", 0.0)
        s2d = s2 / (1 - p) if 0 < p < 1 else s2
        F = s2 - 2 * s3 + s22
        vv = max(V.q - V.kt, 0.0)
        kk = max(K.q - K.kt, 0.0)
        # Each key (and value) position collects the gradient of every query: T_q/T_k of it per
        # element, which is 1 in self-attention and T_q/T_k in cross-attention (a decoder's few
        # queries over an encoder's many positions, 4.6).
        t_q = Q.shape[-2] if len(Q.shape) >= 2 else t_k
        ratio = t_q / max(t_k, 1)
        pairs = ratio * (t_q - 1) / (t_k - 1) if t_k > 1 else ratio  # query pairs per key pair
        s_v = ratio * g.s * s2d + pairs * g.r * (1 - s2)
        r_v = ratio * g.s / max(t_k, 1) + pairs * g.r
        s_q = _scaled(g.s * vv * kk * sc2d, F + a)
        s_k = _scaled(ratio * g.s * vv * Q.q * sc2d, F)
        # The alignment term reaches the K and V projection weights but is not propagated (4.6).
        sw_k = _scaled(ratio * g.s * vv * Q.q * sc2d, a)
        sw_v = _scaled(ratio * g.s * Q.q * kk * sc2d, a)
        res: list[Bwd | None] = [Bwd(s_q, 0.0), Bwd(s_k, 0.0, sw_k), Bwd(s_v, r_v, sw_v), None]
        # Gradient at each score logit: d·s_o·(q_V - k_V)·F / T_k (the s_Q relation of 4.6
        # with the key sum taken out), summed over the bias's broadcast copies.
        s_logit = _scaled(d * g.s * vv, F) / max(t_k, 1)
        scores = Fwd(q=0.0, shape=tuple(Q.shape[:-1]) + (t_k,), roles=roles_like(tuple(Q.shape[:-1]) + (t_k,), Q))
        for b in ins[4:]:
            res.append(broadcast_sum(b, scores, s_logit, 0.0) if isinstance(b, Fwd) and not b.const else None)
        return res


def einsum_counts(equation: str, sa: tuple, sb: tuple) -> tuple[int, int, int] | None:
    """For ``einsum(equation, a, b)``: (terms summed per output element, terms summed per
    element of a's gradient, of b's). A letter in neither operand's gradient index is summed
    over: the contracted letters forward, the letters of the output and of the other operand
    that a lacks backward. None when the equation cannot be read against the shapes."""
    parsed = einsum.terms(equation, [len(sa), len(sb)])
    if parsed is None:
        return None
    (ta, tb), out = parsed
    return _letter_counts(ta, tb, out, sa, sb)


def _letter_counts(ta: str, tb: str, out: str, sa: tuple, sb: tuple) -> tuple[int, int, int]:
    size: dict[str, int] = {}
    for term, shape in zip((ta, tb), (sa, sb)):
        for c, d in zip(term, shape):
            size[c] = max(size.get(c, 1), int(d))
    a, b, o = set(ta), set(tb), set(out)

    def prod(letters: set[str]) -> int:
        return math.prod(size.get(c, 1) for c in letters)

    return prod((a | b) - o), prod((o | b) - a), prod((o | a) - b)


def _counts(node: Node, a: Fwd, b: Fwd, out_shape_: tuple) -> tuple[int, int, int]:
    """(contracted size, gradient terms for a, for b) of a product of two tensors: the
    einsum's own letters where it is one, else a matmul's last dim of a against b's rows."""
    terms = node.attrs.get("terms", ())
    if len(terms) == 3 and (len(terms[0]), len(terms[1])) == (len(a.shape), len(b.shape)):
        return _letter_counts(*terms, tuple(a.shape), tuple(b.shape))  # read by capture (einsum.terms)
    eq = node.attrs.get("equation")
    if isinstance(eq, str):
        got = einsum_counts(eq, tuple(a.shape), tuple(b.shape))
        if got is not None:
            return got
    d = a.shape[-1] if a.shape else 1
    n = out_shape_[-1] if out_shape_ else 1
    m = out_shape_[-2] if len(out_shape_) >= 2 else 1
    return d, n, m


@register("matmul")
class MatMul(Transfer):
    """Product of two activations outside a recognised attention pattern."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        a, b = ins[0], ins[1]
        if node.attrs.get("vector") and isinstance(a, Fwd) and isinstance(b, Fwd):
            return _vector_forward(ctx, node, a, b)
        d = _counts(node, a, b, out_shape(node, a))[0]
        shape = out_shape(node, a)
        return Fwd(q=d * a.q * b.q, mu=0.0, k=d * a.k * b.k, kt=d * a.kt * b.kt, shape=shape,
                   roles=roles_like(shape, a), origin=node.name, blocked=a.blocked and b.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        a, b = ins[0], ins[1]
        if node.attrs.get("vector"):
            # mv: d(Wv)_i/dW_ij = v_j, d/dv_j = Σ_i W_ij g_i; dot: d(u·y)/dy = u.
            rows = a.shape[0] if node.attrs["vector"] == "mv" and a.shape else 1
            return [None if a.const or a.blocked else Bwd(g.s * b.q, 0.0),
                    None if b.const or b.blocked else Bwd(rows * g.s * a.q, 0.0)] + [None] * (len(ins) - 2)
        _, n, m = _counts(node, a, b, out.shape)
        return [Bwd(n * g.s * b.q, 0.0), Bwd(m * g.s * a.q, 0.0)] + [None] * (len(ins) - 2)


def _no_grad(f: Fwd) -> bool:
    return f.const or f.blocked


def _iterated(f: Fwd) -> bool:
    """A vector a power iteration sets: no gradient (under no_grad), or a 1-D parameter whose
    ``.data`` the forward assigns (spectral norm written by hand)."""
    return _no_grad(f) or (len(f.shape) == 1 and (f.origin or "").startswith("param:"))


def _power_iteration(ctx: Context, node: Node, a: Fwd, b: Fwd) -> tuple[int, int, float] | None:
    """(m, n, E[W²]) when ``node`` is spectral norm's u·(W v): u and v set by the power
    iteration (``_iterated``), W an m×n matrix."""
    if node.attrs.get("vector") != "dot" or not _iterated(a):
        return None
    mv = ctx.graph.by_name.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if mv is None or mv.kind != "matmul" or mv.attrs.get("vector") != "mv":
        return None
    w, v = (ctx.forward.get(i) for i in mv.inputs[:2])
    if not isinstance(w, Fwd) or not isinstance(v, Fwd) or not _iterated(v) or len(w.shape) != 2:
        return None
    return w.shape[0], w.shape[1], w.q


def _vector_forward(ctx: Context, node: Node, a: Fwd, b: Fwd) -> Fwd:
    """W v (per element Σ_j W_ij v_j) and u·y; spectral norm's σ = u·(W v) after one power
    iteration from a random u0 (v = W^T u0/|W^T u0|, u = W v/|W v|): σ² = |W W^T u0|²/|W^T u0|²,
    E = s²(m + n + 1) for i.i.d. entries of variance s² (Wishart moments), taken as exact
    (docs/design.md §4.6)."""
    shape = out_shape(node, a)
    spectral = _power_iteration(ctx, node, a, b)
    if spectral is not None:
        m, n, s2 = spectral
        sigma2 = s2 * (m + n + 1)
        return Fwd(q=sigma2, mu=math.sqrt(sigma2), k=sigma2, kt=sigma2, shape=shape, roles="",
                   origin=node.name, blocked=False)
    d = b.shape[-1] if b.shape else 1
    if node.attrs["vector"] == "dot":
        q = d * a.q * b.q + d * (d - 1) * a.mu * a.mu * b.mu * b.mu
        return Fwd(q=q, mu=d * a.mu * b.mu, k=q, kt=q, shape=shape, roles="", origin=node.name,
                   const=a.const and b.const, blocked=_no_grad(a) and _no_grad(b))
    return Fwd(q=d * a.q * b.q, mu=d * a.mu * b.mu, k=d * a.q * b.q, kt=d * a.q * b.q, shape=shape,
               roles=roles_like(shape, a), origin=node.name, const=a.const and b.const,
               blocked=_no_grad(a) and _no_grad(b))
