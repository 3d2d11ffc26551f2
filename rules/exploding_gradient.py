"""GL102 exploding-gradient."""

from __future__ import annotations

import math

import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import describe_attribution, first_crossing, fix_for


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
    bad = (Case(_std1_relu_mlp, (32, 64)),)

    def check(self, result):
        s = result.summary
        thr = float(self.opts["threshold"]) if self.opts["threshold"] is not None else float(result.summary.threshold)
        if s.attenuation_decades > -thr and not math.isinf(s.trunk_amplification):
            return
        node, module = first_crossing(result, thr, vanishing=False)
        causes = describe_attribution(s.attribution, s.counts)
        growth = -s.attenuation_decades
        kind = "gradient" if s.trunk_amplification >= s.forward_growth else "forward signal"
        where = module or "the model"
        msg = (f"{kind} explodes: at {where} it is 10^{growth:.1f} of the output's"
               if kind == "gradient" else
               f"forward signal explodes: at {where} it is 10^{growth:.1f} of its scale at the last normalization or input")
        if causes:
            msg += f" ({causes})"
        yield self.finding(result, msg, fix=fix_for(result, vanishing=False), module=module, node=node,
                           attenuation_decades=round(s.attenuation_decades, 3),
                           attribution={k: round(v, 3) for k, v in s.attribution.items()},
                           strongest=s.strongest, threshold=thr)
