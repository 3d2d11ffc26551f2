"""A small, restricted evaluator of Python source, for the values a repository spells out.

It reads a script (a training script, a README's code, the model file's ``__main__`` block) the
way a person does, never running it: literals and arithmetic, containers, names assigned
before the point of interest in the same scope, item and attribute assignment on the values it
built, ``argparse`` defaults, ``if`` blocks whose condition it can decide (the others are
skipped), ``**kwargs`` expansion, the pure builtins (``len``, ``int``, ``range``, ``math``...)
on values it knows, and the script's own functions, read the same way. Calls to the model
file's own classes and functions run for real (that is the model's own code, which gradlint
imports anyway), through what the ``Host`` allows. Anything else is ``Unknown``, carrying the
expression and the line where the script computes it.
"""

from __future__ import annotations

import ast
import copy
import operator
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from gradlint.load.conventions import convention_for
from gradlint.load.values import (
    BUILTINS,
    MATH,
    MAX_ITEMS,
    METHODS,
    NOTHING,
    PLAIN,
    VIEW_METHODS,
    Assumed,
    Deferred,
    External,
    Found,
    Func,
    Options,
    Parser,
    Ref,
    Script,
    Unknown,
    first_unknown,
    is_known,
    parser_call,
    short_text,
    sized,
)

__all__ = ["Host", "Interpreter", "Scope", "bind_arguments", "iter_calls"]

_SAME_MODULE = frozenset({"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "train", "eval",
                          "requires_grad_", "share_memory"})
_MAX_LOOP = 256      # the most iterations of a loop read
_MAX_DEPTH = 4       # the deepest chain of the script's own functions read
_BUDGET = 60_000     # nodes evaluated per interpreter, so a long script cannot stall a check


class Host(Protocol):
    """What the evaluator asks of the repository around the script."""

    def bind_import(self, script: Script, level: int, module: str | None, name: str | None) -> Any: ...
    def attribute(self, ref: Ref, name: str) -> Any: ...
    def live(self, ref: Ref) -> Any: ...
    def may_call(self, obj: Any) -> bool: ...
    def option_default(self, name: str) -> Found | None: ...
    def command_line(self, script: Script, option: str, convert: Callable[[str], Any]) -> Found | None: ...
    def bind_params(self, script: Script, func: ast.FunctionDef | ast.AsyncFunctionDef,
                    cls: ast.ClassDef | None, depth: int) -> dict[str, Any]: ...


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Stop(Exception):
    """The statement of interest was reached."""



_CONFIG_HOLDERS = {"config", "cfg", "args", "opt", "opts", "options", "params", "hparams", "hp", "flags", "conf",
                   "settings", "hyperparams", "model_args", "model_config", "arguments"}

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.LShift: operator.lshift,
        ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
        ast.MatMult: operator.matmul}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert}


class Scope:
    def __init__(self, names: dict[str, Any] | None = None, parent: Scope | None = None) -> None:
        self.names = names if names is not None else {}
        self.parent = parent

    def get(self, name: str) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return NOTHING

def _contains(stmt: ast.AST, node: ast.AST) -> bool:
    line = getattr(node, "lineno", None)
    if line is None or not hasattr(stmt, "lineno"):
        return False
    if not (stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno)):
        return False
    return any(n is node for n in ast.walk(stmt))


