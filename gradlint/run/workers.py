"""Worker processes: ``gradlint check`` runs the user's files in them, not in its own process.

The user's code can end a process in ways Python cannot catch: a segfault in an extension,
``os._exit``, a forward that never returns. Each worker imports torch once and checks files
one after another, streaming events back (which target it starts, each report); when one
dies or runs past the timeout, the parent knows what was running, reports it, starts a fresh
worker and goes on with the file's next target. The parent never imports torch.

The protocol: length-prefixed JSON documents (``gradlint.run.wire``) over the worker's stdin
and stdout; reports are plain data, so nothing that crosses can run code when it is read. The
worker moves its own stdout to stderr first, so what the user's code prints never mixes with
it (nor with ``--format json`` on the parent's stdout).

Idle workers stay for the next run of the same process (a test suite invoking the command
line many times pays for torch once); each run gives them its environment, and they forget
the user modules of the run before. Each file starts from the same random seed, so its
reports do not depend on what a worker checked before it.
"""

from __future__ import annotations

import atexit
import gc
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

from gradlint.base.errors import GradlintError
from gradlint.base.report import error_report
from gradlint.run import wire
from gradlint.run.check_file import MEMORY_ADVICE

_HEADER = struct.Struct(">Q")
# Seconds a worker gets to write its traceback (faulthandler) after a timeout, before the kill.
_DUMP_WAIT = 0.3
_POLL = 0.5


# --- what crosses the pipe ------------------------------------------------------------------------

