"""Generated models: the static prediction against a real backward pass.

Models: MLPs, CNNs and residual stacks of depth 2-30, widths 128-256, five activations,
init scales from far too small to far too large, with and without normalization and
skip paths. For each, every weight's predicted log10 gradient RMS must match the measured
one after removing the model's common offset, and the verdicts must agree.

Tolerances come from two documented noise sources, not from what passes:
* the measurement: each seed draws new weights, inputs and g, so the spread of the
  per-seed differences (predicted - measured) carries both the measurement noise and the
  fluctuation of one weight draw; the bound is the two-sided 99.9% Student-t interval
  of their mean;
* finite width, which biases a single draw (docs/design.md §7.1): the band
  2 * 0.5 * sqrt(3 * beta) / ln 10 decades with beta = sum of 1/width over hidden layers.
A verdict is only required to agree when the predicted attenuation is further than that
band from the threshold (closer, either verdict is within the noise).
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradlint.api import as_example_inputs, predict
from gradlint.probing.measure import measure
from gradlint.engine.result import cause_of
from gradlint.base.report import DEFAULT_THRESHOLD
from gradlint.engine.summary import summarize
from helpers import T999

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}
SEEDS = 3


class Block(nn.Module):
    def __init__(self, width, act, norm, conv):
        super().__init__()
        self.norm = (nn.BatchNorm2d(width) if conv else nn.LayerNorm(width)) if norm else nn.Identity()
        self.layer = nn.Conv2d(width, width, 3, padding=1) if conv else nn.Linear(width, width)
        self.act = ACTS[act]()

    def forward(self, x):
        return self.act(self.layer(self.norm(x)))


class Net(nn.Module):
    def __init__(self, spec):
        super().__init__()
        conv = spec["family"] == "cnn"
        w = spec["width"]
        self.skip = spec["skip"]
        self.stem = nn.Conv2d(3, w, 3, padding=1) if conv else nn.Linear(w, w)
        self.blocks = nn.ModuleList(Block(w, spec["act"], spec["norm"], conv) for _ in range(spec["depth"]))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10)) if conv else nn.Linear(w, w)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and spec["init"] != "default":
                fan = m.weight[0].numel()
                gain = {"he": math.sqrt(2.0), "lecun": 1.0, "small": 0.3, "large": 3.0}[spec["init"]]
                nn.init.normal_(m.weight, std=gain / math.sqrt(fan))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x) if self.skip else b(x)
        return self.head(x)


specs = st.fixed_dictionaries({
    "family": st.sampled_from(["mlp", "cnn"]),
    "depth": st.integers(2, 30),
    "width": st.sampled_from([128, 256]),
    "act": st.sampled_from(sorted(ACTS)),
    "init": st.sampled_from(["default", "he", "lecun", "small", "large"]),
    "norm": st.booleans(),
    "skip": st.booleans(),
}).map(lambda s: {**s, "depth": min(s["depth"], 8), "width": 32} if s["family"] == "cnn" else s)


def band(spec) -> float:
    beta = (spec["depth"] + 1) / spec["width"]
    return 2 * 0.5 * math.sqrt(3 * beta) / math.log(10)


def measured_verdict(result, meas):
    g = result.graph
    numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in result.propagation.nodes}
    q = {n.name: meas.node_q.get(n.name, n.q) for n in result.propagation.nodes}
    s = {n.name: meas.node_s.get(n.name, n.s) for n in result.propagation.nodes}
    causes = {n.name: cause_of(n) for n in g.nodes}
    return summarize(g, q, s, numel, causes, (), None, DEFAULT_THRESHOLD, g.batch_size)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(spec=specs)
def test_prediction_matches_backward_pass(spec):
    shape = (8, 3, 16, 16) if spec["family"] == "cnn" else (64, spec["width"])
    diffs: dict[str, list[float]] = {}
    verdicts = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        model = Net(spec)
        ex = as_example_inputs(model, shape)
        report, result = predict(model, ex)
        meas = measure(model, ex, seeds=1, seed0=50 + seed)
        pairs = {}
        for p in report.params:
            m = meas.param_rms(p.name)
            if len(p.shape) >= 2 and p.predicted_grad_rms and m and m > 0 and math.isfinite(math.log10(m)):
                pairs[p.name] = math.log10(p.predicted_grad_rms) - math.log10(m)
        if not pairs:
            return  # every gradient underflowed even in float64: nothing to compare
        offset = statistics.median(pairs.values())
        for name, d in pairs.items():
            diffs.setdefault(name, []).append(d - offset)
        verdicts.append((report.summary, measured_verdict(result, meas)))
    b = band(spec)
    for name, ds in diffs.items():
        if len(ds) < 2:
            continue
        se = statistics.stdev(ds) / math.sqrt(len(ds))
        tol = max(T999[len(ds) - 1] * se, b)
        assert abs(statistics.mean(ds)) <= tol, (spec, name, ds, tol)
    for pred, meas in verdicts:
        near = min(abs(pred.attenuation_decades - DEFAULT_THRESHOLD),
                   abs(pred.attenuation_decades + DEFAULT_THRESHOLD)) < b
        if not near:
            assert pred.verdict == meas.verdict, (spec, pred.verdict, pred.attenuation_decades, meas.verdict,
                                                  meas.attenuation_decades)
