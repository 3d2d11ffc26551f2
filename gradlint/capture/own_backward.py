"""What the model's own backward does that its captured graph cannot show.

The captured graph holds the forward's ops, and the engine takes each op's backward to be the
derivative of its forward. Two things in a forward break that assumption without leaving a
trace in the graph: a custom ``torch.autograd.Function``, whose ``backward`` is the author's
(``torch.export`` records only its forward), and a hook that a forward registers on an
intermediate tensor (``h.register_hook(...)``), which can rewrite the gradient passing it.

Both are found from the same fake forward the capture runs: hook registrations through a
``TorchFunctionMode`` (``Tensor.register_hook`` dispatches to it), Functions by walking the
autograd graph of the outputs, so only those on a path from the parameters to an output count.
Module and parameter hooks are attributes of the model and are read from it
(``gradlint.api.backward_hooks``).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_TORCH_DIR = os.path.dirname(torch.__file__)
# The classes behind ``found``'s descriptions, for the captures that test what a Function
# computes (``capture.function_scans``).
_CLASSES: dict[str, type] = {}


def _site(obj: Any) -> str:
    """``path:line`` of a class or function, relative to the working directory when under it."""
    try:
        path = inspect.getsourcefile(obj) or ""
        line = inspect.getsourcelines(obj)[1] if not inspect.isfunction(obj) else obj.__code__.co_firstlineno
    except (OSError, TypeError):
        return ""
    rel = os.path.relpath(path) if path and not os.path.relpath(path).startswith("..") else path
    return f"{rel}:{line}"


class HookCalls(TorchFunctionMode):
    """Sees ``Tensor.register_hook`` calls made during a forward, on tensors that carry a gradient."""

    def __init__(self):
        super().__init__()
        self.hooks: list[tuple[Any, str]] = []  # (the tensor's grad_fn, where the hook is defined)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.register_hook and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            hook = args[1] if len(args) > 1 else (kwargs or {}).get("hook")
            if t.requires_grad and t.grad_fn is not None:
                self.hooks.append((t.grad_fn, _site(hook) if hook is not None else ""))
        return func(*args, **(kwargs or {}))


def _trusted(cls: type) -> bool:
    """Functions that torch itself defines: their backward is the derivative (checkpointing
    recomputes the forward), and a module's backward hook is read from the model instead."""
    path = inspect.getsourcefile(cls) if hasattr(cls, "__module__") else None
    return (cls.__module__ or "").startswith("torch.") or bool(path and path.startswith(_TORCH_DIR))


def found(out: Any, hooks: list[tuple[Any, str]] = ()) -> tuple[str, ...]:
    """Custom autograd Functions and forward-registered tensor hooks on the gradient paths of
    ``out``: one description each, with where it is defined.

    Args:
        out: The forward's output (any nesting of tensors).
        hooks: What ``HookCalls`` saw during that forward.
    """
    roots = [t.grad_fn for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set[Any] = set()
    functions: dict[type, None] = {}
    stack = list(roots)
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        cls = getattr(fn, "_forward_cls", None)
        if isinstance(fn, torch.autograd.function.BackwardCFunction) and cls is not None and not _trusted(cls):
            functions.setdefault(cls, None)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    out_: list[str] = []
    for cls in functions:
        site = _site(cls)
        out_.append(f"custom autograd.Function {cls.__qualname__}" + (f" ({site})" if site else ""))
        _CLASSES[out_[-1]] = cls
    sites = list(dict.fromkeys(site for fn, site in hooks if fn in seen))
    for site in sites:
        out_.append("tensor hook registered in forward" + (f" ({site})" if site else ""))
    return tuple(out_)


def function_class(entry: str) -> type | None:
    """The class of a custom autograd Function that ``found`` described (this process's last)."""
    return _CLASSES.get(entry)


def is_function(entry: str) -> bool:
    """Whether a description from ``found`` is a custom autograd Function (not a hook)."""
    return entry.startswith("custom autograd.Function")
