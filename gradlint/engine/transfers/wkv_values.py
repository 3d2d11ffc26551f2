"""The value of a tensor computed from parameters alone (RWKV-v1's decay matrix, built from
``time_w`` by pad, tile, reshape and slices, times ``time_alpha`` and ``time_beta``).

The WKV rule (``transfers.wkv``) needs that matrix per head and position pair, not its moments.
Only the data movement and products such constructions use are evaluated; anything else (or a
meta parameter, or an input-dependent operand) gives None and the rule says unknown.
"""

from __future__ import annotations

import ast
import math

import torch
import torch.nn.functional as F

from gradlint.capture.graph import Node
from gradlint.engine.context import Context

_RESHAPES = {"reshape", "view", "_unsafe_view", "contiguous", "clone", "_to_copy", "to", "alias", "lift_fresh_copy"}
_MAX_ELEMENTS = 1 << 24


def _selection(where: str) -> tuple[str, dict]:
    """``slice[('dim', 1), ('end', -256), ...]`` -> ('slice', {'dim': 1, 'end': -256, ...})."""
    head, _, rest = where.partition("[")
    return head, dict(ast.literal_eval("[" + rest))


def _eval(ctx: Context, n: Node, memo: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> torch.Tensor:
    if n.name in memo:
        return memo[n.name]
    g = ctx.graph
    xs = [_eval(ctx, g.by_name[i], memo, given) for i in n.inputs if i is not None]
    shape = tuple(n.shape) if isinstance(n.shape, tuple) else None
    op = n.attrs.get("op")
    if n.kind == "param" and n.attrs["param"] in given:
        out = given[n.attrs["param"]]
    elif n.kind == "param":
        p = ctx.model.get_parameter(n.attrs["param"])
        if p.is_meta:
            raise LookupError(n.name)
        out = p.detach().double()
    elif n.kind == "identity" and op in _RESHAPES:
        out = xs[0].reshape(shape) if shape is not None else xs[0]
    elif n.kind == "datamove" and op == "pad" and n.attrs.get("mode", "constant") == "constant":
        out = F.pad(xs[0], list(n.attrs["pad"]), value=float(n.attrs.get("value") or 0.0))
    elif n.kind == "expand" and op == "tile" and shape is not None:
        x = xs[0]
        lead = (1,) * (len(shape) - x.dim())
        full = lead + tuple(x.shape)
        if any(s % d for s, d in zip(shape, full)):
            raise LookupError(n.name)
        out = x.reshape(full).repeat(*[s // d for s, d in zip(shape, full)])
    elif n.kind == "select" and isinstance(n.attrs.get("where"), str):
        kind, a = _selection(n.attrs["where"])
        x = xs[0]
        if kind == "slice":
            dim = int(a.get("dim", 0)) % x.dim()
            size = x.shape[dim]
            start, end, step = a.get("start") or 0, a.get("end"), a.get("step") or 1
            end = size if end is None else end
            idx = range(size)[slice(start, end, step)]
            out = x.narrow(dim, idx.start, len(idx)) if step == 1 else x.index_select(dim, torch.tensor(list(idx)))
        elif kind == "select":
            out = x.select(int(a["dim"]), int(a["index"]))
        else:
            raise LookupError(n.name)
    elif n.kind == "mul" and op in (None, "mul") and len(xs) == 2:
        out = xs[0] * xs[1]
    elif n.kind == "mul" and op in (None, "mul") and len(xs) == 1 and isinstance(n.attrs.get("scalar"), (int, float)):
        out = xs[0] * float(n.attrs["scalar"])
    else:
        raise LookupError(n.name)
    if shape is not None and tuple(out.shape) != shape:
        raise LookupError(n.name)
    if out.numel() > _MAX_ELEMENTS:
        raise LookupError(n.name)
    memo[n.name] = out
    return out


def params_of(ctx: Context, name: str) -> list[str]:
    """The parameters node ``name`` is computed from."""
    out, stack, seen = [], [name], set()
    while stack:
        cur = stack.pop()
        if cur in seen or cur not in ctx.graph.by_name:
            continue
        seen.add(cur)
        n = ctx.graph.by_name[cur]
        if n.kind == "param":
            out.append(n.attrs["param"])
        stack.extend(i for i in n.inputs if i is not None)
    return sorted(set(out))


def constant_value(ctx: Context, name: str | None, given: dict[str, torch.Tensor] | None = None
                   ) -> torch.Tensor | None:
    """The value of node ``name`` when it is computed from parameters through the ops above;
    ``given`` replaces parameters by tensors of the caller's (to differentiate through it)."""
    if ctx.model is None or name is None or name not in ctx.graph.by_name:
        return None
    try:
        out = _eval(ctx, ctx.graph.by_name[name], {}, given or {})
    except (LookupError, KeyError, AttributeError, RuntimeError, ValueError, TypeError, SyntaxError):
        return None
    return out if math.prod(out.shape) and bool(torch.isfinite(out.detach()).all()) else None