def _send(stream: Any, message: Any) -> None:
    data = wire.dumps(message)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _frame(stream: Any) -> bytes | None:
    """The next message's bytes, or None at the end of the stream."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def _recv(stream: Any) -> Any:
    """The next message, or None at the end of the stream."""
    data = _frame(stream)
    if data is None:
        return None
    return wire.loads(data)


# --- the parent's side ------------------------------------------------------------------------------

_INBOX: queue.Queue = queue.Queue()
_IDLE: list[_Worker] = []
# What this process has asked of workers; tests read it to tell a cache hit from a check.
counters = {"started": 0, "jobs": 0}


def _command() -> list[str]:
    import gradlint

    # Not the current directory first on sys.path, as for the `gradlint` script: a user's
    # `typing.py` must not shadow the standard library in the worker. Where the parent's
    # gradlint came from a sys.path entry rather than an installation, the worker gets it too.
    root = os.path.dirname(os.path.dirname(os.path.abspath(gradlint.__file__)))
    here = {os.path.realpath(p or os.getcwd()) for p in sys.path}
    installed = {"site-packages", "dist-packages"} & set(os.path.normpath(root).split(os.sep))
    add = f"sys.path.insert(0, {root!r}); " if os.path.realpath(root) in here and not installed else ""
    return [sys.executable, "-c", f"import sys; del sys.path[0]; {add}from gradlint.run.workers import main; main()"]


class _Worker:
    def __init__(self) -> None:
        # Where the worker's faulthandler writes. On POSIX a file without a name, shared by
        # descriptor, so nothing is left in the temporary directory whatever ends the parent.
        fd, self.crash_file = tempfile.mkstemp(prefix="gradlint-worker-", suffix=".txt")
        self.crash_fd: int | None = None
        if os.name == "posix":
            os.unlink(self.crash_file)
            self.crash_fd, where, keep = fd, f"fd:{fd}", (fd,)
        else:
            os.close(fd)
            where, keep = self.crash_file, ()
        self.proc = subprocess.Popen([*_command(), where], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     pass_fds=keep)
        counters["started"] += 1
        self.ready = False
        self.fatal = ""
        self.exited_at: float | None = None
        self.main_thread: int | None = None
        self.run_id: object = None
        self.peak: int | None = None  # bytes, once it has ended
        self.retire = False  # threads of the user's code still run in it: no further file
        self.reset()
        threading.Thread(target=self._read, daemon=True).start()

    def reset(self) -> None:
        self.job: tuple[int, Any, str | None, int] | None = None
        self.phase = ""  # "", "import" or "target"
        self.since = 0.0
        self.target: tuple[int, str, str, int | None, int] | None = None

    def _read(self) -> None:
        # This thread alone reads and closes the stream: closing it under a blocked read
        # (a process the worker started may hold the pipe open) could block the closer.
        stream = self.proc.stdout
        while True:
            try:
                data = _frame(stream)
            except (OSError, ValueError):
                data = None
            if data is None:
                break
            try:
                message = wire.loads(data)
            except Exception as e:  # noqa: BLE001 - said as the report of what was running
                message = ("garbled", f"{type(e).__name__}: {e}")
            _INBOX.put((self, message))
        try:
            stream.close()
        except OSError:
            pass
        _INBOX.put((self, None))

    def send(self, message: Any) -> bool:
        try:
            _send(self.proc.stdin, message)
            return True
        except (OSError, ValueError):  # it died; its reader says so
            return False

    def poll(self) -> int | None:
        """The worker's exit code once it has ended, else None. Reaps it with ``wait4`` where
        there is one, for the peak memory the kernel kept (``peak``): Popen's own wait would
        lose it."""
        return self._reap(block=False)

    def _reap(self, block: bool) -> int | None:
        if self.proc.returncode is not None:
            return self.proc.returncode
        if not hasattr(os, "wait4"):
            return self.proc.wait() if block else self.proc.poll()
        try:
            pid, status, usage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: Popen knows its code
            return self.proc.wait() if block else self.proc.poll()
        if pid == 0:
            return None
        # ru_maxrss: kilobytes on Linux, bytes on macOS.
        self.peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode

    def kill(self) -> int:
        if self.proc.returncode is None:
            try:
                # Not Popen.kill(): it polls first, which would reap the process without its peak.
                os.kill(self.proc.pid, signal.SIGKILL) if hasattr(signal, "SIGKILL") else self.proc.kill()
            except OSError:
                pass
        return self.wait()

    def wait(self) -> int:
        deadline = time.monotonic() + 10
        code = self.poll()
        while code is None and time.monotonic() < deadline:
            time.sleep(0.01)
            code = self.poll()
        if code is None:
            self.kill()
            code = self._reap(block=True)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        return code

    def crash_text(self) -> str:
        try:
            if self.crash_fd is not None:
                return os.pread(self.crash_fd, os.fstat(self.crash_fd).st_size, 0).decode("utf-8", "replace")
            with open(self.crash_file, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def discard(self) -> None:
        try:
            if self.crash_fd is not None:
                os.close(self.crash_fd)
                self.crash_fd = None
            else:
                os.unlink(self.crash_file)
        except OSError:
            pass


def prestart() -> None:
    """Starts a worker now, for a run to come, unless one is idle already."""
    if not any(w.poll() is None for w in _IDLE):
        _IDLE.append(_Worker())


def _close_idle() -> None:
    # Idle workers hold nothing worth a clean shutdown, and waiting for torch to unload in
    # them would delay the command's exit.
    while _IDLE:
        worker = _IDLE.pop()
        worker.kill()  # waits the moment SIGKILL takes, so no worker outlives the command
        worker.discard()


atexit.register(_close_idle)


def _death(code: int) -> str:
    if code < 0:
        try:
            sig = signal.Signals(-code)
            text = signal.strsignal(sig)
            return f"signal {sig.name}" + (f" ({text})" if text else "")
        except (ValueError, AttributeError):
            return f"signal {-code}"
    return f"exit code {code}"


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("bytes", "KB") else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n:.1f} TB"


_FRAME = re.compile(r'^\s*File "(.*)", line (\d+) in (.*)$')


def _frames(text: str, thread: int | None) -> list[tuple[str, int, str]]:
    """The main thread's frames in faulthandler's dump, most recent call first, less gradlint's
    own and the import machinery's."""
    blocks = re.split(r"^(?=(?:Current thread|Thread) 0x)", text, flags=re.M)
    wanted = [b for b in blocks if thread is not None and re.match(rf"(?:Current thread|Thread) 0x0*{thread:x}\b", b)]
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the gradlint package
    return [(where, int(line), func) for b in (wanted or blocks[-1:]) for m in map(_FRAME.match, b.splitlines()) if m
            for where, line, func in [m.groups()]
            if not where.startswith("<frozen") and not os.path.abspath(where).startswith(ours)]


def _is_users(where: str) -> bool:
    # Not installed, not the standard library, not code compiled from a string.
    path = os.path.abspath(where)
    return not (where.startswith("<") or "site-packages" in path or "dist-packages" in path
                or path.startswith(os.path.dirname(os.__file__) + os.sep))


def _short(where: str) -> str:
    # An installed module's or the standard library's path, from its package on.
    path = os.path.abspath(where)
    for marker in (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep):
        if marker in path:
            return path.rpartition(marker)[2]
    stdlib = os.path.dirname(os.__file__) + os.sep
    return path[len(stdlib):] if path.startswith(stdlib) else where


