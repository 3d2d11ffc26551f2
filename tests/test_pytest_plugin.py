"""The pytest plugin (found through its pytest11 entry point) and the assertion API.

The plugin tests run generated test files in a nested pytest session (pytester), so they
see what a user's run shows: the outcome, the failure text and ``pytest --help``.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch.nn as nn

import gradlint

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


class SigmoidMLP(nn.Module):
    def __init__(self, depth=20, width=64):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x).sigmoid()
        return self.layers[-1](x)


class ReluMLP(nn.Module):
    def __init__(self, depth=20, width=64):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x).relu()
        return self.layers[-1](x)


# The generated test files import the same models from a models.py of their own.
MODELS = "import torch.nn as nn\n\n\n" + inspect.getsource(SigmoidMLP) + "\n\n" + inspect.getsource(ReluMLP)


@pytest.fixture(scope="module")
def torch_warm() -> None:
    """Import everything a check and a probe import, before any nested in-process run.

    pytester drops the modules a nested run imported once it ends; torch modules that
    register operator libraries then fail to register again on their next import.
    """
    gradlint.probe(SigmoidMLP(depth=2), (4, 64), seeds=1)


@pytest.fixture
def user_project(pytester: pytest.Pytester, torch_warm: None) -> pytest.Pytester:
    pytester.makepyfile(models=MODELS)
    pytester.syspathinsert()
    return pytester


def test_loading_the_plugin_or_the_assertions_imports_no_torch():
    code = ("import sys, gradlint.pytest_plugin, gradlint; gradlint.assert_healthy; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pytest_startup_with_the_plugin_imports_no_torch(pytester: pytest.Pytester):
    pytester.makepyfile(test_startup="""
        import sys

        def test_startup():
            assert "gradlint.pytest_plugin" in sys.modules   # loaded through the entry point
            assert "torch" not in sys.modules
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixture_passes_a_healthy_model_and_fails_a_sigmoid_mlp_with_the_finding(user_project):
    user_project.makepyfile(test_models="""
        from models import ReluMLP, SigmoidMLP

        def test_relu(gradlint):
            report = gradlint.assert_healthy(ReluMLP(), (16, 64))
            assert report.summary.verdict == "healthy"

        def test_sigmoid(gradlint):
            gradlint.assert_healthy(SigmoidMLP(), (16, 64))
    """)
    result = user_project.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "FAILED test_models.py::test_sigmoid" in out
    assert "gradlint: SigmoidMLP is not healthy: verdict vanishing" in out
    assert re.search(r"GL101 \[error\] models\.py:\d+:\d+ in layers\.\d+: gradient vanishes", out)
    assert "fix: replace the saturating activations" in out
    assert "weakest layers" in out and "layers.0.weight" in out


def test_command_line_options_reach_the_fixture(user_project):
    user_project.makepyfile(test_opts="""
        def test_defaults(gradlint):
            assert gradlint.probe_by_default
            assert (gradlint.device, gradlint.seeds, gradlint.threshold) == ("cpu", 2, 20.0)
            assert gradlint.fail_on == "warning"
            assert gradlint.ignore == ("GL2", "GL501", "GL401")
    """)
    result = user_project.runpytest_inprocess(
        "--gradlint-probe", "--gradlint-seeds", "2", "--gradlint-threshold", "20", "--gradlint-fail-on", "warning",
        "--gradlint-ignore", "GL2,GL501", "--gradlint-ignore", "GL401")
    result.assert_outcomes(passed=1)


def test_threshold_option_relaxes_the_verdict_and_its_rule(user_project):
    user_project.makepyfile(test_relaxed="""
        from models import SigmoidMLP

        def test_sigmoid(gradlint):
            report = gradlint.assert_healthy(SigmoidMLP(), (16, 64))
            assert report.summary.verdict == "healthy"
            assert not [f for f in report.findings if f.code == "GL101"]
    """)
    user_project.runpytest_inprocess("--gradlint-threshold", "20").assert_outcomes(passed=1)
    user_project.runpytest_inprocess().assert_outcomes(failed=1)


def test_probe_option_makes_the_measurement_decide(user_project):
    user_project.makepyfile(test_probed="""
        from models import SigmoidMLP

        def test_check_probes(gradlint):
            report = gradlint.check(SigmoidMLP(), (16, 64))
            assert report.probe is not None and report.probe.seeds == 1

        def test_sigmoid(gradlint):
            gradlint.assert_healthy(SigmoidMLP(), (16, 64))
    """)
    result = user_project.runpytest_inprocess("--gradlint-probe", "--gradlint-seeds", "1")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "measured on cpu over 1 seeds, predicted vanishing" in out
    assert "GL101 [error, confirmed]" in out
    assert "log10 RMS of the weight gradient, measured" in out


