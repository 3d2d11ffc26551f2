"""The ``gradlint`` command: a thin layer over ``gradlint.run`` (configuration, runner) and ``gradlint.output``.

Torch is imported only inside the commands that need it, so ``--help`` and ``--version``
answer at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from gradlint._version import __version__
from gradlint.base.findings import ExitCode

# check's options that [tool.gradlint] can set too (gradlint.run.config.CLI_OPTIONS, kept here so
# --help imports nothing more).
_CONFIG_OPTIONS = ("select", "ignore", "fail_on", "threshold", "input_shapes", "probe", "device", "seeds",
                   "jobs", "timeout", "force_exclude", "warn_unused_ignores", "all_targets")


def _split_commas(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--select GL1,GL2 --select GL4`` as ruff takes it: repeated, comma-separated, or both."""
    return tuple(part.strip() for item in value for part in item.split(",") if part.strip())


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").replace(" ", "").strip("()[]").split(",")
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape like 8,3,32,32") from None
    if not shape or any(d <= 0 for d in shape):
        raise click.BadParameter(f"{text!r} must be positive ints like 8,3,32,32")
    return shape


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradlint")
def main() -> None:
    """Predict whether gradients vanish or explode in PyTorch models at initialization."""


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--input-shape", "input_shapes", multiple=True, metavar="SHAPE",
              help="Example input shape, e.g. 8,3,32,32 (repeat for several inputs); used when the "
                   "target declares none.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              show_default=True, help="text for people, json, sarif (GitHub code scanning) or github "
                                      "(GitHub Actions annotations).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the report to FILE instead of stdout (notes still go to stderr).")
@click.option("--baseline", type=click.Path(dir_okay=False), metavar="FILE",
              help="Fail only on findings not in FILE; when FILE does not exist, record the current "
                   "findings into it and exit 0.")
@click.option("--update-baseline", is_flag=True, help="Rewrite the --baseline FILE from this run's findings.")
@click.option("--select", multiple=True, callback=_split_commas, metavar="RULES",
              help="Run only these rules: codes, code prefixes or names, comma-separated or repeated.")
@click.option("--ignore", multiple=True, callback=_split_commas, metavar="RULES",
              help="Skip these rules: codes, code prefixes or names, comma-separated or repeated.")
@click.option("--threshold", type=float, default=None,
              help="Decades of attenuation or growth beyond which the verdict is vanishing/exploding (default: 2.0).")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
              help="Lowest severity that fails the run (default: error).")
@click.option("--probe/--no-probe", default=None,
              help="Also run a real backward pass and compare it with the prediction.")
@click.option("--device", default=None, help="Where --probe runs: cpu, cuda, cuda:N or auto (default: cpu).")
@click.option("--seeds", type=click.IntRange(1, 100), default=None, help="Seeds --probe averages over (default: 3).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Read [tool.gradlint] from FILE instead of the nearest pyproject.toml that has one.")
@click.option("--force-exclude/--no-force-exclude", default=None,
              help="Apply the configuration's exclude to files named on the command line too.")
@click.option("--all-targets/--top-level-only", "all_targets", default=None,
              help="Also check the building blocks of a file's models (classes or factories another one builds); "
                   "by default only the top-level models are checked.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Samples per example input, for the prediction and --probe (default: the inputs' own); "
                   "on CUDA out-of-memory --probe halves it down to 1.")
@click.option("--profile", "show_profile", is_flag=True,
              help="Print a bar chart of the gradient profile (per layer, forward order) under each target.")
@click.option("--plot", "plot_to", type=click.Path(), metavar="PATH",
              help="Write the per-layer gradient chart (predicted; measured too with --probe): a .png file for "
                   "one target, else a directory with one PNG per target. Needs matplotlib.")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="Worker processes checking files in parallel; the output keeps the files' order (default: 1).")
@click.option("--timeout", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="Seconds one target (or one file's import) may run before its worker process is killed and "
                   "the target reported; 0: no limit (default: 300).")
