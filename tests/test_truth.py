"""Never a silent green: the verdict, the exit code and the probe tell the truth (issue 15).

Each model here is one a new user could write and gradlint once called healthy with exit 0
although its gradient measurably vanishes, or that it refused or misread. The probe's numbers
are held to a hand-written ``loss.backward()`` of the model itself.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import gradlint
from gradlint.api import as_example_inputs
from gradlint.base.findings import ExitCode
from gradlint.cli import main

# -- the measurement protocol by hand ------------------------------------------------------------

def hand_measured(model: nn.Module, inputs, seeds: int = 1) -> dict[str, float]:
    """Per parameter, the gradient RMS of the model's own ``loss.backward()`` under the protocol
    (float64, train mode, per seed: inputs and then g from one generator, dropout from the global
    seed), geometric mean over seeds. Runs on ``model`` itself, hooks and all: call it after the probe."""
    ex = as_example_inputs(model, inputs)
    work = model.double().train()
    per: dict[str, list[float]] = {n: [] for n, _ in work.named_parameters()}
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        a, kw = ex.materialize("cpu", gen)
        a = tuple(t.double() if t.is_floating_point() else t for t in a)
        work.zero_grad(set_to_none=True)
        y = work(*a, **kw)
        ys = [y] if isinstance(y, torch.Tensor) else [getattr(y, f.name) for f in dataclasses.fields(y)] \
            if dataclasses.is_dataclass(y) else [t for t in torch.utils._pytree.tree_leaves(y)
                                                 if isinstance(t, torch.Tensor)]
        sum((torch.randn(t.shape, generator=gen, dtype=torch.float64) * t).sum() for t in ys).backward()
        for n, p in work.named_parameters():
            per[n].append(float(p.grad.pow(2).mean()) if p.grad is not None else 0.0)
    return {n: (10 ** (sum(0.5 * math.log10(v) for v in vs) / len(vs)) if all(v > 0 for v in vs) else 0.0)
            for n, vs in per.items()}


def cli(*args):
    return CliRunner().invoke(main, [*args, "--no-cache"])


def write_model(tmp_path: Path, source: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


# -- models -------------------------------------------------------------------------------------

class Affine(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.g = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return torch.addcmul(self.b, x, self.g)


class AddcmulSigmoid(nn.Module):
    """20 sigmoid layers, each with a per-feature affine written as torch.addcmul."""

    def __init__(self, depth=20, d=64):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        self.aff = nn.ModuleList(Affine(d) for _ in range(depth))

    def forward(self, x):
        for lin, aff in zip(self.layers, self.aff):
            x = torch.sigmoid(aff(lin(x)))
        return x


class Scale(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by 1e-8."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1e-8


def tanh_stack():
    return nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())


class CustomFunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = tanh_stack(), tanh_stack()

    def forward(self, x):
        return self.b(Scale.apply(self.a(x)))


class HookNet(nn.Module):
    """A full backward hook on the second block scales the gradient it passes on by 1e-6."""

    def __init__(self):
        super().__init__()
        self.a, self.b = tanh_stack(), tanh_stack()
        self.b.register_full_backward_hook(lambda m, grad_in, grad_out: (grad_in[0] * 1e-6,))

    def forward(self, x):
        return self.b(self.a(x))


class ParamHookNet(nn.Module):
    """A tensor hook on a parameter multiplies its gradient by 100 (gradient scaling by hand)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = tanh_stack(), tanh_stack()
        self.a[0].weight.register_hook(lambda g: g * 100.0)

    def forward(self, x):
        return self.b(self.a(x))


class SignSTE(torch.autograd.Function):
    """sign() forward, straight-through (identity) backward: the graph's sign has no gradient."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g


class STENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = tanh_stack(), tanh_stack()

    def forward(self, x):
        return self.b(SignSTE.apply(self.a(x)))


class Critic(nn.Module):
    """A WGAN critic: its weights are clipped in place under no_grad at the start of forward."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
                                 nn.Linear(64, 1))

    def forward(self, x):
        with torch.no_grad():
            for p in self.parameters():
                p.clamp_(-0.01, 0.01)
        return self.net(x)


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class DataclassOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return Out(self.b(h), h)


