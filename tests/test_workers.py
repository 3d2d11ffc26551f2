"""Worker processes: a crash, an exit or a hang costs one target, never the run.

The command line runs in this process (CliRunner) and its workers stay for the next
invocation, so most tests pay for importing torch once; each crash costs a fresh worker.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlint.base.report import Report
from gradlint.cli import main
from gradlint.run import workers

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and fork semantics of POSIX")


def model(name: str, width: int = 8, seed: int = 0, forward: str = "return self.fc(x)") -> str:
    # Seeded weights: two runs (or --jobs 1 and 2) print the same numbers.
    return textwrap.dedent(f"""
        @gradlint.target(inputs=(4, {width}))
        class {name}(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed({seed})
                self.fc = nn.Linear({width}, {width})

            def forward(self, x):
        """) + textwrap.indent(forward, " " * 8) + "\n"


HEAD = "import os, sys, time, ctypes\nimport torch\nimport torch.nn as nn\nimport gradlint\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    (root / "a_healthy.py").write_text(HEAD + model("Healthy"))
    (root / "b_exits.py").write_text(HEAD + "os._exit(3)\n")
    (root / "c_segfault.py").write_text(HEAD + "ctypes.string_at(0)\n")
    (root / "d_sys_exit.py").write_text(HEAD + "sys.exit(4)\n")
    (root / "e_crash_in_forward.py").write_text(
        HEAD + model("Crashes", forward="ctypes.string_at(0)") + model("Survives", width=6, seed=1))
    (root / "f_healthy.py").write_text(HEAD + model("AlsoHealthy", width=5, seed=2))
    (root / "sleeper.py").write_text(HEAD + model("Sleeper", forward="print('sleeping', flush=True)\n"
                                                                   "while True:\n"
                                                                   "    time.sleep(0.05)")
                                      + model("After", width=6, seed=3))
    return root


def check(project: Path, *args: str):
    old = os.getcwd()
    os.chdir(project)
    try:
        return CliRunner().invoke(main, ["check", "--no-cache", *args], catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_exit_segfault_and_sys_exit_are_reported_and_the_run_goes_on(project):
    r = check(project, "a_healthy.py", "b_exits.py", "c_segfault.py", "d_sys_exit.py", "e_crash_in_forward.py",
              "f_healthy.py")
    assert r.exit_code == 2, r.output
    out = r.output
    assert "b_exits.py: could not analyze" in out or "b_exits.py: the worker process" in out, out
    assert "the worker process died with exit code 3 while importing b_exits.py" in out
    # faulthandler's dump gives the crash its line.
    assert "c_segfault.py:5:" in out
    assert "died with signal SIGSEGV" in out and "while importing c_segfault.py" in out
    assert "sys.exit(4)" in out and "d_sys_exit.py:5" in out
    assert "while checking e_crash_in_forward.py::Crashes" in out and "e_crash_in_forward.py:14:" in out
    # Each survivor is still reported: before the crashes, after them, and in the crashing file.
    for target in ("a_healthy.py::Healthy", "e_crash_in_forward.py::Survives", "f_healthy.py::AlsoHealthy"):
        assert f"{target}: healthy" in out, (target, out)
    # In the order of the command line, whatever happened to the workers.
    order = [out.index(s) for s in ("a_healthy.py::Healthy: healthy", "b_exits.py", "c_segfault.py",
                                    "d_sys_exit.py", "Survives: healthy", "AlsoHealthy: healthy")]
    assert order == sorted(order)


@pytest.mark.slow
def test_a_forward_that_never_returns_times_out(project):
    check(project, "a_healthy.py")  # a warm worker: the healthy file is checked quickly by it
    # 4 s, not less: After is checked by a fresh worker within the same limit, and its first capture
    # ran past 2 s on this 2-core machine under a load of 10.
    r = check(project, "a_healthy.py", "sleeper.py", "--timeout", "4")
    assert r.exit_code == 2, r.output
    assert "timed out after 4 s while checking sleeper.py::Sleeper" in r.output
    assert "raise --timeout (now 4 s)" in r.output
    # The dump taken before the kill says where it was stuck: the loop in forward.
    assert "sleeper.py:15:" in r.output or "sleeper.py:16:" in r.output, r.output
    assert "a_healthy.py::Healthy: healthy" in r.output and "sleeper.py::After: healthy" in r.output


@pytest.mark.slow
def test_jobs_2_prints_what_jobs_1_prints(project):
    files = ["a_healthy.py", "b_exits.py", "e_crash_in_forward.py", "f_healthy.py", "d_sys_exit.py"]
    one = check(project, *files, "--jobs", "1", "--format", "json")
    two = check(project, *files, "--jobs", "2", "--format", "json")
    assert one.exit_code == two.exit_code == 2
    assert one.output == two.output


def test_a_worker_that_cannot_start_fails_each_file_once(project, monkeypatch):
    monkeypatch.setattr(workers, "_command", lambda: [sys.executable, "-c", "import sys; sys.exit(5)"])
    monkeypatch.setattr(workers, "_IDLE", [])
    r = check(project, "a_healthy.py", "f_healthy.py")
    assert r.exit_code == 2
    assert r.output.count("gradlint's worker process could not start: the worker process died with exit code 5") == 2


def test_the_progress_bar_counts_files_as_the_workers_finish_them(project):
    from gradlint.run.runner import run_paths

    handed = []

    @contextlib.contextmanager
    def progress(jobs):
        def items():
            for job in jobs:
                handed.append(job[0].name)
                yield job
            handed.append("end")
        yield items()

    run_paths([str(project / "a_healthy.py"), str(project / "f_healthy.py")], workers=1, progress=progress)
    assert handed == ["a_healthy.py", "f_healthy.py", "end"]


def test_ctrl_c_prints_what_finished_and_exits_130(project):
    # As a terminal starts it: with SIGINT's default action. A suite run as a background job
    # (`cmd &` without job control) passes SIGINT on ignored, and Python, like any program
    # started that way, then keeps ignoring it, so there would be no Ctrl-C to test.
    proc = subprocess.Popen([sys.executable, "-m", "gradlint", "check", "--no-cache", "--timeout", "0",
                             "a_healthy.py", "sleeper.py", "f_healthy.py"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:  # the sleeper says when it is stuck (its prints go to stderr)
        seen.append(line)
        if "sleeping" in line:
            break
    else:
        pytest.fail(f"the sleeper never ran: {''.join(seen)}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # ends only once every worker has let go of stderr
    err = "".join(seen) + err
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "a_healthy.py::Healthy: healthy" in out
    assert "AlsoHealthy" not in out
    assert "gradlint: interrupted; 2 of 3 files not checked" in err


def test_what_crosses_the_pipe_is_json_that_rebuilds_only_reports():
    from gradlint.base.findings import Finding
    from gradlint.base.report import Agreement, Summary
    from gradlint.run import wire

    agreement = Agreement(0.1, 0.2, "fc.weight", (), "cpu", 3, 1.5, lag_grad_rms=(("rnn", (1.0, 0.5)),))
    finding = Finding("GL101", "vanishing-gradient", "error", "vanishing", "m", evidence={"decades": float("inf")})
    report = Report(target="m.py::M", probe=agreement, params=(), findings=(finding,),
                    summary=Summary("vanishing", math.inf, attribution={"init scale": -0.5}))
    data = wire.dumps(("report", 3, report))
    assert json.loads(data.decode())  # a JSON document, not a pickle
    assert wire.loads(data) == ("report", 3, report)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    for hostile in (pickle.dumps(Evil()), b'{"@type": "system", "fields": {"command": "echo hacked"}}',
                    b'{"@type": "Path", "fields": {}}', b"[" * 100_000):
        with pytest.raises(wire.WireError):
            wire.loads(hostile)
    with pytest.raises(TypeError):
        wire.dumps(Evil())


def test_the_parent_never_imports_torch(project, tmp_path):
    code = ("import sys; from gradlint.cli import main\n"
            "try:\n    main(['check', '--no-cache', 'a_healthy.py', 'b_exits.py'])\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-2:] == ["exit 2", "False"], out
    assert "Healthy: healthy" in out.stdout


# --- hostile and unlucky files (issue 16) -----------------------------------------------------------

LINEAR = "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
         "        self.fc = nn.Linear(8, 8)\n\n    def forward(self, x):\n        return self.fc(x)\n"


def gradlint_cli(cwd: Path, *args: str, timeout: float = 180, limit_bytes: int | None = None,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m gradlint ARGS`` in a fresh process, killed if it hangs; ``limit_bytes`` caps
    the address space of gradlint and its workers (``ulimit -v``)."""
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "gradlint", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1", **(env or {})},
                          preexec_fn=limit if limit_bytes else None)


