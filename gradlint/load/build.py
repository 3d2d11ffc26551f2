"""Building a discovered target: calling its factory or class with its arguments, checked first
against the signature, with what the user's code raises placed in their file."""

from __future__ import annotations

import inspect
from typing import Any

from gradlint.base.errors import LoadError
from gradlint.load.discovery import Target, kwargs_hint
from gradlint.load.sandbox import user_code
from gradlint.load.tracebacks import innermost_line, user_error

__all__ = ["check_unknown", "instantiate"]


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else type(value).__name__


def check_unknown(target: Target, kwargs: dict[str, Any]) -> None:
    """Raises when ``kwargs`` names an argument the class or factory does not take, with the
    closest one it does: a misspelt argument is also the cause of the "missing" one it was
    meant to be, so this is said first."""
    try:
        params = inspect.signature(target.obj).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params or params[k].kind is params[k].POSITIONAL_ONLY]
    if unknown:
        import difflib

        what = f"{target.name}'s constructor" if target.kind == "class" else f"the factory {target.name}"
        close = [f"{m[0]!r} for {k!r}" for k in unknown if (m := difflib.get_close_matches(k, list(params), n=1))]
        raise LoadError(f"{what} takes no argument {', '.join(unknown)}", path=str(target.path), line=target.line,
                        hint=(f"did you mean {', '.join(close)}? " if close else "")
                        + f"it takes: {', '.join(params) or 'no arguments'}")


def _check_call(target: Target, kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(target.obj).parameters
    except (TypeError, ValueError):
        return
    where = {"path": str(target.path), "line": target.line}
    what = f"{target.name}'s constructor" if target.kind == "class" else f"the factory {target.name}"
    check_unknown(target, kwargs)
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise LoadError(f"{what} needs arguments: {', '.join(missing)}", **where,
                        hint=kwargs_hint(target.path, target.name, missing))


def instantiate(target: Target, kwargs: dict[str, Any] | None = None) -> Any:
    """Builds the model a target describes.

    Args:
        target: From ``discover``.
        kwargs: Keyword arguments for the factory or class; they override the decorator's.

    Returns:
        The ``nn.Module``.

    Raises:
        LoadError: When arguments are missing (with a hint showing how to declare them) or
            unknown, when the user's code raises (at the innermost line of their file, with the
            trimmed traceback in ``traceback_text``), or when a factory returns no ``nn.Module``.
    """
    from torch import nn

    if target.kind == "instance":
        if kwargs:
            raise LoadError(f"{target.name} is an nn.Module instance; it takes no kwargs",
                            path=str(target.path), line=target.line)
        return target.obj
    merged = {**((target.options.kwargs or {}) if target.options is not None else {}), **(kwargs or {})}
    from gradlint.capture import sites

    _check_call(target, merged)
    try:
        with user_code(target.path), sites.recording() as recorded:
            built = target.obj(**merged)
    except (Exception, SystemExit) as exc:
        raise user_error(LoadError, f"building {target.name} raised {type(exc).__name__}: {exc}", exc,
                         str(target.path), innermost_line(exc, target.path) or target.line) from exc
    if not isinstance(built, nn.Module):
        hint = ("return the model alone; gradlint makes its own inputs" if isinstance(built, tuple)
                else "return the nn.Module the factory builds")
        raise LoadError(f"the factory {target.name} returned {_brief(built)}, not an nn.Module",
                        path=str(target.path), line=target.line, hint=hint)
    sites.attach(built, recorded)
    return built
