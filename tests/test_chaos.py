"""Chaos: a generated tree of a few hundred files, healthy and failing models mixed with files that
crash, exit, hang, run out of memory, leave threads running, change directory, parse argv, set
alarms, and links that loop, checked the way CI checks a repository.

The same tree is checked with ``--jobs 2`` (cold, no cache), then again with SIGINT sent to the
whole process group (as Ctrl-C does) at random moments, then again warm. gradlint runs in an
address space capped with ``setrlimit(RLIMIT_AS)`` (``ulimit -v``), so the files that allocate
too much fail at the allocation instead of taking the machine's memory. Checked:

- every report of a file without hostile code equals the one a clean single-file run of that
  file gives (``run_paths([file])``, one file per run);
- every hostile file is named with its reason (the worker's death, the timeout, the memory, the
  threads it left, the link that loops);
- no file is lost or reported twice, also when interrupted: the files reported plus the ones
  the interruption note counts are all of them;
- the project tree is byte-identical afterwards (``git status`` clean in the tree's repository);
- no worker process outlives its run;
- the cache holds exactly the files whose check was complete and clean: nothing from a file cut
  off by SIGINT, from a file whose threads ran beside its checks, or from a file that could not
  be analyzed, and every entry's reports equal the clean run's; the warm run is served from
  those entries (not one rewritten) and prints the same.

``COMPOSITION`` holds the counts; docs/errors.md shows them (``python tests/test_errors.py --write``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

try:
    import pytest
except ImportError:  # composition() serves `python tests/test_errors.py --write`, which needs no pytest
    pytest = None
else:
    pytestmark = [pytest.mark.slow,
                  pytest.mark.skipif(sys.platform != "linux", reason="FIFOs, RLIMIT_AS, process groups and /proc")]

# Seconds a target may run: the one file that hangs costs this, twice per run.
TIMEOUT = 5
# The address space of gradlint and each worker: at least this; a worker maps about 0.65 GB of it
# with torch's CPU build (VmPeak after importing torch and check_file), CUDA builds map more.
LIMIT_BYTES = 3 * 2**30
# Room above what importing torch maps, where that is more than LIMIT_BYTES allows for.
HEADROOM_BYTES = 2 * 2**30
# What the files that run out of memory ask for: 2**31 float32 values (torch.empty does not write them).
HUGE_BYTES = 2**31 * 4
SEED = 16
INTERRUPTIONS = 2


@dataclass(frozen=True)
class Expect:
    """What one generated file must come to.

    Attributes:
        kind: Its row in ``COMPOSITION``.
        targets: The report labels it must produce, each once.
        reason: Text its reports (or notes) must hold, for a hostile file; None for a file whose
            reports must equal a clean single-file run's.
        note: Text a note about it must hold.
        cached: Whether a complete, clean check of it is cached.
        job: Whether gradlint checks it at all (a link that loops, a FIFO and a file that never
            mentions torch are not).
    """

    kind: str
    targets: tuple[str, ...] = ()
    reason: str | None = None
    note: str | None = None
    cached: bool = False
    job: bool = True


def _mlp(name: str, width: int, depth: int, act: str = "nn.ReLU()", init: bool = True) -> str:
    layers = ", ".join([f"nn.Linear({width}, {width}), {act}"] * depth + [f"nn.Linear({width}, {width})"])
    kaiming = ("        for m in self.layers:\n            if isinstance(m, nn.Linear):\n"
               "                nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\")\n") if init else ""
    return (f"\n\n@gradlint.target(inputs=(4, {width}))\nclass {name}(nn.Module):\n    def __init__(self):\n"
            f"        super().__init__()\n        self.layers = nn.Sequential({layers})\n{kaiming}\n"
            f"    def forward(self, x):\n        return self.layers(x)\n")


HEAD = "import torch\nimport torch.nn as nn\n\nimport gradlint\n"


def _dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def build_tree(root: Path, runs: Path) -> dict[str, Expect]:
    """Writes the tree under ``root/models`` (deterministic); returns each file's expectation,
    by its path as reports show it (relative to ``root``)."""
    rng = random.Random(SEED)
    expect: dict[str, Expect] = {}

    def write(rel: str, text: str, e: Expect) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        expect[rel] = e

    for i in range(100):  # healthy: ReLU MLPs with He init, a fifth of them with a second model
        rel = f"models/healthy/{rng.choice('abcd')}/h_{i:03}.py"
        width, depth = rng.choice((4, 6, 8)), rng.randint(1, 3)
        text, targets = HEAD + _mlp(f"Net{i}", width, depth), [f"{rel}::Net{i}"]
        if i % 5 == 0:
            text += _mlp(f"Head{i}", width, 1, act="nn.Tanh()", init=False)
            targets.append(f"{rel}::Head{i}")
        write(rel, text, Expect("healthy", tuple(targets), cached=True))
    for i in range(12):  # failing: deep sigmoid MLPs, whose gradient vanishes (findings, exit 1)
        rel = f"models/failing/sigmoid_{i:02}.py"
        write(rel, HEAD + _mlp(f"Deep{i}", 8, 12, act="nn.Sigmoid()", init=False),
              Expect("failing model", (f"{rel}::Deep{i}",), cached=True))
    for i in range(6):  # failing: constructors and forwards that raise
        rel = f"models/failing/raises_{i}.py"
        body = ('        raise ValueError("width 7 is not supported")\n' if i % 2 else
                "        self.fc = nn.Linear(8, 8)\n\n    def forward(self, x):\n        return self.head(x)\n")
        write(rel, HEAD + f"\n\n@gradlint.target(inputs=(4, 8))\nclass Broken{i}(nn.Module):\n"
                          f"    def __init__(self):\n        super().__init__()\n{body}",
              Expect("model that raises", (f"{rel}::Broken{i}",)))
    # A package whose models share a local module; the module itself defines none.
    write("models/pkg/__init__.py", "", Expect("never imported", job=False))
    write("models/pkg/blocks.py", "import torch.nn as nn\n\n\ndef block(width):\n"
                                  "    return nn.Sequential(nn.Linear(width, width), nn.ReLU())\n",
          Expect("no model", note="models/pkg/blocks.py: no targets", cached=True))
    for i in range(4):
        rel = f"models/pkg/net_{i}.py"
        write(rel, _dedent(f"""
            import torch.nn as nn

            import gradlint

            from .blocks import block


            @gradlint.target(inputs=(4, 8))
            class PkgNet{i}(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(*[block(8) for _ in range({i + 1})])
                    self.out = nn.Linear(8, 8)

                def forward(self, x):
                    return self.out(self.body(x))
            """), Expect("healthy", (f"{rel}::PkgNet{i}",), cached=True))
    for i in range(60):  # scripts that never mention torch: never imported
        write(f"models/scripts/util_{i:02}.py", f"def helper_{i}(x):\n    return x + {i}\n",
              Expect("never imported", job=False))
    for i in range(3):
        rel = f"models/misc/constants_{i}.py"
        write(rel, "import torch\n\nSCALE = torch.tensor(2.0)\n", Expect("no model", note=f"{rel}: no targets",
                                                                         cached=True))

    hostile = "models/hostile"
    survivor = "\n\n@gradlint.target(inputs=(4, 8))\nclass After(nn.Module):\n    def __init__(self):\n" \
               "        super().__init__()\n        self.fc = nn.Linear(8, 8)\n\n    def forward(self, x):\n" \
               "        return self.fc(x)\n"
    write(f"{hostile}/segv_forward.py", HEAD + "import ctypes\n\n\n@gradlint.target(inputs=(4, 8))\n"
          "class Crashes(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
          "        self.fc = nn.Linear(8, 8)\n\n    def forward(self, x):\n        ctypes.string_at(0)\n"
          "        return self.fc(x)\n" + survivor,
          Expect("segfault", (f"{hostile}/segv_forward.py::Crashes", f"{hostile}/segv_forward.py::After"),
                 reason="died with signal SIGSEGV"))
    write(f"{hostile}/exit_import.py", "import os\n\nimport torch\n\nos._exit(3)\n",
          Expect("os._exit", (f"{hostile}/exit_import.py",), reason="died with exit code 3"))
    write(f"{hostile}/hang.py", HEAD + "import time\n\n\n@gradlint.target(inputs=(4, 8))\nclass Sleeper(nn.Module):\n"
          "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(8, 8)\n\n"
          "    def forward(self, x):\n        while True:\n            time.sleep(0.05)\n" + survivor,
          Expect("hang past --timeout", (f"{hostile}/hang.py::Sleeper", f"{hostile}/hang.py::After"),
                 reason=f"timed out after {TIMEOUT} s"))
    # torch.empty does not write what it allocates: without the cap, these would not touch 8 GB.
    write(f"{hostile}/alloc_import.py", "import torch\n\nTABLE = torch.empty(2**31)  # 8 GB\n",
          Expect("allocation past the memory limit", (f"{hostile}/alloc_import.py",),
                 reason="can't allocate memory"))
    write(f"{hostile}/alloc_init.py", HEAD + "\n\n@gradlint.target(inputs=(4, 8))\nclass Huge(nn.Module):\n"
          "    def __init__(self):\n        super().__init__()\n        self.table = torch.empty(2**31)  # 8 GB\n",
          Expect("allocation past the memory limit", (f"{hostile}/alloc_init.py::Huge",),
                 reason="can't allocate memory"))
    write(f"{hostile}/oom_kill.py", "import os\nimport signal\n\nimport torch\n\n"
          "hog = torch.ones(25_000_000)  # 100 MB, written\n"
          "os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does\n",
          Expect("SIGKILL (OOM killer)", (f"{hostile}/oom_kill.py",), reason="probably out of memory"))
    for i in range(1):
        rel = f"{hostile}/thread_{i}.py"
        write(rel, HEAD + "import threading\nimport time\n\n\ndef keep_float64():\n    while True:\n"
                          "        torch.set_default_dtype(torch.float64)\n        time.sleep(0.001)\n\n\n"
                          "threading.Thread(target=keep_float64, daemon=True).start()\n" + survivor,
              Expect("thread left running", (f"{rel}::After",), note=f"{rel}: its code left 1 thread running"))
    for i in range(2):
        rel = f"{hostile}/chdir_{i}.py"
        write(rel, HEAD + "import os\n\n"
                          f"RUN_DIR = {str(runs / f'chdir_{i}')!r}\nos.makedirs(RUN_DIR, exist_ok=True)\n"
                          "os.chdir(RUN_DIR)\n\n\n@gradlint.target(inputs=(4, 8))\nclass Trainer(nn.Module):\n"
                          "    def __init__(self):\n        super().__init__()\n"
                          "        with open('config.txt', 'w') as f:  # into the run directory\n"
                          "            f.write('width=8\\n')\n        self.fc = nn.Linear(8, 8)\n\n"
                          "    def forward(self, x):\n        return self.fc(x)\n",
              Expect("chdir at import", (f"{rel}::Trainer",), cached=True))
    for i in range(2):
        rel = f"{hostile}/argv_{i}.py"
        write(rel, HEAD + "import argparse\n\nparser = argparse.ArgumentParser()\n"
                          "parser.add_argument('--width', type=int, default=8)\nARGS = parser.parse_args()\n\n\n"
                          "@gradlint.target(inputs=(4, 8))\nclass Cli(nn.Module):\n    def __init__(self):\n"
                          "        super().__init__()\n        width = parser.parse_args().width\n"
                          "        self.fc = nn.Linear(width, width)\n\n    def forward(self, x):\n"
                          "        return self.fc(x)\n",
              Expect("argv parsed at import and in `__init__`", (f"{rel}::Cli",), cached=True))
    rel = f"{hostile}/alarm.py"
    write(rel, "import signal\n\n" + HEAD + "signal.alarm(5)  # SIGALRM's default action ends the process\n"
          + survivor, Expect("alarm left set", (f"{rel}::After",), cached=True))

    links = root / "models" / "links"
    links.mkdir(parents=True)
    os.symlink("y.py", links / "x.py")
    os.symlink("x.py", links / "y.py")
    os.symlink("nowhere.py", links / "dangling.py")
    os.mkfifo(links / "pipe.py")
    expect["models/links/x.py"] = Expect("symlink loop", note="models/links/x.py: skipped: it is a symbolic link in a "
                                                              "loop", job=False)
    expect["models/links/y.py"] = Expect("symlink loop", note="models/links/y.py: skipped: it is a symbolic link in a "
                                                              "loop", job=False)
    expect["models/links/dangling.py"] = Expect("dangling symlink", note="models/links/dangling.py: skipped: it is a "
                                                                         "symbolic link to nowhere.py", job=False)
    expect["models/links/pipe.py"] = Expect("FIFO", note="models/links/pipe.py: skipped: it is a FIFO", job=False)
    return expect


def composition() -> Counter[str]:
    """How many files of each kind the tree holds (for docs/errors.md; no files are kept)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return Counter(e.kind for e in build_tree(Path(tmp) / "p", Path(tmp) / "runs").values())


# --- running gradlint on the tree ------------------------------------------------------------------

@dataclass
class Run:
    code: int
    doc: dict
    stderr: str
    seconds: float
    signalled_at: float | None = None


def _session_processes(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after ")": state, ppid, pgrp, session
            found.append(int(entry))
    return found


def memory_limit() -> int:
    """The address-space cap: LIMIT_BYTES, or what a process that imported torch and gradlint's
    worker side maps plus HEADROOM_BYTES where that is more (a CUDA build of torch maps more)."""
    peak = subprocess.run([sys.executable, "-c", "import torch, gradlint.run.check_file; "
                           "print(next(int(line.split()[1]) for line in open('/proc/self/status') "
                           "if line.startswith('VmPeak')))"], capture_output=True, text=True, check=True).stdout
    return max(LIMIT_BYTES, int(peak) * 1024 + HEADROOM_BYTES)


def run_gradlint(project: Path, cache: Path, limit: int, interrupt_after: float | None = None) -> Run:
    def child() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a terminal starts it (see test_workers)

    env = {**os.environ, "NO_COLOR": "1", "GRADLINT_NO_PROGRESS": "1"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gradlint", "check", "models", "--jobs", "2", "--timeout",
                             str(TIMEOUT), "--format", "json", "--cache-dir", str(cache)], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=child)
    signalled = None
    if interrupt_after is not None:
        try:
            proc.wait(timeout=interrupt_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
            signalled = interrupt_after
    out, err = proc.communicate(timeout=600)
    seconds = time.monotonic() - start
    deadline = time.monotonic() + 15
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session_processes(proc.pid), "a worker outlived its run"
    if not out and proc.returncode == 130 and "gradlint: interrupted" in err:
        return Run(130, {"targets": [], "notes": []}, err, seconds, signalled)  # before any file was checked
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"not one JSON document (exit {proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    return Run(proc.returncode, doc, err, seconds, signalled)


def _owner(label: str, expect: dict[str, Expect]) -> str:
    path = label.split("::", 1)[0]
    assert path in expect, f"a report for a file the tree does not have: {label}"
    return path


def _by_file(targets: list[dict], expect: dict[str, Expect]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for t in targets:
        out.setdefault(_owner(t["target"], expect), []).append(t)
    return out


def check_run(run: Run, expect: dict[str, Expect], reference: dict[str, list[dict]],
              interrupted: bool) -> tuple[int, int]:
    """Asserts what every run must hold; returns (files reported, healthy reports compared)."""
    labels = Counter(t["target"] for t in run.doc["targets"])
    twice = [label for label, n in labels.items() if n > 1]
    assert not twice, f"reported twice: {twice}"
    reported = _by_file(run.doc["targets"], expect)
    notes = run.doc["notes"]
    compared = 0
    finished = set(reported) | {f for f, e in expect.items() if e.job and not e.targets and e.note
                                and any(n.startswith(e.note) for n in notes)}
    for file, e in expect.items():
        if not e.job:
            continue
        got = reported.get(file, [])
        if file not in finished:
            assert interrupted and e.job, f"{file} ({e.kind}) lost: no report and no note"
            continue
        assert tuple(t["target"] for t in got) == e.targets, (file, [t["target"] for t in got])
        if e.reason is not None:
            text = "\n".join(f"{t['error']}" for t in got)
            assert e.reason in text, f"{file} ({e.kind}) not named with its reason {e.reason!r}: {text[:600]}"
            if e.kind.startswith(("allocation", "SIGKILL")):
                assert "build the model on the meta device" in text and "--jobs 1" in text, text[:600]
        elif e.kind != "thread left running":
            assert got == reference[file], f"{file}: its report differs from a clean single-file run's"
            compared += len(got)
        if e.note is not None:
            assert any(n.startswith(e.note) for n in notes), f"{file}: no note {e.note!r}"
    for file, e in expect.items():  # notes for what is never checked come from the walk, before any file
        if not e.job and e.note is not None:
            assert any(n.startswith(e.note) for n in notes), f"{file}: no note {e.note!r}"
    jobs = [f for f, e in expect.items() if e.job]
    if interrupted:
        assert run.code == 130, (run.code, run.stderr[-2000:])
        said = "\n".join([*notes, run.stderr])  # with --format json, the notes are in the document
        m = re.search(r"interrupted; (\d+) of (\d+) files not checked", said)
        if m is None:  # interrupted before the files were handed out
            assert "gradlint: interrupted" in said and not finished, said[-2000:]
        else:
            assert int(m[2]) == len(jobs) and int(m[1]) + len(finished) == len(jobs), (m[0], len(finished))
    else:
        assert run.code == 2, (run.code, run.stderr[-2000:])
        assert len(finished) == len(jobs)
    return len(finished), compared


def cache_entries(cache: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*.json")}


def cached_files(cache: Path, expect: dict[str, Expect], root: Path) -> dict[str, list[dict]]:
    """What each cache entry holds, by file, as JSON targets (fingerprints relative to ``root``)."""
    from gradlint.output.formats import json_doc
    from gradlint.run import cache as cache_mod
    from gradlint.run import wire

    out: dict[str, list[dict]] = {}
    for entry in cache_entries(cache):
        data = entry.read_bytes()
        assert data.startswith(cache_mod._MAGIC)
        events = wire.loads(data[len(cache_mod._MAGIC):])["events"]
        reports = [r for kind, r in events if kind == "report"]
        notes = [n for kind, n in events if kind == "note"]
        owner = _owner(reports[0].target, expect) if reports else next(
            f for f in expect if notes and notes[0].startswith(f + ":"))
        assert owner not in out, f"two entries for {owner}"
        out[owner] = json.loads(json.dumps(json_doc(reports, notes, root)["targets"]))
    return out


# --- the test ----------------------------------------------------------------------------------------

def _same(held: dict[str, list[dict]], reference: dict[str, list[dict]]) -> None:
    for file, targets in held.items():
        if targets != reference[file]:
            first = next((i for i, (a, b) in enumerate(zip(targets, reference[file])) if a != b), 0)
            a, b = targets[first] if targets else {}, reference[file][first] if reference[file] else {}
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            pytest.fail(f"the cache entry of {file} differs from its clean run: {keys}: "
                        f"{[a.get(k) for k in keys]} != {[b.get(k) for k in keys]}"[:3000])


def _comparable(run: Run, expect: dict[str, Expect]) -> list[dict]:
    """The run's reports of the files whose reports do not depend on timing (no hostile code)."""
    return [t for t in run.doc["targets"] if (e := expect[_owner(t["target"], expect)]).reason is None
            and e.kind != "thread left running"]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=chaos", "-c", "user.email=chaos@example.com", "-c",
                           "commit.gpgsign=false", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def test_chaos(tmp_path, monkeypatch, capsys):
    from gradlint.base.paths import repo_root
    from gradlint.output.formats import json_doc
    from gradlint.run.runner import run_paths

    project, runs, cache = tmp_path / "project", tmp_path / "runs", tmp_path / "cache"
    expect = build_tree(project, runs)
    _git("init", "-q", ".", cwd=project)
    _git("add", "-A", cwd=project)
    _git("commit", "-qm", "the tree", cwd=project)
    assert _git("status", "--porcelain", "--ignored", cwd=project) == ""
    limit = memory_limit()
    if limit + HEADROOM_BYTES > HUGE_BYTES:
        pytest.skip(f"importing torch maps {(limit - HEADROOM_BYTES) / 2**30:.1f} GiB: no room for a cap below "
                    f"the {HUGE_BYTES / 2**30:g} GiB the hostile files ask for")
    probe = subprocess.run([sys.executable, "-c", "import resource, torch; "
                            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
                            "torch.empty(2**31)"], capture_output=True, text=True)
    assert "can't allocate memory" in probe.stderr, "the memory cap does not hold here"

    # Clean single-file runs, one file per run, of the files without hostile code.
    monkeypatch.chdir(project)
    started = time.monotonic()
    reference: dict[str, list[dict]] = {}
    for file, e in expect.items():
        if e.job and e.reason is None and e.kind != "thread left running":
            reports, notes = run_paths([file], workers=1, timeout=TIMEOUT)
            reference[file] = json.loads(json.dumps(json_doc(reports, notes, repo_root())["targets"]))
            assert tuple(t["target"] for t in reference[file]) == e.targets, (file, reference[file])
    reference_seconds = time.monotonic() - started
    monkeypatch.chdir(tmp_path)

    cold = run_gradlint(project, cache, limit)
    files, compared = check_run(cold, expect, reference, interrupted=False)
    root = project.resolve()
    should_cache = {f for f, e in expect.items() if e.job and e.cached}
    held = cached_files(cache, expect, root)
    assert set(held) == should_cache, (sorted(set(held) ^ should_cache))
    _same(held, reference)

    # Ctrl-C at random moments, from an empty cache: each interrupted run caches what it finished,
    # and the next run is served those entries and checks the rest.
    shutil_rmtree(cache)
    rng = random.Random(SEED)
    interruptions = []
    for _ in range(INTERRUPTIONS):
        before = cache_entries(cache) if cache.exists() else {}
        at = round(rng.uniform(2.0, max(3.0, cold.seconds * 0.6)), 2)
        run = run_gradlint(project, cache, limit, interrupt_after=at)
        done, _ = check_run(run, expect, reference, interrupted=run.signalled_at is not None)
        held = cached_files(cache, expect, root)
        # Only complete, clean files are cached, each as a clean run reports it; what was cached
        # before is served, not rewritten.
        assert set(held) <= should_cache, sorted(set(held) - should_cache)
        _same(held, reference)
        after = cache_entries(cache)
        assert all(after.get(p) == v for p, v in before.items()), "an entry was rewritten, not served"
        interruptions.append((at, run.code, done, len(before), len(after)))

    before = cache_entries(cache)
    warm = run_gradlint(project, cache, limit)
    check_run(warm, expect, reference, interrupted=False)
    after = cache_entries(cache)
    held = cached_files(cache, expect, root)
    assert set(held) == should_cache
    _same(held, reference)
    served = [p for p in before if after.get(p) == before[p]]
    assert len(served) == len(before), "an entry an interrupted run wrote was rewritten, not served"
    assert _comparable(warm, expect) == _comparable(cold, expect)

    assert _git("status", "--porcelain", "--ignored", cwd=project) == ""  # byte-identical
    assert sorted(p.name for p in runs.iterdir()) == ["chdir_0", "chdir_1"]  # where the chdir files wrote

    kinds = Counter(e.kind for e in expect.values())
    with capsys.disabled():
        print(f"\nchaos: {len(expect)} files ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
              f"{len(reference)} clean single-file runs in {reference_seconds:.1f} s")
        print(f"chaos: cold --jobs 2 run {cold.seconds:.1f} s: {files} files checked, {compared} reports equal to "
              f"the clean runs', {len(should_cache)} files cached")
        for at, code, done, had, kept in interruptions:
            print(f"chaos: SIGINT to the process group at {at:.2f} s: exit {code}, {done} files finished, "
                  f"cache entries {had} -> {kept}")
        print(f"chaos: warm run {warm.seconds:.1f} s: {len(served)} entries written by interrupted runs served, none "
              f"rewritten, {len(after) - len(served)} added; project tree unchanged (git status clean), no worker "
              "left behind")


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
