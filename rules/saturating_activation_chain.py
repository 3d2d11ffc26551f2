"""GL201 saturating-activation-chain."""

from __future__ import annotations

import math
from typing import Callable

import torch.nn as nn

from gradlint.engine import gaussian
from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import Reach, forward_of as _fwd, feeds_output as _feeds_output, const_like as _const_like

SATURATING_FNS = {"sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid", "logsigmoid"}
# Ops a run of activations continues through: weights, pooling and data movement.
THROUGH = {"linear", "conv", "identity", "select", "split", "getitem", "expand", "datamove", "dropout", "cat",
           "avg_pool", "max_pool", "reduce"}
# Ops between an activation and what consumes it that do not change what it is used for.
MOVES = {"identity", "select", "split", "getitem", "expand", "datamove", "dropout"}
PARAM_KWARGS = ("negative_slope", "alpha", "min_val", "max_val", "beta", "threshold")
PLURAL = {"sigmoid": "sigmoids", "tanh": "tanhs", "hardtanh": "hardtanhs", "softsign": "softsigns",
          "hardsigmoid": "hardsigmoids", "logsigmoid": "logsigmoids"}
PROBE = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def _sigmoid_mlp(depth: int = 8, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def _normed_sigmoid_mlp(depth: int = 8, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def _xavier_tanh_mlp(depth: int = 8, width: int = 64, std: float | None = None) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        if std is None:
            nn.init.xavier_uniform_(lin.weight)
        else:
            nn.init.normal_(lin.weight, std=std)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, width))


class _SaturatedHead(nn.Module):
    """A ReLU trunk whose tanh output layer is initialized four times too large."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        nn.init.kaiming_normal_(self.body[0].weight, nonlinearity="relu")
        self.out = nn.Linear(width, width)
        nn.init.normal_(self.out.weight, std=4.0 / math.sqrt(width))
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.out(self.body(x)))


def _callable_of(node) -> tuple[Callable | None, object]:
    """The element-wise function of an act_module / elementwise node, with the engine's cache key."""
    if node.kind == "act_module":
        mod = node.attrs.get("module")
        return (mod, ("module", id(mod))) if callable(mod) else (None, None)
    target = node.attrs.get("target")
    if not callable(target):
        return None, None
    extra = node.attrs.get("extra", {}) or {}
    scalars = {k: v for k, v in extra.items() if isinstance(v, (int, float, bool)) or v is None}
    key = (str(target), repr(sorted(extra.items(), key=str)))
    return (lambda z: target(z, **scalars)), key


class _Phi:
    """E[phi'^2] of one activation node at any (mu, v), and at its unsaturated best."""

    def __init__(self, node):
        self.node = node
        self.label = "saturating activation"
        if node.kind == "act":
            fn = node.attrs.get("fn")
            params = {k: v for k, v in node.attrs.items() if k in PARAM_KWARGS}
            self._m = lambda mu, v: gaussian.moments(fn, mu, v, **params)
            self.label = fn
        else:
            f, key = _callable_of(node)
            self._m = lambda mu, v: gaussian.expect_fn(f, mu, v, key=key)
            if node.kind == "act_module":
                self.label = node.module_type or "saturating activation"
            else:  # aten.clamp.default -> clamp
                target = str(node.attrs.get("target", ""))
                self.label = target.split(".")[1] if target.count(".") >= 2 else "saturating activation"

    def dphi2(self, mu: float, v: float) -> float:
        return self._m(mu, v).dphi2

    def best(self) -> float:
        """max over a few centres of phi'(mu)^2: the gradient factor where phi is least saturated."""
        return max(self._m(mu, 0.0).dphi2 for mu in PROBE)


def _bounded(node) -> bool:
    """Whether an act_module / elementwise node saturates on both sides (sigmoid-like)."""
    f, key = _callable_of(node)
    if f is None:
        return False
    try:
        d = {h: abs(gaussian.expect_fn(f, h, 0.0, key=key).dphi_mean) for h in (-20.0, 20.0) + PROBE}
    except Exception:
        return False
    if not all(math.isfinite(x) for x in d.values()):
        return False
    peak = max(d[h] for h in PROBE)
    return peak > 1e-6 and d[-20.0] <= 0.02 * peak and d[20.0] <= 0.02 * peak


