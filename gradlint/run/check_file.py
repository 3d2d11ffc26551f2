"""Checking one file, in the process that runs the user's code (a worker, or the caller's own
with ``workers=0``): import it, discover its targets, build and check each one, as a stream of
events the parent can follow. Imports torch only when it checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from gradlint import load
from gradlint.base.errors import ConfigError, GradlintError, LoadError
from gradlint.base.report import Report, error_report
from gradlint.run.config import Config
from gradlint.run.threads import Watch


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


class _NoParameters(Exception):
    """A target discovery found has no parameters: a note, not a report."""


class _Orphan(Exception):
    """A class beside the file's other models that needs arguments nothing in the repository
    gives (no call of it anywhere, often one left in commented-out code): a note, not a report."""


def check_file(path: Any, name: str | None, settings: Settings, skip: int = 0,
               watch: Watch | None = None) -> Iterator[tuple[Any, ...]]:
    """Check one file, as a stream of events.

    Yields ``("import",)`` before importing it, ``("target", index, label, path, line, count)``
    before each target (``count`` targets in all), ``("report", Report)`` and ``("note", text)``.
    A worker relays them, so the parent knows what was running if the process dies.

    Args:
        skip: Targets to leave out, from the first: the ones a dead worker finished already.
        watch: Follows the threads the file's code starts; ``watch.note()`` afterwards says
            whether they make its reports unfit for the cache.
    """
    watch = watch or Watch()
    with watch.file():
        yield from _check_file(path, name, settings, skip, watch)


def _check_file(path: Any, name: str | None, settings: Settings, skip: int, watch: Watch) -> Iterator[tuple[Any, ...]]:
    from gradlint.api import check
    from gradlint.capture.graph import Source
    from gradlint.capture.inputs import resolve_inputs

    config = settings.config
    yield ("import",)
    try:
        try:
            module = load.import_file(path)
        except GradlintError as e:
            _with_hint(e, path, None)
            raise
        found = load.discover(module, path, name, all_targets=config is not None and config.all_targets)
        if config is not None:
            found, failed = _with_config_targets(module, path, name, found, config)
            if not skip:
                for report in failed:
                    yield ("report", report)
    except GradlintError as e:
        yield ("report", error_report(f"{path}" + (f"::{name}" if name else ""), e, str(path)))
        return
    if name is None:
        found, notes = _without_stand_ins(found, path)
        if not skip:
            for note in notes:
                yield ("note", note)
    if not found.targets:
        # Skipped classes matter only when nothing else was found: otherwise they are the
        # building blocks of the targets.
        for skipped in found.skipped:
            hint = f"\n  hint: {skipped.hint}" if skipped.hint else ""
            yield ("note", f"{path}:{skipped.line or 1}: skipped {skipped.name}: {skipped.reason}{hint}")
        yield ("note", f"{path}: no targets: " + ("every nn.Module here was skipped" if found.skipped else
                       "no nn.Module subclass or instance is defined here, and nothing is marked @gradlint.target"))
        return
    repository: list[Any] = []  # read once per file, when a target first needs it

    def repo() -> Any:
        if not repository:
            repository.append(load.Repository(path, module))
            for other in found.targets:  # what the user gave a model, its building blocks are read with
                if other.options is not None and other.options.kwargs and other.kind != "instance":
                    try:
                        with load.user_code(path):
                            repository[0].given[other.name] = load.config_tables(
                                other.obj, other.options.kwargs, module, lambda: repository[0])
                    except GradlintError:
                        pass  # reported when that model is built
        return repository[0]

    for index, target in enumerate(found.targets):
        if index < skip:
            continue
        label = f"{path}::{target.display_name}"
        yield ("target", index, label, str(path), target.line, len(found.targets))
        watch.check(checking=True)
        arguments: tuple[Any, ...] = ()
        try:
            # The constructor runs where the file's import left the working directory (instantiate
            # says so); gradlint's own work around it (reading the repository for its values),
            # where gradlint runs.
            with load.user_code(path, cwd=False):
                model, arguments = _build(target, module, path, repo, config, others=len(found.targets) > 1)
                _refuse_script_module(model, target)
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
                              rule_options=config.rule_options if config is not None else None,
                              # The run's configuration is merged already: check() reads no file of its own.
                              config=False, warn_unused_ignores=config is not None and config.warn_unused_ignores,
                              trust_custom_backward=config is not None and config.trust_custom_backward)
                if settings.probe:
                    from gradlint.probing.probe import probe as run_probe
                    report = run_probe(model, ex, device=settings.device, seeds=settings.seeds, **kwargs)
                else:
                    report = check(model, ex, **kwargs)
        except _Orphan as e:
            yield ("note", f"{e}")
            watch.check(checking=False)
            continue
        except _NoParameters:
            yield ("note", f"{path}:{target.line or 1}: skipped {target.name}: it has no parameters, so there is no "
                           f"gradient to predict (name it, {path}::{target.name}, to check it anyway)")
            watch.check(checking=False)
            continue
        except SystemExit as e:  # in-process, it would end the whole run
            report = error_report(label, GradlintError(
                f"the model called sys.exit({e.code!r}) while being checked", path=str(path), line=target.line,
                hint='code that runs when a model is built or called must not exit; keep script code under '
                     '`if __name__ == "__main__":`'))
        except GradlintError as e:
            report = error_report(label, _with_hint(e, path, target.line), str(path), target.line)
        except Exception as e:  # noqa: BLE001 - an op gradlint cannot run, or a bug of gradlint's own
            report = error_report(label, _unexpected(e, path, target.line), str(path), target.line)
        watch.check(checking=False)
        yield ("report", replace(report, arguments=arguments) if arguments else report)


def _build(target: load.Target, module: Any, path: Any, repo: Any, config: Config | None,
           others: bool = False) -> tuple[Any, tuple]:
    """Builds a target: with the arguments it was given (a config's nested tables made into its
    config classes), and the ones it needs found in the repository. Returns the model and, when
    gradlint chose values, every argument with where it came from."""
    if target.kind == "instance":
        return load.instantiate(target), ()
    given = dict(target.options.kwargs or {}) if target.options is not None else {}
    origin = next((s.origin for s in config.targets_in(path) if s.matches(target) and s.kwargs), None) \
        if config is not None else None
    load.check_unknown(target, given)
    given = load.config_tables(target.obj, given, module, repo)
    needed = [p for p in target.needs if p not in given]
    if not needed and target.options is not None:
        return load.instantiate(target, kwargs=given), ()
    # Undecorated and unconfigured, a model that needs no arguments is still built with the values
    # a training script or the README gives, when they are read in full.
    resolution = load.find_arguments(target.obj, target.name, path, repo(), given, optional=not needed)
    if resolution.missing:
        error = load.missing_arguments(target, resolution, module, repo())
        if not resolution.sites and others and target.options is None:
            raise _Orphan(f"{path}:{target.line or 1}: skipped {target.name}: {error.message}; nothing in the "
                          f"repository builds it\n  hint: {error.hint}")
        raise error
    stated = tuple(load.given_argument(k, v, origin or f"{path}:{target.line or 1}",
                                       "configured" if origin else "declared") for k, v in given.items())
    extra = {k: v for k, v in resolution.kwargs.items() if k not in given}
    return load.instantiate(target, kwargs={**extra, **given}), stated + resolution.arguments


# --- what a target's report says when it could not be analyzed ------------------------------------

# What to do when a check runs out of memory; the worker's report of an OOM kill says it too.
MEMORY_ADVICE = ('build the model on the meta device (`with torch.device("meta"): model = Net()`, which gradlint '
                 "analyzes without allocating weights), check one file at a time (--jobs 1), or use smaller inputs "
                 "(--batch-size, --input-shape)")


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, says that memory ran out."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
                "can't allocate memory" in text or "out of memory" in text.lower()
                or "DefaultCPUAllocator" in text)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _with_hint(err: GradlintError, path: Any, line: int | None) -> GradlintError:
    """``err`` naming the user's file (and line, where known), with what to do when memory ran out."""
    if not err.path:
        err.path, err.line = str(path), err.line or line
    if err.hint is None and _out_of_memory(err.__cause__ or err.__context__):
        err.hint = MEMORY_ADVICE
    return err