def bn_cnn():
    layers, c = [], 3
    for _ in range(6):
        layers += [nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        c = 16
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class Tagger(nn.Module):
    """An LSTM tagger: a loss at every step."""

    def __init__(self, forget_bias=0.0, d=32):
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.head = nn.Linear(d, 5)
        if forget_bias:
            with torch.no_grad():
                self.lstm.bias_ih_l0[d:2 * d].fill_(forget_bias)
                self.lstm.bias_hh_l0[d:2 * d].zero_()

    def forward(self, x):
        return self.head(self.lstm(x)[0])


# -- unknown is never healthy ------------------------------------------------------------------

def test_addcmul_affine_in_a_sigmoid_stack_is_never_a_silent_green():
    torch.manual_seed(0)
    model = AddcmulSigmoid()
    static = gradlint.check(model, (32, 64))
    # Whatever the engine makes of addcmul, gradlint may not call this model healthy: either the
    # op is accounted for and the 16 decades of vanishing are predicted, or its predictions are unknown.
    assert static.summary.verdict in ("vanishing", "unknown"), static
    assert static.exit_code != ExitCode.CLEAN and not static.ok
    if static.summary.verdict == "unknown":
        assert static.exit_code == ExitCode.COULD_NOT_ANALYZE
        assert any("addcmul" in why for why in static.summary.unknown)
        unknown = [p for p in static.params if p.predicted_grad_rms is None]
        assert unknown and "unknown" in str(static) and "-inf" not in str(static)
        assert all(p["predicted_grad_rms"] is None for p in static.to_dict()["params"]
                   if p["name"] in {u.name for u in unknown})
    probed = gradlint.probe(model, (32, 64), seeds=1)
    assert probed.summary.verdict == "vanishing" and probed.summary.attenuation_decades > 10
    assert probed.exit_code == ExitCode.FINDINGS and not probed.ok
    gl101 = [f for f in probed.findings if f.code == "GL101"]
    assert gl101 and all(f.confirmed for f in gl101)
    # Agreement counts every parameter: compared or said to be unknown, none dropped.
    assert probed.probe.compared + len(probed.probe.unknown) == len(probed.params)
    with pytest.raises(AssertionError, match="vanishing"):
        gradlint.assert_healthy(model, (32, 64), probe=True, seeds=1)


def test_the_measured_verdict_sets_the_exit_code_alike_in_cli_api_and_plugin(tmp_path):
    path = write_model(tmp_path, "import torch, torch.nn as nn\nimport gradlint\n\n"
                       + _source_of(tanh_stack, Scale, CustomFunctionNet)
                       + "\n@gradlint.target(inputs=(16, 32))\ndef net():\n    torch.manual_seed(0)\n"
                       "    return CustomFunctionNet()\n")
    static = cli("check", str(path))
    # The graph hides the Function's backward: statically the verdict is unknown, never a silent green.
    assert static.exit_code == ExitCode.COULD_NOT_ANALYZE, static.output
    assert "unknown: the model's own backward may differ from its graph: custom autograd.Function Scale" \
        in static.output and "GL905" in static.output
    probed = cli("check", str(path), "--probe", "--seeds", "1")
    assert probed.exit_code == ExitCode.FINDINGS, probed.output
    assert "measured verdict vanishing" in probed.output and "GL905" in probed.output
    torch.manual_seed(0)
    model = CustomFunctionNet()
    report = gradlint.probe(model, (16, 32), seeds=1)
    assert not report.ok and report.exit_code == ExitCode.FINDINGS
    with pytest.raises(AssertionError, match="vanishing"):
        gradlint.assert_healthy(model, (16, 32), probe=True, seeds=1)
    from gradlint.pytest_plugin import GradlintFixture
    with pytest.raises(AssertionError, match="vanishing"):
        GradlintFixture(probe=True, seeds=1).assert_healthy(model, (16, 32))


def _source_of(*objs) -> str:
    import inspect
    return "\n\n".join(inspect.getsource(o) for o in objs) + "\n"


def test_module_order_fallback_that_would_say_healthy_says_unknown_and_exits_2(tmp_path):
    # Orthogonal Linears with functional sigmoids and a data-dependent branch: export fails, and
    # the module-order fallback sees only the Linears (a flat chain), not the sigmoids.
    path = write_model(tmp_path, """
import torch, torch.nn as nn
import gradlint

@gradlint.target(inputs=(16, 32))
class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(16))
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight)

    def forward(self, x):
        for lin in self.layers:
            x = torch.sigmoid(lin(x))
            if x.mean() > 10:
                x = x * 2
        return x
""")
    res = cli("check", str(path))
    assert res.exit_code == ExitCode.COULD_NOT_ANALYZE, res.output
    assert "Branchy: unknown" in res.output and "module-order" in res.output
    probed = cli("check", str(path), "--probe", "--seeds", "1")
    assert probed.exit_code == ExitCode.FINDINGS, probed.output
    assert "measured verdict vanishing" in probed.output
    assert "hooks on the model's own modules" in probed.output


def test_forward_returning_a_python_float_is_never_healthy(tmp_path):
    path = write_model(tmp_path, """
import torch, torch.nn as nn
import gradlint

@gradlint.target(inputs=(16, 32))
class FloatOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x):
        return float(self.b(torch.relu(self.a(x))).mean())
""")
    res = cli("check", str(path))
    assert res.exit_code == ExitCode.COULD_NOT_ANALYZE and "healthy" not in res.output, res.output
    probed = cli("check", str(path), "--probe", "--seeds", "1")
    assert probed.exit_code == ExitCode.COULD_NOT_ANALYZE, probed.output
    assert ":11: could not analyze" in probed.output  # the forward's own line
    assert "returned float with no tensor that depends on a parameter" in probed.output


def test_dynamically_quantized_model_is_unknown_and_refused_by_the_probe():
    model = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)),
                                                   {nn.Linear}, dtype=torch.qint8)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gradlint.check(model, (8, 32))
    assert report.summary.verdict == "unknown" and report.exit_code == ExitCode.COULD_NOT_ANALYZE
    assert not [f for f in report.findings if f.severity == "error"]  # no GL201 beside an unknown verdict
    assert any("no parameters" in why for why in report.summary.unknown)
    with pytest.raises(gradlint.GradlintError, match="no parameters") as err:
        gradlint.probe(model, (8, 32), seeds=1)
    assert "before torch.ao.quantization.quantize_dynamic" in str(err.value)


