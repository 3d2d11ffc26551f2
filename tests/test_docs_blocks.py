"""Every fenced block of README.md and docs/*.md is run, or listed in ``ALLOWED`` with the reason
it is not.

A block is known by its file and its first line (``Block.key``); a block nobody registered
fails ``test_every_block_is_run_or_allowed``, so a new example cannot go untested. Commands run
with the real CLI, in a scratch copy of the files they name (``examples/``, and for the
``model.py``, ``models/`` and ``notebook.ipynb`` of the README, the small files below): one
after another in one Python process of their own (``Driver``), as a test suite invoking the
command line runs them, so that its worker processes, and torch in them, start once for all the
blocks; the blocks about the process itself (the quick start, a worker that crashes) each run
``python -m gradlint`` as a user does.
Output blocks are compared with what the command prints: line for line where the doc shows the
whole output, in order with gaps where it shows an excerpt (``...`` or a cut). Python blocks are
executed, with the model they talk about. One warm-up run fills a cache private to this module,
so commands that only change the output format answer from it without a torch import; the cache
returns what a fresh check prints (``tests/test_chaos.py``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import HELPER_DEEP, HELPER_LAYERS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)(`{3,}|~{3,})\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    page: str   # relative to the repository root
    line: int   # of the opening fence
    lang: str
    text: str   # dedented to the fence's indentation

    @property
    def key(self) -> str:
        first = next((s for s in self.text.splitlines() if s.strip()), "")
        return f"{self.page}: {first.strip()}"


def parse(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, indented ones (inside list items) included."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        out.append(Block(str(path.relative_to(ROOT)), i + 1, lang, "\n".join(body) + "\n"))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse(page)]


# Pages whose blocks are generated, and checked where they are generated.
GENERATED = {
    "docs/errors.md": "written by `python tests/test_errors.py --write`; tests/test_errors.py runs every "
                      "message it shows and fails when the page differs",
    "docs/rules.md": "written by `gradlint docs`; tests/test_docs.py fails when it differs",
}

# Blocks not run here, each with why. A reason "run by FILE::TEST" is checked to name a test that exists.
ALLOWED = {
    "README.md: python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e . && "
    ".venv/bin/gradlint check examples/sigmoid_mlp.py":
        "installs torch into a fresh environment; its last command, `gradlint check examples/sigmoid_mlp.py`, "
        "is run for the output block that follows it",
    "README.md: python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e \".[dev]\" && "
    ".venv/bin/ruff check . && .venv/bin/python -m pytest -q":
        "installs the development environment and runs the whole suite, this test included: it is the CI itself",
    "docs/ci.md: # .pre-commit-config.yaml":
        "run by tests/test_precommit.py::test_readme_snippet_as_written_checks_the_configured_models",
    "docs/pytest.md: # tests/test_gradients.py":
        "run by tests/test_pytest_plugin.py::test_readme_pytest_example_runs",
}

RUNNERS: dict[str, Callable[[Block, Path], None]] = {}
# Blocks another block's runner runs: block key -> that block's key.
COVERED: dict[str, str] = {}


def runs(key: str):
    def register(fn):
        assert key not in RUNNERS, key
        RUNNERS[key] = fn
        return fn
    return register


# -- the scratch workspace --------------------------------------------------------------------

# The README's model.py: a small image model with a building block, so that `model.py::Net`,
# `--all-targets` and `--input-shape 8,3,32,32` each have something to show.
MODEL = textwrap.dedent("""\
    import torch.nn as nn


    class Block(nn.Module):
        def __init__(self, channels=16):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
            self.norm = nn.BatchNorm2d(channels)

        def forward(self, x):
            return x + self.norm(self.conv(x)).relu()


    class Net(nn.Module):
        def __init__(self, classes=10, width=16, depth=2):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))
    """)

# docs/cli.md's example of a constructor value found in a training script and one assumed.
LM_MODEL = textwrap.dedent("""\
    import torch.nn as nn


    class LM(nn.Module):
        def __init__(self, ntoken, width):
            super().__init__()
            self.emb = nn.Embedding(ntoken, width)
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, ntoken)

        def forward(self, ids):
            return self.head(self.norm(self.emb(ids)))
    """)
LM_TRAIN = textwrap.dedent("""\
    import argparse

    import data
    from model import LM

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="./data")
    args = parser.parse_args()
    corpus = data.Corpus(args.data)
    ntoken = len(corpus.dictionary)
    model = LM(ntoken, width=32)
    """)

# docs/cli.md's `MyLM`, which its decorator example builds.
MY_LM = textwrap.dedent("""\
    import torch.nn as nn


    class MyLM(nn.Module):
        def __init__(self, depth, vocab=32000, width=64):
            super().__init__()
            self.emb = nn.Embedding(vocab, width)
            self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
                                        for _ in range(depth))
            self.head = nn.Linear(width, vocab)

        def forward(self, ids):
            x = self.emb(ids)
            for block in self.blocks:
                x = x + block(x)
            return self.head(x)
    """)


def env(cache: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CI")}
    e["GRADLINT_CACHE_DIR"] = str(cache)
    return e


CACHE: Path | None = None
TIMEOUT = 300  # seconds for one command


def argv_of(command: str) -> list[str]:
    argv = shlex.split(command, comments=True)
    assert argv[0] == "gradlint", command
    return argv[1:]


def gradlint_process(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """One documented command line, `gradlint ...` with its comment, run as a user runs it: a
    fresh ``python -m gradlint`` process."""
    return subprocess.run([sys.executable, "-m", "gradlint", *argv_of(command)], cwd=cwd, env=env(CACHE),
                          capture_output=True, text=True, timeout=TIMEOUT)


# The driver: reads one JSON request a line ({"argv", "cwd"}), runs `gradlint ARGV` in CWD through
# click's test runner (stdout and stderr captured apart, the exit code as the process's would be)
# and answers on a descriptor of its own, so that nothing the checked code or torch writes to
# file descriptor 1 can corrupt an answer: fd 1 goes to the driver's log with fd 2.
DRIVER = """\
import json, os, sys, traceback
del sys.path[0]  # not the directory a command runs in: a user's file must not shadow a module
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
from click.testing import CliRunner
from gradlint.cli import main
for request in sys.stdin:
    request = json.loads(request)
    os.chdir(request["cwd"])
    r = CliRunner().invoke(main, request["argv"], prog_name="gradlint")
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*r.exc_info))  # as an uncaught exception prints it
    answers.write(json.dumps({"returncode": r.exit_code, "stdout": r.stdout, "stderr": stderr}) + "\\n")
    answers.flush()
