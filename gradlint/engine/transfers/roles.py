"""Shapes and dim roles of a node's tensors, and what follows from them.

Every dim of a tensor is batch (``B``), position (``P``) or feature (``F``); the role decides
which covariance (k across samples, kt across positions) a copy or a sum along it carries.
"""

from __future__ import annotations

from gradlint.capture.graph import Node
from gradlint.engine.state import BATCH, FEAT, POS, Bwd, Fwd, default_roles


def first_operand(ins: list[Fwd | None], node: Node) -> Fwd:
    """The first tensor operand's statistics at the node's output shape (a constant without one)."""
    for f in ins:
        if isinstance(f, Fwd):
            return f.with_(shape=out_shape(node, f), roles=roles_like(out_shape(node, f), f))
    return Fwd(q=0.0, shape=out_shape(node, None) or (), const=True)


def out_shape(node: Node, fallback: Fwd | None) -> tuple[int, ...]:
    """The node's output shape where capture knew it, else the fallback operand's."""
    s = node.shape
    if isinstance(s, tuple) and all(isinstance(d, int) for d in s):
        return s
    return fallback.shape if fallback is not None else ()


def conv_roles(n: int) -> str:
    return BATCH + FEAT + POS * (n - 2)


def roles_like(shape: tuple[int, ...], f: Fwd) -> str:
    """``f``'s roles for a tensor of ``shape`` made from it (carried through a reshape)."""
    if len(f.roles) == len(shape):
        return f.roles
    return reshape_roles(f.shape, f.roles, shape)


def reshape_roles(src: tuple[int, ...], roles: str, dst: tuple[int, ...]) -> str:
    """Carry dim roles through a reshape by matching runs of dims with equal products.

    A run that mixes features with anything else becomes features (a Flatten of C*H*W feeds
    a Linear); batch mixed with positions stays batch.
    """
    if len(roles) != len(src) or not src:
        return default_roles(dst)
    out: list[str] = []
    i = j = 0
    while j < len(dst):
        if i >= len(src):
            out.extend(POS for _ in range(j, len(dst)))
            break
        pi, pj, i0, j0 = src[i], dst[j], i, j
        i += 1
        j += 1
        while pi != pj:
            if pi < pj and i < len(src):
                pi *= src[i]
                i += 1
            elif j < len(dst):
                pj *= dst[j]
                j += 1
            else:
                break
        group = roles[i0:i]
        role = FEAT if FEAT in group else (BATCH if BATCH in group else POS)
        out.extend(role for _ in range(j0, j))
    return "".join(out[: len(dst)])


def corr(cov: float, mu: float, v: float) -> float:
    """The correlation of one unit's two copies (across samples, or positions) from their
    covariance ``cov`` (mean included), mean and variance; 1 for a constant."""
    if v <= 0:
        return 1.0
    return max(-1.0, min(1.0, (cov - mu * mu) / v))


def broadcast_sum(x: Fwd, out: Fwd, s: float, r: float) -> Bwd:
    """Gradient of an operand broadcast to ``out``: copies add up (uncorrelated across samples,
    correlated by r across positions)."""
    if not x.shape or x.numel >= out.numel:
        return Bwd(s, r)
    n_pos = n_other = 1
    xs = (1,) * (len(out.shape) - len(x.shape)) + tuple(x.shape)
    roles = out.roles if len(out.roles) == len(out.shape) else default_roles(out.shape)
    for d_in, d_out, role in zip(xs, out.shape, roles):
        if d_in == 1 and d_out > 1:
            if role == POS:
                n_pos *= d_out
            else:
                n_other *= d_out
    n = n_pos * n_other
    total = n * s + n_other * n_pos * (n_pos - 1) * r
    return Bwd(total, total if n_pos > 1 else r * n)


def softmax_len(x: Fwd, dim: int) -> int:
    """Entries along the softmax dim; an empty dim (a zero-length sequence) has no moments,
    and one entry stands in for it (the output has no elements either)."""
    if not x.shape or not -len(x.shape) <= dim < len(x.shape):
        return 1
    return max(x.shape[dim], 1)


def softmax_dim_var(x: Fwd, dim: int) -> float:
    roles = x.roles if len(x.roles) == len(x.shape) else default_roles(x.shape)
    role = roles[dim % len(roles)] if roles else FEAT
    return max(x.q - (x.kt if role == POS else x.mu * x.mu), 0.0)
