"""Weighted layers: Linear, convolutions and embeddings (docs/design.md §4.1 (L1–L4), §3 (W1–W4))."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import BATCH, FEAT, POS, Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import INIT, Transfer, register
from gradlint.engine.transfers.roles import conv_roles, out_shape


def _weight(ctx: Context, node: Node, ins: list[Fwd]) -> tuple[float, tuple[int, ...]]:
    """Mean square and shape of a layer's weight: its parameter's, or those of the tensor
    computed in forward that is the node's second operand (kinds ``linear_w``, ``conv_w``:
    weight_norm, spectral norm, a scaled parameter)."""
    if node.kind.endswith("_w"):
        w = ins[1] if len(ins) > 1 else None
        return (w.q, tuple(w.shape)) if isinstance(w, Fwd) else (0.0, ())
    st = ctx.param_stats(node.params["weight"])
    shape = node.attrs.get("weight_shape")
    return st.ms, tuple(shape) if shape and math.prod(shape) == st.numel else tuple(st.shape)


def _centred(*terms: float) -> float:
    """A bias gradient's mean square, the sum of its per-element, same-sample (r) and
    cross-sample (rb) terms. A norm below that removes the mean over every dim the bias is
    broadcast over (train-mode BatchNorm, InstanceNorm: docs/design.md §4.4) makes them cancel:
    the loss does not see a per-channel shift there, the gradient is exactly zero, and what is
    left of the sum is rounding (relative 1e-16), reported as the provable zero 0.0. A sum that
    large a share of its terms is a real gradient."""
    total = sum(terms)
    return 0.0 if abs(total) <= 1e-9 * sum(abs(t) for t in terms) else total


def _bias(ctx: Context, node: Node, ins: list[Fwd]) -> tuple[float, float] | None:
    """Mean square and mean of a layer's bias (a parameter, or a computed operand), or None."""
    if "bias" in node.params:
        b = ctx.param_stats(node.params["bias"])
        return b.ms, b.mean
    if node.attrs.get("bias_operand") and len(ins) > 2 and isinstance(ins[2], Fwd):
        return ins[2].q, ins[2].mu
    return None


def _book(ctx: Context, node: Node, res: list[Bwd | None], role: str, e2: float) -> None:
    """Book a weight's or a bias's E[(dL/dθ)²]: on its parameter, or (computed in forward) as
    the gradient of the operand it came from, which the ops that made it carry further back."""
    if role in node.params:
        ctx.param_grad(node.params[role], e2)
        return
    i = 1 if role == "weight" else 2
    if node.kind.endswith("_w") and i < len(res) and (role == "weight" or node.attrs.get("bias_operand")):
        res[i] = Bwd(max(e2, 0.0)) if e2 >= 0 else Bwd(0.0, unknown=True)