def _unexpected(exc: Exception, path: Any, line: int | None) -> GradlintError:
    """An exception that escaped gradlint's own handling, as an error at the target's line
    that keeps gradlint's whole traceback for a bug report."""
    import traceback

    if _out_of_memory(exc):
        hint = MEMORY_ADVICE
    else:
        hint = ("gradlint failed on this model in a way it does not handle yet; the traceback below is "
                "gradlint's own: please report it, with the model if you can")
    err = GradlintError(f"{type(exc).__name__}: {exc}", path=str(path), line=line, hint=hint)
    err.traceback_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return err


def _refuse_script_module(model: Any, target: load.Target) -> None:
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        original = getattr(model, "original_name", None) or "the module"
        how = "torch.jit.trace" if isinstance(model, torch.jit.TopLevelTracedModule) else "torch.jit.script"
        raise LoadError(f"{target.name} is a TorchScript module ({how} of {original}); gradlint analyzes the Python "
                        "nn.Module, whose forward it can trace", path=str(target.path), line=target.line,
                        hint=f"check the module before scripting it: name its class or a factory that builds it, "
                             f"e.g. {target.path}::{original}")


def _without_stand_ins(found: load.Discovery, path: Any) -> tuple[load.Discovery, list[str]]:
    """The targets less those that another target of the file stands in for, with a note each.

    A module-level instance on the meta device stands in for its class: building the class
    would allocate the real weights the file avoided (a large model checked twice, the second
    time in full). A TorchScript instance cannot be analyzed, and its class, a target too,
    stands in for it. Decorated and configured targets are always kept.
    """
    instances = [t for t in found.targets if t.kind == "instance"]
    drop: dict[int, str] = {}
    for inst in instances:
        cls = type(inst.obj)
        if _on_meta(inst.obj):
            for t in found.targets:
                if t.kind == "class" and t.obj is cls and t.options is None:
                    drop[id(t)] = (f"{path}:{t.line or 1}: skipped {t.name}: the file builds it on the meta device as "
                                   f"{inst.name} (line {inst.line}), which is checked instead, without allocating "
                                   f"weights (name it, {path}::{t.name}, to build it with real weights)")
        script_of = _script_original(inst.obj)
        if script_of is not None and inst.options is None:
            cls_target = next((t for t in found.targets if t.kind == "class" and t.name == script_of), None)
            if cls_target is not None:
                drop[id(inst)] = (f"{path}:{inst.line or 1}: skipped {inst.name}: it is a TorchScript module, which "
                                  f"gradlint cannot analyze; its class {script_of} is checked")
    if not drop:
        return found, []
    kept = tuple(t for t in found.targets if id(t) not in drop)
    return replace(found, targets=kept), list(drop.values())


def _on_meta(module: Any) -> bool:
    try:
        return any(p.is_meta for p in module.parameters())
    except Exception:  # noqa: BLE001 - an exotic module: not a stand-in
        return False


def _script_original(module: Any) -> str | None:
    import torch

    return getattr(module, "original_name", None) if isinstance(module, torch.jit.ScriptModule) else None


def _with_config_targets(module: Any, path: Any, name: str | None, found: load.Discovery,
                         config: Config) -> tuple[load.Discovery, list[Report]]:
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
                (target,) = load.discover(module, path, spec.name).targets
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


def _config_inputs(ex: Any, target: load.Target, path: Any, config: Config) -> Any:
    """Inputs a configured target declares say so in the report, not "declared by @gradlint.target"."""
    spec = next((s for s in config.targets_in(path) if s.matches(target) and s.inputs is not None), None)
    if spec is None or ex.source != "decorator":
        return ex
    return replace(ex, source="config", note=f"declared in {spec.origin}")
