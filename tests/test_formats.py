"""Output formats of `gradlint check`: SARIF against the official schema, GitHub workflow
commands, JSON, --output and colors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from helpers import HELPER_DEEP, HELPER_LAYERS

from gradlint.base.findings import Finding
from gradlint.base.paths import repo_root, root_relative
from gradlint.base.report import Report
from gradlint.cli import main
from gradlint.output.formats import (
    FINGERPRINT_KEY,
    github_escape_data,
    github_escape_property,
    github_lines,
    render,
    sarif_doc,
    use_color,
)
from gradlint.run.runner import run_paths

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
ESC = "\x1b["
GITHUB_LINE = re.compile(r"^::(?P<level>error|warning|notice)(?: (?P<props>[^:]*))?::(?P<msg>.*)$")


def _unescape(text: str) -> str:
    return (text.replace("%0D", "\r").replace("%0A", "\n").replace("%3A", ":").replace("%2C", ",")
            .replace("%25", "%"))


def _parse_github(line: str) -> tuple[str, dict[str, str], str]:
    m = GITHUB_LINE.match(line)
    assert m, f"not a workflow command: {line!r}"
    props = dict(p.split("=", 1) for p in m["props"].split(",")) if m["props"] else {}
    return m["level"], {k: _unescape(v) for k, v in props.items()}, _unescape(m["msg"])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A repository (it has .git) with a vanishing model in a subfolder and a broken file."""
    ws = tmp_path_factory.mktemp("repo")
    (ws / ".git").mkdir()
    (ws / "models").mkdir()
    shutil.copy(ROOT / "examples" / "sigmoid_mlp.py", ws / "models" / "m.py")
    (ws / "models" / "bad.py").write_text("import torch\ndef broken(:\n")
    return ws


@pytest.fixture(scope="module")
def run(workspace):
    reports, notes = run_paths([str(workspace / "models" / "m.py"), str(workspace / "models" / "bad.py")])
    return reports, notes


def cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_vendored_schema_is_the_official_sarif_2_1_0():
    schema = json.loads(SCHEMA.read_text())
    assert "2.1.0" in schema["id"] and schema["id"].startswith("https://docs.oasis-open.org/sarif/")
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    jsonschema.Draft4Validator.check_schema(schema)


def test_repo_root_is_the_git_top_level(workspace, monkeypatch):
    monkeypatch.chdir(workspace / "models")
    assert repo_root() == workspace.resolve()
    assert root_relative(str(workspace / "models" / "m.py"), repo_root()) == "models/m.py"
    assert root_relative("/elsewhere/m.py", repo_root()) is None


