"""GL203 dead-relu-risk."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.engine import gaussian
from gradlint.engine.state import Fwd
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import const_like, forward_of

DEAD_FNS = {"relu", "relu6"}
# Between a layer and the ReLU it feeds: data movement only.
MOVES = {"identity", "select", "getitem", "expand", "datamove", "dropout"}
PRODUCERS = {"linear", "conv", "layer_norm", "rms_norm", "group_norm", "batch_norm"}
# A unit counts as dead when it is active for fewer than 1% of inputs: P(N(0,1) > 2.326) = 1%.
Z_DEAD = 2.3263478740408408
# The layer a ReLU reads is a few ops before it at most (a reshape, dropout, a bias or scale):
# the walk back gives up after this many, as no such chain is that long.
MAX_OPS_TO_PRODUCER = 32


def _mlp(depth: int = 4, width: int = 64, bias: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.constant_(lin.bias, bias)
        layers.append(lin)
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _producer(result, name: str | None):
    """The layer (Linear, Conv or normalization) whose output the ReLU reads, through data movement."""
    g = result.graph
    for _ in range(MAX_OPS_TO_PRODUCER):
        n = g.by_name.get(name) if name is not None else None
        if n is None:
            return None
        if n.kind in PRODUCERS:
            return n
        others = [i for i in n.inputs if i is not None and i != (n.inputs[0] if n.inputs else None)]
        if n.kind in MOVES or (n.kind in ("add", "mul") and all(const_like(result, i) for i in others)):
            name = n.inputs[0] if n.inputs else None
            continue
        return None
    return None


def _dead_units(x: Fwd, fn: str) -> float:
    """Fraction of units active for fewer than 1% of inputs.

    A unit's pre-activation is its own offset (bias plus what every input shares, variance
    k - mu^2 across units) plus a part that varies from input to input (variance q - k).
    """
    if fn != "relu":
        return float("nan")
    v_off = max(x.k - x.mu * x.mu, 0.0)
    v_in = max(x.q - x.k, 0.0)
    edge = -Z_DEAD * math.sqrt(v_in) - x.mu  # offsets below this leave the unit dead
    if v_off <= 0:
        return 1.0 if edge > 0 else 0.0
    return gaussian.normal_cdf(edge / math.sqrt(v_off))


@dataclass(frozen=True)
class _Relu:
    """A ReLU that leaves too many units inactive.

    Attributes:
        node: Its node.
        x: The forward statistics of its input.
        fn: ``relu`` or ``relu6``.
        inactive: P(h <= 0) (for ReLU6 also P(h >= 6)), over units and inputs.
        dphi2: E[phi'^2].
        cost: Decades of gradient lost against a zero-mean ReLU (0 or more).
        dead: The share of units off for almost every input (NaN for ReLU6).
    """

    node: object
    x: Fwd
    fn: str
    inactive: float
    dphi2: float
    cost: float
    dead: float


class DeadReluRisk(Rule):
    """A negative pre-activation mean leaves most ReLU units inactive at initialization.

    ## What it finds
    ReLU and ReLU6 activations whose predicted pre-activation N(mu, v) (the forward
    statistics of their input: a negative bias, or a negative shift from earlier layers)
    leaves more than `max_inactive` of the units inactive, P(h <= 0) (for ReLU6 also
    P(h >= 6)), averaged over units and inputs. The message adds the share of units that
    are dead for almost every input, from the spread of the units' offsets (bias and
    shared input) against the input-to-input variation.

    ## Why it matters
    An inactive ReLU passes no gradient: its weights and everything before it learn only
    through the few active units, and a unit that is inactive for every input never
    recovers ("dying ReLU", Lu et al. 2019, "Dying ReLU and Initialization: Theory and
    Numerical Examples"; He et al. 2015 for the zero-mean pre-activations He init assumes).
    The gradient through the layer is multiplied by the active fraction instead of 1/2.

    ## Example
    A ReLU MLP with He init whose biases are all set to -2.5
    (`nn.init.constant_(m.bias, -2.5)`): 96% of the first layer's units are off for a
    unit-variance input, and nearly all of the later layers'.

    ## Fix
    Initialize the biases to zero (`nn.init.zeros_(m.bias)`) or to a small positive value
    (`nn.init.constant_(m.bias, 0.01)`); for a normalization layer before the ReLU, zero
    its shift (`nn.init.zeros_(norm.bias)`).

    ## Known limits
    Only the mean and the mean square of each bias are known to the engine, so the dead
    share assumes the units' offsets are Gaussian across units. Inputs are taken as
    N(0, 1) per element; data with a large negative mean is not seen.
    """

    code = "GL203"
    name = "dead-relu-risk"
    severity = Severity.WARNING
    category = "init"
    options = {"max_inactive": 0.9}
    good = (Case(lambda: _mlp(4, 64, 0.0), (32, 64)), Case(lambda: _mlp(4, 64, 0.1), (32, 64)),
            Case(lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()), (32, 64)))
    # At the first ReLU the chain's loss is still below the threshold (a warning); later ones pass it (errors).
    bad = (Case(lambda: _mlp(4, 64, -2.5), (32, 64), at="1", severity="warning"),
           Case(lambda: _mlp(2, 64, -3.0), (32, 64), at="1", severity="warning"))

    def check(self, result):
        g = result.graph
        thr = result.summary.threshold
        max_inactive = float(self.opts["max_inactive"])

        flagged: dict[str, _Relu] = {}
        for node in g.nodes:
            if node.kind != "act" or node.attrs.get("fn") not in DEAD_FNS or not node.inputs:
                continue
            x = forward_of(result, node.inputs[0])
            if x is None or x.const or x.blocked:
                continue  # no gradient would flow through it anyway (detach, no_grad, constants)
            fn = node.attrs["fn"]
            m = gaussian.moments(fn, x.mu, x.v)
            inactive = 1.0 - m.dphi_mean
            if inactive <= max_inactive:
                continue
            # Against a zero-mean ReLU, which passes half the gradient's energy.
            cost = 0.5 * math.log10(0.5 / m.dphi2) if m.dphi2 > 0 else math.inf
            flagged[node.name] = _Relu(node=node, x=x, fn=fn, inactive=inactive, dphi2=m.dphi2, cost=max(cost, 0.0),
                                       dead=_dead_units(x, fn))
        if not flagged:
            return

        # Costliest chain of flagged ReLUs ending at each one: their losses multiply.
        names = list(flagged)
        bit = {n: 1 << i for i, n in enumerate(names)}
        anc: dict[str, int] = {}
        chain: dict[str, float] = {}
        for node in g.nodes:
            a = 0
            for i in node.inputs:
                if i is not None and i in anc:
                    a |= anc[i] | bit.get(i, 0)
            if a:
                anc[node.name] = a
            if node.name in flagged:
                before = [chain[n] for n in names if a & bit[n] and n in chain]
                chain[node.name] = flagged[node.name].cost + max(before, default=0.0)
                anc.setdefault(node.name, 0)

        # One finding per place in the source (a loop runs the same line many times).
        groups: dict[tuple, list[str]] = {}
        for name, it in flagged.items():
            site = it.node.call_site
            key = ("site", site.path, site.line) if site else ("module", it.node.module)
            groups.setdefault(key, []).append(name)
        for members in groups.values():
            yield self._finding(result, [flagged[n] for n in members], max(chain[n] for n in members), thr)

    def _finding(self, result, items, chain_cost, thr):
        worst = max(items, key=lambda it: it.inactive)
        node, x, fn = worst.node, worst.x, worst.fn
        label = "ReLU6" if fn == "relu6" else "ReLU"
        where = node.module or "the model"
        prod = _producer(result, node.inputs[0])
        bias_name = prod.params.get("bias") if prod is not None else None
        bias = result.propagation.param_stats.get(bias_name) if bias_name else None
        std = math.sqrt(x.v)
        n = len(items)
        mods = list(dict.fromkeys(it.node.module for it in items))
        what = f"{label} in {where}" if n == 1 else f"{n} {label}s in {where}"
        if len(mods) > 1:
            what += f" and {len(mods) - 1} more module{'s' if len(mods) > 2 else ''} (the worst shown)"
        msg = (f"{what}: the pre-activation has mean {x.mu:+.2g} against std {std:.2g}"
               + (f" (bias of {prod.module}: mean {bias.mean:+.2g})" if bias is not None and prod.module else "")
               + f", so {worst.inactive:.1%} of the units are inactive at init")
        if worst.dead == worst.dead and worst.dead >= 0.01:  # not NaN
            msg += f" and about {worst.dead:.0%} are off for almost every input"
        if math.isfinite(worst.cost):
            msg += f": the gradient through it is {worst.cost:.1f} decades below a zero-mean {label}'s"
        else:
            msg += ": no gradient passes through it"
        if math.isfinite(chain_cost) and chain_cost > worst.cost + 0.05:
            msg += f", {chain_cost:.1f} decades along the chain of such layers"
        if prod is not None and bias is not None and (bias.mean < 0 or fn == "relu6"):
            target = prod.module or "the layer"
            fix = (f"initialize the bias of {target} to zero or slightly positive, with m = {target}:\n"
                   f"nn.init.zeros_(m.bias)  # or nn.init.constant_(m.bias, 0.01)")
        elif fn == "relu6" and x.mu > 0:
            fix = "scale the ReLU6's input down (lower init gain of the layer before it) so fewer units sit above 6"
        else:
            fix = ("remove the negative shift before the ReLU (nn.init.zeros_(m.bias) on the layers feeding it), "
                   "or normalize its input (nn.LayerNorm / nn.BatchNorm)")
        sev = self.escalate(chain_cost, error_at=thr)
        return self.finding(result, msg, fix=fix, module=node.module, node=node.name, severity=sev,
                            inactive_fraction=round(worst.inactive, 4),
                            dead_units=None if worst.dead != worst.dead else round(worst.dead, 4),
                            pre_mean=round(x.mu, 4), pre_std=round(std, 4), decades=round(worst.cost, 3),
                            chain_decades=round(chain_cost, 3) if math.isfinite(chain_cost) else None,
                            activations=n, producer=prod.module if prod is not None else None, threshold=thr)
