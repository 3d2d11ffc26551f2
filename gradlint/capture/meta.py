"""The meta-device copy every capture path runs, and quiet torch while it does."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
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