def test_forward_returning_a_dataclass_of_tensors_is_analyzed_and_probed():
    torch.manual_seed(0)
    model = DataclassOut()
    report = gradlint.check(model, (16, 32))
    assert report.status == "ok" and report.analysis == "export" and report.summary.verdict == "healthy"
    probed = gradlint.probe(model, (16, 32), seeds=1)
    expected = hand_measured(model, (16, 32))
    for p in probed.params:
        assert p.measured_grad_rms == pytest.approx(expected[p.name], rel=1e-9), p.name
    assert probed.probe.worst_decades < 0.3 and probed.probe.compared == 4


def test_inplace_weight_clip_under_no_grad_is_not_a_blockage_and_the_model_is_left_as_found():
    torch.manual_seed(0)
    model = Critic()
    report = gradlint.check(model, (16, 32))
    assert not [f for f in report.findings if f.code == "GL701"], report
    assert all(p.predicted_grad_rms and p.predicted_grad_rms > 0 for p in report.params)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probed = gradlint.probe(model, (16, 32), seeds=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the clip ran on a copy
    expected = hand_measured(model, (16, 32))
    for p in probed.params:
        assert p.measured_grad_rms == pytest.approx(expected[p.name], rel=1e-9) and p.measured_grad_rms > 0
    assert probed.ok and probed.summary.verdict == "healthy"


# -- the probe runs the model's own backward ----------------------------------------------------

@pytest.mark.parametrize("build", [CustomFunctionNet, HookNet, ParamHookNet, STENet],
                         ids=["autograd-function", "full-backward-hook", "param-hook", "straight-through"])
def test_probe_equals_a_hand_written_backward_of_the_model_itself(build):
    torch.manual_seed(0)
    model = build()
    report = gradlint.probe(model, (16, 32), seeds=2)
    expected = hand_measured(model, (16, 32), seeds=2)
    for p in report.params:
        assert p.measured_grad_rms == pytest.approx(expected[p.name], rel=1e-9), p.name
    # Where the model's own backward departs from its graph, GL905 says so with the numbers.
    departs = {n for n, _ in report.probe.departures}
    assert departs, report
    (f,) = [f for f in report.findings if f.code == "GL905" and f.evidence.get("measured")]
    assert f.severity == "warning" and set(f.evidence["departures"]) == departs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("build", [CustomFunctionNet, HookNet])
def test_the_probe_on_cuda_runs_the_models_own_backward_too(build):
    torch.manual_seed(0)
    model = build()
    on_cpu = gradlint.probe(model, (16, 32), seeds=2, device="cpu")
    on_gpu = gradlint.probe(model, (16, 32), seeds=2, device="cuda")
    assert on_gpu.probe.device.startswith("cuda") and on_gpu.probe.peak_memory_bytes > 0
    assert on_gpu.summary.verdict == on_cpu.summary.verdict == "vanishing"
    for a, b in zip(on_cpu.params, on_gpu.params):
        # float64 on both devices, inputs and g drawn on the CPU: only summation order differs.
        assert b.measured_grad_rms == pytest.approx(a.measured_grad_rms, rel=1e-6), a.name
    assert all(p.device.type == "cpu" for p in model.parameters())  # the user's model stays where it was


@pytest.mark.parametrize("build, decades", [(CustomFunctionNet, 8), (HookNet, 6)])
def test_a_backward_that_scales_the_gradient_down_measures_vanishing(build, decades):
    torch.manual_seed(0)
    report = gradlint.probe(build(), (16, 32), seeds=1)
    assert report.predicted_summary.verdict == "unknown"  # the graph cannot see it, and says so
    assert report.summary.verdict == "vanishing"
    assert report.summary.attenuation_decades == pytest.approx(decades, abs=0.1)
    assert report.exit_code == ExitCode.FINDINGS
    (f,) = [f for f in report.findings if f.code == "GL101"]
    assert f.confirmed and f.message.startswith("measured:") and "GL905" in f.fix


def test_static_check_names_backward_hooks_it_cannot_see():
    report = gradlint.check(HookNet(), (16, 32))
    (f,) = [f for f in report.findings if f.code == "GL905"]
    assert f.severity == "info" and f.module == "b" and "backward hook" in f.message and "--probe" in f.message


class TensorHookNet(nn.Module):
    """The forward registers a hook on an intermediate tensor that scales its gradient by 1e-6."""

    def __init__(self):
        super().__init__()
        self.a, self.b = tanh_stack(), tanh_stack()

    def forward(self, x):
        h = self.a(x)
        if h.requires_grad:
            h.register_hook(lambda g: g * 1e-6)
        return self.b(h)


class Double(torch.autograd.Function):
    """A custom Function whose backward is its forward's exact derivative."""

    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, g):
        return g * 2.0


class ExactFunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = tanh_stack(), tanh_stack()

    def forward(self, x):
        return self.b(Double.apply(self.a(x)) * 0.5)


class IdleHookNet(nn.Module):
    """A backward hook on a module the forward never calls, and one on a frozen parameter."""

    def __init__(self):
        super().__init__()
        self.a, self.spare = tanh_stack(), nn.Linear(32, 32)
        self.spare.register_full_backward_hook(lambda m, gi, go: (gi[0] * 0.0,))
        self.frozen = nn.Linear(32, 32)
        self.frozen.weight.register_hook(lambda g: g * 0.0)
        self.frozen.requires_grad_(False)  # after: a hook cannot be registered on a frozen tensor

    def forward(self, x):
        return self.a(self.frozen(x))


@pytest.mark.parametrize("build, what", [(HookNet, "b has a backward hook"),
                                         (ParamHookNet, "a.0.weight has a tensor hook"),
                                         (TensorHookNet, "tensor hook registered in forward"),
                                         (CustomFunctionNet, "custom autograd.Function Scale"),
                                         (ExactFunctionNet, "custom autograd.Function Double")],
                         ids=["module-hook", "param-hook", "tensor-hook-in-forward", "function", "exact-function"])
def test_a_backward_the_graph_cannot_show_is_never_a_silent_green(build, what):
    torch.manual_seed(0)
    model = build()
    static = gradlint.check(model, (16, 32))
    assert static.summary.verdict == "unknown" and not static.ok, static
    assert static.exit_code == ExitCode.COULD_NOT_ANALYZE
    (why,) = [u for u in static.summary.unknown if "own backward" in u]
    assert what in why and "--probe" in why
    assert ("parallel scan" in why) == ("Function" in what)  # Functions that only compute the derivative count too
    assert any(f.code == "GL905" and "--probe" in f.message for f in static.findings)
    with pytest.raises(AssertionError, match="unknown"):
        gradlint.assert_healthy(model, (16, 32))
    # With --probe the measured verdict decides: the ones that scale the gradient by 1e-6 vanish,
    # the parameter hook's x100 on the first weight explodes, the exact Function is healthy.
    probed = gradlint.probe(model, (16, 32), seeds=1)
    expected = hand_measured(model, (16, 32))
    for p in probed.params:
        assert p.measured_grad_rms == pytest.approx(expected[p.name], rel=1e-9), p.name
    assert probed.predicted_summary.verdict == "unknown"
    assert probed.summary.verdict == ("vanishing" if build in (HookNet, TensorHookNet, CustomFunctionNet) else
                                      "exploding" if build is ParamHookNet else "healthy"), probed
    assert probed.ok == (probed.summary.verdict == "healthy")


