"""Per-op transfer rules: forward statistics and backward gradient moments.

Each rule implements one section of ``shared/design/signal-propagation.md`` (cited by its
label: L1 Linear, N1 LayerNorm, ...). A rule is a class registered under one or more graph
``kind``s with two methods:

* ``forward(ctx, node, ins) -> Fwd`` (or a tuple of ``Fwd`` for multi-output ops);
* ``backward(ctx, node, ins, out, g) -> list[Bwd | None]``, one entry per input, and it may
  call ``ctx.param_grad(name, e2)`` to add E[(dL/dθ)²] (mean over θ's elements) for a
  parameter it uses. Contributions from several uses add up (W7).

Every rule also names the ``cause`` its gain is attributed to in the summary.
"""

from __future__ import annotations

import math
from typing import Callable

from gradlint.engine import gaussian

from gradlint.engine import recurrent, routing
from gradlint.engine.state import BATCH, FEAT, POS, Bwd, Fwd, default_roles

TRANSFERS: dict[str, "Transfer"] = {}

# Causes of gain along the gradient path; ``None`` = benign or neutral.
INIT, SATURATION, NORMALIZATION, RESIDUAL, RECURRENCE, ATTENTION = (
    "init scale", "saturating activations", "normalization", "residual summation", "recurrence", "attention")
SATURATING = {"sigmoid", "tanh", "hardtanh", "softsign", "relu6", "hardsigmoid", "logsigmoid"}
TINY = 1e-300


class Transfer:
    """Base transfer rule: pass statistics through unchanged."""

    cause: str | None = None

    def forward(self, ctx, node, ins: list[Fwd]) -> Fwd:
        return _first(ins, node)

    def backward(self, ctx, node, ins: list[Fwd], out: Fwd, g: Bwd) -> list[Bwd | None]:
        return [g] + [None] * (len(ins) - 1)


def register(*kinds: str) -> Callable[[type], type]:
    """Register a transfer class under graph node kinds; a duplicate kind is an error."""
    def deco(cls: type) -> type:
        inst = cls()
        for k in kinds:
            if k in TRANSFERS:
                raise ValueError(f"transfer for {k!r} registered twice")
            TRANSFERS[k] = inst
        return cls
    return deco


# -- helpers ---------------------------------------------------------------------------------

def _first(ins: list[Fwd | None], node) -> Fwd:
    for f in ins:
        if isinstance(f, Fwd):
            return f.with_(shape=_shape(node, f), roles=_roles_like(_shape(node, f), f))
    return Fwd(q=0.0, shape=_shape(node, None) or (), const=True)


def _shape(node, fallback: Fwd | None) -> tuple[int, ...]:
    s = node.shape
    if isinstance(s, tuple) and all(isinstance(d, int) for d in s):
        return s
    return fallback.shape if fallback is not None else ()


def conv_roles(n: int) -> str:
    return BATCH + FEAT + POS * (n - 2)


def _roles_like(shape, f: Fwd) -> str:
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
            out.extend(POS if dst[k] != 1 else POS for k in range(j, len(dst)))
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


def _counts(shape, roles) -> tuple[int, int, int]:
    nb = np_ = nf = 1
    for d, r in zip(shape, roles):
        if r == BATCH:
            nb *= d
        elif r == POS:
            np_ *= d
        else:
            nf *= d
    return nb, np_, nf


def _act_params(attrs) -> dict:
    return {k: v for k, v in attrs.items() if k in ("negative_slope", "alpha", "min_val", "max_val", "beta", "threshold")}


def _corr(cov: float, mu: float, v: float) -> float:
    if v <= 0:
        return 1.0
    return max(-1.0, min(1.0, (cov - mu * mu) / v))


# -- sources -----------------------------------------------------------------------------------

@register("input")
class Input(Transfer):
    """Graph inputs: N(0, 1) floats or uniform token ids (the protocol of section 1)."""

    def forward(self, ctx, node, ins):
        shape = _shape(node, None)
        if node.dtype != "float":
            return Fwd(q=0.0, shape=shape, roles=default_roles(shape), dtype=node.dtype,
                       vocab=node.attrs.get("vocab"), origin=node.name)
        return Fwd(q=1.0, shape=shape, roles=default_roles(shape), origin=node.name)

    def backward(self, ctx, node, ins, out, g):
        return []


@register("const")
class Const(Transfer):
    """Buffers and created tensors (masks, position ids): no randomness, no gradient."""

    def forward(self, ctx, node, ins):
        shape = _shape(node, None)
        value = node.attrs.get("value")
        q = float(value) * float(value) if isinstance(value, (int, float)) else 0.0
        distinct = None
        if node.attrs.get("op") in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros",
                                    "new_ones", "new_full"):
            distinct = 1
        elif node.attrs.get("buffer") and node.dtype == "int":
            distinct = ctx.distinct_values(node.attrs["buffer"])
        return Fwd(q=q, shape=shape, roles=default_roles(shape), dtype=node.dtype, const=True, vocab=distinct,
                   origin="const:" + str(node.attrs.get("op") or node.attrs.get("buffer") or "value"))

    def backward(self, ctx, node, ins, out, g):
        return []


@register("param")
class ParamValue(Transfer):
    """A parameter used as a plain operand (LayerScale, CLS token, position table).

    Its value is the same for every sample (k = q); a vector without position dims is the
    same at every position too (kt = q). Its backward s is E[(dL/dθ)²] per element, which
    the engine books as the parameter's gradient.
    """

    def forward(self, ctx, node, ins):
        st = ctx.param_stats(node.attrs["param"])
        shape = _shape(node, None)
        positional = sum(1 for d in shape[:-1] if d > 1) > 0
        kt = st.mean * st.mean if positional else st.ms
        return Fwd(q=st.ms, mu=st.mean, k=st.ms, kt=kt, shape=shape, roles=default_roles(shape),
                   origin="param:" + node.attrs["param"])

    def backward(self, ctx, node, ins, out, g):
        ctx.param_grad(node.attrs["param"], g.s)
        return []


@register("getitem")
class GetItem(Transfer):
    def forward(self, ctx, node, ins):
        src = ins[0]
        idx = node.attrs["index"]
        if isinstance(src, tuple):
            return src[idx] if isinstance(idx, int) and -len(src) <= idx < len(src) else src[0]
        return _first(ins, node)

    def backward(self, ctx, node, ins, out, g):
        return [g]  # the engine routes it to slot ``index`` of a tuple-valued producer


# -- shape ops -------------------------------------------------------------------------------

