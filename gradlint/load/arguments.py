"""Constructor arguments found, not demanded: the values a class or factory of the model file
needs, from the repository's own call sites of it, from config classes with defaults, or (for
vocabulary, class-count and sequence sizes the repository computes from its data) a
conventional size that every report names as assumed.

``find_arguments`` answers for one target: the keyword arguments to build it with, where each
came from (``gradlint.base.report.Argument``, shown in every report), and, when a value could
be neither found nor assumed, which parameter and why, for a message that says where to give it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import textwrap
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradlint.base.paths import shown_path
from gradlint.base.report import Argument
from gradlint.load.callsites import CallSite, Repository
from gradlint.load.conventions import convention_for
from gradlint.load.values import Ref, Unknown, is_known

__all__ = ["Resolution", "build_config", "config_classes", "find_arguments", "required_parameters", "value_text"]

_CONFIG_NAMES = {"config", "cfg", "args", "params", "model_args", "conf", "hparams", "hp", "opt", "opts", "options",
                 "model_config", "configs", "arguments", "settings", "hyperparams", "model_cfg", "net_config"}
_CONFIG_CLASS = re.compile(r"(Config|Configs|Args|Arguments|Params|Parameters|Cfg|Options|Settings|HParams|Hparams|"
                           r"Conf|Hyperparameters|Node)$")
_DEFAULT_METHOD = re.compile(r"^(get_)?default_?(config|cfg|args|params|hparams|options|settings)s?$|^get_config$")
_MAX_DEPTH = 2


@dataclass(frozen=True)
class Resolution:
    """The arguments of one target.

    Attributes:
        kwargs: Parameter name -> value, to build the target with.
        arguments: Where each value came from, as reports show it.
        missing: ``(parameter, why)`` for each required value neither found nor assumed.
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    arguments: tuple[Argument, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()
    sites: int = 0


def required_parameters(obj: Any) -> list[str] | None:
    """The parameters of a class or function that have no default (``*args``/``**kwargs`` aside)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def value_text(value: Any, limit: int = 160) -> str:
    """A value as a report shows it: literals as Python writes them, objects as ``Name(field=...)``."""
    if isinstance(value, (int, float, str, bool, type(None), tuple, list, dict)):
        text = repr(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f for f in dataclasses.fields(value) if f.repr]
        text = f"{type(value).__name__}({', '.join(f'{f.name}={getattr(value, f.name)!r}' for f in fields)})"
    else:
        plain = {k: v for k, v in getattr(value, "__dict__", {}).items() if not k.startswith("_")
                 and isinstance(v, (int, float, str, bool, type(None), tuple, list))}
        nn = _torch_nn()
        if nn is not None and isinstance(value, nn.Module):
            text = f"{type(value).__name__}(...)"
        elif plain:
            text = f"{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in plain.items())})"
        else:
            text = f"{type(value).__name__}(...)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _torch_nn() -> Any:
    import sys

    return sys.modules.get("torch.nn")


def _source_line(obj: Any) -> tuple[str, int] | None:
    try:
        file = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return None
    return (shown_path(file), line) if file else None


def _annotation_classes(annotation: Any, module: types.ModuleType) -> list[type]:
    """The classes an annotation names (``Config``, ``Optional[Config]``, ``Union[A, B]``, ``"Config"``)."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return []
    if isinstance(annotation, str):
        try:
            node = ast.parse(annotation, mode="eval").body
        except SyntaxError:
            return []
        return [c for c in _names_in(node, module) if isinstance(c, type)]
    if isinstance(annotation, type):
        return [annotation]
    return [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]


def _names_in(node: ast.expr, module: types.ModuleType) -> list[Any]:
    if isinstance(node, ast.Name):
        return [vars(module).get(node.id)]
    if isinstance(node, ast.Attribute):
        owner = _names_in(node.value, module)
        return [getattr(owner[0], node.attr, None)] if owner else []
    if isinstance(node, ast.Subscript):
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return [c for e in inner for c in _names_in(e, module)]
    if isinstance(node, ast.BinOp):  # A | B
        return [*_names_in(node.left, module), *_names_in(node.right, module)]
    return []


def _reads(cls: Any, param: str) -> set[str]:
    """The attributes the class's code reads from ``param`` (or from ``self.X`` after ``self.X = param``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return set()
    aliases = {param}
    selfs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == param:
            for target in node.targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == "self":
                    selfs.add(target.attr)
                elif isinstance(target, ast.Name):
                    aliases.add(target.id)
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in aliases:
            out.add(node.attr)
        elif isinstance(base, ast.Attribute) and base.attr in selfs and isinstance(base.value, ast.Name) \
                and base.value.id == "self":
            out.add(node.attr)
    return out


def _fields(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    out = set(getattr(cls, "_fields", ()))  # NamedTuple
    out |= {a.name for a in getattr(cls, "__attrs_attrs__", ())}
    for klass in cls.__mro__[:-1]:
        out |= set(getattr(klass, "__annotations__", {}))
        out |= {k for k, v in vars(klass).items() if not k.startswith("_") and not callable(v)}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return out
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            out.add(node.attr)
    return out


def _is_config_class(obj: Any, repository: Repository) -> bool:
    nn = _torch_nn()
    return (isinstance(obj, type) and not (nn is not None and issubclass(obj, nn.Module))
            and not issubclass(obj, BaseException) and (repository._repository_code(obj) or any(
                k.__name__ == "PretrainedConfig" for k in obj.__mro__)))


def config_classes(target: Any, param: str, module: types.ModuleType, repository: Repository) -> list[type]:
    """The config classes a parameter of ``target`` takes, best first: the ones its annotation
    names, then the file's ``*Config``/``*Args``-like classes when the parameter is named like
    a config, ranked by how many of the attributes the constructor reads from it they define."""
    try:
        annotation = inspect.signature(target).parameters[param].annotation
    except (TypeError, ValueError, KeyError):
        annotation = inspect.Parameter.empty
    annotated = [c for c in _annotation_classes(annotation, module) if _is_config_class(c, repository)]
    reads = _reads(target, param)
    candidates = []
    if param.lower() in _CONFIG_NAMES or annotated:
        unique = {id(obj): obj for obj in vars(module).values()}.values()
        candidates = [obj for obj in unique if _is_config_class(obj, repository) and _CONFIG_CLASS.search(obj.__name__)]
    ranked = sorted(candidates, key=lambda c: -len(reads & _fields(c)))
    if reads:
        ranked = [c for c in ranked if reads & _fields(c)]
    return list(dict.fromkeys([*annotated, *ranked]))


def build_config(cls: type, table: Mapping[str, Any]) -> Any:
    """A config object of ``cls`` from a table of its fields (a nested ``kwargs`` table)."""
    try:
        return cls(**table)
    except TypeError:
        if required_parameters(cls):
            raise
        obj = cls()
        for key, value in table.items():
            setattr(obj, key, value)
        return obj


class _Finder:
    def __init__(self, repository: Repository, module: types.ModuleType) -> None:
        self.repository, self.module = repository, module

    def find(self, obj: Any, name: str, path: Path, given: Mapping[str, Any], depth: int,
             optional: bool = False) -> Resolution:
        required = [p for p in (required_parameters(obj) or []) if p not in given]
        if not required:
            return self._spelled_out(name, path, given) if optional and not given else Resolution()
        site = self.repository.best_call(Ref(path, name), required=tuple(required)) if depth <= _MAX_DEPTH else None
        kwargs: dict[str, Any] = {}
        arguments: list[Argument] = []
        missing: list[tuple[str, str]] = []
        if site is not None:
            self._from_site(site, given, required, kwargs, arguments)
        for param in required:
            if param in kwargs:
                continue
            unknown = site.values.get(param) if site is not None else None
            convention = convention_for(param)
            if isinstance(unknown, Unknown) and convention is not None:
                kwargs[param] = convention.value
                arguments.append(Argument(param, value_text(convention.value), unknown.where, "assumed",
                                          f"{convention.kind}; {unknown.describe()}"))
                continue
            value = self._config(obj, param, depth, arguments)
            if value is not None:
                kwargs[param] = value
                continue
            if isinstance(unknown, Unknown):
                missing.append((param, unknown.describe()))
            elif site is not None:
                missing.append((param, f"the call at {site.where} does not give it"))
            else:
                missing.append((param, f"no call of {name} in the repository gives it"))
        return Resolution(kwargs, tuple(arguments), tuple(missing), 1 if site is not None else 0)

    def _spelled_out(self, name: str, path: Path, given: Mapping[str, Any]) -> Resolution:
        """For a constructor that needs no arguments: the values a training script or the README
        builds it with, when that call is read in full (a file's own ``__main__`` block is often a
        smoke test, and its defaults are its author's choice)."""
        site = self.repository.best_call(Ref(path, name), tiers=(1, 2))
        if site is None or not site.values or site.assumed or not all(is_known(v) for v in site.values.values()):
            return Resolution()
        kwargs: dict[str, Any] = {}
        arguments: list[Argument] = []
        self._from_site(site, given, [], kwargs, arguments)
        return Resolution(kwargs, tuple(arguments), (), 1)

    def _from_site(self, site: CallSite, given: Mapping[str, Any], required: list[str], kwargs: dict[str, Any],
                   arguments: list[Argument]) -> None:
        for param, value in site.values.items():
            if param in given:
                continue
            if is_known(value):
                kwargs[param] = value
                arguments.append(Argument(param, value_text(value), site.where, "found"))
            elif param not in required:
                unknown = value if isinstance(value, Unknown) else next(
                    (v for v in (value.values() if isinstance(value, dict) else value) if isinstance(v, Unknown)),
                    Unknown("", site.where))
                arguments.append(Argument(param, "its default", unknown.where or site.where, "assumed",
                                          f"{unknown.describe()}, so gradlint keeps the default"))
        for found in site.found:
            arguments.append(Argument(found.name, value_text(found.value), found.where, "found", found.how))
        for assumed in site.assumed:
            arguments.append(Argument(assumed.name, value_text(assumed.value), assumed.unknown.where, "assumed",
                                      f"{assumed.kind}; {assumed.unknown.describe()}"))

    def _config(self, target: Any, param: str, depth: int, arguments: list[Argument]) -> Any:
        """A config object for ``param``: the target's own default-config classmethod, or a config
        class built with its defaults or from its own call sites."""
        owner = target if isinstance(target, type) else None
        for attr in dir(owner) if owner is not None else ():
            method = getattr(owner, attr, None)
            if _DEFAULT_METHOD.match(attr) and callable(method) and getattr(method, "__self__", None) is owner \
                    and not required_parameters(method) and param.lower() in _CONFIG_NAMES:
                try:
                    value = method()
                except Exception:  # noqa: BLE001 - the model's own code refused: try the classes
                    break
                where = _source_line(method)
                arguments.append(Argument(param, value_text(value), f"{where[0]}:{where[1]}" if where else "",
                                          "default", f"{owner.__name__}.{attr}()"))
                return value
        for cls in config_classes(target, param, self.module, self.repository):
            where = _source_line(cls)
            if not required_parameters(cls):
                try:
                    value = cls()
                except Exception:  # noqa: BLE001 - its defaults do not build it
                    continue
                arguments.append(Argument(param, value_text(value), f"{where[0]}:{where[1]}" if where else "",
                                          "default", f"{cls.__name__}() with its defaults"))
                return value
            if depth >= _MAX_DEPTH or where is None:
                continue
            inner = self.find(cls, cls.__name__, Path(os.path.realpath(inspect.getsourcefile(cls) or "")), {},
                              depth + 1)
            if inner.missing:
                continue
            try:
                value = cls(**inner.kwargs)
            except Exception:  # noqa: BLE001 - the values found do not build it
                continue
            arguments += [dataclasses.replace(a, name=f"{param}.{a.name}") for a in inner.arguments]
            return value
        return None


def find_arguments(target: Any, name: str, file: str | os.PathLike[str], repository: Repository,
                   given: Mapping[str, Any] | None = None, optional: bool = False) -> Resolution:
    """The constructor arguments of a class or factory of the model file.

    Args:
        target: The live class or factory.
        name: Its name in the file.
        file: The model file.
        repository: The repository around the file (``Repository(file, module)``).
        given: Arguments the user gave (decorator or configuration): not looked for.
        optional: For a constructor that needs no arguments, look for the values a training
            script or README builds it with (used only when read in full).

    Returns:
        What was found, where from, and what is missing.
    """
    finder = _Finder(repository, repository.module)
    return finder.find(target, name, Path(file).resolve(), dict(given or {}), 0, optional)


def given_argument(name: str, value: Any, source: str, how: str) -> Argument:
    """An argument the user gave (``configured`` in pyproject.toml, or ``declared`` by the decorator)."""
    return Argument(name, value_text(value), source, how)


def _default_method(owner: Any) -> Any:
    for attr in dir(owner) if isinstance(owner, type) else ():
        method = getattr(owner, attr, None)
        if _DEFAULT_METHOD.match(attr) and callable(method) and getattr(method, "__self__", None) is owner \
                and not required_parameters(method):
            return method
    return None


def config_tables(target: Any, given: Mapping[str, Any], module: types.ModuleType, repository: Any) -> dict[str, Any]:
    """``given`` with each table (a dict) for a config parameter made into that config.

    A parameter takes a config when its annotation names a config class, or its name and the
    attributes the constructor reads from it match one of the file's ``*Config``/``*Args``
    classes, or the target has a ``get_default_config()``-style classmethod (whose result gets
    the table's values set on it). Other dicts stay dicts.

    Args:
        repository: A callable returning the file's ``Repository`` (made only when needed).
    """
    from gradlint.base.errors import LoadError

    out = dict(given)
    for param, table in given.items():
        if not isinstance(table, Mapping):
            continue
        classes = config_classes(target, param, module, repository())
        method = _default_method(target) if param.lower() in _CONFIG_NAMES else None
        try:
            if classes:
                out[param] = build_config(classes[0], table)
            elif method is not None:
                obj = method()
                for key, value in table.items():
                    setattr(obj, key, value)
                out[param] = obj
        except Exception as exc:
            cls = classes[0].__name__ if classes else f"{getattr(target, '__name__', '')}.{method.__name__}()"
            raise LoadError(f"the table given for {param} does not build {cls}: {type(exc).__name__}: {exc}",
                            hint=f"give the fields {cls} takes: {', '.join(sorted(_fields(classes[0])))}"
                            if classes else None) from exc
    return out


def _init_line(obj: Any) -> tuple[str | None, int | None]:
    for candidate in (getattr(obj, "__init__", None) if isinstance(obj, type) else None, obj):
        if candidate is None or candidate is object.__init__:
            continue
        where = _source_line(candidate)
        if where is not None and (not isinstance(obj, type) or candidate is obj
                                  or getattr(candidate, "__qualname__", "").startswith(obj.__name__ + ".")):
            return where
    return None, None


def missing_arguments(target: Any, resolution: Resolution, module: types.ModuleType, repository: Repository) -> Any:
    """The error for a target whose constructor needs values gradlint could neither find nor
    assume: each parameter and why, at the constructor's line, with the configuration to write."""
    from gradlint.base.errors import LoadError

    what = f"{target.name}'s constructor" if target.kind == "class" else f"the factory {target.name}"
    params = [p for p, _ in resolution.missing]
    why = resolution.missing[0][1] if len(params) == 1 else "; ".join(f"{p}: {r}" for p, r in resolution.missing)
    entries = []
    for param in params:
        classes = config_classes(target.obj, param, module, repository)
        fields = required_parameters(classes[0]) if classes else None
        entries.append(f"{param} = {{ {', '.join(f'{f} = ...' for f in fields)} }}" if fields else f"{param} = ...")
    file, line = _init_line(target.obj)
    kwargs = ", ".join(entries)
    toml = f'[tool.gradlint] targets = [{{ path = "{target.path}::{target.name}", kwargs = {{ {kwargs} }} }}]'
    hint = (f"give {'it' if len(params) == 1 else 'them'} in pyproject.toml, {toml}; `gradlint init {target.path}` "
            "writes that table with every value it found")
    them = "it" if len(params) == 1 else "them"
    return LoadError(f"{what} needs {', '.join(params)}, and gradlint found no value for {them}: {why}",
                     path=str(target.path) if file is None else file, line=line or target.line, hint=hint)
