"""GL701 gradient-blockage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.paths import Paths, describe_groups, group_by_module
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
    bad = (Case(_DetachedEncoder, (8, 32), at="encoder", severity="error"),
           Case(_ArgmaxLookup, (8, 32), severity="error"),
           Case(_NoGradStem, (8, 32), severity="error"))

    def check(self, result):
        paths = Paths(result)
        if not paths.block:
            return
        g = result.graph
        stats = result.propagation.param_stats
        trainable = {p for p, st in stats.items() if st.requires_grad}
        groups: dict[tuple, _Group] = {}
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
            grp = groups.setdefault(key, _Group(node=node, site=site, sev=sev))
            # The group's earlier walks already hold every parameter behind the nodes they walked:
            # a per-layer block need not walk back through all the layers before it again.
            behind = paths.params_behind(ins, trainable, grp.walked)
            starved = [p for p in behind if not paths.gets_gradient(p)]
            grp.nodes.append(name)
            grp.modules[node.module] = None
            grp.behind.update(dict.fromkeys(behind))
            grp.starved.update(dict.fromkeys(starved))
            if sev is Severity.ERROR:
                grp.sev = sev
        for key, grp in groups.items():
            reason, node, site = key[0], grp.node, grp.site
            modules = list(grp.modules)
            module = modules[0]
            starved, behind = list(grp.starved), list(grp.behind)
            where = f"{module}" if module else "the model's forward"
            if len(modules) > 1:
                where += f" and {len(modules) - 1} more modules"
            at = f" ({site.code})" if site is not None and site.code else ""
            n_ops = len(grp.nodes)
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
            f = self.finding(result, msg, fix=fix, module=module, node=node.name, severity=grp.sev,
                             reason=reason, nodes=grp.nodes, starved=starved, upstream=behind[:50],
                             predicted_grad_e2={p: v for p, v in list(predicted.items())[:50]})
            if site is not None:
                # The op's own line, not its module's definition: that is what has to change.
                f = dataclasses.replace(f, path=site.path, line=site.line, column=1)
            yield f


@dataclass
class _Group:
    """The blocking ops on one line of code, gathered as they are found (so not frozen).

    Attributes:
        node: The first of them.
        site: Their line of code.
        sev: Error once one of them starves a parameter, else warning.
        nodes: Their node names.
        modules: Their modules, in order (values unused).
        behind: Trainable parameters behind them (values unused).
        starved: Those of ``behind`` that get no gradient (values unused).
        walked: Nodes ``Paths.params_behind`` walked from already.
    """

    node: Any
    site: Any
    sev: Severity
    nodes: list[str] = field(default_factory=list)
    modules: dict[str, None] = field(default_factory=dict)
    behind: dict[str, None] = field(default_factory=dict)
    starved: dict[str, None] = field(default_factory=dict)
    walked: set[str] = field(default_factory=set)