def test_trust_custom_backward_lets_the_static_verdict_stand_for_functions_only(tmp_path):
    torch.manual_seed(0)
    model = ExactFunctionNet()
    trusted = gradlint.check(model, (16, 32), trust_custom_backward=True, config=False)
    assert trusted.summary.verdict == "healthy" and trusted.ok and not [f for f in trusted.findings
                                                                        if f.code == "GL905"]
    # The measurement agrees with the trusted prediction: the Function's backward is the derivative.
    probed = gradlint.probe(model, (16, 32), seeds=1, trust_custom_backward=True, config=False)
    assert probed.summary.verdict == "healthy" and not probed.probe.departures
    # From [tool.gradlint], and never for hooks.
    (tmp_path / "pyproject.toml").write_text("[tool.gradlint]\ntrust-custom-backward = true\n")
    assert gradlint.check(model, (16, 32), config=tmp_path / "pyproject.toml").summary.verdict == "healthy"
    assert gradlint.check(HookNet(), (16, 32), config=tmp_path / "pyproject.toml").summary.verdict == "unknown"
    assert gradlint.check(TensorHookNet(), (16, 32), trust_custom_backward=True).summary.verdict == "unknown"


def test_hooks_off_every_gradient_path_leave_the_verdict_alone():
    torch.manual_seed(0)
    report = gradlint.check(IdleHookNet(), (16, 32))
    assert not report.summary.unknown and report.summary.verdict != "unknown", report
    assert not [f for f in report.findings if f.code == "GL905"]


