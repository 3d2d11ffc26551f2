"""``torch.einsum`` in the ops the engine has rules for (docs/design.md §4.2).

An einsum of two operands with one index contracted between them stays one ``matmul``, whose
rule reads its counts from the equation (``engine.transfers.attention.einsum_counts``):
attention's products, CaiT's talking heads, RWKV-v1's ``einsum(D, e^k v)`` (which the wkv unit
recognises as a matmul), the selective scan's readout ``bdn,bn->bd``. Any other einsum is
spelled out as torch would broadcast it: each operand permuted to one common order of the
indices (the output's, then the contracted ones) and unsqueezed where it lacks an index, the
operands multiplied element-wise, and the contracted indices summed. Read as a matmul,
mamba-minimal's ``einsum(delta, A, 'b l d, d n -> b l d n')`` (an outer product: nothing is
summed) was a sum over d = 64 terms, and its three-operand ``einsum(delta, B, u, ...)`` had no
rule; spelled out, they are the element-wise products the selective scan's rule evaluates per
unit of the state (§6, R5), as when a model writes ``delta.unsqueeze(-1) * A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    """One node of the spelled-out einsum: ``kind`` ``permute`` (``arg`` the dims),
    ``unsqueeze`` (``arg`` the dim), ``mul`` (``arg`` the index of the operand multiplied in)
    or ``sum`` (``arg`` the dims summed); ``shape`` its output shape."""

    kind: str
    arg: object
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """``matmul``: the einsum is a product of two operands, whose index letters (the ellipsis
    spelled out) ``terms`` holds, the output's last; else ``operands``: per operand the
    reshapes that align it, then ``tail``: the products and the sum, in order."""

    matmul: bool
    operands: tuple[tuple[Step, ...], ...] = ()
    tail: tuple[Step, ...] = ()
    terms: tuple[str, ...] = ()


def terms(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """The index letters per operand and of the output, the ellipsis spelled out with
    letters of its own; None for a form this module does not follow."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(ranks):
        return None
    used = set(eq) - {".", ",", "-", ">"}
    spare = [chr(c) for c in range(ord("A"), ord("Z") + 1) if chr(c) not in used]
    ell = 0
    for i, term in enumerate(ins):
        if "..." in term:
            ell = max(ell, ranks[i] - (len(term) - 3))
    fill = "".join(spare[:ell])
    terms = [t.replace("...", fill[len(fill) - (r - (len(t) - 3)):] if "..." in t else "") for t, r in zip(ins, ranks)]
    if not arrow:
        # Implicit output: the indices that occur once, in alphabetical order, after the ellipsis.
        counts = {c: sum(t.count(c) for t in terms) for c in set("".join(terms))}
        out = fill + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in fill))
    else:
        out = out.replace("...", fill)
    if any(len(t) != r or len(set(t)) != len(t) for t, r in zip(terms, ranks)) or len(set(out)) != len(out):
        return None  # a diagonal or trace (an index twice in one operand)
    if not set(out) <= set("".join(terms)):
        return None
    return terms, out


def _is_matmul(ins: list[str], out: str) -> bool:
    """Two operands and one index contracted between them: the ``matmul`` rule's counts."""
    if len(ins) != 2 or len(out) < 2:
        return False
    a, b = set(ins[0]), set(ins[1])
    contracted = (a | b) - set(out)
    return len(contracted) == 1 and contracted <= (a & b)


def plan(equation: str, shapes: list[tuple[int, ...]]) -> Plan | None:
    """How to spell ``einsum(equation, *operands)`` out, for operands of these shapes; None
    when the equation is not followed."""
    parsed = terms(equation, [len(s) for s in shapes])
    if parsed is None:
        return None
    ins, out = parsed
    if _is_matmul(ins, out):
        return Plan(matmul=True, terms=(*ins, out))
    size: dict[str, int] = {}
    for t, s in zip(ins, shapes):
        for c, d in zip(t, s):
            size[c] = max(size.get(c, 1), d)  # an ellipsis dim of size 1 broadcasts
    order = out + "".join(dict.fromkeys(c for t in ins for c in t if c not in out))
    operands, aligned = [], []
    for t, s in zip(ins, shapes):
        steps: list[Step] = []
        mine = [c for c in order if c in t]
        perm = [t.index(c) for c in mine]
        cur = [s[p] for p in perm]
        if perm != sorted(perm):
            steps.append(Step("permute", perm, tuple(cur)))
        start = min((order.index(c) for c in t), default=len(order))
        for p in range(start, len(order)):
            if order[p] not in t:
                cur.insert(p - start, 1)
                steps.append(Step("unsqueeze", p - start, tuple(cur)))
        operands.append(tuple(steps))
        aligned.append(tuple(cur))
    tail = []
    shape = aligned[0]
    for k in range(1, len(ins)):
        shape = tuple(torch.broadcast_shapes(shape, aligned[k]))
        tail.append(Step("mul", k, shape))
    if len(order) > len(out):
        tail.append(Step("sum", list(range(len(out), len(order))), tuple(size[c] for c in out)))
    if math.prod(size.values()) == 0:
        return None
    return Plan(matmul=False, operands=tuple(operands), tail=tuple(tail))
