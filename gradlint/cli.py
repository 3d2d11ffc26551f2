"""The ``gradlint`` command: a thin layer over ``gradlint.api`` and ``gradlint.loading``.

Torch is imported only inside the commands that need it, so ``--help`` and ``--version``
answer at once.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from gradlint._version import __version__

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").replace(" ", "").strip("()[]").split(",")
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape like 8,3,32,32")
    if not shape or any(d <= 0 for d in shape):
        raise click.BadParameter(f"{text!r} must be positive ints like 8,3,32,32")
    return shape


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradlint")
def main() -> None:
    """Predict whether gradients vanish or explode in PyTorch models at initialization."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--input-shape", "input_shapes", multiple=True, metavar="SHAPE",
              help="Example input shape, e.g. 8,3,32,32 (repeat for several inputs); used when the "
                   "target declares none.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--select", multiple=True, help="Run only these rules (code, prefix or name).")
@click.option("--ignore", multiple=True, help="Skip these rules (code, prefix or name).")
@click.option("--threshold", type=float, default=2.0, show_default=True,
              help="Decades of attenuation or growth beyond which the verdict is vanishing/exploding.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default="error", show_default=True)
@click.option("--probe", is_flag=True, help="Also run a real backward pass and compare it with the prediction.")
@click.option("--device", default="cpu", show_default=True, help="Where --probe runs: cpu, cuda, cuda:N or auto.")
@click.option("--seeds", type=click.IntRange(1, 100), default=3, show_default=True, help="Seeds --probe averages over.")
def check(paths: tuple[str, ...], input_shapes: tuple[str, ...], fmt: str, select: tuple[str, ...],
          ignore: tuple[str, ...], threshold: float, fail_on: str, probe: bool, device: str, seeds: int) -> None:
    """Analyze the models in PATHS (files, directories, or file.py::Name)."""
    shapes = [_parse_shape(s) for s in input_shapes] or None
    from gradlint.runner import run_paths

    reports, notes = run_paths(list(paths), cli_shapes=shapes, select=select, ignore=ignore,
                               threshold=threshold, fail_on=fail_on, probe=probe, device=device, seeds=seeds)
    color = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if fmt == "json":
        from gradlint.report import summary_counts
        doc = {"version": __version__, "targets": [r.to_dict() for r in reports], "notes": notes,
               "summary": summary_counts(reports)}
        click.echo(json.dumps(doc, indent=2))
    else:
        from gradlint.report import format_text
        for note in notes:
            click.echo(note, err=True)
        if reports:
            click.echo(format_text(reports, color=color))
    if any(r.status != "ok" for r in reports):
        sys.exit(EXIT_ERROR)
    if any(not r.ok for r in reports):
        sys.exit(EXIT_FINDINGS)
    sys.exit(EXIT_CLEAN)


@main.command("rules")
def rules_cmd() -> None:
    """List the rules."""
    from gradlint.rule import load_builtin

    for code, cls in sorted(load_builtin().items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{code}  {cls.name:<28} {cls.severity.value:<8} {summary}")


@main.command()
@click.argument("rule")
def explain(rule: str) -> None:
    """Print one rule's documentation (by code or name)."""
    from gradlint.rule import load_builtin

    for code, cls in load_builtin().items():
        if rule.upper() == code or rule == cls.name:
            click.echo(f"{code} {cls.name} ({cls.severity.value}, {cls.category})\n")
            import inspect
            click.echo(inspect.cleandoc(cls.__doc__ or ""))
            if cls.options:
                click.echo("\n## Options\n" + "\n".join(f"- {k} = {v!r}" for k, v in cls.options.items()))
            return
    raise click.ClickException(f"no rule {rule!r}; see `gradlint rules`")


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
    sys.exit(EXIT_FINDINGS if failed else EXIT_CLEAN)


@main.command("docs")
def docs_cmd() -> None:
    """Print docs/rules.md, generated from the rules."""
    from gradlint.docs import rules_markdown

    click.echo(rules_markdown(), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