def test_links_that_lead_nowhere_and_fifos_in_a_directory_are_skipped_with_a_note(tmp_path):
    tree = tmp_path / "models"
    tree.mkdir()
    (tree / "good.py").write_text(LINEAR)
    os.symlink("y.py", tree / "x.py")
    os.symlink("x.py", tree / "y.py")
    os.symlink("nowhere.py", tree / ".#good.py")  # an editor's lock file
    os.mkfifo(tree / "pipe.py")
    # A FIFO would block whoever opens it until a writer comes: with the cache too, which reads files.
    r = gradlint_cli(tmp_path, "check", "models", "--input-shape", "4,8", "--cache-dir", str(tmp_path / "cache"),
                     timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "models/good.py::Net: healthy" in r.stdout
    assert "models/x.py: skipped: it is a symbolic link in a loop (models/x.py -> y.py -> x.py)" in r.stderr
    assert "models/y.py: skipped: it is a symbolic link in a loop" in r.stderr
    assert "models/.#good.py: skipped: it is a symbolic link to nowhere.py, which does not exist" in r.stderr
    assert "models/pipe.py: skipped: it is a FIFO (named pipe), not a regular file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name, message", [
    ("x.py", "x.py: could not analyze x.py: it is a symbolic link in a loop (x.py -> y.py -> x.py)"),
    ("dangling.py", "dangling.py: could not analyze dangling.py: it is a symbolic link to nowhere.py, which does "
                    "not exist"),
    ("pipe.py", "pipe.py: could not analyze pipe.py: it is a FIFO (named pipe), not a regular file"),
    ("notes.txt", "notes.txt: could not analyze notes.txt: it is not a Python file: gradlint imports .py files "
                  "and notebooks, and notes.txt has the suffix .txt"),
])
def test_a_file_named_on_the_command_line_that_cannot_be_imported_is_an_error_with_a_hint(tmp_path, name, message):
    os.symlink("y.py", tmp_path / "x.py")
    os.symlink("x.py", tmp_path / "y.py")
    os.symlink("nowhere.py", tmp_path / "dangling.py")
    os.mkfifo(tmp_path / "pipe.py")
    (tmp_path / "notes.txt").write_text(LINEAR)
    (tmp_path / "good.py").write_text(LINEAR)
    r = gradlint_cli(tmp_path, "check", name, "good.py", "--input-shape", "4,8", "--cache-dir",
                     str(tmp_path / "cache"), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stdout
    assert "\n  hint: " in r.stdout and "gradlint.base" not in r.stdout + r.stderr
    assert "good.py::Net: healthy" in r.stdout


def test_import_file_refuses_what_is_no_regular_python_file(tmp_path):
    from gradlint.base.errors import LoadError
    from gradlint.load import import_file

    os.mkfifo(tmp_path / "pipe.py")
    os.symlink("y.py", tmp_path / "x.py")
    os.symlink("x.py", tmp_path / "y.py")
    (tmp_path / "notes.txt").write_text(LINEAR)
    for name, fragment in (("pipe.py", "FIFO"), ("x.py", "loop"), ("notes.txt", "not a Python file")):
        with pytest.raises(LoadError, match=fragment) as info:
            import_file(tmp_path / name)
        assert info.value.hint


TRAINING_SCRIPT = textwrap.dedent("""
    import argparse
    import os
    import sys

    import torch.nn as nn

    # A training script: it works in its run directory, and reads its command line.
    RUN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runs", "exp1")
    os.makedirs(RUN_DIR, exist_ok=True)
    os.chdir(RUN_DIR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=8)
    SEEN = {"import": list(sys.argv)}


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            args = parser.parse_args()
            SEEN["init"] = list(sys.argv)
            with open("config.txt", "w") as f:  # into the run directory, as when run normally
                f.write(f"width={args.width}\\n")
            self.fc = nn.Linear(args.width, args.width)

        def forward(self, x):
            SEEN["forward"] = list(sys.argv)
            with open(os.path.join(RUN_DIR, "seen.txt"), "w") as f:
                f.write(repr(SEEN))
            return self.fc(x)
    """)


def _git_repo(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(root), "commit", "-qm", "init"], check=True)


