"""``gradlint init``: a ``[tool.gradlint]`` block with the models of a project, the constructor
values gradlint found for them and where each came from, and a marked placeholder for every
value it could not find, printed or added to pyproject.toml without touching what is there.

It imports the files it is given (as ``gradlint check`` does) in this process, and reads the
repository's call sites of their models (``gradlint.load.arguments``); nothing is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradlint.base.errors import ConfigError, GradlintError
from gradlint.base.paths import shortest_path
from gradlint.run.config.toml_text import parse_toml, to_toml, toml_key
from gradlint.run.config.validate import PLACEHOLDER

__all__ = ["PLACEHOLDER", "Entry", "find_entries", "placeholders", "render", "write"]


@dataclass(frozen=True)
class Entry:
    """One model of the project, as ``init`` writes it.

    Attributes:
        file: The model file.
        name: The target's name in it.
        line: Its line.
        kwargs: Parameter -> value found (config objects as tables of their fields).
        comments: Parameter (or ``param.field``) -> where its value came from.
        missing: Parameter -> why no value was found (a placeholder is written).
        note: Said about the whole target (declared by the decorator, could not be imported...).
    """

    file: Path
    name: str | None
    line: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    missing: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _table(value: Any) -> Any:
    """``value`` as TOML can hold it: config objects become tables of their fields; None when it cannot."""
    if isinstance(value, bool) or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_table(v) for v in value]
        return items if all(i is not None for i in items) else None
    if isinstance(value, Mapping):
        items = {str(k): _table(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not None}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # The fields that differ from the class's defaults: the class gives the others again.
        fields = {f.name: _table(getattr(value, f.name)) for f in dataclasses.fields(value)
                  if f.init and not _is_default(f, getattr(value, f.name))}
        return {k: v for k, v in fields.items() if v is not None}
    nn = __import__("sys").modules.get("torch.nn")
    if nn is not None and isinstance(value, nn.Module):
        return None
    attrs = {k: _table(v) for k, v in getattr(value, "__dict__", {}).items() if not k.startswith("_")}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    return attrs or None


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(f.default == value)
    if f.default_factory is not dataclasses.MISSING:
        try:
            return bool(f.default_factory() == value)
        except Exception:  # noqa: BLE001 - a factory that needs more than nothing
            return False
    return False


def find_entries(paths: Iterable[str], all_targets: bool = False) -> list[Entry]:
    """The models of the files ``paths`` names (a directory: its files that may define one), each
    with the constructor values found in its repository.

    Raises:
        GradlintError: For a path that does not exist.
    """
    from gradlint import load
    from gradlint.load.arguments import config_classes, find_arguments, required_parameters

    entries: list[Entry] = []
    for given in paths:
        named = Path(given).is_file()
        for file in load.iter_python_files([given]):
            if not named and not load.may_define_model(file):
                continue
            try:
                module = load.import_file(file)
                found = load.discover(module, file, all_targets=all_targets)
            except GradlintError as e:
                entries.append(Entry(file, None, note=f"could not be read: {e.message}"))
                continue
            repository = load.Repository(file, module)
            for target in found.targets:
                declared = target.options.kwargs if target.options is not None else None
                if target.kind == "instance" or (not target.needs and target.options is not None):
                    note = "a module-level instance" if target.kind == "instance" else "declared by @gradlint.target"
                    entries.append(Entry(file, target.name, target.line, note=note))
                    continue
                with load.user_code(file):
                    resolution = find_arguments(target.obj, target.name, file, repository, declared,
                                                optional=not target.needs)
                if not resolution.arguments and not resolution.missing:
                    entries.append(Entry(file, target.name, target.line, note="its constructor needs no arguments"))
                    continue
                kwargs, comments = {}, {}
                for argument in resolution.arguments:
                    said = comments.get(argument.name)
                    comments[argument.name] = f"{said}; {_comment(argument)}" if said else _comment(argument)
                for name, value in resolution.kwargs.items():
                    table = _table(value)
                    if table is None:
                        comments[name] = f"{comments.get(name, '')}; not written: TOML cannot hold it, and " \
                                         "gradlint finds it again".lstrip("; ")
                        continue
                    kwargs[name] = table
                missing: dict[str, Any] = {}
                for name, why in resolution.missing:
                    classes = config_classes(target.obj, name, module, repository)
                    fields = required_parameters(classes[0]) if classes else None
                    missing[name] = {f: PLACEHOLDER for f in fields} if fields else PLACEHOLDER
                    comments[name] = f"FILL IN: {why}"
                entries.append(Entry(file, target.name, target.line, kwargs, comments, missing))
    return entries


def placeholders(entries: Iterable[Entry]) -> int:
    """How many values the entries leave to the user."""
    def count(value: Any) -> int:
        return sum(count(v) for v in value.values()) if isinstance(value, Mapping) else int(value == PLACEHOLDER)

    return sum(count(e.missing) for e in entries)


def _comment(argument: Any) -> str:
    if argument.how == "assumed":
        return f"ASSUMED: {argument.note}; give the real value"
    if argument.how == "default":
        return f"{argument.note}, {argument.source}" if argument.note else f"defaults, {argument.source}"
    return f"{argument.source}" + (f" ({argument.note})" if argument.note else "")


def _lines(prefix: str, values: Mapping[str, Any], comments: Mapping[str, str], path: str) -> list[str]:
    """Keys of one table as lines, each with its comment; nested tables after, under their own header."""
    out: list[str] = []
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in values.items():
        full = f"{path}.{key}" if path else key
        if isinstance(value, Mapping) and value:
            nested.append((key, value))
            continue
        comment = comments.get(full) or comments.get(key)
        out.append(f"{toml_key(key)} = {to_toml(value)}" + (f"  # {comment}" if comment else ""))
    for key, value in nested:
        full = f"{path}.{key}" if path else key
        comment = comments.get(full)
        out += ["", f"[{prefix}.{toml_key(key)}]" + (f"  # {comment}" if comment else "")]
        out += _lines(f"{prefix}.{toml_key(key)}", value, {**comments, **{k.partition(".")[2]: v for k, v in
                                                                        comments.items() if k.startswith(key + ".")}},
                      "")
    return out


def render(entries: Iterable[Entry], directory: Path, header: bool = True) -> str:
    """The ``[tool.gradlint]`` block for ``entries``, paths relative to ``directory`` (the
    configuration file's)."""
    out = ["[tool.gradlint]"] if header else []
    unreadable = []
    for entry in entries:
        rel = Path(os.path.relpath(entry.file, directory)).as_posix()
        if entry.name is None:
            unreadable.append(f"# {rel}: {entry.note}")
            continue
        where = f"{rel}:{entry.line}" if entry.line else rel
        note = f" ({entry.note})" if entry.note else ""
        out += ["", "[[tool.gradlint.targets]]", f'path = "{rel}::{entry.name}"  # {where}{note}']
        values = {**entry.kwargs, **entry.missing}
        if values:
            lines = _lines("tool.gradlint.targets.kwargs", values, entry.comments, "")
            out += ["", "[tool.gradlint.targets.kwargs]", *lines] if lines and lines[0] else lines
    if unreadable:
        out += ["", *unreadable]
    return "\n".join(out).strip("\n") + "\n"


def write(entries: list[Entry], file: Path, force: bool = False) -> str:
    """Adds the block for ``entries`` to ``file`` (created when missing), leaving what it holds.

    Returns:
        What was added.

    Raises:
        ConfigError: When its ``[tool.gradlint]`` has targets already (unless ``force``: then
            only the models it does not name yet are added), or the result would not be valid TOML.
    """
    text = file.read_text(encoding="utf-8") if file.exists() else ""
    data = parse_toml(file, text) if text else {}
    tool = data.get("tool", {}).get("gradlint") if isinstance(data.get("tool"), Mapping) else None
    existing = tool.get("targets") if isinstance(tool, Mapping) else None
    if existing:
        if not force:
            raise ConfigError("[tool.gradlint] has targets already; gradlint init leaves them alone",
                              path=shortest_path(file), hint="print the block with `gradlint init` and merge it by "
                                                             "hand, or add the models it does not name with --force")
        named = {t.get("path") for t in existing if isinstance(t, Mapping)}
        entries = [e for e in entries if e.name is None or
                   f"{Path(os.path.relpath(e.file, file.parent)).as_posix()}::{e.name}" not in named]
    block = render(entries, file.parent, header=tool is None)
    added = ("\n" if text and not text.endswith("\n\n") else "") + ("\n" if text and not text.endswith("\n") else "")
    new = text + added + block
    try:
        parse_toml(file, new)
    except ConfigError as e:
        raise ConfigError(f"adding the targets would not be valid TOML ({e.message}); nothing was written",
                          path=shortest_path(file),
                          hint="print the block with `gradlint init` and add it by hand") from None
    file.write_text(new, encoding="utf-8")
    return block
