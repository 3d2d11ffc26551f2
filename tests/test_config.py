"""[tool.gradlint] in pyproject.toml: discovery, precedence, origins, errors at their lines, and
targets, severities and per-file ignores through `gradlint check`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlint.base.errors import ConfigError
from gradlint.base.findings import Finding
from gradlint.cli import main
from gradlint.run import config

# A model whose constructor needs arguments: discovery alone skips it.
NET = """\
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, depth, width):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)
"""

# Ten sigmoid layers: GL101 (vanishing gradient) fires, at error severity.
SIGMOID = """\
import torch.nn as nn

model = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(32, 32), nn.Sigmoid())])
"""

TOKENS = """\
import torch.nn as nn


class LM(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, ids):
        return self.head(self.emb(ids))


class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(6, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)
"""


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory, made current, with ``write(name, text)`` for its files."""
    monkeypatch.chdir(tmp_path)

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    write.root = tmp_path
    return write


def pyproject(body: str) -> str:
    return '[project]\nname = "demo"\n\n[tool.gradlint]\n' + textwrap.dedent(body)


def origin_of(output: str, key: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith(f"{key} = ")]
    return line.rpartition("# ")[2]


# --- reading ------------------------------------------------------------------------------------

def test_key_lines_follow_dotted_keys_inline_tables_and_arrays_of_tables():
    text = textwrap.dedent("""\
        [tool.gradlint]
        rules.GL101.threshold = 3.0
        targets = [
          { path = "a.py::A", kwargs = { depth = 2 } },
          { path = "b.py::B" },
        ]

        [[tool.gradlint.more]]
        path = "x"
        [tool.gradlint.more.kwargs]
        depth = 1
        [[tool.gradlint.more]]
        path = '''y'''
        """)
    lines = config.key_lines(text)
    g = ("tool", "gradlint")
    assert lines[g] == 1
    assert lines[g + ("rules", "GL101", "threshold")] == 2
    assert lines[g + ("targets", 0, "kwargs", "depth")] == 4
    assert lines[g + ("targets", 1, "path")] == 5
    assert lines[g + ("more", 0, "kwargs", "depth")] == 11
    assert lines[g + ("more", 1, "path")] == 13


def test_discovery_takes_the_nearest_pyproject_with_a_gradlint_table(project, monkeypatch):
    project("pyproject.toml", pyproject('fail-on = "warning"\n'))
    # A nearer pyproject.toml without the table does not stop the walk up.
    project("pkg/pyproject.toml", '[project]\nname = "pkg"\n')
    deep = project.root / "pkg" / "src" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    cfg = config.load()
    assert cfg.file == project.root / "pyproject.toml"
    assert cfg.fail_on == "warning" and cfg.origin("fail-on").endswith("pyproject.toml:5")
    assert cfg.root == project.root.resolve()


def test_no_configuration_means_the_defaults(project):
    cfg = config.load()
    assert cfg.file is None and cfg.fail_on == "error" and cfg.threshold == 2.0
    assert cfg.origin("fail-on") == config.DEFAULT


def test_explicit_config_file_may_hold_the_keys_at_top_level(project):
    project("pyproject.toml", pyproject('fail-on = "warning"\n'))
    other = project("ci/gradlint.toml", 'fail-on = "info"\nthreshold = 3\n')
    cfg = config.load(other)
    assert (cfg.fail_on, cfg.threshold) == ("info", 3.0)
    assert cfg.root == other.parent.resolve()
    r = run("config", "--config", str(other))
    assert r.exit_code == 0, r.output
    assert origin_of(r.output, "threshold") == "ci/gradlint.toml:2"


# --- precedence and `gradlint config` -----------------------------------------------------------

