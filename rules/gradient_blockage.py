"""GL701 gradient-blockage, and the gradient-path helpers GL702 shares."""

from __future__ import annotations

import dataclasses
from collections import deque

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule

# Ops that throw a real gradient away: the forward value is differentiable, the user cut it.
LOSSY = {"detach()", "torch.no_grad()"}
# The others (argmax, round, sign, comparisons, integer casts...) are piecewise constant:
# their derivative is 0 almost everywhere, so they cost nothing where other paths carry the
# gradient, and starve what lies behind them where they are the only path.
_FIXES = {
    "detach()": ("remove the .detach() if the layers before it should learn; for a non-differentiable step keep a\n"
                 "straight-through gradient: y = x + (f(x) - x).detach(); if they are frozen on purpose, say so with\n"
                 "module.requires_grad_(False)"),
    "torch.no_grad()": ("move the layers out of the `with torch.no_grad():` block if they should learn; if they are\n"
                        "frozen on purpose, say so with module.requires_grad_(False)"),
    "argmax": ("replace the hard index by a differentiable relaxation: a straight-through one-hot\n"
               "F.gumbel_softmax(logits, tau=1.0, hard=True) (or torch.softmax(logits, -1) @ table) instead of\n"
               "table[logits.argmax(-1)]"),
    "a comparison": ("use a soft comparison, torch.sigmoid((a - b) / temperature), or a straight-through mask:\n"
                     "m = soft + (hard - soft).detach()"),
    "round": "use a straight-through estimator: y = x + (torch.round(x) - x).detach()",
}
_FIXES["argmin"] = _FIXES["topk indices"] = _FIXES["sort indices"] = _FIXES["argmax"]
_FIXES["a logical op"] = _FIXES["a comparison"]
_GENERIC_FIX = ("keep the forward value but let the gradient through with a straight-through estimator:\n"
                "y = x + (f(x) - x).detach()")


# -- gradient paths (shared with GL702) -------------------------------------------------------

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


def node_params(node) -> list[str]:
    """Parameters ``node`` reads (by role, a recurrent op's list, or a parameter used as a value)."""
    names = [p for p in node.params.values() if isinstance(p, str)]
    names += [p for p in (node.attrs.get("params") or []) if isinstance(p, str)]
    if node.kind == "param" and isinstance(node.attrs.get("param"), str):
        names.append(node.attrs["param"])
    return names


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


def _straight_through(paths: Paths, node) -> bool:
    """``x + (f(x) - x).detach()``: the detached value is added to a tensor it was computed from."""
    if node.kind != "block" or not node.inputs or node.inputs[0] is None:
        return False
    g = paths.graph
    for u in g.users.get(node.name, []):
        un = g.by_name.get(u)
        if un is None or un.kind != "add" or un.attrs.get("op") != "add" or len(un.inputs) != 2:
            continue
        other = un.inputs[1] if un.inputs[0] == node.name else un.inputs[0]
        if paths.computed_from(node.inputs[0], other):
            return True
    return False


# -- examples ----------------------------------------------------------------------------------

class _Encoder(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.fc(x)).detach()


class _DetachedEncoder(nn.Module):
    """The encoder's output is detached: the encoder never learns."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = _Encoder(width)
        self.head = nn.Linear(width, width)

    def forward(self, x):
        return self.head(self.encoder(x))


class _ArgmaxLookup(nn.Module):
    """Codes chosen by argmax index a table: the scorer before the argmax never learns."""

    def __init__(self, width: int = 32, codes: int = 16):
        super().__init__()
        self.scorer = nn.Linear(width, codes)
        self.table = nn.Embedding(codes, width)
        self.head = nn.Linear(width, width)

    def forward(self, x):
        return self.head(self.table(self.scorer(x).argmax(-1)))


class _NoGradStem(nn.Module):
    def __init__(self, width: int = 32, frozen: bool = False):
        super().__init__()
        self.stem = nn.Linear(width, width)
        self.head = nn.Linear(width, width)
        if frozen:
            self.stem.requires_grad_(False)

    def forward(self, x):
        with torch.no_grad():
            h = torch.relu(self.stem(x))
        return self.head(h)


class _StraightThrough(nn.Module):
    """Rounding in the forward pass, identity gradient: the recommended fix."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, width)

    def forward(self, x):
        h = self.fc(x)
        return self.head(h + (torch.round(h) - h).detach())


