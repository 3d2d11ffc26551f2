"""Running gradlint over paths: import each file, discover its targets, check each one.

One target's failure becomes an error report for that target; the run goes on. The command
line runs the files in worker processes (``gradlint.run.workers``), so that even a crash that
ends the process (a segfault in an extension, ``os._exit``) or a forward that never returns
costs one target, not the run; its results can come from the cache (``gradlint.run.cache``).
This module imports no torch; the worker side, ``gradlint.run.check_file``, imports it when it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradlint import load
from gradlint.base.errors import GradlintError, LoadError
from gradlint.base.paths import shown_path
from gradlint.base.report import Report, error_report
from gradlint.load.files import source_problem, unreadable_reason
from gradlint.run.check_file import Settings, check_file
from gradlint.run.config import Config
from gradlint.run.threads import Watch

# Seconds a target (or a file's import) may run in a worker before it is killed.
DEFAULT_TIMEOUT = Config.timeout


class Interrupted(Exception):
    """The run was interrupted (Ctrl-C): the reports and notes of what finished before it."""

    def __init__(self, reports: list[Report], notes: list[str]) -> None:
        super().__init__("interrupted")
        self.reports = reports
        self.notes = notes


def run_paths(paths: list[str], *, cli_shapes: list[tuple[int, ...]] | None = None, select: Iterable[str] = (),
              ignore: Iterable[str] = (), threshold: float = 2.0, fail_on: str = "error",
              probe: bool = False, device: str = "cpu", seeds: int = 3, batch_size: int | None = None,
              config: Config | None = None,
              progress: Callable[[list], contextlib.AbstractContextManager[Iterable]] | None = None,
              workers: int = 0, timeout: float | None = DEFAULT_TIMEOUT,
              cache_dir: str | os.PathLike[str] | None = None) -> tuple[list[Report], list[str]]:
    """Check every target under ``paths``.

    Args:
        config: The ``[tool.gradlint]`` configuration. Its ``include``/``exclude`` filter the files
            of a directory walk; its targets give their objects' inputs and constructor
            arguments wherever their files are checked, and are checked themselves (with the
            ``include`` walk of its directory) when ``paths`` is empty; its rule options,
            severities and per-file ignores apply to every report. The other arguments carry
            its values already merged with the command line.
        progress: Wraps the list of files to check (e.g. in a progress bar); a context manager
            yielding the same items, one per file checked.
        workers: 0 checks the files in this process. N > 0 checks them in N worker
            processes, in parallel: a file whose code kills its process, or a target that
            runs past ``timeout``, becomes an error report and the run goes on. The reports
            come in the same order either way.
        timeout: With workers, the seconds one target (or one file's import) may take;
            None or 0 for no limit.
        cache_dir: Where reports are cached; None for no cache. A file whose cache entry
            is valid is not checked again (``gradlint.run.cache`` says what the key covers).

    Returns:
        The reports (one per target, error reports included) and notes for the user
        (files without targets, skipped classes).

    Raises:
        Interrupted: On KeyboardInterrupt with workers, holding what finished before it; the
            workers are gone by then.
    """
    reports: list[Report] = []
    notes: list[str] = []
    jobs: list[tuple[Any, str | None]] = []
    for arg in paths:
        try:
            path, name = load.parse_target_arg(arg)
        except GradlintError as e:
            reports.append(error_report(arg, e))
            continue
        if path.is_dir():
            walked = [f for f in load.iter_python_files([path]) if config is None or config.wants(f)]
            # A FIFO, a device or a link leading nowhere is no source file: never opened, said in a
            # note. (A dangling link named *.py is often an editor's lock file, `.#model.py`.)
            skipped = {f: problem for f in walked if (problem := unreadable_reason(f)) is not None}
            notes.extend(f"{f}: skipped: {reason}" for f, (reason, _) in skipped.items())
            walked = [f for f in walked if f not in skipped]
            # Reading a file is cheap, importing it is not: thousands of files without a model cost nothing.
            kept = [f for f in walked if load.may_define_model(f)]
            jobs.extend((f, None) for f in kept)
            if walked and not kept:
                notes.append(f"{path}: no targets: none of its {len(walked)} Python files mentions torch, nn, "
                             "Module, Model or gradlint, so none was imported (name a file to import it anyway)")
        elif (problem := source_problem(path)) is not None:
            reports.append(error_report(arg, LoadError(problem[0], path=str(path), hint=problem[1])))
        elif not path.exists():
            reports.append(error_report(arg, GradlintError(f"no such file or directory: {path}", path=str(path))))
        elif config is not None and config.force_exclude and config.excluded(path):
            notes.append(f"{path}: excluded by the configuration's exclude (force-exclude)")
        else:
            jobs.append((path, name))
    if not paths and config is not None:
        jobs = _configured_jobs(config, notes)
    settings = Settings(tuple(cli_shapes) if cli_shapes else None, tuple(select), tuple(ignore), threshold, fail_on,
                        probe, device, seeds, batch_size, config)

    cache = None
    if cache_dir is not None:
        from gradlint.run.cache import Cache
        cache = Cache(cache_dir, settings)
    # Per job, its events in order: ("report", Report) or ("note", text).
    outcomes: list[list[tuple[str, Any]] | None] = [None] * len(jobs)
    keys: list[str | None] = [None] * len(jobs)
    if cache is not None:
        for i, (path, name) in enumerate(jobs):
            keys[i] = cache.key(path, name)
            outcomes[i] = cache.get(keys[i])
    todo = [i for i in range(len(jobs)) if outcomes[i] is None]

    def finished(i: int, events: list[tuple[str, Any]], cacheable: bool) -> None:
        outcomes[i] = events
        if cache is not None and cacheable and keys[i] is not None:
            cache.put(keys[i], events)

    wrapped = [jobs[i] for i in todo]
    interrupted = False
    with contextlib.nullcontext(wrapped) if progress is None else progress(wrapped) as bar:
        if workers > 0 and todo:
            from gradlint.run import workers as pool
            try:
                pool.run([(i, *jobs[i]) for i in todo], settings, workers=workers, timeout=timeout or None,
                         finished=finished, advance=_advancer(bar))
            except KeyboardInterrupt:
                interrupted = True
        else:
            watch = Watch()
            for i, (path, name) in zip(todo, bar):
                events = [e for e in check_file(path, name, settings, watch=watch) if e[0] in ("report", "note")]
                threads = watch.note(path, fresh_worker=False)
                if threads is not None:  # a report made beside the user's threads is never cached
                    events.append(("note", threads[0]))
                finished(i, events, threads is None and all(e[1].status == "ok" for e in events if e[0] == "report"))
    if cache is not None and not interrupted:
        cache.prune_if_due()  # at most once a day, by a run that added entries
    for events in outcomes:
        for kind, value in events or ():
            (reports if kind == "report" else notes).append(value)
    if config is not None:
        # After the rules (and a probe's own findings), so every finding is treated alike; after
        # the cache too, so severities and per-file ignores need no fresh check.
        reports = [replace(r, findings=config.adjust(r.findings, r.path, r.layers)) if r.findings else r
                   for r in reports]
    if interrupted:
        left = sum(o is None for o in outcomes)
        raise Interrupted(reports, [*notes, f"gradlint: interrupted; {left} of {len(jobs)} files not checked "
                                           "(or not to the end)"])
    return reports, notes


def _advancer(bar: Iterable) -> Callable[[], None]:
    # A progress bar counts the items it handed out before the one it hands out now, as a
    # for loop uses it: the first item now, one more per finished file, the end after the last.
    it = iter(bar)
    next(it, None)
    return lambda: next(it, None)


def _configured_jobs(config: Config, notes: list[str]) -> list[tuple[Any, str | None]]:
    """What ``gradlint check`` with no paths checks: the ``include`` walk of the configuration's
    directory, and the configured targets whose files that walk does not cover. Files the walk
    skips (a FIFO, a link leading nowhere) get a note."""
    def shown(file: Path) -> Path:
        return Path(shown_path(str(file)))

    jobs: list[tuple[Any, str | None]] = []
    if config.include:
        for f in load.iter_python_files([config.root]):
            if not config.wants(f):
                continue
            if (problem := unreadable_reason(f)) is not None:
                notes.append(f"{shown(f)}: skipped: {problem[0]}")
            elif load.may_define_model(f):
                jobs.append((shown(f), None))
    walked = {os.path.realpath(f) for f, _ in jobs}
    for spec in config.targets:
        if os.path.realpath(spec.file) not in walked and (shown(spec.file), spec.name) not in jobs:
            jobs.append((shown(spec.file), spec.name))
    return jobs