def _is_saturating(node) -> bool:
    if node.kind == "act":
        return node.attrs.get("fn") in SATURATING_FNS
    if node.kind in ("act_module", "elementwise"):
        return _bounded(node)
    return False


def _is_gate(result, name: str) -> bool:
    """A value that multiplies another activation (LSTM/GLU/SE gates, x * sigmoid(x)) is a gate."""
    g = result.graph
    stack, seen = [name], set()
    while stack:
        cur = stack.pop()
        for u in g.users.get(cur, []):
            if u in seen:
                continue
            seen.add(u)
            n = g.by_name[u]
            others = [i for i in n.inputs if i is not None and i != cur]
            if n.kind in MOVES:
                stack.append(u)
            elif n.kind in ("mul", "matmul", "add"):
                if others and not all(_const_like(result, i) for i in others):
                    if n.kind != "add":
                        return True
                else:
                    stack.append(u)  # 1 + erf(h), 0.5 * tanh(h): still the same value, rescaled
    return False


def _post_scale(result, name: str) -> float:
    """c^2 for an activation whose only use is c * phi (+ a constant): 2 * sigmoid(h) - 1 is a
    saturating activation whose derivative is twice the sigmoid's."""
    g = result.graph
    scale2, cur = 1.0, name
    for _ in range(16):
        users = g.users.get(cur, [])
        if len(users) != 1:
            break
        n = g.by_name[users[0]]
        tensors = [i for i in n.inputs if i is not None and not _const_like(result, i)]
        c = n.attrs.get("scalar")
        if n.kind in MOVES or (n.kind == "add" and tensors == [cur]):
            pass
        elif n.kind == "mul" and tensors == [cur] and isinstance(c, (int, float)) and not n.attrs.get("scalar_first"):
            c = float(c)
            if n.attrs.get("op") == "div":
                if c == 0:
                    break
                c = 1.0 / c
            scale2 *= c * c
        else:
            break
        cur = n.name
    return scale2


def _producer(result, name: str | None) -> str:
    """The module of the weighted layer whose output feeds ``name``, through data movement."""
    g = result.graph
    for _ in range(64):
        n = g.by_name.get(name) if name is not None else None
        if n is None:
            return ""
        if n.kind in ("linear", "conv"):
            return n.module
        if n.kind not in MOVES | {"add", "mul"} or not n.inputs:
            return ""
        name = n.inputs[0]
    return ""


class _Walker:
    """Which saturating activations follow which, through weights and data movement only."""

    def __init__(self, result, members: set[str]):
        self.result = result
        self.g = result.graph
        self.members = members
        self.reach = Reach(self.g)

    def successors(self, start: str) -> set[str]:
        found: set[str] = set()
        stack, seen = [start], set()
        while stack:
            cur = stack.pop()
            for u in self.g.users.get(cur, []):
                if u in seen:
                    continue
                seen.add(u)
                if u in self.members:
                    if not self.bypassed(start, u):
                        found.add(u)
                    continue
                n = self.g.by_name[u]
                others = [i for i in n.inputs if i is not None and i != cur]
                if n.kind in THROUGH:
                    stack.append(u)
                elif n.kind == "mul" and all(_const_like(self.result, i) for i in others):
                    stack.append(u)  # a scale by a constant or a parameter (LayerScale)
                elif n.kind == "add":
                    # A sum whose other operand also depends on the run is a skip connection:
                    # the gradient has a way around the activations and the run ends.
                    if any(self.reach.descends(start, i) for i in others if not _const_like(self.result, i)):
                        continue
                    stack.append(u)
                # Normalization, other activations, attention, gates: the run ends here.
        return found

    def bypassed(self, start: str, member: str) -> bool:
        """Whether a skip connection around ``member`` (x = x + tanh(W x)) adds back a path from
        ``start`` that avoids it: the gradient reaching ``start`` need not pass through ``member``."""
        return self.reach.bypassed(self.result, start, member, lambda u, n: u in self.members or n.kind in THROUGH)