def test_command_line_overrides_the_file_and_config_says_where_each_value_came_from(project):
    project("pyproject.toml", pyproject("""\
        fail-on = "warning"
        select = ["GL1", "unused-parameters"]
        threshold = 3

        [tool.gradlint.rules.GL101]
        threshold = 4.0
        severity = "warning"
        """))
    r = run("config", "--fail-on", "info", "--input-shape", "8,32")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "# configuration file: pyproject.toml"
    assert origin_of(r.output, "fail-on") == "command line" and 'fail-on = "info"' in r.output
    assert origin_of(r.output, "input-shape") == "command line" and "input-shape = [8, 32]" in r.output
    assert origin_of(r.output, "select") == "pyproject.toml:6"
    assert origin_of(r.output, "threshold") == "pyproject.toml:7"
    assert origin_of(r.output, "seeds") == "default"
    assert origin_of(r.output, "rules.GL101.threshold") == "pyproject.toml:10"
    assert origin_of(r.output, "rules.GL101.severity") == "pyproject.toml:11"

    cfg = config.merge(config.load(), {"threshold": 2.5})
    assert cfg.threshold == 2.5 and cfg.origin("threshold") == config.COMMAND_LINE
    assert cfg.rule_options["GL101"]["threshold"] == 4.0 and cfg.severities["GL101"] == "warning"


def test_fail_on_from_the_file_and_from_the_command_line(project):
    project("pyproject.toml", pyproject('fail-on = "warning"\nselect = ["GL301"]\n'))
    # Four Linear+ReLU layers at PyTorch's default init: a GL301 warning, no error.
    project("net.py", NET + "\n\nmodel = Net(4, 32)\n")
    assert run("check", "net.py").exit_code == 1
    assert run("check", "net.py", "--fail-on", "error").exit_code == 0


def test_jobs_and_timeout_come_from_the_command_line_then_the_file_then_the_defaults(project, monkeypatch):
    from gradlint.run import workers

    seen = []

    def fake_run(jobs, settings, *, workers, timeout, finished, advance):
        seen.append((workers, timeout))
        for index, _path, _name in jobs:
            finished(index, [], False)
            advance()

    monkeypatch.setattr(workers, "run", fake_run)
    project("net.py", NET)

    def check(*args):
        seen.clear()
        # The fake run checks nothing, which exits 5 unless accepted.
        r = run("check", "--no-cache", "--allow-no-targets", "net.py", *args)
        assert r.exit_code == 0, r.output
        (used,) = seen
        return used

    # The defaults: one worker, 300 s.
    assert config.load().jobs == 1 and config.load().timeout == 300.0
    assert check() == (1, 300.0)
    r = run("config")
    assert "jobs = 1 " in r.output and origin_of(r.output, "jobs") == "default"
    assert "timeout = 300.0 " in r.output and origin_of(r.output, "timeout") == "default"
    # The file's.
    project("pyproject.toml", pyproject("jobs = 2\ntimeout = 60\n"))
    assert check() == (2, 60.0)
    r = run("config")
    assert "jobs = 2 " in r.output and origin_of(r.output, "jobs") == "pyproject.toml:5"
    assert "timeout = 60.0 " in r.output and origin_of(r.output, "timeout") == "pyproject.toml:6"
    # The command line's over the file's; 0 is no limit, in either place.
    assert check("--jobs", "3") == (3, 60.0)
    assert check("-j", "3", "--timeout", "0") == (3, None)
    r = run("config", "--jobs", "3", "--timeout", "0")
    assert "jobs = 3 " in r.output and origin_of(r.output, "jobs") == "command line"
    assert "timeout = 0.0 " in r.output and origin_of(r.output, "timeout") == "command line"
    project("pyproject.toml", pyproject("timeout = 0\n"))
    assert check() == (1, None)
    assert check("--timeout", "5") == (1, 5.0)
    cfg = config.merge(config.load(), {"jobs": 4})
    assert (cfg.jobs, cfg.origin("jobs"), cfg.origin("timeout")) == (4, config.COMMAND_LINE, "pyproject.toml:5")


