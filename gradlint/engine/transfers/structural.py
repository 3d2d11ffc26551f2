"""Sources, shape ops and gradient blockers: where statistics start, move or stop."""

from __future__ import annotations

import math

from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import BATCH, FEAT, POS, Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import Transfer, register
from gradlint.engine.transfers.resample import pad_moments, plane_moments
from gradlint.engine.transfers.roles import (
    broadcast_sum,
    conv_roles,
    first_operand,
    out_shape,
    reshape_roles,
    roles_like,
)

# -- sources ------------------------------------------------------------------------------------

@register("input")
class Input(Transfer):
    """Graph inputs: N(0, 1) floats or uniform token ids (the protocol of docs/design.md §1)."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        shape = out_shape(node, None)
        if node.dtype != "float":
            return Fwd(q=0.0, shape=shape, roles=default_roles(shape), dtype=node.dtype,
                       vocab=node.attrs.get("vocab"), origin=node.name)
        # Four or five dims are an image or a volume, channels first as every torch conv takes
        # them; a patchify written as reshapes (einops) must see H, W as positions, C as features.
        roles = conv_roles(len(shape)) if len(shape) in (4, 5) else default_roles(shape)
        return Fwd(q=1.0, shape=shape, roles=roles, origin=node.name)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return []


@register("const")
class Const(Transfer):
    """Buffers and created tensors (masks, position ids): no randomness, no gradient."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        shape = out_shape(node, None)
        value = node.attrs.get("value")
        q = float(value) * float(value) if isinstance(value, (int, float)) else 0.0
        distinct = None
        if node.attrs.get("op") in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros",
                                    "new_ones", "new_full"):
            distinct = 1
        elif node.attrs.get("buffer") and node.dtype == "int":
            distinct = ctx.distinct_values(node.attrs["buffer"])
        mu = k = kt = 0.0
        if isinstance(value, (int, float)):
            mu, k, kt = float(value), q, q  # one number everywhere, in every sample
        elif node.attrs.get("buffer") and node.dtype == "float":
            # A fixed table added to activations (a sin-cos position embedding) is a signal the
            # samples share: k = q, and its rows' overlap is the correlation it gives positions.
            moments = ctx.const_moments(node.attrs["buffer"])
            if moments is not None:
                q, mu, kt = moments
                k = q
        return Fwd(q=q, mu=mu, k=k, kt=kt, shape=shape, roles=default_roles(shape), dtype=node.dtype, const=True,
                   vocab=distinct, origin="const:" + str(node.attrs.get("op") or node.attrs.get("buffer") or "value"))

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return []


@register("param")
class ParamValue(Transfer):
    """A parameter used as a plain operand (LayerScale, CLS token, position table).

    Its value is the same for every sample (k = q); a vector without position dims is the
    same at every position too (kt = q). Its backward s is E[(dL/dθ)²] per element, which
    the engine books as the parameter's gradient.
    """

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        st = ctx.param_stats(node.attrs["param"])
        shape = out_shape(node, None)
        positional = sum(1 for d in shape[:-1] if d > 1) > 0
        kt = st.mean * st.mean if positional else st.ms
        return Fwd(q=st.ms, mu=st.mean, k=st.ms, kt=kt, shape=shape, roles=default_roles(shape),
                   origin="param:" + node.attrs["param"])

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        ctx.param_grad(node.attrs["param"], g.s)
        return []


@register("getitem")
class GetItem(Transfer):
    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        src = ins[0]
        idx = node.attrs["index"]
        if isinstance(src, tuple):
            return src[idx] if isinstance(idx, int) and -len(src) <= idx < len(src) else src[0]
        return first_operand(ins, node)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return [g]  # the engine routes it to slot ``index`` of a tuple-valued producer


# -- shape ops -------------------------------------------------------------------------------

