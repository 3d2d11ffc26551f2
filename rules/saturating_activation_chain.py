"""GL201 saturating-activation-chain."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.activations import Phi, phi_of
from gradlint.lint.chains import ChainWalker, PathCover
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import const_like, feeds_output, forward_of

SATURATING_FNS = {"sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid", "logsigmoid"}
# Ops a run of activations continues through: weights, pooling and data movement.
THROUGH = {"linear", "conv", "identity", "select", "split", "getitem", "expand", "datamove", "dropout", "cat",
           "avg_pool", "max_pool", "reduce"}
# Ops between an activation and what consumes it that do not change what it is used for.
MOVES = {"identity", "select", "split", "getitem", "expand", "datamove", "dropout"}
PLURAL = {"sigmoid": "sigmoids", "tanh": "tanhs", "hardtanh": "hardtanhs", "softsign": "softsigns",
          "hardsigmoid": "hardsigmoids", "logsigmoid": "logsigmoids"}
# Centres at which an activation's derivative is probed for where it is least saturated.
PROBE = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
# The walks below follow single-user chains of a few ops (c * phi + b; a reshape or dropout
# before a layer), which end on their own; these bounds only cut pathological chains of
# data movement, far longer than any such pattern.
MAX_OPS_TO_USE = 16
MAX_OPS_TO_PRODUCER = 64


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


@dataclass(frozen=True)
class _Act:
    """A saturating activation and its gradient factor at init.

    Attributes:
        node: The activation's node.
        label: Its name in messages ('sigmoid', 'Tanh', 'clamp').
        dphi2: E[phi'^2] at its predicted pre-activation N(mu, v), with any constant scale after it.
        best: E[phi'^2] where the activation is least saturated (see ``PROBE``).
        mu: The pre-activation's mean.
        v: The pre-activation's variance.
        cost: Decades of gradient it costs, -0.5 * log10(dphi2).
        ratio: dphi2 / best, how saturated it is.
    """

    node: object
    label: str
    dphi2: float
    best: float
    mu: float
    v: float
    cost: float
    ratio: float


def _label(node) -> str:
    if node.kind == "act":
        return node.attrs.get("fn")
    if node.kind == "act_module":
        return node.module_type or "saturating activation"
    target = str(node.attrs.get("target", ""))  # aten.clamp.default -> clamp
    return target.split(".")[1] if target.count(".") >= 2 else "saturating activation"


def _unsaturated(phi: Phi) -> float | None:
    """max over a few centres of phi'(mu)^2: the gradient factor where phi is least saturated."""
    ms = [phi.moments(mu, 0.0) for mu in PROBE]
    return None if any(m is None for m in ms) else max(m.dphi2 for m in ms)


def _bounded(node) -> bool:
    """Whether an act_module / elementwise node saturates on both sides (sigmoid-like)."""
    phi = phi_of(node)
    if phi is None:
        return False
    ms = {h: phi.moments(h, 0.0) for h in (-20.0, 20.0) + PROBE}
    if any(m is None for m in ms.values()):
        return False
    d = {h: abs(m.dphi_mean) for h, m in ms.items()}
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
                if others and not all(const_like(result, i) for i in others):
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
    for _ in range(MAX_OPS_TO_USE):
        users = g.users.get(cur, [])
        if len(users) != 1:
            break
        n = g.by_name[users[0]]
        tensors = [i for i in n.inputs if i is not None and not const_like(result, i)]
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
    for _ in range(MAX_OPS_TO_PRODUCER):
        n = g.by_name.get(name) if name is not None else None
        if n is None:
            return ""
        if n.kind in ("linear", "conv"):
            return n.module
        if n.kind not in MOVES | {"add", "mul"} or not n.inputs:
            return ""
        name = n.inputs[0]
    return ""


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
    `nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`), or add residual connections
    around them. When the activations are saturated by too large a pre-activation, lower
    the init gain of the layer before them (`nn.init.xavier_uniform_(m.weight)`) or put
    `nn.LayerNorm(width)` before each of them. A LayerNorm does not cure an unsaturated
    sigmoid chain: a sigmoid's derivative is at most 1/4 at any input scale, so 8
    normalized sigmoid layers of width 32 still lose 3.6 decades (measured; this rule then
    stays silent, as the run is normalized, and GL101 reports the loss).

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
    bad = (Case(_sigmoid_mlp, (32, 64), at="1", severity="error"),
           Case(lambda: _xavier_tanh_mlp(std=0.5), (32, 64), at="1", severity="warning"),
           Case(_SaturatedHead, (32, 64), at="act", severity="warning"))

    def check(self, result):
        g = result.graph
        thr = result.summary.threshold
        min_run = int(self.opts["min_run"])
        min_dec = float(self.opts["min_decades"])
        sat_ratio = float(self.opts["saturated_ratio"])

        live = feeds_output(result)
        info: dict[str, _Act] = {}
        for node in g.nodes:
            if node.kind not in ("act", "act_module", "elementwise") or not node.inputs:
                continue
            if node.name not in live or not _is_saturating(node):
                continue
            x = forward_of(result, node.inputs[0])
            if x is None or x.blocked or x.const or _is_gate(result, node.name):
                continue
            phi = phi_of(node)
            m = phi.moments(x.mu, x.v) if phi is not None else None
            best = _unsaturated(phi) if m is not None else None
            if m is None or best is None:
                continue  # an op undefined on part of the Gaussian's support
            c2 = _post_scale(result, node.name)
            d2, best = c2 * m.dphi2, c2 * best
            if not (d2 > 0 and best > 0 and math.isfinite(d2)):
                continue
            info[node.name] = _Act(node=node, label=_label(node), dphi2=d2, best=best, mu=x.mu, v=x.v,
                                   cost=-0.5 * math.log10(d2), ratio=d2 / best)
        if not info:
            return

        preds = ChainWalker(result, info, THROUGH).predecessors()
        # Costliest run ending at each activation, the costliest first.
        cover = PathCover(list(info), {n: it.cost for n, it in info.items()}, preds)
        for path in cover:
            items = [info[n] for n in path]
            cost = sum(it.cost for it in items)
            span = self._span_decades(result, items[0].node, items[-1].node)
            # The gradient actually lost over the run: weights between the activations can
            # make up for them (tanh with torch's gain 5/3), and then nothing vanishes.
            net = -span if span is not None else cost
            saturated = [it for it in items if it.ratio < sat_ratio]
            if len(items) >= min_run and cost >= min_dec and net >= min_dec:
                cover.take(path)
                yield self._run_finding(result, items, cost, span, thr, sat_ratio)
            elif len(saturated) >= 2:
                cover.take(path)
                yield self._saturated_run_finding(result, items, saturated, cost, span, thr)

        for name, it in info.items():
            if name in cover.covered or it.ratio >= sat_ratio:
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
        labels = {it.label for it in items}
        label = next(iter(labels)) if len(labels) == 1 else ""
        return PLURAL.get(label, f"{label} activations") if label else "saturating activations"

    @staticmethod
    def _where(items) -> str:
        first, last = items[0].node, items[-1].node
        where = first.module or "the model"
        return f"at {where}" if last.module == first.module else f"from {where} to {last.module or 'the model'}"

    @staticmethod
    def _factor(items) -> str:
        lo = min(it.dphi2 for it in items)
        hi = max(it.dphi2 for it in items)
        return f"E[phi'^2] = {lo:.2g}" if hi - lo < 0.005 * max(hi, 1e-12) else f"E[phi'^2] {lo:.2g} to {hi:.2g}"

    def _gain_fix(self, result, saturated) -> str:
        prods = list(dict.fromkeys(p for p in (_producer(result, it.node.inputs[0]) for it in saturated) if p))
        if not prods:
            return ""
        return (f"a smaller init gain in {', '.join(prods[:4])}{' ...' if len(prods) > 4 else ''}: "
                f"nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)")

    def _run_finding(self, result, items, cost, span, thr, sat_ratio):
        first = items[0].node
        n = len(items)
        saturated = [it for it in items if it.ratio < sat_ratio]
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
        sev = self.escalate(cost, net, error_at=thr)
        return self.finding(result, msg, fix=fix, module=first.module, node=first.name, severity=sev,
                            activations=n, decades=round(cost, 3),
                            dphi2_min=round(min(it.dphi2 for it in items), 6),
                            dphi2_max=round(max(it.dphi2 for it in items), 6),
                            saturated=len(saturated), nodes=[it.node.name for it in items],
                            span_decades=None if span is None else round(span, 3), threshold=thr)

    def _saturated_run_finding(self, result, items, saturated, cost, span, thr):
        """A run whose weights make up for the activations' loss, but which is saturated."""
        first = items[0].node
        n = len(items)
        stds = [math.sqrt(it.v) for it in saturated]
        ratio = max(it.ratio for it in saturated)
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
        sev = self.escalate(cost, net, error_at=thr)
        return self.finding(result, msg, fix=fix, module=first.module, node=first.name, severity=sev,
                            activations=n, saturated=len(saturated), decades=round(cost, 3),
                            max_ratio=round(ratio, 4), nodes=[it.node.name for it in items],
                            span_decades=None if span is None else round(span, 3), threshold=thr)

    def _saturated_finding(self, result, it, thr):
        node = it.node
        cost = it.cost
        lost = 0.5 * math.log10(1.0 / it.ratio)
        where = node.module or "the model"
        prod = _producer(result, node.inputs[0])
        std = math.sqrt(it.v)
        mean = f" and mean {it.mu:+.2g}" if abs(it.mu) > 0.05 * std else ""
        msg = (f"{it.label} in {where} is saturated at init: its pre-activation has std {std:.2g}{mean}, "
               f"so E[phi'^2] = {it.dphi2:.2g}, {it.ratio:.2g} of its unsaturated {it.best:.2g}: "
               f"the gradient through it shrinks by {cost:.1f} decades ({lost:.1f} of them from saturation)")
        if prod:
            fix = (f"lower the init gain of {prod}, e.g. nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias), "
                   f"or put nn.LayerNorm before the {it.label}")
        else:
            fix = f"normalize the input of the {it.label} (nn.LayerNorm) or scale it down"
        sev = self.escalate(cost, error_at=thr)
        return self.finding(result, msg, fix=fix, module=node.module, node=node.name, severity=sev,
                            decades=round(cost, 3), saturation_decades=round(lost, 3), dphi2=round(it.dphi2, 6),
                            dphi2_unsaturated=round(it.best, 6), pre_std=round(math.sqrt(it.v), 4),
                            pre_mean=round(it.mu, 4), producer=prod, threshold=thr)