"""


class Driver:
    """One Python process that runs the documented commands one after another."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=env(CACHE), text=True)

    def run(self, command: str, cwd: Path) -> subprocess.CompletedProcess:
        import select

        argv = argv_of(command)
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        answer = self.proc.stdout.readline() if ready else ""
        if not answer:
            self.close()
            pytest.fail(f"the driver gave no answer to {command!r} in {TIMEOUT} s; its log:\n"
                        + self.log.read_text()[-4000:])
        got = json.loads(answer)
        return subprocess.CompletedProcess(["gradlint", *argv], got["returncode"], got["stdout"], got["stderr"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


DRIVER_NOW: Driver | None = None


def gradlint(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """One documented command line, `gradlint ...` with its comment, run by the driver."""
    assert DRIVER_NOW is not None, "the ws fixture starts the driver"
    return DRIVER_NOW.run(command, cwd)


def commands(block: Block) -> list[str]:
    return [line for line in block.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%matplotlib inline\nimport torch.nn as nn"),
                nbformat.v4.new_code_cell((ROOT / "examples" / "kaiming_mlp.py").read_text().split('"""', 2)[2]),
                nbformat.v4.new_code_cell("model = KaimingMLP()\ntrain(model)")]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Iterator[Path]:
    """The README's and docs' files, and one warm-up run that fills the cache for the commands
    that only change how the reports print."""
    global CACHE, DRIVER_NOW
    base = tmp_path_factory.mktemp("docs")
    CACHE = base / "cache"
    DRIVER_NOW = Driver(base / "driver.log")
    ws = base / "repo"
    ws.mkdir()
    (ws / ".git").mkdir()  # the repository root, so paths print relative to it
    shutil.copytree(ROOT / "examples", ws / "examples")
    (ws / "docs").mkdir()
    (ws / "model.py").write_text(MODEL)
    (ws / "models").mkdir()
    for name in ("kaiming_mlp.py", "residual_mlp.py"):
        shutil.copy(ROOT / "examples" / name, ws / "models" / name)
    notebook(ws / "notebook.ipynb")
    r = gradlint("gradlint check model.py models/ notebook.ipynb examples/", ws)
    assert r.returncode == 1, r.stdout + r.stderr
    yield ws
    DRIVER_NOW.close()
    DRIVER_NOW = None


# -- comparing output -------------------------------------------------------------------------

def normalized(text: str, *pairs: tuple[str, str]) -> list[str]:
    for old, new in pairs:
        text = text.replace(old, new)
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def assert_same(doc: str, actual: str, *pairs: tuple[str, str]) -> None:
    assert normalized(actual, *pairs) == normalized(doc, *pairs)


def assert_excerpt(doc: str, actual: str, *pairs: tuple[str, str]) -> None:
    """Every line the doc shows is printed, in that order; a ``...`` line stands for lines cut."""
    got = normalized(actual, *pairs)
    at = 0
    for line in normalized(doc, *pairs):
        if line.strip() == "...":
            continue
        assert line in got[at:], f"the doc shows a line not printed (after line {at}):\n{line}\n--- printed:\n" \
                                 + "\n".join(got)
        at = got.index(line, at) + 1


def block(key: str) -> Block:
    (b,) = [b for b in all_blocks() if b.key == key]
    return b


# -- README.md --------------------------------------------------------------------------------

@runs("README.md: examples/sigmoid_mlp.py:16:1: GL101 [error] gradient vanishes: it falls below 10^-2 of the "
      "output's at layers.16 and reaches 10^-15.9 at layers.0 (19 saturating activations cost 15.8 decades, "
      "19 layers' init scale cost 0.1 decades)")
def readme_quick_start_output(b: Block, ws: Path) -> None:
    install = next(k for k in ALLOWED if k.startswith("README.md: python3 -m venv .venv && .venv/bin/pip install "
                                                      "-q torch==2.13.0 -e . "))
    cmd = block(install).text.split("&&")[-1].strip().removeprefix(".venv/bin/")
    assert cmd == "gradlint check examples/sigmoid_mlp.py"
    r = gradlint_process(cmd, ws)  # the first command a user runs: as a process of its own
    assert r.returncode == 1, r.stderr
    assert_same(b.text, r.stdout)


README_EXIT = {
    "gradlint check model.py": 0,
    "gradlint check models/": 0,
    "gradlint check model.py::Net": 0,
    "gradlint check model.py --all-targets": 0,
    "gradlint init": 0,
    "gradlint check model.py --input-shape 8,3,32,32 --format json": 0,
    "gradlint check models/ --jobs 2": 0,
    "gradlint check models/ -q --select GL1,GL4": 0,
    "gradlint check models/ --statistics": 0,
    "gradlint check notebook.ipynb": 0,
    "gradlint rules": 0,
}


@runs("README.md: gradlint check model.py                 # every target in the file")
def readme_command_line(b: Block, ws: Path) -> None:
    got = {}
    for line in commands(b):
        cmd = " ".join(shlex.split(line, comments=True))
        assert cmd in README_EXIT, f"a new command in {b.page}: give it files to work on and an exit code"
        r = gradlint(cmd, ws)
        assert r.returncode == README_EXIT[cmd], (cmd, r.stdout, r.stderr)
        got[cmd] = r
    # What the comments say each one does.
    assert "model.py::Block" in got["gradlint check model.py --all-targets"].stdout
    assert "model.py::Block" not in got["gradlint check model.py"].stdout
    (t,) = json.loads(got["gradlint check model.py --input-shape 8,3,32,32 --format json"].stdout)["targets"]
    assert t["inputs"].startswith("(8, 3, 32, 32) float32"), t["inputs"]
    assert got["gradlint check models/"].stdout.rstrip().endswith("2 targets analyzed, 0 skipped, 0 could not analyze.")
    quiet = got["gradlint check models/ -q --select GL1,GL4"].stdout.splitlines()
    assert all(re.match(r"models/\S+:\d+:\d+: GL[14]\d\d ", s) for s in quiet if not s.startswith(" ")), quiet
    assert "notebook.ipynb::KaimingMLP: healthy" in got["gradlint check notebook.ipynb"].stdout
    assert "[tool.gradlint]" in got["gradlint init"].stdout
    assert "GL101" in got["gradlint rules"].stdout


@runs("README.md: gradlint/")
def readme_layout(b: Block, ws: Path) -> None:
    """The layout names folders and files that exist, and every folder of the package."""
    named = set()
    for line in b.text.splitlines():
        indent = len(line) - len(line.lstrip())
        if indent > 2 or not line.strip():
            continue  # a description's continuation
        head = re.split(r"\s{2,}", line.strip())[0]
        for name in head.split():
            named.add(("gradlint/" if indent == 2 else "") + name)
    for name in named:
        assert (ROOT / name.rstrip("/")).exists(), name
    # A link is no folder of the package (a checkout may link gradlint/rules to rules/ to run its own rules).
    package = {f"gradlint/{p.name}/" for p in (ROOT / "gradlint").iterdir()
               if p.is_dir() and not p.is_symlink() and p.name != "__pycache__"}
    assert package <= named, package - named


# -- docs/cli.md ------------------------------------------------------------------------------

@runs("docs/cli.md: model.py::LM: healthy (attenuation +0.2 decades, analysis: export)")
def cli_constructor_values(b: Block, ws: Path) -> None:
    lm = ws.parent / "lm"
    (lm / ".git").mkdir(parents=True)
    (lm / "model.py").write_text(LM_MODEL)
    (lm / "train.py").write_text(LM_TRAIN)
    r = gradlint("gradlint check model.py", lm)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_excerpt(b.text, r.stdout)


@runs("docs/cli.md: gradlint init                 # print a [tool.gradlint] block: every top-level model, "
      "the values found with their sources as comments, \"<FILL IN>\" where none was found")
def cli_init(b: Block, ws: Path) -> None:
    project = ws.parent / "init"
    (project / "models").mkdir(parents=True)
    (project / "models" / "lm.py").write_text(LM_MODEL)
    (project / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    printed, written = commands(b)
    r = gradlint(printed, project)
    assert r.returncode == 0, r.stderr
    assert "[tool.gradlint]" in r.stdout and "<FILL IN>" in r.stdout  # LM's ntoken and width are found nowhere
    r = gradlint(written, project)
    assert r.returncode == 0, r.stderr
    text = (project / "pyproject.toml").read_text()
    assert text.startswith('[project]\nname = "demo"\n') and "models/lm.py::LM" in text
    r = gradlint(written, project)
    assert r.returncode == 2, "a second --write is refused"


# docs/cli.md's helper that builds and initializes each layer, in a file of its own.
LAYERS, DEEP = HELPER_LAYERS, HELPER_DEEP


@runs("docs/cli.md: layers.py:6:1: GL102 [error] forward signal explodes: at layers.9 it is 10^8.1 of its scale at "
      "the last normalization or input (9 layers' init scale add 8.1 decades)")
def cli_helper(b: Block, ws: Path) -> None:
    helper = ws.parent / "helper"
    helper.mkdir()
    (helper / "layers.py").write_text(LAYERS)
    (helper / "deep.py").write_text(DEEP)
    # The lines the page names: the init call and the Linear in layers.py, the call in Deep.__init__.
    assert LAYERS.splitlines()[5].strip().startswith("nn.init.normal_") and "nn.Linear" in LAYERS.splitlines()[4]
    assert "make_layer(width)" in DEEP.splitlines()[10]
    r = gradlint("gradlint check deep.py", helper)
    assert r.returncode == 1, r.stdout + r.stderr
    assert_excerpt(b.text, r.stdout)


@runs("docs/cli.md: import torch.nn as nn")
def cli_target_decorator(b: Block, ws: Path) -> None:
    path = ws.parent / "decorated" / "small_lm.py"
    path.parent.mkdir()
    path.write_text(MY_LM + "\n\n" + b.text)
    r = gradlint("gradlint check small_lm.py --format json", path.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    (t,) = json.loads(r.stdout)["targets"]
    assert t["target"].endswith("small_lm.py::small_lm") and t["status"] == "ok"
    assert t["inputs"].startswith("(8, 128) int64 ids < 32000"), t["inputs"]


# -- docs/configuration.md --------------------------------------------------------------------

NET = textwrap.dedent("""\
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self, depth, width):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
            for layer in self.layers:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x).relu()
            return x
    """)
TINY_LM = LM_MODEL.replace("class LM", "class TinyLM").replace("(self, ntoken, width)",
                                                               "(self, ntoken=32000, width=64)")


@pytest.fixture(scope="module")
def configured(ws) -> Path:
    """A project whose pyproject.toml is docs/configuration.md's example, with the two models it names."""
    project = ws.parent / "configured"
    (project / "models").mkdir(parents=True)
    (project / "models" / "net.py").write_text(NET)
    (project / "models" / "lm.py").write_text(TINY_LM)
    (project / "pyproject.toml").write_text(block("docs/configuration.md: [tool.gradlint]").text)
    return project


@runs("docs/configuration.md: [tool.gradlint]")
def configuration_example(b: Block, ws: Path) -> None:
    """gradlint's own loader takes the example, and its targets build with the values it gives."""
    project = ws.parent / "configured"
    r = gradlint("gradlint check", project)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "models/net.py::Net: healthy" in r.stdout and "models/lm.py::TinyLM: healthy" in r.stdout
    assert "inputs: (8, 128) int64 ids < 32000 (declared in pyproject.toml:" in r.stdout


@runs("docs/configuration.md: gradlint: pyproject.toml:2: unknown key 'fail_on' in [tool.gradlint]")
def configuration_error(b: Block, ws: Path) -> None:
    project = ws.parent / "misspelt"
    project.mkdir()
    (project / "pyproject.toml").write_text((ws.parent / "configured" / "pyproject.toml").read_text()
                                            .replace("fail-on", "fail_on"))
    r = gradlint("gradlint check", project)
    assert r.returncode == 2
    assert_same(b.text, r.stderr)


@runs("docs/configuration.md: # configuration file: pyproject.toml")
def configuration_shown(b: Block, ws: Path) -> None:
    r = gradlint("gradlint config --fail-on error", ws.parent / "configured")
    assert r.returncode == 0, r.stderr
    assert_same(b.text, r.stdout)


# -- docs/ci.md -------------------------------------------------------------------------------

@runs("docs/ci.md: gradlint check examples/ --format sarif --output gradlint.sarif   # SARIF 2.1.0, for GitHub "
      "code scanning")
def ci_formats(b: Block, ws: Path) -> None:
    sarif, github, js = commands(b)
    assert gradlint(sarif, ws).returncode == 1
    assert json.loads((ws / "gradlint.sarif").read_text())["version"] == "2.1.0"
    r = gradlint(github, ws)
    assert r.returncode == 1
    # The annotation docs/ci.md quotes.
    assert ("::error file=examples/sigmoid_mlp.py,line=16,col=1,title=GL101 vanishing-gradient::gradient vanishes: "
            in r.stdout)
    assert gradlint(js, ws).returncode == 1
    doc = json.loads((ws / "gradlint.json").read_text())
    assert len(doc["targets"]) == 6 and doc["summary"]


def baseline_commands(b: Block, ws: Path) -> None:
    first, again, update = commands(b)
    try:
        assert gradlint(first, ws).returncode == 0  # records
        assert (ws / ".gradlint-baseline.json").is_file()
        assert gradlint(again, ws).returncode == 0  # nothing new
        assert gradlint(update, ws).returncode == 0
    finally:
        (ws / ".gradlint-baseline.json").unlink(missing_ok=True)


runs("docs/ci.md: gradlint check examples/ --baseline .gradlint-baseline.json    # no file yet: records the "
     "findings, exits 0")(baseline_commands)


@runs("docs/ci.md: name: gradlint")
def ci_workflow(b: Block, ws: Path) -> None:
    """The workflow is valid YAML and its gradlint step runs; the other steps are GitHub's."""
    import yaml

    steps = yaml.safe_load(b.text)["jobs"]["gradlint"]["steps"]
    run = [s["run"] for s in steps if "run" in s]
    assert run[0].startswith("pip install") and len(run) == 2, "a new step: run it here"
    try:
        r = gradlint(run[1], ws)
        assert r.returncode == 0, r.stderr  # a fresh baseline records
        assert json.loads((ws / "gradlint.sarif").read_text())["version"] == "2.1.0"
    finally:
        (ws / ".gradlint-baseline.json").unlink(missing_ok=True)
    sarif_step = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    assert sarif_step["with"]["sarif_file"] == "gradlint.sarif"


# -- docs/probe.md ----------------------------------------------------------------------------

PROBE = "docs/probe.md: gradlint check examples/sigmoid_mlp.py --probe --plot docs/probe-sigmoid-mlp.png"


PROBE_OUTPUT = ("docs/probe.md: examples/sigmoid_mlp.py::SigmoidMLP: vanishing (attenuation +15.9 decades, "
                "analysis: export)")


@runs(PROBE_OUTPUT)
def probe_output(b: Block, ws: Path) -> None:
    (cmd,) = commands(block(PROBE))
    r = gradlint(cmd, ws)
    assert r.returncode == 1, r.stderr
    assert (ws / "docs" / "probe-sigmoid-mlp.png").read_bytes().startswith(b"\x89PNG")
    wall = re.compile(r"batch 64, [\d.]+ s\)")
    assert_excerpt(wall.sub("batch 64, T s)", b.text), wall.sub("batch 64, T s)", r.stdout))


COVERED[PROBE] = PROBE_OUTPUT


# -- docs/workers-and-cache.md ----------------------------------------------------------------

@runs("docs/workers-and-cache.md: gradlint check models/ --jobs 2         # two worker processes check files "
      "in parallel")
def workers_commands(b: Block, ws: Path) -> None:
    for cmd in commands(b):
        r = gradlint(cmd, ws)
        assert r.returncode == 0, (cmd, r.stderr)
        assert r.stdout.rstrip().endswith("2 targets analyzed, 0 skipped, 0 could not analyze."), cmd


@runs("docs/workers-and-cache.md: c_segv.py:4: could not analyze c_segv.py: the worker process died with signal "
      "SIGSEGV (Segmentation fault) while importing c_segv.py")
def workers_crash(b: Block, ws: Path) -> None:
    crash = ws.parent / "crash"
    crash.mkdir()
    (crash / "c_segv.py").write_text("import ctypes\n\nimport torch.nn as nn\nctypes.string_at(0)\n")
    r = gradlint_process("gradlint check c_segv.py", crash)  # what the process prints when its worker dies
    assert r.returncode == 2
    ctypes_line = re.compile(r'File "ctypes/__init__.py", line \d+ in string_at')
    shown = ctypes_line.sub("CTYPES", b.text)
    assert_excerpt(shown, ctypes_line.sub("CTYPES", r.stdout + r.stderr), (str(crash), "/tmp/crash"))


# -- Python blocks ----------------------------------------------------------------------------

@runs("docs/python.md: import gradlint")
def python_api(b: Block, ws: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ns = _load(ws / "model.py")
    scope = {"model": ns["Net"]()}
    _exec(b, scope, ws)
    report = scope["report"]
    assert report.ok and report.summary.verdict == "healthy"
    assert type(report.plot()).__name__ == "Figure"


@runs("docs/python.md: from gradlint.lightning import GradlintCallback")
def python_lightning(b: Block, ws: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    scope = {"Trainer": lambda **kw: pl.Trainer(logger=False, enable_progress_bar=False,
                                                enable_checkpointing=False, **kw)}
    _exec(b, scope, ws)
    assert any(type(c).__name__ == "GradlintCallback" for c in scope["trainer"].callbacks)


@runs("docs/pytest.md: E       AssertionError: gradlint: MLP is not healthy: verdict vanishing (attenuation "
      "+15.9 decades, threshold 2; predicted, no backward pass)")
def pytest_failure_message(b: Block, ws: Path) -> None:
    """The message of docs/pytest.md's first test with MLP(nn.Sigmoid), from the file the doc names."""
    import torch
    import torch.nn as nn

    import gradlint as api

    code = block("docs/pytest.md: # tests/test_gradients.py").text
    project = ws.parent / "pytest-project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_gradients.py").write_text(code)
    ns = _load(project / "tests" / "test_gradients.py")
    torch.manual_seed(0)
    old = os.getcwd()
    os.chdir(project)
    try:
        with pytest.raises(AssertionError) as info:
            api.assert_healthy(ns["MLP"](nn.Sigmoid), (64, 256), config=False)
    finally:
        os.chdir(old)
    assert_same("\n".join(line.removeprefix("E       ") for line in b.text.splitlines()),
                f"AssertionError: {info.value}")


def _load(path: Path) -> dict:
    """Imports a file as a module of its own name, so that its classes' source can be read."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"docs_blocks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return vars(module)


def _exec(b: Block, scope: dict, cwd: Path) -> None:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        exec(compile(b.text, f"{b.page}:{b.line}", "exec"), scope)
    finally:
        os.chdir(old)


# docs/design.md's reproduction recipes, run in the order of the page in one namespace, as
# printed but with one seed instead of eight, and the free names (`sd`, `model`, `x`) bound to
# the models the text describes.
DESIGN = [b for b in all_blocks() if b.page == "docs/design.md"]


def design_recipes(_: Block, ws: Path) -> None:
    import copy
    import math

    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    layers = [m for _ in range(30) for m in (nn.Linear(128, 128), nn.BatchNorm1d(128), nn.ReLU())]
    scope = {"math": math, "copy": copy, "torch": torch, "sd": 0,
             "model": nn.Sequential(*layers), "x": torch.randn(64, 128)}  # the 30-layer BatchNorm MLP of 209
    for b in DESIGN:
        if b.text.startswith("s = analyze(model, x)"):
            torch.manual_seed(0)  # (g): seed 0 of (f)'s LSTM, bias 0, in float32 as (f) predicts it
            scope.update(model=scope["M"](nn.LSTM, 0.0), x=scope["x"].float())
        _exec(Block(b.page, b.line, b.lang, b.text.replace("range(8)", "range(1)")), scope, ws)
    assert scope["s"].verdict == "vanishing"  # (g)'s row for the LSTM, bias 0
    assert len(scope["meas"]) == 100


runs(DESIGN[0].key)(design_recipes)
COVERED.update({b.key: DESIGN[0].key for b in DESIGN[1:]})


# -- the tests --------------------------------------------------------------------------------

def test_every_block_is_run_or_allowed():
    keys = [b.key for b in all_blocks() if b.page not in GENERATED]
    assert len(keys) == len(set(keys)), "two blocks share a first line: make one distinct"
    unknown = [k for k in keys if k not in RUNNERS and k not in ALLOWED and k not in COVERED]
    assert not unknown, "blocks nothing runs: register a runner or add them to ALLOWED with a reason:\n" \
                        + "\n".join(unknown)
    stale = [k for k in (*RUNNERS, *ALLOWED, *COVERED) if k not in keys]
    assert not stale, "runners or reasons for blocks that are gone:\n" + "\n".join(stale)
    assert not set(RUNNERS) & set(ALLOWED) and not set(COVERED) & (set(RUNNERS) | set(ALLOWED))
    assert set(COVERED.values()) <= set(RUNNERS)


def test_allowed_blocks_name_tests_that_exist():
    for reason in ALLOWED.values():
        for path, name in re.findall(r"run by (tests/\w+\.py)::(\w+)", reason):
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), (path, name)


def test_generated_pages_are_checked_by_their_generators():
    assert "def test_rules_doc_is_current" in (ROOT / "tests" / "test_docs.py").read_text()
    assert "docs/errors.md" in (ROOT / "tests" / "test_errors.py").read_text()


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(RUNNERS), ids=lambda k: f"{block(k).page}:{block(k).line}")
def test_block(key, ws, configured):
    RUNNERS[key](block(key), ws)
