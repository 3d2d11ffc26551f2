"""GL102 exploding-gradient."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import trunk_crossing


def _std1_relu_mlp(depth: int = 10, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(width, width, bias=False)
        nn.init.normal_(lin.weight, std=1.0)
        layers += [lin] + ([nn.ReLU()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


def _he_relu_mlp(depth: int = 10, width: int = 64) -> nn.Module:
    m = _std1_relu_mlp(depth, width)
    for x in m:
        if isinstance(x, nn.Linear):
            nn.init.kaiming_normal_(x.weight, nonlinearity="relu")
    return m


class _ResidualMLP(nn.Module):
    """Unnormalized residual blocks x + fc2(relu(fc1(x))) with He init: the stream's forward
    signal grows block after block."""

    def __init__(self, blocks: int = 12, width: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        for lin in [*self.fc1, *self.fc2]:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        self.head = nn.Linear(width, width)

    def forward(self, x):
        for fc1, fc2 in zip(self.fc1, self.fc2):
            x = x + fc2(torch.relu(fc1(x)))
        return self.head(x)


class ExplodingGradient(Rule):
    """The gradient, or the signal it is multiplied by, is predicted to explode.

    ## What it finds
    Models whose predicted gradient signal grows by more than `threshold` decades between
    the output and some earlier layer (along the trunk), or whose forward signal grows by
    that much since the last normalization: an init scale far too large (even where every
    weight gradient is inflated alike), residual stacks whose signal doubles per block, deep
    BatchNorm stacks whose gradient grows toward the input.

    ## Why it matters
    Exploding gradients make the first steps of training diverge or overflow, and force
    learning rates too small for the rest of the model (Pascanu et al. 2013; Yang et al.
    2019 for BatchNorm; Zhang et al. 2019 for unnormalized ResNets).

    ## Example
    A 10-layer bias-free ReLU MLP of width 64 with weights ~ N(0, 1): the output is about
    7.5 decades larger than the input, and so is every weight gradient.

    ## Fix
    Initialize for the fan-in (`nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`),
    scale or zero-init residual branches, or add residual paths around BatchNorm blocks.

    ## Known limits
    Mean field is exact in expectation; narrow layers (width below ~32) fluctuate around it.
    """

    code = "GL102"
    name = "exploding-gradient"
    severity = Severity.ERROR
    category = "exploding"
    options = {"threshold": None}  # None: the run's --threshold
    good = (Case(_he_relu_mlp, (32, 64)),)
    bad = (Case(_std1_relu_mlp, (32, 64), severity="error"),
           Case(_ResidualMLP, (32, 64), at="head", severity="error"))

    def check(self, result):
        s = result.summary
        thr = self.threshold(result)
        if s.attenuation_decades > -thr and not math.isinf(s.trunk_amplification):
            return
        c = trunk_crossing(result, thr, vanishing=False)
        growth = -s.attenuation_decades
        kind = "gradient" if s.trunk_amplification >= s.forward_growth else "forward signal"
        where = c.module or "the model"
        msg = (f"{kind} explodes: at {where} it is 10^{growth:.1f} of the output's"
               if kind == "gradient" else
               f"forward signal explodes: at {where} it is 10^{growth:.1f} of its scale "
               f"at the last normalization or input")
        yield self.finding(result, c.message(msg), fix=c.fix, module=c.module, node=c.node, **c.evidence,
                           strongest=s.strongest, threshold=thr)
