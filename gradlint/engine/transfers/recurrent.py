"""nn.RNN / LSTM / GRU layers, predicted by ``gradlint.engine.recurrent`` (docs/design.md §6)."""

from __future__ import annotations

from gradlint.capture.graph import Node
from gradlint.engine import recurrent
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd
from gradlint.engine.transfers.registry import RECURRENCE, Transfer, register


@register("rnn")
class Recurrent(Transfer):
    """nn.RNN / LSTM / GRU unrolled over the sequence (docs/design.md §6)."""

    cause = RECURRENCE

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        return recurrent.rnn_forward(ctx, node, ins)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return recurrent.rnn_backward(ctx, node, ins, out, g)
