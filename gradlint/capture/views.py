"""Writes through views, made explicit in the captured graph.

The ATen graph ``torch.export`` gives (and recording reproduces) keeps in-place ops: eager
code that fills a preallocated tensor (``outputs[:, t] = h`` in a loop over time steps,
``buf[:, :k] += x``) appears as ``copy_(select(outputs, 1, t), h)``, and the later uses of
``outputs`` still point at the ``zeros`` that made it. Read as data flow, the output would not
depend on anything written into it. ``functionalize`` rewrites such writes the way torch's
functionalization does: after a write into a view, the base's new value is a ``*_scatter`` of
the written view into the base's current value (``select_scatter``, ``slice_scatter``,
``diagonal_scatter``, ``as_strided_scatter``, or the inverse of a reshape or transpose), and
every later use of the base or of a view taken before the write reads the new value. A write
that copies a tensor of the view's shape (``copy_``) scatters that tensor itself.

Aliasing is read from the fake (or meta) tensors every node carries: nodes whose values share
a storage are views of one base. Writes inside a ``torch.no_grad()`` region are hidden in its
region node and carry no gradient; they are left alone.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map

aten = torch.ops.aten
#: Marks a write through a view that ``functionalize`` rewrote into a scatter into its base.
FUNCTIONALIZED = "gradlint_functionalized"

# View ops whose inverse scatters the written view back into its base: view op -> scatter op,
# with the view op's own arguments after the source.
_SCATTERS = {
    aten.select.int: aten.select_scatter.default,
    aten.slice.Tensor: aten.slice_scatter.default,
    aten.diagonal.default: aten.diagonal_scatter.default,
    aten.as_strided.default: aten.as_strided_scatter.default,
}
# Views that keep every element: the base's new value is the written view reshaped back.
_REINDEX = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.alias.default,
            aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
            aten.unflatten.int, aten.flatten.using_ints, aten.view_as.default, aten.detach.default,
            aten.contiguous.default, aten.expand_as.default}


def _storage(node: Any) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    try:
        return val.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


def _written(node: fx.Node) -> fx.Node | None:
    """The tensor argument an in-place (or ``out=``) op writes into."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    for i, a in enumerate(node.target._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            arg = node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
            if isinstance(arg, fx.Node):
                return arg
    return None


