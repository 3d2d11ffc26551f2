"""Running gradlint over paths: import each file, discover its targets, check each one.

One target's failure becomes an error report for that target; the run goes on.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

from gradlint import loading
from gradlint.config import Config
from gradlint.errors import ConfigError, GradlintError
from gradlint.graph import Source
from gradlint.report import Report


def run_paths(paths: list[str], *, cli_shapes: list[tuple[int, ...]] | None = None, select: Iterable[str] = (),
              ignore: Iterable[str] = (), threshold: float = 2.0, fail_on: str = "error",
              probe: bool = False, device: str = "cpu", seeds: int = 3, batch_size: int | None = None,
              config: Config | None = None,
              progress: Callable[[list], ContextManager[Iterable]] | None = None) -> tuple[list[Report], list[str]]:
    """Check every target under ``paths``.

    Args:
        config: The ``[tool.gradlint]`` configuration. Its ``include``/``exclude`` filter the files
            of a directory walk; its targets give their objects' inputs and constructor
            arguments wherever their files are checked, and are checked themselves (with the
            ``include`` walk of its directory) when ``paths`` is empty; its rule options,
            severities and per-file ignores apply to every report. The other arguments carry
            its values already merged with the command line.
        progress: Wraps the list of files to check (e.g. in a progress bar); a context manager
            yielding the same items.

    Returns:
        The reports (one per target, error reports included) and notes for the user
        (files without targets, skipped classes).
    """
    from gradlint.api import error_report

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
            jobs.extend((f, None) for f in loading.iter_python_files([path]) if config is None or config.wants(f))
        elif not path.exists():
            reports.append(error_report(arg, GradlintError(f"no such file or directory: {path}", path=str(path))))
        elif config is not None and config.force_exclude and config.excluded(path):
            notes.append(f"{path}: excluded by the configuration's exclude (force-exclude)")
        else:
            jobs.append((path, name))
    if not paths and config is not None:
        jobs = _configured_jobs(config)
    with contextlib.nullcontext(jobs) if progress is None else progress(jobs) as todo:
        _run_jobs(todo, reports, notes, cli_shapes, select, ignore, threshold, fail_on, probe, device, seeds,
                  batch_size, config)
    if config is not None:
        # After the rules (and a probe's own findings), so every finding is treated alike.
        reports = [replace(r, findings=config.adjust(r.findings, r.path)) if r.findings else r for r in reports]
    return reports, notes


def _run_jobs(jobs, reports, notes, cli_shapes, select, ignore, threshold, fail_on, probe, device, seeds,
              batch_size, config) -> None:
    from gradlint.api import check, error_report
    from gradlint.inputs import resolve_inputs

    for path, name in jobs:
        try:
            module = loading.import_file(path)
            found = loading.discover(module, path, name)
            if config is not None:
                found, failed = _with_config_targets(module, path, name, found, config)
                reports.extend(failed)
        except GradlintError as e:
            reports.append(error_report(f"{path}" + (f"::{name}" if name else ""), e, str(path)))
            continue
        if not found.targets:
            # Skipped classes matter only when nothing else was found: otherwise they are the
            # building blocks of the targets.
            for skipped in found.skipped:
                notes.append(f"{path}:{skipped.line or 1}: skipped {skipped.name}: {skipped.reason}")
            notes.append(f"{path}: no targets (no nn.Module subclass or instance defined here, and no @gradlint.target)")
            continue
        for target in found.targets:
            label = f"{path}::{target.display_name}"
            try:
                with loading.user_code(path):
                    model = loading.instantiate(target)
                    opts = target.options
                    ex = resolve_inputs(model, opts, cli_shapes)
                    if config is not None:
                        ex = _config_inputs(ex, target, path, config)
                    if batch_size is not None:
                        ex = ex.with_batch(batch_size)
                    src = Source(str(path), target.line or 1)
                    kwargs = dict(select=list(select) or None, ignore=list(ignore) or None, threshold=threshold,
                                  fail_on=fail_on, name=label, target_source=src,
                                  rule_options=config.rule_options if config is not None else None)
                    if probe:
                        from gradlint.probing import probe as run_probe
                        reports.append(run_probe(model, ex, device=device, seeds=seeds, **kwargs))
                    else:
                        reports.append(check(model, ex, **kwargs))
            except GradlintError as e:
                reports.append(error_report(label, e, str(path), target.line))
            except Exception as e:  # the user's forward or an op gradlint cannot run
                reports.append(error_report(label, e, str(path), target.line))


def _configured_jobs(config: Config) -> list[tuple[Any, str | None]]:
    """What ``gradlint check`` with no paths checks: the ``include`` walk of the configuration's
    directory, and the configured targets whose files that walk does not cover."""
    def shown(file: Path) -> Path:
        # Reports name files as a command line under the current directory would.
        rel = os.path.relpath(file)
        return file if rel.startswith("..") else Path(rel)

    jobs: list[tuple[Any, str | None]] = []
    if config.include:
        jobs += [(shown(f), None) for f in loading.iter_python_files([config.root]) if config.wants(f)]
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
    from gradlint.api import error_report

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
