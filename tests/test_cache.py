"""The cache: an unchanged file costs no check; any change to what its reports depend on does."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlint.cli import main
from gradlint.run import cache as cache_mod
from gradlint.run import workers

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
HELPERS = ("import torch.nn as nn\nWIDTH = 16\n\n"
           "def block():\n    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Sigmoid())\n")


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
    return sorted(cache_dir.rglob("*.json"))


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
    code = ("import sys; from gradlint.cli import main; from gradlint.run import workers\n"
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
    # GL101, a warning now, is a note of the GL201 error about the same sigmoids (one problem, one finding).
    assert r.checked == 0 and ": note: GL101 symptom" in r.output and "GL101 [error]" not in r.output
    (project / "pyproject.toml").write_text('[tool.gradlint]\nper-file-ignores = { "model.py" = ["GL101"] }\n')
    r = run(c, "model.py")
    assert r.checked == 0 and "GL101" not in r.output


def test_a_corrupt_or_foreign_entry_is_ignored(project, tmp_path):
    c = tmp_path / "cache"
    expected = run(c, "model.py").output
    (entry,) = entries(c)
    valid = entry.read_bytes()
    body = json.loads(valid[len(cache_mod._MAGIC):])
    for junk in (b"", b"not json", valid[:40], cache_mod._MAGIC + b"[" * 100_000,
                 cache_mod._MAGIC + json.dumps({**body, "key": "another key"}).encode(),
                 cache_mod._MAGIC
                 + json.dumps({"@type": "Report", "fields": {"target": "x", "no_such_field": 1}}).encode()):
        entry.write_bytes(junk)
        r = run(c, "model.py")
        assert r.checked == 1 and r.output == expected
    assert run(c, "model.py").checked == 0  # rewritten, valid again


def test_a_hostile_cache_entry_runs_nothing_and_is_ignored(project, tmp_path):
    """Entries are JSON that rebuilds only gradlint's report records: an entry crafted to run a
    command, as a pickle (what format 1 stored) or as a document naming another type, runs
    nothing and is a miss. The old format's directory is never read."""
    c = tmp_path / "cache"
    expected = run(c, "model.py").output
    (entry,) = entries(c)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    # Format 1's exploit: a pickle whose allow-list accepted any attribute of gradlint's modules.
    old = c / "v1" / entry.parent.name / (entry.stem + ".pickle")
    old.parent.mkdir(parents=True)
    old.write_bytes(cache_mod._MAGIC + pickle.dumps(Evil()))
    command = {"@type": "system", "fields": {"command": f"touch {marker}"}}
    for payload in (cache_mod._MAGIC + pickle.dumps(Evil()),
                    cache_mod._MAGIC + json.dumps(command).encode(),
                    cache_mod._MAGIC + json.dumps({"@dict": [["key", command], ["events", []]]}).encode()):
        entry.write_bytes(payload)
        r = run(c, "model.py")
        assert r.checked == 1 and r.output == expected
    assert not marker.exists()


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
        assert len(list((tmp_path / "xdg" / "gradlint").rglob("*.json"))) == 1
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
    c = cache_mod.Cache(tmp_path / "c", __import__("gradlint.run.check_file").run.check_file.Settings())
    found = cache_mod.local_imports((root / "model.py").resolve(), c._read)
    rel = sorted(str(f.relative_to(root.resolve())) for f in found)
    assert rel == ["lazy.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py", "pkg/util.py"]


# --- pruning ------------------------------------------------------------------------------------

DAY = 24 * 3600


def _key(n: int) -> str:
    return f"{n:064x}"


def _entry(root: Path, n: int, age_days: float, size: int = 100, now: float | None = None) -> Path:
    """A file as Cache.put writes it, last used ``age_days`` ago."""
    key = _key(n)
    path = root / f"v{cache_mod.FORMAT}" / key[:2] / f"{key[2:]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cache_mod._MAGIC + b"x" * (size - len(cache_mod._MAGIC)))
    t = (now or time.time()) - age_days * DAY
    os.utime(path, (t, t))
    return path


def _aged(path: Path, age_days: float) -> Path:
    t = time.time() - age_days * DAY
    os.utime(path, (t, t), follow_symlinks=False)
    return path


def test_prune_drops_entries_unused_for_max_age_and_keeps_fresh_ones(tmp_path):
    c = tmp_path / "cache"
    old = [_entry(c, n, age) for n, age in ((1, 31), (2, 400))]
    fresh = [_entry(c, n, age) for n, age in ((3, 0), (4, 29))]
    assert cache_mod.prune(c) == (2, 200)
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in fresh)


def test_prune_keeps_the_cache_under_its_size_cap_least_recently_used_first(tmp_path):
    c = tmp_path / "cache"
    by_age = [_entry(c, n, age_days=n, size=1000) for n in range(1, 11)]  # entry n: used n days ago
    assert cache_mod.prune(c, max_bytes=4500) == (6, 6000)
    assert [p.exists() for p in by_age] == [True] * 4 + [False] * 6
    assert cache_mod.prune(c, max_bytes=4500) == (0, 0)


