"""What ruff and pytest users reach for, run as they would: ``gradlint`` in a subprocess.

The closing line, ``-q``, ``--statistics``, ``--exit-zero``, ``--color``, comma-separated
``--select``/``--ignore``, ``explain`` of an unknown rule, a misspelt constructor argument, a run
that analyzed nothing (exit 5), and the cache hit from a subdirectory. The first run fills a
cache of its own; most later runs hit it, so they import no torch and take a fraction of a second.
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

ROOT = Path(__file__).resolve().parents[1]
SIGMOID = ROOT / "examples" / "sigmoid_mlp.py"

UTILS = "import torch\n\n\ndef scale(x, k):\n    return torch.as_tensor(x) * k\n"
NEEDS_WIDTH = textwrap.dedent("""\
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x):
            return self.fc(x)
    """)


def gradlint(*args: str, cwd: Path, cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CI")}
    environ.update(GRADLINT_CACHE_DIR=str(cache), GRADLINT_NO_PROGRESS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "gradlint", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A project with the sigmoid MLP in models/, and a cache filled by checking it once."""
    root = tmp_path_factory.mktemp("project")
    (root / "models").mkdir()
    shutil.copy(SIGMOID, root / "models" / "sigmoid_mlp.py")
    cache = root.parent / f"{root.name}-cache"
    first = gradlint("check", "models/sigmoid_mlp.py", cwd=root, cache=cache)
    assert first.returncode == 1, first.stderr
    return root, cache


def _codes(text: str, notes: bool = False) -> set[str]:
    """The codes of the finding lines of a text report (with ``notes``, of their note lines)."""
    pattern = r"^    \S+?:\d+:\d+: note: (GL\d{3}) " if notes else r"^\S+?:\d+:\d+: (GL\d{3}) \["
    return set(re.findall(pattern, text, re.M))


def test_text_ends_with_a_closing_line_that_counts_findings_and_targets(project):
    root, cache = project
    r = gradlint("check", "models/sigmoid_mlp.py", cwd=root, cache=cache)
    assert r.returncode == 1
    last = r.stdout.rstrip().splitlines()[-1]
    errors = r.stdout.count("[error]")
    assert errors >= 1
    found = f"Found {errors} error{'s' if errors != 1 else ''}, 0 warnings"
    assert last == f"{found}; 1 target analyzed, 0 skipped, 0 could not analyze."


def test_rerun_from_a_subdirectory_hits_the_cache_and_prints_paths_from_there(project):
    root, cache = project
    entries = sorted(p.name for p in cache.rglob("*.json"))
    r = gradlint("check", "sigmoid_mlp.py", cwd=root / "models", cache=cache)
    assert r.returncode == 1, r.stderr
    assert sorted(p.name for p in cache.rglob("*.json")) == entries, "a new entry: the run missed the cache"
    assert r.stdout.startswith("sigmoid_mlp.py:16:1: GL101 [error]")
    assert "\nsigmoid_mlp.py::SigmoidMLP: vanishing" in r.stdout
    assert "models/" not in r.stdout


def test_quiet_prints_the_findings_only(project):
    root, cache = project
    r = gradlint("check", "models/sigmoid_mlp.py", "-q", cwd=root, cache=cache)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    heads = [line for line in lines if not line.startswith(" ")]
    assert heads and all(": GL" in line and "[error]" in line for line in heads), r.stdout
    assert "SigmoidMLP: vanishing" not in r.stdout and "Found" not in r.stdout and r.stderr == ""


def test_statistics_counts_findings_per_rule(project):
    root, cache = project
    full = gradlint("check", "models/sigmoid_mlp.py", cwd=root, cache=cache).stdout
    r = gradlint("check", "models/sigmoid_mlp.py", "--statistics", cwd=root, cache=cache)
    assert r.returncode == 1
    rows = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    codes = sorted(_codes(full))
    assert sorted(code for _, code, _ in rows) == codes
    for count, code, _ in rows:
        assert int(count) == full.count(f": {code} [")
    assert "gradient vanishes" not in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("Found ")


