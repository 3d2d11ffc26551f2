"""Running gradlint over paths: import each file, discover its targets, check each one.

One target's failure becomes an error report for that target; the run goes on. The command
line runs the files in worker processes (``gradlint.run.workers``), so that even a crash that
ends the process (a segfault in an extension, ``os._exit``) or a forward that never returns
costs one target, not the run; its results can come from the cache (``gradlint.run.cache``).
This module imports no torch: the worker side of it (``check_file``) imports it when it runs.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

from gradlint import load as loading
from gradlint.run.config import Config
from gradlint.base.errors import ConfigError, GradlintError
from gradlint.base.report import Report

# Seconds a target (or a file's import) may run in a worker before it is killed.
DEFAULT_TIMEOUT = Config.timeout


class Interrupted(Exception):
    """The run was interrupted (Ctrl-C): the reports and notes of what finished before it."""

    def __init__(self, reports: list[Report], notes: list[str]) -> None:
        super().__init__("interrupted")
        self.reports = reports
        self.notes = notes


@dataclass(frozen=True)
class Settings:
    """What checking a file needs besides the file: everything that can change its reports."""

    cli_shapes: tuple[tuple[int, ...], ...] | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    threshold: float = 2.0
    fail_on: str = "error"
    probe: bool = False
    device: str = "cpu"
    seeds: int = 3
    batch_size: int | None = None
    config: Config | None = None


def error_report(target: str, err: BaseException, path: str | None = None, line: int | None = None) -> Report:
    """A report for a target gradlint could not analyze; imports no torch.

    A GradlintError carries the user's traceback when their code raised; any other exception
    escaped gradlint's own handling, and its whole traceback is kept for a bug report.
    """
    if isinstance(err, GradlintError):
        return Report(target=target, status="error", error=str(err), path=err.path or path, line=err.line or line,
                      traceback=getattr(err, "traceback_text", None))
    return Report(target=target, status="error", error=f"{type(err).__name__}: {err}", path=path, line=line,
                  traceback="".join(traceback.format_exception(type(err), err, err.__traceback__)))


def run_paths(paths: list[str], *, cli_shapes: list[tuple[int, ...]] | None = None, select: Iterable[str] = (),
              ignore: Iterable[str] = (), threshold: float = 2.0, fail_on: str = "error",
              probe: bool = False, device: str = "cpu", seeds: int = 3, batch_size: int | None = None,
              config: Config | None = None,
              progress: Callable[[list], ContextManager[Iterable]] | None = None,
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
            path, name = loading.parse_target_arg(arg)
        except GradlintError as e:
            reports.append(error_report(arg, e))
            continue
        if path.is_dir():
            walked = [f for f in loading.iter_python_files([path]) if config is None or config.wants(f)]
            # Reading a file is cheap, importing it is not: thousands of files without a model cost nothing.
            kept = [f for f in walked if loading.may_define_model(f)]
            jobs.extend((f, None) for f in kept)
            if walked and not kept:
                notes.append(f"{path}: no targets: none of its {len(walked)} Python files mentions torch, nn, "
                             "Module, Model or gradlint, so none was imported (name a file to import it anyway)")
        elif not path.exists():
            reports.append(error_report(arg, GradlintError(f"no such file or directory: {path}", path=str(path))))
        elif config is not None and config.force_exclude and config.excluded(path):
            notes.append(f"{path}: excluded by the configuration's exclude (force-exclude)")
        else:
            jobs.append((path, name))
    if not paths and config is not None:
        jobs = _configured_jobs(config)
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
            for i, (path, name) in zip(todo, bar):
                events = [e for e in check_file(path, name, settings) if e[0] in ("report", "note")]
                finished(i, events, all(e[1].status == "ok" for e in events if e[0] == "report"))
    if cache is not None and not interrupted:
        cache.prune_if_due()  # at most once a day, by a run that added entries
    for events in outcomes:
        for kind, value in events or ():
            (reports if kind == "report" else notes).append(value)
    if config is not None:
        # After the rules (and a probe's own findings), so every finding is treated alike; after
        # the cache too, so severities and per-file ignores need no fresh check.
        reports = [replace(r, findings=config.adjust(r.findings, r.path)) if r.findings else r for r in reports]
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


class _NoParameters(Exception):
    """A target discovery found has no parameters: a note, not a report."""


def check_file(path: Any, name: str | None, settings: Settings, skip: int = 0) -> Iterator[tuple[Any, ...]]:
    """Check one file, as a stream of events.

    Yields ``("import",)`` before importing it, ``("target", index, label, path, line, count)``
    before each target (``count`` targets in all), ``("report", Report)`` and ``("note", text)``. A worker relays them, so the
    parent knows what was running if the process dies.

    Args:
        skip: Targets to leave out, from the first: the ones a dead worker finished already.
    """
    from gradlint.api import check
    from gradlint.capture.graph import Source
    from gradlint.capture.inputs import resolve_inputs

    config = settings.config
    yield ("import",)
    try:
        module = loading.import_file(path)
        found = loading.discover(module, path, name)
        if config is not None:
            found, failed = _with_config_targets(module, path, name, found, config)
            if not skip:
                for report in failed:
                    yield ("report", report)
    except GradlintError as e:
        yield ("report", error_report(f"{path}" + (f"::{name}" if name else ""), e, str(path)))
        return
    if not found.targets:
        # Skipped classes matter only when nothing else was found: otherwise they are the
        # building blocks of the targets.
        for skipped in found.skipped:
            hint = f"\n  hint: {skipped.hint}" if skipped.hint else ""
            yield ("note", f"{path}:{skipped.line or 1}: skipped {skipped.name}: {skipped.reason}{hint}")
        yield ("note", f"{path}: no targets: " + ("every nn.Module here was skipped" if found.skipped else
                       "no nn.Module subclass or instance is defined here, and nothing is marked @gradlint.target"))
        return
    for index, target in enumerate(found.targets):
        if index < skip:
            continue
        label = f"{path}::{target.display_name}"
        yield ("target", index, label, str(path), target.line, len(found.targets))
        try:
            with loading.user_code(path):
                model = loading.instantiate(target)
                if name is None and target.options is None and next(model.parameters(), None) is None:
                    # A parameter-free module found by discovery (an activation, a wrapper) has no
                    # gradient to predict; one named or decorated is still checked.
                    raise _NoParameters
                ex = resolve_inputs(model, target.options, list(settings.cli_shapes) if settings.cli_shapes else None)
                if config is not None:
                    ex = _config_inputs(ex, target, path, config)
                if settings.batch_size is not None:
                    ex = ex.with_batch(settings.batch_size)
                src = Source(str(path), target.line or 1)
                kwargs = dict(select=list(settings.select) or None, ignore=list(settings.ignore) or None,
                              threshold=settings.threshold, fail_on=settings.fail_on, name=label, target_source=src,
                              rule_options=config.rule_options if config is not None else None)
                if settings.probe:
                    from gradlint.probing.probe import probe as run_probe
                    report = run_probe(model, ex, device=settings.device, seeds=settings.seeds, **kwargs)
                else:
                    report = check(model, ex, **kwargs)
        except _NoParameters:
            yield ("note", f"{path}:{target.line or 1}: skipped {target.name}: it has no parameters, so there is no "
                           f"gradient to predict (name it, {path}::{target.name}, to check it anyway)")
            continue
        except SystemExit as e:  # in-process, it would end the whole run
            report = error_report(label, GradlintError(
                f"the model called sys.exit({e.code!r}) while being checked", path=str(path), line=target.line))
        except Exception as e:  # the user's forward or an op gradlint cannot run; GradlintError too
            report = error_report(label, e, str(path), target.line)
        yield ("report", report)


def _configured_jobs(config: Config) -> list[tuple[Any, str | None]]:
    """What ``gradlint check`` with no paths checks: the ``include`` walk of the configuration's
    directory, and the configured targets whose files that walk does not cover."""
    def shown(file: Path) -> Path:
        # Reports name files as a command line under the current directory would.
        rel = os.path.relpath(file)
        return file if rel.startswith("..") else Path(rel)

    jobs: list[tuple[Any, str | None]] = []
    if config.include:
        jobs += [(shown(f), None) for f in loading.iter_python_files([config.root])
                 if config.wants(f) and loading.may_define_model(f)]
    walked = {f.resolve() for f, _ in jobs}
    for spec in config.targets:
        if spec.file.resolve() not in walked and (shown(spec.file), spec.name) not in jobs:
            jobs.append((shown(spec.file), spec.name))
    return jobs


def _with_config_targets(module: Any, path: Any, name: str | None, found: loading.Discovery,
                         config: Config) -> tuple[loading.Discovery, list[Report]]:
    """The file's targets with the configured ones over them.

    A configured target's kwargs and inputs replace the decorator's; one that discovery
    skipped (its constructor needs arguments) or did not look for is added. A configured name
    the file lacks becomes an error report at the configuration's line, and the file's other
    targets are still checked.
    """
    specs = [s for s in config.targets_in(path) if name is None or name == s.name
             or any(s.matches(t) for t in found.targets)]
    targets = list(found.targets)
    failed: list[Report] = []
    for spec in specs:
        index = next((i for i, t in enumerate(targets) if spec.matches(t)), None)
        if index is None:
            try:
                (target,) = loading.discover(module, path, spec.name).targets
            except GradlintError as e:
                where, _, line = spec.origin.rpartition(":")
                failed.append(error_report(f"{path}::{spec.name}", ConfigError(
                    f"targets: {e.message}", path=where or spec.origin, line=int(line) if line.isdigit() else None,
                    hint=e.hint)))
                continue
            targets.append(target)
            index = len(targets) - 1
        targets[index] = replace(targets[index], options=spec.options(targets[index].options))
    return replace(found, targets=tuple(targets)), failed


def _config_inputs(ex: Any, target: loading.Target, path: Any, config: Config) -> Any:
    """Inputs a configured target declares say so in the report, not "declared by @gradlint.target"."""
    spec = next((s for s in config.targets_in(path) if s.matches(target) and s.inputs is not None), None)
    if spec is None or ex.source != "decorator":
        return ex
    return replace(ex, source="config", note=f"declared in {spec.origin}")