class SaturatingActivationChain(Rule):
    """Saturating activations in a row, or saturated by their input, lose the gradient.

    ## What it finds
    Runs of saturating activations (sigmoid, tanh, hardtanh, softsign, hardsigmoid,
    logsigmoid, and parameter-free activation modules or element-wise ops that saturate
    on both sides) that follow each other through weight layers with no normalization
    (LayerNorm, RMSNorm, GroupNorm, BatchNorm) and no skip connection in between, when
    the gradient factors E[phi'(h)^2] of the run, at each activation's predicted
    pre-activation mean and variance, multiply to a loss of at least `min_decades`
    decades over at least `min_run` activations, and the engine predicts at least that
    loss over the run with the layers between included (large weights can make up for
    the activations: tanh with torch's gain 5/3 is not reported). Also activations
    whose pre-activation variance is so large that E[phi'^2] falls below
    `saturated_ratio` of its unsaturated value, alone or as a run. Gates (a sigmoid that
    multiplies another activation, as in LSTM, GLU or squeeze-excitation blocks) are not
    counted.

    ## Why it matters
    Back-propagation multiplies the gradient by phi'(h) at every activation. A sigmoid's
    derivative is at most 1/4, and a tanh's falls towards 0 as soon as |h| exceeds about
    2, so a chain of them shrinks the gradient geometrically and the first layers barely
    train (Glorot & Bengio 2010, "Understanding the difficulty of training deep
    feedforward neural networks"; LeCun et al. 1998, "Efficient BackProp").

    ## Example
    An 8-layer MLP of nn.Linear + nn.Sigmoid with PyTorch's default init: each sigmoid
    keeps E[sigma'^2] ~ 0.06 of the gradient's energy, 0.6 decades of gradient RMS per
    layer, 4.9 decades over the run.

    ## Fix
    Use ReLU-family activations with He init (`nn.ReLU()` and
    `nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`), or put `nn.LayerNorm(width)`
    before each saturating activation, or add residual connections around them. When
    the activations are saturated by too large a pre-activation, lower the init gain of
    the layer before them (`nn.init.xavier_uniform_(m.weight)`).

    ## Known limits
    The cost counted is the activations' own factor E[phi'^2]; the weight layers between
    them may add or remove gain (the message gives the engine's figure over the same span,
    and the error severity needs both to reach the threshold).
    Custom activation modules and element-wise ops are recognized only when they saturate
    on both sides. Gates are left to the gating rules.
    """

    code = "GL201"
    name = "saturating-activation-chain"
    severity = Severity.WARNING
    category = "saturation"
    options = {"min_run": 3, "min_decades": 1.0, "saturated_ratio": 0.25}
    good = (Case(_xavier_tanh_mlp, (32, 64)), Case(_normed_sigmoid_mlp, (32, 64)))
    bad = (Case(_sigmoid_mlp, (32, 64), at="1"),
           Case(lambda: _xavier_tanh_mlp(std=0.5), (32, 64), at="1"),
           Case(_SaturatedHead, (32, 64), at="act"))

    def check(self, result):
        g = result.graph
        thr = result.summary.threshold
        min_run = int(self.opts["min_run"])
        min_dec = float(self.opts["min_decades"])
        sat_ratio = float(self.opts["saturated_ratio"])

        live = _feeds_output(result)
        info: dict[str, dict] = {}
        for node in g.nodes:
            if node.kind not in ("act", "act_module", "elementwise") or not node.inputs:
                continue
            if node.name not in live or not _is_saturating(node):
                continue
            x = _fwd(result, node.inputs[0])
            if x is None or x.blocked or x.const or _is_gate(result, node.name):
                continue
            phi = _Phi(node)
            try:
                c2 = _post_scale(result, node.name)
                d2, best = c2 * phi.dphi2(x.mu, x.v), c2 * phi.best()
            except Exception:
                continue  # an op undefined on part of the Gaussian's support
            if not (d2 > 0 and best > 0 and math.isfinite(d2)):
                continue
            info[node.name] = dict(node=node, label=phi.label, dphi2=d2, best=best, mu=x.mu, v=x.v,
                                   cost=-0.5 * math.log10(d2), ratio=d2 / best)
        if not info:
            return

        walker = _Walker(result, set(info))
        preds: dict[str, list[str]] = {n: [] for n in info}
        for name in info:
            for succ in walker.successors(name):
                preds[succ].append(name)
        # Costliest run ending at each activation (graph order is topological).
        best_cost: dict[str, float] = {}
        back: dict[str, str | None] = {}
        for node in g.nodes:
            name = node.name
            if name not in info:
                continue
            prev = max(preds[name], key=lambda p: best_cost[p], default=None)
            best_cost[name] = info[name]["cost"] + (best_cost[prev] if prev else 0.0)
            back[name] = prev

        covered: set[str] = set()
        for end in sorted(best_cost, key=lambda n: -best_cost[n]):
            if end in covered:
                continue
            path = []
            cur: str | None = end
            while cur is not None and cur not in covered:
                path.append(cur)
                cur = back[cur]
            path.reverse()
            items = [info[n] for n in path]
            cost = sum(it["cost"] for it in items)
            span = self._span_decades(result, items[0]["node"], items[-1]["node"])
            # The gradient actually lost over the run: weights between the activations can
            # make up for them (tanh with torch's gain 5/3), and then nothing vanishes.
            net = -span if span is not None else cost
            saturated = [it for it in items if it["ratio"] < sat_ratio]
            if len(items) >= min_run and cost >= min_dec and net >= min_dec:
                covered.update(path)
                yield self._run_finding(result, items, cost, span, thr, sat_ratio)
            elif len(saturated) >= 2:
                covered.update(path)
                yield self._saturated_run_finding(result, items, saturated, cost, span, thr)

        for name, it in info.items():
            if name in covered or it["ratio"] >= sat_ratio:
                continue
            yield self._saturated_finding(result, it, thr)

    # -- messages ----------------------------------------------------------------------------

    def _span_decades(self, result, first, last) -> float | None:
        """The engine's change of x·dL/dx energy from the run's input to its last output, in decades."""
        prop = result.propagation
        a, b = prop.node(first.inputs[0]), prop.node(last.name)

        def t(r):
            n = math.prod(r.shape) if r.shape else 1
            return r.q * r.s * n

        ta, tb = t(a), t(b)
        if ta <= 0 or tb <= 0:
            return None
        return 0.5 * math.log10(ta / tb)

    @staticmethod
    def _what(items) -> str:
        labels = {it["label"] for it in items}
        label = next(iter(labels)) if len(labels) == 1 else ""
        return PLURAL.get(label, f"{label} activations") if label else "saturating activations"

    @staticmethod
    def _where(items) -> str:
        first, last = items[0]["node"], items[-1]["node"]
        where = first.module or "the model"
        return f"at {where}" if last.module == first.module else f"from {where} to {last.module or 'the model'}"

    @staticmethod
    def _factor(items) -> str:
        lo = min(it["dphi2"] for it in items)
        hi = max(it["dphi2"] for it in items)
        return f"E[phi'^2] = {lo:.2g}" if hi - lo < 0.005 * max(hi, 1e-12) else f"E[phi'^2] {lo:.2g} to {hi:.2g}"

    def _gain_fix(self, result, saturated) -> str:
        prods = list(dict.fromkeys(p for p in (_producer(result, it["node"].inputs[0]) for it in saturated) if p))
        if not prods:
            return ""
        return (f"a smaller init gain in {', '.join(prods[:4])}{' ...' if len(prods) > 4 else ''}: "
                f"nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)")

    def _run_finding(self, result, items, cost, span, thr, sat_ratio):
        first = items[0]["node"]
        n = len(items)
        saturated = [it for it in items if it["ratio"] < sat_ratio]
        msg = (f"{n} {self._what(items)} in a row without normalization or skip connection cost {cost:.1f} decades "
               f"of gradient {self._where(items)} ({self._factor(items)} each")
        if saturated:
            msg += f"; {len(saturated)} of them saturated by their pre-activation's spread"
        msg += ")"
        if span is not None and abs(span + cost) >= 0.1:
            msg += f"; over the whole run, layers between included, the engine predicts {span:+.1f} decades"
        fix = ("replace them with ReLU-family activations and He init: nn.ReLU() and\n"
               "nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\"); nn.init.zeros_(m.bias) for each layer m "
               "before them;\nor keep them inside pre-norm residual blocks, x = x + block(x)")
        gain = self._gain_fix(result, saturated) if saturated else ""
        if gain:
            fix += f";\nthe saturated ones also need {gain}"
        net = -span if span is not None else cost
        sev = Severity.ERROR if cost >= thr and net >= thr else Severity.WARNING
        return self.finding(result, msg, fix=fix, module=first.module, node=first.name, severity=sev,
                            activations=n, decades=round(cost, 3),
                            dphi2_min=round(min(it["dphi2"] for it in items), 6),
                            dphi2_max=round(max(it["dphi2"] for it in items), 6),
                            saturated=len(saturated), nodes=[it["node"].name for it in items],
                            span_decades=None if span is None else round(span, 3), threshold=thr)

    def _saturated_run_finding(self, result, items, saturated, cost, span, thr):
        """A run whose weights make up for the activations' loss, but which is saturated."""
        first = items[0]["node"]
        n = len(items)
        stds = [math.sqrt(it["v"]) for it in saturated]
        ratio = max(it["ratio"] for it in saturated)
        msg = (f"{len(saturated)} of {n} {self._what(items)} in a row {self._where(items)} are saturated at init: "
               f"their pre-activations have std {min(stds):.2g} to {max(stds):.2g}, so {self._factor(saturated)}, "
               f"at most {ratio:.2g} of the unsaturated value; they cost {cost:.1f} decades of gradient")
        if span is not None:
            msg += (f", which the large weights between them turn into {span:+.1f} decades over the run"
                    if span > -cost + 0.1 else "")
        gain = self._gain_fix(result, saturated)
        fix = (f"use {gain};\nor put nn.LayerNorm(width) before each activation" if gain else
               "put nn.LayerNorm(width) before each activation, or scale their inputs down")
        net = -span if span is not None else cost
        sev = Severity.ERROR if cost >= thr and net >= thr else Severity.WARNING
        return self.finding(result, msg, fix=fix, module=first.module, node=first.name, severity=sev,
                            activations=n, saturated=len(saturated), decades=round(cost, 3),
                            max_ratio=round(ratio, 4), nodes=[it["node"].name for it in items],
                            span_decades=None if span is None else round(span, 3), threshold=thr)

    def _saturated_finding(self, result, it, thr):
        node = it["node"]
        cost = it["cost"]
        lost = 0.5 * math.log10(1.0 / it["ratio"])
        where = node.module or "the model"
        prod = _producer(result, node.inputs[0])
        std = math.sqrt(it["v"])
        mean = f" and mean {it['mu']:+.2g}" if abs(it["mu"]) > 0.05 * std else ""
        msg = (f"{it['label']} in {where} is saturated at init: its pre-activation has std {std:.2g}{mean}, "
               f"so E[phi'^2] = {it['dphi2']:.2g}, {it['ratio']:.2g} of its unsaturated {it['best']:.2g}: "
               f"the gradient through it shrinks by {cost:.1f} decades ({lost:.1f} of them from saturation)")
        if prod:
            fix = (f"lower the init gain of {prod}, e.g. nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias), "
                   f"or put nn.LayerNorm before the {it['label']}")
        else:
            fix = f"normalize the input of the {it['label']} (nn.LayerNorm) or scale it down"
        sev = Severity.ERROR if cost >= thr else Severity.WARNING
        return self.finding(result, msg, fix=fix, module=node.module, node=node.name, severity=sev,
                            decades=round(cost, 3), saturation_decades=round(lost, 3), dphi2=round(it["dphi2"], 6),
                            dphi2_unsaturated=round(it["best"], 6), pre_std=round(math.sqrt(it["v"]), 4),
                            pre_mean=round(it["mu"], 4), producer=prod, threshold=thr)
