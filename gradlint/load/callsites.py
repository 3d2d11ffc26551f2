"""Where a repository builds its model: the call sites of a class or factory of the model file,
in the file itself, the repository's other Python files and its READMEs' code, read by the
restricted evaluator (``gradlint.load.evaluate``) and never run.

``Repository`` is the evaluator's ``Host``: it resolves a script's imports to the repository's
files, hands out the model file's live objects (already imported by gradlint), and answers
the two look-ups that reach beyond one script (an ``argparse`` option's default by name, and a
required option's value on a README or shell command line).
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradlint.base.paths import shown_path
from gradlint.load.evaluate import Interpreter, Scope, bind_arguments
from gradlint.load.files import (
    SKIP_DIRS,
    import_roots,
    is_library_file,
    package_parts,
    read_source,
    repository_root,
)
from gradlint.load.values import NOTHING, Assumed, Deferred, External, Found, Func, Ref, Script, Unknown, short_text

__all__ = ["CallSite", "Repository", "TIERS", "value_sources"]

#: Where call sites come from, best first.
TIERS = ("the file's own __main__ block or tests", "the repository's scripts", "the README", "the file's other code")
_MAX_FILES = 4000
_MAX_BYTES = 2_000_000
_MAX_RECURSION = 2
# Functions of the model file the evaluator never calls, whatever they return.
_NEVER_CALL = re.compile(r"^_*(main|train|test|run|fit|evaluate|eval|predict|infer|inference|demo|sample|download|"
                         r"save|load|export|setup|cli|app)", re.IGNORECASE)
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)[^\n]*$")


@dataclass(frozen=True)
class CallSite:
    """One call of a class or factory, read.

    Attributes:
        where: ``file:line`` of the call.
        tier: Index into ``TIERS``.
        values: Parameter name -> the value read (an ``Unknown`` when it could not be).
        assumed: Conventional sizes used for values the repository computes at run time.
        found: Values found away from the call (option defaults, command lines).
        text: The call as written, shortened.
    """

    where: str
    tier: int
    values: dict[str, Any] = field(hash=False)
    assumed: tuple[Assumed, ...] = ()
    found: tuple[Found, ...] = ()
    text: str = ""


def _markdown_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """The fenced code blocks of a markdown text: (lines before the block, language, code)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language = match.group(2), match.group(3).lower()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence[:3]):
            j += 1
        indent = len(match.group(1))
        yield start, language, "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[start:j])
        i = j + 1