@register("identity")
class Identity(Transfer):
    """View, reshape, permute, transpose, casts (E5): statistics unchanged, dims relabelled."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        if not isinstance(x, Fwd):
            return first_operand(ins, node)
        shape = out_shape(node, x)
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
        return x.with_(shape=shape, roles=roles, dtype=dtype,
                       blocked=x.blocked or (x.dtype == "float" and dtype != "float"))

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        if isinstance(x, Fwd) and x.dtype == "float" and out.dtype != "float":
            return [None] * len(ins)
        return [g] + [None] * (len(ins) - 1)


@register("select")
class Select(Transfer):
    """Slicing and indexing: a subset of elements, same statistics; the rest get no gradient."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        shape = out_shape(node, x)
        # Another selection of x reads other elements: the same variable only where the same
        # elements are read (capture.writes.selection_key), else x[0] * x[1] would be taken for x².
        where = node.attrs.get("where")
        origin = x.origin if x.origin is None or where is None else f"{x.origin}{where}"
        return x.with_(shape=shape, roles=roles_like(shape, x), origin=origin)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
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
    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        shapes = node.shape if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple) else ()
        # The pieces are different elements of x: each its own variable (a * b of x's two
        # halves is no square).
        return tuple(x.with_(shape=s, roles=roles_like(s, x), origin=None if x.origin is None else f"{x.origin}:{i}")
                     for i, s in enumerate(shapes)) or (x,)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
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

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        parts = [f for f in ins if isinstance(f, Fwd)]
        n = [max(f.numel, 1) for f in parts]
        tot = sum(n)
        avg = lambda attr: sum(getattr(f, attr) * w for f, w in zip(parts, n)) / tot
        shape = out_shape(node, parts[0])
        base = parts[0]
        return Fwd(q=avg("q"), mu=avg("mu"), k=avg("k"), kt=avg("kt"), shape=shape,
                   roles=roles_like(shape, base), dtype=base.dtype,
                   const=all(f.const for f in parts), blocked=all(f.blocked for f in parts),
                   normed=avg("normed"))

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return [g if isinstance(f, Fwd) else None for f in ins]


@register("expand")
class Expand(Transfer):
    """Broadcast copies: copies along positions are identical (kt = q); their gradients add."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        shape = out_shape(node, x)
        roles = (roles_like(shape, x) if len(shape) != len(x.shape)
                 else x.roles if len(x.roles) == len(shape) else default_roles(shape))
        f = x.with_(shape=shape, roles=roles)
        if len(shape) == len(x.shape):
            for i, (d_in, d_out, _r) in enumerate(zip(x.shape, shape, roles)):
                if d_in == 1 and d_out > 1:
                    kind = _copy_kind(roles, i)
                    if kind == POS:
                        f = f.with_(kt=f.q)
                    elif kind == BATCH:
                        f = f.with_(k=f.q)
        return f

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
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

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = ins[0]
        if not isinstance(x, Fwd):
            return first_operand(ins, node)
        shape = out_shape(node, x)
        return x.with_(shape=shape, roles=roles_like(shape, x), const=x.const)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        x = ins[0]
        rest = [None] * (len(ins) - 1)
        op = node.attrs.get("op", "")
        plane = plane_moments(x.shape, out.shape, op, bool(node.attrs.get("align_corners")),
                                       node.attrs.get("scales")) if isinstance(x, Fwd) else None
        if plane is not None:
            return [_resampled(x.shape, out.shape, *plane, g)] + rest
        copies = (pad_moments(x.shape, out.shape, node.attrs.get("mode", "constant"), node.attrs.get("pad") or [])
                  if "pad" in op and isinstance(x, Fwd) else None)
        if copies is not None:  # reflect/replicate: border elements get their copies' gradient too
            return [_resampled(x.shape, out.shape, *copies, g)] + rest
        if op in ("pad", "constant_pad_nd"):
            # Each input element is one output element; the padding's gradient goes nowhere.
            return [g] + rest
        n = out.numel / x.numel if x.numel and out.numel else 1.0
        if n > 1.0:
            s = n * g.s + n * (n - 1) * g.r
            return [Bwd(s, s)] + [None] * (len(ins) - 1)
        return [g.scaled(n)] + [None] * (len(ins) - 1)


def _resampled(shape_in: tuple[int, ...], shape_out: tuple[int, ...], c: float, a: float, g: Bwd) -> Bwd:
    """The gradient below an interpolation (resample, P4): per element from the map's columns;
    the position correlation from the plane's summed gradient, which the map preserves."""
    p_in, p_out = math.prod(shape_in[2:]), math.prod(shape_out[2:])
    s = c * g.s + (a - c) * g.r
    r = (p_out * g.s + p_out * (p_out - 1) * g.r - p_in * s) / (p_in * (p_in - 1)) if p_in > 1 else 0.0
    return Bwd(s, r, 0.0, g.rb * a, 0.0, g.unknown)


