"""The pre-commit hooks, run for real: pre-commit takes them from a git repository at a release
tag and ``git commit`` runs them on a throwaway project.

pre-commit clones a hook repository at a revision, so the hook repository here is a fresh git
repository holding this working tree as it is now (committed or not), tagged ``v`` + gradlint's
version as a release is. The hooks are ``language: system``: they run the ``gradlint`` on PATH,
here the environment running these tests, and pre-commit installs nothing for them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from gradlint import __version__

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "gradlint tests", "GIT_AUTHOR_EMAIL": "tests@gradlint.invalid",
                "GIT_COMMITTER_NAME": "gradlint tests", "GIT_COMMITTER_EMAIL": "tests@gradlint.invalid"}

if shutil.which("git") is None:
    pytest.skip("git is not installed", allow_module_level=True)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, check=check)


def clean_env(**extra: str) -> dict[str, str]:
    # A test run from inside a git hook inherits GIT_DIR/GIT_INDEX_FILE, which would point
    # the nested git commands at the outer repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update(GIT_IDENTITY)
    env.update(extra)
    return env


def commit(project: Path, env: dict[str, str], message: str) -> subprocess.CompletedProcess:
    """``git commit`` with pre-commit's hook installed; output is stdout and stderr together."""
    return subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-m", message], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def new_project(path: Path, config: str, env: dict[str, str]) -> Path:
    """A git repository with ``config`` as its .pre-commit-config.yaml and pre-commit's git hook."""
    path.mkdir()
    git(path, "init", "-q", env=env)
    (path / ".pre-commit-config.yaml").write_text(textwrap.dedent(config))
    (path / "models").mkdir()
    subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=path, env=env, check=True,
                   capture_output=True, text=True)
    return path


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A git repository with this working tree (tracked and new, not ignored files) committed."""
    if git(ROOT, "rev-parse", "--git-dir", check=False).returncode != 0:
        pytest.skip("the gradlint source is not a git checkout")
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    repo = tmp_path_factory.mktemp("hook-repo")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():   # deleted but not yet staged files are listed too
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    env = clean_env()
    git(repo, "init", "-q", env=env)
    git(repo, "add", "-A", env=env)
    git(repo, "commit", "-q", "-m", "gradlint working tree", env=env)
    git(repo, "tag", f"v{__version__}", env=env)   # as a release is tagged
    return repo, git(repo, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="module")
def hook_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment a developer commits in: pre-commit's own cache, and this environment's
    ``gradlint`` first on PATH (the project's environment, where the hooks find it)."""
    home = tmp_path_factory.mktemp("pre-commit-home")
    return clean_env(PRE_COMMIT_HOME=str(home), GRADLINT_NO_PROGRESS="1",
                     PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def readme_config() -> str:
    """The .pre-commit-config.yaml snippet of docs/ci.md's pre-commit section, as written."""
    section = (ROOT / "docs" / "ci.md").read_text().split("## pre-commit", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "repos:" in b]
    return block


def remote_config(hook_repo: tuple[Path, str], *hook_ids: str) -> str:
    """docs/ci.md's snippet with the hook repository's address, and the hooks ``hook_ids``."""
    repo, _ = hook_repo
    config = yaml.safe_load(readme_config())
    (entry,) = config["repos"]
    entry["repo"] = str(repo)
    if hook_ids:
        entry["hooks"] = [{"id": h} for h in hook_ids]
    return yaml.safe_dump(config)


@pytest.mark.slow
def test_hook_fails_a_commit_of_a_vanishing_model_and_passes_a_healthy_one(tmp_path, hook_repo, hook_env):
    project = new_project(tmp_path / "project", remote_config(hook_repo, "gradlint"), hook_env)
    shutil.copy(EXAMPLES / "sigmoid_mlp.py", project / "models" / "sigmoid_mlp.py")
    git(project, "add", "-A", env=hook_env)
    result = commit(project, hook_env, "a vanishing model")
    assert result.returncode != 0, result.stdout
    assert "gradlint" in result.stdout and "Failed" in result.stdout
    assert "models/sigmoid_mlp.py:16:1: GL101 [error] gradient vanishes" in result.stdout
    assert git(project, "rev-list", "--all", env=hook_env).stdout == ""   # nothing was committed

    git(project, "rm", "-q", "--cached", "models/sigmoid_mlp.py", env=hook_env)
    (project / "models" / "sigmoid_mlp.py").unlink()
    shutil.copy(EXAMPLES / "kaiming_mlp.py", project / "models" / "kaiming_mlp.py")
    git(project, "add", "-A", env=hook_env)
    result = commit(project, hook_env, "a healthy model")
    assert result.returncode == 0, result.stdout
    assert "Passed" in result.stdout
    assert "healthy model" in git(project, "log", "--oneline", env=hook_env).stdout


BLOCKS = '''\
import torch.nn as nn


def block(width):
    """One hidden layer of the models; a helper without targets of its own."""
    layer = nn.Linear(width, width)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return nn.Sequential(layer, nn.ReLU())
'''

NET = '''\
import torch.nn as nn

import gradlint
from models.blocks import block


@gradlint.target(inputs=(64, 256))
class Net(nn.Module):
    def __init__(self, depth=20, width=256):
        super().__init__()
        self.body = nn.Sequential(*[block(width) for _ in range(depth - 1)])
        self.head = nn.Linear(width, width)

    def forward(self, x):
        return self.head(self.body(x))
'''


@pytest.mark.slow
def test_project_hook_sees_a_helper_change_the_staged_files_hook_cannot(tmp_path, hook_repo, hook_env):
    project = new_project(tmp_path / "project", remote_config(hook_repo, "gradlint", "gradlint-project"), hook_env)
    (project / "pyproject.toml").write_text('[tool.gradlint]\ninclude = ["models/**/*.py"]\n')
    (project / "models" / "__init__.py").write_text("")
    (project / "models" / "blocks.py").write_text(BLOCKS)
    (project / "models" / "net.py").write_text(NET)
    git(project, "add", "-A", env=hook_env)
    result = commit(project, hook_env, "a healthy model built from a helper")
    assert result.returncode == 0, result.stdout

    # A commit that stages only the helper, still healthy: the staged-files hook has no target to
    # analyze there, which is no reason to fail the commit (--allow-no-targets).
    (project / "models" / "blocks.py").write_text(BLOCKS.replace("One hidden layer", "A hidden layer"))
    git(project, "add", "models/blocks.py", env=hook_env)
    result = commit(project, hook_env, "reword the helper")
    assert result.returncode == 0, result.stdout
    assert re.search(r"^gradlint\.+Passed$", result.stdout, re.M), result.stdout

    # Only the helper changes: its ReLU blocks become sigmoid ones with PyTorch's default init.
    (project / "models" / "blocks.py").write_text(
        "import torch.nn as nn\n\n\n"
        "def block(width):\n    return nn.Sequential(nn.Linear(width, width), nn.Sigmoid())\n")
    git(project, "add", "models/blocks.py", env=hook_env)
    result = commit(project, hook_env, "sigmoid blocks")
    assert result.returncode != 0, result.stdout
    out = result.stdout
    staged_hook, project_hook = out.split("gradlint (project)", 1)
    assert "Passed" in staged_hook   # blocks.py alone has nothing to check
    assert "Failed" in project_hook
    assert "models/net.py::Net: vanishing" in project_hook
    assert "GL101 [error] gradient vanishes" in project_hook


def test_readme_config_names_a_release_tag_and_the_hooks_the_repository_has(tmp_path):
    manifest = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hooks = {h["id"]: h for h in manifest}
    assert set(hooks) == {"gradlint", "gradlint-project"}
    # Nothing for pre-commit to install: no hook can pull a torch of its own.
    assert {h["language"] for h in hooks.values()} == {"system"}
    assert hooks["gradlint-project"]["pass_filenames"] is False
    assert "--allow-no-targets" in hooks["gradlint"]["entry"]
    subprocess.run([sys.executable, "-m", "pre_commit", "validate-manifest", str(ROOT / ".pre-commit-hooks.yaml")],
                   check=True, capture_output=True)
    text = readme_config()
    path = tmp_path / "config.yaml"
    path.write_text(text)
    subprocess.run([sys.executable, "-m", "pre_commit", "validate-config", str(path)], check=True,
                   capture_output=True)
    (repo,) = yaml.safe_load(text)["repos"]
    assert repo["rev"] == f"v{__version__}"
    assert {h["id"] for h in repo["hooks"]} <= set(hooks)


@pytest.mark.slow
def test_readme_snippet_as_written_checks_the_configured_models(tmp_path, hook_repo, hook_env):
    project = new_project(tmp_path / "project", remote_config(hook_repo), hook_env)
    (project / "pyproject.toml").write_text('[tool.gradlint]\ninclude = ["models/**/*.py"]\n')
    shutil.copy(EXAMPLES / "sigmoid_mlp.py", project / "models" / "sigmoid_mlp.py")
    git(project, "add", "-A", env=hook_env)
    result = commit(project, hook_env, "a vanishing model")
    assert result.returncode != 0, result.stdout
    assert "gradlint (project)" in result.stdout and "Failed" in result.stdout
    assert "models/sigmoid_mlp.py:16:1: GL101 [error] gradient vanishes" in result.stdout