@register("identity")
class Identity(Transfer):
    """View, reshape, permute, transpose, casts (E5): statistics unchanged, dims relabelled."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        if not isinstance(x, Fwd):
            return _first(ins, node)
        shape = _shape(node, x)
        op, args = node.attrs.get("op"), node.attrs.get("args", {})
        roles = x.roles
        if len(x.roles) == len(x.shape):
            if op == "permute" and args.get("dims") is not None:
                dims = [d % len(x.roles) for d in args["dims"]]
                roles = "".join(x.roles[d] for d in dims)
            elif op in ("transpose", "swapaxes") and len(x.roles) > 1:
                a, b = (int(args.get("dim0", 0)) % len(x.roles), int(args.get("dim1", 1)) % len(x.roles))
                r = list(x.roles)
                r[a], r[b] = r[b], r[a]
                roles = "".join(r)
            elif op == "t" and len(x.roles) == 2:
                roles = x.roles[::-1]
            elif op == "unsqueeze" and args.get("dim") is not None and len(shape) == len(x.roles) + 1:
                # A new axis takes the role of the axis before it: after the heads of a
                # (B, heads, T, d) tensor it is a copy of heads (GQA's repeat_kv), after the
                # batch axis it spreads a per-sample vector over positions.
                d = int(args["dim"]) % len(shape)
                roles = x.roles[:d] + (x.roles[d - 1] if d > 0 else BATCH) + x.roles[d:]
            elif op == "movedim":
                roles = reshape_roles(x.shape, x.roles, shape)
            else:
                roles = reshape_roles(x.shape, x.roles, shape)
        else:
            roles = default_roles(shape)
        dtype = node.dtype if node.dtype in ("float", "int", "bool") else x.dtype
        # A cast from float to an integer or bool type is a gradient blockage (.long(), .to(int)).
        return x.with_(shape=shape, roles=roles, dtype=dtype, blocked=x.blocked or (x.dtype == "float" and dtype != "float"))

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        if isinstance(x, Fwd) and x.dtype == "float" and out.dtype != "float":
            return [None] * len(ins)
        return [g] + [None] * (len(ins) - 1)


@register("select")
class Select(Transfer):
    """Slicing and indexing: a subset of elements, same statistics; the rest get no gradient."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        shape = _shape(node, x)
        return x.with_(shape=shape, roles=_roles_like(shape, x))

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        frac = out.numel / x.numel if x.numel and out.numel else 1.0
        if frac > 1.0:
            # A gather that reads elements several times (x[idx] with repeats: the k copies of
            # each token a mixture of experts dispatches): the copies' gradients add up.
            return [Bwd(frac * g.s + frac * (frac - 1) * g.r, frac * frac * g.r, 0.0, frac * frac * g.rb)] + \
                [None] * (len(ins) - 1)
        return [g.scaled(frac)] + [None] * (len(ins) - 1)


@register("split")
class Split(Transfer):
    def forward(self, ctx, node, ins):
        x = ins[0]
        shapes = node.shape if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple) else ()
        return tuple(x.with_(shape=s, roles=_roles_like(s, x)) for s in shapes) or (x,)

    def backward(self, ctx, node, ins, out, g):
        # g arrives as a tuple (one Bwd per piece); each piece is its share of the input.
        x = ins[0]
        total = Bwd()
        for piece, gp in zip(out, g):
            if gp is not None and x.numel:
                total = total + gp.scaled(piece.numel / x.numel)
        return [total]


@register("cat")
class Cat(Transfer):
    """Concatenation (E4): element-weighted average of the pieces' statistics."""

    def forward(self, ctx, node, ins):
        parts = [f for f in ins if isinstance(f, Fwd)]
        n = [max(f.numel, 1) for f in parts]
        tot = sum(n)
        avg = lambda attr: sum(getattr(f, attr) * w for f, w in zip(parts, n)) / tot
        shape = _shape(node, parts[0])
        base = parts[0]
        return Fwd(q=avg("q"), mu=avg("mu"), k=avg("k"), kt=avg("kt"), shape=shape,
                   roles=_roles_like(shape, base), dtype=base.dtype,
                   const=all(f.const for f in parts), blocked=all(f.blocked for f in parts),
                   normed=avg("normed"))

    def backward(self, ctx, node, ins, out, g):
        return [g if isinstance(f, Fwd) else None for f in ins]


@register("expand")
class Expand(Transfer):
    """Broadcast copies: copies along positions are identical (kt = q); their gradients add."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        shape = _shape(node, x)
        roles = _roles_like(shape, x) if len(shape) != len(x.shape) else (x.roles if len(x.roles) == len(shape) else default_roles(shape))
        f = x.with_(shape=shape, roles=roles)
        if len(shape) == len(x.shape):
            for i, (d_in, d_out, r) in enumerate(zip(x.shape, shape, roles)):
                if d_in == 1 and d_out > 1:
                    kind = _copy_kind(roles, i)
                    if kind == POS:
                        f = f.with_(kt=f.q)
                    elif kind == BATCH:
                        f = f.with_(k=f.q)
        return f

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        n_pos = n_other = 1
        if len(out.shape) == len(x.shape):
            roles = out.roles or default_roles(out.shape)
            for i, (d_in, d_out) in enumerate(zip(x.shape, out.shape)):
                if d_in == 1 and d_out > 1:
                    if _copy_kind(roles, i) == POS:
                        n_pos *= d_out
                    else:
                        n_other *= d_out
        else:
            n_other = max(out.numel // max(x.numel, 1), 1)
        n = n_pos * n_other
        s = n * g.s + n_other * n_pos * (n_pos - 1) * g.r
        r = g.r * n if n_pos == 1 else s
        return [Bwd(s, r)]


def _copy_kind(roles: str, i: int) -> str:
    """What copies made along axis ``i`` are: the batch axis copies across samples, any other
    batch- or position-role axis copies within a sample (positions), a feature axis copies
    features (GQA heads)."""
    r = roles[i] if i < len(roles) else POS
    if r == FEAT:
        return FEAT
    if r == BATCH and roles.index(BATCH) == i:
        return BATCH
    return POS


@register("datamove")
class DataMove(Transfer):
    """Masking, padding, upsampling: the main operand's statistics carry over."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        if not isinstance(x, Fwd):
            return _first(ins, node)
        shape = _shape(node, x)
        return x.with_(shape=shape, roles=_roles_like(shape, x), const=x.const)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        n = out.numel / x.numel if x.numel and out.numel else 1.0
        if n > 1.0:
            s = n * g.s + n * (n - 1) * g.r
            return [Bwd(s, s)] + [None] * (len(ins) - 1)
        return [g.scaled(n)] + [None] * (len(ins) - 1)


# -- gradient blockers -------------------------------------------------------------------------

@register("block")
class Block(Transfer):
    """detach, argmax, round, comparisons, integer casts: no gradient flows back."""

    def forward(self, ctx, node, ins):
        x = _first(ins, node)
        dtype = node.dtype if node.dtype in ("float", "int", "bool") else x.dtype
        return x.with_(blocked=True, dtype=dtype)

    def backward(self, ctx, node, ins, out, g):
        return [None] * len(ins)


@register("grad_region")
class GradRegion(Transfer):
    """A ``torch.no_grad()`` (or ``enable_grad``) region exported as one higher-order op."""

    def forward(self, ctx, node, ins):
        x = _first(ins, node)
        blocked = not node.attrs.get("enabled", True)
        shapes = node.shape if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple) else None
        if shapes:
            return tuple(x.with_(shape=s, roles=default_roles(s), blocked=blocked or x.blocked) for s in shapes)
        return x.with_(blocked=blocked or x.blocked)

    def backward(self, ctx, node, ins, out, g):
        if not node.attrs.get("enabled", True):
            return [None] * len(ins)
        total = Bwd()
        for gp in (g if isinstance(g, tuple) else (g,)):
            if gp is not None:
                total = total + gp
        return [total] + [None] * (len(ins) - 1)


@register("unknown")
class Unknown(Transfer):
    """An op the engine does not know: its first tensor operand passes through unchanged."""

    def forward(self, ctx, node, ins):
        ctx.note_unknown(node)
        x = _first(ins, node)
        if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple):
            return tuple(x.with_(shape=s, roles=default_roles(s)) for s in node.shape)
        return x.with_(dtype=node.dtype if node.dtype in ("float", "int", "bool") else x.dtype)

    def backward(self, ctx, node, ins, out, g):
        if isinstance(g, tuple):
            total = Bwd()
            for gp in g:
                if gp is not None:
                    total = total + gp
            g = total
        first = next((i for i, f in enumerate(ins) if isinstance(f, Fwd) and f.dtype == "float"), None)
        return [g if i == first else None for i in range(len(ins))]


