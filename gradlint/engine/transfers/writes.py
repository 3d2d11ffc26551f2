"""Writes into a tensor: a region replaced by, or added to, other values (docs/design.md §4.2, E8).

``x[:, t] = h`` in a loop, ``index_put``, ``scatter``, ``index_copy``, ``slice_scatter``: the
capture turns each into a ``write`` node with the base and the written values as operands and
the share f of the base's elements the region holds (``capture.writes``).
"""

from __future__ import annotations

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.roles import out_shape

_FIELDS = ("q", "mu", "k", "kt")


def _mix(parts: list[tuple[float, Fwd]]) -> dict[str, float]:
    """Element-weighted average of the parts' statistics (shares summing to 1), as for a concat."""
    total = sum(w for w, _ in parts) or 1.0
    return {a: sum(w * getattr(f, a) for w, f in parts) / total for a in _FIELDS}


def _root(g, name: str | None) -> tuple[str | None, tuple]:
    """Through reshapes and selections: the tensor a value reads, and which elements."""
    path: list = []
    n = g.by_name.get(name) if name else None
    while n is not None and n.kind in ("identity", "select") and n.inputs and n.inputs[0] is not None:
        if n.kind == "select":
            path.append(n.attrs.get("where", n.name))
        n = g.by_name.get(n.inputs[0])
    return (n.name if n is not None else None), tuple(path)


def _cumulative_product(g, node: Node) -> bool:
    """Whether the values written are a product of two other elements of the tensor written
    into (``A[2i+1] *= A[2i]``: the decays of a scan combined in place, Blelloch or Hillis–Steele).
    Over the levels of such a scan mean field would average (E_u[a²])^k where the truth is
    E_u[Π a²] per unit of the state, ruled by the slowly decaying units (docs/design.md §6, R5):
    a decay whose mean field comes out above 1 compounds to +7 decades or an overflow. Op by op,
    that is unknown."""
    vals = g.by_name.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if vals is None or vals.kind != "mul" or len(vals.inputs) != 2 or vals.attrs.get("op") not in (None, "mul"):
        return False
    base, _ = _root(g, node.inputs[0])
    (ra, pa), (rb, pb) = _root(g, vals.inputs[0]), _root(g, vals.inputs[1])
    return base is not None and ra == rb == base and pa != pb


@register("write")
class Write(Transfer):
    """Writes (E8). Forward: the output is a mixture, element by element, of what is left of the
    base and of the values written. A chain of writes into one tensor (``out[:, t] = h_t`` for
    every t) is followed as one: each write is taken to fill a region no earlier write of the
    chain filled, so after T writes of a T-th each nothing of the base is left. Accumulating
    writes (``scatter_add``, ``index_add``) add the values to the region instead (E2).

    Backward: each written element receives the gradient of the element it landed on (a value
    broadcast to c elements collects c of them; ``scatter`` reads only part of its ``src``); the
    base keeps the gradient of the elements not overwritten. Where the region's size is data
    (a boolean mask) the share is a guess, and the prediction is unknown.
    """

    def _share(self, ctx: Context, node: Node, base: Fwd, vals: Fwd) -> float:
        f = node.attrs.get("region")
        if f is None:
            ctx.note_unknown(node)
            f = min(vals.numel / base.numel, 1.0) if base.numel and vals.numel else 0.5
        return float(f)

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        base, vals = ins[0], ins[1]
        if not isinstance(vals, Fwd):
            return base
        if _cumulative_product(ctx.graph, node):
            ctx.note_unknown(node)
        f = self._share(ctx, node, base, vals)
        shape = out_shape(node, base)
        roles = base.roles if len(base.roles) == len(shape) else ""
        common = dict(shape=shape, roles=roles or base.roles, dtype=base.dtype, origin=node.name,
                      const=base.const and vals.const, blocked=base.blocked and vals.blocked, scale=1.0,
                      normed=0.0, vocab=None)
        if node.attrs.get("accumulate"):
            cross = 2 * base.mu * vals.mu
            return base.with_(q=base.q + f * (vals.q + cross), mu=base.mu + f * vals.mu,
                              k=base.k + f * (vals.k + cross), kt=base.kt + f * (vals.kt + cross), **common)
        prev = ctx.memo.get(node.inputs[0]) if ctx.graph.by_name.get(node.inputs[0]) is not None \
            and ctx.graph.by_name[node.inputs[0]].kind == "write" else None
        fill, left, written = prev if prev is not None else (base, 1.0, ())
        key = node.attrs.get("region_key")
        if key is not None and any(k == key for _, _, k, _ in written):
            # The same region again (x[:, 0] += v reads the slice and writes it back): the
            # earlier write's values are gone from the output.
            left_now = left
            for _, _, k, writer in written:
                if k == key:
                    ctx.memo[("overwritten", writer)] = True
            written = tuple((w, vals, k, node.name) if k == key else (w, v, k, who) for w, v, k, who in written)
        else:
            left_now = max(left - f, 0.0)
            if f > left and written:  # it overwrites earlier writes too: they keep what is left
                keep = (1.0 - f) / max(1.0 - left, 1e-300)
                written = tuple((w * keep, v, k, who) for w, v, k, who in written)
            written = (*written, (f, vals, key, node.name))
        ctx.memo[node.name] = (fill, left_now, written)
        mixed = _mix([(left_now, fill), *((w, v) for w, v, _, _ in written)])
        return base.with_(**mixed, **common)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        base, vals = ins[0], ins[1]
        f = self._share(ctx, node, base, vals) if isinstance(vals, Fwd) else 0.0
        res: list[Bwd | None] = [None] * len(ins)
        if isinstance(vals, Fwd) and not vals.const and not ctx.memo.get(("overwritten", node.name)):
            c = float(node.attrs.get("copies") or 1.0) * float(node.attrs.get("used") or 1.0)
            res[1] = Bwd(g.s * c, g.r * c, 0.0, g.rb * c)
        if not base.const:
            src = ctx.graph.by_name.get(node.inputs[0])
            chained = src is not None and src.kind == "write"
            # Along a chain the base's live elements keep the full gradient (the ones a later
            # write overwrote are no one's); the chain's first base loses the region written.
            res[0] = g if node.attrs.get("accumulate") or chained else g.scaled(max(1.0 - f, 0.0))
        return res
