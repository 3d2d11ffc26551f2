"""Every file in examples/ runs as is and gives the verdict and codes it is there to show."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradlint.run.runner import run_paths

EX = Path(__file__).resolve().parents[1] / "examples"
# Per example: the verdict, the codes of its findings above info, and the codes of the notes
# attached to them (one finding per problem: its causes and other fixes are notes).
EXPECTED = {
    "sigmoid_mlp.py": ("vanishing", {"GL101"}, {"GL201", "GL401", "GL501"}),
    "relu_std1_mlp.py": ("exploding", {"GL102"}, {"GL301", "GL401", "GL501"}),
    "kaiming_mlp.py": ("healthy", set(), set()),
    "residual_mlp.py": ("healthy", set(), set()),
    "vanilla_rnn.py": ("vanishing", {"GL101"}, {"GL601"}),
    "small_resnet.py": ("healthy", set(), set()),
}


def test_every_example_is_listed():
    assert {p.name for p in EX.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name):
    reports, _ = run_paths([str(EX / name)])
    (report,) = reports
    verdict, codes, notes = EXPECTED[name]
    assert report.status == "ok", report.error
    assert report.summary.verdict == verdict
    assert {f.code for f in report.findings if f.severity != "info"} == codes
    assert {n.code for f in report.findings if f.severity != "info" for n in f.notes} == notes
    for f in report.findings:
        assert f.path == str(EX / name) and f.line  # points at the user's own file
        assert all(n.path == str(EX / name) and n.line for n in f.notes)


def test_gl101_fixes_for_the_sigmoid_mlp_work_when_measured():
    """Both fixes GL101 gives for sigmoid_mlp.py's vanishing chain, applied, measure healthy; the
    LayerNorm-before-each-sigmoid it used to offer still measures vanishing (8.2 decades here)."""
    import torch
    import torch.nn as nn

    import gradlint

    class Residual(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(256), nn.Linear(256, 256), act(),
                                                      nn.Linear(256, 256)) for _ in range(20))

        def forward(self, x):
            for block in self.blocks:
                x = x + block(x)
            return x

    def relu_he():
        layers = [m for _ in range(20) for m in (nn.Linear(256, 256), nn.ReLU())]
        for m in layers[::2]:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        return nn.Sequential(*layers)

    def layernorm_before_sigmoid():
        return nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(256, 256), nn.LayerNorm(256), nn.Sigmoid())])

    torch.manual_seed(0)
    for build, verdict in ((relu_he, "healthy"), (lambda: Residual(nn.Sigmoid), "healthy"),
                           (layernorm_before_sigmoid, "vanishing")):
        report = gradlint.probe(build(), (64, 256))
        assert report.summary.verdict == verdict, (build, report)  # after a probe: the measured verdict
