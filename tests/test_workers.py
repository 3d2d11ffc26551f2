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
import signal
import subprocess
import sys
import textwrap
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
    r = check(project, "a_healthy.py", "sleeper.py", "--timeout", "2")
    assert r.exit_code == 2, r.output
    assert "timed out after 2 s while checking sleeper.py::Sleeper" in r.output
    assert "raise --timeout (now 2 s)" in r.output
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
