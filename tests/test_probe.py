"""Probe mode: measured numbers equal a hand-written backward pass; the model is left as found."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import gradlint
from gradlint.api import as_example_inputs


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.Tanh(), nn.Dropout(0.0), nn.Linear(64, 8))


def test_measured_rms_equals_a_hand_written_backward_pass():
    model = small()
    report = gradlint.probe(model, (16, 32), seeds=2)
    ex = as_example_inputs(model, (16, 32))
    # The protocol by hand: per seed, inputs and g from that seed's generator, float64, train mode.
    work = copy.deepcopy(model).double().train()
    ms = {n: [] for n, _ in work.named_parameters()}
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        (x,), _ = ex.materialize("cpu", gen)
        y = work(x.double())
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        work.zero_grad()
        (g * y).sum().backward()
        for n, p in work.named_parameters():
            ms[n].append(float(p.grad.pow(2).mean()))
    for p in report.params:
        expected = 10 ** (sum(0.5 * math.log10(v) for v in ms[p.name]) / 2)  # geometric mean over seeds
        assert p.measured_grad_rms == pytest.approx(expected, rel=1e-6), p.name


def test_probe_leaves_the_model_as_found():
    model = small()
    model.eval()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.random.get_rng_state()
    gradlint.probe(model, (16, 32), seeds=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not model.training
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[4].weight.grad is None
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_probe_marks_findings_and_reports_agreement():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())])
    report = gradlint.probe(model, (32, 64), seeds=2, select=["GL101"])
    (f,) = [f for f in report.findings if f.code == "GL101"]
    assert f.confirmed is True
    d = report.to_dict()
    assert d["probe"]["median_decades"] < 0.1 and d["probe"]["predicted_summary"]["verdict"] == "vanishing"
    assert all(p["measured_grad_rms"] is not None for p in d["params"])


def test_layer_output_gradients_equal_backward_hooks():
    model = small()
    report = gradlint.probe(model, (16, 32), seeds=2)
    ex = as_example_inputs(model, (16, 32))
    work = copy.deepcopy(model).double().train()
    seen: dict[str, list[float]] = {}
    for name, mod in work.named_modules():
        if isinstance(mod, (nn.Linear, nn.BatchNorm1d)):
            mod.register_full_backward_hook(
                lambda m, gi, go, name=name: seen.setdefault(name, []).append(float(go[0].pow(2).mean())))
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        (x,), _ = ex.materialize("cpu", gen)
        y = work(x.double().requires_grad_(True))  # full backward hooks want an input that needs grad
        (torch.randn(y.shape, generator=gen, dtype=torch.float64) * y).sum().backward()
    rows = {lr.module: lr for lr in report.layers if lr.kind in ("linear", "batch_norm")}
    assert set(rows) == set(seen) == {"0", "1", "4"}
    for name, ms in seen.items():
        # Per node, the mean square is averaged over seeds (a node's RMS, not a parameter's).
        assert rows[name].measured_grad_rms == pytest.approx(math.sqrt(sum(ms) / len(ms)), rel=1e-6), name


def test_recurrent_step_gradients_equal_a_hand_written_backward_pass():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(8, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    model = Net()
    report = gradlint.probe(model, (4, 12, 8), seeds=2)
    ex = as_example_inputs(model, (4, 12, 8))
    work = copy.deepcopy(model).double().train()
    per_seed = []
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        (x,), _ = ex.materialize("cpu", gen)
        y = work(x.double())
        torch.randn(y.shape, generator=gen, dtype=torch.float64)  # the protocol's loss weights come first
        xr = x.double().requires_grad_(True)
        h = work.rnn(xr)[0][:, -1]
        (dx,) = torch.autograd.grad((torch.randn(h.shape, generator=gen, dtype=torch.float64) * h).sum(), xr)
        per_seed.append([float(dx[:, t].pow(2).mean()) for t in range(12)])
    (module, measured), = report.probe.lag_grad_rms
    assert module == "rnn" and len(measured) == 12
    for t in range(12):
        expected = 10 ** (sum(0.5 * math.log10(s[t]) for s in per_seed) / 2)
        assert measured[t] == pytest.approx(expected, rel=1e-6), t
    assert "input gradient at step t" in str(report)


def test_probe_in_train_mode_restores_rng_mode_and_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 8))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    dtype = torch.get_default_dtype()
    gradlint.probe(model, (16, 32), seeds=2)
    assert torch.equal(torch.rand(3), expected_next)  # dropout's draws did not advance the user's stream
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.get_default_dtype() == dtype
    assert all(p.grad is None for p in model.parameters())


def test_meta_model_is_materialized_from_its_reset_parameters():
    with torch.device("meta"):
        model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(64, 64), nn.Tanh())])
    report = gradlint.probe(model, (32, 64), seeds=2)
    assert any("materialized on cpu with its reset_parameters()" in n for n in report.probe.notes)
    assert report.probe.median_decades < 0.1
    assert all(p.is_meta for p in model.parameters())  # the user's model stays on meta


def test_meta_model_without_init_code_is_a_clear_error():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(16))

        def forward(self, x):
            return x * self.gain

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(16, 16), Scale())
    from gradlint.probing.probe import ProbeError
    with pytest.raises(ProbeError, match=r"define no reset_parameters\(\): 1 \(Scale: gain\)"):
        gradlint.probe(model, (8, 16))


def test_batch_size_sets_the_samples_per_seed():
    report = gradlint.probe(small(), (16, 32), seeds=1, batch_size=4)
    assert report.probe.batch_size == 4 and report.inputs.startswith("(4, 32)")


OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"


def test_out_of_memory_halves_the_batch(monkeypatch):
    import gradlint.probing.probe as probing

    real = probing.measure
    asked = []

    def fake(model, ex, **kw):
        asked.append(ex.batch_size)
        if ex.batch_size > 4:
            raise torch.OutOfMemoryError(OOM)
        return real(model, ex, **kw)

    monkeypatch.setattr(probing, "measure", fake)
    report = gradlint.probe(small(), (16, 32), seeds=1)
    assert asked == [16, 8, 4]
    assert report.probe.batch_size == 4 and report.probe.requested_batch_size == 16
    assert "out of memory on cpu at batch size 16 (tried to allocate 2.00 GiB); retried with 8" in report.probe.notes
    assert "batch 4 of 16 asked" in str(report)


def test_out_of_memory_at_batch_one_names_the_memory(monkeypatch):
    import gradlint.probing.probe as probing

    def fake(model, ex, **kw):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(probing, "measure", fake)
    with pytest.raises(probing.ProbeError, match="even at batch size 1: it tried to allocate 2.00 GiB"):
        gradlint.probe(small(), (16, 32), seeds=1)


def test_nan_weights_are_a_finding_not_a_crash():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[2].weight[3, 1] = float("nan")
    static = gradlint.check(model, (8, 16))
    (f,) = [f for f in static.findings if f.code == "GL103"]
    assert f.module == "2" and "NaN or inf" in f.message
    probed = gradlint.probe(model, (8, 16), seeds=1)
    assert probed.summary.verdict == "exploding"
    assert [f.confirmed for f in probed.findings if f.code == "GL103"] == [True]


def test_non_finite_forward_names_the_first_op():
    class Log(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.log(self.a(x)))  # log of negative pre-activations: NaN

    torch.manual_seed(0)
    report = gradlint.probe(Log(), (8, 16), seeds=1)
    (f,) = [f for f in report.findings if f.code == "GL103"]
    assert f.evidence["phase"] == "forward" and "log in the model's forward is the first op" in f.message
    assert f.confirmed is True and report.summary.verdict == "exploding"
    # log has no transfer rule: the prediction says it does not know rather than "healthy".
    assert report.predicted_summary.verdict == "unknown"
    assert any("aten.log.default" in why for why in report.predicted_summary.unknown)


def test_device_errors_are_clear():
    from gradlint.probing.probe import ProbeError, resolve_device
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ProbeError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ProbeError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("example", ["sigmoid_mlp", "relu_std1_mlp", "kaiming_mlp", "residual_mlp", "vanilla_rnn",
                                     "small_resnet"])
def test_cuda_probe_matches_cpu(example):
    from pathlib import Path

    from gradlint.run.runner import run_paths

    path = str(Path(__file__).parent.parent / "examples" / f"{example}.py")
    (cpu,), _ = run_paths([path], probe=True, device="cpu", seeds=2)
    (gpu,), _ = run_paths([path], probe=True, device="cuda", seeds=2)
    assert gpu.summary.verdict == cpu.summary.verdict
    assert gpu.probe.peak_memory_bytes > 0
    for a, b in zip(cpu.params, gpu.params):
        # float64 on both devices: only summation order differs.
        assert b.measured_grad_rms == pytest.approx(a.measured_grad_rms, rel=1e-6), a.name


EXAMPLES = __import__("pathlib").Path(__file__).parent.parent / "examples"


def _cli(*args):
    from click.testing import CliRunner

    from gradlint.cli import main
    return CliRunner().invoke(main, list(args))


def test_cli_probe_prints_the_layer_table_and_writes_the_chart(tmp_path):
    import matplotlib.image

    out = tmp_path / "chart.png"
    res = _cli("check", str(EXAMPLES / "sigmoid_mlp.py"), "--probe", "--seeds", "1", "--plot", str(out))
    assert res.exit_code == 1, res.output
    assert "output-gradient RMS per layer, forward order" in res.output
    assert "measured verdict vanishing" in res.output
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    # Both lines are drawn: the predicted one in blue (#1f77b4 at alpha 0.6 over the white band between the
    # zones), the measured one in green (#2ca02c).
    rgb = (img[..., :3] * 255).round()
    blue_on_white = tuple(0.6 * c + 0.4 * 255 for c in (31, 119, 180))
    for color in (blue_on_white, (44, 160, 44)):
        assert ((abs(rgb - color) < 8).all(axis=-1)).sum() > 50, color


def test_cli_plot_directory_gets_one_chart_per_target(tmp_path, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)
    res = _cli("check", "examples/kaiming_mlp.py", "examples/relu_std1_mlp.py", "--plot", str(tmp_path / "charts"))
    assert res.exit_code == 1, res.output
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == [
        "examples_kaiming_mlp.py__KaimingMLP.png", "examples_relu_std1_mlp.py__ReLUStd1MLP.png"]


def test_cli_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    res = _cli("check", str(EXAMPLES / "kaiming_mlp.py"), "--plot", str(tmp_path / "x.png"))
    assert res.exit_code == 2
    assert "--plot needs matplotlib" in res.output and "torch-gradlint[plot]" in res.output
    assert "KaimingMLP: healthy" in res.output  # the report itself still printed
    assert not (tmp_path / "x.png").exists()


def test_cli_profile_draws_a_bar_per_layer_and_marks_the_zones():
    res = _cli("check", str(EXAMPLES / "relu_std1_mlp.py"), "--profile")
    assert res.exit_code == 1, res.output
    head, *rows = res.output[res.output.index("gradient profile"):].splitlines()
    assert "as the verdict reads it (predicted" in head
    rows = [line for line in rows if "█" in line]
    cols = {line.split()[0]: line.split() for line in rows}
    bars = {name: (max(float(c[1]), float(c[2]), key=abs), line.count("█"), line.endswith("exploding"))
            for name, c in cols.items() for line in rows if line.split()[0] == name}
    assert len(bars) == 20
    # ReLU with std 1 weights: the signal grows ~1.05 decades a layer going forward, the profile with it.
    lengths = [bars[f"layers.{i}"][1] for i in range(20)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    # Marked exactly where the value the bar shows reaches the threshold (2 decades).
    assert all(marked == (abs(value) >= 2) for value, _, marked in bars.values())
    assert sum(marked for _, _, marked in bars.values()) == 18
