"""One finding per problem (``gradlint.lint.grouping``): the findings the rules report about one
problem become one finding, the others its notes, each note at its own location.

The command line runs in a subprocess, as users run it: the 20-layer sigmoid MLP of the quick
start, a model whose helper initializes its layers too small, a model with two independent
problems, and what ``--ignore``, ``# noqa`` and the configuration do to a group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradlint.base.findings import Finding
from gradlint.base.report import LayerReport
from gradlint.lint.grouping import flatten, group

ROOT = Path(__file__).resolve().parents[1]
SIGMOID = ROOT / "examples" / "sigmoid_mlp.py"
FINDING = re.compile(r"^(\S+?):(\d+):(\d+): (GL\d{3}) \[(\w+)\]", re.M)
NOTE = re.compile(r"^    (\S+?):(\d+):(\d+): note: (GL\d{3}) (cause|another fix)", re.M)

# A helper builds each layer and initializes it far too small for the ReLU after it.
BAD_INIT = textwrap.dedent("""\
    import torch.nn as nn

    import gradlint


    def make_layer(width):
        layer = nn.Linear(width, width)
        nn.init.normal_(layer.weight, std=0.01)
        return layer


    @gradlint.target(inputs=(64, 128))
    class Net(nn.Module):
        def __init__(self, depth=10, width=128):
            super().__init__()
            self.layers = nn.ModuleList([make_layer(width) for _ in range(depth)])
            self.act = nn.ReLU()

        def forward(self, x):
            for layer in self.layers:
                x = self.act(layer(x))
            return x
    """)

# Two problems that have nothing to do with each other: the sigmoid chain, and a layer forward never uses.
TWO_PROBLEMS = SIGMOID.read_text().replace(
    "        self.act = nn.Sigmoid()\n",
    "        self.act = nn.Sigmoid()\n        self.spare = nn.Linear(width, width)\n")


def gradlint(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CI")}
    return subprocess.run([sys.executable, "-m", "gradlint", *args, "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("grouping")
    (ws / ".git").mkdir()  # the repository root, so paths print relative to it
    shutil.copy(SIGMOID, ws / "sigmoid_mlp.py")
    (ws / "bad_init.py").write_text(BAD_INIT)
    (ws / "two_problems.py").write_text(TWO_PROBLEMS)
    return ws


@pytest.fixture(scope="module")
def json_run(work) -> dict:
    r = gradlint("check", "sigmoid_mlp.py", "bad_init.py", "two_problems.py", "--format", "json", cwd=work)
    assert r.returncode == 1, r.stderr
    return {t["target"].split("::")[0]: t for t in json.loads(r.stdout)["targets"]}


@pytest.mark.slow
def test_the_sigmoid_mlp_is_one_error_at_its_sigmoid_with_the_other_codes_as_notes(work):
    r = gradlint("check", "sigmoid_mlp.py", cwd=work)
    assert r.returncode == 1, r.stderr
    # Before grouping: GL101, GL401, GL501 at line 15 and GL201 at line 16, four errors for one cause.
    assert FINDING.findall(r.stdout) == [("sigmoid_mlp.py", "16", "1", "GL101", "error")]
    assert "        self.act = nn.Sigmoid()" == SIGMOID.read_text().splitlines()[15]  # line 16: the cause
    assert NOTE.findall(r.stdout) == [("sigmoid_mlp.py", "16", "1", "GL201", "cause"),
                                      ("sigmoid_mlp.py", "15", "1", "GL401", "another fix"),
                                      ("sigmoid_mlp.py", "15", "1", "GL501", "another fix")]
    assert "note: GL201 cause, at act: 19 sigmoids in a row" in r.stdout
    assert r.stdout.rstrip().endswith("Found 1 error, 0 warnings; 1 target analyzed, 0 skipped, 0 could not analyze.")


@pytest.mark.slow
def test_json_carries_the_notes_with_their_codes_and_locations(json_run, work):
    (f,) = json_run["sigmoid_mlp.py"]["findings"]
    assert (f["code"], f["severity"], f["line"], f["module"]) == ("GL101", "error", 16, "layers.16")
    assert [(n["code"], n["role"], n["severity"], n["line"], n["module"]) for n in f["notes"]] == [
        ("GL201", "cause", "error", 16, "act"), ("GL401", "fix", "error", 15, "layers.0"),
        ("GL501", "fix", "error", 15, "layers.0")]
    assert all(n["message"] and n["fix"] and n["evidence"] and n["path"].endswith("sigmoid_mlp.py")
               for n in f["notes"])


@pytest.mark.slow
def test_a_bad_init_in_a_helper_is_one_finding_whose_cause_is_the_init(json_run):
    (f,) = json_run["bad_init.py"]["findings"]
    assert (f["code"], f["severity"]) == ("GL101", "error")
    assert [(n["code"], n["role"]) for n in f["notes"]] == [("GL301", "cause"), ("GL401", "fix")]
    assert "initialized with weight variance" in f["notes"][0]["message"]


@pytest.mark.slow
def test_two_independent_problems_stay_two_findings(json_run):
    findings = json_run["two_problems.py"]["findings"]
    assert [(f["code"], f["module"]) for f in findings] == [("GL101", "layers.16"), ("GL702", "spare")]
    assert [n["code"] for n in findings[0]["notes"]] == ["GL201", "GL401", "GL501"] and findings[1]["notes"] == []


@pytest.mark.slow
def test_the_fingerprint_is_the_root_findings_own(json_run, work):
    """The notes are not part of the fingerprint: a baseline made with them still knows the
    finding when a note's rule is ignored, and the reverse."""
    alone = gradlint("check", "sigmoid_mlp.py", "--format", "json", "--select", "GL101", cwd=work)
    (f,) = json.loads(alone.stdout)["targets"][0]["findings"]
    assert f["notes"] == [] and f["line"] == 15  # alone, GL101 points where the gradient falls: the layers
    assert f["fingerprint"] == json_run["sigmoid_mlp.py"]["findings"][0]["fingerprint"]


