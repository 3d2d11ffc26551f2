"""GL702 unused-parameters."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradlint
from gradlint.base.findings import Severity
from gradlint.lint.paths import Paths
from gradlint.lint.rule import Case, Rule


class _SpareHead(nn.Module):
    """A head built in __init__ that forward never calls."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, width)
        self.aux_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class _DeadBranch(nn.Module):
    """A branch computed in forward whose result is thrown away."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Linear(width, width)
        self.probe = nn.Linear(width, width)

    def forward(self, x):
        h = self.body(x)
        _ = self.probe(h)
        return h


class _TiedLM(nn.Module):
    """The output projection shares the embedding's weight (weight tying) and uses it functionally."""

    def __init__(self, vocab: int = 64, width: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight
        self.frozen_extra = nn.Linear(width, width).requires_grad_(False)

    def forward(self, ids):
        return F.linear(torch.tanh(self.body(self.emb(ids))), self.emb.weight)


class UnusedParameters(Rule):
    """Trainable parameters that no output depends on.

    ## What it finds
    Parameters with `requires_grad=True` from which no path reaches any model output: a
    module built in `__init__` but never called in `forward`, or one whose result is
    computed and thrown away. They are named and grouped by module (the highest module all
    of whose parameters are unused). Tied weights used under another name, and frozen
    parameters, are not reported. Parameters cut off by `.detach()` or `argmax` are the
    gradient-blockage rule's (GL701).

    ## Why it matters
    They receive no gradient (their `.grad` stays None), so the optimizer skips them and
    they keep their initial values. Under `torch.nn.parallel.DistributedDataParallel` training stops with
    "Expected to have finished reduction in the prior iteration before starting a new
    one" unless it is built with `find_unused_parameters=True`, which costs an extra
    traversal of the graph every step (PyTorch docs, DistributedDataParallel).

    ## Example
    `self.aux_head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))` in
    `__init__`, never called in `forward`: its 4 parameters get no gradient.

    ## Fix
    Remove the module if it is not needed, call it in `forward` if it is, or freeze it
    (`module.requires_grad_(False)`); for a module used only on some steps, build DDP with
    `DistributedDataParallel(model, find_unused_parameters=True)`.

    ## Known limits
    Only the forward pass the example inputs take is seen: modules used in a branch of
    data-dependent control flow (or by a loss computed outside forward) look unused. A
    path chosen by random numbers (layer dropout) is taken with every random number at its
    median, each choice's more likely outcome (a layer dropped with probability under 1/2 is
    kept), and the layers that path skips are said to be unused on it. Fused
    normalization units may hide a parameter's use; their parameters are never reported.
    On the `module-order` fallback graph only modules that never run are reported.
    """

    code = "GL702"
    name = "unused-parameters"
    severity = Severity.WARNING
    category = "unused"
    options = {"severity": "warning"}
    good = (Case(_TiedLM, gradlint.tokens((8, 16), 64)),
            Case(lambda: nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)), (8, 32)))
    bad = (Case(_SpareHead, (8, 32), at="aux_head", severity="warning"),
           Case(_DeadBranch, (8, 32), at="probe", severity="warning"))

    def check(self, result):
        prop = result.propagation
        stats = prop.param_stats
        g = result.graph
        paths = Paths(result)
        # Fused units (hand-written norms) replace the ops that read their weights.
        fused_modules = {n.module for n in g.nodes if n.fused}
        ran = {n.module for n in g.nodes if n.module}
        exact = g.analysis in ("export", "fx")
        unused: dict[str, str] = {}
        for name, st in stats.items():
            if not st.requires_grad:
                continue
            value = prop.params.get(name)  # 0.0: provably no gradient; None: unknown
            if not paths.uses.get(name) and value in (0.0, None):
                if any(paths.uses.get(t) for t in st.tied) or st.module in fused_modules:
                    continue
                if paths.reaches_output(name):
                    continue  # read by an op through its attributes, which the engine does not follow
                if not exact and any(m == st.module or m.startswith(st.module + ".") or not st.module for m in ran):
                    continue  # the fallback graphs miss functional uses inside modules that ran
                unused[name] = "never used in forward"
            elif exact and value == 0.0 and paths.uses.get(name) and not paths.reaches_output(name) \
                    and not any(paths.reaches_output(t) for t in st.tied):
                unused[name] = "used in forward, but nothing computed from them reaches an output"
        if not unused:
            return
        chance = [where for kind, where in g.notes if kind == "random-path"]
        if chance:
            # The forward chose its path by random numbers (layer dropout): capture takes every
            # random choice's more likely outcome, and steps that draw otherwise use them.
            unused = {n: why.replace("never used in forward", f"not used in forward on the path where every "
                                     f"random choice takes its more likely outcome ({chance[0]}); steps that "
                                     "draw otherwise use them")
                      for n, why in unused.items()}
        trainable = [n for n, st in stats.items() if st.requires_grad]
        for top, (names, whole) in _top_modules(unused, trainable, stats).items():
            why = " / ".join(sorted({unused[n] for n in names}))
            numel = sum(stats[n].numel for n in names)
            locals_ = [n[len(top) + 1:] if top and n.startswith(top + ".") else n for n in names]
            shown = ", ".join(locals_[:6]) + (f" and {len(locals_) - 6} more" if len(locals_) > 6 else "")
            count = f"{len(names)} trainable parameter{'s' if len(names) != 1 else ''}"
            if whole:
                typ = next((stats[n].module_type for n in names if stats[n].module == top), "")
                what = (f"{top or 'the model'}{f' ({typ})' if typ else ''}: all {count} ({shown}; {numel:,} values) "
                        f"are {why}")
            else:
                owner = top or "the model"
                what = f"{count} of {owner} ({shown}; {numel:,} values) {'is' if len(names) == 1 else 'are'} {why}"
            them = "them" if len(names) != 1 else "it"
            msg = (f"{what}: no gradient reaches {them}, and DistributedDataParallel stops with \"Expected to have "
                   "finished reduction in the prior iteration\" unless find_unused_parameters=True")
            target = top if whole else ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            # get_parameter takes any dotted name, `scales.200` of a ParameterList too, where
            # attribute access would not be Python.
            freeze = (f"{f'model.get_submodule({top!r})' if top else 'model'}.requires_grad_(False)" if whole else
                      "; ".join(f"model.get_parameter({n!r}).requires_grad_(False)" for n in names[:3]))
            fix = (f"remove {target} if it is not needed, use it in forward if it is, or freeze it: {freeze}\n"
                   "if it is used only on some steps: DistributedDataParallel(model, find_unused_parameters=True)")
            sev = Severity(str(self.opts.get("severity") or "warning"))
            yield self.finding(result, msg, fix=fix, module=top, severity=sev, params=names[:100],
                               count=len(names), numel=numel)


def _top_modules(unused: dict[str, str], trainable: list[str], stats) -> dict[str, tuple[list[str], bool]]:
    """Group unused parameters under the highest module whose trainable parameters are all
    unused (whole=True), else under their owning module (whole=False)."""
    def owner(p: str) -> str:
        st = stats.get(p)
        return st.module if st is not None else (p.rsplit(".", 1)[0] if "." in p else "")

    def prefixes(mod: str) -> list[str]:
        parts = mod.split(".") if mod else []
        return [".".join(parts[:i]) for i in range(len(parts) + 1)]  # '' (root) first

    all_unused: dict[str, bool] = {}
    for p in trainable:
        for pre in prefixes(owner(p)):
            all_unused[pre] = all_unused.get(pre, True) and p in unused
    out: dict[str, tuple[list[str], bool]] = {}
    for p in unused:
        top = next((pre for pre in prefixes(owner(p)) if all_unused.get(pre)), None)
        key = top if top is not None else owner(p)
        out.setdefault(key, ([], top is not None))[0].append(p)
    return out