class Interpreter:
    """Reads one script's statements and expressions; see the module docstring.

    Attributes:
        assumed: Conventional sizes used for values computed at run time, in the order met.
        found: Values found away from the call site (option defaults, command lines).
        created: Ids of the objects its own calls built, which it may change.
    """

    def __init__(self, script: Script, host: Host, depth: int = 0) -> None:
        self.script, self.host, self.depth = script, host, depth
        self.assumed: list[Assumed] = []
        self.found: list[Found] = []
        self.created: set[int] = set()
        self.budget = _BUDGET

    # --- statements ---------------------------------------------------------------------------

    def run(self, body: list[ast.stmt], scope: Scope, stop: ast.AST | None = None, path_only: bool = False) -> bool:
        """Runs ``body`` in ``scope`` up to the statement holding ``stop``; True when it got there.

        With ``path_only``, the statements of ``body`` before that one are not read (the model
        file's module level, which its import ran already: ``scope`` holds what it bound).
        """
        try:
            if path_only and stop is not None:
                body = [s for s in body if _contains(s, stop)]
            self._block(body, scope, stop)
        except _Stop:
            return True
        except _Return:
            return False
        return False

    def _block(self, body: list[ast.stmt], scope: Scope, stop: ast.AST | None) -> None:
        for stmt in body:
            if stop is not None and _contains(stmt, stop):
                self._enter(stmt, scope, stop)
                raise _Stop
            self._stmt(stmt, scope)

    def _enter(self, stmt: ast.stmt, scope: Scope, stop: ast.AST) -> None:
        """Runs into the block of ``stmt`` that holds ``stop``, whatever its condition."""
        if isinstance(stmt, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try,
                             ast.TryStar)):
            if isinstance(stmt, (ast.For, ast.AsyncFor)):
                self._assign(stmt.target, Unknown(short_text(stmt.iter), self.script.where(stmt)), scope)
            if isinstance(stmt, (ast.With, ast.AsyncWith)):
                for item in stmt.items:
                    if item.optional_vars is not None:
                        self._assign(item.optional_vars, Unknown(short_text(item.context_expr),
                                                                 self.script.where(stmt)), scope)
            for name in ("body", "orelse", "finalbody"):
                block = getattr(stmt, name, None) or []
                if any(_contains(s, stop) for s in block):
                    self._block(block, scope, stop)
                    return
            for handler in getattr(stmt, "handlers", ()):
                if _contains(handler, stop):
                    self._block(handler.body, scope, stop)
                    return
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                if _contains(case, stop):
                    self._block(case.body, scope, stop)
                    return

    def _stmt(self, stmt: ast.stmt, scope: Scope) -> None:
        self._spend()
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value, scope)
            if isinstance(value, Unknown) and not value.why:
                value = self._unknown(stmt.value)  # the whole expression the script computes, at its line
            elif isinstance(value, Unknown) and value.why.endswith("before this point"):
                value = self._unknown(stmt.value)
            for target in stmt.targets:
                self._assign(target, value, scope)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self._assign(stmt.target, self.eval(stmt.value, scope), scope)
        elif isinstance(stmt, ast.AugAssign):
            current = self.eval(ast.Name(stmt.target.id, ast.Load()), scope) if isinstance(stmt.target, ast.Name) \
                else self.eval(_load(stmt.target), scope)
            self._assign(stmt.target, self._binop(stmt.op, current, self.eval(stmt.value, scope), stmt), scope)
        elif isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, ast.Call) and self._is_mutation(stmt.value, scope):
                self.eval(stmt.value, scope)
        elif isinstance(stmt, ast.If):
            test = self._truth(stmt.test, scope)
            if test is True:
                self._block(stmt.body, scope, None)
            elif test is False:
                self._block(stmt.orelse, scope, None)
            else:
                # Skipped: a name it would bind stays as it was, or says why it has no value.
                where = self.script.where(stmt)
                stored = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
                for name in sorted(n for n in stored if scope.get(n) is NOTHING):
                    scope.names[name] = Unknown(name, where, why=f"{where} sets {name} under a condition gradlint "
                                                                 f"cannot decide ({short_text(stmt.test, 50)})")
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            items = self.eval(stmt.iter, scope)
            if isinstance(items, Mapping):
                items = list(items)
            if isinstance(items, (list, tuple, range, str)) and is_known(list(items)[:_MAX_LOOP]) \
                    and len(items) <= _MAX_LOOP:
                for item in items:
                    self._assign(stmt.target, item, scope)
                    self._block(stmt.body, scope, None)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None:
                    self._assign(item.optional_vars, Unknown(short_text(item.context_expr), self.script.where(stmt)),
                                 scope)
            self._block(stmt.body, scope, None)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            self._block(stmt.body, scope, None)
            self._block(stmt.orelse, scope, None)
            self._block(stmt.finalbody, scope, None)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope.names[stmt.name] = Func(self.script, stmt, scope)
        elif isinstance(stmt, ast.ClassDef):
            scope.names[stmt.name] = Unknown(f"class {stmt.name}", self.script.where(stmt),
                                             why=f"{self.script.where(stmt)} defines the class {stmt.name}")
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname:
                    scope.names[alias.asname] = self.host.bind_import(self.script, 0, alias.name, None)
                else:
                    top = alias.name.partition(".")[0]
                    scope.names[top] = self.host.bind_import(self.script, 0, top, None)
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if alias.name == "*":
                    star = self.host.bind_import(self.script, stmt.level, stmt.module, "*")
                    if isinstance(star, Mapping):
                        scope.names.update(star)
                    continue
                scope.names[alias.asname or alias.name] = self.host.bind_import(
                    self.script, stmt.level, stmt.module, alias.name)
        elif isinstance(stmt, ast.Return):
            raise _Return(self.eval(stmt.value, scope) if stmt.value is not None else None)
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    scope.names.pop(target.id, None)
        elif isinstance(stmt, ast.Global | ast.Nonlocal | ast.Pass | ast.Break | ast.Continue):
            return
        # while, match, raise, assert: skipped; what they would bind stays as it was

    def _is_mutation(self, call: ast.Call, scope: Scope) -> bool:
        """Whether an expression statement changes a value the evaluator holds (``d.update(...)``,
        ``parser.add_argument(...)``): the only calls run for their effect."""
        if not isinstance(call.func, ast.Attribute):
            return False
        owner = self.eval(call.func.value, scope)
        return isinstance(owner, (list, dict, Parser)) or id(owner) in self.created

    def _assign(self, target: ast.expr, value: Any, scope: Scope) -> None:
        if isinstance(target, ast.Name):
            scope.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            starred = [i for i, e in enumerate(target.elts) if isinstance(e, ast.Starred)]
            if isinstance(value, (list, tuple)) and not starred and len(value) == len(target.elts):
                for element, item in zip(target.elts, value, strict=True):
                    self._assign(element, item, scope)
            else:
                unknown = value if isinstance(value, Unknown) else Unknown(short_text(target), "", why="")
                for element in target.elts:
                    inner = element.value if isinstance(element, ast.Starred) else element
                    self._assign(inner, unknown, scope)
        elif isinstance(target, ast.Attribute):
            owner = self.eval(target.value, scope)
            if isinstance(owner, Options):
                setattr(owner, target.attr, value)
            elif id(owner) in self.created and not isinstance(owner, Unknown):
                value = self._assume(target.attr, value, short_text(target))
                if not isinstance(value, Unknown):
                    try:
                        setattr(owner, target.attr, value)
                    except Exception:  # noqa: BLE001 - a frozen or slotted config: the value stays as it was
                        pass
        elif isinstance(target, ast.Subscript):
            owner = self.eval(target.value, scope)
            key = self.eval(target.slice, scope)
            if isinstance(owner, (dict, list)) and is_known(key) and not isinstance(key, (list, dict)):
                try:
                    owner[key] = value
                except (IndexError, TypeError):
                    pass
        elif isinstance(target, ast.Starred):
            self._assign(target.value, value, scope)

    def _assume(self, name: str, value: Any, label: str | None = None) -> Any:
        """``value``, or the conventional size for ``name`` when the script computes it at run time."""
        if not isinstance(value, Unknown):
            return value
        convention = convention_for(name)
        if convention is None:
            return value
        self.assumed.append(Assumed(label or name, convention.value, convention.kind, value))
        return convention.value

    def _truth(self, test: ast.expr, scope: Scope) -> bool | None:
        if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__":
            return self.script.kind != "model" or None
        value = self.eval(test, scope)
        if isinstance(value, Unknown) or not is_known(value) or isinstance(value, (Ref, External, Func, Parser)):
            return None
        try:
            return bool(value)
        except Exception:  # noqa: BLE001 - a live object whose truth raises
            return None

    # --- expressions --------------------------------------------------------------------------

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise RecursionError("evaluation budget spent")

    def eval(self, node: ast.expr, scope: Scope) -> Any:
        """The value of ``node`` in ``scope``, or an ``Unknown`` saying what could not be read."""
        self._spend()
        try:
            value = self._eval(node, scope)
            if isinstance(value, Unknown) and not value.why and not isinstance(node, (ast.Name, ast.Starred)):
                return self._unknown(node)  # the expression the script computes, as written, at its line
            return value
        except (_Return, _Stop, RecursionError):
            raise
        except Exception:  # noqa: BLE001 - arithmetic on odd values, a builtin refusing its arguments
            return self._unknown(node)

    def _unknown(self, node: ast.AST, why: str = "") -> Unknown:
        return Unknown(short_text(node), self.script.where(node), why)

    def _eval(self, node: ast.expr, scope: Scope) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self._name(node, scope)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items: list[Any] = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    inner = self.eval(element.value, scope)
                    if not isinstance(inner, (list, tuple, range, str)):
                        return self._unknown(node)
                    items.extend(inner)
                else:
                    items.append(self.eval(element, scope))
            sized(items)
            return tuple(items) if isinstance(node, ast.Tuple) else (set(items) if isinstance(node, ast.Set)
                                                                      else items)
        if isinstance(node, ast.Dict):
            out: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values, strict=True):
                if key is None:
                    inner = self.eval(value, scope)
                    if not isinstance(inner, Mapping):
                        return self._unknown(node)
                    out.update(inner)
                else:
                    k = self.eval(key, scope)
                    if isinstance(k, Unknown):
                        return k
                    out[k] = self.eval(value, scope)
            return out
        if isinstance(node, ast.BinOp):
            return self._binop(node.op, self.eval(node.left, scope), self.eval(node.right, scope), node)
        if isinstance(node, ast.UnaryOp):
            value = self.eval(node.operand, scope)
            return value if isinstance(value, Unknown) else _UNARY[type(node.op)](value)
        if isinstance(node, ast.BoolOp):
            result: Any = None
            for operand in node.values:
                result = self.eval(operand, scope)
                if isinstance(result, Unknown):
                    return result
                if isinstance(node.op, ast.And) and not result:
                    return result
                if isinstance(node.op, ast.Or) and result:
                    return result
            return result
        if isinstance(node, ast.Compare):
            left = self.eval(node.left, scope)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.eval(right_node, scope)
                if isinstance(left, Unknown) or isinstance(right, Unknown):
                    return left if isinstance(left, Unknown) else right
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            test = self._truth(node.test, scope)
            if test is None:
                return self._unknown(node)
            return self.eval(node.body if test else node.orelse, scope)
        if isinstance(node, ast.Attribute):
            return self._attribute(node, scope)
        if isinstance(node, ast.Subscript):
            owner = self.eval(node.value, scope)
            key = self.eval(node.slice, scope)
            if isinstance(owner, Unknown):
                return owner
            if isinstance(key, Unknown):
                return key
            if isinstance(owner, (list, tuple, dict, str, range)):
                return owner[key]
            return self._unknown(node)
        if isinstance(node, ast.Slice):
            parts = [self.eval(p, scope) if p is not None else None for p in (node.lower, node.upper, node.step)]
            return (first_unknown(parts) or slice(*parts))
        if isinstance(node, ast.JoinedStr):
            out_text = ""
            for part in node.values:
                if isinstance(part, ast.Constant):
                    out_text += str(part.value)
                elif isinstance(part, ast.FormattedValue):
                    value = self.eval(part.value, scope)
                    if isinstance(value, Unknown) or not isinstance(value, PLAIN + (list, tuple, dict)):
                        return self._unknown(node)
                    spec = self.eval(part.format_spec, scope) if part.format_spec is not None else ""
                    converted = {115: str, 114: repr, 97: ascii}.get(part.conversion, lambda v: v)(value)
                    out_text += format(converted, spec)
            return sized(out_text)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return self._comprehension(node, scope)
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.Starred):
            return self.eval(node.value, scope)
        return self._unknown(node)

    def _name(self, node: ast.Name, scope: Scope) -> Any:
        value = scope.get(node.id)
        if value is not NOTHING:
            return value
        if node.id in BUILTINS or node.id in ("print", "vars", "isinstance", "getattr", "hasattr", "type", "open",
                                                "super"):
            return External(f"builtins.{node.id}")
        if node.id == "__name__":
            return "__main__" if self.script.kind != "model" else "<module>"
        return self._unknown(node, why=f"{self.script.where(node)} uses {node.id}, which it does not define "
                                       "before this point")

    def _binop(self, op: ast.operator, left: Any, right: Any, node: ast.AST) -> Any:
        if isinstance(left, Unknown):
            return left
        if isinstance(right, Unknown):
            return right
        if isinstance(op, ast.Pow) and (not isinstance(right, (int, float)) or abs(right) > 64):
            return self._unknown(node)
        if isinstance(op, (ast.LShift,)) and (not isinstance(right, int) or right > 64):
            return self._unknown(node)
        if isinstance(op, ast.Mult) and isinstance(left, (str, list, tuple)) and isinstance(right, int) \
                and len(left) * right > MAX_ITEMS:
            return self._unknown(node)
        if isinstance(op, ast.Mult) and isinstance(right, (str, list, tuple)) and isinstance(left, int) \
                and len(right) * left > MAX_ITEMS:
            return self._unknown(node)
        if not (isinstance(left, PLAIN + (list, tuple, set, frozenset, dict))
                and isinstance(right, PLAIN + (list, tuple, set, frozenset, dict))):
            return self._unknown(node)
        return sized(_BIN[type(op)](left, right))

    def _attribute(self, node: ast.Attribute, scope: Scope) -> Any:
        owner = self.eval(node.value, scope)
        name = node.attr
        if isinstance(owner, Unknown):
            found = self._option_by_name(node)
            return found if found is not None else Unknown(short_text(node), self.script.where(node), owner.why)
        if isinstance(owner, Ref):
            return self.host.attribute(owner, name)
        if isinstance(owner, External):
            if owner.name == "math" and name in MATH:
                return MATH[name]
            return External(f"{owner.name}.{name}")
        if isinstance(owner, Options):
            try:
                return getattr(owner, name)
            except AttributeError:
                return self._unknown(node, why=f"{self.script.where(node)}: the parser defines no option {name}")
        if isinstance(owner, (Parser, Func)):
            return ("method", owner, name)
        if isinstance(owner, Deferred):
            # model.to(device), .cuda(), .train(): the same model, for what is read here.
            return ("method", owner, name) if name in _SAME_MODULE else self._unknown(node)
        if isinstance(owner, PLAIN + (list, tuple, dict)) and name in METHODS.get(type(owner), ()):
            return ("method", owner, name)
        if isinstance(owner, tuple) and len(owner) == 3 and owner[0] == "method":
            return self._unknown(node)
        if isinstance(owner, PLAIN + (list, tuple, dict, set)):
            return self._unknown(node)
        # An object the script's calls built (a config), or a class or object of the model's code.
        try:
            return getattr(owner, name)
        except Exception:  # noqa: BLE001 - AttributeError, or a property that raises
            return self._unknown(node)

    def _option_by_name(self, node: ast.Attribute) -> Found | None:
        """``self.config.d_conv_dim``, ``opt.lr``...: a value held by an object the script got at
        run time, whose name an ``argparse`` option of the repository defines."""
        holder = node.value
        holder_name = holder.attr if isinstance(holder, ast.Attribute) else (
            holder.id if isinstance(holder, ast.Name) else None)
        if holder_name is None or holder_name.lower() not in _CONFIG_HOLDERS:
            return None
        found = self.host.option_default(node.attr)
        if found is None:
            return None
        self.found.append(found)
        return found.value

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp, scope: Scope) -> Any:
        if len(node.generators) != 1 or node.generators[0].is_async:
            return self._unknown(node)
        gen = node.generators[0]
        items = self.eval(gen.iter, scope)
        if isinstance(items, Mapping):
            items = list(items)
        if not isinstance(items, (list, tuple, range, str)) or len(items) > MAX_ITEMS:
            return self._unknown(node)
        inner = Scope({}, scope)
        out: list[Any] = []
        for item in items:
            self._assign(gen.target, item, inner)
            conditions = [self.eval(c, inner) for c in gen.ifs]
            if any(isinstance(c, Unknown) for c in conditions):
                return self._unknown(node)
            if not all(conditions):
                continue
            if isinstance(node, ast.DictComp):
                out.append((self.eval(node.key, inner), self.eval(node.value, inner)))
            else:
                out.append(self.eval(node.elt, inner))
        if isinstance(node, ast.DictComp):
            return dict(out)
        return set(out) if isinstance(node, ast.SetComp) else out

    # --- calls --------------------------------------------------------------------------------

    def arguments(self, call: ast.Call, scope: Scope) -> tuple[list[Any], dict[str, Any]] | Unknown:
        """The positional and keyword arguments of ``call``, ``*``/``**`` expanded."""
        args: list[Any] = []
        for arg in call.args:
            if isinstance(arg, ast.Starred):
                value = self.eval(arg.value, scope)
                if not isinstance(value, (list, tuple, range)):
                    return self._unknown(arg)
                args.extend(value)
            else:
                args.append(self.eval(arg, scope))
        kwargs: dict[str, Any] = {}
        for kw in call.keywords:
            value = self.eval(kw.value, scope)
            if kw.arg is None:
                if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                    return self._unknown(kw.value)
                kwargs.update(value)
            else:
                kwargs[kw.arg] = value
        return args, kwargs

    def _call(self, node: ast.Call, scope: Scope) -> Any:
        func = self.eval(node.func, scope)
        if isinstance(func, Unknown):
            return self._unknown(node)
        bound = self.arguments(node, scope)
        if isinstance(bound, Unknown):
            return bound
        args, kwargs = bound
        if isinstance(func, tuple) and len(func) == 3 and func[0] == "method":
            return self._method(func[1], func[2], args, kwargs, node)
        if isinstance(func, Func):
            return self.call_function(func, args, kwargs, node)
        if isinstance(func, External):
            return self._external(func.name, args, kwargs, node)
        if isinstance(func, Ref):
            live = self.host.live(func)
            if live is NOTHING or live is None:
                return self._unknown(node)
            func = live
        if any(func is f for f in MATH.values()):
            unknown = first_unknown([*args, *kwargs.values()])
            return unknown if unknown is not None else func(*args, **kwargs)
        if callable(func) and (id(getattr(func, "__self__", None)) in self.created or self.host.may_call(func)):
            return self.call_live(func, args, kwargs, node)
        return self._unknown(node)

    def call_live(self, func: Any, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
        """Calls the model's own code with the arguments read; a value computed at run time for a
        parameter named like a conventional size gets that size (``Assumed``)."""
        import inspect

        try:
            signature = inspect.signature(func)
            bound = signature.bind_partial(*args, **kwargs)
        except (TypeError, ValueError):
            signature, bound = None, None
        before = len(self.assumed)
        if bound is not None and signature is not None:
            for name, value in list(bound.arguments.items()):
                if isinstance(value, Unknown):
                    assumed = self._assume(name, value)
                    if isinstance(assumed, Unknown):
                        param = signature.parameters[name]
                        if param.default is param.empty or param.kind in (param.VAR_POSITIONAL,
                                                                          param.VAR_KEYWORD):
                            del self.assumed[before:]
                            return assumed
                        del bound.arguments[name]  # its default, as a run without the value would
                    else:
                        bound.arguments[name] = assumed
            args, kwargs = list(bound.args), dict(bound.kwargs)
        unknown = first_unknown([*args, *kwargs.values()])
        if unknown is not None:
            del self.assumed[before:]
            return unknown
        nn = sys.modules.get("torch.nn")
        if isinstance(func, type) and nn is not None and issubclass(func, nn.Module):
            made = tuple(self.assumed[before:])
            del self.assumed[before:]
            return Deferred(func, tuple(args), dict(kwargs), made, self.script.where(node))
        try:
            result = func(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        except Exception as exc:  # noqa: BLE001 - the model's code refused these values
            return self._unknown(node, why=f"{self.script.where(node)}: {short_text(node)} raised "
                                           f"{type(exc).__name__}: {exc}")
        self.created.add(id(result))
        return result

    def call_function(self, func: Func, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
        """Reads one of the script's own functions on these arguments."""
        if self.depth >= _MAX_DEPTH:
            return self._unknown(node)
        defined_in = func.scope if func.scope is not None else Scope()
        params = bind_arguments(func.node.args, args, kwargs, self, defined_in)
        if params is None:
            return self._unknown(node)
        inner = Interpreter(func.script, self.host, self.depth + 1)
        inner.budget, inner.created = self.budget, self.created
        scope = Scope(params, defined_in)
        try:
            inner._block(func.node.body, scope, None)
            result: Any = None
        except _Return as ret:
            result = ret.value
        finally:
            self.budget = inner.budget
            self.assumed += inner.assumed
            self.found += inner.found
        return result

    def _method(self, owner: Any, name: str, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
        if isinstance(owner, Parser):
            return parser_call(owner, name, args, kwargs, node, self.host, self.found)
        if isinstance(owner, Deferred):
            return owner
        unknown = first_unknown([*args, *kwargs.values()])
        if unknown is not None:
            return unknown
        if isinstance(owner, Options):
            return self._unknown(node)
        result = getattr(owner, name)(*args, **kwargs)
        if name in VIEW_METHODS:
            result = list(result)
        return sized(result)

    def _external(self, name: str, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
        if name in ("argparse.ArgumentParser", "configargparse.ArgumentParser", "configargparse.ArgParser"):
            return Parser(self.script)
        if name.startswith("builtins."):
            short = name.rpartition(".")[2]
            if short == "vars" and len(args) == 1 and isinstance(args[0], Options):
                return dict(args[0].__dict__["_values"])
            if short == "dict" and not args:
                return dict(kwargs)
            fn = BUILTINS.get(short)
            if fn is None:
                return self._unknown(node)
            unknown = first_unknown([*args, *kwargs.values()])
            if unknown is not None:
                return unknown
            if not all(isinstance(a, PLAIN + (list, tuple, dict, set, frozenset, range)) for a in args):
                return self._unknown(node)
            return sized(fn(*args, **kwargs))
        if name.startswith("math.") and name[5:] in MATH:
            unknown = first_unknown([*args, *kwargs.values()])
            return unknown if unknown is not None else MATH[name[5:]](*args, **kwargs)
        return self._unknown(node)

def _load(target: ast.expr) -> ast.expr:
    """A Store-context target as a Load-context expression."""
    node = copy.copy(target)
    node.ctx = ast.Load()
    return node


def bind_arguments(spec: ast.arguments, args: list[Any], kwargs: dict[str, Any], interpreter: Interpreter,
                   scope: Scope, skip_self: bool = False) -> dict[str, Any] | None:
    """Binds call arguments to a function's parameters as Python does, defaults read in ``scope``;
    a parameter no argument and no default gives is ``Unknown``. None when they do not fit."""
    positional = [*spec.posonlyargs, *spec.args]
    if skip_self and positional:
        positional = positional[1:]
    names: dict[str, Any] = {}
    if len(args) > len(positional) and spec.vararg is None:
        return None
    for param, value in zip(positional, args, strict=False):
        names[param.arg] = value
    if spec.vararg is not None:
        names[spec.vararg.arg] = tuple(args[len(positional):])
    extra: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in names:
            return None
        if any(p.arg == key for p in [*positional, *spec.kwonlyargs]):
            names[key] = value
        elif spec.kwarg is not None:
            extra[key] = value
        else:
            return None
    if spec.kwarg is not None:
        names[spec.kwarg.arg] = extra
    defaults = dict(zip([p.arg for p in positional][len(positional) - len(spec.defaults):], spec.defaults,
                        strict=True)) if spec.defaults else {}
    defaults.update({p.arg: d for p, d in zip(spec.kwonlyargs, spec.kw_defaults, strict=True) if d is not None})
    for param in [*positional, *spec.kwonlyargs]:
        if param.arg not in names:
            if param.arg in defaults:
                names[param.arg] = interpreter.eval(defaults[param.arg], scope)
            else:
                names[param.arg] = Unknown(f"the parameter {param.arg}", interpreter.script.where(param))
    return names


def iter_calls(tree: ast.AST) -> Iterator[ast.Call]:
    """Every call in ``tree``, in source order."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return iter(sorted(calls, key=lambda c: (c.lineno, c.col_offset)))