@pytest.mark.slow
def test_ignoring_the_symptom_leaves_its_causes_as_one_finding(work):
    r = gradlint("check", "sigmoid_mlp.py", "--ignore", "GL101", cwd=work)
    assert r.returncode == 1, r.stderr
    assert FINDING.findall(r.stdout) == [("sigmoid_mlp.py", "16", "1", "GL201", "error")]
    assert [n[3] for n in NOTE.findall(r.stdout)] == ["GL401", "GL501"]


@pytest.mark.slow
def test_a_noqa_on_the_line_a_finding_points_at_silences_that_code_only(work):
    lines = SIGMOID.read_text().splitlines()
    lines[15] += "  # noqa: GL101"  # the line GL101 points at now, the sigmoid's
    lines[14] += "  # noqa: GL501"  # a note's own line
    (work / "noqa.py").write_text("\n".join(lines) + "\n")
    r = gradlint("check", "noqa.py", "--format", "json", cwd=work)
    assert r.returncode == 1, r.stderr
    (f,) = json.loads(r.stdout)["targets"][0]["findings"]
    # GL101 is silenced; its cause GL201 is the finding now, GL501 is gone from the notes.
    assert (f["code"], f["line"]) == ("GL201", 16)
    assert [n["code"] for n in f["notes"]] == ["GL401"]