class _MaskedGate(nn.Module):
    """A hand-written ReLU gate and a mask computed from the input: nothing is lost."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, width)

    def forward(self, x):
        h = self.fc(x)
        h = h * (h > 0).float()
        return self.head(h.masked_fill(x < -3.0, 0.0))


class GradientBlockage(Rule):
    """An op on the path from parameters to the output lets no gradient through.

    ## What it finds
    `.detach()`, `torch.no_grad()` regions, `argmax`/`argmin`/`topk` indices, `round`,
    `floor`, `sign`, comparisons and casts to integer types, applied to a tensor that
    depends on trainable parameters, whose result reaches a model output. Error when some
    parameters get no gradient at all because of it (every path from them to the output
    crosses a blocking op); warning when a `.detach()` or `torch.no_grad()` cuts one of
    several paths (the others still carry gradient). Piecewise-constant ops on a path that
    is not the only one, and masks computed from inputs, token ids or constants (attention
    masks, position ids) are not reported. Points at the line of the blocking op.

    ## Why it matters
    Autograd records no graph through these ops (PyTorch docs, "Autograd mechanics":
    `detach`, `no_grad`; integer outputs have no gradient), so the parameters behind them
    keep their initial values while the rest of the model trains, silently. The usual cure
    for a non-differentiable forward step is the straight-through estimator (Bengio,
    Léonard & Courville 2013) or a Gumbel-softmax relaxation (Jang, Gu & Poole 2017).

    ## Example
    `self.head(torch.relu(self.encoder(x)).detach())`: the encoder's weights get no gradient.

    ## Fix
    Remove the `.detach()` / `torch.no_grad()` if the layers before it should learn; for a
    non-differentiable step keep a straight-through gradient, `y = x + (f(x) - x).detach()`,
    or use `F.gumbel_softmax(logits, hard=True)` instead of `argmax`. Layers frozen on
    purpose should say so with `module.requires_grad_(False)`.

    ## Known limits
    Tensor `.data` is invisible: `torch.export` fails on it and the fallback graphs do not
    record it. Deliberate stop-gradients that route gradient elsewhere (BYOL/SimSiam target
    branches, VQ-VAE commitment terms) are reported as warnings; the straight-through form
    `x + (f(x) - x).detach()` is recognized and not reported. Data-dependent control flow is
    seen only for the branch the example inputs take.
    """

    code = "GL701"
    name = "gradient-blockage"
    severity = Severity.ERROR
    category = "blockage"
    options: dict = {}
    good = (Case(_StraightThrough, (8, 32)), Case(_MaskedGate, (8, 32)),
            Case(lambda: _NoGradStem(frozen=True), (8, 32)))
    bad = (Case(_DetachedEncoder, (8, 32), at="encoder"), Case(_ArgmaxLookup, (8, 32)),
           Case(_NoGradStem, (8, 32)))

    def check(self, result):
        paths = Paths(result)
        if not paths.block:
            return
        g = result.graph
        stats = result.propagation.param_stats
        trainable = {p for p, st in stats.items() if st.requires_grad}
        groups: dict[tuple, dict] = {}
        for name, reason in paths.block.items():
            node = g.by_name[name]
            if name not in paths.reach:
                continue  # its result is never used for an output
            ins = list(node.inputs) if node.kind == "grad_region" else list(node.inputs[:1])
            if not paths.any_behind(ins, trainable):
                continue  # masks and indices from inputs, token ids or constants
            if paths.any_starved_behind(ins, trainable):
                sev = Severity.ERROR
            elif reason in LOSSY and not _straight_through(paths, node) and paths.input_dependent(ins):
                # A stop-gradient on weight-only statistics (spectral norm's power iteration, an
                # EMA copy) is by design; on activations it throws away part of the signal.
                sev = Severity.WARNING
            else:
                continue
            site = node.call_site or next((g.by_name[u].call_site for u in g.users.get(name, [])
                                           if g.by_name[u].call_site is not None), None)
            # One finding per line of code: a block inside a layer that is repeated N times is one mistake.
            key = (reason, site.path, site.line) if site is not None else (reason, None, None, node.module)
            grp = groups.setdefault(key, {"nodes": [], "modules": {}, "behind": {}, "starved": {}, "sev": sev,
                                          "site": site, "node": node, "walked": set()})
            # The group's earlier walks already hold every parameter behind the nodes they walked:
            # a per-layer block need not walk back through all the layers before it again.
            behind = paths.params_behind(ins, trainable, grp["walked"])
            starved = [p for p in behind if not paths.gets_gradient(p)]
            grp["nodes"].append(name)
            grp["modules"][node.module] = None
            grp["behind"].update(dict.fromkeys(behind))
            grp["starved"].update(dict.fromkeys(starved))
            if sev is Severity.ERROR:
                grp["sev"] = sev
        for key, grp in groups.items():
            reason, node, site = key[0], grp["node"], grp["site"]
            modules = list(grp["modules"])
            module = modules[0]
            starved, behind = list(grp["starved"]), list(grp["behind"])
            where = f"{module}" if module else "the model's forward"
            if len(modules) > 1:
                where += f" and {len(modules) - 1} more modules"
            at = f" ({site.code})" if site is not None and site.code else ""
            n_ops = len(grp["nodes"])
            ops = f"{reason}" + (f" ({n_ops} calls)" if n_ops > 1 else "")
            predicted = {p: result.propagation.params.get(p) for p in starved}
            if starved:
                msg = (f"{ops} in {where}{at} blocks the only gradient path of {len(starved)} parameters: "
                       f"{describe_groups(group_by_module(result, starved))} get no gradient")
            else:
                msg = (f"{ops} in {where}{at} stops the gradient of one path: "
                       f"{describe_groups(group_by_module(result, behind))} still learn through other paths, "
                       "but not from this one")
            fix = _FIXES.get(reason, _GENERIC_FIX)
            f = self.finding(result, msg, fix=fix, module=module, node=node.name, severity=grp["sev"],
                             reason=reason, nodes=grp["nodes"], starved=starved, upstream=behind[:50],
                             predicted_grad_e2={p: v for p, v in list(predicted.items())[:50]})
            if site is not None:
                # The op's own line, not its module's definition: that is what has to change.
                f = dataclasses.replace(f, path=site.path, line=site.line, column=1)
            yield f