def test_options_show_in_pytest_help(pytester: pytest.Pytester):
    result = pytester.runpytest_inprocess("--help")
    out = result.stdout.str()
    assert "gradlint: gradient health of PyTorch models" in out
    for option in ("--gradlint-probe", "--gradlint-device", "--gradlint-seeds", "--gradlint-threshold",
                   "--gradlint-fail-on", "--gradlint-ignore"):
        assert option in out


def test_readme_pytest_example_runs(pytester: pytest.Pytester, torch_warm: None):
    section = (ROOT / "docs" / "pytest.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    pytester.makepyfile(test_readme=code)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=2)


# -- the assertion API, without pytest's help ------------------------------------------------

def test_assert_healthy_message_names_verdict_findings_fixes_and_weakest_layers():
    with pytest.raises(AssertionError) as info:
        gradlint.assert_healthy(SigmoidMLP(), (16, 64))
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0].startswith("gradlint: SigmoidMLP is not healthy: verdict vanishing (attenuation +")
    assert "predicted, no backward pass" in lines[0]
    assert re.search(r"^\d+ findings? at or above error:$", msg, re.M)
    gl101 = next(i for i, line in enumerate(lines) if line.lstrip().startswith("GL101 [error]"))
    assert re.search(r"test_pytest_plugin\.py:\d+:\d+", lines[gl101])
    assert lines[gl101 + 1].lstrip().startswith("fix: ")
    # One problem, one finding: the other rules' findings are its notes, each with its code.
    assert any(line.lstrip().startswith("note: GL201 (cause) ") for line in lines[gl101:])
    weakest = lines.index("weakest layers (log10 RMS of the weight gradient, predicted):")
    assert lines[weakest + 1].split()[0] == "layers.0.weight"   # the first layer is the weakest
    assert any(line.startswith("strongest: ") for line in lines)


def test_assert_healthy_returns_the_report_of_a_healthy_model():
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 8))
    report = gradlint.assert_healthy(model, (16, 64))
    assert report.summary.verdict == "healthy"


def test_assert_healthy_threshold_aliases_and_ignore():
    model = SigmoidMLP(depth=6)
    gradlint.assert_healthy(model, (16, 64), max_decades=10)
    gradlint.assert_healthy(model, (16, 64), threshold=10)
    with pytest.raises(TypeError, match="disagree"):
        gradlint.assert_healthy(model, (16, 64), threshold=1, max_decades=10)
    with pytest.raises(AssertionError, match="GL101"):
        gradlint.assert_healthy(model, (16, 64), threshold=1)
    # Ignoring the verdict's rule accepts the verdict; the other rules still count.
    report = gradlint.check(model, (16, 64), threshold=1, rule_options={"GL101": {"threshold": 1}})
    assert report.summary.verdict == "vanishing"
    assert {f.code for f in report.findings if f.severity == "error"} == {"GL101"}
    assert "GL201" in {n.code for f in report.findings for n in f.notes if n.severity == "error"}
    with pytest.raises(AssertionError) as info:
        report.assert_clean(ignore=["GL101"])
    assert re.search(r"^  GL201 \[error\]", str(info.value), re.M)
    assert not re.search(r"^  GL101 ", str(info.value), re.M)
    report.assert_clean(ignore=["vanishing-gradient", "GL2"])


def test_assert_clean_fail_on_and_could_not_analyze():
    report = gradlint.check(SigmoidMLP(depth=4), (16, 64), threshold=10, rule_options={"GL101": {"threshold": 10}})
    assert [(f.code, f.severity) for f in report.findings] == [("GL201", "warning")]
    report.assert_clean()
    with pytest.raises(AssertionError, match="1 finding at or above warning:\n  GL201 \\[warning\\]"):
        report.assert_clean(fail_on="warning")
    report.assert_clean(fail_on="warning", ignore="GL201")
    broken = gradlint.Report(target="m.py::Net", status="error", error="m.py:3: ValueError: boom")
    with pytest.raises(AssertionError, match=r"could not analyze m\.py::Net: m\.py:3: ValueError: boom"):
        broken.assert_clean()