@pytest.mark.slow
def test_per_file_ignores_and_severities_regroup(work):
    (work / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.gradlint]
        per-file-ignores = { "sigmoid_mlp.py" = ["GL2"] }

        [tool.gradlint.rules.GL101]
        severity = "info"
        """))
    try:
        r = gradlint("check", "sigmoid_mlp.py", "--format", "json", cwd=work)
    finally:
        (work / "pyproject.toml").unlink()
    assert r.returncode == 1, r.stderr
    (f,) = json.loads(r.stdout)["targets"][0]["findings"]
    # The error is GL401's now; GL101, made info, is a note under it, and GL201 is ignored.
    assert (f["code"], f["severity"]) == ("GL401", "error")
    assert [(n["code"], n["severity"]) for n in f["notes"]] == [("GL101", "info"), ("GL501", "error")]


# -- the pass itself, on findings made by hand ------------------------------------------------

def _layers(n: int) -> tuple[LayerReport, ...]:
    return tuple(LayerReport(module=f"layers.{i}", kind="linear", node=f"linear_{i}", grad_rms=1.0, forward_rms=1.0)
                 for i in range(n))


def _finding(code: str, severity: str = "warning", **kw) -> Finding:
    category = {"GL101": "vanishing", "GL201": "saturation", "GL301": "init", "GL401": "normalization",
                "GL501": "skip", "GL702": "unused"}[code]
    return Finding(code=code, name=code.lower(), severity=severity, category=category, message=f"{code} here",
                   **kw)


def test_causes_on_disjoint_layers_stay_apart_and_overlapping_ones_join():
    layers = _layers(20)
    early = _finding("GL201", module="layers.0", evidence={"first": "layers.0", "last": "layers.5"})
    late = _finding("GL201", module="layers.10", evidence={"first": "layers.10", "last": "layers.19"})
    norm = _finding("GL401", module="layers.12", evidence={"first": "layers.12", "last": "layers.15"})
    out = group([early, late, norm], layers)
    assert sorted((f.module, [n.code for n in f.notes]) for f in out) == [("layers.0", []),
                                                                          ("layers.10", ["GL401"])]
    # A symptom concerns the whole model: with one, they are one problem.
    (one,) = group([early, late, norm, _finding("GL101", "error", module="layers.3")], layers)
    assert one.code == "GL101" and sorted(n.code for n in one.notes) == ["GL201", "GL201", "GL401"]


def test_the_most_severe_leads_and_a_cause_of_the_other_direction_stays_apart():
    layers = _layers(4)
    grow = _finding("GL301", "error", module="layers.0", evidence={"decades": 5.0, "modules": ["layers.0"]})
    vanish = _finding("GL101", "warning", module="layers.2", line=7, path="m.py")
    assert len(group([grow, vanish], layers)) == 2  # an init that makes the gradient grow explains no vanishing
    shrink = replace_evidence(grow, {"decades": -5.0, "modules": ["layers.0"]})
    (one,) = group([shrink, vanish], layers)
    assert (one.code, [n.code for n in one.notes]) == ("GL301", ["GL101"])  # the error leads the warning


def replace_evidence(f: Finding, evidence: dict) -> Finding:
    from dataclasses import replace

    return replace(f, evidence=evidence)


def test_group_is_idempotent_and_flatten_gives_back_every_finding():
    layers = _layers(20)
    fs = [_finding("GL101", "error", module="layers.16", path="m.py", line=15),
          _finding("GL201", "error", module="layers.3", path="m.py", line=16),
          _finding("GL401", "error", module="layers.0", path="m.py", line=15,
                   evidence={"first": "layers.0", "last": "layers.19"}),
          _finding("GL702", module="spare", path="m.py", line=17)]
    once = group(fs, layers)
    assert group(once, layers) == once
    assert sorted(f.code for f in flatten(once)) == ["GL101", "GL201", "GL401", "GL702"]
    assert [(f.code, f.line) for f in once] == [("GL101", 16), ("GL702", 17)]  # at the cause's line


# -- a cause inside a helper ------------------------------------------------------------------

# The brief's helper: each layer made and initialized far too large in a function __init__ calls.
HELPER = BAD_INIT.replace("std=0.01", "std=1.0")
HELPER_LINES = HELPER.splitlines()
INIT_LINE = HELPER_LINES.index("    nn.init.normal_(layer.weight, std=1.0)") + 1
LINEAR_LINE = HELPER_LINES.index("    layer = nn.Linear(width, width)") + 1
CALL_LINE = next(i for i, s in enumerate(HELPER_LINES, 1) if "make_layer(width) for" in s)


@pytest.mark.slow
def test_a_cause_in_a_helper_points_at_the_init_call_with_the_constructor_line_as_context(work):
    (work / "helper.py").write_text(HELPER)
    r = gradlint("check", "helper.py", "--format", "json", cwd=work)
    assert r.returncode == 1, r.stderr
    (f,) = json.loads(r.stdout)["targets"][0]["findings"]

    def via(x):
        return [(Path(p).name, line) for p, line in x["via"]]

    # The symptom leads, at its cause's line: the init call inside make_layer, called from __init__.
    assert (f["code"], f["line"], via(f)) == ("GL102", INIT_LINE, [("helper.py", CALL_LINE)])
    notes = {n["code"]: n for n in f["notes"]}
    assert (notes["GL301"]["line"], via(notes["GL301"])) == (INIT_LINE, [("helper.py", CALL_LINE)])
    # A fix about the layer itself points at the nn.Linear the helper makes.
    assert (notes["GL401"]["line"], via(notes["GL401"])) == (LINEAR_LINE, [("helper.py", CALL_LINE)])
    # The calling line names its file as `path` names it, in the finding and in each note.
    assert {p for x in (f, *f["notes"]) for p, _ in x["via"]} == {f["path"]}
    text = gradlint("check", "helper.py", cwd=work).stdout
    assert f"helper.py:{INIT_LINE}:1: GL102 [error]" in text and f"\n    called from helper.py:{CALL_LINE}\n" in text


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_a_helper_in_another_file_and_its_caller_are_spelt_as_the_finding_spells_its_file(
        tmp_path, monkeypatch, spelling):
    from gradlint.capture.graph import Source
    from gradlint.lint.relocate import relocate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib").mkdir()
    helpers, model = tmp_path / "lib" / "helpers.py", tmp_path / "model.py"
    helpers.write_text("\n" * 9)
    model.write_text("\n" * 19)
    # As sites records them: frames' file names, the innermost (the init call in the helper) first.
    sites = {"layers.0.weight": (Source(str(helpers), 5), Source(str(model), 16))}
    path = "model.py" if spelling == "relative" else str(model)
    f = _finding("GL301", "error", module="layers.0", path=path, line=16)
    (moved,) = relocate([f], sites)
    if spelling == "relative":
        assert (moved.path, moved.line, moved.via) == ("lib/helpers.py", 5, (("model.py", 16),))
    else:
        assert (moved.path, moved.line, moved.via) == (str(helpers), 5, ((str(model), 16),))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["init call", "constructor call"])
def test_a_noqa_on_the_helper_line_or_on_the_line_calling_it_silences(work, where):
    lines = list(HELPER_LINES)
    if where == "init call":  # the line GL301 points at now
        lines[INIT_LINE - 1] += "  # noqa: GL301"
    else:  # the line every finding pointed at before they moved into the helper
        lines[CALL_LINE - 1] += "  # noqa: GL102, GL301"
    (work / "helper_noqa.py").write_text("\n".join(lines) + "\n")
    r = gradlint("check", "helper_noqa.py", "--format", "json", "--warn-unused-ignores", cwd=work)
    findings = json.loads(r.stdout)["targets"][0]["findings"]
    assert "GL904" not in [f["code"] for f in findings]  # the comment is used
    (f,) = findings
    if where == "init call":
        # GL301 is gone; GL102, without a cause, is at its own place: the layers the helper makes.
        assert (f["code"], f["line"], [n["code"] for n in f["notes"]]) == ("GL102", LINEAR_LINE, ["GL401"])
    else:
        # Both silenced through the line that called the helper; the normalization fix is left.
        assert (f["code"], f["line"], f["notes"]) == ("GL401", LINEAR_LINE, [])