# -- weighted layers ---------------------------------------------------------------------------

@register("linear")
class Linear(Transfer):
    """nn.Linear / F.linear / HF Conv1D (L1 forward and backward, W1 weight gradients)."""

    cause = INIT

    def _dims(self, ctx, node):
        w = ctx.param_stats(node.params["weight"])
        fan_out, fan_in = w.shape[0], w.shape[-1]
        if node.attrs.get("layout") == "in_out":
            fan_in, fan_out = w.shape[0], w.shape[-1]
        return w, fan_in, fan_out

    def forward(self, ctx, node, ins):
        x = ins[0]
        w, fan_in, _ = self._dims(ctx, node)
        b = ctx.param_stats(node.params["bias"]) if "bias" in node.params else None
        bq, bm = (b.ms, b.mean) if b else (0.0, 0.0)
        g = fan_in * w.ms
        shape = _shape(node, x)
        roles = (x.roles[:-1] + FEAT) if len(x.roles) == len(shape) and shape else default_roles(shape)
        return Fwd(q=g * x.q + bq, mu=bm, k=g * x.k + bq, kt=g * x.kt + bq, shape=shape, roles=roles,
                   origin=node.name, const=x.const, blocked=x.blocked)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        w, fan_in, fan_out = self._dims(ctx, node)
        rows = max(x.numel // fan_in, 1) if x.numel and fan_in else 1
        batch = ctx.batch_of(rows)
        pos = max(rows // batch, 1)
        rows_all = batch * pos
        ctx.param_grad(node.params["weight"],
                       rows_all * ((g.s + g.sw) * x.q + (pos - 1) * g.r * x.kt + (rows_all - pos) * g.rb * x.k
                                   + (pos - 1) * g.coh * w.ms * x.v * x.v))
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], rows_all * (g.s + (pos - 1) * g.r + (rows_all - pos) * g.rb))
        f = fan_out * w.ms
        return [Bwd(f * g.s, f * g.r, 0.0, f * g.rb)]


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


@register("conv")
class Conv(Transfer):
    """nn.ConvNd and ConvTransposeNd (L2, L3 with exact border counts; W2 gradients)."""

    cause = INIT

    def _geometry(self, ctx, node, x: Fwd, out: Fwd):
        a = node.attrs
        wshape = ctx.param_stats(node.params["weight"]).shape
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

    def _fans(self, node, wshape, dims):
        groups = node.attrs.get("groups", 1)
        fwd = math.prod(d[1] for d in dims)
        bwd = math.prod(d[2] for d in dims)
        if node.attrs.get("transposed", False):
            c_in, c_out_g = wshape[0], wshape[1]
            return (c_in / groups) * fwd, c_out_g * bwd
        c_out, c_in_g = wshape[0], wshape[1]
        return c_in_g * fwd, (c_out / groups) * bwd

    def forward(self, ctx, node, ins):
        x = ins[0]
        w = ctx.param_stats(node.params["weight"])
        b = ctx.param_stats(node.params["bias"]) if "bias" in node.params else None
        bq, bm = (b.ms, b.mean) if b else (0.0, 0.0)
        shape = _shape(node, x)
        out0 = Fwd(q=0.0, shape=shape)
        wshape, dims = self._geometry(ctx, node, x, out0)
        fwd_fan, _ = self._fans(node, wshape, dims)
        gq = fwd_fan * w.ms
        return Fwd(q=gq * x.q + bq, mu=bm, k=gq * x.k + bq, kt=gq * x.kt + bq, shape=shape,
                   roles=conv_roles(len(shape)), origin=node.name, const=x.const, blocked=x.blocked)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        w = ctx.param_stats(node.params["weight"])
        wshape, dims = self._geometry(ctx, node, x, out)
        _, bwd_fan = self._fans(node, wshape, dims)
        batch = max(ctx.batch or (x.shape[0] if x.shape else 1), 1)
        m1 = math.prod(sum(d[0]) / len(d[0]) for d in dims)
        m2 = math.prod(sum(c * c for c in d[0]) / len(d[0]) for d in dims)
        s = g.s + g.sw
        ctx.param_grad(node.params["weight"], batch * (m1 * (s * x.q - g.r * x.kt) + m2 * g.r * x.kt)
                       + batch * (batch - 1) * m2 * g.rb * x.k + batch * (m2 - m1) * g.coh * w.ms * x.v * x.v)
        if "bias" in node.params:
            p_out = math.prod(out.shape[2:]) if len(out.shape) > 2 else 1
            ctx.param_grad(node.params["bias"], batch * p_out * (g.s + (p_out - 1) * g.r)
                           + batch * (batch - 1) * p_out * p_out * g.rb)
        f = bwd_fan * w.ms
        return [Bwd(f * g.s, f * g.r, 0.0, f * g.rb)]


@register("embedding")
class Embedding(Transfer):
    """nn.Embedding (L4 forward, W4 gradient); token ids take no gradient."""

    def forward(self, ctx, node, ins):
        ids = ins[0]
        w = ctx.param_stats(node.params["weight"]) if "weight" in node.params else None
        q = w.ms if w else 1.0
        shape = _shape(node, ids)
        vocab = w.shape[0] if w else (ids.vocab or 1)
        # Constant ids (position ids, token-type ids) index the same rows in every sample; a
        # single distinct id (all zeros) means every position reads one row.
        same_row = bool(ids.const and (ids.vocab == 1 or (ids.vocab is None and ids.origin and "token_type" in ids.origin)))
        if ids.const and not same_row:
            k, kt = q, 0.0  # position ids: each position its own row, the same in every sample
        elif same_row:
            k = kt = q
        else:
            k = kt = q / max(vocab, 1)
        return Fwd(q=q, mu=w.mean if w else 0.0, k=k, kt=kt, shape=shape, roles=default_roles(shape),
                   origin=node.name)

    def backward(self, ctx, node, ins, out, g):
        if "weight" in node.params:
            w = ctx.param_stats(node.params["weight"])
            n_tok = ins[0].numel or 1
            rows = max(w.shape[0], 1)  # an empty table: no row to update
            if node.attrs.get("padding_idx") is not None:
                n_tok = n_tok * (rows - 1) / rows
            ctx.param_grad(node.params["weight"], n_tok / rows * (g.s + g.sw))
        return [None]


# -- activations and element-wise ops -------------------------------------------------------------

@register("act")
class Activation(Transfer):
    """Element-wise activation (E1) with Gaussian expectations from ``gaussian``."""

    def _fn(self, ctx, node):
        fn = node.attrs["fn"]
        params = _act_params(node.attrs)
        if fn == "prelu":
            w = ctx.param_stats(node.params["weight"]) if "weight" in node.params else None
            fn, params = "leaky_relu", {"negative_slope": w.mean if w else 0.25}
        return fn, params

    def forward(self, ctx, node, ins):
        x = ins[0]
        fn, params = self._fn(ctx, node)
        v = x.v
        m = gaussian.moments(fn, x.mu, v, **params)
        ck = gaussian.cross(fn, x.mu, v, _corr(x.k, x.mu, v), **params).phi_phi
        ckt = gaussian.cross(fn, x.mu, v, _corr(x.kt, x.mu, v), **params).phi_phi
        return x.with_(q=m.second, mu=m.mean, k=ck, kt=ckt, origin=node.name, normed=0.0, scale=1.0)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        fn, params = self._fn(ctx, node)
        v = x.v
        m = gaussian.moments(fn, x.mu, v, **params)
        rr = gaussian.cross(fn, x.mu, v, _corr(x.kt, x.mu, v), **params).dphi_dphi if g.r else 0.0
        rb = gaussian.cross(fn, x.mu, v, _corr(x.k, x.mu, v), **params).dphi_dphi if g.rb else 0.0
        if node.attrs["fn"] == "prelu" and "weight" in node.params:
            w = ctx.param_stats(node.params["weight"])
            neg = gaussian.moments("relu", -x.mu, v).second  # E[min(h, 0)^2]
            ctx.param_grad(node.params["weight"], (x.numel / max(w.numel, 1)) * g.s * neg)
        coh = g.r * self._dphi_slope(fn, params, x) ** 2 if g.r > 0 else 0.0
        return [Bwd(g.s * m.dphi2, g.r * rr, 0.0, g.rb * rb, coh)]

    @staticmethod
    def _dphi_slope(fn, params, x: Fwd) -> float:
        """E[phi''(h)] as d/dmu E[phi'(h)], which also holds at a kink (ReLU: the density at 0)."""
        v = x.v
        if v <= 0:
            return 0.0
        eps = 1e-3 * math.sqrt(v)
        hi = gaussian.moments(fn, x.mu + eps, v, **params).dphi_mean
        lo = gaussian.moments(fn, x.mu - eps, v, **params).dphi_mean
        return (hi - lo) / (2 * eps)

    def cause_of(self, node):
        return SATURATION if node.attrs["fn"] in SATURATING else INIT