def _user_frame(frames: list[tuple[str, int, str]], file: str) -> tuple[str, int, str] | None:
    """The innermost frame in ``file``, else in any file of the user's."""
    real = os.path.realpath(file)
    return next((f for f in frames if os.path.realpath(f[0]) == real), None) or next(
        (f for f in frames if _is_users(f[0])), None)


def run(jobs: list[tuple[int, Any, str | None]], settings: Any, *, workers: int, timeout: float | None,
        finished: Callable[[int, list[tuple[str, Any]], bool], None], advance: Callable[[], None]) -> None:
    """Checks ``jobs`` (index, path, name) in up to ``workers`` processes.

    Calls ``finished(index, events, cacheable)`` when a file is done, with its ``("report",
    Report)`` and ``("note", text)`` events in order, and ``advance()`` after it. A worker that
    dies or times out becomes an error report for what it was running; a fresh worker goes on
    with the file's next target. ``cacheable`` is false for a file one of whose targets could
    not be analyzed.

    Raises:
        KeyboardInterrupt: After killing the workers; the files finished by then were passed
            to ``finished``.
    """
    run_id = object()
    # N workers with torch's default of a thread per core would fight over the cores.
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    pending: deque[tuple[int, Any, str | None, int]] = deque((i, path, name, 0) for i, path, name in jobs)
    events: dict[int, list[tuple[str, Any]]] = {i: [] for i, _, _ in jobs}
    clean: dict[int, bool] = {i: True for i, _, _ in jobs}
    active: list[_Worker] = []
    fatal: list[str] = []

    def assign(worker: _Worker) -> None:
        job = pending.popleft()
        if worker.run_id is not run_id:
            worker.send(("run", os.environ.copy(), settings, threads))
            worker.run_id = run_id
        worker.reset()
        worker.job = job
        worker.send(("job", job[0], os.getcwd(), str(job[1]), job[2], job[3]))
        counters["jobs"] += 1

    def done(index: int) -> None:
        finished(index, events[index], clean[index])
        advance()

    def fail(index: int, path: Any, name: str | None, message: str) -> None:
        label = f"{path}" + (f"::{name}" if name else "")
        events[index].append(("report", error_report(label, GradlintError(message, path=str(path)))))
        clean[index] = False
        done(index)

    def lost(worker: _Worker, how: str, hint: str | None = None) -> None:
        """The worker is gone (died or killed): report what it was running, go on without it."""
        active.remove(worker)
        crash = worker.crash_text()
        worker.discard()
        if not worker.ready and not fatal:
            fatal.append(f"gradlint's worker process could not start: {worker.fatal or how}")
        if worker.job is None:
            return
        index, path, name, _ = worker.job
        if not worker.ready:
            fail(index, path, name, fatal[0])
            return
        if not worker.phase:  # killed between jobs, before any of this one's code ran
            pending.appendleft(worker.job)
            return
        clean[index] = False
        if worker.phase == "target" and worker.target is not None:
            t_index, label, t_path, t_line, total = worker.target
            doing, target, line = f"checking {label}", label, t_line
        else:
            t_index, t_path, total = -1, str(path), 0
            target = f"{path}" + (f"::{name}" if name else "")
            doing, line = f"importing {path}", None
        frames = _frames(crash, worker.main_thread)
        where = _user_frame(frames, t_path)
        at = ""
        if where is not None:
            if os.path.realpath(where[0]) == os.path.realpath(t_path):
                line = where[1]
            else:
                at = f" (in {where[2]} at {where[0]}:{where[1]})"
        err = GradlintError(f"{how} while {doing}{at}", path=t_path, line=line, hint=hint)
        # Where it was: the innermost frame (torch's, an extension's) and the user's frames.
        shown = frames[:1] + [f for f in frames[1:] if _is_users(f[0])]
        if shown:
            err.traceback_text = "Where it was (faulthandler, most recent call first):\n" + "".join(
                f'  File "{_short(w)}", line {n} in {f}\n' for w, n, f in shown[:12])
        events[index].append(("report", error_report(target, err, t_path, line)))
        if worker.phase == "target" and t_index + 1 < total:
            pending.appendleft((index, path, name, t_index + 1))  # the file's remaining targets
        else:
            done(index)

    def died(worker: _Worker) -> None:
        code = worker.wait()
        hint = None
        if code < 0 and -code in (signal.SIGSEGV, getattr(signal, "SIGBUS", -1), signal.SIGABRT, signal.SIGFPE,
                                  signal.SIGILL):
            hint = ("native code crashed (an extension module, or torch itself), where Python cannot catch it; "
                    "the other targets were still checked")
        elif code == -getattr(signal, "SIGKILL", -9):
            # gradlint kills its workers only on a timeout, which says so; the kernel's OOM killer
            # (or a container's memory limit) is what sends SIGKILL otherwise.
            peak = f"; its memory peaked at {_size(worker.peak)}" if worker.peak else ""
            hint = f"probably out of memory: the kernel's OOM killer ends a process with SIGKILL{peak}; {MEMORY_ADVICE}"
        elif code >= 0:
            hint = ("the code ended the process itself (os._exit(), or an interpreter abort); code that runs at "
                    "import or in forward must not")
        lost(worker, f"the worker process died with {_death(code)}", hint)

    def timed_out(worker: _Worker) -> None:
        if hasattr(signal, "SIGUSR1"):
            try:
                worker.proc.send_signal(signal.SIGUSR1)  # faulthandler dumps where it is stuck
                time.sleep(_DUMP_WAIT)
            except OSError:
                pass
        worker.kill()
        lost(worker, f"timed out after {timeout:g} s", hint=f"raise --timeout (now {timeout:g} s), or --timeout 0 for "
                                                             "no limit, if the model is just slow")

    try:
        while pending or any(w.job is not None for w in active):
            while fatal and pending:
                index, path, name, _ = pending.popleft()
                fail(index, path, name, fatal[0])
            for worker in active:
                if worker.job is None and pending:
                    assign(worker)
            while pending and len(active) < workers:
                worker = _IDLE.pop() if _IDLE else _Worker()
                if worker.poll() is not None:
                    worker.discard()
                    continue
                active.append(worker)
                assign(worker)
            now = time.monotonic()
            wait = _POLL
            if timeout:
                for worker in active:
                    if worker.phase:
                        wait = min(wait, max(0.0, worker.since + timeout - now))
            try:
                worker, message = _INBOX.get(timeout=wait)
            except queue.Empty:
                worker, message = None, None
            if worker is not None and worker in active:
                _handle(worker, message, events, clean, done, died)
                if worker.retire and worker.job is None:
                    # The user's threads still run in it: the next file gets a fresh process.
                    active.remove(worker)
                    worker.kill()
                    worker.discard()
            now = time.monotonic()
            for worker in list(active):
                if worker.job is not None and worker.phase and timeout and now - worker.since > timeout:
                    timed_out(worker)
                elif worker.poll() is not None:
                    # A process it started may hold its output open, so no end of stream comes;
                    # the grace period lets the stream's last messages arrive first.
                    worker.exited_at = worker.exited_at or now
                    if now - worker.exited_at > 1.0:
                        died(worker)
    except BaseException:
        for worker in active:
            worker.kill()
            worker.discard()
        raise
    _IDLE.extend(w for w in active if w.poll() is None)