@pytest.mark.slow
def test_a_timeout_from_the_file_kills_a_target_that_hangs(project):
    project("pyproject.toml", pyproject("timeout = 2\n"))
    project("hangs.py", """\
        import time
        import torch.nn as nn


        class Hangs(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                while True:
                    time.sleep(0.05)


        model = Hangs()
        """)
    r = run("check", "--no-cache", "hangs.py", "--input-shape", "2,4")
    assert r.exit_code == 2, r.output
    assert "timed out after 2 s" in r.output, r.output


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, line, words", [
    ('fail_on = "warning"\n', 5, ["unknown key 'fail_on' in [tool.gradlint]", "did you mean 'fail-on'"]),
    ('select = ["GL1",\n    "GL999"]\n', 6, ["select[1]", "unknown rule 'GL999'"]),
    ('ignore = ["vanishing-gradiant"]\n', 5, ["unknown rule 'vanishing-gradiant'", "vanishing-gradient"]),
    ("[tool.gradlint.rules.GL998]\nthreshold = 1\n", 5, ["unknown rule 'GL998'"]),
    ("[tool.gradlint.rules.GL101]\nthreshhold = 3\n", 6, ["unknown option 'threshhold' of GL101"]),
    ('threshold = "high"\n', 5, ['threshold = "high": must be a positive number']),
    ("[tool.gradlint.rules.vanishing-gradient]\nthreshold = [3]\n", 6, ["threshold = [3]: must be a number"]),
    ('fail-on = "fatal"\n', 5, ['fail-on = "fatal": must be one of "error", "warning", "info"']),
    ('targets = [\n  { path = "net.py::Net" },\n  { path = "net.py::Net", kwargs = 3 },\n]\n', 7,
     ["targets[1].kwargs = 3: must be a table"]),
    ('targets = [{ path = "missing.py::Net" }]\n', 5, ["no such file"]),
    ('per-file-ignores = { "legacy/*.py" = "GL4" }\n', 5, ['"legacy/*.py" = "GL4": must be an array']),
    ('seeds = 3\njobs = 0\n', 6, ["jobs = 0: must be a positive integer"]),
    ("jobs = 1.5\n", 5, ["jobs = 1.5: must be a positive integer"]),
    ("jobs = true\n", 5, ["jobs = true: must be a positive integer"]),
    ('timeout = "60s"\n', 5, ['timeout = "60s": must be a number of seconds, 0 or more']),
    ("\ntimeout = -1\n", 6, ["timeout = -1: must be a number of seconds, 0 or more"]),
    ("timeout = inf\n", 5, ["timeout = inf: must be a number of seconds"]),
])
def test_bad_configuration_is_an_error_at_its_line_with_exit_2(project, body, line, words):
    project("net.py", NET)
    project("pyproject.toml", pyproject(body))
    with pytest.raises(ConfigError) as info:
        config.load()
    assert info.value.line == line and info.value.path == "pyproject.toml"
    for command in (["config"], ["check", "net.py"]):
        r = run(*command)
        assert r.exit_code == 2, r.output
        assert f"pyproject.toml:{line}: " in r.output, r.output
        for word in words:
            assert word in r.output, r.output


def test_unknown_rule_on_the_command_line_exits_2(project):
    r = run("check", "--select", "GL999", "x.py")
    assert r.exit_code == 2 and "--select: unknown rule 'GL999'" in r.output


def test_invalid_toml_names_the_line(project):
    project("pyproject.toml", pyproject("select = [\n"))
    r = run("config")
    assert r.exit_code == 2 and "pyproject.toml" in r.output and "not valid TOML" in r.output


def test_check_without_paths_or_configured_targets_is_a_usage_error(project):
    r = run("check")
    assert r.exit_code == 2 and "give PATHS" in r.output


# --- targets ------------------------------------------------------------------------------------

