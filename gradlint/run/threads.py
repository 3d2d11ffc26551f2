"""Threads the user's code starts, which may outlive its file.

A file's code can start a thread that keeps running after gradlint is done with the file (a
data prefetcher, a monitor, a loop that keeps setting torch's default dtype). Whatever such a
thread does while the next file is checked would change that file's reports. ``Watch`` tells
which Python threads a file's code left behind, and whether any ran while its models were
checked: the worker then retires (the next file gets a fresh process) and nothing of the file
is cached. Threads gradlint or torch start for themselves (tqdm's monitor, which
``torch.fx.Interpreter`` starts on a probe's first run) are told apart by who started them:
a thread started while no frame of the user's code was on the stack is not the user's.

No torch here: the parent and the worker both import this module.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Watch"]

_GRADLINT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _live() -> set[int]:
    """Every Python thread running now: those the threading module knows, and those started
    with ``_thread.start_new_thread``, which only ``sys._current_frames`` lists."""
    return {t.ident for t in threading.enumerate() if t.ident is not None and t.is_alive()} | set(
        sys._current_frames())


def _user_frame() -> str | None:
    """``file:line`` of the innermost frame of the user's code on the calling thread's stack."""
    from gradlint.load.files import is_library_file

    frame: Any = sys._getframe(2)
    while frame is not None:
        where = frame.f_code.co_filename
        if not is_library_file(where) and not os.path.abspath(where).startswith(_GRADLINT_DIR):
            from gradlint.base.paths import shown_path

            return f"{shown_path(where)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class Watch:
    """Watches the threads the user's files start, in the process that runs them.

    One per process (a worker) or per run (checking in the caller's process). ``file()`` wraps
    the checking of one file; ``check()`` marks where each of its models starts and ends being
    checked; ``note()`` says, once the file is done, what its threads did.

    Args:
        baseline: The threads that are nobody's file's (the process's own); by default, those
            running now.
    """

    def __init__(self, baseline: set[int] | None = None) -> None:
        self.baseline = set(_live() if baseline is None else baseline)
        self.started: dict[int, str] = {}  # ident -> "name started at file:line"
        self.ours: set[int] = set()  # started while no user code was on the stack
        self._this_file: set[int] = set()
        self._ran = False  # a user thread ran while one of this file's models was checked
        self._checking = False

    @contextmanager
    def file(self) -> Iterator[Watch]:
        """Notes who starts each thread while one file's code runs (``threading.Thread.start``
        is wrapped for the duration, and put back after)."""
        self._this_file, self._ran, self._checking = set(), False, False
        original = threading.Thread.start
        watch = self

        def start(thread: threading.Thread, *args: Any, **kwargs: Any) -> None:
            where = _user_frame()
            original(thread, *args, **kwargs)
            if thread.ident is None:
                return
            if where is None:
                watch.ours.add(thread.ident)
                return
            watch.started[thread.ident] = f"{thread.name} started at {where}"
            watch._this_file.add(thread.ident)
            if watch._checking:
                watch._ran = True

        threading.Thread.start = start  # type: ignore[method-assign]
        try:
            yield self
        finally:
            threading.Thread.start = original  # type: ignore[method-assign]

    def _foreign(self) -> list[int]:
        return sorted(_live() - self.baseline - self.ours - {threading.get_ident()})

    def check(self, checking: bool) -> None:
        """A model starts (``checking``) or ends being checked: notes whether user threads run
        through it."""
        if self._foreign():
            self._ran = True
        self._checking = checking

    def note(self, path: Any, fresh_worker: bool) -> tuple[str, bool] | None:
        """What to tell the user once the file is done, and whether threads it started are still
        running; None when no user thread ran beside its models' checks and it left none.

        Args:
            fresh_worker: The next file will be checked in a fresh process, and the note says so.
        """
        live = self._foreign()
        left = [i for i in live if i in self._this_file or i not in self.started]
        if left:
            shown = [self.started.get(i, "a thread started with _thread.start_new_thread") for i in left]
            listed = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
            then = "the next file is checked in a fresh worker process, and " if fresh_worker else ""
            return (f"{path}: its code left {len(left)} thread{'s' if len(left) != 1 else ''} running ({listed}); "
                    f"{then}none of its reports is cached", True)
        if live or self._ran:
            return (f"{path}: threads started by user code ran while its models were checked, so its reports are "
                    "not cached", False)
        return None