def test_sarif_is_valid_and_has_what_code_scanning_reads(run, workspace):
    reports, notes = run
    doc = sarif_doc(reports, notes, workspace.resolve())
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(doc)
    assert doc["version"] == "2.1.0"
    (run_,) = doc["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "gradlint" and driver["version"] and driver["informationUri"].startswith("https://")
    rules = driver["rules"]
    gl101 = next(r for r in rules if r["id"] == "GL101")
    assert gl101["name"] == "vanishing-gradient" and gl101["defaultConfiguration"]["level"] == "error"
    assert gl101["shortDescription"]["text"] and gl101["fullDescription"]["text"]
    assert "## Why it matters" in gl101["help"]["markdown"] and "Why it matters" in gl101["help"]["text"]
    assert run_["originalUriBaseIds"]["%SRCROOT%"]["uri"] == workspace.resolve().as_uri() + "/"
    results = run_["results"]
    assert len(results) == len(reports[0].findings) >= 1
    for res in results:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note")
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"] == {"uri": "models/m.py", "uriBaseId": "%SRCROOT%"}
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1
        assert re.fullmatch(r"[0-9a-f]{32}", res["partialFingerprints"][FINGERPRINT_KEY])
    assert len({r["partialFingerprints"][FINGERPRINT_KEY] for r in results}) == len(results)
    # One result for the sigmoid MLP's one problem; the other rules' findings are its notes:
    # related locations (at their own lines) and, with their rule ids, in its properties.
    (res,) = results
    assert res["ruleId"] == "GL101"
    assert [n["ruleId"] for n in res["properties"]["notes"]] == ["GL201", "GL401", "GL501"]
    assert [n["role"] for n in res["properties"]["notes"]] == ["cause", "fix", "fix"]
    related = res["relatedLocations"]
    assert [r["id"] for r in related] == [1, 2, 3]
    assert [r["message"]["text"].split()[0] for r in related] == ["GL201", "GL401", "GL501"]
    assert [r["physicalLocation"]["region"]["startLine"] for r in related] == [16, 15, 15]
    assert res["locations"][0]["physicalLocation"]["region"]["startLine"] == 16  # the cause's line: the sigmoid
    (inv,) = run_["invocations"]
    assert inv["executionSuccessful"] is False
    (err,) = [n for n in inv["toolExecutionNotifications"] if n["level"] == "error"]
    assert "bad.py" in err["message"]["text"] and "SyntaxError" in err["message"]["text"]
    assert err["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/bad.py"


def test_sarif_of_a_clean_run_is_valid_and_successful(tmp_path):
    doc = sarif_doc([Report(target="x.py::Net")], [], tmp_path)
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(doc)
    assert doc["runs"][0]["results"] == [] and doc["runs"][0]["invocations"][0]["executionSuccessful"] is True


def test_github_lines_parse(run, workspace):
    reports, _ = run
    lines = github_lines(reports, workspace.resolve())
    parsed = [_parse_github(line) for line in lines]
    findings = reports[0].findings
    assert len(parsed) == len(findings) + 1
    for (level, props, msg), f in zip(parsed, findings):
        assert level == {"error": "error", "warning": "warning", "info": "notice"}[f.severity]
        assert props == {"file": "models/m.py", "line": str(f.line), "col": "1", "title": f"{f.code} {f.name}"}
        assert msg.startswith(f.message) and f.fix.splitlines()[0] in msg
    level, props, msg = parsed[-1]
    assert level == "error" and props["file"] == "models/bad.py" and props["line"] == "2"
    assert "SyntaxError" in msg


def test_github_escaping(tmp_path):
    assert github_escape_data("100% a\r\nb: c, d") == "100%25 a%0D%0Ab: c, d"
    assert github_escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    f = Finding(code="GL999", name="odd-one", severity="info", category="other",
                message="50% lost: a, b\nsecond line", fix="do x,\ny", path=str(tmp_path / "we:ird,name.py"),
                line=3, column=1)
    (line,) = github_lines([Report(target="t", findings=(f,))], tmp_path)
    assert "\n" not in line and "\r" not in line
    level, props, msg = _parse_github(line)
    assert level == "notice" and props["file"] == "we:ird,name.py" and props["line"] == "3"
    assert props["title"] == "GL999 odd-one" and msg == "50% lost: a, b\nsecond line\nfix: do x,\ny"


def test_json_has_targets_summary_and_fingerprints(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    r = cli("check", "models/m.py", "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    (t,) = doc["targets"]
    assert t["target"] == "models/m.py::SigmoidMLP" and t["summary"]["verdict"] == "vanishing"
    assert doc["summary"]["targets"] == 1 and doc["summary"]["findings"]["error"] == len(t["findings"]) >= 1
    assert doc["summary"]["verdicts"] == {"vanishing": 1} and doc["notes"] == []
    assert all(re.fullmatch(r"[0-9a-f]{32}", f["fingerprint"]) for f in t["findings"])


def test_output_writes_the_file_and_nothing_on_stdout(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    r = cli("check", "models/m.py", "--format", "sarif", "--output", "out/gradlint.sarif")
    assert r.exit_code == 1 and r.stdout == ""
    doc = json.loads((workspace / "out" / "gradlint.sarif").read_text())
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(doc)
    assert doc["runs"][0]["results"]


def test_colors_only_on_request_and_never_in_a_file(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    m = "models/m.py"
    plain = cli("check", m, env={"NO_COLOR": None, "FORCE_COLOR": None})  # CliRunner's stdout is no tty
    assert plain.exit_code == 1 and "GL101" in plain.stdout and ESC not in plain.output
    forced = cli("check", m, env={"NO_COLOR": None, "FORCE_COLOR": "1"})
    assert ESC in forced.stdout
    assert ESC not in cli("check", m, env={"NO_COLOR": "1", "FORCE_COLOR": "1"}).output
    r = cli("check", m, "-o", "report.txt", env={"NO_COLOR": None, "FORCE_COLOR": "1"})
    text = (workspace / "report.txt").read_text()
    assert r.stdout == "" and "GL101" in text and ESC not in text


def test_use_color_rules():
    assert use_color("text", to_file=False, isatty=True, env={})
    assert not use_color("text", to_file=False, isatty=False, env={})
    assert not use_color("text", to_file=False, isatty=True, env={"NO_COLOR": "1"})
    assert use_color("text", to_file=False, isatty=True, env={"NO_COLOR": ""})  # empty means unset
    assert use_color("text", to_file=False, isatty=False, env={"FORCE_COLOR": "1"})
    assert not use_color("text", to_file=False, isatty=False, env={"FORCE_COLOR": "0"})
    assert not use_color("text", to_file=True, isatty=True, env={"FORCE_COLOR": "1"})
    assert not use_color("json", to_file=False, isatty=True, env={"FORCE_COLOR": "1"})


def test_render_dispatches_and_refuses_unknown_formats(run, workspace):
    reports, notes = run
    assert "GL101 [error]" in render("text", reports, notes)
    assert render("text", [], notes) == ""
    assert render("github", reports, notes, root=workspace.resolve()).startswith("::error ")
    with pytest.raises(ValueError, match="unknown format"):
        render("xml", reports, notes)


def test_github_format_from_the_command_line(workspace, monkeypatch):
    monkeypatch.chdir(workspace / "models")
    r = cli("check", "m.py", "bad.py", "--format", "github")
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert lines and all(GITHUB_LINE.match(line) for line in lines)
    # One annotation for the one problem, at the line of its cause (self.act = nn.Sigmoid()), its notes in the message.
    assert lines[0].startswith("::error file=models/m.py,line=16,col=1,title=GL101 vanishing-gradient::")
    assert len(lines) == 2 and lines[1].startswith("::error file=models/bad.py")
    message = _parse_github(lines[0])[2]
    notes = [line.split()[1] for line in message.splitlines() if line.startswith("note: ")]
    assert notes == ["GL201", "GL401", "GL501"]
    assert "note: GL201 saturating-activation-chain at models/m.py:16: 19 sigmoids in a row" in message


# -- a finding inside a helper ------------------------------------------------------------------

LAYERS, DEEP = HELPER_LAYERS, HELPER_DEEP
INIT_CALL, LINEAR, CALLER = 6, 5, 11  # layers.py's nn.init.normal_ and nn.Linear, deep.py's make_layer call


@pytest.fixture(scope="module")
def helper_run(workspace):
    """The too-large init made in a helper another file defines: the finding points into the helper."""
    (workspace / "helper").mkdir()
    (workspace / "helper" / "layers.py").write_text(LAYERS)
    (workspace / "helper" / "deep.py").write_text(DEEP)
    reports, notes = run_paths([str(workspace / "helper" / "deep.py")])
    (f,) = reports[0].findings
    assert (f.code, Path(f.path).name, f.line) == ("GL102", "layers.py", INIT_CALL)
    assert [(Path(p).name, line) for p, line in f.via] == [("deep.py", CALLER)]
    return reports, notes


def test_sarif_links_the_calling_line_as_a_related_location(helper_run, workspace):
    reports, notes = helper_run
    doc = sarif_doc(reports, notes, workspace.resolve())
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(doc)
    (res,) = doc["runs"][0]["results"]

    def where(loc):
        phys = loc["physicalLocation"]
        return phys["artifactLocation"]["uri"], phys["region"]["startLine"]

    assert where(res["locations"][0]) == ("helper/layers.py", INIT_CALL)
    related = res["relatedLocations"]
    assert [r["id"] for r in related] == list(range(1, len(related) + 1))
    # The calling line first, linked from the message as code scanning shows links; then the notes.
    assert (where(related[0]), related[0]["message"]["text"]) == (("helper/deep.py", CALLER), "called from here")
    assert f"\ncalled from [helper/deep.py:{CALLER}](1)\n" in res["message"]["text"]
    assert [(r["message"]["text"].split()[0], where(r)) for r in related[1:]] == [
        ("GL301", ("helper/layers.py", INIT_CALL)), ("GL401", ("helper/layers.py", LINEAR))]
    # The notes' own calling line is the finding's: shown once, and said in their properties.
    assert res["properties"]["via"] == [{"path": "helper/deep.py", "line": CALLER}]
    assert [n["via"] for n in res["properties"]["notes"]] == [[{"path": "helper/deep.py", "line": CALLER}]] * 2


def test_sarif_keeps_a_notes_own_calling_line_and_stays_valid(tmp_path):
    from gradlint.base.findings import Note

    note = Note(code="GL301", name="init-scale-mismatch", severity="error", category="init", role="cause",
                message="too large", path=str(tmp_path / "lib.py"), line=3, via=((str(tmp_path / "b.py"), 7),))
    f = Finding(code="GL102", name="exploding-gradient", severity="error", category="exploding", message="grows",
                path=str(tmp_path / "lib.py"), line=9, via=((str(tmp_path / "a.py"), 4), (str(tmp_path / "m.py"), 2)),
                notes=(note,))
    doc = sarif_doc([Report(target="m.py::M", findings=(f,))], [], tmp_path)
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(doc)
    (res,) = doc["runs"][0]["results"]
    got = [(r["id"], r["physicalLocation"]["artifactLocation"]["uri"], r["message"]["text"])
           for r in res["relatedLocations"]]
    assert got == [(1, "a.py", "called from here"), (2, "m.py", "called from here"),
                   (3, "lib.py", "GL301 init-scale-mismatch (cause): too large"),
                   (4, "b.py", "GL301 init-scale-mismatch: called from here")]
    assert res["message"]["text"] == "grows\ncalled from [a.py:4](1)\ncalled from [m.py:2](2)"


def test_github_annotation_says_where_the_helper_was_called_from(helper_run, workspace):
    reports, _ = helper_run
    (line,) = github_lines(reports, workspace.resolve())
    level, props, msg = _parse_github(line)
    assert (level, props["file"], props["line"]) == ("error", "helper/layers.py", str(INIT_CALL))
    lines = msg.splitlines()
    # As the text output: the message, the calling line, the fix; each note with its own calling line.
    assert lines[1] == f"called from helper/deep.py:{CALLER}" and lines[2].startswith("fix: ")
    notes = [s for s in lines if s.startswith("note: ")]
    assert [s.split(": ", 2)[1] for s in notes] == [
        f"GL301 init-scale-mismatch at helper/layers.py:{INIT_CALL}, called from helper/deep.py:{CALLER}",
        f"GL401 missing-normalization at helper/layers.py:{LINEAR}, called from helper/deep.py:{CALLER}"]
