"""The command line: exit codes, output forms, and what it imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from gradlint.cli import main

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_finding_exits_1_with_ruff_style_line():
    r = run("check", str(EX / "sigmoid_mlp.py"))
    assert r.exit_code == 1
    first = r.output.splitlines()[0]
    # At the line of the cause, self.act = nn.Sigmoid(); the other rules' findings are its notes.
    assert first.startswith(f"{EX / 'sigmoid_mlp.py'}:16:1: GL101 [error] gradient vanishes") or \
        first.startswith("examples/sigmoid_mlp.py:16:1: GL101 [error]")
    assert ": note: GL201 cause, at act: " in r.output
    assert "fix:" in r.output and "SigmoidMLP: vanishing" in r.output


def test_healthy_exits_0():
    r = run("check", str(EX / "kaiming_mlp.py"))
    assert r.exit_code == 0, r.output
    assert "healthy" in r.output


def test_target_selection_and_json():
    r = run("check", f"{EX / 'small_resnet.py'}::SmallResNet", "--format", "json")
    assert r.exit_code == 0
    doc = json.loads(r.output)
    (t,) = doc["targets"]
    assert t["target"].endswith("small_resnet.py::SmallResNet") and t["summary"]["verdict"] == "healthy"


def test_syntax_error_exits_2_and_the_rest_goes_on(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ndef broken(:\n")
    r = run("check", str(bad), str(EX / "kaiming_mlp.py"))
    assert r.exit_code == 2
    assert f"{bad}:2" in r.output and "KaimingMLP: healthy" in r.output


def test_fail_on_warning_and_input_shape(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.act = nn.Tanh()\n        self.fc = nn.Linear(8, 8)\n"
                 "    def forward(self, x):\n        return self.fc(self.act(x))\n")
    r = run("check", str(f), "--input-shape", "4,8")
    assert r.exit_code == 0 and "analysis: export" in r.output


def test_rules_and_explain():
    r = run("rules")
    assert "GL101" in r.output and "vanishing-gradient" in r.output
    r = run("explain", "exploding-gradient")
    assert "## Why it matters" in r.output


def test_version_and_help_do_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from gradlint.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(main, ['--version']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "gradlint", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "gradlint" in out.stdout