def test_sparse_embeddings_and_complex_parameters_are_measured():
    class Sparse(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16, sparse=True)
            self.out = nn.Linear(16, 4)

        def forward(self, x):
            return self.out(self.emb(x))

    class Complex(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 16, dtype=torch.cfloat) / 4)
            self.out = nn.Linear(16, 4)

        def forward(self, x):
            return self.out((x.to(torch.cfloat) @ self.w).real)  # casts to a fixed dtype

    torch.manual_seed(0)
    model = Sparse()
    tokens = gradlint.tokens((8, 12), vocab=50)
    report = gradlint.probe(model, tokens, seeds=1)
    ex = as_example_inputs(model, tokens)
    work = model.double().train()
    gen = torch.Generator().manual_seed(0)
    (ids,), _ = ex.materialize("cpu", gen)
    y = work(ids)
    (torch.randn(y.shape, generator=gen, dtype=torch.float64) * y).sum().backward()
    dense = work.emb.weight.grad.to_dense()
    (emb,) = [p for p in report.params if p.name == "emb.weight"]
    assert emb.measured_grad_rms == pytest.approx(float(dense.pow(2).mean().sqrt()), rel=1e-9)

    torch.manual_seed(0)
    complex_model = Complex()
    static = gradlint.check(complex_model, (8, 16))
    (w,) = [p for p in static.params if p.name == "w"]
    assert w.predicted_grad_rms is None and static.summary.verdict != "healthy"  # honest: unknown
    probed = gradlint.probe(complex_model, (8, 16), seeds=1)
    (w,) = [p for p in probed.params if p.name == "w"]
    assert w.measured_grad_rms > 0 and "w" in probed.probe.unknown
    assert any("own dtype" in n for n in probed.probe.notes)


def test_a_failing_forward_in_the_probe_names_the_users_line(tmp_path):
    path = write_model(tmp_path, """
import torch, torch.nn as nn
import gradlint

@gradlint.target(inputs=(8, 16))
class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)

    def forward(self, x):
        if x.device.type != "meta":  # the static check runs on meta tensors; the probe does not
            raise ValueError("real tensors are not welcome here")
        return self.a(x)
""")
    res = cli("check", str(path), "--probe", "--seeds", "1")
    assert res.exit_code == ExitCode.COULD_NOT_ANALYZE, res.output
    assert ":13: could not analyze" in res.output and "real tensors are not welcome here" in res.output


# -- agreement over every parameter ------------------------------------------------------------

def test_agreement_counts_zeros_unknowns_and_vectors():
    from gradlint.base.report import ParamReport
    from gradlint.probing.probe import _distance

    assert _distance(0.0, 1e-7) == math.inf and _distance(1e-7, 0.0) == math.inf
    assert _distance(0.0, 0.0) == 0.0 and _distance(1e-3, 1e-5) == pytest.approx(2.0)
    torch.manual_seed(0)
    report = gradlint.probe(Critic(), (16, 32), seeds=1)
    assert report.probe.compared == len(report.params) == 6  # biases included
    from gradlint.probing.measure import Measurement
    from gradlint.probing.probe import _agreement

    fake = [ParamReport("a", (4, 4), "", 0.0, 1e-7), ParamReport("b", (4,), "", None, 1.0),
            ParamReport("c", (4,), "", 1.0, 1.0)]
    meas = Measurement({}, {}, {}, seeds=1)
    ag = _agreement(fake, (), "cpu", 1, 0.0, meas, as_example_inputs(nn.Linear(4, 4), (2, 4)), [], ())
    assert ag.worst_decades == math.inf and ag.worst_param == "a" and ag.disagreeing == ("a",)
    assert ag.unknown == ("b",) and ag.compared == 2
    assert ag.to_dict()["worst_decades"] == 1e308  # JSON has no infinity


