"""The cache: an unchanged file costs no check; any change to what its reports depend on does."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlint import cache as cache_mod
from gradlint import workers
from gradlint.cli import main

MODEL = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import gradlint
    from helpers import WIDTH, block


    @gradlint.target(inputs=(4, WIDTH))
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layers = nn.Sequential(*[block() for _ in range(8)])

        def forward(self, x):
            return self.layers(x)
    """)
HELPERS = "import torch.nn as nn\nWIDTH = 16\n\ndef block():\n    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Sigmoid())\n"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[tool.gradlint]\n")
    (root / "model.py").write_text(MODEL)
    (root / "helpers.py").write_text(HELPERS)
    monkeypatch.chdir(root)
    return root


def run(cache_dir: Path, *args: str):
    jobs = workers.counters["jobs"]
    r = CliRunner().invoke(main, ["check", "--cache-dir", str(cache_dir), *args], catch_exceptions=False)
    r.checked = workers.counters["jobs"] - jobs  # files a worker checked; the rest came from the cache
    return r


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.pickle"))


def test_an_unchanged_file_is_not_checked_again(project, tmp_path):
    c = tmp_path / "cache"
    first = run(c, "model.py")
    assert first.exit_code == 1 and first.checked == 1 and "GL101" in first.output
    assert len(entries(c)) == 1
    second = run(c, "model.py")
    assert second.checked == 0
    assert (second.exit_code, second.output) == (first.exit_code, first.output)


def test_a_hit_starts_no_worker_and_never_imports_torch(project, tmp_path):
    c = tmp_path / "cache"
    run(c, "model.py")
    code = ("import sys; from gradlint.cli import main; from gradlint import workers\n"
            f"try:\n    main(['check', '--cache-dir', {str(c)!r}, 'model.py'])\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print(workers.counters['started'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-2:] == ["exit 1", "0 False"], out
    assert "model.py::Net: vanishing" in out.stdout


def test_what_invalidates_an_entry(project, tmp_path, monkeypatch):
    c = tmp_path / "cache"
    assert run(c, "model.py").checked == 1
    # The file itself.
    (project / "model.py").write_text(MODEL + "\n# a comment\n")
    assert run(c, "model.py").checked == 1
    # A local module it imports: the new worker run sees the new helper, not the one it imported before.
    (project / "helpers.py").write_text(HELPERS.replace("WIDTH = 16", "WIDTH = 12"))
    r = run(c, "model.py", "--format", "json")
    assert r.checked == 1
    (target,) = json.loads(r.output)["targets"]
    assert target["params"][0]["shape"] == [12, 12]
    # The configuration: a setting, a rule option, a configured target of the file.
    assert run(c, "model.py", "--threshold", "3").checked == 1
    assert run(c, "model.py", "--threshold", "3").checked == 0
    (project / "pyproject.toml").write_text("[tool.gradlint.rules.GL101]\nthreshold = 3.0\n")
    assert run(c, "model.py").checked == 1
    (project / "pyproject.toml").write_text(
        '[tool.gradlint]\ntargets = [{ path = "model.py::Net", inputs = [2, 12] }]\n')
    assert run(c, "model.py").checked == 1
    # gradlint itself.
    monkeypatch.setattr(cache_mod, "__version__", "999.0")
    assert run(c, "model.py").checked == 1
    assert run(c, "model.py").checked == 0


def test_severities_and_per_file_ignores_apply_to_a_hit(project, tmp_path):
    c = tmp_path / "cache"
    assert "GL101 [error]" in run(c, "model.py").output
    (project / "pyproject.toml").write_text('[tool.gradlint.rules.GL101]\nseverity = "warning"\n')
    r = run(c, "model.py")
    assert r.checked == 0 and "GL101 [warning]" in r.output and "GL101 [error]" not in r.output
    (project / "pyproject.toml").write_text('[tool.gradlint]\nper-file-ignores = { "model.py" = ["GL101"] }\n')
    r = run(c, "model.py")
    assert r.checked == 0 and "GL101" not in r.output


def test_a_corrupt_or_foreign_entry_is_ignored(project, tmp_path):
    c = tmp_path / "cache"
    expected = run(c, "model.py").output
    (entry,) = entries(c)
    for junk in (b"", b"not a pickle", entry.read_bytes()[:40]):
        entry.write_bytes(junk)
        r = run(c, "model.py")
        assert r.checked == 1 and r.output == expected
    # A valid pickle of something else, and one that would run code when loaded.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in ({"key": "another key", "events": []}, Evil()):
        entry.write_bytes(cache_mod._MAGIC + pickle.dumps(payload))
        r = run(c, "model.py")
        assert r.checked == 1 and r.output == expected
    assert not marker.exists()
    assert run(c, "model.py").checked == 0  # rewritten, valid again


def test_no_cache_neither_reads_nor_writes(project, tmp_path):
    c = tmp_path / "cache"
    assert run(c, "model.py", "--no-cache").checked == 1
    assert entries(c) == []
    run(c, "model.py")
    assert run(c, "model.py", "--no-cache").checked == 1


def test_files_that_could_not_be_analyzed_are_checked_every_time(project, tmp_path):
    (project / "broken.py").write_text(MODEL.replace("return self.layers(x)", "raise RuntimeError('no')"))
    c = tmp_path / "cache"
    assert run(c, "broken.py").checked == 1
    assert run(c, "broken.py").checked == 1
    assert entries(c) == []


def test_the_default_cache_is_a_user_directory_not_the_project(project, tmp_path, monkeypatch):
    monkeypatch.delenv("GRADLINT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.name for p in project.rglob("*"))
    r = CliRunner().invoke(main, ["check", "model.py"], catch_exceptions=False)
    assert r.exit_code == 1
    assert sorted(p.name for p in project.rglob("*")) == before
    if sys.platform.startswith("linux"):
        assert cache_mod.default_dir() == tmp_path / "xdg" / "gradlint"
        assert len(list((tmp_path / "xdg" / "gradlint").rglob("*.pickle"))) == 1
    monkeypatch.setenv("GRADLINT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_mod.default_dir() == tmp_path / "mine"


def test_local_imports_follow_the_project_not_site_packages(tmp_path):
    root = tmp_path / "p"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "setup.py").write_text("")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "__init__.py").write_text("from . import leaf\n")
    (root / "pkg" / "sub" / "leaf.py").write_text("from ..util import helper\n")
    (root / "pkg" / "util.py").write_text("import torch\n\ndef helper():\n    import lazy\n")
    (root / "lazy.py").write_text("")
    (root / "unused.py").write_text("")
    (root / "model.py").write_text("import os, torch\nfrom pkg.sub import leaf\nfrom pkg import sub\n")
    c = cache_mod.Cache(tmp_path / "c", __import__("gradlint.runner").runner.Settings())
    found = cache_mod.local_imports((root / "model.py").resolve(), c._read)
    rel = sorted(str(f.relative_to(root.resolve())) for f in found)
    assert rel == ["lazy.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py", "pkg/util.py"]
