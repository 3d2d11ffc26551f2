"""Shared test helpers: predictions next to real backward passes, with noise-derived tolerances.

Each comparison draws the model's weights, the inputs and the loss weights g afresh per
seed, predicts from that seed's actual weights, and measures once. The per-seed difference
(predicted - measured, in decades) then carries both the measurement noise and the
finite-width fluctuation of one weight draw (docs/design.md §7.1); the test
asserts that its mean is within 4 standard errors of zero, or within the accuracy
docs/design.md verifies for the rule, whichever is larger. "Zero" means: inside the two-sided
99.9% confidence interval of the mean, from Student's t with seeds - 1 degrees of freedom
(with so few seeds the standard error is itself uncertain).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
import torch.nn as nn

from gradlint.api import as_example_inputs, predict
from gradlint.probing.measure import measure

# Two-sided 99.9% quantiles of Student's t by degrees of freedom.
T999 = {1: 636.6, 2: 31.60, 3: 12.92, 4: 8.610, 5: 6.869, 6: 5.959, 7: 5.408, 8: 5.041, 9: 4.781, 10: 4.587,
        11: 4.437, 15: 4.073, 19: 3.883}


def measured_log_rms(model: nn.Module, shape: tuple[int, ...], seeds: int = 4) -> dict[str, float]:
    """Per parameter, the mean over seeds of log10 RMS of the gradient of the model itself
    (float64, train mode, loss Σ g·y with g ~ N(0, 1), input N(0, 1) of ``shape``)."""
    acc: dict[str, float] = {}
    real = model.double().train()
    for s in range(seeds):
        torch.manual_seed(100 + s)
        real.zero_grad(set_to_none=True)
        y = real(torch.randn(*shape, dtype=torch.float64))
        (torch.randn_like(y) * y).sum().backward()
        for n, p in real.named_parameters():
            acc[n] = acc.get(n, 0.0) + 0.5 * math.log10(float(p.grad.pow(2).mean())) / seeds
    return acc


def log_rms(e2: float) -> float:
    return 0.5 * math.log10(e2) if e2 > 0 else -math.inf


def decades(rel: float) -> float:
    """A relative accuracy on a second moment (the note's +-x%) in decades of RMS."""
    return 0.5 * math.log10(1 + rel)


class Trials:
    """Per-seed predictions and measurements of one architecture."""

    def __init__(self, build: Callable[[], nn.Module], inputs, seeds: int = 6):
        self.pairs = []  # (report, measurement) per seed
        self.results = []  # the engine's result beside each report
        for i in range(seeds):
            torch.manual_seed(1000 + i)
            model = build()
            ex = as_example_inputs(model, inputs)
            report, result = predict(model, ex)
            self.pairs.append((report, measure(model, ex, seeds=1, seed0=100 + i)))
            self.results.append(result)

    @property
    def report(self):
        return self.pairs[0][0]

    def node(self, kind: str, index: int = 0) -> str:
        return [n.name for n in self.results[0].propagation.nodes if n.kind == kind][index]

    def check_diffs(self, label: str, diffs: list[float], preds: list[float], floor: float):
        """The test on per-seed differences (predicted - measured, one per pair)."""
        mean = statistics.mean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
        tol = max(floor, T999[len(diffs) - 1] * se)
        assert abs(mean) <= tol, (f"{label}: predicted {statistics.mean(preds):.3f}, measured "
                                  f"{statistics.mean(p - d for p, d in zip(preds, diffs)):.3f} decades "
                                  f"(mean difference {mean:+.3f}, tolerance {tol:.3f})")
        return mean, tol

    def check_node(self, name: str, what: str, floor: float):
        diffs, preds = [], []
        for (_, meas), result in zip(self.pairs, self.results):
            n = next(x for x in result.propagation.nodes if x.name == name)
            p = log_rms(n.q if what == "q" else n.s)
            m = log_rms((meas.node_q if what == "q" else meas.node_s)[name])
            preds.append(p)
            diffs.append(p - m)
        return self.check_diffs(f"{name}.{what}", diffs, preds, floor)

    def check_param(self, name: str, floor: float):
        diffs, preds = [], []
        for report, meas in self.pairs:
            p = next(x for x in report.params if x.name == name)
            pv = math.log10(p.predicted_grad_rms)
            preds.append(pv)
            diffs.append(pv - log_rms(meas.param_ms[name][0]))
        return self.check_diffs(name, diffs, preds, floor)


def benchmark_corpus() -> list:
    """The accuracy benchmark's model corpus (benchmarks/corpus.py ``CORPUS``), which the
    tests also run. Loaded from its file: benchmarks/ is not a package on the test path, and
    putting the repository root there would make its ``rules/`` folder importable as ``rules``."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "benchmark_corpus"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve the module by name while it runs
        spec.loader.exec_module(module)
    return sys.modules[name].CORPUS


# -- a model whose layers a helper in another file builds (docs/cli.md's example) -----------------
# In helper/layers.py the nn.Linear is line 5 and the nn.init call line 6; deep.py calls the
# helper on line 11. Findings about the init point into layers.py, "called from deep.py:11".

HELPER_LAYERS = """\
import torch.nn as nn


def make_layer(width):
    layer = nn.Linear(width, width)
    nn.init.normal_(layer.weight, std=1.0)
    return layer
"""
HELPER_DEEP = """\
import torch.nn as nn
from layers import make_layer

import gradlint


@gradlint.target(inputs=(64, 128))
class Deep(nn.Module):
    def __init__(self, depth=10, width=128):
        super().__init__()
        self.layers = nn.ModuleList([make_layer(width) for _ in range(depth)])
        self.act = nn.ReLU()

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return x
"""
