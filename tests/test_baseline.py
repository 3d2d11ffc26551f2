"""Baselines: record the findings once, then fail only on new ones, wherever the code moved."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlint.base.findings import Finding
from gradlint.base.report import Report
from gradlint.cli import main
from gradlint.output import baseline, fingerprint

ROOT = Path(__file__).resolve().parents[1]
FINDING_LINE = re.compile(r"^(\S+?):(\d+):(\d+): (GL\d{3}) ", re.M)


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _finding(**kw) -> Finding:
    base = dict(code="GL101", name="vanishing-gradient", severity="error", category="vanishing",
                message="gradient vanishes: 10^-15.9 at layers.0 (19 activations cost 15.8 decades)",
                path="/repo/models/m.py", line=15, column=1, module="layers.16",
                evidence={"attenuation_decades": 15.87, "weakest": "linear_3", "cause": "saturating activations"})
    base.update(kw)
    return Finding(**base)


def _fp(f: Finding, target: str = "Net", root: str = "/repo") -> str:
    return fingerprint.fingerprint(f, target, Path(root))


def test_fingerprint_ignores_lines_numbers_and_node_names_but_not_identity():
    f = _finding()
    assert _fp(f) == _fp(_finding(line=40, column=3))
    assert _fp(f) == _fp(_finding(message="gradient vanishes: 10^-14.2 at layers.0 (19 activations cost 14.1 decades)",
                                  evidence={"attenuation_decades": 14.2, "weakest": "linear_7",
                                            "cause": "saturating activations"}))
    assert _fp(f) == _fp(f, root="/repo/")  # the same root, spelled differently
    assert _fp(f) != _fp(_finding(module="layers.3"))
    assert _fp(f) != _fp(_finding(code="GL102"))
    assert _fp(f) != _fp(f, target="Other")
    assert _fp(f) != _fp(_finding(path="/repo/models/other.py"))
    assert _fp(f) != _fp(_finding(evidence={"cause": "init scale"}))
    assert _fp(f) != _fp(_finding(message="gradient vanishes: 10^-15.9 at layers.1 (19 activations cost 15.8 decades)"))


def test_fingerprint_is_relative_to_the_repository_root():
    # The same checkout in two places (a laptop and CI) must give the same fingerprints.
    here = _finding(path="/home/me/repo/m.py", message="trace failed in /home/me/repo/m.py:12 at 0x7f3a2b")
    there = _finding(path="/ci/work/repo/m.py", message="trace failed in /ci/work/repo/m.py:30 at 0x55aa01")
    assert _fp(here, root="/home/me/repo") == _fp(there, root="/ci/work/repo")


def test_baseline_is_a_multiset_and_reports_stale_entries():
    f, g = _finding(), _finding(module="layers.3")
    reports = [Report(target="m.py::Net", findings=(f, f, g))]
    root = Path("/repo")
    known = Counter({_fp(f): 1, "0" * 32: 2})
    shown, dropped, stale = baseline.subtract(reports, known, root)
    assert dropped == 1 and stale == 2
    assert shown[0].findings == (f, g)
    assert not shown[0].ok and Report(target="t", findings=()).ok


def test_recording_is_sorted_and_stable(tmp_path):
    f, g = _finding(), _finding(code="GL201", module="act")
    reports = [Report(target="m.py::Net", findings=(g, f, f))]
    baseline.write(tmp_path / "a.json", reports, Path("/repo"))
    baseline.write(tmp_path / "b.json", [Report(target="m.py::Net", findings=(f, g, f))], Path("/repo"))
    a = (tmp_path / "a.json").read_text()
    assert a == (tmp_path / "b.json").read_text()
    doc = json.loads(a)
    assert doc["version"] == 1
    assert [(e["code"], e["count"]) for e in doc["fingerprints"]] == [("GL101", 2), ("GL201", 1)]
    assert doc["fingerprints"][0]["path"] == "models/m.py" and "#" in doc["fingerprints"][0]["message"]
    assert baseline.load(tmp_path / "a.json") == Counter({_fp(f): 2, _fp(g): 1})


def test_round_trip_through_the_command_line(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "m.py"
    shutil.copy(ROOT / "examples" / "sigmoid_mlp.py", model)
    monkeypatch.chdir(tmp_path)

    # No baseline yet: record it, and pass.
    r = cli("check", "models/m.py", "--baseline", "gradlint-baseline.json")
    assert r.exit_code == 0, r.output
    recorded = FINDING_LINE.findall(r.stdout)
    assert recorded and f"recorded {len(recorded)} finding" in r.stderr
    doc = json.loads((tmp_path / "gradlint-baseline.json").read_text())
    assert sum(e["count"] for e in doc["fingerprints"]) == len(recorded)

    # The same code again: everything is known.
    r = cli("check", "models/m.py", "--baseline", "gradlint-baseline.json")
    assert r.exit_code == 0, r.output
    assert not FINDING_LINE.findall(r.stdout) and f"{len(recorded)} known finding" in r.stderr

    # Lines move: still known.
    model.write_text("\n\n\n" + model.read_text())
    moved = FINDING_LINE.findall(cli("check", "models/m.py").stdout)
    assert [int(line) for _, line, _, _ in moved] == [int(line) + 3 for _, line, _, _ in recorded]
    r = cli("check", "models/m.py", "--baseline", "gradlint-baseline.json")
    assert r.exit_code == 0, r.output
    assert not FINDING_LINE.findall(r.stdout)

    # A new failing model: it alone fails the run, and only its findings show.
    shutil.copy(ROOT / "examples" / "relu_std1_mlp.py", tmp_path / "models" / "new.py")
    r = cli("check", "models", "--baseline", "gradlint-baseline.json")
    assert r.exit_code == 1, r.output
    shown = FINDING_LINE.findall(r.stdout)
    assert shown and {path for path, *_ in shown} == {"models/new.py"}
    assert f"{len(recorded)} known finding" in r.stderr

    # The GitHub form drops the same ones.
    r = cli("check", "models", "--baseline", "gradlint-baseline.json", "--format", "github")
    assert r.exit_code == 1 and len(r.stdout.splitlines()) == len(shown)
    assert all("file=models/new.py," in line for line in r.stdout.splitlines())

    # --update-baseline takes the new model in.
    r = cli("check", "models", "--baseline", "gradlint-baseline.json", "--update-baseline")
    assert r.exit_code == 0 and "recorded" in r.stderr
    assert cli("check", "models", "--baseline", "gradlint-baseline.json").exit_code == 0


def test_a_broken_baseline_is_an_error_and_update_needs_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "examples" / "kaiming_mlp.py", tmp_path / "m.py")
    (tmp_path / "b.json").write_text("{not json")
    r = cli("check", "m.py", "--baseline", "b.json")
    assert r.exit_code == 2 and "cannot read the baseline" in r.stderr
    (tmp_path / "b.json").write_text('{"version": 99, "fingerprints": []}')
    r = cli("check", "m.py", "--baseline", "b.json")
    assert r.exit_code == 2 and "not a gradlint baseline" in r.stderr
    r = cli("check", "m.py", "--update-baseline")
    assert r.exit_code == 2 and "--update-baseline needs --baseline" in r.output


@pytest.mark.parametrize("entries", [["a" * 32, "a" * 32], [{"fingerprint": "a" * 32, "count": 2}]])
def test_load_accepts_bare_and_counted_entries(tmp_path, entries):
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "fingerprints": entries}))
    assert baseline.load(tmp_path / "b.json") == Counter({"a" * 32: 2})


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "cannot read the baseline: its JSON is nested too deeply"),
    ('{"version": 1, "fingerprints": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (json.dumps({"version": 1, "fingerprints": [{"fingerprint": "a" * 32, "count": -3}]}),
     'entry 1 of "fingerprints" has count -3, not a whole number of at least 1'),
    (json.dumps({"version": 1, "fingerprints": ["a" * 32, {"fingerprint": "b" * 32, "count": 0}]}),
     'entry 2 of "fingerprints" has count 0'),
    (json.dumps({"version": 1, "fingerprints": [{"fingerprint": "a" * 32, "count": True}]}), "has count true"),
    (json.dumps({"version": 1, "fingerprints": [{"fingerprint": "a" * 32, "count": 1.5}]}), "has count 1.5"),
    (json.dumps({"version": 1, "fingerprints": [{"fingerprint": 7}]}), "entry 1 of \"fingerprints\" is not a"),
    (json.dumps({"version": 1, "fingerprints": [[]]}), "is not a fingerprint string nor an object with one (a list)"),
    (json.dumps({"version": 1, "fingerprints": [""]}), "is not a fingerprint string"),
])
def test_a_malformed_baseline_is_refused_in_one_line_with_exit_2(tmp_path, monkeypatch, text, fragment):
    (tmp_path / "b.json").write_text(text)
    with pytest.raises(baseline.BaselineError, match=re.escape(fragment)):
        baseline.load(tmp_path / "b.json")
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "examples" / "kaiming_mlp.py", tmp_path / "m.py")
    r = cli("check", "m.py", "--baseline", "b.json", "--no-cache")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("gradlint: b.json: ") and fragment in r.stderr, r.stderr
    assert (tmp_path / "b.json").read_text() == text  # refused, not rewritten