class Repository:
    """The repository around a model file, as the evaluator's ``Host``.

    Args:
        file: The model file.
        module: The module ``import_file`` made of it.
    """

    def __init__(self, file: str | os.PathLike[str], module: types.ModuleType) -> None:
        self.file = Path(file).resolve()
        self.shown = shown_path(str(file))
        self.module = module
        self.root = repository_root(self.file)
        self.roots = import_roots(self.file)
        self._bytes: dict[Path, bytes | None] = {}
        self._trees: dict[tuple[Path, int], ast.Module | None] = {}
        self._files: list[Path] | None = None
        self._options: dict[str, list[Found]] | None = None
        self._resolving: set[tuple[Path, str]] = set()
        self._modules: dict[str, types.ModuleType] | None = None
        self._scopes: dict[tuple[Path, int], Scope] = {}
        self.depth = 0
        #: Constructor arguments the user gave the file's models, by name: their building blocks
        #: are read with them.
        self.given: dict[str, dict[str, Any]] = {}

    # --- files --------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The repository's Python, markdown and shell files (a bounded walk below its root)."""
        if self._files is None:
            out: list[Path] = []
            for directory, dirs, names in os.walk(self.root):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                                 and not os.path.isfile(os.path.join(directory, d, "pyvenv.cfg")))
                out += [Path(directory, n) for n in sorted(names) if n.endswith((".py", ".md", ".sh"))]
                if len(out) > _MAX_FILES:
                    break
            self._files = out[:_MAX_FILES]
        return self._files

    def read(self, path: Path) -> bytes | None:
        if path not in self._bytes:
            try:
                data = read_source(path)  # never blocks: a FIFO is no script
                self._bytes[path] = data if len(data) <= _MAX_BYTES else None
            except OSError:
                self._bytes[path] = None
        return self._bytes[path]

    def _tree(self, path: Path, text: str | None = None, offset: int = 0) -> ast.Module | None:
        key = (path, offset)
        if key not in self._trees:
            source = text if text is not None else self.read(path)
            try:
                self._trees[key] = ast.parse(source) if source is not None else None
            except (SyntaxError, ValueError):
                self._trees[key] = None
        return self._trees[key]

    def script(self, path: Path, kind: str = "script") -> Script | None:
        tree = self._tree(path)
        return Script(path, shown_path(str(path)), tree, 0, kind) if tree is not None else None

    def scripts(self, names: tuple[str, ...], home: Path | None = None) -> Iterator[Script]:
        """The repository's Python files and README code blocks that mention one of ``names``:
        ``home`` (the file defining them; the model file by default) first, then the other
        Python files, then the markdown."""
        pattern = re.compile(rb"\b(" + b"|".join(re.escape(n.encode()) for n in names) + rb")\b")
        home = home if home is not None else self.file
        first = self.script(home, "model" if home == self.file else "script")
        if first is not None:
            yield first
        # A file that calls them imports their module, or a package above it.
        modules = [home.stem, *(d.name for d in home.parents if d != self.root and self.root in d.parents)]
        imports = re.compile(rb"\b(from|import)\s+[\w., ]*\b(" + b"|".join(re.escape(m.encode()) for m in modules
                                                                      if m.isidentifier()) + rb")\b")
        for path in self.files():
            if path in (home, self.file) or not path.name.endswith(".py"):
                continue
            data = self.read(path)
            if data and pattern.search(data) and imports.search(data):
                found = self.script(path)
                if found is not None:
                    yield found
        for path in self.files():
            if not path.name.endswith(".md") or not self._above_model(path):
                continue
            data = self.read(path)
            if not data or not pattern.search(data):
                continue
            text = data.decode("utf-8", "replace")
            imports: list[str] = []
            for start, language, code in _markdown_blocks(text):
                if language not in ("python", "py", "python3", "pycon", ""):
                    continue
                tree = self._tree(path, code, start)
                if tree is None:
                    continue
                lines = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
                if not pattern.search(code.encode()):
                    imports += lines
                    continue
                # A block often uses what an earlier block of the README imported.
                prefix = ast.parse("\n".join(imports)).body if imports else []
                tree = ast.Module(body=[*(_at_line(n, 0) for n in prefix), *tree.body], type_ignores=[])
                imports += lines
                yield Script(path, shown_path(str(path)), tree, start, "readme")

    def _above_model(self, path: Path) -> bool:
        """Whether a markdown file sits in the model file's directory or one above it (its README)."""
        return path.parent == self.file.parent or path.parent in self.file.parents

    # --- the Host -----------------------------------------------------------------------------

    def _module_file(self, base: Path, parts: list[str]) -> Path | None:
        here = base
        for i, part in enumerate(parts):
            if (here / f"{part}.py").is_file() and i == len(parts) - 1:
                return here / f"{part}.py"
            here = here / part
            if not here.is_dir():
                return None
        return here / "__init__.py" if (here / "__init__.py").is_file() else here

    def resolve(self, script: Script, level: int, module: str | None) -> Path | None:
        """The file (or package directory) an import in ``script`` names, in the repository."""
        parts = module.split(".") if module else []
        if level:
            base = script.path.parent
            for _ in range(level - 1):
                base = base.parent
            return self._module_file(base, parts) if parts else (
                base / "__init__.py" if (base / "__init__.py").is_file() else base)
        if not parts:
            return None
        pkg, package_root = package_parts(script.path) if script.kind != "readme" else ([], script.path.parent)
        bases = [script.path.parent, *([package_root] if pkg else []), self.root, *self.roots]
        for base in dict.fromkeys(bases):
            found = self._module_file(base, parts)
            if found is not None:
                return found.resolve()
        return None

    def bind_import(self, script: Script, level: int, module: str | None, name: str | None) -> Any:
        if name is None:
            path = self.resolve(script, level, module)
            return Ref(path) if path is not None else External(module or "")
        if name == "*":
            path = self.resolve(script, level, module)
            return self._star(path, 0) if path is not None else {}
        joined = f"{module}.{name}" if module else name
        path = self.resolve(script, level, joined)
        if path is not None and path.name != "__init__.py" and not path.is_dir():
            return Ref(path)
        path = self.resolve(script, level, module)
        if path is None:
            return External(joined)
        return self.attribute(Ref(path), name)

    def _star(self, path: Path, depth: int) -> dict[str, Any]:
        if path == self.file:
            return {k: v for k, v in vars(self.module).items() if not k.startswith("_")}
        if depth > 2 or path.is_dir():
            return {}
        tree = self._tree(path)
        out: dict[str, Any] = {}
        for node in tree.body if tree is not None else ():
            if isinstance(node, ast.ImportFrom):
                holder = Script(path, "", ast.Module([], []), 0, "script")
                target = self.resolve(holder, node.level, node.module)
                if target is None:
                    continue
                for alias in node.names:
                    if alias.name == "*":
                        out.update(self._star(target, depth + 1))
                    elif target == self.file:
                        out[alias.asname or alias.name] = self.attribute(Ref(target), alias.name)
        return out

    def attribute(self, ref: Ref, name: str) -> Any:
        path = ref.path
        if ref.name is not None:
            live = self.live(ref)
            return getattr(live, name, Unknown(f"{ref.name}.{name}", "")) if live is not NOTHING else Unknown(
                f"{ref.name}.{name}", "")
        if path == self.file:
            return getattr(self.module, name) if hasattr(self.module, name) else Unknown(name, self.shown)
        directory = path.parent if path.name == "__init__.py" else (path if path.is_dir() else None)
        if directory is None:
            return Ref(path, name)
        # What the package's __init__.py binds comes first: `from .EncoderRNN import EncoderRNN`
        # makes the name the class, not the submodule.
        exported = self._star(path, 0) if path.name == "__init__.py" else {}
        if name in exported:
            return exported[name]
        if path.name == "__init__.py":
            tree = self._tree(path)
            holder = Script(path, "", ast.Module([], []), 0, "script")
            for node in tree.body if tree is not None else ():
                if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                    alias = next(a for a in node.names if (a.asname or a.name) == name)
                    return self.bind_import(holder, node.level, node.module, alias.name)
        for candidate in (directory / f"{name}.py", directory / name / "__init__.py"):
            if candidate.is_file():
                return Ref(candidate.resolve())
        if self.file.parent == directory and name in vars(self.module) and not (directory / "__init__.py").is_file():
            # A package whose __init__.py is not there (a vendored copy): its model file's name.
            return getattr(self.module, name)
        return Ref(path, name)

    def live(self, ref: Ref) -> Any:
        if ref.name is None:
            return NOTHING
        if ref.path == self.file:
            return getattr(self.module, ref.name, NOTHING)
        loaded = self._loaded().get(str(ref.path))
        if loaded is not None and hasattr(loaded, ref.name):
            return getattr(loaded, ref.name)
        script = self.script(ref.path)
        if script is not None:
            for node in script.tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == ref.name:
                    return Func(script, node, self.module_scope(script))
        return NOTHING

    def _loaded(self) -> dict[str, types.ModuleType]:
        """The modules already imported (by the model file's import), by their resolved file."""
        if self._modules is None:
            self._modules = {}
            for module in list(sys.modules.values()):
                origin = getattr(module, "__file__", None)
                if isinstance(origin, str):
                    self._modules.setdefault(os.path.realpath(origin), module)
        return self._modules

    def module_scope(self, script: Script) -> Scope:
        """What a script binds at module level, read (the model file: what its import bound)."""
        if script.path == self.file and script.kind == "model":
            return Scope(dict(vars(self.module)))
        key = (script.path, script.offset)
        if key not in self._scopes:
            scope = Scope()
            self._scopes[key] = scope  # a script whose module level reads its own functions
            Interpreter(script, self, self.depth).run(script.tree.body, scope)
        return self._scopes[key]

    def may_call(self, obj: Any) -> bool:
        """The model's own code: classes of the repository (configs, modules), torch's module
        classes, and the model file's functions and class- or static methods, except those
        named like an entry point (``main``, ``train``...)."""
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, type):  # a classmethod, like GPT.get_default_config
            return self._repository_code(owner) and not _NEVER_CALL.match(getattr(obj, "__name__", ""))
        if isinstance(obj, type):
            if self._repository_code(obj):
                return True
            nn = sys.modules.get("torch.nn")
            return nn is not None and issubclass(obj, nn.Module)
        if inspect.isfunction(obj):
            return (obj.__module__ == self.module.__name__ and not _NEVER_CALL.match(obj.__name__)
                    and not inspect.isgeneratorfunction(obj))
        return False

    def _repository_code(self, obj: Any) -> bool:
        try:
            source = inspect.getsourcefile(obj)
        except TypeError:
            return False
        if not source or is_library_file(source):
            return False
        real = os.path.realpath(source)
        return any(real.startswith(str(r) + os.sep) for r in [self.root, *self.roots])

    def option_default(self, name: str) -> Found | None:
        """The default of the repository's ``argparse`` option ``--name``, when it has exactly one."""
        if self._options is None:
            self._options = {}
            for path in self.files():
                data = self.read(path) if path.name.endswith(".py") else None
                if not data or b"add_argument" not in data:
                    continue
                tree = self._tree(path)
                for node in ast.walk(tree) if tree is not None else ():
                    found = _option(node, path)
                    if found is not None:
                        self._options.setdefault(found.name, []).append(found)
        found = self._options.get(name, [])
        values = {repr(f.value) for f in found}
        return found[0] if len(values) == 1 else None

    def command_line(self, script: Script, option: str, convert: Callable[[str], Any]) -> Found | None:
        """The value a README or shell script passes for ``option`` when it runs ``script``."""
        pattern = re.compile(rf"\b{re.escape(script.path.name)}\b.*?(?:^|\s){re.escape(option)}(?:=|\s+)([^\s\"'`]+)")
        for path in self.files():
            if not path.name.endswith((".md", ".sh")):
                continue
            data = self.read(path)
            if not data or option.encode() not in data:
                continue
            for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                match = pattern.search(line)
                if match:
                    try:
                        value = convert(match.group(1))
                    except ValueError:
                        continue
                    return Found(option.lstrip("-"), value, f"{shown_path(str(path))}:{number}",
                                 f"`{short_text(line.strip(), 70)}`")
        return None

    def bind_params(self, script: Script, func: ast.FunctionDef | ast.AsyncFunctionDef, cls: ast.ClassDef | None,
                    depth: int) -> dict[str, Any]:
        """Values for the parameters of the function a call site sits in: from the call sites of
        that function (of its class, for ``__init__``), else its defaults, else a function of the
        script named like ``*defaults()`` that returns them in a dict."""
        interp = Interpreter(script, self, depth)
        globals_scope = self.module_scope(script)
        unknown = bind_arguments(func.args, [], {}, interp, globals_scope, skip_self=cls is not None) or {}
        if cls is not None and func.name != "__init__":
            return unknown
        if cls is not None and script.path == self.file and cls.name in self.given:
            return {**unknown, **self.given[cls.name]}  # what the user configured for that model
        if depth < _MAX_RECURSION:
            name = cls.name if cls is not None else func.name
            best = self.best_call(Ref(script.path, name) if script.path != self.file else Ref(self.file, name),
                                  depth + 1, exclude=func)
            if best is not None:
                return {**unknown, **best.values}
        if cls is None:
            defaults = self._defaults_dict(script, globals_scope, [a.arg for a in func.args.args])
            if defaults:
                return {**unknown, **{k: v for k, v in defaults.items() if k in unknown
                                      and isinstance(unknown[k], Unknown)}}
        return unknown

    def _defaults_dict(self, script: Script, scope: Scope, params: list[str]) -> dict[str, Any] | None:
        """The dict a ``*defaults()`` function of the script returns, when it names every parameter."""
        for node in script.tree.body:
            if isinstance(node, ast.FunctionDef) and "default" in node.name.lower() and not node.args.args:
                value = Interpreter(script, self, 1).call_function(Func(script, node, scope), [], {}, node)
                if isinstance(value, dict) and all(p in value for p in params):
                    return value
        return None

    # --- call sites ---------------------------------------------------------------------------

    def call_sites(self, ref: Ref, depth: int = 0, exclude: ast.AST | None = None) -> Iterator[CallSite]:
        """Every call of ``ref`` the repository's code holds, read."""
        key = (ref.path, ref.name or "")
        if key in self._resolving:
            return
        self._resolving.add(key)
        try:
            target = self.signature_of(ref)
            if target is None:
                return
            for script in self.scripts((ref.name or "",), ref.path):
                for call, chain in _calls(script.tree, ref.name or ""):
                    if exclude is not None and any(c is exclude for c in chain):
                        continue
                    if not self._refers(script, call, ref):
                        continue
                    site = self._read_call(script, call, chain, target, depth)
                    if site is not None:
                        yield site
        finally:
            self._resolving.discard(key)

    def best_call(self, ref: Ref, depth: int = 0, exclude: ast.AST | None = None,
                  required: tuple[str, ...] = (), tiers: tuple[int, ...] | None = None) -> CallSite | None:
        """The call site that gives the most of ``required`` (all parameters read when empty), the
        better tier first, then the fewer assumptions, then the first; only from ``tiers`` when given."""
        best, best_key = None, None
        for index, site in enumerate(self.call_sites(ref, depth, exclude)):
            if tiers is not None and site.tier not in tiers:
                continue
            wanted = required or tuple(site.values)
            missing = sum(1 for p in wanted if isinstance(site.values.get(p, Unknown("", "")), Unknown))
            key = (missing, site.tier, len(site.assumed), index)
            if best_key is None or key < best_key:
                best, best_key = site, key
        return best

    def signature_of(self, ref: Ref) -> Any:
        """What binds a call's arguments for ``ref``: the live object, else a ``Func``, else the
        ``__init__`` of a class of the file read (``ast.arguments``); None when there is none."""
        live = self.live(ref)
        if isinstance(live, Func):
            return live.node.args
        if live is not NOTHING:
            return live
        script = self.script(ref.path)
        for node in script.tree.body if script is not None else ():
            if isinstance(node, ast.ClassDef) and node.name == ref.name:
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:
                    spec = init.args
                    return ast.arguments(posonlyargs=[], args=[*spec.posonlyargs, *spec.args][1:], vararg=spec.vararg,
                                         kwonlyargs=spec.kwonlyargs, kw_defaults=spec.kw_defaults, kwarg=spec.kwarg,
                                         defaults=spec.defaults[-len([*spec.posonlyargs, *spec.args][1:]):]
                                         if spec.defaults and len(spec.args) > 1 else [])
        return None

    def _refers(self, script: Script, call: ast.Call, ref: Ref) -> bool:
        """Whether ``call`` calls ``ref``: by a name bound to it, or as ``module.Name``."""
        func = call.func
        if script.path == ref.path:
            return isinstance(func, ast.Name)
        bindings = self._bindings(script)
        if isinstance(func, ast.Name):
            bound = bindings.get(func.id)
            return bound is not None and self._same(bound, ref)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner = bindings.get(func.value.id)
            if isinstance(owner, Ref) and owner.name is None:
                return self._same(self.attribute(owner, func.attr), ref)
        return False

    def _same(self, bound: Any, ref: Ref) -> bool:
        if isinstance(bound, Ref):
            return bound == ref
        live = self.live(ref)
        return live is not NOTHING and bound is live

    def _bindings(self, script: Script) -> dict[str, Any]:
        """What the script's imports (anywhere in it) bind each name to."""
        out: dict[str, Any] = {}
        for node in ast.walk(script.tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        star = self.bind_import(script, node.level, node.module, "*")
                        out.update(star if isinstance(star, dict) else {})
                    else:
                        out[alias.asname or alias.name] = self.bind_import(script, node.level, node.module,
                                                                           alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        out[alias.asname] = self.bind_import(script, 0, alias.name, None)
                    else:
                        top = alias.name.partition(".")[0]
                        out[top] = self.bind_import(script, 0, top, None)
        return out

    def _read_call(self, script: Script, call: ast.Call, chain: list[ast.AST], target: Any,
                   depth: int) -> CallSite | None:
        interp = Interpreter(script, self, depth)
        funcs = [n for n in chain if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        tier = _tier(script, funcs)
        try:
            if not funcs:
                scope = self.module_scope(script) if script.kind == "model" else Scope()
                interp.run(script.tree.body, scope, stop=call, path_only=script.kind == "model")
            else:
                func = funcs[-1]
                owner = next((n for n in reversed(chain) if isinstance(n, ast.ClassDef)), None)
                if len(funcs) > 1 or (owner is not None and chain.index(owner) > chain.index(func)):
                    return None  # a nested function, or a class inside a function
                params = self.bind_params(script, func, owner, depth)
                scope = Scope(dict(params), self.module_scope(script))
                interp.run(func.body, scope, stop=call)
            bound = interp.arguments(call, scope)
        except RecursionError:
            return None
        if isinstance(bound, Unknown):
            return None
        values = _bind(target, *bound)
        if values is None:
            return None
        assumed = list(interp.assumed)
        for name, value in values.items():
            if isinstance(value, Deferred):
                values[name] = _build(value, assumed)
        return CallSite(script.where(call), tier, values, tuple(assumed), tuple(interp.found), short_text(call, 120))


_IMPORTED = re.compile(rb"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import|import[ \t]+([\w., \t]+))", re.MULTILINE)


def value_sources(file: Path, memo: dict[Path, Any] | None = None) -> list[Path]:
    """The files whose text can change the constructor values gradlint finds for ``file``'s
    models, found without importing anything: the repository's Python files that import its
    module (or a package above it) or define ``argparse`` options, its READMEs, and shell scripts.

    Args:
        file: A resolved path.
        memo: Kept between calls of one run: what each repository's files import.
    """
    memo = {} if memo is None else memo
    repository = Repository.__new__(Repository)
    repository.file, repository.root = file, repository_root(file)
    repository._files = None
    if repository.root not in memo:
        index = []
        for path in repository.files():
            try:
                data = read_source(path) if path.name.endswith(".py") else b""
            except OSError:
                continue
            names = {part.decode() for m in _IMPORTED.finditer(data) for group in m.groups() if group
                     for part in re.split(rb"[\s.,]+", group) if part}
            index.append((path, names, b"add_argument" in data))
        memo[repository.root] = index
    modules = {file.stem, *(d.name for d in file.parents if repository.root in d.parents)}
    return [path for path, names, options in memo[repository.root] if path != file and (
        (path.name.endswith(".py") and (options or names & modules)) or path.name.endswith(".sh")
        or (path.name.endswith(".md") and (path.parent == file.parent or path.parent in file.parents)))]


def _build(deferred: Deferred, assumed: list[Assumed]) -> Any:
    """A model module a call site passes (``Seq2seq(encoder, decoder)``), built now."""
    try:
        built = deferred.func(*deferred.args, **deferred.kwargs)
    except Exception as exc:  # noqa: BLE001 - the model's code refused the values read
        return Unknown(deferred.func.__name__, deferred.where,
                       why=f"{deferred.where}: building {deferred.func.__name__} raised {type(exc).__name__}: {exc}")
    assumed += deferred.assumed
    return built


def _at_line(node: ast.stmt, line: int) -> ast.stmt:
    for child in ast.walk(node):
        if hasattr(child, "lineno"):
            child.lineno = line
            child.end_lineno = line
    return node


def _tier(script: Script, funcs: list[ast.AST]) -> int:
    if script.kind == "model":
        if not funcs or all(getattr(f, "name", "").lower().startswith(("test", "_test", "main")) for f in funcs):
            return 0
        return 3
    return 2 if script.kind == "readme" else 1


def _calls(tree: ast.AST, name: str) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
    """The calls whose callee ends in ``name``, each with the nodes enclosing it (outermost first)."""
    stack: list[tuple[ast.AST, list[ast.AST]]] = [(tree, [])]
    found: list[tuple[ast.Call, list[ast.AST]]] = []
    while stack:
        node, chain = stack.pop()
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute)
                                                                    and func.attr == name):
                found.append((node, chain))
        inner = [*chain, node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                    ast.Lambda)) else chain
        stack += [(child, inner) for child in ast.iter_child_nodes(node)]
    found.sort(key=lambda item: (item[0].lineno, item[0].col_offset))
    yield from ((call, chain) for call, chain in found if not any(isinstance(c, ast.Lambda) for c in chain))


