"""The meta-device copy every capture path runs, and quiet torch while it does."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import warnings
from typing import Any

import torch
import torch.nn as nn


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device.

    The copy shares no storage with the user's model, and copying costs no weight memory:
    tensors are replaced through deepcopy's memo before they would be copied.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters(recurse=True):
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers(recurse=True):
        if id(b) not in memo:
            memo[id(b)] = torch.empty_like(b, device="meta")
    # Plain tensor attributes too: legacy weight_norm keeps its computed weight as one, a
    # non-leaf tensor that deepcopy refuses to copy.
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and id(value) not in memo:
                memo[id(value)] = torch.empty_like(value, device="meta")
    # RNN modules keep a list of their weights; the memo maps those entries too.
    return copy.deepcopy(model, memo)



@contextlib.contextmanager
def caches_kept(model: nn.Module):
    """Forgets, on exit, what a forward on fake or meta tensors left in the ``functools.lru_cache``
    functions of the modules that define the model's classes (torch's own aside): a cached fake
    tensor would reach the user's next real forward (PixelSNAIL's ``causal_mask``). A cache that
    grew is cleared, and fills again on the next call."""
    import functools

    names = {type(m).__module__ for m in model.modules()}
    caches = [v for name in names if name.split(".")[0] != "torch" and (mod := sys.modules.get(name)) is not None
              for v in list(vars(mod).values()) if isinstance(v, functools._lru_cache_wrapper)]
    sizes = [c.cache_info().currsize for c in caches]
    try:
        yield
    finally:
        for cache, size in zip(caches, sizes):
            if cache.cache_info().currsize != size:
                cache.cache_clear()


@contextlib.contextmanager
def quiet():
    """Silence torch's warnings and log output (export failures print the whole graph)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        # ERROR too: fake tensors log a whole traceback at that level before export raises.
        logging.disable(logging.ERROR)
        # torch's structured-trace logger logs at DEBUG and ignores logging.disable; pytest >= 9
        # attaches its capture handlers to such non-propagating loggers, so every failing test
        # that ran gradlint would show empty "DEBUG torch.__trace" lines.
        trace_log = logging.getLogger("torch.__trace")
        trace_was_disabled = trace_log.disabled
        trace_log.disabled = True
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            logging.disable(previous)
            trace_log.disabled = trace_was_disabled
