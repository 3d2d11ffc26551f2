"""Capture's fake tensors without torch's compiler.

A first fake-tensor forward imports ``torch._dynamo``, whose ``__init__`` imports the whole
compiler: about 0.9 s, more than a one-file ``gradlint check`` spends on its analysis
(``benchmarks/speed.py --only floor``). gradlint compiles nothing; ``compiler_unloaded`` and
``fake_tensor`` keep that import out of capture, and ``no_idle_trace_handler`` keeps torch's
structured-trace logging from capturing a Python stack for every fake tensor.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import sys
import types
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

_PACKAGE = "torch._dynamo"


def fake_tensor(mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
    """A fake tensor with ``tensor``'s shape, strides, dtype, device and ``requires_grad``.

    Made by a factory call under the mode rather than ``mode.from_tensor``, whose every call
    imports ``torch._dynamo.source`` (and with it the compiler). What ``from_tensor`` adds,
    storage aliasing between distinct tensors, capture does not use: a tensor met twice is
    faked once, by the caller's memo. Tensors that are not plain strided ones take
    ``from_tensor``.
    """
    if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.layout != torch.strided or tensor.is_quantized:
        return mode.from_tensor(tensor, static_shapes=True)
    from_meta = getattr(mode.fake_tensor_converter, "from_meta_and_device", None)
    if from_meta is not None:
        # A fresh meta tensor wrapped as it is: a third of the factory call's cost, which a
        # ResNet-50's 320 weights and buffers pay on every check. The parameter flag is set as
        # nn.Parameter sets it on a tensor subclass, without its detach through the mode.
        meta = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device="meta")
        out = from_meta(mode, meta, tensor.device)
        if tensor.requires_grad:
            out.requires_grad_(True)
        if isinstance(tensor, nn.Parameter):
            out._is_param = True
        return out
    with mode:
        out = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):  # torch.export checks its state dict holds parameters
            return nn.Parameter(out, requires_grad=tensor.requires_grad)
    return out.requires_grad_(tensor.requires_grad) if tensor.requires_grad else out


@contextlib.contextmanager
def no_idle_trace_handler() -> Iterator[None]:
    """Detaches torch's structured-trace handler while capture runs, where no trace is asked for.

    torch attaches a ``LazyTraceHandler`` to its ``torch.__trace`` logger at import, and the
    handler drops itself on its first record when no trace directory is set (``TORCH_TRACE``).
    Until then every fake tensor made logs its storage with a captured Python stack, whose
    symbolization imports ``torch._inductor`` and with it the compiler; ``quiet`` disables
    the logger, so the handler never sees the record that would remove it.
    """
    logger = logging.getLogger("torch.__trace")
    idle = [h for h in logger.handlers if type(h).__name__ == "LazyTraceHandler" and getattr(h, "root_dir", "") is None]
    for handler in idle:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in idle:
            if handler not in logger.handlers:
                logger.addHandler(handler)


class _ConfigOnly(types.ModuleType):
    """``torch._dynamo`` while capture runs, with its ``config`` submodule and nothing else
    loaded; any other attribute imports the real package, which then replaces it."""

    def __getattr__(self, name: str) -> object:
        return getattr(importlib.import_module(_PACKAGE), name)


@contextlib.contextmanager
def compiler_unloaded() -> Iterator[None]:
    """Fake tensors and dispatch modes, for the duration of capture, without the compiler.

    Three things import ``torch._dynamo`` (and the whole compiler behind its ``__init__``) on a
    first fake-tensor forward, and none of them needs it when nothing is compiled:
    ``FakeTensorMode`` reads flags from ``torch._dynamo.config``; ``mode.from_tensor`` imports
    ``torch._dynamo.source`` (``fake_tensor`` makes fake tensors another way); and torch wraps
    dispatch modes, decompositions and more in ``torch._disable_dynamo``, whose wrapper imports
    the compiler on its first call to build the function that keeps it from tracing in.

    So, while capture runs, ``torch._dynamo`` is a stand-in that holds the real config module
    (loaded alone, as a submodule of the stand-in, and left in ``sys.modules``, so the real
    package's ``from . import config`` takes that same module later) and imports the real
    package for anything else; and each function wrapped so far stands for its own disabled
    version (the attribute the wrapper caches it in). Both are undone on exit. Where the
    compiler is already imported, nothing is done.
    """
    if _PACKAGE in sys.modules or "_dynamo" in torch.__dict__:
        yield
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        yield
        return
    stand_in = _ConfigOnly(_PACKAGE)
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules[_PACKAGE] = stand_in
    try:
        # Loaded once per process; a later stand-in takes the module already loaded.
        stand_in.config = importlib.import_module(_PACKAGE + ".config")
    finally:
        if sys.modules.get(_PACKAGE) is stand_in:
            del sys.modules[_PACKAGE]
    torch._dynamo = stand_in
    undisabled = _undisabled()
    try:
        yield
    finally:
        for fn in undisabled:
            if fn.__dict__.get("__dynamo_disable") is fn:
                del fn.__dynamo_disable
        if torch.__dict__.get("_dynamo") is stand_in:
            del torch._dynamo


_WRAPPED: list[Callable] | None = None


def _wrapped() -> list[Callable]:
    """The functions ``torch._disable_dynamo`` has wrapped, found once per process (a scan of
    the heap, about 15 ms): torch wraps them as its modules are imported, and one wrapped later
    only costs the compiler's import on its first call."""
    global _WRAPPED
    if _WRAPPED is None:
        import torch._compile

        codes = [c for c in torch._compile._disable_dynamo.__code__.co_consts
                 if isinstance(c, types.CodeType) and c.co_name == "inner" and "fn" in c.co_freevars]
        _WRAPPED = []
        if len(codes) == 1:
            slot = codes[0].co_freevars.index("fn")
            _WRAPPED = [w.__closure__[slot].cell_contents for w in gc.get_referrers(codes[0])
                        if isinstance(w, types.FunctionType) and w.__closure__ is not None]
    return _WRAPPED


def _undisabled() -> list[Callable]:
    """Every wrapped function not yet called, made to stand for its own disabled version; the
    list of them."""
    out = []
    for fn in _wrapped():
        if getattr(fn, "__dynamo_disable", None) is None and hasattr(fn, "__dict__"):
            fn.__dynamo_disable = fn
            out.append(fn)
    return out
