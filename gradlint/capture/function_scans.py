"""A custom ``torch.autograd.Function`` that is a linear scan, recognised by running it.

alxndrTL/mamba.py computes Mamba's selective scan h_t = A_t ⊙ h_{t−1} + X_t with a parallel
scan (Blelloch: an up-sweep and a down-sweep over log2(T) levels that combine the decays in
place on views) inside a custom autograd.Function with its own backward. Export inlines the
forward: several hundred selections, products and scatters whose structure says nothing of
the recurrence, and op by op the decays come out as (E_u[a²])^k where the truth is E_u[Π a²]
per unit (docs/design.md §6, R5). Read structurally, a Hillis–Steele scan, a chunked scan or
a mistake would each need a pattern of their own.

So the Function is run instead: on random decays in (0.5, 1) and random inputs of the shapes
the model gives it, in float64, its output and its backward (the author's own) are compared
with a plain loop over each dim. A Function whose forward and backward both match the loop
to rounding is that loop: its ops in the graph are replaced by the loop unrolled (a select of
each step, a product, a sum), which ``capture.loops`` then fuses into one ``scan`` node like
any loop written by hand, and its backward is no longer an unknown of its own
(``capture.own_backward``). Anything else (another arity, a Function that fails on CPU or in
float64, a mismatch) is left as it was: unknown.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace

import torch

from gradlint.capture.graph import Graph, Node
from gradlint.capture.own_backward import function_class

_ATOL = 1e-9


def _loop(a: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    h, out = torch.zeros_like(x.select(dim, 0)), []
    for t in range(x.shape[dim]):
        h = a.select(dim, t) * h + x.select(dim, t)
        out.append(h)
    return torch.stack(out, dim)


def _close(u: torch.Tensor, v: torch.Tensor) -> bool:
    return u.shape == v.shape and bool(torch.allclose(u, v, rtol=1e-7, atol=_ATOL))


@functools.lru_cache(maxsize=64)
def scan_of(cls: type, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(the position of the decay among ``cls.apply``'s two arguments, the time dim) when
    ``cls`` computes h_t = a_t ⊙ h_{t−1} + x_t along that dim, forward and backward."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    for pos in (0, 1):
        leaves = [t.clone().requires_grad_() for t in ((a, x) if pos == 0 else (x, a))]
        try:
            with torch.enable_grad():
                out = cls.apply(*leaves)
                if not isinstance(out, torch.Tensor) or out.shape != a.shape:
                    continue
                grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
        except Exception:  # noqa: BLE001 - the user's Function: one that cannot run here stays unknown
            continue
        for dim in (d for d in range(len(shape)) if shape[d] > 1):
            ref_a, ref_x = a.clone().requires_grad_(), x.clone().requires_grad_()
            with torch.enable_grad():
                ref = _loop(ref_a, ref_x, dim)
                da, dx = torch.autograd.grad(ref, (ref_a, ref_x), g)
            got = (grads[0], grads[1]) if pos == 0 else (grads[1], grads[0])
            if _close(out.detach(), ref.detach()) and all(
                    d is not None and _close(d, r) for d, r in zip(got, (da, dx))):
                return pos, dim
    return None


def _lines(cls: type) -> tuple[str, range] | None:
    try:
        fn = inspect.unwrap(cls.forward)
        src, first = inspect.getsourcelines(fn)
        return inspect.getsourcefile(fn) or "", range(first, first + len(src))
    except (OSError, TypeError):
        return None


def _components(g: Graph, names: set[str]) -> list[list[str]]:
    """The connected parts of ``names`` (one per call of the Function), in graph order."""
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in names:
        for i in g.by_name[n].inputs:
            if i in names:
                parent[find(i)] = find(n)
    out: dict[str, list[str]] = {}
    for n in g.nodes:
        if n.name in names:
            out.setdefault(find(n.name), []).append(n.name)
    return list(out.values())


def _decay_input(g: Graph, ins: list[str], members: set[str]) -> int | None:
    """Which of the two inputs the region multiplies by itself (a decay combined with another
    decay, ``A[2i+1] *= A[2i]``); the input X is only ever scaled and added."""
    reach = []
    for name in ins:
        seen, stack = set(), [name]
        while stack:
            for u in g.users.get(stack.pop(), ()):
                if u in members and u not in seen:
                    seen.add(u)
                    stack.append(u)
        reach.append(seen)
    own = [any(g.by_name[m].kind == "mul" and len(g.by_name[m].inputs) == 2
               and all(i in reach[k] or i == ins[k] for i in g.by_name[m].inputs)
               and not any(i in reach[1 - k] or i == ins[1 - k] for i in g.by_name[m].inputs) for m in reach[k])
           for k in (0, 1)]
    return own.index(True) if own.count(True) == 1 else None


def _unrolled(g: Graph, out: Node, a: str, x: str, dim: int) -> list[Node]:
    """h_t = a[t] · h_{t−1} + x[t] over ``dim``, the states stacked under ``out``'s name."""
    shape = tuple(out.shape)
    step = shape[:dim] + shape[dim + 1:]
    base = {"module": out.module, "module_type": out.module_type, "call_site": out.call_site, "dtype": "float"}
    h = f"{out.name}:h0"
    nodes = [Node(name=h, kind="const", op="zeros", attrs={"op": "zeros", "value": 0.0}, shape=step, **base)]
    states = []
    for t in range(shape[dim]):
        where = f"select[dim={dim}, index={t}]"
        at, xt, m, s = (f"{out.name}:{k}{t}" for k in ("a", "x", "m", "s"))
        nodes += [Node(name=at, kind="select", op="select", inputs=(a,), attrs={"op": "select", "where": where},
                       shape=step, **base),
                  Node(name=xt, kind="select", op="select", inputs=(x,), attrs={"op": "select", "where": where},
                       shape=step, **base),
                  Node(name=m, kind="mul", op="mul", inputs=(at, h), attrs={"op": "mul"}, shape=step, **base),
                  Node(name=s, kind="add", op="add", inputs=(m, xt), attrs={"op": "add", "alpha": 1}, shape=step,
                       **base)]
        g.slices[xt] = (x, dim, t)
        g.slices[s] = (out.name, dim, t)
        states.append(s)
        h = s
    nodes.append(replace(out, kind="cat", op="stack", inputs=tuple(states), params={},
                         attrs={"dim": dim, "stack": True}, fused=()))
    return nodes


