"""Notebooks: ``gradlint check notebook.ipynb`` on notebooks written with nbformat, and a
``Report`` as Jupyter shows it (``_repr_html_``, a short ``repr``, ``plot()``)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
import torch.nn as nn

import gradlint

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = "%matplotlib inline\n!pip install torch\nimport torch\nimport torch.nn as nn"
DEEP = """\
class Deep(nn.Module):
    def __init__(self, depth=20):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 64) for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).sigmoid(){comment}
        return x"""
# Would stop the check if it ran: a notebook's training and display code is not run.
TRAIN = "model = Deep()\nmodel(torch.randn(2, 64)).shape\nfor epoch in range(3):\n    raise SystemExit('trained')"


def write(path: Path, *sources: str, markdown: str = "# A model") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, str(path))
    return path


def gradlint_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRADLINT_CACHE_DIR": str(cwd / ".cache"), "GRADLINT_NO_PROGRESS": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "gradlint", "check", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_check_a_notebook_points_at_cell_and_line_and_skips_magics_shell_and_training(tmp_path):
    write(tmp_path / "model.ipynb", IMPORTS, "%%bash\necho this is no Python", DEEP.format(comment=""), TRAIN)
    write(tmp_path / "quiet.ipynb", IMPORTS, DEEP.format(comment="  # noqa: GL101, GL201, GL401, GL501"))
    r = gradlint_check("model.ipynb", "quiet.ipynb", "--input-shape", "8,64", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    # The class is the third code cell (the %%bash cell counts, the markdown cell does not);
    # the findings point at its sigmoid line, line 8 of the cell.
    heads = [line for line in r.stdout.splitlines() if ": GL" in line and not line.startswith(" ")]
    assert heads and all(line.startswith("model.ipynb:cell 3:8:1: GL") for line in heads), r.stdout
    assert {h.split(": ")[1].split(" ")[0] for h in heads} >= {"GL101"}
    assert "model.ipynb::Deep: vanishing" in r.stdout
    # The same model, its findings silenced by a comment in the cell.
    assert "quiet.ipynb:cell" not in r.stdout and "quiet.ipynb::Deep: vanishing" in r.stdout
    assert "trained" not in r.stdout + r.stderr
    assert len(heads) == 1  # one problem, one finding; the other rules' findings are its notes
    assert r.stdout.rstrip().endswith("Found 1 error, 0 warnings; 2 targets analyzed, 0 skipped, 0 could not analyze.")


@pytest.mark.slow
def test_a_broken_cell_is_reported_at_its_cell_and_line(tmp_path):
    write(tmp_path / "broken.ipynb", "import torch.nn as nn", "x = 1\nif x:\n    y = (\n")
    (tmp_path / "notjson.ipynb").write_text("{not json")
    r = gradlint_check("broken.ipynb", "notjson.ipynb", cwd=tmp_path)
    assert r.returncode == 2
    assert "broken.ipynb:cell 2:3: could not analyze broken.ipynb: SyntaxError: '(' was never closed" in r.stdout
    assert "notjson.ipynb: could not analyze notjson.ipynb: cannot read the notebook: NotJSONError" in r.stdout


def test_python_source_keeps_lines_and_blanks_magics_and_shell_lines():
    from gradlint.load.notebooks import python_source

    src = "%time x = 1\nfiles = !ls\nif True:\n    !echo hi\n    y = a % b\nz = not y\n"
    assert python_source(src).splitlines() == ["pass", "pass", "if True:", "    pass", "    y = a % b", "z = not y"]
    assert python_source("%%writefile a.txt\nhello\nworld").splitlines() == ["", "", ""]


class SigmoidMLP(nn.Module):
    def __init__(self, depth=12, width=32):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).sigmoid()
        return x


def test_report_in_jupyter_shows_verdict_findings_and_an_inline_chart():
    report = gradlint.check(SigmoidMLP(), (16, 32), config=False)
    text = repr(report)
    assert len(text.splitlines()) <= 3 and len(text) < 300, text
    assert text.startswith("<Report SigmoidMLP: vanishing (+") and "GL101" in text
    html = report._repr_html_()
    assert "<b>SigmoidMLP</b>" in html and ">vanishing</b>" in html
    for f in report.findings:
        assert f"<b>{f.code}</b>" in html
        for n in f.notes:  # the other rules' findings about the same problem, as notes
            assert f"<i>note:</i> <b>{n.code}</b> {n.role}" in html
    assert any(f.notes for f in report.findings)
    assert "<script" not in html
    svg = html[html.index("<svg"):html.rindex("</svg>") + len("</svg>")]
    ET.fromstring(svg)   # the chart is well-formed inline SVG
    assert "layers.0" in svg or "layers.11" in svg


def test_report_plot_returns_a_matplotlib_figure_with_one_point_per_layer():
    from matplotlib.figure import Figure

    report = gradlint.check(SigmoidMLP(), (16, 32), config=False)
    fig = report.plot()
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    # The chart draws what the verdict reads (output/plot.py): per layer, its gradient signal
    # x·dL/dx in decades relative to the output, one point per Linear, named on the x axis.
    (predicted,) = [line for line in ax.get_lines() if line.get_label().startswith("predicted: gradient signal")]
    linears = [lr for lr in report.layers if lr.kind == "linear"]
    assert len(linears) == 12
    assert list(predicted.get_xdata()) == list(range(12))
    assert list(predicted.get_ydata()) == pytest.approx([lr.signal_decades for lr in linears])
    assert [t.get_text() for t in ax.get_xticklabels()] == [lr.module for lr in linears]
    assert ax.get_title() == "SigmoidMLP: verdict vanishing"
