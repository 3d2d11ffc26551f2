"""The registry of transfer rules, their base class, and the causes a gain is attributed to.

A rule is a class registered under one or more graph ``kind``s with two methods:

* ``forward(ctx, node, ins) -> Fwd`` (or a tuple of ``Fwd`` for multi-output ops);
* ``backward(ctx, node, ins, out, g) -> list[Bwd | None]``, one entry per input, and it may
  call ``ctx.param_grad(name, e2)`` to add E[(dL/dθ)²] (mean over θ's elements) for a
  parameter it uses. Contributions from several uses add up (W7).

Every rule also names the ``cause`` its gain is attributed to in the summary.
"""

from __future__ import annotations

from collections.abc import Callable

from gradlint.base.kinds import KINDS
from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.roles import first_operand

TRANSFERS: dict[str, Transfer] = {}

# Causes of gain along the gradient path; ``None`` = benign or neutral.
INIT, SATURATION, NORMALIZATION, RESIDUAL, RECURRENCE, ATTENTION = (
    "init scale", "saturating activations", "normalization", "residual summation", "recurrence", "attention")


class Transfer:
    """Base transfer rule: pass statistics through unchanged."""

    cause: str | None = None

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]) -> Fwd | tuple[Fwd, ...]:
        return first_operand(ins, node)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd) -> list[Bwd | None]:
        return [g] + [None] * (len(ins) - 1)


def register(*kinds: str) -> Callable[[type], type]:
    """Register a transfer class under graph node kinds (``base.kinds.KINDS``); a duplicate or
    an unknown kind is an error."""
    def deco(cls: type) -> type:
        inst = cls()
        for k in kinds:
            if k not in KINDS:
                raise ValueError(f"{k!r} is not a graph kind: add it to gradlint.base.kinds.KINDS")
            if k in TRANSFERS:
                raise ValueError(f"transfer for {k!r} registered twice")
            TRANSFERS[k] = inst
        return cls
    return deco