def test_configured_targets_with_kwargs_and_inputs_are_checked_without_paths(project):
    project("models/net.py", NET)
    project("models/lm.py", TOKENS)
    project("pyproject.toml", pyproject("""\
        targets = [
            { path = "models/net.py::Net", inputs = [4, 24], kwargs = { depth = 3, width = 24 } },
            { path = "models/lm.py::LM", inputs = { shape = [4, 10], vocab = 50 }, kwargs = { vocab = 50 } },
            { path = "models/lm.py::TwoIn", inputs = [[4, 8], [4, 6]], name = "two-inputs" },
        ]
        """))
    r = run("check", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    by_name = {t["target"].rpartition("::")[2]: t for t in doc["targets"]}
    assert set(by_name) == {"Net", "LM", "two-inputs"}
    assert all(t["status"] == "ok" for t in doc["targets"]), doc
    net = by_name["Net"]
    assert len([p for p in net["params"] if p["name"].endswith("weight")]) == 3
    assert net["params"][0]["shape"] == [24, 24]
    assert net["inputs"] == "(4, 24) float32 (declared in pyproject.toml:6)"
    assert "int64" in by_name["LM"]["inputs"] and "pyproject.toml:7" in by_name["LM"]["inputs"]
    assert "(4, 8)" in by_name["two-inputs"]["inputs"] and "(4, 6)" in by_name["two-inputs"]["inputs"]


def test_a_configured_target_applies_when_its_file_is_named(project):
    project("models/net.py", NET)
    project("pyproject.toml", pyproject("""\
        [[tool.gradlint.targets]]
        path = "models/net.py::Net"
        inputs = { x = [4, 16] }
        [tool.gradlint.targets.kwargs]
        depth = 2
        width = 16
        """))
    without = run("check", "models/net.py", "--config", str(project("empty.toml", "")))
    assert without.exit_code == 2 and "Net's constructor needs depth, width, and gradlint found no value for them" \
        in without.output
    r = run("check", "models/net.py")
    assert r.exit_code == 0, r.output
    assert "models/net.py::Net: healthy" in r.output and "declared in pyproject.toml:5" in r.output
    assert run("check", "models/net.py::Net").exit_code == 0


def test_a_configured_name_the_file_lacks_points_at_the_configuration(project):
    project("models/net.py", NET + "\n\nmodel = Net(2, 16)\n")
    project("pyproject.toml", pyproject('targets = [{ path = "models/net.py::Nett", kwargs = { depth = 2 } }]\n'))
    r = run("check", "models/net.py")
    assert r.exit_code == 2
    assert "pyproject.toml:5: could not analyze models/net.py::Nett: targets: no target named 'Nett'" in r.output
    assert "models/net.py::model: healthy" in r.output  # the file's other targets are still checked


def test_include_and_exclude_choose_the_files_of_a_walk(project):
    project("models/a.py", NET + "\n\nmodel = Net(2, 16)\n")
    project("models/legacy/b.py", NET + "\n\nmodel = Net(2, 16)\n")
    project("scripts/c.py", NET + "\n\nmodel = Net(2, 16)\n")
    project("pyproject.toml", pyproject('include = ["models/**/*.py"]\nexclude = ["legacy"]\n'))
    r = run("check")
    assert r.exit_code == 0, r.output
    assert "models/a.py::model" in r.output and "b.py" not in r.output and "c.py" not in r.output
    # Named on the command line, an excluded file is checked unless force-exclude says otherwise.
    assert "b.py::model: healthy" in run("check", "models/legacy/b.py").output
    r = run("check", "models/legacy/b.py", "models/a.py", "--force-exclude")
    assert "b.py::model" not in r.output and "excluded" in r.output and "a.py::model" in r.output


# --- severities and per-file ignores ------------------------------------------------------------

def test_severity_override_and_rule_options(project):
    project("mlp.py", SIGMOID)
    project("pyproject.toml", pyproject('select = ["GL101"]\n'))
    r = run("check", "mlp.py")
    assert r.exit_code == 1 and "GL101 [error]" in r.output

    project("pyproject.toml", pyproject('select = ["GL101"]\n[tool.gradlint.rules.vanishing-gradient]\n'
                                        'severity = "warning"\n'))
    r = run("check", "mlp.py")
    assert r.exit_code == 0, r.output
    assert "GL101 [warning]" in r.output
    assert run("check", "mlp.py", "--fail-on", "warning").exit_code == 1

    project("pyproject.toml", pyproject('select = ["GL101"]\nrules.GL101.threshold = 50.0\n'))
    r = run("check", "mlp.py")
    assert r.exit_code == 0 and "GL101" not in r.output


def test_per_file_ignores(project):
    project("models/new.py", SIGMOID)
    project("models/legacy/old.py", SIGMOID)
    project("pyproject.toml", pyproject("""\
        select = ["GL1"]
        per-file-ignores = { "models/legacy/*.py" = ["GL10"] }
        """))
    r = run("check", "models")
    assert r.exit_code == 1
    flagged = [ln for ln in r.output.splitlines() if "GL101 [error]" in ln]
    assert len(flagged) == 1 and flagged[0].startswith("models/new.py"), r.output


def test_adjust_matches_the_finding_file_or_the_checked_file(tmp_path):
    cfg = config.Config(per_file_ignores=(("legacy/*.py", ("GL4",)),), severities={"GL101": "info"}, root=tmp_path)
    f = Finding(code="GL401", name="missing-normalization", severity="error", category="normalization",
                message="m", path=str(tmp_path / "layers.py"), line=3)
    g = Finding(code="GL101", name="vanishing-gradient", severity="error", category="vanishing", message="m")
    assert cfg.adjust([f], tmp_path / "legacy" / "net.py") == ()
    assert cfg.adjust([f], tmp_path / "net.py") == (f,)
    # One problem (gradlint.lint.grouping): the GL101 made info is a note of the GL401 error, not its master.
    (adjusted,) = cfg.adjust([g, f])
    assert (adjusted.code, adjusted.severity) == ("GL401", "error")
    assert [(n.code, n.severity) for n in adjusted.notes] == [("GL101", "info")]


def test_rule_catalog_read_from_source_matches_the_imported_rules():
    from gradlint.lint.rule import RuleInfo, catalog, load_builtin

    full = load_builtin()
    import gradlint.lint.rule as rule_mod
    saved = dict(rule_mod.REGISTRY)
    rule_mod.REGISTRY.clear()  # catalog() reads the source only while no rule is imported yet
    try:
        read = catalog()
    finally:
        rule_mod.REGISTRY.update(saved)
    assert all(isinstance(v, RuleInfo) for v in read.values())
    assert {c: (r.name, r.options) for c, r in read.items()} == {c: (r.name, r.options) for c, r in full.items()}


def test_checking_rule_names_in_the_configuration_imports_no_torch(tmp_path):
    import subprocess
    import sys
    (tmp_path / "pyproject.toml").write_text('[tool.gradlint]\nselect = ["GL1"]\n'
                                             '[tool.gradlint.rules.GL101]\nthreshold = 3.0\n')
    code = "import sys, gradlint.run.config as c; c.load(start=sys.argv[1]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# --- constructor values: nested tables, gradlint init -------------------------------------------

CONFIGURED = """\
import torch.nn as nn
from dataclasses import dataclass


@dataclass
class ModelArgs:
    d_model: int
    n_layer: int = 1


class Model(nn.Module):
    def __init__(self, args: ModelArgs, ntoken):
        super().__init__()
        self.emb = nn.Embedding(ntoken, args.d_model)
        self.layers = nn.Sequential(*[nn.Linear(args.d_model, args.d_model) for _ in range(args.n_layer)])

    def forward(self, ids):
        return self.layers(self.emb(ids))
"""

TRAIN = """\
from model import Model, ModelArgs

vocab = open("vocab.txt").read().split()
model = Model(ModelArgs(d_model=None if False else compute()), len(vocab))
"""


def test_a_nested_kwargs_table_builds_the_config_class(project):
    project("model.py", CONFIGURED)
    project("pyproject.toml", pyproject("""\
        [[tool.gradlint.targets]]
        path = "model.py::Model"
        [tool.gradlint.targets.kwargs]
        ntoken = 50
        [tool.gradlint.targets.kwargs.args]
        d_model = 8
        n_layer = 2
        """))
    r = run("check", "model.py", "--format", "json")
    assert r.exit_code == 0, r.output
    (target,) = json.loads(r.stdout)["targets"]
    assert [p["shape"] for p in target["params"]][:2] == [[50, 8], [8, 8]]
    project("pyproject.toml", pyproject('targets = [{ path = "model.py::Model", kwargs = { ntoken = 5, args = '
                                        '{ d_model = 8, depth = 2 } } }]\n'))
    r = run("check", "model.py")
    assert r.exit_code == 2
    assert "the table given for args does not build ModelArgs: TypeError" in r.output
    assert "give the fields ModelArgs takes: d_model, n_layer" in r.output


def test_init_prints_the_models_with_values_sources_and_placeholders(project):
    project(".git/HEAD", "")
    project("model.py", CONFIGURED)
    project("train.py", TRAIN)
    r = run("init", "model.py")
    assert r.exit_code == 0, r.output
    assert '[[tool.gradlint.targets]]\npath = "model.py::Model"  # model.py:11' in r.stdout
    assert "ntoken = 1000  # ASSUMED: vocabulary size; train.py:4 computes it at run time (len(vocab)); " \
           "give the real value" in r.stdout, r.stdout
    assert "[tool.gradlint.targets.kwargs.args]  # FILL IN: train.py:4 computes it at run time" in r.stdout
    assert 'd_model = "<FILL IN>"' in r.stdout
    assert "1 value marked <FILL IN> could not be found" in r.stderr
    config.load(project("printed.toml", r.stdout.replace('"<FILL IN>"', "8")))  # valid once filled in


def test_init_write_adds_to_pyproject_and_the_second_run_is_green_in_one_edit(project):
    project(".git/HEAD", "")
    project("model.py", CONFIGURED)
    project("train.py", TRAIN)
    before = '[project]\nname = "demo"  # keep me\n\n[tool.ruff]\nline-length = 100\n'
    path = project("pyproject.toml", before)
    first = run("check", "model.py")
    assert first.exit_code == 2 and "Model's constructor needs args" in first.output
    r = run("init", "--write")
    assert r.exit_code == 0, r.output
    text = path.read_text()
    assert text.startswith(before) and "[tool.gradlint]" in text
    left = run("check", "model.py")
    assert left.exit_code == 2 and "<FILL IN> is the placeholder gradlint init wrote" in left.output
    path.write_text(text.replace('d_model = "<FILL IN>"', "d_model = 8"))
    second = run("check", "model.py")
    assert second.exit_code == 0, second.output
    # The targets are there now: init leaves them alone, unless told.
    again = run("init", "--write")
    assert again.exit_code == 2 and "[tool.gradlint] has targets already" in again.output
    assert run("init", "--write", "--force").exit_code == 0
    assert path.read_text().count("[[tool.gradlint.targets]]") == 1


def test_all_targets_checks_the_building_blocks_too(project):
    project("model.py", CONFIGURED.replace("nn.Sequential(*[nn.Linear(args.d_model, args.d_model) for _ in "
                                           "range(args.n_layer)])", "Block(args.d_model)") + textwrap.dedent("""


        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)

            def forward(self, x):
                return self.fc(x)
        """))
    project("pyproject.toml", pyproject('targets = [{ path = "model.py::Model", kwargs = { ntoken = 5, args = '
                                        '{ d_model = 8 } } }]\n'))
    top = run("check", "model.py", "--format", "json")
    assert [t["target"] for t in json.loads(top.stdout)["targets"]] == ["model.py::Model"]
    every = run("check", "model.py", "--format", "json", "--all-targets")
    assert [t["target"] for t in json.loads(every.stdout)["targets"]] == ["model.py::Model", "model.py::Block"]
    assert run("config", "--all-targets").output.count("all-targets = true") == 1
