"""nn.RNN / LSTM / GRU layers, predicted by ``gradlint.engine.recurrent`` (docs/design.md §6),
and the packing of a padded batch that feeds them variable-length sequences (§6, R7)."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine import recurrent
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import RECURRENCE, Transfer, register


@register("rnn")
class Recurrent(Transfer):
    """nn.RNN / LSTM / GRU unrolled over the sequence (docs/design.md §6)."""

    cause = RECURRENCE

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        return recurrent.rnn_forward(ctx, node, ins)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return recurrent.rnn_backward(ctx, node, ins, out, g)


def _shapes(node: Node) -> tuple[tuple[int, ...], ...]:
    return node.shape if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple) else ()


@register("packing")
class Packing(Transfer):
    """R7 (docs/design.md §6): ``pack_padded_sequence`` keeps a padded batch's valid steps, one
    row each (a selection: the padding gets no gradient); ``pad_packed_sequence`` puts them back
    among zeros (each row one output element; the zeros dilute the second moments by the share
    of valid steps). The second output (``batch_sizes``, the lengths) is integer metadata."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        shapes = _shapes(node)
        if not isinstance(x, Fwd) or len(shapes) != 2:
            ctx.note_unknown(node)
            return (x.with_(unknown=True),) if isinstance(x, Fwd) else (Fwd(q=0.0, unknown=True),)
        data_shape, meta_shape = shapes
        meta = Fwd(q=0.0, shape=meta_shape, roles=default_roles(meta_shape), dtype="int", const=True, blocked=True)
        if node.attrs.get("op") == "_pack_padded_sequence":
            return x.with_(shape=data_shape, roles=default_roles(data_shape), origin=None), meta
        n = math.prod(data_shape)
        share = x.numel / n if n else 1.0
        roles = default_roles(data_shape)
        if len(data_shape) == 3 and not node.attrs.get("batch_first"):
            roles = "PBF"
        return x.with_(q=x.q * share, mu=x.mu * share, k=x.k * share * share, kt=x.kt * share * share,
                       shape=data_shape, roles=roles, origin=None), meta

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out, g):
        x = ins[0]
        gd = g[0] if isinstance(g, tuple) else g
        rest = [None] * (len(ins) - 1)
        if gd is None or not isinstance(x, Fwd):
            return [None] + rest
        data = out[0] if isinstance(out, tuple) else out
        if node.attrs.get("op") == "_pack_padded_sequence":
            frac = data.numel / x.numel if x.numel and data.numel else 1.0
            return [gd.scaled(frac)] + rest
        return [gd] + rest