def _bind(target: Any, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments by the target's parameter names; None when they do not fit it."""
    if isinstance(target, ast.arguments):
        return _bind_static(target, args, kwargs)
    try:
        bound = inspect.signature(target).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        param = bound.signature.parameters[name]
        if param.kind is param.VAR_KEYWORD and isinstance(value, dict):
            out.update(value)
        elif param.kind is not param.VAR_POSITIONAL:
            out[name] = value
    return out


def _option(node: ast.AST, path: Path) -> Found | None:
    """An ``add_argument('--name', default=<literal>)`` call, as the value it gives ``name``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
        return None
    flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    long = next((f for f in flags if f.startswith("--")), None)
    keywords = {k.arg: k.value for k in node.keywords if k.arg}
    if long is None or "default" not in keywords:
        return None
    try:
        value = ast.literal_eval(keywords["default"])
    except (ValueError, SyntaxError, TypeError):
        return None
    dest = keywords["dest"].value if isinstance(keywords.get("dest"), ast.Constant) else long[2:].replace("-", "_")
    return Found(dest, value, f"{shown_path(str(path))}:{node.lineno}", f"the default of {long}")


def _bind_static(spec: ast.arguments, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    positional = [p.arg for p in [*spec.posonlyargs, *spec.args]]
    if len(args) > len(positional) and spec.vararg is None:
        return None
    out = dict(zip(positional, args, strict=False))
    names = {*positional, *(p.arg for p in spec.kwonlyargs)}
    for key, value in kwargs.items():
        if key in out or (key not in names and spec.kwarg is None):
            return None
        out[key] = value
    return out