@pytest.mark.slow
def test_a_deep_mlp_whose_gradient_underflows_is_not_worst_zero():
    # 1,200 ReLU layers at PyTorch's default init lose 0.39 decades each: far below float64's range.
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(1200) for m in (nn.Linear(4, 4), nn.ReLU())])
    report = gradlint.probe(model, (4, 4), seeds=1)
    p = report.probe
    assert p.compared + len(p.unknown) == len(report.params)
    zeros = [x for x in report.params if x.measured_grad_rms == 0.0 or x.predicted_grad_rms == 0.0]
    mismatched = [x for x in zeros if (x.measured_grad_rms == 0.0) != (x.predicted_grad_rms == 0.0)]
    if mismatched:  # one side underflowed, the other not: infinitely far, not 0.00
        assert p.worst_decades == math.inf
    assert report.summary.verdict == "vanishing" and not report.ok


# -- the verdict measures a mechanism -----------------------------------------------------------

def test_normalized_residual_branches_are_healthy_and_a_deep_batchnorm_mlp_still_explodes():
    import transformers

    torch.manual_seed(0)
    resnet = transformers.ResNetModel(transformers.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[3, 4, 6, 3],
        layer_type="bottleneck"))
    report = gradlint.check(resnet, lambda: (torch.randn(4, 3, 64, 64),))
    s = report.summary
    assert s.verdict == "healthy" and not [f for f in report.findings if f.severity == "error"], report
    assert s.residual_growth > 1.5  # the gradient does grow toward the stem, path by path
    bn_mlp = nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(128, 128), nn.BatchNorm1d(128), nn.ReLU())],
                           nn.Linear(128, 128))
    s = gradlint.check(bn_mlp, (64, 128)).summary
    assert s.verdict == "exploding" and s.residual_growth == 0.0


def test_unnormalized_residual_branches_still_count():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            nn.init.kaiming_normal_(self.fc.weight, nonlinearity="relu")

        def forward(self, x):
            return x + torch.relu(self.fc(x))

    s = gradlint.check(nn.Sequential(*[Block() for _ in range(20)]), (32, 64)).summary
    assert s.verdict == "exploding" and s.residual_growth == 0.0


@pytest.mark.slow
def test_resnet50_at_224_is_healthy():
    import transformers

    torch.manual_seed(0)
    model = transformers.ResNetModel(transformers.ResNetConfig()).train()
    report = gradlint.check(model, lambda: (torch.randn(2, 3, 224, 224),))
    assert report.summary.verdict == "healthy", report
    assert not [f for f in report.findings if f.severity == "error"]
    assert report.summary.residual_growth > 2.0


# -- the chart, the table and the verdict agree --------------------------------------------------

def _rows(output: str) -> dict[str, tuple[float, float, str]]:
    head = output.index("gradient profile as the verdict reads it")
    rows = {}
    for line in output[head:].splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 4 and "█" in line:
            rows[parts[0]] = (float(parts[1]), float(parts[2]), parts[-1] if parts[-1] in ("vanishing", "exploding")
                              else "")
    return rows


@pytest.mark.parametrize("source, verdict", [
    ("torch.manual_seed(0); return bn_cnn()", "healthy"),
    ("torch.manual_seed(0); return nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())])",
     "vanishing"),
])
def test_profile_marks_exactly_the_rows_the_verdict_reads(tmp_path, source, verdict):
    path = write_model(tmp_path, "import torch, torch.nn as nn\nimport gradlint\n" + _source_of(bn_cnn)
                       + f"@gradlint.target(inputs=(8, 3, 16, 16) if '{verdict}' == 'healthy' else (16, 64))\n"
                       f"def net():\n    {source}\n")
    # ::net: the file's factory bn_cnn is a model of its own where net does not call it.
    res = cli("check", f"{path}::net", "--profile")
    assert f"net: {verdict}" in res.output, res.output
    rows = _rows(res.output)
    assert rows
    for name, (back, fwd, mark) in rows.items():
        value = back if abs(back) >= abs(fwd) else fwd
        assert mark == ("vanishing" if value <= -2 else "exploding" if value >= 2 else ""), name
    marks = {m for _, _, m in rows.values()} - {""}
    assert marks == ({verdict} if verdict != "healthy" else set())