def _handle(worker: _Worker, message: Any, events: dict, clean: dict, done: Callable[[int], None],
            died: Callable[[_Worker], None]) -> None:
    if message is None:
        died(worker)
        return
    kind = message[0]
    if kind == "ready":
        worker.ready = True
        worker.main_thread = message[1]
        return
    if kind == "fatal":
        worker.fatal = message[1]
        return
    if worker.job is None:
        return
    index = worker.job[0]
    if kind == "garbled":  # a report gradlint cannot read back: a bug of ours, said where it happened
        label = worker.target[1] if worker.phase == "target" and worker.target else str(worker.job[1])
        events[index].append(("report", error_report(label, GradlintError(
            f"gradlint could not read the worker's report ({message[1]})", path=str(worker.job[1])))))
        clean[index] = False
        return
    if message[1] != index:
        return
    if kind == "import":
        worker.phase, worker.since = "import", time.monotonic()
    elif kind == "target":
        worker.phase, worker.since = "target", time.monotonic()
        worker.target = tuple(message[2:7])
    elif kind in ("report", "note"):
        events[index].append((kind, message[2]))
        if kind == "report" and message[2].status != "ok":
            clean[index] = False
    elif kind == "threads":  # the user's threads ran beside its checks: nothing of it is cached
        events[index].append(("note", message[2]))
        clean[index] = False
        worker.retire = worker.retire or bool(message[3])
    elif kind == "done":
        worker.reset()
        done(index)


# --- the worker's side ----------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    # A busy worker would never read the end of its input: it ends when its parent is gone.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(70)


def _forget_user_modules() -> None:
    """Drops the user modules a previous run imported, so this run sees their files as they are now."""
    from gradlint.load.sandbox import forget_user_modules

    forget_user_modules()


