"""The progress bar shows on a terminal only, and only when there is progress to show."""

from __future__ import annotations

import io
import sys

from gradlint.cli import progress_bar


def test_no_bar_on_a_pipe_or_in_ci():
    assert progress_bar(False, isatty=False, env={}) is None
    assert progress_bar(True, isatty=True, env={"CI": "true"}) is None
    assert progress_bar(True, isatty=True, env={"GRADLINT_NO_PROGRESS": "1"}) is None


def test_a_bar_for_many_files_or_a_probe_and_none_for_one_file(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    wrap = progress_bar(False, isatty=True, env={})
    with wrap([("a.py", None)]) as jobs:
        assert list(jobs) == [("a.py", None)]
    assert err.getvalue() == ""
    with wrap([("a.py", None), ("b.py", None)]) as jobs:
        assert [j[0] for j in jobs] == ["a.py", "b.py"]
    assert "2/2" in err.getvalue()
    with progress_bar(True, isatty=True, env={})([("a.py", None)]) as jobs:
        list(jobs)
    assert "1/1" in err.getvalue()
