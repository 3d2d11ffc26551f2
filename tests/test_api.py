"""The programmatic API contract: ``gradlint.check(model, inputs)`` and ``Report.to_dict()``."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import gradlint
from gradlint.base.report import DEFAULT_THRESHOLD


def mlp(act=nn.ReLU, depth=6, width=64, init=None):
    layers = []
    for i in range(depth):
        lin = nn.Linear(width, width)
        if init == "kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        layers += [lin] + ([act()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


def test_to_dict_contract():
    report = gradlint.check(mlp(nn.Sigmoid, depth=20), (16, 64))
    d = report.to_dict()
    json.dumps(d)
    for key in ("target", "status", "error", "analysis", "summary", "params", "findings"):
        assert key in d
    assert d["status"] == "ok" and d["error"] is None and d["analysis"] == "export"
    assert set(d["summary"]) >= {"verdict", "attenuation_decades"}
    p = d["params"][0]
    assert set(p) >= {"name", "shape", "module", "predicted_grad_rms", "measured_grad_rms"}
    assert p["name"] == "0.weight" and p["shape"] == [64, 64] and p["module"] == "0" and p["measured_grad_rms"] is None
    f = d["findings"][0]
    assert set(f) >= {"code", "name", "severity", "category", "message", "fix", "path", "line", "column", "module",
                      "evidence"}
    assert f["code"] == "GL101" and f["severity"] == "error" and f["category"] == "vanishing"
    assert not report.ok


@pytest.mark.parametrize("inputs", [
    (8, 64), [(8, 64)], {"input": (8, 64)}, lambda: torch.randn(8, 64), torch.randn(8, 64),
], ids=["shape", "list", "dict", "callable", "tensor"])
def test_input_declarations(inputs):
    report = gradlint.check(mlp(init="kaiming"), inputs)
    assert report.ok and report.summary.verdict == "healthy"


class _LSTMWithState(nn.Module):
    """forward(ids, hidden) as the PyTorch examples' word-language model: a state tuple, a flag."""

    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(50, 16), nn.LSTM(16, 16), nn.Linear(16, 50)

    def forward(self, ids, hidden, scale=1.0):
        out, hidden = self.rnn(self.emb(ids), hidden)
        return self.head(out) * scale, hidden


def test_real_arguments_nested_and_beside_plain_values_are_taken_as_given():
    ids, hidden = torch.randint(0, 50, (7, 2)), (torch.zeros(1, 2, 16), torch.zeros(1, 2, 16))
    for inputs in [(ids, hidden), (ids, hidden, 0.5), [ids, list(hidden)]]:
        report = gradlint.check(_LSTMWithState(), inputs)
        assert report.analysis == "export", report.inputs
        assert all(p.predicted_grad_rms for p in report.params)


def test_token_inputs():
    model = nn.Sequential(nn.Embedding(100, 32), nn.Linear(32, 32))
    report = gradlint.check(model, gradlint.tokens((4, 16), vocab=100))
    assert report.analysis == "export" and report.ok


def test_inferred_inputs_are_said():
    report = gradlint.check(mlp(init="kaiming"))
    assert "inferred" in report.inputs


def test_bad_arguments():
    with pytest.raises(gradlint.InputError, match="torch.nn.Module"):
        gradlint.check("not a model")
    with pytest.raises(gradlint.InputError, match="fail_on"):
        gradlint.check(mlp(), (8, 64), fail_on="fatal")
    with pytest.raises(gradlint.InputError):
        gradlint.check(mlp(), (8, -1))


# -- attenuation_decades: what it counts and what it leaves alone ----------------------------

def test_attenuation_counts_saturation():
    s = gradlint.check(mlp(nn.Sigmoid, depth=20, width=128), (32, 128)).summary
    assert s.verdict == "vanishing" and s.attenuation_decades > 10
    assert min(s.attribution, key=s.attribution.get) == "saturating activations"


def test_attenuation_flat_for_he_init():
    s = gradlint.check(mlp(depth=20, width=128, init="kaiming"), (32, 128)).summary
    assert s.verdict == "healthy" and abs(s.attenuation_decades) < 0.5


def test_init_far_too_large_is_exploding_with_a_flat_weight_gradient_profile():
    model = nn.Sequential(*[nn.Linear(128, 128, bias=False) for _ in range(8)])
    for m in model:
        nn.init.normal_(m.weight, std=1.0)
    report = gradlint.check(model, (16, 128))
    grads = [p.predicted_grad_rms for p in report.params]
    assert math.log10(max(grads) / min(grads)) < 0.02  # every weight gradient inflated alike, ~10^8
    assert report.summary.verdict == "exploding"


def test_pooling_and_fan_changes_are_neutral():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 2))
    for m in model.modules():  # He init everywhere: what is left is pooling and fan changes
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    s = gradlint.check(model, (16, 3, 64, 64)).summary
    assert s.verdict == "healthy" and abs(s.attenuation_decades) < 0.5


def test_small_branch_scales_are_not_vanishing():
    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, d)
            self.gamma = nn.Parameter(torch.full((d,), 1e-6))

        def forward(self, x):
            return x + self.gamma * self.fc(self.norm(x))

    model = nn.Sequential(*[Block(64) for _ in range(24)], nn.Linear(64, 64))
    s = gradlint.check(model, (16, 64)).summary
    assert s.verdict == "healthy"


def test_threshold_controls_the_verdict():
    model = mlp(depth=6, width=128)  # default init: about -0.39 decades per layer
    s = gradlint.check(model, (32, 128)).summary
    assert s.verdict == "healthy" and s.attenuation_decades < DEFAULT_THRESHOLD
    tight = gradlint.check(model, (32, 128), threshold=s.attenuation_decades / 2).summary
    assert tight.verdict == "vanishing"
