"""Writes into tensors: in-place ops on views and scatters, as values the engine can follow.

Eager code fills preallocated tensors (``outputs[:, t] = h``, ``buf.index_put_(...)``,
``x[:, 0] += cls``). torch.export keeps such writes as in-place ops on views of a base
tensor, and later ops read the base by its old name: without help the written values never
reach the graph's data flow, and everything that made them looks unused. The converter
rewrites each write into a ``write`` node (the base with a region replaced or added to) and
reads the base through it from then on, as functionalization would.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

# Ops whose output is a view of their first argument (writes into it reach the base).
VIEW_OPS = {"select", "slice", "view", "_unsafe_view", "unsqueeze", "squeeze", "transpose", "permute", "t",
            "expand", "as_strided", "diagonal", "narrow", "alias", "unfold", "swapaxes", "movedim", "reshape",
            "view_as", "unflatten", "flatten", "detach"}


def mutates_self(target: Any) -> bool:
    """Whether an ATen op writes into its first argument (``copy_``, ``add_``, ``index_put_``)."""
    if not isinstance(target, torch._ops.OpOverload):
        return False
    args = target._schema.arguments
    return bool(args) and args[0].alias_info is not None and bool(args[0].alias_info.is_write)


def base_of(node: Any, op_name) -> Any:
    """The tensor a chain of view ops starts from (``node`` itself when it is no view)."""
    seen = 0
    while isinstance(node, fx.Node) and node.op == "call_function" and seen < 32 and node.args \
            and op_name(node.target) in VIEW_OPS and isinstance(node.args[0], fx.Node):
        node = node.args[0]
        seen += 1
    return node


def region_key(dst: Any, base: Any, op_name) -> str:
    """The view chain from ``base`` to ``dst`` as text: two writes with the same key fill the
    same region (``x[:, 0] += v`` reads and writes back one slice)."""
    steps = []
    node = dst
    while isinstance(node, fx.Node) and node is not base and node.args:
        steps.append(f"{op_name(node.target)}{tuple(a for a in node.args[1:] if not isinstance(a, fx.Node))!r}")
        node = node.args[0]
    return "/".join(reversed(steps))


def numel(node: Any) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(val, torch.Tensor):
        try:
            return int(math.prod(int(d) for d in val.shape))
        except TypeError:  # a symbolic size
            return None
    return None


def share(part: int | None, whole: int | None) -> float | None:
    """The fraction of a tensor's elements a region holds (None when a size is unknown)."""
    if part is None or not whole:
        return None
    return min(part / whole, 1.0)


def index_region(self_node: Any, indices: list) -> int | None:
    """Elements that ``self[indices]`` addresses (advanced indexing: the index tensors
    broadcast together, the dims they do not index are taken whole)."""
    val = self_node.meta.get("val") if isinstance(self_node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    shapes, rest = [], list(val.shape)
    for i, idx in enumerate(indices):
        if idx is None:
            continue
        iv = idx.meta.get("val") if isinstance(idx, fx.Node) else None
        if not isinstance(iv, torch.Tensor):
            return None
        if iv.dtype == torch.bool:  # a mask: how many it selects is data
            return None
        shapes.append(tuple(iv.shape))
        rest[i] = 1
    try:
        return int(math.prod(torch.broadcast_shapes(*shapes)) * math.prod(int(d) for d in rest)) if shapes else None
    except (RuntimeError, TypeError):
        return None


def selection_key(ref, op: str, bound: dict) -> str:
    """Which elements a selection reads, as a key: the op and its arguments besides the tensor
    (index tensors by node, through ``ref``). Two reads of one tensor are the same elements only
    when their keys match: x[..., 0] and x[..., 1] are two variables, not x twice (a Blelloch
    scan's A[2i+1] * A[2i])."""
    def arg(v):
        if isinstance(v, (list, tuple)):
            return [arg(x) for x in v]
        name = ref(v)
        return v if name is None or isinstance(v, str) else name
    rest = {k: arg(v) for k, v in bound.items() if k not in ("self", "input")}
    return f"{op}{sorted(rest.items(), key=lambda kv: kv[0])}"