def test_after_a_probe_refuted_findings_pass_and_the_measured_verdict_decides():
    predicted = gradlint.check(SigmoidMLP(), (16, 64))
    healthy = replace(predicted.summary, verdict="healthy", attenuation_decades=0.5)
    # The agreement of a probe whose measurement refutes the prediction.
    agreement = replace(gradlint.probe(SigmoidMLP(depth=2), (16, 64), seeds=2).probe, median_decades=3.0,
                        worst_decades=5.0, disagreeing=("layers.0.weight",))
    refuted = replace(predicted, summary=healthy, predicted_summary=predicted.summary, probe=agreement,
                      findings=tuple(replace(f, confirmed=False) for f in predicted.findings))
    refuted.assert_clean()
    unprobed = replace(refuted, findings=tuple(replace(f, confirmed=None) for f in predicted.findings))
    with pytest.raises(AssertionError, match=r"measured on cpu over 2 seeds, predicted vanishing"):
        unprobed.assert_clean()
    # Measured vanishing although nothing was predicted: the verdict alone fails.
    silent = replace(refuted, summary=predicted.summary, findings=())
    with pytest.raises(AssertionError, match="the measured verdict is vanishing, though no GL101 finding says so"):
        silent.assert_clean()


def test_assertion_survives_python_O():
    # python -O strips assert statements; the check must not depend on them. A hand-made
    # report keeps torch (and its slow first -O compile) out of the subprocess.
    code = textwrap.dedent("""
        from gradlint.base.findings import Finding
        from gradlint.base.report import Report
        from gradlint.base.report import Summary
        finding = Finding("GL101", "vanishing-gradient", "error", "vanishing", "gradient vanishes", fix="use ReLU")
        report = Report(target="Net", summary=Summary("vanishing", 5.0), findings=(finding,))
        try:
            report.assert_clean()
        except AssertionError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[:4] == [
        "gradlint: Net is not healthy: verdict vanishing "
        "(attenuation +5.0 decades, threshold 2; predicted, no backward pass)",
        "1 finding at or above error:", "  GL101 [error] model: gradient vanishes", "      fix: use ReLU"]


# -- the same answer as the command line: configuration, inline suppressions, the public API ---------

AGREE_MODELS = '''\
import torch.nn as nn


class SigmoidMLP(nn.Module):
    def __init__(self, depth=20, width=64):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x).sigmoid()
        return self.layers[-1](x)


class QuietSigmoidMLP(nn.Module):
    def __init__(self, depth=20, width=64):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])  # noqa: GL101, GL401, GL501

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x).sigmoid()  # gradlint: ignore[saturating-activation-chain]
        return self.layers[-1](x)
'''

AGREE_TESTS = '''\
from models import QuietSigmoidMLP, SigmoidMLP


def test_the_configuration_applies(gradlint):
    gradlint.assert_healthy(SigmoidMLP(), (16, 64))


def test_inline_suppressions_apply(gradlint):
    report = gradlint.assert_healthy(QuietSigmoidMLP(), (16, 64), config=False)
    assert sorted({f.code for f in report.suppressed}) == ["GL101", "GL201", "GL401", "GL501"]


def test_the_fixture_carries_the_public_api(gradlint):
    tokens = gradlint.tokens((2, 8), vocab=100)
    assert isinstance(tokens, gradlint.Tokens) and tokens.vocab == 100
    assert gradlint.ExitCode.NO_TARGETS == 5 and gradlint.__version__
'''


@pytest.mark.slow
def test_the_fixture_reads_the_configuration_and_comments_as_the_command_line_does(pytester: pytest.Pytester):
    pytester.makepyfile(models=AGREE_MODELS, test_agree=AGREE_TESTS)
    pytester.makefile(".toml", pyproject='[tool.gradlint]\nignore = ["GL1", "GL2", "GL4", "GL5"]\n')
    pytester.syspathinsert()
    # The command line passes both models: the configuration ignores what SigmoidMLP has...
    cli = subprocess.run([sys.executable, "-m", "gradlint", "check", "models.py", "--no-cache"],
                         cwd=pytester.path, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    # ...and so does pytest, in a process of its own as a user runs it.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    # Opting out of both: the configuration and the comments no longer apply.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--gradlint-isolated", "--gradlint-ignore-noqa")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "FAILED test_agree.py::test_the_configuration_applies" in out
    assert "FAILED test_agree.py::test_inline_suppressions_apply" in out
    assert "SigmoidMLP is not healthy: verdict vanishing" in out


def test_check_reads_the_nearest_configuration_unless_told_not_to(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.gradlint]\nignore = ["GL101"]\nfail-on = "warning"\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    report = gradlint.check(SigmoidMLP(), (16, 64))
    assert report.fail_on == "warning" and "GL101" not in {f.code for f in report.findings}
    isolated = gradlint.check(SigmoidMLP(), (16, 64), config=False)
    assert isolated.fail_on == "error" and "GL101" in {f.code for f in isolated.findings}
    gradlint.assert_healthy(SigmoidMLP(), (16, 64), ignore=("GL2", "GL4", "GL5"))   # the verdict is accepted
    with pytest.raises(AssertionError, match="verdict vanishing"):
        gradlint.assert_healthy(SigmoidMLP(), (16, 64), ignore=("GL2", "GL4", "GL5"), config=False)
