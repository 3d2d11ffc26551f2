"""Running gradlint over paths: import each file, discover its targets, check each one.

One target's failure becomes an error report for that target; the run goes on.
"""

from __future__ import annotations

from typing import Any, Iterable

from gradlint import loading
from gradlint.errors import GradlintError
from gradlint.graph import Source
from gradlint.report import Report


def run_paths(paths: list[str], *, cli_shapes: list[tuple[int, ...]] | None = None, select: Iterable[str] = (),
              ignore: Iterable[str] = (), threshold: float = 2.0, fail_on: str = "error",
              probe: bool = False, device: str = "cpu", seeds: int = 3) -> tuple[list[Report], list[str]]:
    """Check every target under ``paths``.

    Returns:
        The reports (one per target, error reports included) and notes for the user
        (files without targets, skipped classes).
    """
    from gradlint.api import check, error_report
    from gradlint.inputs import resolve_inputs

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
            jobs.extend((f, None) for f in loading.iter_python_files([path]))
        elif not path.exists():
            reports.append(error_report(arg, GradlintError(f"no such file or directory: {path}", path=str(path))))
        else:
            jobs.append((path, name))
    for path, name in jobs:
        try:
            module = loading.import_file(path)
            found = loading.discover(module, path, name)
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
                    src = Source(str(path), target.line or 1)
                    kwargs = dict(select=list(select) or None, ignore=list(ignore) or None, threshold=threshold,
                                  fail_on=fail_on, name=label, target_source=src)
                    if probe:
                        from gradlint.probe import probe as run_probe
                        reports.append(run_probe(model, ex, device=device, seeds=seeds, **kwargs))
                    else:
                        reports.append(check(model, ex, **kwargs))
            except GradlintError as e:
                reports.append(error_report(label, e, str(path), target.line))
            except Exception as e:  # the user's forward or an op gradlint cannot run
                reports.append(error_report(label, e, str(path), target.line))
    return reports, notes