@register("linear", "linear_w")
class Linear(Transfer):
    """nn.Linear / F.linear / HF Conv1D (L1 forward and backward, W1 weight gradients), with a
    parameter or a computed tensor as its weight."""

    cause = INIT

    def _dims(self, ctx: Context, node: Node, ins: list[Fwd]):
        ms, shape = _weight(ctx, node, ins)
        fan_out, fan_in = (shape[0], shape[-1]) if shape else (1, 1)
        if node.attrs.get("layout") == "in_out":
            fan_in, fan_out = fan_out, fan_in
        return ms, fan_in, fan_out

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        w_ms, fan_in, _ = self._dims(ctx, node, ins)
        bq, bm = _bias(ctx, node, ins) or (0.0, 0.0)
        g = fan_in * w_ms
        shape = out_shape(node, x)
        roles = (x.roles[:-1] + FEAT) if len(x.roles) == len(shape) and shape else default_roles(shape)
        return Fwd(q=g * x.q + bq, mu=bm, k=g * x.k + bq, kt=g * x.kt + bq, shape=shape, roles=roles,
                   origin=node.name, const=x.const, blocked=x.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        w_ms, fan_in, fan_out = self._dims(ctx, node, ins)
        rows = max(x.numel // fan_in, 1) if x.numel and fan_in else 1
        batch = ctx.batch_of(rows)
        pos = max(rows // batch, 1)
        rows_all = batch * pos
        res: list[Bwd | None] = [None] * len(ins)
        _book(ctx, node, res, "weight",
              rows_all * ((g.s + g.sw) * x.q + (pos - 1) * g.r * x.kt + (rows_all - pos) * g.rb * x.k
                          + (pos - 1) * g.coh * w_ms * x.v * x.v))
        _book(ctx, node, res, "bias", _centred(rows_all * g.s, rows_all * (pos - 1) * g.r,
                                               rows_all * (rows_all - pos) * g.rb))
        f = fan_out * w_ms
        res[0] = Bwd(f * g.s, f * g.r, 0.0, f * g.rb)
        return res


def _conv_counts(n_in: int, n_out: int, k: int, stride: int, pad_left: int, dil: int, transposed: bool):
    """Per-tap valid counts along one dim, and the backward fan per input position (L2, L3).

    Returns:
        (taps, fwd_fan, bwd_fan): per tap the number of (output, input) pairs that read real
        data; the mean number of taps reading real input per output position; the mean
        number of (output, tap) pairs that read each input position.
    """
    taps = []
    if not transposed:
        for t in range(k):
            off = t * dil - pad_left
            taps.append(sum(1 for o in range(n_out) if 0 <= o * stride + off < n_in))
        total = sum(taps)
        return taps, total / max(n_out, 1), total / max(n_in, 1)
    # Transposed: input position i, tap t lands on output i*stride - pad + t*dil.
    for t in range(k):
        off = t * dil - pad_left
        taps.append(sum(1 for i in range(n_in) if 0 <= i * stride + off < n_out))
    total = sum(taps)
    return taps, total / max(n_out, 1), total / max(n_in, 1)


def _shared_taps(node: Node, dims) -> float:
    """Two output positions share a weight's product only through the taps that read real
    input at both (E[W_t W_t'] = 0 for t ≠ t'): at a padded border fewer taps are shared than
    each position reads, so their covariance is this fraction of the variance (L2). On a 4×4
    map a 3×3 padded conv keeps 32%; the per-channel offset a mean input makes then varies
    over positions, which a train-mode BatchNorm's batch variance sees."""
    if node.attrs.get("transposed", False):
        return 1.0
    if any(d[1] <= 0 for d in dims):
        return 1.0
    pos = round(math.prod(sum(d[0]) / d[1] for d in dims))  # output positions: taps read / taps per position
    both = math.prod(sum(c * c for c in d[0]) for d in dims)  # ordered pairs, equal ones included
    each = math.prod(sum(d[0]) for d in dims)
    if pos < 2 or each <= 0:
        return 1.0
    return ((both - each) / (pos * (pos - 1))) / (each / pos)


@register("conv", "conv_w")
class Conv(Transfer):
    """nn.ConvNd and ConvTransposeNd (L2, L3 with exact border counts; W2 gradients), with a
    parameter or a computed tensor as its weight."""

    cause = INIT

    def _geometry(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd):
        a = node.attrs
        x = ins[0]
        wshape = _weight(ctx, node, ins)[1]
        nsp = len(wshape) - 2
        ks = list(wshape[2:])
        stride = (a.get("stride") or [1]) * (nsp if len(a.get("stride") or [1]) == 1 else 1)
        dil = (a.get("dilation") or [1]) * (nsp if len(a.get("dilation") or [1]) == 1 else 1)
        pad = a.get("padding")
        in_sp = list(x.shape[-nsp:]) if len(x.shape) >= nsp + 1 else [1] * nsp
        out_sp = list(out.shape[-nsp:]) if len(out.shape) >= nsp + 1 else in_sp
        if isinstance(pad, str):
            pads = [0 if pad == "valid" else (dil[i] * (ks[i] - 1)) // 2 for i in range(nsp)]
        else:
            pads = list(pad or [0]) * (nsp if len(pad or [0]) == 1 else 1)
        dims = [_conv_counts(in_sp[i], out_sp[i], ks[i], stride[i], pads[i], dil[i], a.get("transposed", False))
                for i in range(nsp)]
        return wshape, dims

    def _fans(self, node: Node, wshape, dims):
        groups = node.attrs.get("groups", 1)
        fwd = math.prod(d[1] for d in dims)
        bwd = math.prod(d[2] for d in dims)
        if node.attrs.get("transposed", False):
            c_in, c_out_g = wshape[0], wshape[1]
            return (c_in / groups) * fwd, c_out_g * bwd
        c_out, c_in_g = wshape[0], wshape[1]
        return c_in_g * fwd, (c_out / groups) * bwd

    @staticmethod
    def _mixes_positions(ctx: Context, node: Node, x: Fwd) -> bool:
        """A Conv1d fed a (batch, positions, features) tensor (MLP-Mixer's token mixing,
        ``nn.Conv1d(num_patches, hidden, 1)``): its channels are the positions and its length
        the features (docs/design.md §4.1, L5). A graph input's layout is a guess, not evidence."""
        if len(x.shape) != 3 or x.roles != BATCH + POS + FEAT or node.attrs.get("transposed", False):
            return False
        src = ctx.graph.by_name.get(x.origin) if x.origin else None
        return src is None or src.kind != "input"

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        w_ms = _weight(ctx, node, ins)[0]
        bq, bm = _bias(ctx, node, ins) or (0.0, 0.0)
        shape = out_shape(node, x)
        out0 = Fwd(q=0.0, shape=shape)
        wshape, dims = self._geometry(ctx, node, ins, out0)
        fwd_fan, _ = self._fans(node, wshape, dims)
        gq = fwd_fan * w_ms
        if self._mixes_positions(ctx, node, x):
            # Two output positions (conv channels) draw on every input position through
            # independent weight rows: they share only the bias mean.
            return Fwd(q=gq * x.q + bq, mu=bm, k=gq * x.k + bq, kt=bm * bm, shape=shape, roles=x.roles,
                       origin=node.name, const=x.const, blocked=x.blocked)
        return Fwd(q=gq * x.q + bq, mu=bm, k=gq * x.k + bq, kt=gq * _shared_taps(node, dims) * x.kt + bq, shape=shape,
                   roles=conv_roles(len(shape)), origin=node.name, const=x.const, blocked=x.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        w_ms = _weight(ctx, node, ins)[0]
        wshape, dims = self._geometry(ctx, node, ins, out)
        _, bwd_fan = self._fans(node, wshape, dims)
        batch = max(ctx.batch or (x.shape[0] if x.shape else 1), 1)
        m1 = math.prod(sum(d[0]) / len(d[0]) for d in dims)
        m2 = math.prod(sum(c * c for c in d[0]) / len(d[0]) for d in dims)
        s = g.s + g.sw
        res: list[Bwd | None] = [None] * len(ins)
        f = bwd_fan * w_ms
        if self._mixes_positions(ctx, node, x):
            # The weight sums over (sample, feature) rows; the engine carries no correlation
            # across the features of one position (mean field: none), so only s and rb enter.
            # r across positions does not reach the input: each input position gets the
            # output positions' gradients through its own independent weight column.
            n_f = math.prod(out.shape[2:]) if len(out.shape) > 2 else 1
            _book(ctx, node, res, "weight", batch * n_f * s * x.q + batch * (batch - 1) * n_f * g.rb * x.k)
            _book(ctx, node, res, "bias", _centred(batch * n_f * g.s, batch * (batch - 1) * n_f * n_f * g.rb))
            res[0] = Bwd(f * g.s, 0.0, 0.0, f * g.rb)
            return res
        _book(ctx, node, res, "weight", batch * (m1 * (s * x.q - g.r * x.kt) + m2 * g.r * x.kt)
              + batch * (batch - 1) * m2 * g.rb * x.k + batch * (m2 - m1) * g.coh * w_ms * x.v * x.v)
        p_out = math.prod(out.shape[2:]) if len(out.shape) > 2 else 1
        _book(ctx, node, res, "bias", _centred(batch * p_out * g.s, batch * p_out * (p_out - 1) * g.r,
                                               batch * (batch - 1) * p_out * p_out * g.rb))
        res[0] = Bwd(f * g.s, f * g.r, 0.0, f * g.rb)
        return res


@register("embedding")
class Embedding(Transfer):
    """nn.Embedding (L4 forward, W4 gradient); token ids take no gradient. A table computed in
    forward (spectral norm) is the second operand: its statistics are read from it and its
    gradient returned to it, as ``linear_w`` does for a Linear."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        ids = ins[0]
        w = ctx.param_stats(node.params["weight"]) if "weight" in node.params else None
        table = ins[1] if len(ins) > 1 and isinstance(ins[1], Fwd) else None  # computed in forward
        q = w.ms if w else table.q if table else 1.0
        shape = out_shape(node, ids)
        vocab = w.shape[0] if w else table.shape[0] if table and table.shape else (ids.vocab or 1)
        # Constant ids (position ids, token-type ids) index the same rows in every sample; a
        # single distinct id (all zeros) means every position reads one row.
        same_row = bool(ids.const and (ids.vocab == 1
                                       or (ids.vocab is None and ids.origin and "token_type" in ids.origin)))
        mu = w.mean if w else table.mu if table else 0.0
        if ids.const and not same_row:
            # Position ids: each position its own row, the same in every sample. Rows of a
            # fixed table (sinusoids) are far from independent: read the rows the positions use.
            k, kt = q, mu * mu
            n = ids.vocab or (ids.shape[-1] if ids.shape else 0)
            rows = ctx.table_rows(node.params["weight"], n) if w else None
            if rows is not None:
                q, mu, kt = rows
                k = q
        elif same_row:
            k = kt = q
        else:
            k = kt = q / max(vocab, 1)
        return Fwd(q=q, mu=mu, k=k, kt=kt, shape=shape, roles=default_roles(shape), origin=node.name)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        table = ins[1] if len(ins) > 1 and isinstance(ins[1], Fwd) else None
        if "weight" not in node.params and table is None:
            return [None] * len(ins)
        shape = ctx.param_stats(node.params["weight"]).shape if table is None else table.shape
        n_tok = ins[0].numel or 1
        rows = max(shape[0] if shape else 1, 1)  # an empty table: no row to update
        if node.attrs.get("padding_idx") is not None:
            n_tok = n_tok * (rows - 1) / rows
        e2 = n_tok / rows * (g.s + g.sw)
        if table is None:
            ctx.param_grad(node.params["weight"], e2)
            return [None]
        return [None, Bwd(e2)]