# -- gradient blockers -------------------------------------------------------------------------

@register("block")
class Block(Transfer):
    """detach, argmax, round, comparisons, integer casts: no gradient flows back."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = first_operand(ins, node)
        dtype = node.dtype if node.dtype in ("float", "int", "bool") else x.dtype
        ids = ins[0] if ins else None
        if node.attrs.get("reason") == "one_hot" and isinstance(ids, Fwd) and len(x.shape) == len(ids.shape) + 1:
            # One 1 among V codes, ids uniform (docs/design.md §1): a product with it (a copy
            # head's c @ one_hot(idx)) hands its operand the gradient of one code per id.
            v = max(x.shape[-1], 1)
            roles = ids.roles + FEAT if len(ids.roles) == len(ids.shape) else default_roles(x.shape)
            return x.with_(q=1.0 / v, mu=1.0 / v, k=1.0 / v ** 2, kt=1.0 / v ** 2, roles=roles, vocab=None,
                           blocked=True, dtype=dtype)
        return x.with_(blocked=True, dtype=dtype)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        return [None] * len(ins)


@register("grad_region")
class GradRegion(Transfer):
    """A ``torch.no_grad()`` (or ``enable_grad``) region exported as one higher-order op."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        x = first_operand(ins, node)
        blocked = not node.attrs.get("enabled", True)
        shapes = (node.shape if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple)
                  else None)
        if shapes:
            return tuple(x.with_(shape=s, roles=default_roles(s), blocked=blocked or x.blocked) for s in shapes)
        return x.with_(blocked=blocked or x.blocked)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        if not node.attrs.get("enabled", True):
            return [None] * len(ins)
        total = Bwd()
        for gp in (g if isinstance(g, tuple) else (g,)):
            if gp is not None:
                total = total + gp
        return [total] + [None] * (len(ins) - 1)


@register("unknown")
class Unknown(Transfer):
    """An op the engine does not know: its first tensor operand's statistics pass through as a
    guess, marked unknown, and every float operand gets the output's gradient, marked unknown
    too: nothing behind the op is predicted zero, or predicted at all (docs/design.md §2.2)."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        ctx.note_unknown(node)
        x = first_operand(ins, node)
        if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple):
            return tuple(x.with_(shape=s, roles=default_roles(s)) for s in node.shape)
        return x.with_(dtype=node.dtype if node.dtype in ("float", "int", "bool") else x.dtype)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        if isinstance(g, tuple):
            total = Bwd()
            for gp in g:
                if gp is not None:
                    total = total + gp
            g = total
        g = g.as_unknown()
        return [g if isinstance(f, Fwd) and f.dtype == "float" and not f.const else None for f in ins]


@register("broadcast")
class Broadcast(Transfer):
    """torch.broadcast_tensors: one output per operand, each expanded to the common shape."""

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        shapes = node.shape if isinstance(node.shape, tuple) and node.shape and isinstance(node.shape[0], tuple) else ()
        outs = []
        for i, f in enumerate(ins):
            if not isinstance(f, Fwd):
                f = Fwd(q=0.0, const=True)
            s = shapes[i] if i < len(shapes) else f.shape
            outs.append(f.with_(shape=s, roles=roles_like(s, f)))
        return tuple(outs)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out, g):
        return [None if not isinstance(f, Fwd) or f.const or gi is None
                else gi if f.numel == o.numel else broadcast_sum(f, o, gi.s, gi.r) for f, o, gi in zip(ins, out, g)]
