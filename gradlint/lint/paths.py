"""Gradient paths, for the rules about gradients that never arrive (GL701, GL702): which ops
let no gradient through, which nodes reach an output with and without one, and which
parameters lie behind a node."""

from __future__ import annotations

from collections import deque

import torch.nn as nn

from gradlint.engine.propagate import node_params


def blocking_reason(graph, node) -> str | None:
    """Why no gradient flows back through ``node``'s output, or None if it does."""
    if node.kind == "block":
        return str(node.attrs.get("reason") or node.op)
    if node.kind == "getitem" and node.inputs and node.inputs[0] is not None and node.attrs.get("index") != 0:
        src = graph.by_name.get(node.inputs[0])
        if src is not None and src.kind == "topk":  # (values, indices): only the indices block
            return "sort indices" if src.attrs.get("op") == "sort" else "topk indices"
    if node.kind == "grad_region" and not node.attrs.get("enabled", True):
        return "torch.no_grad()"
    if node.kind == "identity" and node.dtype in ("int", "bool") and node.inputs and node.inputs[0] is not None:
        src = graph.by_name.get(node.inputs[0])
        if src is not None and src.dtype == "float":
            return "an integer cast"
    return None


class Paths:
    """Which nodes reach a model output, with and without a gradient.

    A gradient flows along float tensors only (indices, masks and token ids carry none)
    and stops at blocking ops. ``live`` holds the nodes from which such a path reaches a
    float output; ``reach`` those from which any path reaches any output.
    """

    def __init__(self, result):
        g = result.graph
        self.graph = g
        self.order = {n.name: k for k, n in enumerate(g.nodes)}
        self._sweeps: dict[str, dict[str, bool]] = {}
        self.block = {n.name: r for n in g.nodes if (r := blocking_reason(g, n)) is not None}
        outs = set(g.outputs)
        self.live: set[str] = set()
        self.reach: set[str] = set()
        for n in reversed(g.nodes):
            users = g.users.get(n.name, [])
            if n.name in outs or any(u in self.reach for u in users):
                self.reach.add(n.name)
            if self.carrier(n.name) and ((n.name in outs) or any(u in self.live for u in users)):
                self.live.add(n.name)
        # Parameter nodes some op refers to from its attrs rather than its inputs (a bias kept
        # as an attribute when the weight is computed, as under torch.nn.utils.parametrize).
        mentioned = {m: n.name for n in g.nodes for m in _mentions(n.attrs)}
        self.uses: dict[str, list[str]] = {}
        for n in g.nodes:
            if n.kind == "param" and not g.users.get(n.name):
                if n.name in mentioned:
                    for p in node_params(n):
                        self.uses.setdefault(p, []).append(mentioned[n.name])
                continue  # export lists every parameter; only operand uses count
            for p in node_params(n):
                self.uses.setdefault(p, []).append(n.name)

    def carrier(self, name: str) -> bool:
        n = self.graph.by_name.get(name)
        return n is not None and n.dtype == "float" and name not in self.block

    def gets_gradient(self, param: str) -> bool:
        return any(u in self.live for u in self.uses.get(param, []))

    def reaches_output(self, param: str) -> bool:
        return any(u in self.reach for u in self.uses.get(param, []))

    def params_behind(self, names, trainable: set[str], seen: set[str] | None = None) -> list[str]:
        """Trainable parameters with a gradient-carrying path into any of ``names``.

        ``seen``: nodes an earlier call already walked from, to walk no further from them (their
        parameters are in that call's answer); it is updated.
        """
        seen = set() if seen is None else seen
        found: dict[str, None] = {}
        todo = deque(x for x in names if x is not None and self.carrier(x))
        while todo:
            cur = todo.popleft()
            if cur in seen:
                continue
            seen.add(cur)
            n = self.graph.by_name[cur]
            for p in node_params(n):
                if p in trainable:
                    found[p] = None
            todo.extend(i for i in n.inputs if i is not None and i not in seen and self.carrier(i))
        return list(found)

    def _behind(self, key: str, own) -> dict[str, bool]:
        # Per gradient-carrying node, whether ``own`` holds there or anywhere params_behind would
        # walk to from it: one sweep, not one walk per blocking op (quadratic in the depth).
        if key not in self._sweeps:
            out: dict[str, bool] = {}
            for n in self.graph.nodes:
                if self.carrier(n.name):
                    out[n.name] = own(n) or any(out.get(i, False) for i in n.inputs if i is not None)
            self._sweeps[key] = out
        return self._sweeps[key]

    def any_behind(self, names, trainable: set[str]) -> bool:
        """Whether ``params_behind(names, trainable)`` is not empty (``trainable``: the same in every call)."""
        memo = self._behind("trainable", lambda n: any(p in trainable for p in node_params(n)))
        return any(memo.get(x, False) for x in names if x is not None)

    def any_starved_behind(self, names, trainable: set[str]) -> bool:
        """Whether a parameter of ``params_behind(names, trainable)`` gets no gradient."""
        memo = self._behind("starved", lambda n: any(p in trainable and not self.gets_gradient(p)
                                                     for p in node_params(n)))
        return any(memo.get(x, False) for x in names if x is not None)

    def input_dependent(self, names) -> bool:
        """Whether any of ``names`` is computed from a model input (an activation, not a weight
        statistic), from one sweep over the graph."""
        if "input" not in self._sweeps:
            dep: dict[str, bool] = {}
            for n in self.graph.nodes:
                dep[n.name] = n.kind == "input" or any(dep.get(i, False) for i in n.inputs if i is not None)
            self._sweeps["input"] = dep
        return any(self._sweeps["input"].get(x, False) for x in names if x is not None)

    def computed_from(self, name: str, source: str | None) -> bool:
        """Whether ``source`` is ``name`` or one of its ancestors (``source in ancestors(name) | {name}``)."""
        if source == name:
            return True
        lo = self.order.get(source)
        if lo is None or name not in self.order:
            return source in self.ancestors(name)
        stack, seen = [name], {name}
        while stack:
            n = self.graph.by_name.get(stack.pop())
            if n is None:
                continue
            for i in n.inputs:
                if i is None or i in seen:
                    continue
                if i == source:
                    return True
                if self.order.get(i, -1) > lo:  # nodes before source are not computed from it
                    seen.add(i)
                    stack.append(i)
        return False

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            cur = todo.pop()
            n = self.graph.by_name.get(cur)
            if n is None:
                continue
            for i in n.inputs:
                if i is not None and i not in seen:
                    seen.add(i)
                    todo.append(i)
        return seen


def _mentions(value, depth: int = 0) -> set[str]:
    """Names of graph nodes an attrs value refers to (fx nodes kept as attributes)."""
    if depth > 3:
        return set()
    if isinstance(value, dict):
        return set().union(*(_mentions(v, depth + 1) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_mentions(v, depth + 1) for v in value)) if value else set()
    name = getattr(value, "name", None)
    return {name} if isinstance(name, str) and hasattr(value, "op") and not isinstance(value, nn.Module) else set()


def group_by_module(result, params) -> dict[str, list[str]]:
    """{owning module: [local parameter names]}, in model order."""
    out: dict[str, list[str]] = {}
    stats = result.propagation.param_stats
    for p in params:
        st = stats.get(p)
        mod = st.module if st is not None else (p.rsplit(".", 1)[0] if "." in p else "")
        local = p[len(mod) + 1:] if mod and p.startswith(mod + ".") else p
        out.setdefault(mod, []).append(local)
    return out


def describe_groups(groups: dict[str, list[str]], limit: int = 4) -> str:
    items = [f"{m or '(root)'} ({', '.join(v)})" for m, v in groups.items()]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more modules" if more > 0 else "")
