"""Generated models: the static prediction against a real backward pass.

Models: MLPs, CNNs and residual stacks of depth 2-30, widths 128-256, five activations,
init scales from far too small to far too large, with and without normalization and
skip paths. For each, every weight's predicted log10 gradient RMS must match the measured
one after removing the model's common offset, and the verdicts must agree.

Tolerances come from two documented noise sources, not from what passes:
* the measurement: each seed draws new weights, inputs and g, so the spread of the
  per-seed differences (predicted - measured) carries both the measurement noise and the
  fluctuation of one weight draw; the bound is the two-sided 99.9% Student-t interval
  of their mean over six seeds;
* finite width, which biases a single draw (docs/design.md §7.1): the band
  2 * 0.5 * sqrt(3 * beta) / ln 10 decades with beta = sum of 1/width over hidden layers.
The mean shift of unnormalized residual stacks (docs/design.md §7.2) has no such band: those
models' weights are left out, counted, and their verdicts compared.
A verdict is only required to agree when the predicted attenuation is further than that
band from the threshold (closer, either verdict is within the noise). What cannot be
compared is counted, and the test holds floors on what was.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pytest
import torch
import torch.nn as nn
from helpers import T999
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from gradlint.api import as_example_inputs, predict
from gradlint.base.report import DEFAULT_THRESHOLD
from gradlint.engine.result import cause_of
from gradlint.engine.summary import summarize
from gradlint.probing.measure import measure

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}
# Six seeds per model: the two-sided 99.9% Student-t quantile at 5 degrees of freedom is 6.87,
# a bound of 6.87 / sqrt(6) = 2.8 per-seed standard deviations on the mean difference. Three
# seeds gave 31.6 / sqrt(3) = 18, more than any plausible error. A weight is compared when at
# least MIN_SEEDS of its draws were measurable. Ten drawn models and two fixed ones at six seeds
# take about as long as the 25 models at three seeds did: 3 min on the 2-core machine under
# load, 26 s idle.
SEEDS = 6
MIN_SEEDS = 3
EXAMPLES = 10


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


# Two models where the prediction matters, besides the drawn ones: a deep tanh stack at the
# default init vanishes, a deep ReLU stack at He init is at the edge.
DEEP_TANH = {"family": "mlp", "depth": 30, "width": 128, "act": "tanh", "init": "default", "norm": False, "skip": False}
DEEP_RELU = {"family": "mlp", "depth": 20, "width": 256, "act": "relu", "init": "he", "norm": False, "skip": False}


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


def mean_shift(spec) -> bool:
    """A residual stack without normalization whose branches end in a non-centred activation.

    Its stream gathers a common positive mean, and at finite width the backward growth then
    outruns mean field toward the input (docs/design.md §7.2: +0.54 decades at the first of
    20 blocks at width 256, shrinking as width^-0.4; measured here up to 1.2 decades at 28
    blocks). Mean field has no band for it, so these models' weights are not compared; their
    verdicts are.
    """
    return spec["skip"] and not spec["norm"] and spec["act"] != "tanh"


def compare(spec, tally: Counter) -> None:
    """Predictions against measurements for SEEDS draws of one spec; ``tally`` counts what was
    compared and what could not be."""
    shape = (8, 3, 16, 16) if spec["family"] == "cnn" else (64, spec["width"])
    diffs: dict[str, list[float]] = {}
    names: set[str] = set()
    verdicts = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        model = Net(spec)
        ex = as_example_inputs(model, shape)
        report, result = predict(model, ex)
        meas = measure(model, ex, seeds=1, seed0=50 + seed)
        pairs = {}
        for p in report.params:
            if len(p.shape) < 2:
                continue
            names.add(p.name)
            m = meas.param_rms(p.name)
            if not (m and m > 0 and math.isfinite(math.log10(m))):
                continue  # underflowed even in float64: nothing to compare (counted below)
            assert p.predicted_grad_rms, (spec, p.name, "a measured gradient without a prediction", m)
            pairs[p.name] = math.log10(p.predicted_grad_rms) - math.log10(m)
        if pairs:
            offset = statistics.median(pairs.values())
            for name, d in pairs.items():
                diffs.setdefault(name, []).append(d - offset)
        verdicts.append((report.summary, measured_verdict(result, meas)))
    b = band(spec)
    if mean_shift(spec):
        tally["weights left out: mean shift in an unnormalized residual stack"] += len(names)
        diffs = {}
    tally["weights"] += len(names)
    for name, ds in diffs.items():
        if len(ds) < MIN_SEEDS:
            continue
        se = statistics.stdev(ds) / math.sqrt(len(ds))
        tol = max(T999[len(ds) - 1] * se, b)
        assert abs(statistics.mean(ds)) <= tol, (spec, name, ds, tol)
        tally["weights compared"] += 1
    for pred, meas in verdicts:
        tally["verdicts"] += 1
        near = min(abs(pred.attenuation_decades - DEFAULT_THRESHOLD),
                   abs(pred.attenuation_decades + DEFAULT_THRESHOLD)) < b
        if near:
            continue
        assert pred.verdict == meas.verdict, (spec, pred.verdict, pred.attenuation_decades, meas.verdict,
                                              meas.attenuation_decades)
        tally[f"{pred.verdict} verdicts compared"] += 1


@pytest.mark.slow
def test_prediction_matches_backward_pass():
    tally: Counter = Counter()

    # No shrinking: a spec is seven fields that read as a model already, and each shrink step
    # costs six checks and six backward passes.
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @example(spec=DEEP_TANH)
    @example(spec=DEEP_RELU)
    @given(spec=specs)
    def matches(spec):
        compare(spec, tally)

    matches()
    print(dict(tally))
    # What could not be compared is counted, not skipped in silence: weights of mean-shifted
    # residual stacks, a weight whose gradient underflows in float64 in most seeds, a verdict
    # within the band of the threshold. Measured on this run (`nice .venv/bin/python -m pytest
    # -q -s -p no:cacheprovider tests/test_property.py` prints the counts): 150 of 196 weights
    # compared (46 left out for the mean shift), 66 of 72 verdicts, 18 of them vanishing and 18
    # exploding. The floors sit a little under.
    verdicts = sum(n for k, n in tally.items() if k.endswith(" verdicts compared"))
    assert tally["weights compared"] >= 0.7 * tally["weights"], tally
    assert verdicts >= 0.85 * tally["verdicts"], tally
    assert tally["vanishing verdicts compared"] and tally["exploding verdicts compared"], tally