@register("elementwise")
class Elementwise(Transfer):
    """Element-wise maths without a rule of its own, evaluated on the Gaussian grid."""

    def _fn(self, node):
        target, extra = node.attrs["target"], node.attrs.get("extra", {})
        scalars = {k: v for k, v in extra.items() if isinstance(v, (int, float, bool)) or v is None}
        return lambda z: target(z, **scalars)

    def forward(self, ctx, node, ins):
        x = ins[0]
        if not isinstance(x, Fwd):
            return _first(ins, node)
        m = self._moments(ctx, node, x)
        if m is None:
            return x.with_(shape=_shape(node, x))
        d2 = m.dphi_mean * m.dphi_mean
        return x.with_(q=m.second, mu=m.mean, k=m.mean * m.mean + (x.k - x.mu * x.mu) * d2,
                       kt=m.mean * m.mean + (x.kt - x.mu * x.mu) * d2, origin=node.name, normed=0.0)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        m = self._moments(ctx, node, x)
        if m is None:
            return [g] + [None] * (len(ins) - 1)
        d2 = m.dphi_mean * m.dphi_mean
        return [Bwd(g.s * m.dphi2, g.r * d2, 0.0, g.rb * d2)] + [None] * (len(ins) - 1)

    def _moments(self, ctx, node, x: Fwd):
        """Grid moments, or None where the op is undefined on part of the Gaussian's support
        (rsqrt, log of a value that is positive only by construction): then pass through."""
        key = (str(node.attrs["target"]), repr(sorted(node.attrs.get("extra", {}).items(), key=str)))
        try:
            m = gaussian.expect_fn(self._fn(node), x.mu, x.v, key=key)
        except Exception:
            m = None
        if m is None or not all(math.isfinite(v) for v in m):
            ctx.note_unknown(node)
            return None
        return m


@register("act_module")
class ActivationModule(Transfer):
    """A parameter-free element-wise module, its moments from running it on the grid."""

    def _m(self, node, x):
        mod = node.attrs["module"]
        return gaussian.expect_fn(mod, x.mu, x.v, key=("module", id(mod)))

    def forward(self, ctx, node, ins):
        x = ins[0]
        m = self._m(node, x)
        d2 = m.dphi_mean * m.dphi_mean
        return x.with_(q=m.second, mu=m.mean, k=m.mean * m.mean + (x.k - x.mu * x.mu) * d2,
                       kt=m.mean * m.mean + (x.kt - x.mu * x.mu) * d2, origin=node.name, normed=0.0)

    def backward(self, ctx, node, ins, out, g):
        m = self._m(node, ins[0])
        return [Bwd(g.s * m.dphi2, g.r * m.dphi_mean * m.dphi_mean)]