def _is_view(node: fx.Node) -> bool:
    """An op that returns (a list of) views of its first argument."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload) or not node.args:
        return False
    returns = node.target._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write \
        and isinstance(node.args[0], fx.Node)


class _Pass:
    def __init__(self, graph: fx.Graph):
        self.graph = graph
        self.chain: dict[fx.Node, list[fx.Node] | None] = {}  # view nodes from the base, in order
        self.version: dict[int, int] = {}  # per storage: how many writes so far
        self.seen_at: dict[fx.Node, int] = {}  # the storage's version when the node's value was current
        self.current: dict[int, fx.Node] = {}  # per storage: the node holding the base's latest value
        self.fresh: dict[tuple[fx.Node, int], fx.Node] = {}
        self.made: list[fx.Node] = []  # the nodes this pass added, in order
        self.changed = False

    def run(self) -> bool:
        for node in list(self.graph.nodes):
            if node.op in ("call_function", "output"):
                node.args = tree_map(lambda a, user=node: self._read(a, user), node.args)
                node.kwargs = tree_map(lambda a, user=node: self._read(a, user), dict(node.kwargs))
            if node.op in ("placeholder", "call_function"):
                self._note(node)
        return self.changed

    # -- reads -------------------------------------------------------------------------------
    def _read(self, a: Any, user: fx.Node) -> Any:
        """The node holding ``a``'s value as of ``user``: ``a`` itself unless a write has since
        gone into its storage, then ``a`` taken again from the base's new value."""
        if not isinstance(a, fx.Node):
            return a
        s = _storage(a)
        if s is None or self.seen_at.get(a, self.version.get(s, 0)) >= self.version.get(s, 0):
            return a
        chain = self.chain.get(a)
        if chain is None:
            return a
        key = (a, self.version[s])
        if key not in self.fresh:
            with self.graph.inserting_before(user):
                self.fresh[key] = self._retake(self.current[s], chain)
            self.seen_at[self.fresh[key]] = self.version[s]
            self.chain[self.fresh[key]] = chain
            self.changed = True
        return self.fresh[key]

    def _retake(self, base: fx.Node, chain: list[fx.Node]) -> fx.Node:
        """The views of ``chain`` taken again, from ``base``."""
        node = base
        for view in chain:
            if view.target is operator.getitem:
                node = self._copy(view, (node, *view.args[1:]))
            else:
                node = self._copy(view, (node, *view.args[1:]), view.kwargs)
        return node

    def _copy(self, like: fx.Node, args: tuple, kwargs: dict | None = None, target: Any = None,
              site: fx.Node | None = None) -> fx.Node:
        """A new node computing ``target`` (``like``'s op by default), with ``like``'s value and
        the module path and source line of ``site`` (``like`` by default)."""
        target = target or like.target
        name = target.overloadpacket.__name__ if isinstance(target, torch._ops.OpOverload) else "getitem"
        node = self.graph.create_node("call_function", target, args, kwargs or {},
                                      name=self.graph._target_to_str(name))
        site = site or like
        node.meta = {k: m[k] for m, k in ((like.meta, "val"), (site.meta, "nn_module_stack"),
                                          (site.meta, "stack_trace")) if k in m}
        self.made.append(node)
        return node

    # -- what each node is -------------------------------------------------------------------
    def _note(self, node: fx.Node) -> None:
        target = _written(node)
        if target is not None:
            self._write(node, target)
            return
        s = _storage(node)
        if s is None:
            return
        parent = node.args[0] if node.target is operator.getitem and node.args else None
        if _is_view(node) and _storage(node.args[0]) == s:
            base_chain = self.chain.get(node.args[0])
            self.chain[node] = None if base_chain is None else [*base_chain, node]
        elif isinstance(parent, fx.Node) and _is_view(parent) and _storage(parent.args[0]) == s:
            # One of several views (split, unbind, chunk): the op, then the item.
            base_chain = self.chain.get(parent.args[0])
            self.chain[node] = None if base_chain is None else [*base_chain, parent, node]
        elif s not in self.current:
            self.chain[node] = []
            self.current[s] = node
            self.version[s] = 0
        else:
            self.chain[node] = None  # shares a storage in a way not followed here
        self.seen_at[node] = self.version.get(s, 0)

    def _write(self, node: fx.Node, target: fx.Node) -> None:
        s = _storage(target)
        chain = self.chain.get(target)
        if s is None or s not in self.current or chain is None:
            return
        self.chain[node] = chain
        if not chain:  # the base itself was written: the op's result is its new value
            self.version[s] += 1
            self.seen_at[node] = self.version[s]
            self.current[s] = node
            return
        value: fx.Node = node
        src = node.args[1] if node.target is aten.copy_.default and len(node.args) > 1 else None
        if isinstance(src, fx.Node) and getattr(src.meta.get("val"), "shape", None) == target.meta["val"].shape:
            value = src  # copying a tensor of the view's shape: the view now holds that tensor
        first = len(self.made)
        with self.graph.inserting_before(node.next):
            for i in range(len(chain) - 1, -1, -1):
                view = chain[i]
                if view.target is operator.getitem:
                    continue  # the list op before it scatters the item
                parent = self.current[s] if i == 0 else self._retake(self.current[s], chain[:i])
                value = self._scatter(view, parent, value, chain[i + 1] if i + 1 < len(chain) else None, node)
                if value is None:
                    break
        if value is None:  # a view not followed here: the write stays as it was recorded
            for n in reversed(self.made[first:]):
                self.graph.erase_node(n)
            del self.made[first:]
            return
        self.version[s] += 1
        self.seen_at[node] = self.version[s]
        self.current[s] = value
        node.meta[FUNCTIONALIZED] = True  # the converter adds no write node of its own for it
        self.seen_at[value] = self.version[s]
        self.chain[value] = []
        self.changed = True

    def _scatter(self, view: fx.Node, parent: fx.Node, value: fx.Node, item: fx.Node | None,
                 site: fx.Node) -> fx.Node | None:
        """``parent`` with ``view``'s elements replaced by ``value``, at the line of the write ``site``."""
        op = view.target
        args = view.args[1:]
        if op in (aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int, aten.chunk.default) \
                and item is not None:
            return self._scatter_item(view, parent, value, item.args[1], site)
        like = parent if parent.meta.get("val") is not None else view.args[0]
        if op in _SCATTERS:
            return self._copy(like, (parent, value, *args), dict(view.kwargs), _SCATTERS[op], site)
        shape = list(view.args[0].meta["val"].shape)
        if op in _REINDEX:
            return self._copy(like, (value, shape), {}, aten.reshape.default, site)
        if op in (aten.transpose.int, aten.t.default):
            return self._copy(like, (value, *args), {}, op, site)
        if op is aten.permute.default:
            dims = [int(d) % len(shape) for d in args[0]]
            return self._copy(like, (value, sorted(range(len(dims)), key=dims.__getitem__)), {}, op, site)
        return None

    def _scatter_item(self, view: fx.Node, parent: fx.Node, value: fx.Node, index: int,
                      site: fx.Node) -> fx.Node | None:
        shape = list(view.args[0].meta["val"].shape)
        op, args = view.target, view.args[1:]
        if op is aten.unbind.int:
            dim = int(args[0]) if args else 0
            return self._copy(parent, (parent, value, dim, index), {}, aten.select_scatter.default, site)
        dim = int(args[1]) if len(args) > 1 else int(view.kwargs.get("dim", 0))
        dim %= len(shape)
        if op is aten.split_with_sizes.default:
            sizes = [int(x) for x in args[0]]
        elif op is aten.chunk.default:
            step = -(-shape[dim] // int(args[0]))
            sizes = [min(step, shape[dim] - k) for k in range(0, shape[dim], step)]
        else:
            step = int(args[0])
            sizes = [min(step, shape[dim] - k) for k in range(0, shape[dim], step)]
        start = sum(sizes[:index])
        return self._copy(parent, (parent, value, dim, start, start + sizes[index], 1), {},
                          aten.slice_scatter.default, site)


def functionalize(graph: fx.Graph) -> bool:
    """Rewrites, in place, every write through a view so that later reads see it (module doc).

    Returns:
        Whether the graph changed.
    """
    if not any(_written(n) is not None for n in graph.nodes):
        return False
    return _Pass(graph).run()