def test_profile_values_reach_the_verdicts_extremes():
    from gradlint.api import predict
    torch.manual_seed(0)
    report, result = predict(nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())]),
                             (16, 64))
    lows = [lr.signal_decades for lr in report.layers if lr.signal_decades is not None]
    assert min(lows) == pytest.approx(-report.summary.trunk_attenuation)


def test_probe_profile_and_chart_follow_the_measured_verdict(tmp_path):
    torch.manual_seed(0)
    report = gradlint.probe(HookNet(), (16, 32), seeds=1)
    assert report.summary.verdict == "vanishing"
    from gradlint.output.plot import plot_report
    from gradlint.output.text import format_profile
    text = "\n".join(format_profile(report))
    assert "measured" in text.splitlines()[0]
    out = plot_report(report, tmp_path / "hook.png")
    assert out.exists()


def test_lstm_chart_shows_the_decay_over_time(tmp_path):
    import matplotlib.image

    torch.manual_seed(0)
    report = gradlint.check(Tagger(), (8, 24, 32))
    assert report.summary.verdict == "vanishing" and report.summary.recurrent_decay > 2
    from gradlint.output.plot import plot_report
    from gradlint.output.text import format_profile
    text = "\n".join(format_profile(report))
    assert "over time: the long-range gradient decays" in text and text.rstrip().endswith("vanishing")
    img = matplotlib.image.imread(plot_report(report, tmp_path / "lstm.png"))
    assert img.shape[0] > 800  # two panels: the layers, and the steps where the decay is


# -- every fix is checked by measurement ----------------------------------------------------------

def _apply(fix: str, model: nn.Module) -> None:
    """Run the code of a fix text as written: the lines from its first statement on."""
    lines = fix.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("lstm = model", "h = lstm")))
    code = []
    for line in lines[start:]:
        if not (line.startswith(("lstm", "with ", "    ", "h = "))):
            break
        code.append(line)
    exec("\n".join(code), {"model": model, "torch": torch, "lstm": getattr(model, "lstm", None)})


@pytest.mark.slow
@pytest.mark.parametrize("code", ["GL602", "GL101"])
def test_the_forget_bias_fix_applied_as_written_clears_gl101_on_a_tagger(code):
    torch.manual_seed(0)
    model = Tagger()
    report = gradlint.check(model, (16, 64, 32))
    # One finding per problem (lint/grouping.py): GL602's fix is a note of GL101's finding here.
    (f,) = ([f for f in report.findings if f.code == code]
            + [n for x in report.findings for n in x.notes if n.code == code])
    _apply(f.fix, model)
    after = gradlint.probe(model, (16, 64, 32), seeds=1)
    assert after.summary.verdict == "healthy", (f.fix, after)
    assert not [x for x in after.findings if x.code in ("GL101", "GL602") and x.confirmed is not False
                and x.severity == "error"]


class FixedDtype(nn.Module):
    """A forward that fixes its dtype: the weights and the input cast to bfloat16."""

    def __init__(self, detach: bool = False):
        super().__init__()
        self.lin = nn.Linear(32, 8).to(torch.bfloat16)
        self.detach = detach

    def forward(self, x):
        y = self.lin(x.to(torch.bfloat16))
        return {"out": y.detach() if self.detach else y}


def test_a_forward_that_fixes_its_dtype_is_measured_in_it_and_its_own_problem_is_the_one_reported():
    torch.manual_seed(0)
    report = gradlint.probe(FixedDtype(), (16, 32), seeds=1)
    assert report.status == "ok" and report.probe is not None
    # Its output has no gradient in its own dtype too: that is the error, not the float64 run's
    # dtype clash it first met (which hid it when the own-dtype retry failed as well).
    with pytest.raises(gradlint.GradlintError) as err:
        gradlint.probe(FixedDtype(detach=True), (16, 32), seeds=1)
    assert "returned dict with no tensor that depends on a parameter" in str(err.value), str(err.value)
    assert "float64" not in str(err.value)