def test_exit_zero_passes_findings_but_not_a_target_that_could_not_be_analyzed(project, tmp_path):
    root, cache = project
    assert gradlint("check", "models/sigmoid_mlp.py", "--exit-zero", cwd=root, cache=cache).returncode == 0
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\ndef broken(:\n")
    assert gradlint("check", str(broken), "--exit-zero", cwd=root, cache=cache).returncode == 2


def test_color_always_and_never(project):
    root, cache = project
    always = gradlint("check", "models/sigmoid_mlp.py", "--color", "always", cwd=root, cache=cache,
                      env={"NO_COLOR": "1"})
    assert "\033[31merror\033[0m" in always.stdout
    never = gradlint("check", "models/sigmoid_mlp.py", "--color=never", cwd=root, cache=cache,
                     env={"FORCE_COLOR": "1"})
    assert "\033[" not in never.stdout
    auto = gradlint("check", "models/sigmoid_mlp.py", cwd=root, cache=cache, env={"FORCE_COLOR": "1"})
    assert "\033[31merror\033[0m" in auto.stdout


def test_select_and_ignore_take_comma_separated_rules(project):
    root, cache = project
    r = gradlint("check", "models/sigmoid_mlp.py", "--select", "GL101,GL401", cwd=root, cache=cache)
    # One problem: GL401's finding is a note of GL101's.
    assert _codes(r.stdout) == {"GL101"} and _codes(r.stdout, notes=True) == {"GL401"}, r.stdout + r.stderr
    r = gradlint("check", "models/sigmoid_mlp.py", "--ignore", "GL1, GL4,GL5", "--ignore", "GL2", cwd=root,
                 cache=cache)
    codes = _codes(r.stdout) | _codes(r.stdout, notes=True)
    assert r.returncode in (0, 1) and "SigmoidMLP: vanishing" in r.stdout
    assert not any(c.startswith(("GL1", "GL2", "GL4", "GL5")) for c in codes), r.stdout + r.stderr
    bad = gradlint("check", "models/sigmoid_mlp.py", "--select", "GL101,GL1O1", cwd=root, cache=cache)
    assert bad.returncode == 2 and "GL1O1" in bad.stderr


def test_explain_an_unknown_rule_is_a_usage_error(project):
    root, cache = project
    r = gradlint("explain", "GL999", cwd=root, cache=cache)
    assert r.returncode == 2 and "no rule 'GL999'" in r.stderr
    r = gradlint("explain", "vanishing-gradiant", cwd=root, cache=cache)
    assert r.returncode == 2 and "did you mean vanishing-gradient" in r.stderr
    assert gradlint("explain", "gl101", cwd=root, cache=cache).returncode == 0


def test_a_misspelt_constructor_argument_is_named_with_did_you_mean(tmp_path):
    (tmp_path / "net.py").write_text(NEEDS_WIDTH)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.gradlint]\ntargets = [{ path = "net.py::Net", inputs = [4, 8], kwargs = { widht = 8 } }]\n')
    r = gradlint("check", "net.py", cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 2
    assert "Net's constructor takes no argument widht" in r.stdout
    assert "hint: did you mean 'width' for 'widht'? it takes: width" in r.stdout


def test_a_run_that_analyzed_nothing_exits_5_with_one_line_that_says_why(tmp_path):
    (tmp_path / "utils.py").write_text(UTILS)
    r = gradlint("check", "utils.py", cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 5, r.stdout + r.stderr
    why = [line for line in r.stderr.splitlines() if line.startswith("gradlint: no target analyzed")]
    assert why == ["gradlint: no target analyzed: 1 file without a target (utils.py) (exit code 5; "
                   "--allow-no-targets accepts a run with nothing to analyze)"]
    assert r.stdout.rstrip().splitlines()[-1] == "No findings; 0 targets analyzed, 0 skipped, 0 could not analyze."
    # JSON keeps stdout one document; the line goes to stderr there too.
    j = gradlint("check", "utils.py", "--format", "json", cwd=tmp_path, cache=tmp_path / "cache")
    assert j.returncode == 5 and "no target analyzed" in j.stderr
    summary = json.loads(j.stdout)["summary"]
    assert (summary["targets"], summary["analyzed"], summary["skipped"]) == (0, 0, 0)
    ok = gradlint("check", "utils.py", "--allow-no-targets", cwd=tmp_path, cache=tmp_path / "cache")
    assert ok.returncode == 0 and "no target analyzed" not in ok.stderr


def test_a_model_whose_constructor_values_are_nowhere_is_an_error_not_a_silent_skip(tmp_path):
    # Nothing in the repository says what width is: the gate fails (exit 2) and says where to give it.
    (tmp_path / "net.py").write_text(NEEDS_WIDTH)
    r = gradlint("check", "net.py", cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "net.py:5: could not analyze net.py::Net: Net's constructor needs width" in r.stdout
    assert 'kwargs = { width = ... }' in r.stdout and "gradlint init net.py" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1] == "No findings; 0 targets analyzed, 0 skipped, 1 could not analyze."


SUPPRESSED = textwrap.dedent('''\
    import torch.nn as nn

    import gradlint


    def stack(width, depth):
        return nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])  # gradlint: ignore[GL102]


    @gradlint.target(inputs=(16, 64))
    class Sigmoid(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = stack(64, 20)  # noqa: GL101, GL401, GL501

        def forward(self, x):
            for layer in self.layers:
                x = layer(x).sigmoid()  # noqa: GL201
            return x


    @gradlint.target(inputs=(16, 64))
    class Shallow(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = stack(64, 2)  # gradlint: ignore[GL1O1]

        def forward(self, x):
            for layer in self.layers:
                x = layer(x).relu()  # noqa: E501, GL610
            return x
    ''')


def findings_of(out: str) -> list[str]:
    return [line.split(" [", 1)[0] for line in out.splitlines() if ": GL" in line and not line.startswith(" ")]


@pytest.mark.slow
def test_suppression_comments_that_do_nothing_are_reported(tmp_path):
    (tmp_path / "models.py").write_text(SUPPRESSED)
    cache = tmp_path / "cache"
    r = gradlint("check", "models.py", cwd=tmp_path, cache=cache)
    # Unknown codes are always reported (a warning: the run still passes); other linters' codes are theirs.
    assert r.returncode == 0, r.stdout + r.stderr
    lines = SUPPRESSED.splitlines()
    at = {n: lines[n - 1].index("#") + 1 for n in (7, 26, 30)}   # the comment's column
    assert findings_of(r.stdout) == [f"models.py:26:{at[26]}: GL903", f"models.py:30:{at[30]}: GL903"]
    assert "'# gradlint: ignore[GL1O1]' names no rule: GL1O1 is not a gradlint rule code or name" in r.stdout
    assert "fix: did you mean GL101?" in r.stdout and "GL610 is not a gradlint rule" in r.stdout
    assert "E501" not in r.stdout.replace("# noqa: E501, GL610", "")
    # Unused ones on request: the helper's comment silences nothing (no gradient explodes), though
    # it sits on a line both targets' findings point into.
    r = gradlint("check", "models.py", "--warn-unused-ignores", cwd=tmp_path, cache=cache)
    assert r.returncode == 0
    assert f"models.py:7:{at[7]}: GL904" in findings_of(r.stdout)
    assert "'# gradlint: ignore[GL102]': GL102 silenced nothing on this line" in r.stdout
    assert "models.py:14:1" not in r.stdout and "models.py:18:1" not in r.stdout   # used by Sigmoid
    assert r.stdout.rstrip().endswith("Found 0 errors, 3 warnings; 2 targets analyzed, 0 skipped, 0 could not "
                                      "analyze.")
    # The same, asked for in the configuration.
    (tmp_path / "pyproject.toml").write_text("[tool.gradlint]\nwarn-unused-ignores = true\n")
    configured = gradlint("check", "models.py", cwd=tmp_path, cache=cache)
    assert f"models.py:7:{at[7]}: GL904" in findings_of(configured.stdout)


def test_the_suppression_rules_are_declared_as_the_pass_that_makes_their_findings_says():
    from gradlint.lint import suppress
    from gradlint.lint.rule import load_builtin

    rules = load_builtin()
    for code, info in suppress.RULE_INFO.items():
        cls = rules[code]
        assert (cls.code, cls.name, cls.severity.value, cls.category) == (
            info.code, info.name, info.severity.value, info.category)
    assert rules["GL904"].opt_in and not rules["GL903"].opt_in
