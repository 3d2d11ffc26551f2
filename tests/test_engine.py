"""The engine on toy graphs: coherent sums, blockage, unknown ops, fallbacks, the meta device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from helpers import Trials, decades

import gradlint


def _node(trials, kind, i=0):
    return [n for n in trials.results[0].propagation.nodes if n.kind == kind][i]


class Doubled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)

    def forward(self, x):
        y = self.a(x)
        return y + y  # the same tensor twice: 4x the second moment, not 2x


def test_same_tensor_adds_coherently():
    t = Trials(Doubled, (32, 64))
    y = _node(t, "linear")
    s = _node(t, "add")
    assert s.q == pytest.approx(4 * y.q, rel=1e-9)
    t.check_node(s.name, "q", decades(0.03))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(128, 128)
        self.b = nn.Linear(128, 128)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h


def test_residual_branches_add_independently():
    t = Trials(Residual, (64, 128))
    t.check_node(_node(t, "add").name, "q", decades(0.03))
    t.check_param("a.weight", decades(0.03))


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(self.a(x).detach())


def test_detach_blocks_the_earliest_weights():
    report = gradlint.check(Detached(), (8, 32))
    grads = {p.name: p.predicted_grad_rms for p in report.params}
    assert grads["a.weight"] == 0.0 and grads["b.weight"] > 0
    assert report.summary.verdict == "blocked"


def test_unused_parameter_is_predicted_zero():
    """A parameter no op reads provably gets no gradient: 0.0, the engine's "none" (None is
    "unknown")."""

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(16, 16)
            self.spare = nn.Linear(16, 16)

        def forward(self, x):
            return self.used(x)

    report = gradlint.check(Unused(), (4, 16))
    grads = {p.name: p.predicted_grad_rms for p in report.params}
    assert grads["spare.weight"] == 0.0 and grads["used.weight"] > 0


def test_unknown_op_makes_the_gradients_behind_it_unknown():
    """No rule for bessel_j0: the layer before it (its gradient goes through the op) and the
    layer after it (its input statistics come from the op) are unknown, not zero, not guessed."""
    from gradlint.rules.unknown_op import _Bessel

    report = gradlint.check(_Bessel(), (8, 32))
    assert report.analysis == "export"
    assert any(f.code == "GL902" and "bessel" in f.message for f in report.findings)
    assert all(p.predicted_grad_rms is None for p in report.params)
    assert report.summary.verdict == "unknown" and report.exit_code == 2


def test_an_unknown_op_repeated_in_every_layer_is_one_finding():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))

        def forward(self, x):
            for layer in self.layers:
                x = torch.special.bessel_j0(layer(x))
            return x

    (f,) = [f for f in gradlint.check(Stack(), (8, 32)).findings if f.code == "GL902"]
    assert "special_bessel_j0 at 3 places, the first in the model" in f.message
    assert f.evidence["places"] == 3


def test_data_dependent_forward_falls_back_to_module_order():
    from gradlint.rules.untraceable_model import _DataDependent

    report = gradlint.check(_DataDependent(), (8, 32))
    assert report.analysis == "module-order"
    f = next(f for f in report.findings if f.code == "GL901")
    assert f.severity == "info" and "GuardOnDataDependent" in f.message


def test_no_inputs_uses_fx_with_leaf_modules():
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = Scale()  # the first layer fixes no input shape
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.scale(x))

    report = gradlint.check(Odd())
    assert report.analysis == "fx"
    assert "could not infer" in report.inputs
    assert any(f.code == "GL901" for f in report.findings)


def test_model_on_the_meta_device_uses_default_init():
    with torch.device("meta"):
        model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(512, 512), nn.ReLU())])
    report = gradlint.check(model, (8, 512))
    # Read from each layer's own reset_parameters, run on a meta copy (else PyTorch's defaults).
    assert {p.stats_source for p in report.params} <= {"init", "default"}
    # Default init in a deep ReLU stack: 1/6 per layer in the backward second moment (docs/design.md §8).
    assert report.summary.verdict == "vanishing"
    real = gradlint.check(model.to_empty(device="cpu").apply(
        lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None), (8, 512))
    pairs = {p.name: p.predicted_grad_rms for p in real.params}
    for p in report.params:
        assert math.log10(p.predicted_grad_rms) == pytest.approx(math.log10(pairs[p.name]), abs=0.05)


def test_recurrent_layer_reports_time_profile():
    model = nn.RNN(32, 32, batch_first=True)
    report = gradlint.check(model, (4, 40, 32))
    (rec,) = report.recurrent
    assert rec.steps == 40 and len(rec.lag_grad_rms) == 40
    # tanh RNN, default init: about -0.3 decades per step (docs/design.md §6, R1).
    slope = math.log10(rec.lag_grad_rms[0] / rec.lag_grad_rms[-1]) / 39
    assert -0.45 < slope < -0.2


def test_legacy_weight_norm_is_analyzable():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 16))
    report = gradlint.check(model, (4, 16))
    # Its weight is computed from weight_g and weight_v by a pre-forward hook and kept as a
    # plain non-leaf tensor attribute, which a deepcopy refuses: the meta copy must map it for
    # the model to be captured whole (export), with the layer's own parameters in the report.
    assert report.analysis == "export"
    grads = {p.name: p.predicted_grad_rms for p in report.params}
    assert set(grads) == {"0.weight_g", "0.weight_v", "0.bias", "2.weight", "2.bias"}
    assert all(0 < grads[n] < math.inf for n in ("0.weight_v", "0.weight_g", "2.weight"))
    assert report.summary.verdict != "unknown"


def test_a_verdict_never_rests_on_statistics_downstream_of_an_op_without_a_rule():
    """Forward statistics after an op with no rule are a guess: a signal that 'explodes' after
    it is no finding (HF RWKV's time mixing gave exploding -15.4 and a GL102 error this way)."""

    class Blowup(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x):
            # bessel_j0 has no rule; the 1e8 after it would read as 8 decades of forward growth.
            return self.b(torch.special.bessel_j0(self.a(x)) * 1e8)

    report = gradlint.check(Blowup(), (8, 32))
    assert report.summary.verdict == "unknown"
    assert not any(f.code == "GL102" for f in report.findings)