def fuse_function_scans(g: Graph) -> int:
    """Replace the ops of every call of a custom Function verified to be a linear scan by the
    loop it computes; drop that Function from ``g.own_backward``. Returns the calls replaced."""
    from gradlint.capture.loops import _toposort

    count, verified = 0, set()
    for entry in g.own_backward:
        cls = function_class(entry)
        where = _lines(cls) if cls is not None else None
        if where is None:
            continue
        path, lines = where
        region = {n.name for n in g.nodes if n.call_site is not None and n.call_site.path == path
                  and n.call_site.line in lines}
        calls = 0
        for part in _components(g, region):
            members = set(part)
            ins = list(dict.fromkeys(i for m in part for i in g.by_name[m].inputs
                                     if i is not None and i not in members))
            outs = [m for m in part if m in g.outputs or any(u not in members for u in g.users.get(m, ()))]
            if len(ins) != 2 or len(outs) != 1:
                continue
            out = g.by_name[outs[0]]
            shapes = {g.by_name[i].shape for i in ins} | {out.shape}
            if len(shapes) != 1 or not isinstance(out.shape, tuple) or not all(isinstance(d, int) for d in out.shape):
                continue
            k = _decay_input(g, ins, members)
            found = scan_of(cls, out.shape) if k is not None else None
            if found is None:
                continue
            pos = {n.name: i for i, n in enumerate(g.nodes)}
            new = [(pos[n.name], n) for n in g.nodes if n.name not in members]
            first = min(pos[m] for m in members)
            new += [(first + 0.5, n) for n in _unrolled(g, out, ins[k], ins[1 - k], found[1])]
            ordered = _toposort(new)
            if ordered is None:
                continue
            g.nodes[:] = ordered
            g.reindex()
            calls += 1
        if calls:
            count += calls
            verified.add(entry)
    g.own_backward = tuple(e for e in g.own_backward if e not in verified)
    return count