def test_prune_removes_only_gradlints_own_files(tmp_path):
    # A --cache-dir pointed at a directory that holds other things, all of them ancient.
    c = tmp_path / "shared"
    outside = tmp_path / "elsewhere"
    (outside / "ab").mkdir(parents=True)
    theirs = [
        c / "notes.txt", c / "v1" / "notes.txt", c / "v1" / "ab" / "README.md", c / "v1" / "ab" / "x.pickle",
        c / "v1" / "ab" / ("0" * 62 + ".pickled"), c / "data" / "ab" / ("0" * 62 + ".pickle"),
        c / "v1" / "abc" / ("0" * 62 + ".pickle"), c / "vx" / "ab" / ("0" * 62 + ".pickle"),
        outside / "ab" / ("1" * 62 + ".pickle"),
    ]
    for p in theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(cache_mod._MAGIC + b"not gradlint's, by where it is")
    # Named like an entry, in the right place, but not in gradlint's format.
    impostor = c / "v1" / "ab" / ("2" * 62 + ".pickle")
    impostor.write_bytes(b"someone else's pickle")
    theirs.append(impostor)
    # Links to the outside: neither a linked shard directory nor a linked entry is followed.
    (c / "v1" / "cd").symlink_to(outside / "ab", target_is_directory=True)
    link = c / "v1" / "ef" / ("3" * 62 + ".pickle")
    link.parent.mkdir(parents=True)
    link.symlink_to(outside / "ab" / ("1" * 62 + ".pickle"))
    for p in theirs:
        _aged(p, 1000)
    _aged(link, 1000)
    mine = _entry(c, 5, age_days=1000)
    before = {p: p.read_bytes() for p in theirs}

    assert cache_mod.prune(c, max_bytes=0) == (1, 100)
    assert not mine.exists()
    assert {p: p.read_bytes() for p in theirs} == before  # every one still there, unchanged
    assert link.is_symlink() and (c / "v1" / "cd").is_symlink()
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == [Path("ab"), Path("ab", "1" * 62 + ".pickle")]


def test_prune_removes_temporary_files_a_killed_run_left(tmp_path):
    c = tmp_path / "cache"
    kept = _entry(c, 7, age_days=0)
    stale, inflight = kept.parent / ".tmp-abc123", kept.parent / ".tmp-inflight"
    stale.write_bytes(b"half")
    inflight.write_bytes(b"being written")
    _aged(stale, 2)
    cache_mod.prune(c)
    assert not stale.exists()
    assert inflight.exists() and kept.exists()


def test_prune_runs_at_most_once_a_day_and_only_after_a_write(tmp_path, monkeypatch):
    from gradlint.run.check_file import Settings

    c = tmp_path / "cache"
    old = _entry(c, 1, age_days=60)
    cache = cache_mod.Cache(c, Settings())
    assert cache.prune_if_due() is None and old.exists()  # nothing written: nothing can have grown
    cache.put(_key(2), [("note", "hello")])
    assert cache.prune_if_due() == (1, 100) and not old.exists()
    stamp = c / f"v{cache_mod.FORMAT}" / "last-prune"
    assert stamp.exists()
    # Within the day, a run that writes looks at the stamp only.
    old = _entry(c, 3, age_days=60)
    calls = []
    monkeypatch.setattr(cache_mod, "prune", lambda *a, **k: calls.append(a) or (0, 0))
    cache.put(_key(4), [("note", "again")])
    assert cache.prune_if_due(now=time.time() + 0.5 * DAY) is None and calls == []
    assert cache.prune_if_due(now=time.time() + 1.1 * DAY) == (0, 0) and len(calls) == 1
    assert cache.prune_if_due(now=time.time() + 1.2 * DAY) is None and len(calls) == 1


def test_a_run_prunes_old_entries_and_a_hit_keeps_its_entry_fresh(project, tmp_path):
    c = tmp_path / "cache"
    stale = _entry(c, 9, age_days=45)
    assert run(c, "model.py").checked == 1
    assert not stale.exists()
    (entry,) = entries(c)
    # A hit refreshes the entry's time, which pruning goes by.
    _aged(entry, 20)
    assert run(c, "model.py").checked == 0
    assert time.time() - entry.stat().st_mtime < 60
    # One not used for longer than MAX_AGE goes at the next pruning; the stamp is a day old by then.
    _aged(entry, 31)
    _aged(c / f"v{cache_mod.FORMAT}" / "last-prune", 2)
    (project / "model.py").write_text(MODEL + "\n# changed\n")
    assert run(c, "model.py").checked == 1
    assert not entry.exists() and len(entries(c)) == 1


def _returns_within(seconds, fn, *args):
    import threading

    out = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__}{args} blocked"
    return out[0]


def test_a_fifo_or_a_symlink_loop_has_no_key_and_nothing_blocks_on_it(project, tmp_path):
    from gradlint.run.check_file import Settings

    os.mkfifo(project / "pipe.py")
    os.symlink("b.py", project / "a.py")
    os.symlink("a.py", project / "b.py")
    (project / "uses_pipe.py").write_text("import pipe\n" + MODEL)  # a local import that is a FIFO
    cache = cache_mod.Cache(tmp_path / "cache", Settings())
    assert _returns_within(10, cache.key, project / "pipe.py", None) is None
    assert _returns_within(10, cache.key, project / "a.py", None) is None
    assert _returns_within(10, cache.key, project / "uses_pipe.py", None) is not None
    from gradlint.load import may_define_model
    assert _returns_within(10, may_define_model, project / "pipe.py") is True  # importing it says what is wrong
