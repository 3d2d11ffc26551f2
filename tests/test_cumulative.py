"""torch.cumsum (docs/design.md §4.3: P4) against a real float64 backward pass of the model
itself (tests/helpers.py Trials): a running sum between two Linear layers, over time, over
features and over the batch, with zero-mean and nonzero-mean inputs, at several lengths.

Before P4 cumsum had no rule: every weight upstream and downstream of it was unknown (RWKV-v1's
time mixing, benchmarks/realworld.py).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from helpers import Trials

import gradlint
from gradlint.engine.transfers.cumulative import pair_mean, ramp

# P4 is exact for position-exchangeable second moments (docs/design.md §4.3); the floor only
# covers what the seeds' spread does not: finite width (§7.1) on 64 units.
FLOOR = 0.03


class RunningSum(nn.Module):
    """b(cumsum(act(a(x)), dim)), a's bias set to ``bias`` (the mean of the summed terms)."""

    def __init__(self, dim: int = 1, bias: float | None = None, relu: bool = False, d: int = 64):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        if bias is not None:
            nn.init.constant_(self.a.bias, bias)
        self.dim, self.relu = dim, relu

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cumsum(torch.relu(h) if self.relu else h, dim=self.dim))


def _check(t: Trials, names=("a.weight", "a.bias", "b.weight", "b.bias")):
    for report, _ in t.pairs:
        preds = {p.name: p.predicted_grad_rms for p in report.params}
        for n in names:
            assert preds[n] is not None and preds[n] > 0, f"{n}: predicted {preds[n]}"
    node = t.node("cumulative")
    t.check_node(node, "q", FLOOR)
    for n in names:
        t.check_param(n, FLOOR)


@pytest.mark.parametrize("n", [4, 32, 128])
@pytest.mark.parametrize("bias", [0.0, None, 1.0], ids=["zero-mean", "default-bias", "mean-1"])
def test_cumsum_over_time(n, bias):
    """Over time: the inputs' mean (a's bias) and their correlation across positions (a's
    per-unit bias, kt) both enter q' through B = (n² − 1)/3."""
    t = Trials(lambda: RunningSum(1, bias), (8, n, 64), seeds=4)
    _check(t)


@pytest.mark.parametrize("n", [8, 64])
def test_cumsum_of_relu_over_time(n):
    """Post-ReLU terms: mean, variance and the positive correlation across positions of the
    ReLU's common part."""
    t = Trials(lambda: RunningSum(1, None, relu=True), (8, n, 64), seeds=4)
    _check(t)


@pytest.mark.parametrize("dim,shape", [(-1, (16, 8, 64)), (0, (16, 8, 64))], ids=["features", "batch"])
def test_cumsum_over_features_and_batch(dim, shape):
    """Over features (distinct features share the common mean only) and over the batch (the
    gradient of a sample collects those of the samples after it)."""
    t = Trials(lambda: RunningSum(dim, 0.5), shape, seeds=4)
    _check(t)


def test_ramp_and_pair_mean_count_every_pair():
    """A, B and the pair mean against direct sums over i, j for one n."""
    n, q, c = 7, 2.0, 0.3
    cov = [[(min(i, j) + 1) * (q - c) + (i + 1) * (j + 1) * c for j in range(n)] for i in range(n)]
    a, b = ramp(n)
    assert math.isclose(a * q + b * c, sum(cov[i][i] for i in range(n)) / n)
    off = sum(cov[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert math.isclose(pair_mean(n, 1, q, c), off)
    # Two other positions (m = 2) share no term: (i + 1)(j + 1)·c over all i, j.
    other = sum((i + 1) * (j + 1) * c for i in range(n) for j in range(n)) / n ** 2
    same, across = 2 * n * (n - 1), 2 * n * n  # ordered pairs in one row of positions, and in two
    assert math.isclose(pair_mean(n, 2, q, c), (same * off + across * other) / (same + across))


class RunningProduct(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.b(torch.cumprod(torch.sigmoid(self.a(x)), dim=1))


def test_cumprod_stays_unknown():
    """cumprod has no rule (its moments need the per-unit decays, §4.3 P4): unknown, not zero."""
    report = gradlint.check(RunningProduct(), (4, 16, 64))
    preds = {p.name: p.predicted_grad_rms for p in report.params}
    assert preds["a.weight"] is None and preds["a.bias"] is None