def _git_status(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--ignored"], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.parametrize("jobs", [0, 1])
def test_constructors_and_forward_see_the_working_directory_and_argv_the_import_left(tmp_path, jobs):
    from gradlint.run.runner import run_paths

    project = tmp_path / "project"
    _git_repo(project, {"train.py": TRAINING_SCRIPT, "other.py": LINEAR})
    cwd = os.getcwd()
    os.chdir(project)
    try:
        reports, _ = run_paths(["train.py", "other.py"], cli_shapes=[(4, 8)], workers=jobs)
        after = os.getcwd()
    finally:
        os.chdir(cwd)
    assert after == str(project)  # undone after the file
    assert [r.status for r in reports] == ["ok", "ok"], [r.error for r in reports]
    runs = tmp_path / "runs" / "exp1"
    assert (runs / "config.txt").read_text() == "width=8\n"
    file = str(project / "train.py")
    assert eval((runs / "seen.txt").read_text()) == {"import": [file], "init": [file], "forward": [file]}
    assert _git_status(project) == ""  # nothing written into the project


THREAD_LEFT_RUNNING = textwrap.dedent("""
    import threading
    import time

    import torch
    import torch.nn as nn


    def keep_float64():
        while True:
            torch.set_default_dtype(torch.float64)
            time.sleep(0.001)


    threading.Thread(target=keep_float64, daemon=True).start()


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x)
    """)


def test_a_thread_a_file_leaves_running_touches_no_other_file_and_nothing_is_cached(tmp_path, monkeypatch):
    (tmp_path / "a_thread.py").write_text(THREAD_LEFT_RUNNING)
    (tmp_path / "b_next.py").write_text(LINEAR)
    (tmp_path / "c_last.py").write_text(LINEAR)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"

    def run():
        jobs, started = workers.counters["jobs"], workers.counters["started"]
        r = CliRunner().invoke(main, ["check", "a_thread.py", "b_next.py", "c_last.py", "--input-shape", "4,8",
                                      "--cache-dir", str(cache), "--format", "json"], catch_exceptions=False)
        return r, workers.counters["jobs"] - jobs, workers.counters["started"] - started

    workers._close_idle()  # idle workers earlier tests left would stand in for the fresh one counted below
    first, checked, started = run()
    doc = json.loads(first.stdout)
    assert [t["inputs"].split(" (")[0] for t in doc["targets"][1:]] == ["(4, 8) float32"] * 2, doc["targets"]
    note = next(n for n in doc["notes"] if n.startswith("a_thread.py:"))
    assert "left 1 thread running (Thread-" in note and " started at a_thread.py:15)" in note, note
    assert "the next file is checked in a fresh worker process, and none of its reports is cached" in note
    assert checked == 3 and started == 2  # a_thread.py's worker, then a fresh one for b_next.py and c_last.py
    # The thread's worker was retired, not kept for the next run.
    assert not any(w.poll() is None and w.retire for w in workers._IDLE)
    second, checked, _ = run()
    assert checked == 1  # a_thread.py again; b_next.py and c_last.py from the cache
    assert json.loads(second.stdout)["targets"][1:] == doc["targets"][1:]


def test_in_process_a_report_made_beside_a_users_thread_is_not_cached(tmp_path):
    from gradlint.run.runner import run_paths

    (tmp_path / "a.py").write_text(textwrap.dedent("""
        import threading

        import torch.nn as nn

        STOP_WAITER = threading.Event()
        threading.Thread(target=STOP_WAITER.wait, name="waiter", daemon=True).start()


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                return self.fc(x)
        """))
    (tmp_path / "b.py").write_text(LINEAR)
    cache = tmp_path / "cache"
    try:
        reports, notes = run_paths([str(tmp_path / "a.py"), str(tmp_path / "b.py")], cli_shapes=[(4, 8)],
                                   cache_dir=cache)
    finally:
        for module in [m for m in sys.modules.values() if isinstance(getattr(m, "STOP_WAITER", None), threading.Event)]:
            module.STOP_WAITER.set()
    assert [r.status for r in reports] == ["ok", "ok"]
    assert any("a.py: its code left 1 thread running (waiter started at" in n for n in notes), notes
    assert any("b.py: threads started by user code ran while its models were checked" in n for n in notes), notes
    assert not list(cache.rglob("*.json"))


def test_a_worker_killed_with_sigkill_is_reported_as_probably_out_of_memory(tmp_path):
    (tmp_path / "hog.py").write_text(textwrap.dedent("""
        import os
        import signal

        import torch

        hog = torch.ones(50_000_000)  # 200 MB, written
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer sends
        """))
    (tmp_path / "good.py").write_text(LINEAR)
    r = check(tmp_path, "hog.py", "good.py", "--input-shape", "4,8")
    assert r.exit_code == 2, r.output
    assert "hog.py: could not analyze hog.py: the worker process died with signal SIGKILL (Killed) while " \
           "importing hog.py" in r.output
    peak = re.search(r"hint: probably out of memory: the kernel's OOM killer ends a process with SIGKILL; its "
                     r"memory peaked at ([\d.]+) (MB|GB); build the model on the meta device", r.output)
    assert peak is not None, r.output
    assert float(peak[1]) * (1024 if peak[2] == "GB" else 1) > 200  # torch, and the 200 MB it wrote
    assert "--jobs 1" in r.output and "smaller inputs" in r.output
    assert "good.py::Net: healthy" in r.output


def test_running_out_of_address_space_is_reported_with_what_to_do(tmp_path):
    (tmp_path / "big.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn


        class Big(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 8)
                self.table = torch.empty(2**33)  # 32 GB: past the limit below

            def forward(self, x):
                return self.fc(x)
        """))
    r = gradlint_cli(tmp_path, "check", "big.py", "--input-shape", "4,8", "--no-cache", limit_bytes=3 * 2**30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "big.py:10: could not analyze big.py::Big: building Big raised RuntimeError" in r.stdout
    assert "can't allocate memory" in r.stdout
    assert "hint: build the model on the meta device" in r.stdout and "--jobs 1" in r.stdout


def test_a_meta_device_instance_is_not_built_again_with_real_weights(tmp_path):
    (tmp_path / "big.py").write_text(textwrap.dedent("""
        import os

        import torch
        import torch.nn as nn


        class Big(nn.Module):
            def __init__(self):
                super().__init__()
                with open(os.path.join(os.path.dirname(__file__), "built.txt"), "a") as f:
                    f.write(f"{torch.empty(0).device}\\n")
                self.layers = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])

            def forward(self, x):
                return self.layers(x)


        with torch.device("meta"):
            model = Big()
        """))
    r = check(tmp_path, "big.py", "--input-shape", "4,64")
    assert r.exit_code == 0, r.output
    assert "big.py::model: healthy" in r.output and "big.py::Big:" not in r.output
    assert (tmp_path / "built.txt").read_text() == "meta\n"  # at import, and never again with real weights
    assert "big.py:8: skipped Big: the file builds it on the meta device as model (line 20), which is checked " \
           "instead" in r.output
    named = check(tmp_path, "big.py::Big", "--input-shape", "4,64")  # named: built as asked
    assert named.exit_code == 0 and (tmp_path / "built.txt").read_text() == "meta\nmeta\ncpu\n"


def test_a_torchscript_module_is_named_with_its_line_and_what_to_check_instead(tmp_path):
    (tmp_path / "ts.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                return self.fc(x)


        scripted = torch.jit.script(Net())
        """))
    r = check(tmp_path, "ts.py::scripted", "--input-shape", "4,8")
    assert r.exit_code == 2
    assert "ts.py:15: could not analyze ts.py::scripted: scripted is a TorchScript module (torch.jit.script of " \
           "Net); gradlint analyzes the Python nn.Module" in r.output
    assert "hint: check the module before scripting it: name its class or a factory that builds it, e.g. " \
           "ts.py::Net" in r.output
    assert "Traceback" not in r.output
    found = check(tmp_path, "ts.py", "--input-shape", "4,8")  # its class stands in for it
    assert found.exit_code == 0, found.output
    assert "ts.py:15: skipped scripted: it is a TorchScript module" in found.output
    assert "ts.py::Net: healthy" in found.output


def test_an_alarm_a_file_sets_does_not_go_off_in_the_next_file(tmp_path):
    (tmp_path / "a_alarm.py").write_text("import signal\n\nsignal.alarm(2)  # SIGALRM's default: end the process\n"
                                         + LINEAR)
    slow = LINEAR.replace("return self.fc(x)", "time.sleep(2.5)\n        return self.fc(x)")
    (tmp_path / "b_slow.py").write_text("import time\n" + slow)
    r = check(tmp_path, "a_alarm.py", "b_slow.py", "--input-shape", "4,8")
    assert r.exit_code == 0, r.output
    assert "b_slow.py::Net: healthy" in r.output and "SIGALRM" not in r.output
