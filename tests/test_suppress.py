"""Inline suppression comments and --select / --ignore."""

from __future__ import annotations

from click.testing import CliRunner

from gradlint.cli import main

MODEL = '''import torch.nn as nn
import gradlint


@gradlint.target(inputs=(16, 64))
class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 64) for _ in range(20)]){comment}

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).sigmoid()
        return x
'''


def run(tmp_path, comment, *args):
    """Check the model with only GL101 (or the rules ``args`` select) on."""
    f = tmp_path / "m.py"
    f.write_text(MODEL.format(comment=comment))
    return CliRunner().invoke(main, ["check", str(f), *(args or ("--select", "GL101"))])


def test_unsuppressed(tmp_path):
    r = run(tmp_path, "")
    assert r.exit_code == 1 and "GL101" in r.output


def test_gradlint_ignore_code(tmp_path):
    r = run(tmp_path, "  # gradlint: ignore[GL101]")
    assert "GL101 [" not in r.output and r.exit_code == 0


def test_gradlint_ignore_by_name(tmp_path):
    r = run(tmp_path, "  # gradlint: ignore[vanishing-gradient]")
    assert "GL101 [" not in r.output


def test_noqa_code(tmp_path):
    r = run(tmp_path, "  # noqa: GL101")
    assert "GL101 [" not in r.output


def test_bare_gradlint_ignore(tmp_path):
    r = run(tmp_path, "  # gradlint: ignore")
    assert r.exit_code == 0


def test_other_code_does_not_suppress(tmp_path):
    r = run(tmp_path, "  # gradlint: ignore[GL102]")
    assert "GL101 [" in r.output and r.exit_code == 1


def test_bare_noqa_is_left_to_other_linters(tmp_path):
    r = run(tmp_path, "  # noqa")
    assert "GL101 [" in r.output


def test_select_and_ignore(tmp_path):
    assert "GL101 [" not in run(tmp_path, "", "--ignore", "GL1").output
    assert "GL101 [" not in run(tmp_path, "", "--ignore", "vanishing-gradient").output
    assert "GL101 [" in run(tmp_path, "", "--select", "GL101").output
    assert "GL101 [" in run(tmp_path, "", "--select", "GL1").output
    assert "GL101 [" not in run(tmp_path, "", "--select", "GL9").output


def test_bare_ignore_silences_every_rule_on_its_line(tmp_path):
    loud = run(tmp_path, "", "--select", "GL")
    assert "m.py:9:1:" in loud.output
    quiet = run(tmp_path, "  # gradlint: ignore", "--select", "GL")
    assert "m.py:9:1:" not in quiet.output
