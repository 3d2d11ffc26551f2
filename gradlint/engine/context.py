"""What a transfer rule may read and write while the engine propagates one graph."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
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
        unknown_grads: Parameters whose gradient is a guess: a contribution came from a
            gradient or statistics that went through an op without a rule, or a rule's formula
            came out negative. Their prediction is unknown (None), never zero.
        tainted: Set by the engine while a rule's backward runs on unknown statistics.
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
        self.unknown_grads: dict[str, None] = {}
        self.tainted = False

    def param_stats(self, name: str) -> ParamStats:
        return self.stats[name]

    def param_grad(self, name: str, e2: float) -> None:
        """Add E[(dL/dθ)²] (mean over θ's elements) for one use of a parameter (W7).

        A negative or NaN value is no claim that the gradient is zero: the rule's
        approximation broke down (inconsistent correlations), and the prediction is unknown.
        """
        if name in self.stats:
            if self.tainted or not e2 >= 0.0:
                self.unknown_grads.setdefault(name)
            self.grads[name] = self.grads.get(name, 0.0) + (e2 if e2 >= 0.0 else 0.0)

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

    def const_moments(self, name: str) -> tuple[float, float, float] | None:
        """Statistics of a float buffer or tensor attribute the forward reads as a constant (a
        fixed sin-cos position table): (mean square, mean, covariance of two different rows,
        same column, means included), the rows being all dims but the last. The same value
        reaches every sample. None when the value is unknown (meta device, a global lifted
        without a name), not float, or not finite (an additive -inf mask selects, it does not
        add a signal)."""
        t = self._named_tensor(name)
        if t is None or t.is_meta or not t.is_floating_point() or t.numel() == 0 or t.numel() > 50_000_000:
            return None
        with torch.no_grad():
            r = t.detach().double().reshape(-1, t.shape[-1] if t.dim() else 1)
            n, d = r.shape
            flat = r.reshape(-1)
            # A NaN or inf element makes the square sum non-finite: no separate scan for them
            # (a BatchNorm's running statistics come here twice per layer).
            sq = float(torch.dot(flat, flat))
            if not math.isfinite(sq):
                return None
            mean = float(flat.sum()) / (n * d)
            if n < 2:
                return sq / (n * d), mean, sq / (n * d)
            col = r.sum(0)
            cols = float(torch.dot(col, col))
            return sq / (n * d), mean, (cols - sq) / (n * (n - 1) * d)

    def _named_tensor(self, name: str) -> torch.Tensor | None:
        if self.model is None or not name:
            return None
        obj: Any = self.model
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj if isinstance(obj, torch.Tensor) and not isinstance(obj, nn.Parameter) else None

    def table_rows(self, param: str, rows: int) -> tuple[float, float, float] | None:
        """Statistics of the first ``rows`` rows of a 2-D parameter (a position table read by
        constant ids): (mean square, mean, covariance of two different rows, same column,
        means included). None on the meta device or for another shape."""
        if self.model is None:
            return None
        try:
            t = self.model.get_parameter(param)
        except AttributeError:
            return None
        if t.is_meta or t.dim() != 2 or rows < 2 or t.shape[0] < rows:
            return None
        with torch.no_grad():
            r = t.detach()[:rows].double()
            n, d = r.shape
            sq = float(r.pow(2).sum())
            cols = float(r.sum(0).pow(2).sum())
            return sq / (n * d), float(r.mean()), (cols - sq) / (n * (n - 1) * d)

    def note_unknown(self, node: Node) -> None:
        self.unknown.setdefault(node.name)