@register("dropout")
class Dropout(Transfer):
    """Dropout in train mode (E6): q and s scale by 1/(1-p)."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        p = node.attrs.get("p", 0.0) if node.attrs.get("train", True) else 0.0
        if p <= 0 or p >= 1:
            return x.with_(shape=_shape(node, x))
        return x.with_(q=x.q / (1 - p), origin=node.name)

    def backward(self, ctx, node, ins, out, g):
        p = node.attrs.get("p", 0.0) if node.attrs.get("train", True) else 0.0
        if p <= 0 or p >= 1:
            return [g]
        return [Bwd(g.s / (1 - p), g.r, 0.0, g.rb)]


def _broadcast_sum(x: Fwd, out: Fwd, s: float, r: float) -> Bwd:
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


@register("add")
class Add(Transfer):
    """Sums (E2): independent branches add their moments; x + x adds coherently."""

    cause = RESIDUAL

    def forward(self, ctx, node, ins):
        alpha = float(node.attrs.get("alpha", 1) or 1)
        tensors = [f for f in ins if isinstance(f, Fwd)]
        shape = _shape(node, tensors[0])
        if len(tensors) == 1:
            x = tensors[0]
            c = node.attrs.get("scalar")
            if node.attrs.get("scalar_first"):  # rsub / scalar - x
                x = x.with_(mu=-x.mu)
            c = float(c) * (alpha if not node.attrs.get("scalar_first") else 1.0) if isinstance(c, (int, float)) else 0.0
            return x.with_(q=x.q + 2 * c * x.mu + c * c, mu=x.mu + c, k=x.k + 2 * c * x.mu + c * c,
                           kt=x.kt + 2 * c * x.mu + c * c, shape=shape, roles=_roles_like(shape, x))
        a, b = tensors[0], tensors[1]
        if a.const and not b.const:
            return b.with_(shape=shape, roles=_roles_like(shape, b))
        if b.const and not a.const:
            return a.with_(shape=shape, roles=_roles_like(shape, a))
        roles = a.roles if len(a.shape) == len(shape) else _roles_like(shape, b)
        if a.origin is not None and a.origin == b.origin and not a.origin.startswith("const"):
            f = (a.scale + alpha * b.scale) / a.scale if a.scale else 1.0
            return a.with_(q=f * f * a.q, mu=f * a.mu, k=f * f * a.k, kt=f * f * a.kt, shape=shape, roles=roles,
                           scale=a.scale * f)
        qa, qb = a.q, alpha * alpha * b.q
        cross = 2 * alpha * a.mu * b.mu
        q = qa + qb + cross
        normed = (a.normed * qa + b.normed * qb) / q if q > 0 else 0.0
        return Fwd(q=q, mu=a.mu + alpha * b.mu, k=a.k + alpha * alpha * b.k + cross,
                   kt=a.kt + alpha * alpha * b.kt + cross, shape=shape, roles=roles, dtype=a.dtype,
                   const=a.const and b.const, blocked=a.blocked and b.blocked, origin=None, normed=normed)

    def backward(self, ctx, node, ins, out, g):
        alpha = float(node.attrs.get("alpha", 1) or 1)
        res: list[Bwd | None] = []
        first = True
        for f in ins:
            if not isinstance(f, Fwd) or f.const:
                res.append(None)
                continue
            gi = g if first else g.scaled(alpha * alpha)
            first = False
            res.append(_broadcast_sum(f, out, gi.s, gi.r))
        return res


@register("mul")
class Mul(Transfer):
    """Products (E3) and scaling by constants, parameters (LayerScale, SkipInit α) or tensors."""

    def _scalar(self, node) -> float | None:
        c = node.attrs.get("scalar")
        if not isinstance(c, (int, float)):
            return None
        c = float(c)
        if node.attrs.get("op") == "div":
            if node.attrs.get("scalar_first"):
                return None
            return 1.0 / c if c else None
        return c

    def forward(self, ctx, node, ins):
        tensors = [f for f in ins if isinstance(f, Fwd)]
        x = tensors[0]
        shape = _shape(node, x)
        if len(tensors) == 1:
            c = self._scalar(node)
            if c is None:
                return x.with_(shape=shape)
            return x.with_(q=c * c * x.q, mu=c * x.mu, k=c * c * x.k, kt=c * c * x.kt, shape=shape,
                           scale=x.scale * c)
        a, b = tensors[0], tensors[1]
        if node.attrs.get("op") == "div":
            return a.with_(shape=shape, roles=_roles_like(shape, a)) if not a.const else b.with_(shape=shape)
        if a.const != b.const:
            x = b if a.const else a
            return x.with_(shape=shape, roles=_roles_like(shape, x))
        roles = a.roles if len(a.shape) == len(shape) else _roles_like(shape, b)
        if a.origin is not None and a.origin == b.origin:
            # x * x: fourth moment of a Gaussian.
            v, mu, sc = a.v, a.mu, a.scale * b.scale / (a.scale * a.scale) if a.scale else 1.0
            q4 = 3 * v * v + 6 * v * mu * mu + mu * mu * mu * mu
            return a.with_(q=sc * sc * q4, mu=sc * a.q, k=sc * sc * a.q * a.q, kt=sc * sc * a.q * a.q, shape=shape,
                           roles=roles, origin=node.name, scale=1.0)
        return Fwd(q=a.q * b.q, mu=a.mu * b.mu, k=a.k * b.k, kt=a.kt * b.kt, shape=shape, roles=roles,
                   dtype=a.dtype, blocked=a.blocked and b.blocked,
                   origin=a.origin if b.origin and b.origin.startswith("param:") else None,
                   scale=a.scale, normed=a.normed if b.origin and b.origin.startswith("param:") else 0.0)

    def backward(self, ctx, node, ins, out, g):
        tensors = [(i, f) for i, f in enumerate(ins) if isinstance(f, Fwd)]
        res: list[Bwd | None] = [None] * len(ins)
        if len(tensors) == 1:
            i, x = tensors[0]
            c = self._scalar(node)
            res[i] = g if c is None else g.scaled(c * c)
            return res
        (ia, a), (ib, b) = tensors[0], tensors[1]
        if node.attrs.get("op") == "div":
            res[ia] = g
            return res
        if a.const != b.const:
            res[ib if a.const else ia] = g
            return res
        if a.origin is not None and a.origin == b.origin:
            res[ia] = Bwd(4 * g.s * a.q, 4 * g.r * a.kt)
            return res
        res[ia] = _broadcast_sum(a, out, g.s * b.q, g.r * b.kt)
        res[ib] = _broadcast_sum(b, out, g.s * a.q, g.r * a.kt)
        return res


# -- normalization ----------------------------------------------------------------------------

def _affine(ctx, node):
    w = ctx.param_stats(node.params["weight"]) if "weight" in node.params else None
    b = ctx.param_stats(node.params["bias"]) if "bias" in node.params else None
    return (w.ms if w else 1.0), (b.ms if b else 0.0), (b.mean if b else 0.0)


class _RowNorm(Transfer):
    """Shared by LayerNorm (N1), RMSNorm (N2) and GroupNorm (N3)."""

    cause = NORMALIZATION
    centred = True

    def group(self, node, x: Fwd) -> int:
        shape = node.attrs.get("normalized_shape") or ([x.shape[-1]] if x.shape else [1])
        return max(math.prod(shape), 1)

    def var(self, x: Fwd) -> float:
        return x.v if self.centred else x.q

    def eps(self, node) -> float:
        e = node.attrs.get("eps")
        return 1.1920928955078125e-07 if e is None else float(e)

    def rho(self, d: int, normed: float) -> float:
        # Finite-d Jacobian projection and E[1/σ̂²] (N1, N2): exact for Gaussian rows,
        # (d-2)/d for rows that are already normalized; interpolated by the normalized share.
        if self.centred:
            if d <= 3:
                return 1.0
            return (d - 2) / d * (1 + (1 - normed * normed) * 3 / (d - 3))
        if d <= 2:
            return 1.0
        return (d - 1) / d * (1 + (1 - normed * normed) * 2 / (d - 2))

    def forward(self, ctx, node, ins):
        x = ins[0]
        g2, b2, bm = _affine(ctx, node)
        v = self.var(x)
        ve = v + self.eps(node)
        mu0 = x.mu if self.centred else 0.0
        k = g2 * (x.k - mu0 * x.mu) / ve + b2
        kt = g2 * (x.kt - mu0 * x.mu) / ve + b2
        return x.with_(q=g2 * v / ve + b2, mu=bm if self.centred else bm + (x.mu / math.sqrt(ve) if ve > 0 else 0.0),
                       k=k, kt=kt, origin=node.name, normed=1.0, scale=1.0, shape=_shape(node, x))

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        g2, _, _ = _affine(ctx, node)
        v = self.var(x)
        ve = v + self.eps(node)
        d = self.group(node, x)
        rows = max(x.numel // d, 1) if x.numel else 1
        self.param_grads(ctx, node, x, g, rows, v / ve if ve > 0 else 1.0)
        f = g2 / ve if ve > 0 else 0.0
        return [self.centre(node, x, Bwd(g.s * f * self.rho(d, x.normed), g.r * f, 0.0, g.rb * f))]

    def centre(self, node, x, b: Bwd) -> Bwd:
        """LayerNorm/RMSNorm centre the gradient across features: positions are untouched."""
        return b

    def param_grads(self, ctx, node, x, g, rows, xhat2):
        batch = ctx.batch_of(rows)
        pos = max(rows // batch, 1)
        kt_hat = _corr(x.kt, x.mu if self.centred else 0.0, self.var(x)) * xhat2
        if "weight" in node.params:
            ctx.param_grad(node.params["weight"], rows * (g.s * xhat2 + (pos - 1) * g.r * kt_hat))
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], rows * (g.s + (pos - 1) * g.r))


@register("layer_norm")
class LayerNorm(_RowNorm):
    pass


@register("rms_norm")
class RMSNorm(_RowNorm):
    centred = False


@register("group_norm")
class GroupNorm(_RowNorm):
    """GroupNorm and InstanceNorm (N3): statistics per sample over (C/G)·H·W elements."""

    def group(self, node, x):
        if len(x.shape) < 2:
            return 1
        return max(x.shape[1] // max(node.attrs.get("groups", 1), 1), 1) * max(math.prod(x.shape[2:]), 1)

    def centre(self, node, x, b: Bwd) -> Bwd:
        # GroupNorm's backward removes the mean of the gradient over each group of C/G
        # channels x all positions of one sample: the positions' shared component shrinks.
        if len(x.shape) < 3:
            return b
        cg = max(x.shape[1] // max(node.attrs.get("groups", 1), 1), 1)
        pos = max(math.prod(x.shape[2:]), 1)
        r = b.r * (1 - 1 / cg) - (b.s + (pos - 1) * b.r) / (cg * pos) / max(1, 1)
        return Bwd(b.s, r, 0.0, b.rb)

    def param_grads(self, ctx, node, x, g, rows, xhat2):
        if len(x.shape) < 2:
            return
        n_stat = x.numel // max(x.shape[1], 1)
        if "weight" in node.params:
            ctx.param_grad(node.params["weight"], n_stat * g.s * xhat2)
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], n_stat * g.s)


@register("batch_norm")
class BatchNorm(Transfer):
    """BatchNorm (N4): in train mode divides by the batch variance q - k, which is what makes
    deep BN stacks' gradients grow toward the input (7.4, Yang et al. 2019)."""

    cause = NORMALIZATION

    def _stats(self, node, x):
        c = x.shape[1] if len(x.shape) > 1 else (x.shape[0] if x.shape else 1)
        n_b = max(x.numel // max(c, 1), 1)
        return c, n_b

    def forward(self, ctx, node, ins):
        x = ins[0]
        g2, b2, bm = _affine(ctx, node)
        eps = node.attrs.get("eps", 1e-5)
        _, n_b = self._stats(node, x)
        if not node.attrs.get("training", True):
            return x.with_(q=g2 * x.q / (1 + eps) + b2, k=g2 * x.k / (1 + eps) + b2, kt=g2 * x.kt / (1 + eps) + b2,
                           origin=node.name, roles=conv_roles(len(x.shape)) if len(x.shape) > 2 else x.roles)
        vb = max(x.q - x.k, 0.0)
        ve = vb + eps
        share = vb / ve if ve > 0 else 0.0
        k = b2 - g2 * share / max(n_b - 1, 1)
        kt = g2 * (x.kt - x.k) / ve + b2 if ve > 0 else b2
        roles = conv_roles(len(x.shape)) if len(x.shape) > 2 else (BATCH + FEAT if len(x.shape) == 2 else x.roles)
        return x.with_(q=g2 * share + b2, mu=bm, k=k, kt=kt, origin=node.name, normed=0.0, roles=roles, scale=1.0)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        g2, _, _ = _affine(ctx, node)
        eps = node.attrs.get("eps", 1e-5)
        c, n_b = self._stats(node, x)
        if not node.attrs.get("training", True):
            f = g2 / (1 + eps)
            xhat2 = x.q / (1 + eps)
        else:
            vb = max(x.q - x.k, 0.0)
            f = g2 / (vb + eps) * ((n_b - 2) / (n_b - 3) if n_b > 3 else 1.0)
            xhat2 = vb / (vb + eps)
        if "weight" in node.params:
            ctx.param_grad(node.params["weight"], n_b * g.s * xhat2)
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], n_b * g.s)
        if not node.attrs.get("training", True):
            return [Bwd(g.s * f, g.r * f, 0.0, g.rb * f)]
        # Train-mode BN subtracts the gradient's mean over its statistics group (batch x
        # positions): the gradients of different samples then sum to zero. The (N-2)/(N-3)
        # factor counts that for uncorrelated gradients; when positions share their gradient
        # (pooling downstream), the mean carries more of it and more is removed.
        pos = max(n_b // max(x.shape[0], 1), 1) if x.shape else 1
        # The projection on x_hat removes what the next activation's Stein term (coh) makes
        # coherent across positions.
        extra = ((pos - 1) * (g.r + g2 * g.coh) + (n_b - pos) * g.rb) / n_b
        base = f * (n_b - 3) / (n_b - 2) if n_b > 3 else f
        s_in = max(f * g.s - base * extra, 0.0)
        r_in = base * (g.r - (g.s + (pos - 1) * g.r + (n_b - pos) * g.rb) / n_b)
        rb = -(s_in + (pos - 1) * r_in) / max(n_b - pos, 1)
        return [Bwd(s_in, r_in, 0.0, rb)]


# -- reductions, pooling, softmax -------------------------------------------------------------------

def _reduced_counts(x: Fwd, dims: list[int] | None):
    n = len(x.shape)
    roles = x.roles if len(x.roles) == n else default_roles(x.shape)
    red = list(range(n)) if not dims else sorted({d % n for d in dims}) if n else []
    nb = np_ = nf = 1
    for d in red:
        if roles[d] == BATCH:
            nb *= x.shape[d]
        elif roles[d] == POS:
            np_ *= x.shape[d]
        else:
            nf *= x.shape[d]
    return red, nb, np_, nf


def _mean_q(x: Fwd, nb: int, np_: int, nf: int) -> float:
    # Second moment of a mean over nb samples x np_ positions x nf features (P1), counting the
    # covariance of each kind of pair: different features (mu^2), positions (kt), samples (k).
    n = nb * np_ * nf
    same_f = nf * (nb * np_) ** 2
    total = (n * x.q + nf * nb * np_ * (np_ - 1) * x.kt + nf * nb * (nb - 1) * np_ * np_ * x.k
             + (n * n - same_f) * x.mu * x.mu)
    return total / (n * n)


@register("reduce")
class Reduce(Transfer):
    """mean / sum over dims (P1) and max over a dim (P3)."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        op = node.attrs.get("op")
        shape = _shape(node, x)
        red, nb, np_, nf = _reduced_counts(x, node.attrs.get("dims"))
        n = nb * np_ * nf
        keep = [i for i in range(len(x.shape)) if i not in red]
        roles = "".join(x.roles[i] for i in keep) if len(x.roles) == len(x.shape) else default_roles(shape)
        if node.attrs.get("keepdim"):
            roles = x.roles if len(x.roles) == len(shape) else default_roles(shape)
        if op in ("max", "amax", "min", "amin"):
            e1, e2 = gaussian.max_normal_moments(max(n, 1))
            v = x.v
            sign = -1.0 if op in ("min", "amin") else 1.0
            return x.with_(q=x.mu * x.mu + 2 * sign * x.mu * math.sqrt(v) * e1 + v * e2, mu=x.mu + sign * math.sqrt(v) * e1,
                           shape=shape, roles=roles, origin=node.name)
        if op not in ("mean", "sum"):
            ctx.note_unknown(node)
            return x.with_(shape=shape, roles=roles)
        if n == 0:
            # Over zero elements: a sum is 0; a mean is NaN in torch, with no gradient either way.
            return x.with_(q=0.0, mu=0.0, k=0.0, kt=0.0, shape=shape, roles=roles, origin=node.name, normed=0.0)
        q = _mean_q(x, nb, np_, nf)
        k = (x.k + (nf - 1) * x.mu * x.mu) / nf
        kt = (x.kt + (nf - 1) * x.mu * x.mu) / nf if np_ == 1 else k
        mu = x.mu
        if op == "sum":
            q, k, kt, mu = q * n * n, k * n * n, kt * n * n, mu * n
        return x.with_(q=q, mu=mu, k=k, kt=kt, shape=shape, roles=roles, origin=node.name, normed=0.0)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        op = node.attrs.get("op")
        red, nb, np_, nf = _reduced_counts(x, node.attrs.get("dims"))
        n = max(nb * np_ * nf, 1)
        if op in ("max", "amax", "min", "amin"):
            return [g.scaled(1.0 / n)]
        if op not in ("mean", "sum"):
            return [g]
        f = 1.0 / (n * n) if op == "mean" else 1.0
        s = g.s * f
        r = g.s * f if np_ > 1 else g.r * f
        return [Bwd(s, r, 0.0, (g.s if nb > 1 else g.rb) * f)]


@register("max_pool")
class MaxPool(Transfer):
    """Max pooling over windows of n i.i.d. entries (P3); gradient routed to one input each."""

    def _n(self, node, x, out):
        ks = node.attrs.get("kernel_size") or []
        if node.attrs.get("adaptive"):
            nsp = len(ks) or 2
            return max(int(round(math.prod(x.shape[-nsp:]) / max(math.prod(out.shape[-nsp:]), 1))), 1)
        return max(math.prod(ks), 1) if ks else 1

    def forward(self, ctx, node, ins):
        x = ins[0]
        shape = _shape(node, x)
        tmp = Fwd(q=0.0, shape=shape)
        n = self._n(node, x, tmp)
        e1, e2 = gaussian.max_normal_moments(n)
        v, mu = x.v, x.mu
        return x.with_(q=mu * mu + 2 * mu * math.sqrt(v) * e1 + v * e2, mu=mu + math.sqrt(v) * e1, shape=shape,
                       origin=node.name, roles=x.roles if len(x.roles) == len(shape) else conv_roles(len(shape)))

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        frac = out.numel / x.numel if x.numel else 1.0
        return [Bwd(g.s * frac, g.r * frac, 0.0, g.rb * frac)]


@register("avg_pool")
class AvgPool(Transfer):
    """Average pooling (P1, P2): q' = (q - kt)/n + kt; s_in = s·n_w/n²."""

    def _n(self, node, x, out):
        if node.attrs.get("adaptive") or not node.attrs.get("kernel_size"):
            n = max(math.prod(x.shape[2:]) / max(math.prod(out.shape[2:]), 1), 1.0) if len(x.shape) > 2 else 1.0
            return n, 1.0
        ks = node.attrs["kernel_size"]
        if len(ks) == 1 and len(x.shape) > 3:
            ks = ks * (len(x.shape) - 2)
        st = node.attrs.get("stride") or ks
        if len(st) == 1 and len(ks) > 1:
            st = st * len(ks)
        n = float(math.prod(ks))
        return n, n / float(math.prod(st))

    def forward(self, ctx, node, ins):
        x = ins[0]
        shape = _shape(node, x)
        n, _ = self._n(node, x, Fwd(q=0.0, shape=shape))
        return x.with_(q=(x.q - x.kt) / n + x.kt, shape=shape, origin=node.name,
                       roles=x.roles if len(x.roles) == len(shape) else conv_roles(len(shape)))

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        n, nw = self._n(node, x, out)
        s = g.s * nw / (n * n)
        return [Bwd(s, g.s / (n * n) + g.r * nw / (n * n), 0.0, g.rb * nw / (n * n))]


def _softmax_len(x: Fwd, dim: int) -> int:
    """Entries along the softmax dim; an empty dim (a zero-length sequence) has no moments,
    and one entry stands in for it (the output has no elements either)."""
    if not x.shape or not -len(x.shape) <= dim < len(x.shape):
        return 1
    return max(x.shape[dim], 1)


def _softmax_dim_var(x: Fwd, dim: int) -> float:
    roles = x.roles if len(x.roles) == len(x.shape) else default_roles(x.shape)
    role = roles[dim % len(roles)] if roles else FEAT
    return max(x.q - (x.kt if role == POS else x.mu * x.mu), 0.0)


@register("softmax")
class Softmax(Transfer):
    """Softmax over K entries (S1) with Monte Carlo moments; log_softmax approximately."""

    def forward(self, ctx, node, ins):
        x = ins[0]
        dim = node.attrs["dim"]
        K = _softmax_len(x, dim)
        v = _softmax_dim_var(x, dim)
        if node.attrs.get("log"):
            return x.with_(q=v + math.log(max(K, 1)) ** 2, mu=-math.log(max(K, 1)), origin=node.name)
        s2, _, _ = gaussian.softmax_moments(K, v)
        return x.with_(q=s2 / K, mu=1.0 / K, k=1.0 / K ** 2, kt=1.0 / K ** 2, origin=node.name, normed=0.0)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        dim = node.attrs["dim"]
        K = _softmax_len(x, dim)
        v = _softmax_dim_var(x, dim)
        if node.attrs.get("log"):
            s2, _, _ = gaussian.softmax_moments(K, v)
            return [Bwd(g.s * (1 - 2 / K + s2 / K), g.r)]
        s2, s3, s22 = gaussian.softmax_moments(K, v)
        return [Bwd(g.s * (s2 - 2 * s3 + s22) / K, 0.0)]


# -- attention ----------------------------------------------------------------------------------

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

    def _moments(self, node, Q: Fwd, K: Fwd, V: Fwd, extra_var: float = 0.0):
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

    def forward(self, ctx, node, ins):
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
        shape = _shape(node, Q)
        return Fwd(q=q_o, mu=V.mu, k=min(k_o, q_o), kt=min(kt_o, q_o), shape=shape, roles=_roles_like(shape, Q),
                   origin=node.name, blocked=Q.blocked and K.blocked and V.blocked)

    def backward(self, ctx, node, ins, out, g):
        Q, K, V = ins[0], ins[1], ins[2]
        d, t_k, sc2d, s2, s3, s22, a = self._moments(node, Q, K, V, self._extra(ins))
        p = node.attrs.get("dropout", 0.0)
        s2d = s2 / (1 - p) if 0 < p < 1 else s2
        F = s2 - 2 * s3 + s22
        vv = max(V.q - V.kt, 0.0)
        kk = max(K.q - K.kt, 0.0)
        s_v = g.s * s2d + g.r * (1 - s2)
        r_v = g.s / max(t_k, 1) + g.r
        s_q = _scaled(g.s * vv * kk * sc2d, F + a)
        s_k = _scaled(g.s * vv * Q.q * sc2d, F)
        # The alignment term reaches the K and V projection weights but is not propagated (4.6).
        sw_k = _scaled(g.s * vv * Q.q * sc2d, a)
        sw_v = _scaled(g.s * Q.q * kk * sc2d, a)
        res: list[Bwd | None] = [Bwd(s_q, 0.0), Bwd(s_k, 0.0, sw_k), Bwd(s_v, r_v, sw_v), None]
        # Gradient at each score logit: d·s_o·(q_V - k_V)·F / T_k (the s_Q relation of 4.6
        # with the key sum taken out), summed over the bias's broadcast copies.
        s_logit = _scaled(d * g.s * vv, F) / max(t_k, 1)
        scores = Fwd(q=0.0, shape=tuple(Q.shape[:-1]) + (t_k,), roles=_roles_like(tuple(Q.shape[:-1]) + (t_k,), Q))
        for b in ins[4:]:
            res.append(_broadcast_sum(b, scores, s_logit, 0.0) if isinstance(b, Fwd) and not b.const else None)
        return res


@register("matmul")
class MatMul(Transfer):
    """Product of two activations outside a recognised attention pattern."""

    def forward(self, ctx, node, ins):
        a, b = ins[0], ins[1]
        d = a.shape[-1] if a.shape else 1
        shape = _shape(node, a)
        return Fwd(q=d * a.q * b.q, mu=0.0, k=d * a.k * b.k, kt=d * a.kt * b.kt, shape=shape,
                   roles=_roles_like(shape, a), origin=node.name, blocked=a.blocked and b.blocked)

    def backward(self, ctx, node, ins, out, g):
        a, b = ins[0], ins[1]
        n = out.shape[-1] if out.shape else 1
        m = out.shape[-2] if len(out.shape) >= 2 else 1
        return [Bwd(n * g.s * b.q, 0.0), Bwd(m * g.s * a.q, 0.0)] + [None] * (len(ins) - 2)


# -- top-k selection and mixture-of-experts layers ----------------------------------------------

@register("topk")
class TopK(Transfer):
    """``topk`` and ``sort``: (values, indices). The values are the k largest (smallest) of the
    n entries along ``dim``, as order statistics of i.i.d. normals around the entries' common
    part; their gradient lands on k of n entries. The indices carry no gradient."""

    def _n_k(self, node, x: Fwd) -> tuple[int, int, int]:
        dim = int(node.attrs.get("dim", -1))
        n = x.shape[dim] if x.shape and -len(x.shape) <= dim < len(x.shape) else 1
        k = node.attrs.get("k")
        k = n if k is None else min(int(k), n)
        return max(n, 1), max(k, 0), dim

    def forward(self, ctx, node, ins):
        x = ins[0]
        s = node.shape
        pair = isinstance(s, tuple) and len(s) == 2 and all(isinstance(t, tuple) for t in s)
        shapes = s if pair else (x.shape, x.shape)
        n, k, dim = self._n_k(node, x)
        if x.dtype == "float" and k > 0 and x.shape:
            v = _softmax_dim_var(x, dim)
            e1, e2 = gaussian.topk_normal_moments(n, k)
            sign = 1.0 if node.attrs.get("largest", True) else -1.0
            sd = math.sqrt(v)
            values = x.with_(q=max(x.q - v, 0.0) + 2 * sign * x.mu * sd * e1 + v * e2, mu=x.mu + sign * sd * e1,
                             shape=shapes[0], roles=_roles_like(shapes[0], x), origin=node.name, normed=0.0)
        else:
            values = x.with_(shape=shapes[0], roles=_roles_like(shapes[0], x))
        indices = Fwd(q=0.0, shape=shapes[1], roles=default_roles(shapes[1]), dtype="int", blocked=True,
                      const=x.const, origin=node.name)
        return values, indices

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        gv = g[0] if isinstance(g, tuple) else g
        if gv is None or x.dtype != "float":
            return [None]
        n, k, _ = self._n_k(node, x)
        frac = k / n
        return [Bwd(gv.s * frac, gv.r * frac, 0.0, gv.rb * frac)]


@register("router")
class Router(Transfer):
    """Mixture-of-experts routing weights (``fusion.fuse_router``): softmax over E logits, the
    top k of it, renormalized to sum 1 where the model does (Mixtral). Moments and the
    Jacobian's mean squared norm from ``routing.router_moments``; the k weights' gradients
    are uncorrelated (each reaches its weight through a different expert), so the logits get
    s_z = s_w·E‖∂w/∂z‖²/E per element."""

    def _moments(self, node, z: Fwd):
        v = _softmax_dim_var(z, int(node.attrs.get("dim", -1)))
        return routing.router_moments(node.attrs["experts"], node.attrs["k"], v, bool(node.attrs.get("normalize")))

    def forward(self, ctx, node, ins):
        z = ins[0]
        m = self._moments(node, z)
        var = max(m.second - m.mean * m.mean, 0.0)
        # Tokens whose logits are correlated are routed alike.
        ck = min(max(_corr(z.k, z.mu, z.v), 0.0), 1.0)
        ckt = min(max(_corr(z.kt, z.mu, z.v), 0.0), 1.0)
        shape = _shape(node, z)
        return Fwd(q=m.second, mu=m.mean, k=m.mean * m.mean + ck * var, kt=m.mean * m.mean + ckt * var,
                   shape=shape, roles=_roles_like(shape, z), origin=node.name, blocked=z.blocked)

    def backward(self, ctx, node, ins, out, g):
        m = self._moments(node, ins[0])
        return [Bwd(g.s * m.jac / max(int(node.attrs["experts"]), 1), 0.0)]


@register("moe_linear")
class GroupedLinear(Transfer):
    """Expert layers of a mixture of experts run as one grouped matmul (transformers'
    ``grouped_mm_fallback``, ATen's ``_grouped_mm``): the S = N·k dispatched rows (token
    copies sorted by expert) each meet one expert's weight W[e], E experts in all.

    Forward and backward per row are (L1) with that expert's weight. Rows routed to different
    experts meet independent weights, so two rows' covariance (kt, k; r, rb going back)
    survives only when they share an expert: with probability ρ = E|T ∩ T'|/k² for the two
    tokens' expert sets T, T' (``routing.routing_overlap``), from the correlation of their
    router logits (the second input, linked by ``fusion.fuse_router``): 1/E for independent
    tokens, 1/k for identical ones. The weight gradient (W1) sums over the n_e rows expert e
    received; its mean square over the whole (E, ·, ·) tensor is (1/E)·Σ_e n_e·s·q =
    (S/E)·s·q whatever the balance, plus the r term for the (P − 1)·k·ρ rows of the other
    P − 1 tokens of the same sample that meet the same expert.
    """

    cause = INIT

    def _dims(self, ctx, node):
        w = ctx.param_stats(node.params["weight"])
        if node.attrs.get("layout") == "out_in":
            fan_out, fan_in = w.shape[-2], w.shape[-1]
        else:
            fan_in, fan_out = w.shape[-2], w.shape[-1]
        return w, max(w.shape[0], 1), fan_in, fan_out

    @staticmethod
    def _shares(node, ins, groups: int) -> tuple[float, float]:
        """ρ for two tokens of one sample (kt) and of two samples (k)."""
        if not node.attrs.get("routed", True):
            return 1.0, 1.0
        z = ins[1] if len(ins) > 1 else None
        k = node.attrs.get("top_k")
        if not isinstance(z, Fwd) or not k:
            return 1.0 / groups, 1.0 / groups  # no router in sight: independent routing
        return (routing.routing_overlap(groups, k, _corr(z.kt, z.mu, z.v)),
                routing.routing_overlap(groups, k, _corr(z.k, z.mu, z.v)))

    def forward(self, ctx, node, ins):
        x = ins[0]
        w, groups, fan_in, _ = self._dims(ctx, node)
        share_t, share_b = self._shares(node, ins, groups)
        b = ctx.param_stats(node.params["bias"]) if "bias" in node.params else None
        bq, bm = (b.ms, b.mean) if b else (0.0, 0.0)
        g = fan_in * w.ms
        shape = _shape(node, x)
        roles = (x.roles[:-1] + FEAT) if len(x.roles) == len(shape) and shape else default_roles(shape)
        return Fwd(q=g * x.q + bq, mu=bm, k=share_b * (g * x.k + bq) + (1 - share_b) * bm * bm,
                   kt=share_t * (g * x.kt + bq) + (1 - share_t) * bm * bm,
                   shape=shape, roles=roles, origin=node.name, const=x.const, blocked=x.blocked)

    def backward(self, ctx, node, ins, out, g):
        x = ins[0]
        w, groups, fan_in, fan_out = self._dims(ctx, node)
        share_t, share_b = self._shares(node, ins, groups)
        rows = max(x.numel // fan_in, 1) if x.numel and fan_in else 1
        per_group = rows / groups
        if node.attrs.get("routed", True):
            per_sample = rows / ctx.batch_of(rows)
            k = node.attrs.get("top_k") or 1
            # The token's own other copies never meet the same expert.
            pairs = max(per_sample / k - 1, 0.0) * k * share_t
        else:  # (E, M, in) batched: group e is the M rows of x[e]
            pairs = 0.0
        ctx.param_grad(node.params["weight"], per_group * ((g.s + g.sw) * x.q + pairs * g.r * x.kt))
        if "bias" in node.params:
            ctx.param_grad(node.params["bias"], per_group * (g.s + pairs * g.r))
        f = fan_out * w.ms
        return [Bwd(f * g.s, share_t * f * g.r, 0.0, share_b * f * g.rb)] + [None] * (len(ins) - 1)


# -- recurrent layers ---------------------------------------------------------------------------

@register("rnn")
class Recurrent(Transfer):
    """nn.RNN / LSTM / GRU unrolled over the sequence (section 6), via ``gradlint.engine.recurrent``."""

    cause = RECURRENCE

    def forward(self, ctx, node, ins):
        return recurrent.rnn_forward(ctx, node, ins)

    def backward(self, ctx, node, ins, out, g):
        return recurrent.rnn_backward(ctx, node, ins, out, g)