def main() -> None:
    """A worker: ``python -c '...main()' CRASH_FILE`` (or ``fd:N``), messages on stdin and stdout."""
    import faulthandler

    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # input() in the user's code reads nothing, not the protocol
    os.close(null)
    os.dup2(2, 1)  # print() in the user's code goes to stderr, not into the protocol
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    initial_env = dict(os.environ)
    where = sys.argv[1]
    crash = int(where[3:]) if where.startswith("fd:") else open(where, "w", encoding="utf-8")
    faulthandler.enable(crash, all_threads=True)
    if hasattr(faulthandler, "register") and hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, crash, all_threads=True)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    # torch imports NumPy when it can and warns when it cannot; gradlint does not need it.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    # The imports and the warm-up build a heap of objects that live as long as the worker.
    # Collections while it grows cost about 0.1 s of every worker's start (gradlint's imports
    # after torch's: 0.21 against 0.10 s), and each later full collection would scan it all
    # again; so it is built without collections and then frozen out of them.
    gc.disable()
    try:
        import gradlint.api  # noqa: F401 - torch, while the parent still works out what to check
        from gradlint.lint.rule import load_builtin
        from gradlint.run.check_file import check_file

        load_builtin()
        _warm_up()
    except BaseException as e:  # noqa: BLE001 - a broken environment, said once
        _send(replies, ("fatal", f"{type(e).__name__}: {e}"))
        return
    finally:
        gc.freeze()
        gc.enable()
    _send(replies, ("ready", threading.get_ident()))
    import torch

    from gradlint.run.threads import Watch

    watch = Watch()  # the threads running now are the worker's own
    handlers = _signal_handlers()
    default_threads = torch.get_num_threads()
    settings = None
    runs = 0
    while True:
        message = _recv(requests)
        if message is None:
            return
        if message[0] == "run":
            _, env, settings, threads = message
            for key in [k for k in initial_env if k not in env]:
                os.environ.pop(key, None)  # not the ones torch set for itself
            os.environ.update(env)
            torch.set_num_threads(threads or default_threads)
            runs += 1
            if runs > 1:
                _forget_user_modules()
            continue
        _, index, cwd, path, name, skip = message
        label = path + (f"::{name}" if name else "")
        _seed()
        try:
            os.chdir(cwd)
            for event in check_file(path, name, settings, skip, watch):
                if event[0] == "target":
                    label = event[2]
                try:
                    _send(replies, (event[0], index, *event[1:]))
                except TypeError as e:  # a report holding something that is not plain data: our bug
                    _send(replies, ("report", index, error_report(label, e, path)))
        except BaseException as e:  # noqa: BLE001 - gradlint's own bug, or a user's KeyboardInterrupt
            _send(replies, ("report", index, error_report(label, e, path)))
        _restore_signals(handlers)
        threads = watch.note(path, fresh_worker=True)
        if threads is not None:
            _send(replies, ("threads", index, *threads))
        try:
            sys.stdout.flush()  # the file's prints, before the next file's
        except (OSError, ValueError):
            pass
        _send(replies, ("done", index))


def _signal_handlers() -> dict[int, Any]:
    """The worker's own Python-level signal handlers, for ``_restore_signals``."""
    handlers = {}
    for sig in signal.valid_signals() if hasattr(signal, "valid_signals") else ():
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if handler is not None:  # None: installed from C (faulthandler's), left to it
            handlers[sig] = handler
    return handlers


def _restore_signals(handlers: dict[int, Any]) -> None:
    """Undoes what a file did to signals: an alarm it set would end the worker while it checks
    the next file (SIGALRM's default action), and a handler it installed would run there."""
    for timer in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"):
        if hasattr(signal, timer):
            signal.setitimer(getattr(signal, timer), 0)
    for sig, handler in handlers.items():
        try:
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        except (ValueError, OSError):
            pass


def _seed() -> None:
    """Each file starts from the random state of a fresh process seeded with 0, so its models
    draw the same weights whatever ran in this worker before, with any --jobs, and a cached
    report is the one a new check would give."""
    import random

    import torch

    random.seed(0)
    torch.manual_seed(0)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(0)


def _warm_up() -> None:
    """Checks a two-weight model, so graph capture's one-time start (about a second: the Python
    dispatcher's imports and first compilations) happens now, not on the first target's clock.
    A target that recording refuses still pays torch.export's own first use."""
    import torch

    from gradlint.api import check

    with torch.random.fork_rng(devices=[]):  # the user's models draw the weights they would have
        check(torch.nn.Linear(2, 2), (1, 2), config=False)  # no project file: the run passes its own
