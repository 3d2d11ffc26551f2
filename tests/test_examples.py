"""Every file in examples/ runs as is and gives the verdict and codes it is there to show."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradlint.runner import run_paths

EX = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {
    "sigmoid_mlp.py": ("vanishing", {"GL101", "GL201", "GL401", "GL501"}),
    "relu_std1_mlp.py": ("exploding", {"GL102", "GL301", "GL401"}),
    "kaiming_mlp.py": ("healthy", set()),
    "residual_mlp.py": ("healthy", set()),
    "vanilla_rnn.py": ("vanishing", {"GL101", "GL601"}),
    "small_resnet.py": ("healthy", set()),
}


def test_every_example_is_listed():
    assert {p.name for p in EX.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name):
    reports, _ = run_paths([str(EX / name)])
    (report,) = reports
    verdict, codes = EXPECTED[name]
    assert report.status == "ok", report.error
    assert report.summary.verdict == verdict
    assert {f.code for f in report.findings if f.severity != "info"} == codes
    for f in report.findings:
        assert f.path == str(EX / name) and f.line  # points at the user's own file