@click.option("--quiet", "-q", is_flag=True,
              help="Print the findings (and targets that could not be analyzed) only: no summaries, notes or "
                   "closing line.")
@click.option("--statistics", is_flag=True, help="Print the number of findings per rule instead of the findings.")
@click.option("--exit-zero", is_flag=True,
              help="Exit 0 even when findings reach --fail-on (a target that could not be analyzed still exits 2).")
@click.option("--color", "color_choice", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="Colors in text output; auto: on a terminal, as NO_COLOR and FORCE_COLOR say.")
@click.option("--allow-no-targets", is_flag=True,
              help="Exit 0, not 5, when the run finds no target to analyze (e.g. a commit that stages only "
                   "helper modules).")
@click.option("--warn-unused-ignores/--no-warn-unused-ignores", default=None,
              help="Report suppression comments that silence nothing (GL904), as ruff's RUF100 does.")
@click.option("--no-cache", is_flag=True, help="Check every file afresh, without reading or writing the cache.")
@click.option("--cache-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Where the cache lives (default: $GRADLINT_CACHE_DIR, else the user cache directory, "
                   "e.g. ~/.cache/gradlint).")
def check(paths: tuple[str, ...], input_shapes: tuple[str, ...], fmt: str, select: tuple[str, ...],
          ignore: tuple[str, ...], threshold: float, fail_on: str, probe: bool, device: str, seeds: int,
          output: str | None = None, baseline: str | None = None, update_baseline: bool = False,
          batch_size: int | None = None, plot_to: str | None = None, config_file: str | None = None,
          force_exclude: bool | None = None, show_profile: bool = False, jobs: int | None = None,
          timeout: float | None = None, no_cache: bool = False, cache_dir: str | None = None,
          quiet: bool = False, statistics: bool = False, exit_zero: bool = False, color_choice: str = "auto",
          allow_no_targets: bool = False, warn_unused_ignores: bool | None = None,
          all_targets: bool | None = None) -> None:
    """Analyze the models in PATHS (files, directories, or file.py::Name).

    Options not given come from [tool.gradlint] in the nearest pyproject.toml, then the
    defaults; with no PATHS, the configuration's targets and include are checked.
    """
    if update_baseline and not baseline:
        raise click.UsageError("--update-baseline needs --baseline FILE")
    if statistics and fmt != "text":
        raise click.UsageError("--statistics prints text; leave out --format, or use --format json's summary")
    if select or ignore or _names_rules(config_file):
        from gradlint.lint.rule import catalog_imports_rules

        if catalog_imports_rules():
            # With rule packs, checking rule names imports the rules, and torch with them, here:
            # a worker started now imports its own torch meanwhile, not after. The built-in
            # rules are read without importing them, and a run whose files all hit the cache
            # starts no worker.
            from gradlint.run.workers import prestart
            prestart()
    cfg = _configure(dict(config_file=config_file, input_shapes=input_shapes, select=select, ignore=ignore,
                          threshold=threshold, fail_on=fail_on, probe=probe, device=device, seeds=seeds,
                          jobs=jobs, timeout=timeout, force_exclude=force_exclude,
                          warn_unused_ignores=warn_unused_ignores, all_targets=all_targets))
    if not paths and not (cfg.targets or cfg.include):
        raise click.UsageError("give PATHS to check, or targets or include in [tool.gradlint]")
    from gradlint.run.cache import default_dir
    from gradlint.run.runner import Interrupted, run_paths

    interrupted = False
    try:
        # Worker processes, so one target's crash or hang costs that target alone.
        reports, notes = run_paths(list(paths), cli_shapes=list(cfg.input_shape) or None, select=cfg.select,
                                   ignore=cfg.ignore, threshold=cfg.threshold, fail_on=cfg.fail_on, probe=cfg.probe,
                                   device=cfg.device, seeds=cfg.seeds, batch_size=batch_size, config=cfg,
                                   progress=progress_bar(cfg.probe, sys.stderr.isatty(), os.environ),
                                   workers=cfg.jobs, timeout=cfg.timeout or None,
                                   cache_dir=None if no_cache else (cache_dir or default_dir()))
    except Interrupted as e:  # the results so far are printed, then exit 130
        reports, notes, interrupted = e.reports, e.notes, True
    except KeyboardInterrupt:
        click.echo("gradlint: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    reports = _reconcile_suppressions(reports, cfg, paths)
    plot_failed = False
    if plot_to and not interrupted:
        from gradlint.base.errors import GradlintError
        from gradlint.output.plot import write_plots
        try:
            notes = [*notes, *(f"wrote {written}" for written in write_plots(reports, plot_to))]
        except GradlintError as e:  # the report still prints; the exit code says the chart is missing
            notes = [*notes, f"gradlint: {e}"]
            plot_failed = True
    recorded = False
    # An interrupted run's findings are partial: they may filter the output, never be recorded.
    if baseline and not (interrupted and (update_baseline or not Path(baseline).exists())):
        from gradlint.output.baseline import BaselineError
        from gradlint.output.baseline import apply as apply_baseline
        try:
            reports, more, recorded = apply_baseline(reports, baseline, update=update_baseline)
        except BaselineError as e:
            click.echo(f"gradlint: {e}", err=True)
            sys.exit(ExitCode.COULD_NOT_ANALYZE)
        notes = [*notes, *more]
    from gradlint.output.formats import render, use_color
    from gradlint.output.tally import Tally

    tally = Tally.of(reports, notes)
    color = use_color(fmt, to_file=output is not None, isatty=sys.stdout.isatty(), choice=color_choice)
    if statistics:
        from gradlint.output.tally import statistics as rule_counts
        text = "\n".join([*rule_counts(reports), *(format_error_lines(reports, color))])
    else:
        text = render(fmt, reports, notes, color=color, profile=show_profile, quiet=quiet)
    if fmt == "text" and not quiet:
        text = (text + "\n\n" if text else "") + tally.closing_line()
    if fmt != "json" and not quiet:  # the JSON document carries the notes itself, so stdout stays one document
        for note in notes:
            click.echo(note, err=True)
    if fmt in ("sarif", "github") and not quiet:
        click.echo(tally.closing_line(), err=True)
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n" if text else "", encoding="utf-8")
    elif text:
        click.echo(text, color=color)  # color=True keeps FORCE_COLOR's codes where click would strip them
    if interrupted:
        sys.exit(ExitCode.INTERRUPTED)
    # A target that could not be analyzed, or whose verdict is unknown, exits 2 (Report.exit_code).
    if plot_failed or any(r.exit_code == ExitCode.COULD_NOT_ANALYZE for r in reports):
        sys.exit(ExitCode.COULD_NOT_ANALYZE)
    nothing = tally.nothing_analyzed()
    if nothing is not None and not allow_no_targets:
        click.echo(nothing, err=True)
        sys.exit(ExitCode.NO_TARGETS)
    if recorded or exit_zero:
        sys.exit(ExitCode.CLEAN)
    if any(not r.ok for r in reports):
        sys.exit(ExitCode.FINDINGS)
    sys.exit(ExitCode.CLEAN)


def _reconcile_suppressions(reports: list[Any], cfg: Any, paths: tuple[str, ...]) -> list[Any]:
    """GL903 and GL904 over the whole run: every suppression comment in the files whose every
    target was checked is judged (not in a file named as ``file.py::Name``), a comment is unused
    only when no target used it, and each finding is shown once."""
    from dataclasses import replace

    from gradlint.base.findings import matches
    from gradlint.lint import suppress

    wanted = [code for code, rule in suppress.RULE_INFO.items()
              if not matches(code, rule.name, cfg.ignore) and (
                  code == suppress.UNUSED and cfg.warn_unused_ignores
                  or any(p.upper() in (code, rule.name.upper()) for p in cfg.select)
                  or code == suppress.UNKNOWN_CODE and (not cfg.select or matches(code, rule.name, cfg.select)))]
    partly = {os.path.realpath(p.partition("::")[0]) for p in paths if "::" in p}
    checked = [r.path if r.status == "ok" and r.path and os.path.realpath(r.path) not in partly else None
               for r in reports]
    own = any(f.code in suppress.RULE_INFO for r in reports for f in r.findings)
    if not own and (not wanted or not suppress.in_files(os.path.realpath(p) for p in checked if p)):
        return reports  # no comment to judge: the rule catalog (0.09 s of the parent's time) is not read
    from gradlint.lint.rule import catalog

    known = {code: info.name for code, info in catalog().items()}
    selected = {c: n for c, n in known.items() if (not cfg.select or matches(c, n, cfg.select))
                and not matches(c, n, cfg.ignore)}

    def ran(rule: str) -> bool:
        return rule.upper() in selected or rule in selected.values()

    kept = suppress.run_findings([list(r.findings) for r in reports], [f for r in reports for f in r.suppressed],
                                 checked, known, wanted, ran)
    out = []
    for r, fs in zip(reports, kept):
        if fs != list(r.findings):
            r = replace(r, findings=cfg.adjust(fs, r.path, r.layers))
        out.append(r)
    return out


def format_error_lines(reports: list[Any], color: bool) -> list[str]:
    """The targets that could not be analyzed, as the text report shows them."""
    from gradlint.output.text import format_error

    return [format_error(r, color) for r in reports if r.status != "ok"]


def _names_rules(config_file: str | None) -> bool:
    """Whether the configuration file may name rules (a cheap look at its text)."""
    from gradlint.base.errors import ConfigError
    from gradlint.run.config import find

    try:
        file = Path(config_file) if config_file else find()
        text = file.read_text(encoding="utf-8") if file is not None else ""
    except (ConfigError, OSError, UnicodeDecodeError):
        return False
    return any(word in text for word in ("select", "ignore", "rules"))


def _configure(params: dict[str, Any]) -> Any:
    """defaults < [tool.gradlint] < the command line; a bad configuration exits 2 naming its line."""
    from gradlint.base.errors import ConfigError
    from gradlint.run.config import from_command_line, load, merge

    shapes = tuple(_parse_shape(s) for s in params.get("input_shapes") or ())
    try:
        return merge(load(params.get("config_file")), from_command_line({**params, "input_shapes": shapes}))
    except ConfigError as e:
        click.echo(f"gradlint: {e}", err=True)
        sys.exit(ExitCode.COULD_NOT_ANALYZE)


@main.command("config")
def config_cmd(**params: Any) -> None:
    """Print the effective configuration and where each value came from.

    Takes check's options, so `gradlint config --fail-on warning` shows what check would use.
    """
    from gradlint.run.config import describe

    click.echo(describe(_configure(params)))


# The very options of `check`, so the two cannot drift apart.
config_cmd.params.extend(p for p in check.params if p.name in ("config_file", *_CONFIG_OPTIONS))


def progress_bar(probe: bool, isatty: bool, env: Any) -> Any:
    """A progress bar over the files to check, on a terminal only: never on a pipe or in CI
    (where ``CI`` is set), and not for a single file unless it is probed."""
    if not isatty or env.get("CI") or env.get("GRADLINT_NO_PROGRESS"):
        return None

    def wrap(jobs: list) -> Any:
        if len(jobs) < 2 and not probe:
            return contextlib.nullcontext(jobs)
        return click.progressbar(jobs, label="gradlint", file=sys.stderr, show_pos=True,
                                 item_show_func=lambda job: str(job[0])[-48:] if job else None)

    return wrap


@main.command("init")
@click.argument("paths", nargs=-1)
@click.option("--write", is_flag=True,
              help="Add the block to pyproject.toml (the one holding [tool.gradlint], else ./pyproject.toml) "
                   "instead of printing it; what the file holds is kept.")
@click.option("--force", is_flag=True,
              help="With --write, when [tool.gradlint] has targets already: add the models it does not name.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="The file --write adds to, and paths are relative to (default: as for check).")
@click.option("--all-targets", is_flag=True, help="Also list the building blocks of the models.")
def init_cmd(paths: tuple[str, ...], write: bool, force: bool, config_file: str | None, all_targets: bool) -> None:
    """Print a [tool.gradlint] block for the models in PATHS (default: the current directory).

    Every top-level model is listed with the constructor values gradlint found in the
    repository, each with where it came from, and "<FILL IN>" where it found none.
    """
    from gradlint.base.errors import GradlintError
    from gradlint.run.config import find
    from gradlint.run.init import PLACEHOLDER, find_entries, placeholders, render
    from gradlint.run.init import write as write_block

    try:
        target = Path(config_file) if config_file else (find() or Path("pyproject.toml"))
        entries = find_entries(paths or (".",), all_targets=all_targets)
        if write:
            block = write_block(entries, target.resolve(), force=force)
            click.echo(f"gradlint: added {block.count('[[tool.gradlint.targets]]')} targets to {target}", err=True)
        else:
            click.echo(render(entries, target.resolve().parent), nl=False)
    except GradlintError as e:
        click.echo(f"gradlint: {e}", err=True)
        sys.exit(ExitCode.COULD_NOT_ANALYZE)
    left = placeholders(entries)
    if left:
        click.echo(f"gradlint: {left} value{'s' if left > 1 else ''} marked {PLACEHOLDER} could not be found: "
                   "give them, then run `gradlint check`", err=True)


@main.command("rules")
def rules_cmd() -> None:
    """List the rules."""
    from gradlint.lint.rule import load_builtin

    for code, cls in sorted(load_builtin().items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{code}  {cls.name:<28} {cls.severity.value:<8} {summary}")


@main.command()
@click.argument("rule")
def explain(rule: str) -> None:
    """Print one rule's documentation (by code or name)."""
    from gradlint.lint.rule import load_builtin

    rules = load_builtin()
    for code, cls in rules.items():
        if rule.upper() == code or rule == cls.name:
            click.echo(f"{code} {cls.name} ({cls.severity.value}, {cls.category})\n")
            import inspect
            click.echo(inspect.cleandoc(cls.__doc__ or ""))
            if cls.options:
                click.echo("\n## Options\n" + "\n".join(f"- {k} = {v!r}" for k, v in cls.options.items()))
            return
    import difflib

    # Names get a suggestion; a code that does not exist is no typo of a neighbouring code.
    close = [] if rule[:2].upper() == "GL" else difflib.get_close_matches(rule, [c.name for c in rules.values()], n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    # A usage error, like an unknown option: exit 2, as for any other bad command line.
    click.echo(f"gradlint: no rule {rule!r}\n  hint: {hint}`gradlint rules` lists them", err=True)
    sys.exit(ExitCode.COULD_NOT_ANALYZE)


@main.command("test-rules")
@click.argument("package")
def test_rules(package: str) -> None:
    """Run the example harness on the rules a PACKAGE registers (a rule pack's own test)."""
    from gradlint.testing import rules_of, run_all

    rules = rules_of(package)
    if not rules:
        raise click.ClickException(f"{package} registers no rules")
    outcomes = run_all(rules)
    for o in outcomes:
        click.echo(f"{'ok  ' if o.ok else 'FAIL'} {o.label}" + ("" if o.ok else f": {o.failure}"))
    failed = sum(not o.ok for o in outcomes)
    click.echo(f"{len(outcomes) - failed} passed, {failed} failed")
    sys.exit(ExitCode.FINDINGS if failed else ExitCode.CLEAN)


@main.command("docs")
def docs_cmd() -> None:
    """Print docs/rules.md, generated from the rules."""
    from gradlint.lint.docs import rules_markdown

    click.echo(rules_markdown(), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
