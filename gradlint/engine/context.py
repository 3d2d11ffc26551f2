"""What a transfer rule may read and write while the engine propagates one graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

from gradlint.capture.graph import Graph, Node
from gradlint.capture.params import ParamStats

if TYPE_CHECKING:
    from gradlint.base.report import RecurrentReport


class Context:
    """What transfer rules may read and write during one propagation.

    Attributes:
        graph: The graph being propagated.
        stats: Statistics of every parameter, by qualified name.
        model: The model itself, for rules that read a module (recurrent layers); None when
            only the graph is known.
        batch: The graph's batch size (None when unknown).
        grads: E[(dL/dθ)²] booked so far per parameter (see ``param_grad``).
        unknown: Nodes whose op had no rule of its own, in order.
        recurrent: Per recurrent op, the per-time-step gradients its rule recorded.
        memo: What a rule's forward leaves for its own backward, by node name.
        forward: The forward states computed so far, by node name (rules of fused units read
            how their operands were built).
    """

    def __init__(self, graph: Graph, stats: dict[str, ParamStats], model: nn.Module | None):
        self.graph = graph
        self.stats = stats
        self.model = model
        self.batch: int | None = graph.batch_size
        self.grads: dict[str, float] = {}
        self.unknown: dict[str, None] = {}  # ordered and de-duplicated in one, in constant time
        self.recurrent: list[RecurrentReport] = []
        self.memo: dict[str, Any] = {}
        self.forward: dict[str, Any] = {}

    def param_stats(self, name: str) -> ParamStats:
        return self.stats[name]

    def param_grad(self, name: str, e2: float) -> None:
        """Add E[(dL/dθ)²] (mean over θ's elements) for one use of a parameter (W7)."""
        if name in self.stats:
            self.grads[name] = self.grads.get(name, 0.0) + max(e2, 0.0)

    def batch_of(self, rows: int) -> int:
        """The batch size, where ``rows`` rows of a layer's input split into samples."""
        b = self.batch or 1
        return b if rows % b == 0 else 1

    def distinct_values(self, buffer: str) -> int | None:
        """Number of distinct values of an integer buffer (None on the meta device)."""
        if self.model is None:
            return None
        try:
            b = self.model.get_buffer(buffer)
        except AttributeError:
            return None
        if b.is_meta or b.numel() == 0 or b.numel() > 1_000_000:
            return None
        return int(b.unique().numel())

    def note_unknown(self, node: Node) -> None:
        self.unknown.setdefault(node.name)
